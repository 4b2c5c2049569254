package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/tcpserve"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// tcpPeer is a raw TCP server on 127.0.0.1:0 that runs handle on each
// connection; it stops, closing the connections and waiting for its
// handlers, when the test ends.
type tcpPeer struct{ *tcpserve.Loop }

func startTCPPeer(t testing.TB, handle func(c *net.TCPConn)) *tcpPeer {
	t.Helper()
	return &tcpPeer{testpeer.ServeTCP(t, "127.0.0.1:0", handle)}
}

func (p *tcpPeer) addr() string { return p.Addr().String() }

// startTCP runs a tcp-mode server on 127.0.0.1:0 in front of endpoints
// with a stream pool, and returns its address and pool.
func startTCP(t testing.TB, pc pool.Config, lc Config, endpoints ...string) (string, *pool.Pool, *TCPServer) {
	t.Helper()
	pc.Endpoints, pc.Stream = endpoints, true
	p, err := pool.New(pc)
	if err != nil {
		t.Fatal(err)
	}
	lc.Upstream = Upstream{Name: "backend", Pool: p}
	if lc.Logger == nil {
		lc.Logger = zaptest.NewLogger(t)
	}
	s := NewTCP(lc)
	return serveLoopback(t, s, p), p, s
}

// serveLoopback serves s on 127.0.0.1:0 and returns the address; when the
// test ends, s shuts down (Shutdown may have run already), then p closes.
func serveLoopback(t testing.TB, s interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}, p *pool.Pool) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
		p.Close()
	})
	return ln.Addr().String()
}

func dialTCP(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// sendAndClose writes randomStream(seed, n) to c, then its FIN, on a
// goroutine of its own; the channel gets the write's error.
func sendAndClose(c *net.TCPConn, seed byte, n int64) <-chan error {
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, randomStream(seed, n))
		c.CloseWrite()
		sent <- err
	}()
	return sent
}

// randomStream is n reproducible random bytes: seed picks which.
func randomStream(seed byte, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), n)
}

func sumOf(r io.Reader) (string, int64) {
	h := sha256.New()
	n, _ := io.Copy(h, r)
	return fmt.Sprintf("%x", h.Sum(nil)), n
}

// TestPairMovesBytesExactly sends 64 MiB of random bytes each way at once
// through a pair and compares sha256 sums at both ends.
func TestPairMovesBytesExactly(t *testing.T) {
	const size = 64 << 20
	upSum := make(chan string, 1)
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum, _ := sumOf(c)
			upSum <- sum
		}()
		io.Copy(c, randomStream(4, size))
		c.CloseWrite()
		wg.Wait()
	})
	addr, _, _ := startTCP(t, pool.Config{}, Config{}, up.addr())
	app := dialTCP(t, addr)
	app.SetDeadline(time.Now().Add(60 * time.Second))
	sent := sendAndClose(app, 3, size)
	gotSum, n := sumOf(app)
	if err := <-sent; err != nil {
		t.Fatalf("app send: %v", err)
	}
	wantApp, _ := sumOf(randomStream(4, size))
	wantUp, _ := sumOf(randomStream(3, size))
	if n != size || gotSum != wantApp {
		t.Errorf("app received %d bytes, sha256 %s; want %d, %s", n, gotSum, int64(size), wantApp)
	}
	if got := <-upSum; got != wantUp {
		t.Errorf("upstream received sha256 %s; want %s", got, wantUp)
	}
}

