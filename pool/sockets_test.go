package pool

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// eofServer accepts connections and closes each once its peer has closed:
// the client side closes first, so the client keeps the TIME_WAIT.
func eofServer(t *testing.T, addr string) string {
	t.Helper()
	return testpeer.ServeTCP(t, addr, func(c *net.TCPConn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c)
	}).Addr().String()
}

func getInt(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Every outbound socket option reads back from the kernel as configured.
func TestDialSocketOptionsReadBack(t *testing.T) {
	addr := eofServer(t, "127.0.0.1:0")
	p := newTestPool(t, Config{
		Endpoints:   []string{addr},
		Source:      netip.MustParseAddr("127.0.0.1"),
		SourcePorts: PortRange{Lo: 40000, Hi: 40999},
		Keepalive:   sockopt.Keepalive{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 4},
		UserTimeout: 1500 * time.Millisecond,
	})
	c, err := p.Acquire(false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Discard(c, CauseError)
	fd := fdOf(t, c)
	for _, o := range []struct {
		name             string
		level, opt, want int
	}{
		{"SO_REUSEADDR", unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
		{"IP_BIND_ADDRESS_NO_PORT", unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1},
		{"IP_LOCAL_PORT_RANGE", unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE, 40999<<16 | 40000},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, -1}, // checked below: 7 spread by up to a fifth
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 3},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 4},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 1500},
	} {
		got := int(uint32(getInt(t, fd, o.level, o.opt)))
		if o.want == -1 {
			if got < 7 || got > 8 {
				t.Errorf("%s = %d; want 7 or 8", o.name, got)
			}
			continue
		}
		if got != o.want {
			t.Errorf("%s = %d; want %d", o.name, got, o.want)
		}
	}
	local := c.NetConn().LocalAddr().(*net.TCPAddr)
	if local.Port < 40000 || local.Port > 40999 || !local.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("local address %v; want 127.0.0.1 with a port in 40000-40999", local)
	}

	t.Run("keepalive off", func(t *testing.T) {
		p := newTestPool(t, Config{Endpoints: []string{addr}})
		c, err := p.Acquire(false)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Discard(c, CauseError)
		if got := getInt(t, fdOf(t, c), unix.SOL_SOCKET, unix.SO_KEEPALIVE); got != 0 {
			t.Errorf("SO_KEEPALIVE = %d with keepalive idle 0; want 0", got)
		}
	})
}

