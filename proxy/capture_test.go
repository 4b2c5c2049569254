package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/capture"
	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// destPools makes the upstreams of Destinations: a pool per destination,
// counting what it made and what Destinations closed.
type destPools struct {
	pc   pool.Config
	mu   sync.Mutex
	made map[netip.AddrPort]int
	shut map[netip.AddrPort]int
}

func newDestPools(pc pool.Config) *destPools {
	return &destPools{pc: pc, made: map[netip.AddrPort]int{}, shut: map[netip.AddrPort]int{}}
}

func (p *destPools) config(cfg DestinationsConfig) DestinationsConfig {
	cfg.New = func(dst netip.AddrPort) (Upstream, error) {
		pc := p.pc
		pc.Name, pc.Endpoints = "captured/"+dst.String(), []string{dst.String()}
		pl, err := pool.New(pc)
		if err != nil {
			return Upstream{}, err
		}
		p.mu.Lock()
		p.made[dst]++
		p.mu.Unlock()
		return Upstream{Name: pc.Name, Pool: pl}, nil
	}
	cfg.Closed = func(dst netip.AddrPort, _ *Upstream) {
		p.mu.Lock()
		p.shut[dst]++
		p.mu.Unlock()
	}
	return cfg
}

func (p *destPools) counts(dst netip.AddrPort) (made, closed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.made[dst], p.shut[dst]
}

// A destination is made once and shared while in use; at Max, the one
// unused longest makes room, and with none unused Open fails; an unused
// one is closed after IdleTimeout, and the reaper stops once none is
// left; after Close, Open fails with pool.ErrClosed.
func TestDestinations(t *testing.T) {
	pools := newDestPools(pool.Config{})
	d := NewDestinations(pools.config(DestinationsConfig{Max: 2, IdleTimeout: 100 * time.Millisecond, Logger: zaptest.NewLogger(t)}))
	a, b, c := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2"), netip.MustParseAddrPort("[::1]:3")
	open := func(dst netip.AddrPort) (*Upstream, func()) {
		t.Helper()
		up, leave, err := d.Open(dst)
		if err != nil {
			t.Fatalf("Open(%v): %v", dst, err)
		}
		return up, leave
	}
	upA, leaveA := open(a)
	upA2, leaveA2 := open(a)
	if upA != upA2 || upA.Name != "captured/127.0.0.1:1" {
		t.Fatalf("two Opens of %v: %p %q and %p; want one upstream", a, upA, upA.Name, upA2)
	}
	_, leaveB := open(b)
	if _, _, err := d.Open(c); !errors.Is(err, ErrTooManyDestinations) {
		t.Fatalf("a third destination while two are in use: %v; want ErrTooManyDestinations", err)
	}
	leaveB()
	leaveB() // once only
	_, leaveC := open(c)
	if made, closed := pools.counts(b); made != 1 || closed != 1 {
		t.Fatalf("%v made %d, closed %d; want evicted for %v", b, made, closed, c)
	}
	if made, closed := pools.counts(a); made != 1 || closed != 0 {
		t.Fatalf("%v, in use: made %d, closed %d; want kept", a, made, closed)
	}
	leaveA()
	leaveA2()
	leaveC()
	wait.Until(t, 5*time.Second, "unused destinations closed", func() bool {
		_, closedA := pools.counts(a)
		_, closedC := pools.counts(c)
		return closedA == 1 && closedC == 1
	})
	if n := d.Len(); n != 0 {
		t.Fatalf("%d destinations left; want none", n)
	}
	_, leaveA = open(a) // the reaper starts again
	d.Close()
	leaveA()
	if _, _, err := d.Open(a); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("Open after Close: %v; want pool.ErrClosed", err)
	}
	if made, closed := pools.counts(a); made != 2 || closed != 2 {
		t.Fatalf("%v made %d, closed %d; want 2 and 2", a, made, closed)
	}
}

// captureMark is the mark the capture tests' pools set, which their
// rules exclude: app and unstuck are one process, one UID.
const captureMark = 0x1e7

// captureRig is a capture listener in front of a server at 127.0.0.5 in
// the test's own network namespace, with the rules installed.
type captureRig struct {
	server netip.AddrPort // the app's destination
	ln     net.Listener   // the capture listener's socket
	pools  *destPools
	dests  *Destinations
}