// TestPairManySmallWrites: thousands of small writes each way arrive as
// one stream, byte for byte, in order.
func TestPairManySmallWrites(t *testing.T) {
	const writes = 5000
	script := func(seed uint64) []byte {
		r := rand.New(rand.NewPCG(seed, 1))
		var b bytes.Buffer
		for i := range writes {
			fmt.Fprintf(&b, "%d:%s;", i, bytes.Repeat([]byte{'a' + byte(i%26)}, r.IntN(60)))
		}
		return b.Bytes()
	}
	writeSmall := func(c *net.TCPConn, data []byte) error {
		r := rand.New(rand.NewPCG(9, 9))
		for len(data) > 0 {
			n := min(len(data), 1+r.IntN(64))
			if _, err := c.Write(data[:n]); err != nil {
				return err
			}
			data = data[n:]
		}
		return c.CloseWrite()
	}
	toUp, toApp := script(1), script(2)
	upGot := make(chan []byte, 1)
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		wrote := make(chan error, 1)
		go func() { wrote <- writeSmall(c, toApp) }()
		b, _ := io.ReadAll(c)
		<-wrote
		upGot <- b
	})
	addr, _, _ := startTCP(t, pool.Config{}, Config{}, up.addr())
	app := dialTCP(t, addr)
	app.SetDeadline(time.Now().Add(30 * time.Second))
	go writeSmall(app, toUp)
	got, err := io.ReadAll(app)
	if err != nil || !bytes.Equal(got, toApp) {
		t.Errorf("app received %d bytes (err %v); want the %d sent, in order", len(got), err, len(toApp))
	}
	if got := <-upGot; !bytes.Equal(got, toUp) {
		t.Errorf("upstream received %d bytes; want the %d sent, in order", len(got), len(toUp))
	}
}

// TestPairUpstreamHalfClosesMidStream: with half_close: propagate, an
// upstream that says goodbye and half-closes while the app is still
// sending gets every byte the app sends after that, and the app its FIN.
func TestPairUpstreamHalfClosesMidStream(t *testing.T) {
	const size = 8 << 20
	upGot := make(chan string, 1)
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		first := make([]byte, 1<<20)
		if _, err := io.ReadFull(c, first); err != nil {
			upGot <- err.Error()
			return
		}
		c.Write([]byte("bye"))
		c.CloseWrite() // FIN mid-stream
		rest, _ := sumOf(io.MultiReader(bytes.NewReader(first), c))
		upGot <- rest
	})
	addr, _, _ := startTCP(t, pool.Config{}, Config{}, up.addr())
	app := dialTCP(t, addr)
	app.SetDeadline(time.Now().Add(30 * time.Second))
	sent := sendAndClose(app, 5, size)
	got, err := io.ReadAll(app)
	if string(got) != "bye" || err != nil {
		t.Errorf("app read %q, %v; want the upstream's bye, then its FIN", got, err)
	}
	if err := <-sent; err != nil {
		t.Errorf("app kept sending after the upstream's FIN: %v", err)
	}
	want, _ := sumOf(randomStream(5, size))
	if got := <-upGot; got != want {
		t.Errorf("upstream received sha256 %s; want %s (all %d bytes the app sent)", got, want, size)
	}
}

// TestPairServerFirstWithWarmPool: a server that greets first (SMTP,
// MySQL) greets a warm connection before any app exists; the greeting
// waits in the socket and reaches the app first.
func TestPairServerFirstWithWarmPool(t *testing.T) {
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("220 ready\r\n"))
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		c.Write([]byte("250 " + line))
		io.Copy(io.Discard, br)
	})
	addr, p, _ := startTCP(t, pool.Config{MinIdle: 2}, Config{}, up.addr())
	wait.Until(t, 5*time.Second, "two warm connections", func() bool { return idleConns(p) == 2 })
	app := dialTCP(t, addr)
	app.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(app)
	if line, err := br.ReadString('\n'); line != "220 ready\r\n" {
		t.Fatalf("app read %q, %v; want the server's greeting first", line, err)
	}
	app.Write([]byte("HELO app\r\n"))
	if line, err := br.ReadString('\n'); line != "250 HELO app\r\n" {
		t.Fatalf("app read %q, %v; want the answer to its HELO", line, err)
	}
}

func idleConns(p *pool.Pool) int {
	n := 0
	for _, st := range p.Stats() {
		n += st.Idle
	}
	return n
}

