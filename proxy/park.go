package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/epoll"
)

// Idle release: an app connection waiting for its next request costs a
// fasthttp goroutine (its stack) and a read buffer, about 17 KiB, for as
// long as the app keeps it open, which for a legacy app can be forever.
// After idleReleaseAfter without a request the parker takes the connection
// off fasthttp: the goroutine ends, the buffers go back to their pools, and
// an epoll set watches the socket. When the app sends again (or closes),
// the connection goes back to fasthttp on a new goroutine, as if it had
// just been accepted. A released connection costs about 1 KiB.
//
// fasthttp has no API for this, so it is done with what it does have:
//
//   - The ConnState hook reports StateIdle when a response is out and the
//     next request's first byte is awaited, and StateActive when it has
//     come. In between, fasthttp reads only to get that first byte, and
//     only when nothing of the next request is buffered: a pipelined
//     request already in its buffer is served without a read. So a read in
//     that window can be ended without losing a byte.
//   - A sweeper wakes such a read once it has waited idleReleaseAfter, by
//     setting a read deadline in the past ("kicks" it). The read returns
//     io.EOF to fasthttp, which ends the connection's serve loop cleanly and
//     calls Close; Close hands the socket to the parker instead of closing
//     it.
//   - A readable parked socket is served with fasthttp's ServeConn.
//
// proxy tests check that idle connections hold no goroutine, so a fasthttp
// upgrade that changes this behaviour fails them.

// An app connection's place in that cycle (appConn.state).
const (
	connBusy    int32 = iota // reading or answering a request, or closed
	connWaiting              // at a request boundary, waiting for the first byte
	connKicked               // waited too long: its read was woken to release it
)

// longAgo is a read deadline that has passed: it wakes a blocked read.
var longAgo = time.Unix(1, 0)

// parker holds the app connections of one listener that are idle enough to
// release. It owns its epoll set, the sweeper goroutine and the goroutines
// that serve connections it hands back.
type parker struct {
	after       time.Duration // idle this long: release; 0 disables the parker
	idleTimeout time.Duration // the listener's idle_timeout, which a parked connection still obeys
	serve       func(net.Conn) error
	log         *zap.Logger
	obs         Observer
	set         *epoll.Set

	mu      sync.Mutex
	closed  bool
	nextID  uint64
	live    map[*appConn]struct{} // every TCP app connection not closed, for the sweeper
	parked  map[uint64]*appConn   // released connections, by epoll id
	kicks   []*appConn            // the sweeper's buffer
	serving sync.WaitGroup        // goroutines serving a connection handed back
	done    chan struct{}         // closed by shutdown: stops the sweeper
	runWG   sync.WaitGroup        // the sweeper and the epoll goroutine
}

// newParker returns a parker that releases connections idle for after;
// with after 0 it is disabled: it starts nothing, tracks and parks nothing.
func newParker(after, idleTimeout time.Duration, serve func(net.Conn) error, log *zap.Logger, obs Observer) (*parker, error) {
	p := &parker{
		after:       after,
		idleTimeout: idleTimeout,
		serve:       serve,
		log:         log,
		obs:         obs,
		live:        make(map[*appConn]struct{}),
		parked:      make(map[uint64]*appConn),
		done:        make(chan struct{}),
	}
	if after <= 0 {
		return p, nil
	}
	set, err := epoll.New("unstuck-idle-app")
	if err != nil {
		return nil, err
	}
	p.set = set
	p.runWG.Add(2)
	go func() {
		defer p.runWG.Done()
		set.Run(p.onEvents)
	}()
	go p.sweep()
	return p, nil
}

func (p *parker) enabled() bool { return p.set != nil }

// track starts following a new TCP app connection; it is at a request
// boundary until its first byte.
func (p *parker) track(c *appConn) {
	if !p.enabled() {
		return
	}
	c.parkable = true
	c.markWaiting()
	p.mu.Lock()
	p.nextID++
	c.id = p.nextID
	p.live[c] = struct{}{}
	p.mu.Unlock()
}

// forget stops following a connection being closed for good.
func (p *parker) forget(c *appConn) {
	if !c.parkable {
		return
	}
	p.mu.Lock()
	delete(p.live, c)
	p.mu.Unlock()
}

// sweep kicks, every after/4, the connections that have waited at a
// request boundary for at least after: each is released between after and
// 1.25×after. A ticker, not a timer per request, keeps the request path
// free of timer work.
func (p *parker) sweep() {
	defer p.runWG.Done()
	t := time.NewTicker(max(p.after/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			p.kickIdle(now.Add(-p.after))
		}
	}
}

