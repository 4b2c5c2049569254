package pool

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// finServer accepts connections on loopback and keeps them, so that a test
// can half-close (finAll), reset or read them; with serve, each connection
// also gets a goroutine running serve. Everything ends with the test.
type finServer struct {
	ln        net.Listener
	mu        sync.Mutex
	conns     []net.Conn
	accepting sync.WaitGroup // the accept loop
	serving   sync.WaitGroup // the serve goroutines
	ready     chan struct{}  // one token per accepted connection
}

func newFinServer(t *testing.T) *finServer { return startTestServer(t, nil) }

func startTestServer(t *testing.T, serve func(net.Conn)) *finServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &finServer{ln: ln, ready: make(chan struct{}, 100000)}
	s.accepting.Add(1)
	go func() {
		defer s.accepting.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			if serve != nil {
				s.serving.Add(1)
				go func() {
					defer s.serving.Done()
					serve(c)
				}()
			}
			s.ready <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.accepting.Wait()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close() // also ends its serve goroutine
		}
		s.mu.Unlock()
		s.serving.Wait()
	})
	return s
}

func (s *finServer) addr() string { return s.ln.Addr().String() }

// finAll sends FIN on every accepted connection and returns, per
// connection, the time from its FIN until the peer's close reached us.
func (s *finServer) finAll(t *testing.T, bound time.Duration) []time.Duration {
	t.Helper()
	s.mu.Lock()
	conns := append([]net.Conn(nil), s.conns...)
	s.mu.Unlock()
	lat := make([]time.Duration, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(bound))
			start := time.Now()
			c.(*net.TCPConn).CloseWrite()
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				lat[i] = -1
				return
			}
			lat[i] = time.Since(start)
		}()
	}
	wg.Wait()
	return lat
}

func newTestPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestIdleConnectionClosedOnPeerFIN(t *testing.T) {
	for _, linger := range []string{"graceful", "reset"} {
		t.Run(linger, func(t *testing.T) {
			srv := newFinServer(t)
			l, _ := sockopt.ParseLinger(linger)
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Linger: l, IdleTimeout: time.Hour})
			const n = 200
			var conns []*Conn
			for range n {
				c, err := p.Acquire(false)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				<-srv.ready
			}
			for _, c := range conns {
				p.Release(c)
			}
			lat := srv.finAll(t, 5*time.Second)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if lat[0] < 0 {
				t.Fatalf("a connection was not closed within 5s of its FIN")
			}
			t.Logf("FIN to close, %d idle connections: p50 %v p99 %v max %v", n, lat[n/2], lat[n*99/100], lat[n-1])
			if open, idle := p.counts(); idle != 0 || open != 0 {
				t.Fatalf("after FINs: %d idle, %d open; want 0, 0", idle, open)
			}
		})
	}
}

// acquireN acquires n fresh connections and waits until the server has
// accepted each.
func acquireN(t *testing.T, p *Pool, srv *finServer, n int) []*Conn {
	t.Helper()
	var cs []*Conn
	for range n {
		c, err := p.Acquire(false)
		if err != nil {
			t.Fatal(err)
		}
		<-srv.ready
		cs = append(cs, c)
	}
	return cs
}

func (p *Pool) counts() (open, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ep := range p.eps {
		open += ep.conns
		idle += ep.idle.len
	}
	return open, idle
}

// waitCounts polls until the pool holds want open and idle connections.
func waitCounts(t *testing.T, p *Pool, open, idle int, within time.Duration) {
	t.Helper()
	wait.UntilNil(t, within, "the pool's counts", func() error {
		if o, i := p.counts(); o != open || i != idle {
			return fmt.Errorf("pool holds %d open, %d idle; want %d, %d", o, i, open, idle)
		}
		return nil
	})
}

