package sockopt

import (
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FD returns the file descriptor of a TCP or Unix connection. The number is
// valid only while conn is open; the caller must own conn and must not use
// the number after conn is closed. Where another goroutine may close conn,
// make the syscall inside conn's RawConn.Control instead, which holds the
// descriptor open (the pool does).
func FD(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("sockopt: %T has no file descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// ApplyLinger sets SO_LINGER on fd as l asks. Graceful clears it, so a plain
// close sends FIN and the kernel flushes in the background.
func ApplyLinger(fd int, l Linger) error {
	lg := unix.Linger{}
	switch l.Mode {
	case Reset:
		lg = unix.Linger{Onoff: 1, Linger: 0}
	case Bounded:
		lg = unix.Linger{Onoff: 1, Linger: int32(l.Timeout / time.Second)}
	}
	return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &lg)
}

// PeekResult is what a non-blocking one-byte MSG_PEEK finds on a socket.
type PeekResult uint8

const (
	// Open: nothing to read, the peer has not closed. The connection is
	// safe to reuse.
	Open PeekResult = iota
	// PeerFIN: the peer half-closed (read would return EOF).
	PeerFIN
	// PeerRST: the peer reset the connection.
	PeerRST
	// PeerTimeout: the kernel gave up on the peer (keepalive probes or
	// TCP_USER_TIMEOUT unanswered); see IsTimeout.
	PeerTimeout
	// Unsolicited: bytes arrived that nobody asked for. On an idle HTTP/1.1
	// connection this is a protocol error (or a late 408 from the server).
	Unsolicited
	// PeekError: any other error; the connection is unusable.
	PeekError
)

func (r PeekResult) String() string {
	switch r {
	case Open:
		return "open"
	case PeerFIN:
		return "fin"
	case PeerRST:
		return "rst"
	case PeerTimeout:
		return "timeout"
	case Unsolicited:
		return "unsolicited"
	default:
		return "error"
	}
}

// Peek looks at fd without consuming anything and without blocking: one
// recvfrom(MSG_PEEK|MSG_DONTWAIT) syscall, no allocation. It is a raw
// syscall: it cannot block, so the scheduler need not be told, and a slow
// one (a VM's syscalls can take tens of µs) does not make sysmon hand the
// P to another thread, a wake-up the request would pay for.
func Peek(fd int) PeekResult {
	var b [1]byte
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	switch {
	case errno == unix.EAGAIN:
		return Open
	case errno == unix.ECONNRESET:
		return PeerRST
	case IsTimeout(errno):
		return PeerTimeout
	case errno != 0:
		return PeekError
	case n == 0:
		return PeerFIN
	default:
		return Unsolicited
	}
}

// SocketError returns and clears fd's pending error (SO_ERROR): what the
// next read would have returned. Zero means none.
func SocketError(fd int) (unix.Errno, error) {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	return unix.Errno(v), err
}

// IsTimeout reports whether a socket error means the kernel timed the
// connection out. A retransmission or keepalive timeout reports ETIMEDOUT,
// or the ICMP error the peer's network last sent: an established socket
// keeps those as soft errors until the timeout.
func IsTimeout(errno unix.Errno) bool {
	return errno == unix.ETIMEDOUT || errno == unix.EHOSTUNREACH || errno == unix.ENETUNREACH
}

// UnsentBytes returns the bytes in fd's send queue that the peer has not yet
// acknowledged (SIOCOUTQ). Zero means everything written reached the peer's
// kernel.
func UnsentBytes(fd int) (int, error) {
	return unix.IoctlGetInt(fd, unix.SIOCOUTQ)
}