// TestPairResetPropagates: an RST from either side resets the other, so
// that an error never looks like a clean end of stream.
func TestPairResetPropagates(t *testing.T) {
	t.Run("upstream resets", func(t *testing.T) {
		up := startTCPPeer(t, func(c *net.TCPConn) {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.ReadFull(c, make([]byte, 5))
			c.SetLinger(0)
		})
		addr, _, _ := startTCP(t, pool.Config{}, Config{}, up.addr())
		app := dialTCP(t, addr)
		app.SetDeadline(time.Now().Add(5 * time.Second))
		app.Write([]byte("hello"))
		_, err := io.ReadAll(app)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("app read error %v; want a reset, not a clean EOF", err)
		}
	})
	t.Run("app resets", func(t *testing.T) {
		upErr := make(chan error, 1)
		up := startTCPPeer(t, func(c *net.TCPConn) {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadAll(c)
			upErr <- err
		})
		addr, _, _ := startTCP(t, pool.Config{}, Config{}, up.addr())
		app := dialTCP(t, addr)
		app.Write([]byte("hello"))
		wait.Until(t, 5*time.Second, "the upstream's accept", func() bool { return up.Accepted() == 1 })
		app.SetLinger(0)
		app.Close()
		if err := <-upErr; !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("upstream read error %v; want a reset, not a clean EOF", err)
		}
	})
}

// TestPairDialErrorClosesApp: with no upstream to reach, the app's
// connection is closed at once.
func TestPairDialErrorClosesApp(t *testing.T) {
	dead := testpeer.FreeAddr(t)
	obs := &pairObserver{}
	addr, _, _ := startTCP(t, pool.Config{}, Config{Observer: obs}, dead)
	app := dialTCP(t, addr)
	app.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := app.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("app read %v; want its connection closed", err)
	}
	wait.Until(t, 2*time.Second, "a dial_error end", func() bool { return obs.count(PairDialError) == 1 })
}

// TestTCPMaxConnsResets: over limits.max_conns a tcp listener accepts and
// resets at once.
func TestTCPMaxConnsResets(t *testing.T) {
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.Copy(c, c)
	})
	obs := &pairObserver{}
	addr, _, _ := startTCP(t, pool.Config{}, Config{MaxConns: 1, Observer: obs}, up.addr())
	first := dialTCP(t, addr)
	first.SetDeadline(time.Now().Add(5 * time.Second))
	first.Write([]byte("x"))
	io.ReadFull(first, make([]byte, 1)) // paired
	// The reset may land before the dial has returned.
	second, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		defer second.Close()
		second.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = second.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("second connection: %v; want a reset at max_conns", err)
	}
	wait.Until(t, 2*time.Second, "the reset counted", func() bool { return obs.refusedCount() == 1 })
}

