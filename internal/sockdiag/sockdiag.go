// Package sockdiag asks the kernel about one TCP socket on this host by its
// four-tuple, with netlink sock_diag (an exact lookup, not a dump).
//
// unstuck uses it to tell an app that closed its connection from one that
// only shut down its sending side: both send the same FIN, but a socket
// its process has closed is an orphan, and the kernel reports an orphan's
// inode as 0.
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNotFound means no TCP socket on this host (in this network namespace)
// has that four-tuple: the peer is elsewhere.
var ErrNotFound = errors.New("sockdiag: no such socket")

// Socket is what the kernel reports of one socket.
type Socket struct {
	State uint8  // TCP_ESTABLISHED (1) ... as in /proc/net/tcp
	Inode uint32 // 0: no process holds the socket any more (an orphan)
	UID   uint32 // of the socket's owner
}

// Orphan reports whether no process holds the socket any more.
func (s Socket) Orphan() bool { return s.Inode == 0 }

const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	reqLen           = 56 // struct inet_diag_req_v2
	msgLen           = 72 // struct inet_diag_msg
	noCookie         = ^uint32(0)
)

// Lookup returns the TCP socket whose own end is local and whose peer is
// remote.
func Lookup(local, remote netip.AddrPort) (Socket, error) {
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	if la.Is4() != ra.Is4() {
		return Socket{}, fmt.Errorf("sockdiag: mixed address families %v, %v", local, remote)
	}
	family := uint8(unix.AF_INET6)
	if la.Is4() {
		family = unix.AF_INET
	}

	msg := make([]byte, unix.NLMSG_HDRLEN+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], sockDiagByFamily)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], 1) // sequence
	req := msg[unix.NLMSG_HDRLEN:]
	req[0] = family
	req[1] = unix.IPPROTO_TCP
	ne.PutUint32(req[4:], ^uint32(0)) // every state
	putSockID(req[8:], local.Port(), remote.Port(), la, ra)

	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return Socket{}, fmt.Errorf("sockdiag: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return Socket{}, fmt.Errorf("sockdiag: send: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return Socket{}, fmt.Errorf("sockdiag: receive: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil || len(msgs) == 0 {
		return Socket{}, fmt.Errorf("sockdiag: bad answer: %v", err)
	}
	m := msgs[0]
	switch {
	case m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4:
		errno := -int32(ne.Uint32(m.Data))
		if unix.Errno(errno) == unix.ENOENT {
			return Socket{}, ErrNotFound
		}
		return Socket{}, fmt.Errorf("sockdiag: %w", unix.Errno(errno))
	case m.Header.Type == sockDiagByFamily && len(m.Data) >= msgLen:
		return Socket{State: m.Data[1], UID: ne.Uint32(m.Data[64:]), Inode: ne.Uint32(m.Data[68:])}, nil
	}
	return Socket{}, fmt.Errorf("sockdiag: unexpected answer type %d", m.Header.Type)
}

// putSockID writes struct inet_diag_sockid: ports and addresses in network
// byte order, no interface, no cookie.
func putSockID(b []byte, sport, dport uint16, src, dst netip.Addr) {
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	s, d := src.As16(), dst.As16()
	if src.Is4() {
		s4, d4 := src.As4(), dst.As4()
		copy(b[4:], s4[:])
		copy(b[20:], d4[:])
	} else {
		copy(b[4:], s[:])
		copy(b[20:], d[:])
	}
	binary.NativeEndian.PutUint32(b[36:], 0) // interface
	binary.NativeEndian.PutUint32(b[40:], noCookie)
	binary.NativeEndian.PutUint32(b[44:], noCookie)
}