// kickIdle wakes the boundary reads of connections waiting since before
// cutoff.
func (p *parker) kickIdle(cutoff time.Time) {
	p.mu.Lock()
	for c := range p.live {
		if c.state.Load() == connWaiting {
			p.kicks = append(p.kicks, c)
		}
	}
	p.mu.Unlock()
	for i, c := range p.kicks {
		c.kick(cutoff)
		p.kicks[i] = nil
	}
	p.kicks = p.kicks[:0]
}

// park takes a connection whose serve loop has just ended at a request
// boundary. It reports false if it cannot (shutting down, or the epoll
// set refuses the socket): then the caller closes it.
func (p *parker) park(c *appConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	// One-shot: the first readiness (a byte, FIN or RST) is reported once
	// and then the socket is off until parked again. Level-triggered, so a
	// byte that arrived while the serve loop was ending fires at once.
	const events = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT
	err := net.ErrClosed
	c.control(func(fd int) {
		if c.registered {
			err = p.set.Mod(fd, events, c.id)
		} else {
			err = p.set.Add(fd, events, c.id)
			c.registered = err == nil
		}
	})
	if err != nil {
		p.log.Warn("cannot release idle app connection", zap.Error(err))
		return false
	}
	p.parked[c.id] = c
	if p.idleTimeout > 0 {
		left := p.idleTimeout - time.Since(c.waitingSince())
		c.expiry = time.AfterFunc(max(left, 0), func() { p.expire(c) })
	}
	p.obs.AppConnReleased(1)
	return true
}

// take removes c from the parked set; it reports false if c was not there
// (resumed or expired meanwhile). p.mu must be held.
func (p *parker) takeLocked(c *appConn) bool {
	if p.parked[c.id] != c {
		return false
	}
	delete(p.parked, c.id)
	if c.expiry != nil {
		c.expiry.Stop()
		c.expiry = nil
	}
	p.obs.AppConnReleased(-1)
	return true
}

// expire closes a parked connection that reached the listener's
// idle_timeout, with the listener's linger, as fasthttp would have.
func (p *parker) expire(c *appConn) {
	p.mu.Lock()
	ok := p.takeLocked(c)
	p.mu.Unlock()
	if ok {
		c.Close()
	}
}

// onEvents runs on the epoll goroutine: each parked connection that became
// readable goes back to fasthttp on a goroutine of its own. A FIN or RST
// goes the same way; fasthttp's read sees it and closes the connection
// with the listener's linger.
func (p *parker) onEvents(events []epoll.Event) {
	p.mu.Lock()
	for _, ev := range events {
		c := p.parked[ev.ID]
		if c == nil || !p.takeLocked(c) {
			continue // expired meanwhile
		}
		c.markWaiting()
		p.serving.Add(1)
		go p.resume(c)
	}
	p.mu.Unlock()
}

// resume serves a connection handed back, until it is released again or
// closed.
func (p *parker) resume(c *appConn) {
	defer p.serving.Done()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed { // shutdown began after the event
		c.Close()
		return
	}
	if err := p.serve(c); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		if ce := p.log.Check(zap.DebugLevel, "app connection ended"); ce != nil {
			ce.Write(zap.Error(err))
		}
	}
}

// shutdown stops releasing and resuming, and closes the parked connections
// with the listener's close policy, which the listener has already switched
// to shutdown. Connections fasthttp serves, including those the parker
// handed back, are fasthttp's Shutdown's to end.
func (p *parker) shutdown() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	var parked []*appConn
	for _, c := range p.parked {
		parked = append(parked, c)
	}
	for _, c := range parked {
		p.takeLocked(c)
	}
	p.mu.Unlock()
	if !p.enabled() {
		return
	}
	close(p.done)
	for _, c := range parked {
		c.Close()
	}
	p.set.Close()
	p.runWG.Wait()
}

// wait waits for the serve loops the parker started.
func (p *parker) wait() { p.serving.Wait() }

// The appConn side of idle release. state moves busy → waiting (StateIdle)
// → busy (first byte) on the serving goroutine, and waiting → kicked on
// the sweeper's; every change happens under c.pmu, and state is atomic so
// that the request path reads it without the lock.

// markWaiting records that c is at a request boundary: fasthttp's
// StateIdle, or a connection just accepted or handed back.
func (c *appConn) markWaiting() {
	c.pmu.Lock()
	if !c.closed {
		c.since = time.Now()
		c.state.Store(connWaiting)
	}
	c.pmu.Unlock()
}