// TestPairIdleTimeout: a pair with no byte either way for idle_timeout
// ends; one that moves bytes does not.
func TestPairIdleTimeout(t *testing.T) {
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.Copy(c, c)
	})
	obs := &pairObserver{}
	const idleTimeout = 300 * time.Millisecond
	addr, _, _ := startTCP(t, pool.Config{}, Config{IdleTimeout: idleTimeout, Observer: obs}, up.addr())
	// The busy pair echoes a byte every 20 ms from its start, for longer
	// than the idle pair lives. A busy pair may end only if it really
	// went a whole idle timeout without a byte (a machine so loaded that
	// the test's own goroutine stalled): the test checks the gap it saw.
	busy := dialTCP(t, addr)
	var lastEcho atomic.Int64
	lastEcho.Store(time.Now().UnixNano())
	// busyEnd is how the busy pair's goroutine stopped: err nil at stop,
	// or the error and when it happened.
	type busyEnd struct {
		err error
		at  time.Time
	}
	busyDone := make(chan busyEnd, 1)
	stop := make(chan struct{})
	go func() {
		for {
			busy.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := busy.Write([]byte("y")); err != nil {
				busyDone <- busyEnd{err, time.Now()}
				return
			}
			if _, err := io.ReadFull(busy, make([]byte, 1)); err != nil {
				busyDone <- busyEnd{err, time.Now()}
				return
			}
			lastEcho.Store(time.Now().UnixNano())
			select {
			case <-stop:
				busyDone <- busyEnd{}
				return
			case <-time.After(20 * time.Millisecond): // the busy pair's pace
			}
		}
	}()
	idle := dialTCP(t, addr)
	idle.Write([]byte("x"))
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	io.ReadFull(idle, make([]byte, 1))
	wait.Until(t, 5*time.Second, "the idle pair's end", func() bool { return obs.count(PairIdleTimeout) > 0 })
	close(stop)
	var end busyEnd
	select {
	case end = <-busyDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the busy pair's goroutine did not stop")
	}
	// The busy pair ends now, by its app's FIN, unless it ended already:
	// the count below is then final, with no idle timeout still to come.
	busy.Close()
	closed := time.Now()
	want := 1 // the idle pair's
	// dueAtClose: the busy pair was idle a whole idle_timeout by its
	// close, so its end may be either idle_timeout or app_fin.
	dueAtClose := false
	if end.err != nil {
		if gap := end.at.Sub(time.Unix(0, lastEcho.Load())); gap < idleTimeout {
			t.Fatalf("busy pair ended %v after its last echo (idle_timeout %v): %v", gap, idleTimeout, end.err)
		} else {
			t.Logf("the busy pair's own goroutine stalled %v (a loaded machine): its end was due", gap)
			want = 2
		}
	} else if gap := closed.Sub(time.Unix(0, lastEcho.Load())); gap >= idleTimeout {
		t.Logf("the busy pair was closed %v after its last echo (a loaded machine): an idle_timeout end was due", gap)
		dueAtClose = true
	}
	if _, err := idle.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("idle pair read %v; want it ended", err)
	}
	wait.Until(t, 5*time.Second, "both pairs' ends", func() bool { return obs.total() == 2 })
	if n := obs.count(PairIdleTimeout); n != want && !(dueAtClose && n == 2) {
		t.Errorf("%d idle_timeout ends; want %d (the idle pair's, and the busy pair's only if its end was due)", n, want)
	}
}

// pairObserver counts pair ends by cause, and refusals.
type pairObserver struct {
	nopObserver
	mu      sync.Mutex
	ends    map[string]int
	refused int
}

func (o *pairObserver) PairEnded(cause string, _, _ int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ends == nil {
		o.ends = map[string]int{}
	}
	o.ends[cause]++
}

func (o *pairObserver) Refused(string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refused++
}

func (o *pairObserver) count(cause string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ends[cause]
}

// total is the number of pair ends, whatever their cause.
func (o *pairObserver) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.ends {
		n += c
	}
	return n
}

func (o *pairObserver) refusedCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused
}

// TestPairHalfCloseTimeout: for each half_close policy, one peer never
// closes after it receives a FIN. After half_close_timeout (or, when the
// policy closes the app's side at once, app_fin_timeout), no socket on any
// side is in CLOSE_WAIT or FIN_WAIT2: exact counts of every socket in the
// test's own network namespace.
func TestPairHalfCloseTimeout(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const timeout = 300 * time.Millisecond
	for _, tt := range []struct {
		name        string
		close       bool
		upstreamFIN bool // else the app sends the first FIN
	}{
		{"propagate, upstream FIN, app never closes", false, true},
		{"propagate, app FIN, upstream never closes", false, false},
		{"close, upstream FIN, app never closes", true, true},
		{"close, app FIN, upstream never closes", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hold := make(chan struct{})
			up := startTCPPeer(t, func(c *net.TCPConn) {
				io.ReadFull(c, make([]byte, 2))
				if tt.upstreamFIN {
					c.CloseWrite()
				}
				<-hold // never closes on its own
			})
			defer close(hold)
			lc := Config{CloseOnHalfClose: tt.close, HalfCloseTimeout: timeout,
				AppFinTimeout: timeout, Linger: sockopt.Linger{Mode: sockopt.Graceful}}
			addr, _, _ := startTCP(t, pool.Config{}, lc, up.addr())
			app := dialTCP(t, addr)
			app.Write([]byte("hi"))
			if !tt.upstreamFIN {
				wait.Until(t, 2*time.Second, "the upstream's accept", func() bool { return up.Accepted() == 1 })
				app.CloseWrite()
			}
			// The peer that got the FIN and never closes sits in
			// CLOSE_WAIT: the state the timeout must end. Wait for that
			// socket's (the upstream's accepted one, or the app's): the
			// socket of unstuck's that got the first FIN passes through
			// CLOSE_WAIT too, for as long as its close takes, and taking
			// that for the stuck peer would start the clock too soon.
			never := app.LocalAddr().(*net.TCPAddr).AddrPort()
			if !tt.upstreamFIN {
				never = up.Addr().(*net.TCPAddr).AddrPort()
			}
			peer := func(s sockstate.Socket) bool { return s.Local == never }
			stuck := func(c map[sockstate.State]int) bool { return c[sockstate.CloseWait] > 0 }
			all := func(sockstate.Socket) bool { return true }
			if _, err := sockstate.WaitFor(context.Background(), peer, stuck); err != nil {
				t.Fatalf("the peer's socket never reached CLOSE_WAIT: %v", err)
			}
			began := time.Now()
			clean := func(c map[sockstate.State]int) bool {
				return c[sockstate.CloseWait] == 0 && c[sockstate.FinWait2] == 0
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout+3*time.Second)
			defer cancel()
			counts, err := sockstate.WaitFor(ctx, all, clean)
			if err != nil {
				t.Fatalf("after the timeout: %v", err)
			}
			if took := time.Since(began); took < timeout/2 {
				t.Errorf("cleared after %v; the policy allows the other direction %v", took, timeout)
			}
			t.Logf("after %v: %v", time.Since(began), counts)
		})
	}
}

