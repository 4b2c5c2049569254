package pool

import (
	"errors"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// fdOf returns c's descriptor number, for a test that holds c (busy) and
// uses the number before it releases c.
func fdOf(t *testing.T, c *Conn) int {
	t.Helper()
	fd, err := sockopt.FD(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// setHook stores f in hook for the rest of the test.
func setHook[F any](t *testing.T, hook *atomic.Pointer[F], f F) {
	t.Helper()
	hook.Store(&f)
	t.Cleanup(func() { hook.Store(nil) })
}

// totalCloses counts every close obs saw, whatever its cause.
func (o *recObserver) totalCloses() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, v := range o.closed {
		n += v
	}
	return n
}

// acquireResult runs acquire on its own goroutine and returns its result,
// failing the test if it has not returned within 10s (it hangs).
func acquireResult(t *testing.T, acquire func() (*Conn, error)) (*Conn, error) {
	t.Helper()
	type result struct {
		c   *Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := acquire()
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire hangs")
		return nil, nil
	}
}

// What happens in Acquire's window, between an acquireIdleUnlock that found
// nothing and the lock that decides to dial or wait, is seen before the
// Acquire queues: with the only connection busy (MaxConns 1), a slot freed
// there is dialed into, a connection released there is taken, and a Close
// there gives ErrClosed; never ErrExhausted after acquire_timeout, nor a
// wait without end with acquire_timeout 0. The hook acts at the last
// look before queueing (a careful Acquire looks twice: settled, then any).
func TestAcquireWindow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		inside  func(p *Pool, held *Conn)
		wantErr error
		reused  bool // the Acquire gets held back
	}{
		{"slot freed", func(p *Pool, held *Conn) { p.Discard(held, CauseError) }, nil, false},
		{"released", func(p *Pool, held *Conn) { p.Release(held) }, nil, true},
		{"closed", func(p *Pool, _ *Conn) { p.Close() }, ErrClosed, false},
	} {
		for _, careful := range []bool{false, true} {
			for _, timeout := range []time.Duration{0, 5 * time.Second} {
				name := tc.name + "/careful=" + map[bool]string{false: "no", true: "yes"}[careful] +
					"/acquire_timeout=" + timeout.String()
				t.Run(name, func(t *testing.T) {
					srv := newFinServer(t)
					p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, AcquireTimeout: timeout})
					held := acquireN(t, p, srv, 1)[0]
					last := 1
					if careful {
						last = 2
					}
					var looks int
					setHook(t, &testHookAcquireRelock, func() {
						if looks++; looks == last {
							tc.inside(p, held)
						}
					})
					c, err := acquireResult(t, func() (*Conn, error) { return p.Acquire(careful) })
					testHookAcquireRelock.Store(nil)
					if !errors.Is(err, tc.wantErr) {
						t.Fatalf("Acquire: %v; want %v", err, tc.wantErr)
					}
					if looks != last {
						t.Fatalf("the window was passed %d times; want %d", looks, last)
					}
					if err != nil {
						p.Release(held) // after Close: closed
						waitCounts(t, p, 0, 0, time.Second)
						return
					}
					if (c == held) != tc.reused {
						t.Fatalf("got the held connection back: %v; want %v", c == held, tc.reused)
					}
					if !tc.reused {
						srv.accepted(t)
					}
					if o, _ := p.counts(); o != 1 {
						t.Fatalf("%d open; want 1", o)
					}
					p.Release(c)
					waitCounts(t, p, 1, 1, time.Second)
				})
			}
		}
	}
}

// A second Release or Discard of the same connection does nothing: the
// endpoint's count stays right and the socket is closed once at most.
func TestReleaseIsIdempotent(t *testing.T) {
	release := func(p *Pool, c *Conn) { p.Release(c) }
	discard := func(p *Pool, c *Conn) { p.Discard(c, CauseError) }
	for _, tc := range []struct {
		name          string
		maxRequests   int
		first, second func(p *Pool, c *Conn)
		open, closes  int
	}{
		{"release twice", 0, release, release, 1, 0},
		{"discard twice", 0, discard, discard, 0, 1},
		{"release then discard", 0, release, discard, 1, 0},
		{"discard then release", 0, discard, release, 0, 1},
		{"release closing, then discard", 1, release, discard, 0, 1}, // max_requests 1
		{"release closing, then release", 1, release, release, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFinServer(t)
			obs := newRecObserver()
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxRequests: tc.maxRequests, Observer: obs})
			// A second connection, busy throughout, whose slot a wrong
			// second decrement would show.
			cs := acquireN(t, p, srv, 2)
			c, other := cs[0], cs[1]
			tc.first(p, c)
			tc.second(p, c)
			waitCounts(t, p, tc.open+1, tc.open, time.Second)
			if got := obs.totalCloses(); got != tc.closes {
				t.Fatalf("%d closes; want %d", got, tc.closes)
			}
			if tc.closes == 1 {
				expectClosedByPeer(t, srv.conn(0), 5*time.Second)
			}
			if tc.open == 1 { // the idle list holds it once
				got, err := p.Acquire(false)
				if err != nil || got != c {
					t.Fatalf("Acquire: %v; want the released connection back", err)
				}
				p.Release(got)
			}
			p.Discard(other, CauseError)
			waitCounts(t, p, tc.open, tc.open, time.Second)
		})
	}
}

