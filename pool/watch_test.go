package pool

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// recObserver counts the pool's closes by cause: every close (Closed), and
// those the watcher made (HalfClosed).
type recObserver struct {
	nopObserver
	mu     sync.Mutex
	closed map[Cause]int
	half   map[Cause]int
}

func newRecObserver() *recObserver {
	return &recObserver{closed: map[Cause]int{}, half: map[Cause]int{}}
}

func (o *recObserver) Closed(_ string, cause Cause) {
	o.mu.Lock()
	o.closed[cause]++
	o.mu.Unlock()
}

func (o *recObserver) HalfClosed(cause Cause, _ time.Duration) {
	o.mu.Lock()
	o.half[cause]++
	o.mu.Unlock()
}

// counts returns how many closes had cause, and how many of them the
// watcher made.
func (o *recObserver) counts(cause Cause) (closed, byWatcher int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closed[cause], o.half[cause]
}

// watcherWakes returns how often p's watcher has woken, once it has run
// its first round (so that round is not counted later as a wake-up).
func watcherWakes(t *testing.T, p *Pool) uint64 {
	t.Helper()
	wait.Until(t, 5*time.Second, "watcher started", func() bool { return p.watch.wakes() > 0 })
	return p.watch.wakes()
}

// serverConn returns the server's side of the i-th accepted connection.
func (s *finServer) conn(i int) net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[i]
}

// accepted waits for the server to accept one more connection.
func (s *finServer) accepted(t *testing.T) {
	t.Helper()
	select {
	case <-s.ready:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted within 5s")
	}
}

// expectClosedByPeer reads c until EOF: the pool closed its side.
func expectClosedByPeer(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("server side: want the pool's close (EOF) within %v, got %v", within, err)
	}
}

// expectNoNotes checks that no FIN note (Conn.missed) is left: every noted
// connection was closed or peeked.
func expectNoNotes(t *testing.T, p *Pool) {
	t.Helper()
	p.mu.Lock()
	notes := 0
	for _, c := range p.all {
		if c.missed {
			notes++
		}
	}
	p.mu.Unlock()
	if notes != 0 {
		t.Fatalf("%d notes left in missed", notes)
	}
}

func (p *Pool) noted(id uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.all[id]
	return c != nil && c.missed
}

// A FIN or an RST on an idle connection wakes the watcher, which closes it
// by itself: no Acquire is made.
func TestIdleConnectionClosedByWatcher(t *testing.T) {
	for _, tc := range []struct {
		name  string
		end   func(net.Conn)
		cause Cause
	}{
		{"fin", func(c net.Conn) { c.(*net.TCPConn).CloseWrite() }, CauseFIN},
		{"rst", func(c net.Conn) { c.(*net.TCPConn).SetLinger(0); c.Close() }, CauseRST},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFinServer(t)
			obs := newRecObserver()
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs})
			p.Release(acquireN(t, p, srv, 1)[0])
			wakes := watcherWakes(t, p)
			tc.end(srv.conn(0))
			wait.Until(t, 5*time.Second, "the watcher closes the idle connection", func() bool {
				_, byWatcher := obs.counts(tc.cause)
				return byWatcher == 1
			})
			waitCounts(t, p, 0, 0, time.Second)
			if p.watch.wakes() == wakes {
				t.Fatal("closed without a watcher wake-up")
			}
			if tc.cause == CauseFIN {
				expectClosedByPeer(t, srv.conn(0), 5*time.Second)
			}
		})
	}
}

// closeBarrier half-closes the server side of an idle connection of p and
// waits until the watcher has closed it. Any event the watcher got before
// that FIN has been handled by then: epoll reports a set's events in the
// order they came, and onReadable takes a whole batch under one lock.
func closeBarrier(t *testing.T, p *Pool, obs *recObserver, server net.Conn) {
	t.Helper()
	_, before := obs.counts(CauseFIN)
	server.(*net.TCPConn).CloseWrite()
	wait.Until(t, 5*time.Second, "the watcher closes the barrier connection", func() bool {
		_, byWatcher := obs.counts(CauseFIN)
		return byWatcher == before+1
	})
}