// TestPairWarmPoolNeverHandsOutDeadConnection: an upstream that FINs
// connections idle for 100 ms; a warm pool of 4 in front of it; app
// connections arriving at random moments over two seconds are all paired
// with a live upstream connection, and each warm connection the upstream
// closes is closed by unstuck within milliseconds.
func TestPairWarmPoolNeverHandsOutDeadConnection(t *testing.T) {
	const idleClose = 100 * time.Millisecond
	var mu sync.Mutex
	var reactions []time.Duration
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetReadDeadline(time.Now().Add(idleClose))
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if isTimeout(err) {
			c.CloseWrite()
			fin := time.Now()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := br.ReadByte(); err == io.EOF {
				mu.Lock()
				reactions = append(reactions, time.Since(fin))
				mu.Unlock()
			}
			return
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("pong " + line))
		io.Copy(io.Discard, br)
	})
	obs := &pairObserver{}
	addr, p, _ := startTCP(t, pool.Config{MinIdle: 4}, Config{Observer: obs}, up.addr())
	wait.Until(t, 5*time.Second, "four warm connections", func() bool { return idleConns(p) == 4 })
	// The pool learns how long the server lets idle connections live from
	// the closes it sees (three bursts of them, pool/retire.go's minFINs):
	// the app arrives once it has, and the warm connections it retires
	// have been replaced. Before that a pairing can race the server's close
	// (README, Limitations), which is not what this test is about: it
	// raced in about 1 run in 6 under -race, when the first arrival came
	// at the second burst.
	wait.Until(t, 5*time.Second, "the server's first idle closes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reactions) >= 4
	})
	wait.Until(t, 5*time.Second, "the server's idle timeout learned", func() bool {
		for _, c := range p.Snapshot() {
			if c.State == "idle" && c.RetireIn > 0 {
				return true
			}
		}
		return false
	})
	wait.Until(t, 5*time.Second, "four warm connections again", func() bool { return idleConns(p) == 4 })
	r := rand.New(rand.NewPCG(7, 7))
	failed := 0
	const arrivals = 40
	for i := range arrivals {
		time.Sleep(time.Duration(r.IntN(100)) * time.Millisecond)
		app := dialTCP(t, addr)
		app.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(app, "ping %d\n", i)
		line, err := bufio.NewReader(app).ReadString('\n')
		if want := fmt.Sprintf("pong ping %d\n", i); line != want {
			failed++
			t.Errorf("arrival %d: read %q, %v; want %q", i, line, err, want)
		}
		app.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reactions) == 0 {
		t.Fatal("the upstream closed no warm connection: the test did not test")
	}
	worst := slicesMax(reactions)
	t.Logf("%d arrivals, %d failed; upstream closed %d warm connections, unstuck's close followed within %v at worst",
		arrivals, failed, len(reactions), worst)
	if worst > 250*time.Millisecond {
		t.Errorf("a warm connection the upstream closed was closed by unstuck only %v later; want milliseconds", worst)
	}
}