// 20,000 short-lived upstream connections in a row from one source
// address, each closed by unstuck first (so each leaves a TIME_WAIT on
// unstuck's side): the kernel picks the port at connect time
// (IP_BIND_ADDRESS_NO_PORT), so none fails with EADDRINUSE or
// EADDRNOTAVAIL. In a namespace of its own, so its TIME_WAIT sockets are
// no other test's.
func TestSourceAddressSurvivesConnectionChurn(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const n = 20000
	addr := eofServer(t, "127.0.0.1:0")
	p := newTestPool(t, Config{Endpoints: []string{addr}, Source: netip.MustParseAddr("127.0.0.2")})
	deadline := time.Now().Add(90 * time.Second)
	for i := range n {
		c, err := p.Acquire(false)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
				t.Fatalf("connection %d: port exhaustion: %v", i, err)
			}
			t.Fatalf("connection %d: %v", i, err)
		}
		p.Discard(c, CauseMaxRequests)
		if time.Now().After(deadline) {
			t.Fatalf("only %d connections within the time bound", i)
		}
	}
	tw, err := sockstate.Count(sockstate.RemotePort(portOf(t, addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections from 127.0.0.2; %d now in TIME_WAIT on unstuck's side", n, tw[sockstate.TimeWait])
}

func portOf(t *testing.T, addr string) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return ap.Port()
}

// When unstuck closes upstream connections first (here: idle_timeout),
// graceful puts every one in TIME_WAIT on unstuck's side and reset puts
// none. In a namespace of its own, whose counters are this test's: the
// count of sockets that entered TIME_WAIT is exact. (The table is not: on
// a loaded machine 3 of 50 have been seen to leave TIME_WAIT at once, the
// namespace's counters showing as many RSTs, which end a TIME_WAIT.)
func TestLingerDecidesWhoKeepsTimeWait(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const n = 50
	for _, tc := range []struct {
		linger string
		want   uint64
	}{{"graceful", n}, {"reset", 0}} {
		t.Run(tc.linger, func(t *testing.T) {
			addr := eofServer(t, "127.0.0.1:0")
			l, _ := sockopt.ParseLinger(tc.linger)
			p := newTestPool(t, Config{Endpoints: []string{addr}, Linger: l, IdleTimeout: 20 * time.Millisecond})
			before := counters(t)
			var (
				cs   []*Conn
				ends []sockstate.Ends // unstuck's side of each connection
			)
			for range n {
				c, err := p.Acquire(false)
				if err != nil {
					t.Fatal(err)
				}
				cs = append(cs, c)
				ends = append(ends, sockstate.EndsOf(c.NetConn()))
			}
			for _, c := range cs {
				p.Release(c)
			}
			waitCounts(t, p, 0, 0, 5*time.Second)
			// Polled: the last close may still be on its way. Then
			// unstuck's side holds nothing but TIME_WAIT, and as many
			// sockets entered it as want (the server closes second: it
			// has none).
			mine := sockstate.Conns(ends...)
			var states map[sockstate.State]int
			wait.UntilNil(t, 10*time.Second, "every close done", func() error {
				var err error
				if states, err = sockstate.Count(mine); err != nil {
					t.Fatal(err)
				}
				tw := counters(t)["TcpExt.TW"] - before["TcpExt.TW"]
				if tw != tc.want || len(states) > 1 || len(states) == 1 && states[sockstate.TimeWait] == 0 {
					return fmt.Errorf("linger %s: %d sockets entered TIME_WAIT, want %d; unstuck's side holds %v", tc.linger, tw, tc.want, states)
				}
				return nil
			})
			if tc.want == 0 && len(states) != 0 {
				t.Fatalf("linger %s: unstuck's side holds %v; want nothing", tc.linger, states)
			}
			t.Logf("linger %s: %d of %d connections unstuck closed first entered TIME_WAIT on its side; %d are in it now, %d RSTs sent in the namespace",
				tc.linger, tc.want, n, states[sockstate.TimeWait], counters(t)["Tcp.OutRsts"]-before["Tcp.OutRsts"])
		})
	}
}

// counters returns the namespace's TCP counters.
func counters(t *testing.T) map[string]uint64 {
	t.Helper()
	c, err := sockstate.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// IP_BIND_ADDRESS_NO_PORT makes only the four-tuple unique: 3 upstream
// endpoints × 100 open connections (300) fit in a 100-port source range,
// every port shared across endpoints. A bind-time port choice runs out
// after 100 (EADDRINUSE). In a namespace of its own: no other test holds
// a port of the range, and the endpoints listen on fixed ports outside it
// (a port a listener bound is not one connect may share).
func TestSourcePortsSharedAcrossEndpoints(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const perEndpoint, rangeSize = 100, 100
	var endpoints []string
	for i := range 3 {
		endpoints = append(endpoints, eofServer(t, fmt.Sprintf("127.0.0.1:%d", 42001+i)))
	}
	p := newTestPool(t, Config{
		Endpoints:   endpoints,
		Balance:     BalanceRoundRobin, // 100 to each endpoint: as many as the range has ports
		Source:      netip.MustParseAddr("127.0.0.3"),
		SourcePorts: PortRange{Lo: 41000, Hi: 41000 + rangeSize - 1},
		Linger:      sockopt.Linger{Mode: sockopt.Reset}, // leave no TIME_WAIT behind
	})
	var cs []*Conn
	defer func() {
		for _, c := range cs {
			p.Discard(c, CauseShutdown)
		}
	}()
	ports := map[string]map[int]bool{}
	for i := range perEndpoint * len(endpoints) {
		c, err := p.Acquire(false)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		cs = append(cs, c)
		if ports[c.Endpoint()] == nil {
			ports[c.Endpoint()] = map[int]bool{}
		}
		ports[c.Endpoint()][c.NetConn().LocalAddr().(*net.TCPAddr).Port] = true
	}
	all := map[int]bool{}
	for ep, ps := range ports {
		if len(ps) != perEndpoint {
			t.Errorf("endpoint %s: %d distinct local ports; want %d", ep, len(ps), perEndpoint)
		}
		for port := range ps {
			if port < 41000 || port >= 41000+rangeSize {
				t.Errorf("local port %d outside the source range", port)
			}
			all[port] = true
		}
	}
	t.Logf("%d connections to %d endpoints from %d local ports", perEndpoint*len(endpoints), len(endpoints), len(all))
}