// Bytes without a FIN on an idle connection do not wake the watcher (it
// does not watch for data). The next Acquire's peek finds them, closes the
// connection as unsolicited and hands out a new one: no request goes on
// the dirty connection.
func TestUnsolicitedBytesFoundAtAcquire(t *testing.T) {
	srv := newFinServer(t)
	obs := newRecObserver()
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs})
	cs := acquireN(t, p, srv, 2)
	dirty, barrier := cs[0], cs[1]
	p.Release(barrier)
	p.Release(dirty) // at the front: the next Acquire's pick
	wakes := watcherWakes(t, p)

	if _, err := srv.conn(0).Write([]byte("HTTP/1.1 408 Request Timeout\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, "the bytes reach the idle connection", func() bool {
		return sockopt.Peek(fdOf(t, dirty)) == sockopt.Unsolicited // does not consume them
	})
	closeBarrier(t, p, obs, srv.conn(1))
	if w := p.watch.wakes() - wakes; w != 1 {
		t.Fatalf("%d watcher wake-ups; want 1, for the barrier's FIN alone", w)
	}
	if open, idle := p.counts(); open != 1 || idle != 1 {
		t.Fatalf("before Acquire: %d open, %d idle; want the dirty connection still idle", open, idle)
	}

	c, err := p.Acquire(false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(c)
	if c == dirty || c.Reused() {
		t.Fatal("Acquire handed out the connection with unsolicited bytes")
	}
	srv.accepted(t) // a new connection was dialed
	if closed, byWatcher := obs.counts(CauseUnsolicited); closed != 1 || byWatcher != 0 {
		t.Fatalf("unsolicited closes: %d, %d by the watcher; want 1 by the peek", closed, byWatcher)
	}
	// Closed with the bytes unread, so the kernel sends an RST, not a FIN.
	sc := srv.conn(0)
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, sc); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server side: want the pool's close (a reset), got %v", err)
	}
}

// A FIN that lands while a connection is busy, unnoticed by its holder,
// fires its only epoll event then. The connection must not be left idle
// and half-closed when it is released, whatever the order of the watcher
// and Release, nor handed to a waiting Acquire.
func TestFINWhileBusyHandledAtRelease(t *testing.T) {
	t.Run("seen before release", func(t *testing.T) {
		srv := newFinServer(t)
		obs := newRecObserver()
		p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs})
		c := acquireN(t, p, srv, 1)[0]
		srv.conn(0).(*net.TCPConn).CloseWrite()
		wait.Until(t, 5*time.Second, "the watcher notes the busy connection's FIN", func() bool { return p.noted(c.id) })
		p.Release(c)
		// Release's peek closed it before returning: never idle.
		if open, idle := p.counts(); open != 0 || idle != 0 {
			t.Fatalf("after Release: %d open, %d idle; want 0, 0", open, idle)
		}
		if closed, byWatcher := obs.counts(CauseFIN); closed != 1 || byWatcher != 0 {
			t.Fatalf("fin closes: %d, %d by the watcher; want 1 by Release", closed, byWatcher)
		}
		expectClosedByPeer(t, srv.conn(0), 5*time.Second)
		expectNoNotes(t, p)
	})

	t.Run("racing release", func(t *testing.T) {
		const n = 100
		srv := newFinServer(t)
		obs := newRecObserver()
		p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs})
		for i := range n {
			c := acquireN(t, p, srv, 1)[0]
			srv.conn(i).(*net.TCPConn).CloseWrite()
			p.Release(c) // the FIN may land before, during or after
			waitCounts(t, p, 0, 0, 5*time.Second)
			expectClosedByPeer(t, srv.conn(i), 5*time.Second)
		}
		closed, byWatcher := obs.counts(CauseFIN)
		t.Logf("%d FINs: %d closed by the watcher, %d by Release", closed, byWatcher, closed-byWatcher)
		if closed != n {
			t.Fatalf("%d fin closes; want %d", closed, n)
		}
		expectNoNotes(t, p)
	})

	t.Run("handed to a waiter", func(t *testing.T) {
		srv := newFinServer(t)
		obs := newRecObserver()
		p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs, MaxConns: 1, AcquireTimeout: 10 * time.Second})
		held := acquireN(t, p, srv, 1)[0]
		srv.conn(0).(*net.TCPConn).CloseWrite()
		wait.Until(t, 5*time.Second, "the watcher notes the busy connection's FIN", func() bool { return p.noted(held.id) })
		got := acquireQueued(t, p)
		p.Release(held)
		c := <-got
		if c == nil {
			t.FailNow()
		}
		defer p.Release(c)
		if c == held || c.Reused() {
			t.Fatal("the waiter got the half-closed connection")
		}
		srv.accepted(t) // the waiter dialed into the dead connection's slot
		if closed, _ := obs.counts(CauseFIN); closed != 1 {
			t.Fatalf("%d fin closes; want 1", closed)
		}
		expectClosedByPeer(t, srv.conn(0), 5*time.Second)
		if open, idle := p.counts(); open != 1 || idle != 0 {
			t.Fatalf("%d open, %d idle; want the waiter's new connection only", open, idle)
		}
	})
}