func (c *appConn) waitingSince() time.Time {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.since
}

// markBusy is fasthttp's StateActive: the first byte of a request is in.
// Usually the boundary read has already marked c busy; if the byte came
// from fasthttp's buffer (pipelining) no read happened, and a kick that
// came meanwhile is undone here.
func (c *appConn) markBusy() {
	if c.state.Load() == connBusy {
		return
	}
	c.pmu.Lock()
	if c.state.Load() == connKicked {
		_ = c.Conn.SetReadDeadline(c.deadline)
	}
	c.state.Store(connBusy)
	c.pmu.Unlock()
}

// kick wakes c's boundary read if c has been waiting since before cutoff.
func (c *appConn) kick(cutoff time.Time) {
	c.pmu.Lock()
	if c.state.Load() == connWaiting && !c.since.After(cutoff) && !c.closed {
		c.state.Store(connKicked)
		_ = c.Conn.SetReadDeadline(longAgo)
	}
	c.pmu.Unlock()
}

// Read is fasthttp's read of the app connection. Only a read at a request
// boundary needs a look at the state.
//
// Every byte from the app also passes the framing guard (framing.go), which
// fails the read at the first byte that breaks the framing checkRequest
// cannot see: a bare LF in any head, pipelined ones included, and chunk
// lines fasthttp would skip without bound. The bytes before it are
// delivered first, so that fasthttp never completes a head from them.
func (c *appConn) Read(b []byte) (int, error) {
	if c.guardErr != nil {
		return 0, c.guardErr
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		if gerr := c.guard.feed(b[:n]); gerr != nil {
			c.guardErr = gerr
			if n = c.guard.good; n == 0 {
				return 0, gerr
			}
			err = nil
		}
	}
	if c.state.Load() == connBusy {
		return n, err
	}
	return c.boundaryRead(n, err)
}

// boundaryRead ends the read of a request's first byte. If the sweeper
// kicked it and nothing arrived, the connection is to be released: io.EOF
// makes fasthttp end the serve loop without a word, and its Close parks
// the connection. If a byte won the race against the kick, the kick's
// deadline is replaced by the one fasthttp set.
func (c *appConn) boundaryRead(n int, err error) (int, error) {
	c.pmu.Lock()
	kicked := c.state.Load() == connKicked
	c.state.Store(connBusy)
	if !kicked {
		c.pmu.Unlock()
		return n, err
	}
	release := n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && !c.closed &&
		(c.deadline.IsZero() || time.Now().Before(c.deadline)) // fasthttp's own idle timeout closes instead
	c.parkNext = release
	c.pmu.Unlock()
	if release {
		// The next serve loop starts without a deadline, as on a new
		// connection.
		c.deadline = time.Time{}
		_ = c.Conn.SetReadDeadline(c.deadline)
		return 0, io.EOF
	}
	_ = c.Conn.SetReadDeadline(c.deadline)
	return n, err
}

// SetReadDeadline records the deadline fasthttp wants, and leaves a kick's
// deadline in place until the boundary read has seen it.
func (c *appConn) SetReadDeadline(t time.Time) error {
	if !c.hdrDeadline.IsZero() && (t.IsZero() || t.After(c.hdrDeadline)) {
		t = c.hdrDeadline // read_header_timeout runs until the headers are in
	}
	c.deadline = t
	if c.state.Load() != connBusy {
		c.pmu.Lock()
		defer c.pmu.Unlock()
		if c.state.Load() == connKicked {
			return nil // boundaryRead or markBusy applies t
		}
	}
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline is SetReadDeadline and SetWriteDeadline.
func (c *appConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// handOver decides, at Close, whether the serve loop is releasing c to the
// parker rather than closing it. Any other Close closes for good.
func (c *appConn) handOver() bool {
	if !c.parkable {
		return false
	}
	c.pmu.Lock()
	park := c.parkNext && !c.closed
	c.parkNext = false
	if !park {
		// In the same locked section as the check, so that no kick can
		// turn this close into a release.
		c.closedLocked()
	}
	c.pmu.Unlock()
	if !park {
		return false
	}
	if c.l.parker.park(c) {
		return true
	}
	c.pmu.Lock()
	c.closedLocked()
	c.pmu.Unlock()
	return false
}

// closedLocked marks c closed for good: no kick, no release. c.pmu must
// be held.
func (c *appConn) closedLocked() {
	c.closed = true
	c.state.Store(connBusy)
}