func TestReuseIsLIFOAndPeeked(t *testing.T) {
	srv := newFinServer(t)
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}})
	cs := acquireN(t, p, srv, 2)
	p.Release(cs[0])
	p.Release(cs[1])
	c, err := p.Acquire(false)
	if err != nil {
		t.Fatal(err)
	}
	if c != cs[1] || !c.Reused() {
		t.Fatalf("want the most recently released connection back, reused")
	}
	p.Release(c)
	waitCounts(t, p, 2, 2, time.Second)
}

// waitForWaiter waits until an Acquire is queued at p's first endpoint.
// acquireQueued starts an Acquire on p, whose only endpoint is at
// MaxConns, and returns once it waits in the queue; the connection it gets
// (nil after an error) comes on the channel.
func acquireQueued(t *testing.T, p *Pool) <-chan *Conn {
	t.Helper()
	got := make(chan *Conn, 1)
	go func() {
		c, err := p.Acquire(false)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitForWaiter(t, p)
	return got
}

func waitForWaiter(t *testing.T, p *Pool) {
	t.Helper()
	wait.Until(t, 5*time.Second, "an Acquire queued", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.eps[0].waiters) == 1
	})
}

func TestMaxConnsWaitsThenHandsOver(t *testing.T) {
	srv := newFinServer(t)
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, AcquireTimeout: 20 * time.Millisecond})
	c := acquireN(t, p, srv, 1)[0]

	if _, err := p.Acquire(false); !errors.Is(err, ErrExhausted) {
		t.Fatalf("at max_conns: got %v, want ErrExhausted", err)
	}

	p2 := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, AcquireTimeout: 10 * time.Second})
	held := acquireN(t, p2, srv, 1)[0]
	got := acquireQueued(t, p2)
	p2.Release(held)
	if w := <-got; w != held {
		t.Fatalf("waiter did not get the released connection")
	} else {
		p2.Release(w)
	}
	p.Release(c)
}

func TestDiscardFreesSlotForWaiter(t *testing.T) {
	srv := newFinServer(t)
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, AcquireTimeout: 10 * time.Second})
	held := acquireN(t, p, srv, 1)[0]
	got := acquireQueued(t, p)
	p.Discard(held, CauseError)
	c := <-got
	<-srv.ready // the waiter dialed a new connection into the freed slot
	if c == held || c.Reused() {
		t.Fatal("waiter should have dialed a new connection")
	}
	p.Release(c)
	waitCounts(t, p, 1, 1, time.Second)
}

func TestLimitsCloseConnections(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		// after one request and release: open connections left
		check func(t *testing.T, p *Pool)
	}{
		{"max_requests", Config{MaxRequests: 2}, func(t *testing.T, p *Pool) {
			c, _ := p.Acquire(false)
			p.Release(c) // second request on it: closed
			waitCounts(t, p, 0, 0, time.Second)
		}},
		{"idle_timeout", Config{IdleTimeout: 30 * time.Millisecond}, func(t *testing.T, p *Pool) {
			waitCounts(t, p, 0, 0, 5*time.Second)
		}},
		{"max_lifetime", Config{MaxLifetime: 30 * time.Millisecond}, func(t *testing.T, p *Pool) {
			waitCounts(t, p, 0, 0, 5*time.Second)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFinServer(t)
			tc.cfg.Endpoints = []string{srv.addr()}
			p := newTestPool(t, tc.cfg)
			c := acquireN(t, p, srv, 1)[0]
			p.Release(c)
			tc.check(t, p)
		})
	}
	t.Run("max_idle", func(t *testing.T) {
		srv := newFinServer(t)
		p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxIdle: 2})
		for _, c := range acquireN(t, p, srv, 4) {
			p.Release(c)
		}
		waitCounts(t, p, 2, 2, time.Second)
	})
}