// newRespServer answers each one-byte request on a connection with size
// bytes, until the peer closes.
func newRespServer(t *testing.T, size int) *finServer {
	resp := make([]byte, size)
	return startTestServer(t, func(c net.Conn) {
		var req [1]byte
		for {
			if _, err := io.ReadFull(c, req[:]); err != nil {
				return
			}
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
	})
}

// Responses arriving on a busy connection, and the requests written on it,
// never wake the watcher: the mask has no EPOLLIN, and the kernel drops a
// data or write-space wake-up before epoll sees it.
func TestBusyConnectionDoesNotWakeWatcher(t *testing.T) {
	const n, size = 200, 256 << 10
	srv := newRespServer(t, size)
	obs := newRecObserver()
	p := newTestPool(t, Config{Endpoints: []string{srv.ln.Addr().String()}, Observer: obs})
	var cs [2]*Conn
	for i := range cs {
		c, err := p.Acquire(false)
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	busy, barrier := cs[0], cs[1]
	// The witness: the busy socket in a second epoll set whose mask has
	// EPOLLIN, as the pool's had while a connection was idle. It must see
	// the traffic, or the count below proves nothing.
	witness, err := newWatcher()
	if err != nil {
		t.Fatal(err)
	}
	if err := witness.set.Add(fdOf(t, busy), unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLET, 0); err != nil {
		t.Fatal(err)
	}
	witnessDone := make(chan struct{})
	go func() {
		defer close(witnessDone)
		witness.run(func([]readable, time.Time) {})
	}()
	defer func() { witness.close(); <-witnessDone }()
	p.Release(barrier)
	p.Release(busy) // at the front: every Acquire below takes it
	wakes := watcherWakes(t, p)
	wait.Until(t, 5*time.Second, "witness started", func() bool { return witness.wakes() > 0 })
	witnessWakes := witness.wakes()

	buf := make([]byte, size)
	for i := range n {
		c, err := p.Acquire(false)
		if err != nil {
			t.Fatal(err)
		}
		if c != busy {
			t.Fatalf("cycle %d: another connection; want the one busy connection reused", i)
		}
		c.NetConn().SetDeadline(time.Now().Add(5 * time.Second))
		c.Writer().WriteByte('?')
		if err := c.Writer().Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c.Reader(), buf); err != nil {
			t.Fatal(err)
		}
		c.NetConn().SetDeadline(time.Time{})
		p.Release(c)
	}
	closeBarrier(t, p, obs, srv.peerOf(t, barrier))
	if w := p.watch.wakes() - wakes; w != 1 {
		t.Fatalf("%d watcher wake-ups over %d exchanges of %d KiB and one FIN; want 1, for the FIN", w, n, size>>10)
	}
	ww := witness.wakes() - witnessWakes
	t.Logf("%d exchanges of %d KiB: no watcher wake-up; %d for a mask with EPOLLIN", n, size>>10, ww)
	if ww == 0 {
		t.Fatal("the witness never woke: the traffic did not reach epoll at all")
	}
}

// peerOf returns the server's side of c.
func (s *finServer) peerOf(t *testing.T, c *Conn) net.Conn {
	t.Helper()
	local := c.NetConn().LocalAddr().String()
	var peer net.Conn
	wait.Until(t, 5*time.Second, "the server accepts "+local, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, sc := range s.conns {
			if sc.RemoteAddr().String() == local {
				peer = sc
				return true
			}
		}
		return false
	})
	return peer
}