// A dial that Close overtakes (Close lands after the connect) closes its
// socket through the close path, cause shutdown, and its Acquire gets
// ErrClosed: nothing is registered with the closed watcher. Close waits
// for the dial. AcquireNew in its slot of a replaced idle connection
// does the same.
func TestCloseOvertakesDial(t *testing.T) {
	for _, tc := range []struct {
		name    string
		acquire func(p *Pool) (*Conn, error)
	}{
		{"Acquire", func(p *Pool) (*Conn, error) { return p.Acquire(false) }},
		{"AcquireNew", func(p *Pool) (*Conn, error) { return p.AcquireNew() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFinServer(t)
			obs := newRecObserver()
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, Observer: obs})
			p.Release(acquireN(t, p, srv, 1)[0])
			if tc.name == "Acquire" {
				p.Discard(p.takeIdleForTest(), CauseError) // a slot to dial into
			}
			closed := make(chan struct{})
			setHook(t, &testHookDialed, func(*Conn) {
				go func() {
					defer close(closed)
					p.Close()
				}()
				for !p.isClosed() { // Close marks the pool, then waits for this dial
					runtime.Gosched()
				}
				select {
				case <-closed:
					t.Error("Close returned before the dial in flight ended")
				default:
				}
			})
			_, err := acquireResult(t, func() (*Conn, error) { return tc.acquire(p) })
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("got %v; want ErrClosed", err)
			}
			<-closed
			srv.accepted(t)
			expectClosedByPeer(t, srv.conn(1), 5*time.Second)
			if n, _ := obs.counts(CauseShutdown); n != 1 {
				t.Fatalf("%d closes with cause shutdown; want 1", n)
			}
			if o, i := p.counts(); o != 0 || i != 0 {
				t.Fatalf("%d open, %d idle; want 0, 0", o, i)
			}
		})
	}
}

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// takeIdleForTest takes p's one idle connection, as if to hand it out.
func (p *Pool) takeIdleForTest() *Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.popIdleLocked(0, 1, false, time.Time{})
	c.released.Store(false)
	return c
}

// A dial whose registration with the watcher fails closes its socket
// through the close path: its linger applies and the close is counted
// (cause error), as the dial was.
func TestDialFailureClosesThroughClosePath(t *testing.T) {
	srv := newFinServer(t)
	obs := newRecObserver()
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs,
		Linger: sockopt.Linger{Mode: sockopt.Reset}})
	setHook(t, &testHookDialed, func(c *Conn) {
		// The socket is in the set already: EPOLL_CTL_ADD fails (EEXIST).
		if err := p.watch.set.Add(fdOf(t, c), watchEvents, 0); err != nil {
			t.Error(err)
		}
	})
	_, err := p.Acquire(false)
	var de *DialError
	if !errors.As(err, &de) || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("got %v; want a DialError for EEXIST", err)
	}
	srv.accepted(t)
	// Reset linger: the peer sees an RST, not a FIN.
	server := srv.conn(0)
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("server side: %v; want the linger's reset", err)
	}
	if n, _ := obs.counts(CauseError); n != 1 {
		t.Fatalf("%d closes with cause error; want 1", n)
	}
	if o, _ := p.counts(); o != 0 {
		t.Fatalf("%d open; want 0", o)
	}
}

// Close waits for the closes a bounded linger makes on their own
// goroutines: when it returns, none is left. The idle connection's peer
// reads nothing, so its unsent bytes hold close(2) for the whole linger.
func TestCloseWaitsForLingeringCloses(t *testing.T) {
	srv := newFinServer(t)
	p, err := New(Config{Endpoints: []string{srv.addr()},
		Linger: sockopt.Linger{Mode: sockopt.Bounded, Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	c := acquireN(t, p, srv, 1)[0]
	fillSendQueue(t, c.nc)
	p.Release(c)
	start := time.Now()
	p.Close()
	// close(2) returns when the linger is over: Close cannot return before.
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Fatalf("Close returned after %v, before the 1s linger was over", took)
	}
}

// fillSendQueue writes to nc until its send queue is full: the peer does
// not read.
func fillSendQueue(t *testing.T, nc net.Conn) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for {
		nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := nc.Write(buf); err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatal(err)
			}
			nc.SetWriteDeadline(time.Time{})
			return
		}
	}
}