func slicesMax(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// TestPairSplices: a pair moves bytes in the kernel (splice), not through
// a user-space buffer. /proc/self/io's rchar and wchar count the bytes a
// process passes through read and write calls; the test's own app and
// upstream read and write size bytes each way, so a copy through user
// space would add as much again, and splice adds nothing.
func TestPairSplices(t *testing.T) {
	const size = 32 << 20
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(io.Discard, c)
	})
	addr, _, _ := startTCP(t, pool.Config{}, Config{}, up.addr())
	app := dialTCP(t, addr)
	app.SetDeadline(time.Now().Add(30 * time.Second))
	// One warm-up byte, so the pair is made before counting.
	app.Write([]byte("x"))
	wait.Until(t, 5*time.Second, "the upstream's accept", func() bool { return up.Accepted() == 1 })
	before := procIO(t)
	buf := make([]byte, size)
	if _, err := app.Write(buf); err != nil {
		t.Fatal(err)
	}
	app.CloseWrite()
	app.Read(make([]byte, 1)) // the pair's end
	after := procIO(t)
	read, written := after["rchar"]-before["rchar"], after["wchar"]-before["wchar"]
	t.Logf("moving %d bytes: rchar +%d, wchar +%d", size, read, written)
	if read > size*3/2 || written > size*3/2 {
		t.Errorf("the process read %d and wrote %d bytes through user space to move %d: the pair copies, it does not splice", read, written, size)
	}
}

func procIO(t *testing.T) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		var k string
		var v int64
		if n, _ := fmt.Sscanf(line, "%s %d", &k, &v); n == 2 {
			m[strings.TrimSuffix(k, ":")] = v
		}
	}
	return m
}

// TestTCPShutdownEndsPairs: Shutdown lets pairs run until its context
// ends, then resets both sides of each and returns once they are closed.
func TestTCPShutdownEndsPairs(t *testing.T) {
	upErr := make(chan error, 1)
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		upErr <- err
	})
	addr, _, s := startTCP(t, pool.Config{}, Config{}, up.addr())
	app := dialTCP(t, addr)
	app.SetDeadline(time.Now().Add(10 * time.Second))
	app.Write([]byte("x"))
	wait.Until(t, 5*time.Second, "the pair", func() bool { return up.Accepted() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v; want the context's deadline (a pair was still open)", err)
	}
	if n := s.OpenConnections(); n != 0 {
		t.Errorf("%d app connections open after Shutdown", n)
	}
	if _, err := app.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("app read %v; want a reset", err)
	}
	if err := <-upErr; !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("upstream read %v; want a reset", err)
	}
}

// TestPairAppHalfClosesThenReadsToEOF: a request-response client shuts
// down writing, then reads the answer to its end. The upstream answers and
// closes; the app reads every byte and then EOF, not a reset, with the
// listener's default linger (reset) too.
func TestPairAppHalfClosesThenReadsToEOF(t *testing.T) {
	up := startTCPPeer(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		req, _ := io.ReadAll(c) // to the app's FIN
		c.Write(append([]byte("answer to "), req...))
	}) // the handler's return closes: the upstream's FIN
	addr, _, _ := startTCP(t, pool.Config{}, Config{Linger: sockopt.Linger{Mode: sockopt.Reset}}, up.addr())
	for i := range 50 {
		app := dialTCP(t, addr)
		app.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(app, "request %d", i)
		app.CloseWrite()
		got, err := io.ReadAll(app)
		if want := fmt.Sprintf("answer to request %d", i); string(got) != want || err != nil {
			t.Fatalf("round %d: app read %q, %v; want %q and EOF", i, got, err, want)
		}
		app.Close()
	}
}
