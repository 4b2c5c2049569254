package sockopt

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Keepalive is TCP keepalive for one socket. Idle zero turns it off.
type Keepalive struct {
	Idle     time.Duration // quiet time before the first probe; whole seconds
	Interval time.Duration // between probes; whole seconds
	Count    int           // unanswered probes before the kernel drops the connection
}

// SetKeepalive sets SO_KEEPALIVE and, when on, TCP_KEEPIDLE, TCP_KEEPINTVL
// and TCP_KEEPCNT. A blackholed peer (no FIN, no RST, packets dropped) is
// then dropped after Idle + Interval*Count instead of the kernel's two
// hours.
//
// Each socket's idle time is spread over [Idle, Idle+Idle/5]: thousands of
// connections that went idle together would otherwise probe in the same
// tick, overflow the kernel's input backlog (1,000 packets by default),
// lose their probes and be aborted as dead although their peers are fine.
// The benchmark saw 3,000 of 8,000 idle loopback connections killed that
// way before the spread.
func SetKeepalive(fd int, k Keepalive) error {
	if k.Idle <= 0 {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
	}
	idle := int(k.Idle / time.Second)
	idle += rand.IntN(idle/5 + 1)
	for _, o := range []struct {
		level, opt, val int
		name            string
	}{
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, idle, "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(k.Interval / time.Second), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, k.Count, "TCP_KEEPCNT"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			return fmt.Errorf("%s=%d: %w", o.name, o.val, err)
		}
	}
	return nil
}

// SetUserTimeout sets TCP_USER_TIMEOUT: how long written data may stay
// unacknowledged (and, with keepalive on, how long probes may go
// unanswered) before the kernel drops the connection with ETIMEDOUT. Zero
// leaves the kernel's default (about 15 minutes of retransmissions).
func SetUserTimeout(fd int, d time.Duration) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
}

// SetReuseAddr sets SO_REUSEADDR: a listener binds even while old
// connections on its port sit in TIME_WAIT; an outbound socket bound to a
// source address may reuse a local port whose old connection is in
// TIME_WAIT.
func SetReuseAddr(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
}

// SetReusePort sets SO_REUSEPORT: several processes bind the same address
// and the kernel spreads new connections among them, which is how a new
// unstuck takes over from the old without refusing anyone.
func SetReusePort(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
}

// SetBindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT: bind() to a source IP
// does not pick a port; connect() does, and then only the whole four-tuple
// must be unique. Without it every bound source port is taken for all
// destinations, and many upstreams sharing one source IP exhaust the
// ephemeral range.
func SetBindAddressNoPort(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
}

// SetLocalPortRange sets IP_LOCAL_PORT_RANGE (Linux 6.3+): the kernel picks
// this socket's ephemeral port from lo..hi instead of the system range,
// still with four-tuple uniqueness.
func SetLocalPortRange(fd int, lo, hi uint16) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE, int(uint32(hi)<<16|uint32(lo)))
}

// Control returns a function for net.Dialer.Control and
// net.ListenConfig.Control that applies set to the new socket before it
// binds or connects.
func Control(set func(fd int) error) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = set(int(fd)) }); err != nil {
			return err
		}
		return serr
	}
}