// newCaptureRig listens on [::]:0 (dual-stack) for the capture listener
// and installs rules that capture the ports of servers to it.
func newCaptureRig(t *testing.T, rules capture.Rules, pc pool.Config, servers ...netip.AddrPort) *captureRig {
	t.Helper()
	ln, err := Listen("[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rules.Port, rules.IPv4, rules.IPv6 = uint16(ln.Addr().(*net.TCPAddr).Port), true, true
	for _, s := range servers {
		rules.Ports = append(rules.Ports, s.Port())
	}
	if err := capture.Install(rules); err != nil {
		t.Fatal(err)
	}
	r := &captureRig{ln: ln, pools: newDestPools(pc)}
	if len(servers) > 0 {
		r.server = servers[0]
	}
	return r
}

// serve runs srv on the rig's listener until the test ends.
func (r *captureRig) serve(t *testing.T, srv interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(r.ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		r.dests.Close()
	})
}

// echoPeerAt is a TCP server at addr that echoes one line, reports each
// connection's peer, then closes (the server closes first) after close.
func echoPeerAt(t *testing.T, addr string, closeAfter time.Duration) (netip.AddrPort, <-chan netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	peers := make(chan netip.AddrPort, 16)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after AcceptLoop's: no more Add
	testpeer.AcceptLoop(t, ln, func(c net.Conn) {
		peers <- netip.MustParseAddrPort(c.RemoteAddr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, line)
			time.Sleep(closeAfter) // the server's own idle close, not a synchronisation
		}()
	})
	return netip.MustParseAddrPort(ln.Addr().String()), peers
}

// A tcp capture listener: an app that connects to its server's real
// address (loopback, IPv4 and IPv6) is paired, through a pool of that
// destination's own, with the server, whose peer is unstuck's socket, not
// the app's; the server closing first leaves the app's socket reset,
// never in CLOSE_WAIT, although the app never closes it.
func TestCaptureTCP(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	srv4, peers4 := echoPeerAt(t, "127.0.0.5:0", 50*time.Millisecond)
	srv6, peers6 := echoPeerAt(t, "[::1]:0", 50*time.Millisecond)
	r := newCaptureRig(t, capture.Rules{ExcludeMark: captureMark}, pool.Config{Stream: true, Mark: captureMark}, srv4, srv6)
	obs := newCountingObserver()
	r.dests = NewDestinations(r.pools.config(DestinationsConfig{}))
	r.serve(t, NewTCP(Config{Name: "captured", Capture: r.dests, CloseOnHalfClose: true,
		Linger: sockopt.Linger{Mode: sockopt.Reset}, Logger: zaptest.NewLogger(t), Observer: obs}))

	for _, tc := range []struct {
		srv   netip.AddrPort
		peers <-chan netip.AddrPort
	}{{srv4, peers4}, {srv6, peers6}} {
		t.Run(tc.srv.String(), func(t *testing.T) {
			app := dialTCP(t, tc.srv.String()) // never closed by the app until the test ends
			app.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(app, "hello\n")
			br := bufio.NewReader(app)
			if line, err := br.ReadString('\n'); line != "hello\n" {
				t.Fatalf("echo through the capture listener: %q, %v", line, err)
			}
			if peer := <-tc.peers; peer == netip.MustParseAddrPort(app.LocalAddr().String()) {
				t.Fatalf("the server's peer is the app's socket %v: not captured", peer)
			}
			if made, _ := r.pools.counts(tc.srv); made != 1 {
				t.Fatalf("pools made for %v: %d; want 1", tc.srv, made)
			}
			// The server closes; the app never does.
			if _, err := br.ReadByte(); !errors.Is(err, unix.ECONNRESET) {
				t.Fatalf("the app read %v after the server's close; want a reset (half_close close, linger reset)", err)
			}
			counts, err := sockstate.Count(sockstate.Conns(sockstate.EndsOf(app)))
			if err != nil {
				t.Fatal(err)
			}
			if counts[sockstate.CloseWait] != 0 {
				t.Fatalf("the app's socket: %v; want no CLOSE_WAIT", counts)
			}
		})
	}

	// A connection to the capture listener itself has nowhere to go: it
	// is reset, before or after the connect returns.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.ln.Addr().(*net.TCPAddr).Port), 5*time.Second)
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("a direct connection to the capture listener: %v; want a reset", err)
	}
	wait.Until(t, 5*time.Second, "refused not_captured counted", func() bool { return obs.count(&obs.refused, RefuseNotCaptured) == 1 }) // counted after the reset
}

