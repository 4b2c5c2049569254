package pool

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"
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
	nc      net.Conn
	fd      int // nc's descriptor; valid until nc is closed, which only the pool does
	created time.Time
	readers *readerPool // the pool's, for br

	// Owned by the holder (the caller between Acquire and Release).
	br       *bufio.Reader
	bw       *bufio.Writer
	io       countingIO
	requests atomic.Int32 // requests completed on this connection; atomic for Snapshot

	// Guarded by Pool.mu. Flags, not maps by id, keep the request path
	// free of map writes.
	idleSince  time.Time
	prev, next *Conn // the endpoint's idle list
	idle       bool  // in the idle list: the watcher closes it on a FIN or RST
	missed     bool  // busy, and the watcher saw a FIN or RST: Release peeks
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

// closeSocket closes the socket with the given linger. A bounded linger makes
// close(2) block while the kernel flushes, so that close runs on its own
// goroutine and never holds up a request or the watcher.
func (c *Conn) closeSocket(l sockopt.Linger) {
	if l.Mode != sockopt.Graceful {
		// Best effort: if this fails the close is a plain FIN close.
		_ = sockopt.ApplyLinger(c.fd, l)
	}
	if l.Blocks() {
		go c.nc.Close()
		return
	}
	c.nc.Close()
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
