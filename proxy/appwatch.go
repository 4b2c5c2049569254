package proxy

import (
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/epoll"
	"github.com/unstuck-proxy/unstuck/internal/sockdiag"
)

// An app that gives up on a request (closes or resets its connection while
// the response is awaited or streams) must not leave unstuck holding its
// socket in CLOSE_WAIT, nor an upstream connection busy on a response
// nobody will read. fasthttp reads the app's socket only between requests,
// so it would not notice until the upstream answered, which for a stalled
// upstream is never. The abort watch notices at once: every app socket is
// in one epoll set per listener from accept to close, watched for FIN and
// RST only (the pool's watcher does the same for upstream sockets, see
// pool/watcher.go), so a busy connection's ordinary traffic never wakes
// it. When the app ends a connection whose exchange is in flight, the
// upstream socket's deadline is moved to the past: the exchange's blocked
// read or write returns at once and the exchange ends as 499.
//
// An RST is the app giving up. A FIN may be too, or the app may only have
// shut down its sending side and still wait for the answer: the two send
// the same FIN. unstuck runs next to the app, so it asks the kernel about
// the app's own socket (internal/sockdiag): a socket its process closed is
// an orphan. An orphan's exchange is aborted; a half-closed app gets its
// answer, then the close. An app whose socket is not on this host is taken
// to have gone, as nginx takes every FIN.
type abortWatch struct {
	set *epoll.Set
	log *zap.Logger

	mu     sync.Mutex
	nextID uint64
	conns  map[uint64]*appConn
	done   sync.WaitGroup // Run
}

// abortEvents: FIN (EPOLLRDHUP) and, always reported, RST (EPOLLERR,
// EPOLLHUP). Edge-triggered and no EPOLLIN: data from the app never wakes
// the set.
const abortEvents = unix.EPOLLRDHUP | unix.EPOLLET

func newAbortWatch(log *zap.Logger) (*abortWatch, error) {
	set, err := epoll.New("unstuck-app-ends")
	if err != nil {
		return nil, err
	}
	w := &abortWatch{set: set, log: log, conns: make(map[uint64]*appConn)}
	w.done.Add(1)
	go w.run()
	return w, nil
}

func (w *abortWatch) run() {
	defer w.done.Done()
	w.set.Run(func(events []epoll.Event) {
		for _, ev := range events {
			w.mu.Lock()
			c := w.conns[ev.ID]
			w.mu.Unlock()
			if c != nil {
				c.appEnded(ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0)
			}
		}
	})
}

// add watches c from accept until forget. The socket's descriptor is used
// only inside RawConn.Control, where it cannot be closed under us.
func (w *abortWatch) add(c *appConn) {
	rc, err := c.Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return
	}
	w.mu.Lock()
	w.nextID++
	id := w.nextID
	w.conns[id] = c
	w.mu.Unlock()
	c.watchID = id
	var addErr error
	err = rc.Control(func(fd uintptr) { addErr = w.set.Add(int(fd), abortEvents, id) })
	if err == nil {
		err = addErr
	}
	if err != nil {
		// Unwatched, the connection still works; an app that leaves
		// mid-request is then noticed when its response is written.
		w.forget(c)
		w.log.Debug("app connection not watched for its end", zap.Error(err))
	}
}

// forget stops following c, which is being closed; closing the socket
// takes it out of the set.
func (w *abortWatch) forget(c *appConn) {
	if c.watchID == 0 {
		return
	}
	w.mu.Lock()
	delete(w.conns, c.watchID)
	w.mu.Unlock()
}

// close ends run; call it once no connection is being added.
func (w *abortWatch) close() {
	w.set.Close()
	w.done.Wait()
}

// The exchange side, on appConn. All methods work on a nil *appConn (a
// connection that is not one of ours), doing what they can without it.

// attach tells c which upstream socket its exchange waits on, so that the
// app's end can wake it. It returns false if the app has already ended
// its connection: the exchange must not start.
func (c *appConn) attach(up net.Conn) bool {
	if c == nil {
		return true
	}
	c.xmu.Lock()
	ended, gone := c.ended, c.gone
	c.xmu.Unlock()
	if ended && !gone {
		gone = c.appClosed() // the FIN came between exchanges: look now
	}
	c.xmu.Lock()
	defer c.xmu.Unlock()
	if gone {
		c.gone = true
		c.aborted.Store(true)
		return false
	}
	c.upstream = up
	c.aborted.Store(false)
	return true
}

// detach ends the watch over the exchange's upstream socket, before that
// socket goes back to the pool.
func (c *appConn) detach() {
	if c == nil {
		return
	}
	c.xmu.Lock()
	c.upstream = nil
	c.xmu.Unlock()
}

// wasAborted reports whether the app ended its connection during the
// exchange.
func (c *appConn) wasAborted() bool {
	if c == nil {
		return false
	}
	return c.aborted.Load()
}

// appEnded runs on the abort watch's goroutine when the app's FIN or RST
// arrives. An exchange in flight is aborted if the app has gone.
func (c *appConn) appEnded(rst bool) {
	c.xmu.Lock()
	c.ended = true
	c.gone = c.gone || rst
	gone, busy := c.gone, c.upstream != nil
	c.xmu.Unlock()
	if !busy {
		return // fasthttp's next read sees the end; or attach looks
	}
	if !gone {
		gone = c.appClosed()
	}
	if !gone {
		return // half-closed: it gets its answer
	}
	c.xmu.Lock()
	defer c.xmu.Unlock()
	c.gone = true
	if c.upstream != nil {
		c.aborted.Store(true) // before the deadline: see upstreamDeadline
		_ = c.upstream.SetDeadline(longAgo)
	}
}

// appClosed reports whether the app has closed its socket (not just shut
// down its sending side), or its socket is not on this host.
func (c *appConn) appClosed() bool {
	app, ok1 := c.Conn.RemoteAddr().(*net.TCPAddr)
	us, ok2 := c.Conn.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return true
	}
	s, err := sockdiag.Lookup(app.AddrPort(), us.AddrPort())
	return err != nil || s.Orphan()
}

// upstreamReadDeadline and upstreamWriteDeadline set the exchange's
// upstream deadlines, d from now (0: none), unless the app has aborted
// it: an abort's deadline in the past must not be undone. No lock on the
// request path: the deadline is set, then the flag read; appEnded sets the
// flag, then the deadline. Whichever comes second, the past deadline
// stands.
func (c *appConn) upstreamReadDeadline(up net.Conn, d time.Duration) {
	c.upstreamDeadline(up, d, up.SetReadDeadline)
}

func (c *appConn) upstreamWriteDeadline(up net.Conn, d time.Duration) {
	c.upstreamDeadline(up, d, up.SetWriteDeadline)
}

func (c *appConn) upstreamDeadline(up net.Conn, d time.Duration, set func(time.Time) error) {
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	if c == nil {
		_ = set(t)
		return
	}
	_ = set(t)
	if c.aborted.Load() {
		_ = set(longAgo)
	}
}