// An http capture listener forwards each request to its connection's
// original destination, through that destination's pool; a request the
// server answers closes nothing of the app's, and requests to two
// destinations go to two pools.
func TestCaptureHTTP(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	var servers []netip.AddrPort
	for _, addr := range []string{"127.0.0.5:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			fmt.Fprintf(w, "%s from %s", req.URL.Path, req.RemoteAddr)
		}))
		srv.Listener = ln
		srv.Start()
		t.Cleanup(srv.Close)
		servers = append(servers, netip.MustParseAddrPort(ln.Addr().String()))
	}
	r := newCaptureRig(t, capture.Rules{ExcludeMark: captureMark}, pool.Config{Mark: captureMark}, servers...)
	r.dests = NewDestinations(r.pools.config(DestinationsConfig{}))
	r.serve(t, New(Config{Name: "captured", Capture: r.dests, Logger: zaptest.NewLogger(t)}))

	for _, srv := range servers {
		app := dialRaw(t, srv.String())
		for i := range 3 {
			app.send(fmt.Sprintf("GET /r%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, srv))
			resp, body := app.response("GET")
			if resp.StatusCode != 200 || !strings.HasPrefix(body, fmt.Sprintf("/r%d from ", i)) {
				t.Fatalf("request %d to %v through capture: %d %q", i, srv, resp.StatusCode, body)
			}
			if from := body[len(fmt.Sprintf("/r%d from ", i)):]; from == app.c.LocalAddr().String() {
				t.Fatalf("the server's peer is the app's socket %s: not captured", from)
			}
		}
		if made, _ := r.pools.counts(srv); made != 1 {
			t.Fatalf("pools made for %v: %d; want 1", srv, made)
		}
	}
	if n := r.dests.Len(); n != 2 {
		t.Fatalf("%d destinations; want 2", n)
	}
}

// unstuck's own connection, captured again because the rules do not
// exclude its UID, is cut at the first turn (refused capture_loop) instead
// of dialing without end; the app's connection ends, and the server never
// sees one.
func TestCaptureLoopCut(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	srv, peers := echoPeerAt(t, "127.0.0.5:0", 0)
	const appUID = 4242
	r := newCaptureRig(t, capture.Rules{ExcludeUIDs: []uint32{1337}}, pool.Config{Stream: true}, srv) // not this process's UID
	obs := newCountingObserver()
	r.dests = NewDestinations(r.pools.config(DestinationsConfig{CheckLoops: true}))
	r.serve(t, NewTCP(Config{Name: "captured", Capture: r.dests, Logger: zaptest.NewLogger(t), Observer: obs}))

	// An app of a UID of its own: captured, and not a loop. Its
	// connection ends, before or after its connect returns.
	app, err := dialAsUID(srv.String(), appUID)
	if err == nil {
		defer app.Close()
		app.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(app, "hello\n")
		_, err = app.Read(make([]byte, 1))
	}
	if err == nil || isTimeout(err) {
		t.Fatalf("the app's connection: %v; want it ended", err)
	}
	wait.Until(t, 5*time.Second, "a capture_loop refusal", func() bool { return obs.count(&obs.refused, RefuseCaptureLoop) == 1 })
	select {
	case p := <-peers:
		t.Fatalf("the server accepted a connection from %v", p)
	default:
	}
}

// dialAsUID connects to addr from a socket created with effective UID uid:
// the socket's owner is taken at its creation, on this thread alone.
func dialAsUID(addr string, uid int) (net.Conn, error) {
	runtime.LockOSThread()
	// The raw syscall changes this thread only, unlike syscall.Setresuid.
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setresuid: %w", e)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		return c, fmt.Errorf("setresuid back to 0: %w", e) // the thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
	return c, err
}