func TestCloseFailsWaitersAndClosesIdle(t *testing.T) {
	srv := newFinServer(t)
	p, err := New(Config{Endpoints: []string{srv.addr()}, MaxConns: 1, AcquireTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	held := acquireN(t, p, srv, 1)[0]
	errc := make(chan error)
	go func() {
		_, err := p.Acquire(false)
		errc <- err
	}()
	waitForWaiter(t, p)
	p.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter got %v, want ErrClosed", err)
	}
	p.Release(held) // after Close: closed, not pooled
	if o, i := p.counts(); o != 0 || i != 0 {
		t.Fatalf("after Close: %d open, %d idle", o, i)
	}
	if _, err := p.Acquire(false); !errors.Is(err, ErrClosed) {
		t.Fatalf("Acquire after Close: %v", err)
	}
}

func TestDialErrorIsTyped(t *testing.T) {
	addr := testpeer.FreeAddr(t)
	p := newTestPool(t, Config{Endpoints: []string{addr}})
	_, err := p.Acquire(false)
	var de *DialError
	if !errors.As(err, &de) || de.Addr != addr {
		t.Fatalf("got %v, want a DialError for %s", err, addr)
	}
	if o, _ := p.counts(); o != 0 {
		t.Fatalf("failed dial kept its slot: %d open", o)
	}
}

// benchPool is a pool in front of a loopback listener that accepts and
// holds connections until the benchmark ends.
func benchPool(b *testing.B) *Pool {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var held []net.Conn
	b.Cleanup(func() { // last: after the pool and the accept loop end
		for _, c := range held {
			c.Close()
		}
	})
	testpeer.AcceptLoop(b, ln, func(c net.Conn) { held = append(held, c) })
	p, err := New(Config{Endpoints: []string{ln.Addr().String()}, MaxConns: 1024, MaxIdle: 1024})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// Handing a pooled connection out and back: one peek out, no syscall back,
// no allocation.
func BenchmarkAcquireRelease(b *testing.B) {
	p := benchPool(b)
	c, err := p.Acquire(false)
	if err != nil {
		b.Fatal(err)
	}
	p.Release(c)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c, err := p.Acquire(false)
		if err != nil {
			b.Fatal(err)
		}
		p.Release(c)
	}
}

func TestAcquireReleaseDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts need a build without -race; CI runs this test without it")
	}
	srv := newFinServer(t)
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}})
	p.Release(acquireN(t, p, srv, 1)[0])
	allocs := testing.AllocsPerRun(1000, func() {
		c, err := p.Acquire(false)
		if err != nil {
			t.Fatal(err)
		}
		p.Release(c)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per Acquire/Release; want 0", allocs)
	}
}

// Handing connections out and back from every P at once: the pool lock's
// contention shows here. With 512 callers, as many connections circulate,
// like the proxy's under wrk -c512.
func BenchmarkAcquireReleaseParallel(b *testing.B) {
	for _, callers := range []int{8, 512} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			benchAcquireReleaseParallel(b, callers)
		})
	}
}

func benchAcquireReleaseParallel(b *testing.B, callers int) {
	p := benchPool(b)
	b.ReportAllocs()
	b.SetParallelism(max(callers/runtime.GOMAXPROCS(0), 1))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := p.Acquire(false)
			if err != nil {
				b.Fatal(err)
			}
			p.Release(c)
		}
	})
}

// An Acquire waiting at max_conns on an endpoint that goes out, here
// marked unhealthy by a health check, picks again instead of waiting to
// dial there: with no other endpoint it fails at once with ErrNoEndpoint.
// (It used to wait, and then dial the unhealthy endpoint in the slot its
// held connection freed.)
func TestWaiterLeavesEndpointThatGoesOut(t *testing.T) {
	srv := newFinServer(t)
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, AcquireTimeout: 10 * time.Second})
	held := acquireN(t, p, srv, 1)[0]
	got := make(chan error, 1)
	go func() {
		c, err := p.Acquire(false)
		if c != nil {
			p.Release(c)
		}
		got <- err
	}()
	waitForWaiter(t, p)
	p.SetHealthy(srv.addr(), false)
	select {
	case err := <-got:
		if !errors.Is(err, ErrNoEndpoint) {
			t.Fatalf("the waiter got %v; want ErrNoEndpoint", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter still waits on an endpoint that is out")
	}
	p.Discard(held, CauseError)
}
