package proxy

import (
	"context"
	"go.uber.org/zap"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

func sockInt(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func listenerFD(t *testing.T, ln net.Listener) int {
	t.Helper()
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// Listener and accepted-connection options read back from the kernel.
func TestListenerSocketOptionsReadBack(t *testing.T) {
	ln, err := ListenWith("127.0.0.1:0", ListenOptions{ReusePort: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fd := listenerFD(t, ln)
	if sockInt(t, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR) != 1 || sockInt(t, fd, unix.SOL_SOCKET, unix.SO_REUSEPORT) != 1 {
		t.Fatal("listener: want SO_REUSEADDR and SO_REUSEPORT set")
	}
	// A second listener on the same port: only with SO_REUSEPORT.
	ln2, err := ListenWith(ln.Addr().String(), ListenOptions{ReusePort: true})
	if err != nil {
		t.Fatalf("second listener with reuse_port: %v", err)
	}
	ln2.Close()
	if ln3, err := ListenWith(ln.Addr().String(), ListenOptions{}); err == nil {
		ln3.Close()
		t.Fatal("a listener without reuse_port bound a port in use")
	}

	var set atomic.Pointer[appSockets]
	set.Store(&appSockets{
		keepalive:   sockopt.Keepalive{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 5},
		userTimeout: 2500 * time.Millisecond,
		finTimeout:  time.Second,
	})
	ll, err := newLingerListener(ln, &set, nopObserver{}, &parker{}, 0, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ll.stop(); ll.wait() }()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc, err := ll.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	afd := fdOf(t, sc)
	for _, o := range []struct {
		name             string
		level, opt, want int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, -1}, // 11 spread by up to a fifth
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 2},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 5},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 2500},
	} {
		got := sockInt(t, afd, o.level, o.opt)
		if o.want == -1 {
			if got < 11 || got > 13 {
				t.Errorf("accepted connection %s = %d; want 11 to 13", o.name, got)
			}
			continue
		}
		if got != o.want {
			t.Errorf("accepted connection %s = %d; want %d", o.name, got, o.want)
		}
	}
}

func TestUnixListener(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "unstuck.sock")

	ln, err := ListenWith("unix:"+path, ListenOptions{SocketMode: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := ListenWith("unix:"+path, ListenOptions{}); err == nil || !strings.Contains(err.Error(), "live process") {
		t.Fatalf("a live socket was taken over: %v", err)
	}
	// A dead process leaves its socket file behind: simulate with a
	// listener that does not unlink on close.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("test setup: stale socket file gone: %v", err)
	}
	ln, err = ListenWith("unix:"+path, ListenOptions{})
	if err != nil {
		t.Fatalf("stale socket file not replaced: %v", err)
	}
	ln.Close()

	plain := filepath.Join(dir, "not-a-socket")
	os.WriteFile(plain, []byte("keep me"), 0o644)
	if _, err := ListenWith("unix:"+plain, ListenOptions{}); err == nil {
		t.Fatal("listened over a regular file")
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep me" {
		t.Fatal("a regular file at the socket path was destroyed")
	}
}

// closeCounter is an Observer that counts app-connection closes by how.
type closeCounter struct {
	nopObserver
	mu  sync.Mutex
	how map[string]int
}

func (c *closeCounter) AppConnClosed(how string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.how == nil {
		c.how = map[string]int{}
	}
	c.how[how]++
}

func (c *closeCounter) count(how string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.how[how]
}

// An app that ignores unstuck's FIN (never reads, never closes): after
// app_fin_timeout unstuck resets the connection, so the app's socket is no
// longer in CLOSE_WAIT and unstuck holds no FIN_WAIT2.
func TestAppIgnoringFINIsReset(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const conns = 10
	const idle, finTimeout = 50 * time.Millisecond, 300 * time.Millisecond
	up := testpeer.StartServer(t, testpeer.Options{})
	closes := &closeCounter{}
	addr := startProxy(t, proxyOpts{listener: Config{
		IdleTimeout:   idle,
		Linger:        sockopt.Linger{Mode: sockopt.Graceful},
		AppFinTimeout: finTimeout,
		Observer:      closes,
	}}, up.Addr())
	app := testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: conns})
	var lastRequest time.Time
	for slot := 1; slot <= conns; slot++ {
		lastRequest = time.Now() // before it is sent: its connection's idle time starts later
		if _, err := app.DoOn(slot, "GET", "/", nil); err != nil {
			t.Fatal(err)
		}
	}
	wait.Until(t, 10*time.Second, "unstuck to reset every app connection", func() bool {
		return closes.count("escalated") == conns
	})
	took := time.Since(lastRequest)
	if took < idle+finTimeout {
		t.Fatalf("reset %v after the last request; not before idle_timeout + app_fin_timeout (%v)", took, idle+finTimeout)
	}
	if n := closes.count("graceful"); n != 0 {
		t.Fatalf("%d connections closed gracefully although the app never sent FIN", n)
	}
	if n, _ := app.CloseWaitCount(); n != 0 {
		t.Fatalf("%d app sockets still in CLOSE_WAIT after the reset", n)
	}
	n, _ := sockstate.Count(app.PeerMatch())
	if n[sockstate.FinWait2] != 0 || n[sockstate.TimeWait] != 0 {
		t.Fatalf("unstuck holds %v after the reset", n)
	}
	t.Logf("all %d app connections reset %v after the last request (idle_timeout %v + app_fin_timeout %v)", conns, took, idle, finTimeout)
}

