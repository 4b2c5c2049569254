package pool

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Cause says why the pool closed an upstream connection. The values are
// metric label values: keep them stable.
type Cause string

const (
	CauseFIN         Cause = "fin"          // the upstream half-closed a pooled connection
	CauseRST         Cause = "rst"          // the upstream reset a pooled connection
	CauseUnsolicited Cause = "unsolicited"  // bytes nobody asked for, after a response or while idle
	CauseIdleTimeout Cause = "idle_timeout" // idle longer than pool.idle_timeout
	CauseMaxLifetime Cause = "max_lifetime" // older than pool.max_lifetime
	CauseMaxRequests Cause = "max_requests" // served pool.max_requests requests
	CauseMaxIdle     Cause = "max_idle"     // released while pool.max_idle were idle
	CauseServerClose Cause = "server_close" // the response said Connection: close
	CauseError       Cause = "error"        // a request on it failed
	CauseShutdown    Cause = "shutdown"     // the pool was closed
	CauseReplaced    Cause = "replaced"     // closed to make room for AcquireNew's new connection
	CauseTimeout     Cause = "timeout"      // the kernel gave up on the upstream (keepalive, user_timeout)
	CausePairEnd     Cause = "pair_end"     // a TCP pair ended from the app's side or by its timeouts
	CauseRetired     Cause = "retired"      // closed before its server would: nearly its idle timeout, or its Keep-Alive max
	CauseDrained     Cause = "drained"      // its endpoint left the set (DNS): idle connections close
	CauseEjected     Cause = "ejected"      // its endpoint was ejected (health checks, outlier detection)
)

func causeOfPeek(r sockopt.PeekResult) Cause {
	switch r {
	case sockopt.PeerFIN:
		return CauseFIN
	case sockopt.PeerRST:
		return CauseRST
	case sockopt.PeerTimeout:
		return CauseTimeout
	case sockopt.Unsolicited:
		return CauseUnsolicited
	default:
		return CauseError
	}
}

// Read and write buffers are attached to a connection only while it serves a
// request, so an idle connection costs the kernel socket and this struct.
// The read buffer's size is the pool's ResponseHeaderBytes: fasthttp parses
// a response's status line and headers inside it.
const (
	defaultResponseHeaderBytes = 64 << 10
	writeBufferSize            = 4 << 10
)

var writerPool sync.Pool

// readerPool recycles read buffers of one size. Each Pool has its own, so
// that pools with different ResponseHeaderBytes never trade buffers.
type readerPool struct {
	size int
	pool sync.Pool
}

func (rp *readerPool) get(r io.Reader) *bufio.Reader {
	if v := rp.pool.Get(); v != nil {
		br := v.(*bufio.Reader)
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, rp.size)
}

func (rp *readerPool) put(br *bufio.Reader) {
	br.Reset(nil)
	rp.pool.Put(br)
}

// Conn is one upstream TCP connection. Between Pool.Acquire and
// Pool.Release/Discard it belongs to exactly one caller; otherwise it belongs
// to the pool. Its socket is in the pool watcher's epoll set from dial to
// close, busy or idle, with one mask that is never changed (watchEvents).
type Conn struct {
	// Set at dial, never changed.
	id      uint64
	ep      *endpoint
	nc      net.Conn // a *tls.Conn over tcp with Config.TLS, else tcp itself
	tcp     net.Conn // the TCP socket
	created time.Time
	readers *readerPool // the pool's, for br
	// raw is nc's descriptor. Every syscall the pool makes on it (peek,
	// linger, SO_ERROR, epoll_ctl) runs inside raw.Control, which holds it
	// open: a number kept outside may be closed and reused by another
	// socket. nil only when a dial's SyscallConn failed.
	raw    syscall.RawConn
	peekFn func(fd uintptr) // c.peekFD, bound once at dial: a peek allocates nothing

	// Owned by the holder (the caller between Acquire and Release).
	br       *bufio.Reader
	bw       *bufio.Writer
	io       countingIO
	peeked   sockopt.PeekResult // peekFn's result
	requests atomic.Int32       // requests completed on this connection; atomic for Snapshot

	// What the server's Keep-Alive header said (SetServerKeepAlive): set
	// by the holder, read under Pool.mu once c is idle, after the Release
	// that made it so.
	serverIdle   time.Duration // the server's idle timeout; 0: not said
	serverLimit  int32         // with serverCapped: requests the server takes on c
	serverCapped bool

	// released is set by the first Release or Discard, cleared when the
	// pool hands c out again: a second call finds it set and does nothing.
	released atomic.Bool

	// Guarded by Pool.mu. Flags, not maps by id, keep the request path
	// free of map writes.
	idleSince  time.Time
	prev, next *Conn // the endpoint's idle list
	idle       bool  // in the idle list: the watcher closes it on a FIN or RST
	missed     bool  // busy, and the watcher saw a FIN or RST: Release peeks

	// reset, set by Pool.Reset before the close, makes it an RST.
	reset bool
	// watched: in a stream pool, its socket was added to the watcher when
	// it first went idle (Pool.watchConn). Owned by its holder.
	watched bool
}

