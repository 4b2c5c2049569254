// Package tcpserve is the accept loop of the repo's hand-rolled servers
// (the demo's upstream, testpeer's servers, the bench rig's upstream): a
// goroutine per connection, every open connection tracked so Close can
// close it, and Close waiting for every goroutine. The order that makes
// this race-free (the WaitGroup grows before the blocking Accept; a
// connection accepted once Close began is closed, not served) is easy to
// get wrong in a copy, so it lives here once.
package tcpserve

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Loop accepts connections and serves each on a goroutine of its own. Its
// methods are safe for concurrent use.
type Loop struct {
	ln     net.Listener
	handle func(c *net.TCPConn, n int)
	done   chan struct{} // closed when Close begins
	once   sync.Once
	wg     sync.WaitGroup // the accept loop and one per connection

	mu       sync.Mutex // guards everything below
	closed   bool
	conns    map[*net.TCPConn]struct{} // open: handle has not returned
	accepted int
}

// New makes a Loop on ln, a TCP listener; Serve starts it. It is two
// steps so that the owner can store the Loop before any handler may use
// it. The caller owns the Loop and must Close it.
func New(ln net.Listener) *Loop {
	return &Loop{
		ln:    ln,
		done:  make(chan struct{}),
		conns: make(map[*net.TCPConn]struct{}),
	}
}

// Serve accepts connections until Close, and runs handle for each on a
// goroutine of its own; n is the connection's accept number, from 1. The
// connection is closed when handle returns (handle may close it first).
// Call it once; it returns at once.
func (l *Loop) Serve(handle func(c *net.TCPConn, n int)) {
	l.handle = handle
	l.wg.Add(1)
	go l.acceptLoop()
}

// Addr is the listener's address.
func (l *Loop) Addr() net.Addr { return l.ln.Addr() }

// Done is closed once Close begins, to cut short a handler's wait.
func (l *Loop) Done() <-chan struct{} { return l.done }

// Accepted returns how many connections were accepted and served so far.
func (l *Loop) Accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted
}

// Open returns how many accepted connections are not closed yet.
func (l *Loop) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Close stops accepting, closes every open connection (interrupting the
// reads and writes of its handler) and waits for every handler to return.
// It returns the listener's close error; later calls return nil.
func (l *Loop) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.ln.Close()
		l.mu.Lock()
		l.closed = true
		for c := range l.conns {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

func (l *Loop) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		l.wg.Add(1) // for serve, before the blocking Accept
		c, err := l.ln.Accept()
		if err != nil {
			l.wg.Done()
			if !l.backOff(err, &backoff) {
				return
			}
			continue
		}
		backoff = 0
		tc := c.(*net.TCPConn)
		n, ok := l.track(tc)
		if !ok { // Close ran between Accept and track
			l.wg.Done()
			return
		}
		go l.serve(tc, n)
	}
}

// backOff waits after a failed Accept, longer each time in a row, as
// net/http does (EMFILE and friends pass); false means stop: the listener
// is closed.
func (l *Loop) backOff(err error, backoff *time.Duration) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	*backoff = min(max(2**backoff, 5*time.Millisecond), time.Second)
	t := time.NewTimer(*backoff)
	defer t.Stop()
	select {
	case <-l.done:
		return false
	case <-t.C:
		return true
	}
}

// track registers c so Close can close it and returns its accept number;
// false means Close ran, and c has been closed.
func (l *Loop) track(c *net.TCPConn) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return 0, false
	}
	l.accepted++
	l.conns[c] = struct{}{}
	return l.accepted, true
}

func (l *Loop) serve(c *net.TCPConn, n int) {
	defer l.wg.Done()
	defer l.untrack(c)
	l.handle(c, n)
}

// untrack closes c, whose handler returned, and forgets it.
func (l *Loop) untrack(c *net.TCPConn) {
	c.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}
