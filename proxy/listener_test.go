package proxy

import (
	"errors"
	"go.uber.org/zap"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// tcpPair returns an accepted server-side connection wrapped as the
// listener would wrap it, and the client side, whose receive buffer is
// small so that unread data backs up into the server's send queue.
func tcpPair(t *testing.T, linger sockopt.Linger) (server net.Conn, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	cc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	var set atomic.Pointer[appSockets]
	set.Store(&appSockets{linger: linger, finTimeout: 5 * time.Second})
	l, err := newLingerListener(ln, &set, nopObserver{}, &parker{}, 0, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.stop(); l.wait() })
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return sc, cc.(*net.TCPConn)
}

// fdOf returns the descriptor under an accepted, wrapped app connection.
func fdOf(t *testing.T, c net.Conn) int {
	t.Helper()
	fd, err := sockopt.FD(c.(*appConn).Conn)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// With linger reset, an app connection whose bytes all reached the app is
// reset: nothing stays in TIME_WAIT on unstuck's side, and the app, which
// might never call close(), is not left in CLOSE_WAIT.
func TestResetCloseWhenNothingUnsent(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	sc, cc := tcpPair(t, sockopt.Linger{Mode: sockopt.Reset})
	server := addrPort(sc.LocalAddr())
	client := addrPort(cc.LocalAddr())
	if _, err := sc.Write([]byte("response")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if _, err := io.ReadFull(cc, buf); err != nil {
		t.Fatal(err)
	}
	// Wait for the ACK of those bytes: then nothing is unsent.
	wait.Until(t, 2*time.Second, "the app's ACK", func() bool {
		n, err := sockopt.UnsentBytes(fdOf(t, sc))
		return err == nil && n == 0
	})
	sc.Close()
	cc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := cc.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app read %v after unstuck's close; want ECONNRESET", err)
	}
	states, err := sockstate.Count(sockstate.Either(sockstate.Conn(server, client), sockstate.Conn(client, server)))
	if err != nil {
		t.Fatal(err)
	}
	if states[sockstate.TimeWait]+states[sockstate.CloseWait]+states[sockstate.FinWait2] != 0 {
		t.Fatalf("sockets left after a reset close: %v", states)
	}
}

// With linger reset, an app connection that still has response bytes in
// flight is closed gracefully instead: the app reads every byte, then EOF.
func TestResetCloseNeverDropsUnreadResponse(t *testing.T) {
	sc, cc := tcpPair(t, sockopt.Linger{Mode: sockopt.Reset})
	// Fill the app's small receive window and our send queue without
	// blocking for long.
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	var written int
	sc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	for written < 8<<20 {
		n, err := sc.Write(chunk)
		written += n
		if err != nil {
			break // the deadline: everything the kernel would take
		}
	}
	if n, _ := sockopt.UnsentBytes(fdOf(t, sc)); n == 0 {
		t.Fatal("test setup: expected unacknowledged bytes in the send queue")
	}
	sc.Close()
	cc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.Copy(io.Discard, cc)
	if err != nil || int(got) != written {
		t.Fatalf("app read %d of %d bytes, then %v; want all, then EOF", got, written, err)
	}
}

// The app side end to end: unstuck closes app connections idle longer than
// idle_timeout. A legacy app never closes its end; with linger reset its
// socket is never in CLOSE_WAIT, with graceful it is until app_fin_timeout
// (5 s here; TestAppIgnoringFINIsReset covers what happens then).
func TestIdleAppConnectionClosedWithListenerLinger(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	for _, tc := range []struct {
		linger        string
		wantCloseWait bool
	}{{"reset", false}, {"graceful", true}} {
		t.Run(tc.linger, func(t *testing.T) {
			l, _ := sockopt.ParseLinger(tc.linger)
			up := testpeer.StartServer(t, testpeer.Options{})
			addr := startProxy(t, proxyOpts{listener: Config{IdleTimeout: 100 * time.Millisecond, Linger: l}}, up.Addr())
			const conns = 10
			app := testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: conns})
			for slot := 1; slot <= conns; slot++ {
				if _, err := app.DoOn(slot, "GET", "/", nil); err != nil {
					t.Fatal(err)
				}
			}
			// unstuck's side of each app connection is gone (reset) or
			// in FIN_WAIT2 (graceful) once it closed them.
			wait.Until(t, 5*time.Second, "unstuck to close the idle app connections", func() bool {
				n, _ := sockstate.Count(app.PeerMatch())
				return n[sockstate.Established] == 0
			})
			cw, err := app.CloseWaitCount()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("linger %s: %d of the app's %d sockets in CLOSE_WAIT", tc.linger, cw, conns)
			if tc.wantCloseWait && cw != conns {
				t.Fatalf("graceful close: want the never-closing app's %d sockets in CLOSE_WAIT, got %d", conns, cw)
			}
			if !tc.wantCloseWait && cw != 0 {
				t.Fatalf("reset close left %d app sockets in CLOSE_WAIT", cw)
			}
		})
	}
}
