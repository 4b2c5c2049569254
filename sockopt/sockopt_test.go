package sockopt

import (
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
)

func TestParseLinger(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Linger
		err  bool
	}{
		{"graceful", Linger{Mode: Graceful}, false},
		{"", Linger{Mode: Graceful}, false},
		{"reset", Linger{Mode: Reset}, false},
		{"RESET", Linger{Mode: Reset}, false},
		{"2s", Linger{Mode: Bounded, Timeout: 2 * time.Second}, false},
		{"500ms", Linger{Mode: Bounded, Timeout: time.Second}, false}, // rounded up to whole seconds
		{"0s", Linger{}, true},
		{"-1s", Linger{}, true},
		{"sometimes", Linger{}, true},
	} {
		got, err := ParseLinger(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseLinger(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func fd(t *testing.T, c net.Conn) int {
	t.Helper()
	n, err := FD(c)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Each linger value reads back from the kernel as set.
func TestApplyLingerReadsBack(t *testing.T) {
	a, _ := testpeer.TCPPair(t)
	for _, tc := range []struct {
		l    Linger
		want unix.Linger
	}{
		{Linger{Mode: Reset}, unix.Linger{Onoff: 1, Linger: 0}},
		{Linger{Mode: Bounded, Timeout: 3 * time.Second}, unix.Linger{Onoff: 1, Linger: 3}},
		{Linger{Mode: Graceful}, unix.Linger{Onoff: 0, Linger: 0}},
	} {
		if err := ApplyLinger(fd(t, a), tc.l); err != nil {
			t.Fatal(err)
		}
		got, err := unix.GetsockoptLinger(fd(t, a), unix.SOL_SOCKET, unix.SO_LINGER)
		if err != nil {
			t.Fatal(err)
		}
		// With l_onoff 0 the kernel keeps the old l_linger; only
		// l_onoff matters then.
		if got.Onoff != tc.want.Onoff || (got.Onoff == 1 && got.Linger != tc.want.Linger) {
			t.Errorf("%v: SO_LINGER reads back %+v; want %+v", tc.l, *got, tc.want)
		}
	}
}

// waitPeek polls Peek until it reports want (the peer's segment may still
// be in flight on loopback) or a bound passes.
func waitPeek(t *testing.T, c net.Conn, want PeekResult) {
	t.Helper()
	wait.UntilNil(t, 2*time.Second, "Peek's answer", func() error {
		if got := Peek(fd(t, c)); got != want {
			return fmt.Errorf("Peek = %v; want %v", got, want)
		}
		return nil
	})
}

func TestPeek(t *testing.T) {
	t.Run("open", func(t *testing.T) {
		a, _ := testpeer.TCPPair(t)
		if got := Peek(fd(t, a)); got != Open {
			t.Fatalf("idle connection: %v", got)
		}
	})
	t.Run("fin", func(t *testing.T) {
		a, b := testpeer.TCPPair(t)
		b.(*net.TCPConn).CloseWrite()
		waitPeek(t, a, PeerFIN)
	})
	t.Run("rst", func(t *testing.T) {
		a, b := testpeer.TCPPair(t)
		b.(*net.TCPConn).SetLinger(0)
		b.Close()
		waitPeek(t, a, PeerRST)
	})
	t.Run("unsolicited, and nothing consumed", func(t *testing.T) {
		a, b := testpeer.TCPPair(t)
		b.Write([]byte("x"))
		waitPeek(t, a, Unsolicited)
		buf := make([]byte, 1)
		if n, err := a.Read(buf); n != 1 || err != nil || buf[0] != 'x' {
			t.Fatalf("peek consumed the byte: read %d %q %v", n, buf, err)
		}
	})
}

func TestPeekDoesNotAllocate(t *testing.T) {
	a, _ := testpeer.TCPPair(t)
	f := fd(t, a)
	if n := testing.AllocsPerRun(100, func() { Peek(f) }); n != 0 {
		t.Fatalf("%v allocations per Peek", n)
	}
}

func TestUnsentBytes(t *testing.T) {
	a, b := testpeer.TCPPair(t)
	a.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := b.Read(buf); err != nil {
		t.Fatal(err)
	}
	wait.UntilNil(t, 2*time.Second, "the peer's ACK", func() error {
		n, err := UnsentBytes(fd(t, a))
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			return fmt.Errorf("%d bytes still unacknowledged after the peer read them", n)
		}
		return nil
	})
}

// Keepalive idle times are spread per socket, within a fifth above Idle,
// so that connections idle together do not probe together.
func TestKeepaliveIdleIsSpread(t *testing.T) {
	seen := map[int]bool{}
	for range 40 {
		a, _ := testpeer.TCPPair(t)
		if err := SetKeepalive(fd(t, a), Keepalive{Idle: 30 * time.Second, Interval: time.Second, Count: 3}); err != nil {
			t.Fatal(err)
		}
		idle, err := unix.GetsockoptInt(fd(t, a), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		if err != nil {
			t.Fatal(err)
		}
		if idle < 30 || idle > 36 {
			t.Fatalf("TCP_KEEPIDLE = %d; want 30 to 36", idle)
		}
		seen[idle] = true
	}
	if len(seen) < 3 {
		t.Fatalf("40 sockets got only %d distinct idle times: not spread", len(seen))
	}
}

// A kernel timeout is ETIMEDOUT or the soft ICMP error kept until then; a
// reset is not a timeout.
func TestIsTimeout(t *testing.T) {
	for _, tc := range []struct {
		errno unix.Errno
		want  bool
	}{
		{unix.ETIMEDOUT, true},
		{unix.EHOSTUNREACH, true},
		{unix.ENETUNREACH, true},
		{unix.ECONNRESET, false},
		{unix.EPIPE, false},
		{0, false},
	} {
		if got := IsTimeout(tc.errno); got != tc.want {
			t.Errorf("IsTimeout(%v) = %v; want %v", tc.errno, got, tc.want)
		}
	}
}