// countingIO sits between the buffers and the socket, so the proxy can tell
// whether a failed exchange wrote or read anything (the retry rules need it).
type countingIO struct {
	nc           net.Conn
	read, writes int64
}

func (c *countingIO) Read(p []byte) (int, error) {
	n, err := c.nc.Read(p)
	c.read += int64(n)
	return n, err
}

func (c *countingIO) Write(p []byte) (int, error) {
	n, err := c.nc.Write(p)
	c.writes += int64(n)
	return n, err
}

// Reader returns the buffered reader over the connection, for one response.
func (c *Conn) Reader() *bufio.Reader { return c.br }

// Writer returns the buffered writer over the connection, for one request.
func (c *Conn) Writer() *bufio.Writer { return c.bw }

// NetConn returns the socket, for deadlines. Never close it: Release or
// Discard does.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Endpoint returns the host:port this connection was dialed to.
func (c *Conn) Endpoint() string { return c.ep.addr }

// Reused reports whether the connection served a request before this one.
// Only a reused connection can be stale, so only it earns a retry.
func (c *Conn) Reused() bool { return c.requests.Load() > 0 }

// BytesWritten returns the bytes written to the socket since Acquire.
func (c *Conn) BytesWritten() int64 { return c.io.writes }

// BytesRead returns the bytes read from the socket since Acquire.
func (c *Conn) BytesRead() int64 { return c.io.read }

// attachBuffers readies the connection for one exchange. Holder only.
func (c *Conn) attachBuffers() {
	c.io.read, c.io.writes = 0, 0
	if c.br == nil {
		c.br = c.readers.get(&c.io)
	}
	if c.bw == nil {
		if v := writerPool.Get(); v != nil {
			c.bw = v.(*bufio.Writer)
			c.bw.Reset(&c.io)
		} else {
			c.bw = bufio.NewWriterSize(&c.io, writeBufferSize)
		}
	}
}

// detachBuffers returns the buffers to their pools. Holder only.
func (c *Conn) detachBuffers() {
	if c.br != nil {
		c.readers.put(c.br)
		c.br = nil
	}
	if c.bw != nil {
		c.bw.Reset(nil)
		writerPool.Put(c.bw)
		c.bw = nil
	}
}

// peek is sockopt.Peek on c's socket, for the holder (or the pool before
// it hands c out): the one syscall of a hand-out. A socket closed
// underneath reads as PeekError.
func (c *Conn) peek() sockopt.PeekResult {
	if err := c.raw.Control(c.peekFn); err != nil {
		return sockopt.PeekError
	}
	return c.peeked
}

func (c *Conn) peekFD(fd uintptr) { c.peeked = sockopt.Peek(int(fd)) }

// control runs f with c's descriptor, held open until f returns. It is
// for the pool's rarer syscalls (f may allocate); an error means the
// socket is already closed.
func (c *Conn) control(f func(fd int)) error {
	if c.raw == nil {
		return net.ErrClosed
	}
	return c.raw.Control(func(fd uintptr) { f(int(fd)) })
}

// applyLinger sets the pool's linger on c's socket before its close. Best
// effort: if it fails, the close is a plain FIN close.
func (c *Conn) applyLinger(l sockopt.Linger) {
	if l.Mode == sockopt.Graceful {
		return // the socket's default
	}
	_ = c.control(func(fd int) { _ = sockopt.ApplyLinger(fd, l) })
}

// connList is an intrusive doubly linked list of idle connections, most
// recently used at the front. Guarded by Pool.mu.
type connList struct {
	front, back *Conn
	len         int
}

func (l *connList) pushFront(c *Conn) {
	c.prev, c.next = nil, l.front
	if l.front != nil {
		l.front.prev = c
	} else {
		l.back = c
	}
	l.front = c
	l.len++
}

func (l *connList) remove(c *Conn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.front = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.back = c.prev
	}
	c.prev, c.next = nil, nil
	l.len--
}