// An app that answers unstuck's FIN with its own gets a clean close, no
// reset.
func TestAppAnsweringFINClosesCleanly(t *testing.T) {
	up := testpeer.StartServer(t, testpeer.Options{})
	addr := startProxy(t, proxyOpts{listener: Config{
		IdleTimeout: 50 * time.Millisecond,
		Linger:      sockopt.Linger{Mode: sockopt.Graceful},
	}}, up.Addr())
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.response("GET")
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.br.ReadByte(); err != io.EOF {
		t.Fatalf("after idle_timeout the app read %v; want EOF (a FIN, not a reset)", err)
	}
	c.c.Close()
}

// An app that half-closes towards unstuck after its request gets the whole
// answer, then a close at once: nothing lingers in CLOSE_WAIT on unstuck's
// side.
func TestAppHalfCloseGetsAnswerThenClose(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "answer") })
	addr := startProxy(t, proxyOpts{}, addrOf(up))
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.c.(*net.TCPConn).CloseWrite()
	if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "answer" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if !c.eof() {
		t.Fatal("unstuck did not close after answering a half-closed app")
	}
	mine := sockstate.Conn(addrPort(c.c.RemoteAddr()), addrPort(c.c.LocalAddr()))
	wait.Until(t, 5*time.Second, "unstuck's side to be gone", func() bool {
		n, _ := sockstate.Count(mine)
		return n[sockstate.CloseWait]+n[sockstate.Established] == 0
	})
}

// Shutdown does not wait out app_fin_timeout: closes still waiting for an
// app's FIN are reset at once.
func TestShutdownResetsWaitingCloses(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	up := testpeer.StartServer(t, testpeer.Options{})
	p, err := pool.New(pool.Config{Endpoints: []string{up.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s := New(Config{
		IdleTimeout:   20 * time.Millisecond,
		Linger:        sockopt.Linger{Mode: sockopt.Graceful},
		AppFinTimeout: time.Hour,
		Upstream:      Upstream{Pool: p},
	})
	ln, _ := Listen("127.0.0.1:0")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Serve(ln) }()
	app := testpeer.StartLegacyClient(t, ln.Addr().String(), testpeer.LegacyClientOptions{Conns: 3})
	for slot := 1; slot <= 3; slot++ {
		app.DoOn(slot, "GET", "/", nil)
	}
	wait.Until(t, 5*time.Second, "the half-closes", func() bool {
		n, _ := app.CloseWaitCount()
		return n == 3
	})
	start := time.Now()
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	s.Shutdown(ctx)
	wg.Wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Shutdown took %v", took)
	}
	wait.Until(t, 5*time.Second, "the app's sockets to leave CLOSE_WAIT", func() bool {
		n, _ := app.CloseWaitCount()
		return n == 0
	})
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// A graceful close that Shutdown overtakes between its FIN and its wait
// for the app's FIN resets at once instead of starting a wait that
// Shutdown has stopped waiting for. (Before, it joined the listener's
// WaitGroup while Shutdown waited on it: -race reported that, and the
// close was not waited for.)
func TestCloseOvertakenByShutdownResets(t *testing.T) {
	closes := &closeCounter{}
	srv, addr := startServer(t, proxyOpts{listener: Config{
		Linger: sockopt.Linger{Mode: sockopt.Graceful}, AppFinTimeout: time.Hour, Observer: closes,
	}}, echoUpstream(t))
	c := dialRaw(t, addr)
	c.send(get("/x"))
	c.response("GET")

	shutdownDone := make(chan struct{})
	startShutdown := func() {
		go func() {
			ctx, cancel := contextWithTimeout(5 * time.Second)
			defer cancel()
			srv.Shutdown(ctx)
			close(shutdownDone)
		}()
		// Polled until Shutdown has begun (on fasthttp's goroutine:
		// no t.Fatal here; the count of resets below tells).
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			l := srv.listener()
			l.mu.Lock()
			stopping := l.stopping
			l.mu.Unlock()
			if stopping {
				return
			}
		}
	}
	testHookHalfClosed.Store(&startShutdown)
	defer testHookHalfClosed.Store(nil)
	c.c.(*net.TCPConn).CloseWrite() // the app's FIN ends the serve loop: unstuck closes
	wait.Until(t, 5*time.Second, "the close counted", func() bool {
		return closes.count("reset")+closes.count("graceful")+closes.count("escalated") == 1
	})
	select {
	case <-shutdownDone:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := closes.count("reset"); n != 1 {
		t.Fatalf("resets %d (graceful %d, escalated %d); want the overtaken close reset",
			n, closes.count("graceful"), closes.count("escalated"))
	}
}

// listener is the listener Serve runs on (nil before Serve).
func (s *Server) listener() *lingerListener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln
}
