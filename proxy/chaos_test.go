package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

// chaosUpstream is a raw HTTP/1.1 upstream for the soak that misbehaves
// on purpose. Recoverable chaos, which a proxy must hide from GETs:
// closing after a response without Connection: close, resetting idle
// connections, unsolicited bytes on idle connections, and restarts.
// Broken answers, asked for by path, which may fail cleanly:
// /broken/stall-header (never answers), /broken/stall-body (headers and
// half the body, then nothing), /broken/garbage (no HTTP at all).
//
// Every request names its id (X-Id); a POST says its body's length and
// CRC-32 (X-Body-Len, X-Body-Sum), a GET answer says the same of its
// body, so a body cut short cannot pass as complete at either end.
type chaosUpstream struct {
	p    *peer // accepts, restarts, closes everything at the end
	addr string
	rng  *lockedRand

	mu        sync.Mutex // guards everything below
	conns     map[*chaosConn]struct{}
	ends      []sockstate.Ends         // of every accepted connection, upstream side
	down      []window                 // restarts: no listener in [from, to]
	posts     map[uint64]int           // POST id → times received complete
	crossed   map[uint64]bool          // request ids that met unsolicited bytes
	late      map[uint64]time.Duration // request ids sent on a connection long after its unsolicited bytes
	stalled   map[uint64]int           // /broken/stall-header id → times received
	seen      map[uint64]int           // request id → times its head arrived
	unended   map[uint64]time.Duration // stalls the proxy never ended, and how long they lasted
	accepted  int
	closes    int // after a response, without Connection: close
	resets    int // idle connections reset
	garbage   int // idle connections sent unsolicited bytes
	stalls    int
	bad       []string // bodies received as complete that were not
	responses int
}

type window struct{ from, to time.Time }

// chaosConn is one accepted connection. Its goroutine owns reads and
// writes of requests; chaos acts on it only while it is idle, under mu.
type chaosConn struct {
	c        *net.TCPConn
	mu       sync.Mutex
	idle     bool      // between requests: waiting for the next one's first byte
	served   int       // responses written
	poisoned time.Time // when unsolicited bytes were sent while idle; zero: never
}

// crossWindow is how soon after unsolicited bytes a request counts as
// having crossed them on the wire. Later, the proxy had time to see them
// (its pool watches idle connections) and should not have used the
// connection.
const crossWindow = 500 * time.Millisecond

type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) IntN(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

func startChaosUpstream(t testing.TB, seed uint64) *chaosUpstream {
	t.Helper()
	u := &chaosUpstream{
		rng:     &lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))},
		conns:   map[*chaosConn]struct{}{},
		posts:   map[uint64]int{},
		crossed: map[uint64]bool{},
		stalled: map[uint64]int{},
		late:    map[uint64]time.Duration{},
		seen:    map[uint64]int{},
		unended: map[uint64]time.Duration{},
	}
	u.p = startPeer(t, func(c net.Conn, _ *bufio.Reader) {
		cc := &chaosConn{c: c.(*net.TCPConn)}
		u.mu.Lock()
		u.conns[cc] = struct{}{}
		u.ends = append(u.ends, sockstate.EndsOf(c))
		u.accepted++
		u.mu.Unlock()
		u.serve(cc)
	})
	u.addr = u.p.addr()
	return u
}

// stop closes the listener and every connection and waits for all
// goroutines. It may run more than once.
func (u *chaosUpstream) stop() { u.p.close() }

// restart closes the listener and every connection, stays down for
// downFor, and listens again on the same address.
func (u *chaosUpstream) restart(t testing.TB, downFor time.Duration) {
	from, to, err := u.p.restart(downFor)
	if err != nil {
		t.Error(err)
		return
	}
	if from.IsZero() {
		return // stopped
	}
	u.mu.Lock()
	u.down = append(u.down, window{from, to})
	u.mu.Unlock()
}

// serve owns cc until it closes it. It reads the connection itself: the
// peer's recording reader would keep every byte of the soak.
func (u *chaosUpstream) serve(cc *chaosConn) {
	defer func() {
		cc.c.Close()
		u.mu.Lock()
		delete(u.conns, cc)
		u.mu.Unlock()
	}()
	br := bufio.NewReaderSize(cc.c, 32<<10)
	bw := bufio.NewWriterSize(cc.c, 32<<10)
	for {
		cc.mu.Lock()
		cc.idle = true
		cc.mu.Unlock()
		if _, err := br.Peek(1); err != nil {
			return
		}
		cc.mu.Lock()
		cc.idle = false
		poisoned := cc.poisoned
		cc.mu.Unlock()
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		id, _ := strconv.ParseUint(req.Header.Get("X-Id"), 10, 64)
		if !poisoned.IsZero() {
			// The request met our unsolicited bytes: to the proxy they
			// are its answer. Excused only if they crossed on the wire.
			age := time.Since(poisoned)
			u.mu.Lock()
			if age < crossWindow {
				u.crossed[id] = true
			} else {
				u.late[id] = age
			}
			u.mu.Unlock()
			return
		}
		u.mu.Lock()
		u.seen[id]++
		u.mu.Unlock()
		if !u.answer(cc, req, id, bw) {
			return
		}
		cc.mu.Lock()
		cc.served++
		cc.mu.Unlock()
		if req.Close {
			return
		}
		if u.rng.IntN(10) == 0 {
			u.mu.Lock()
			u.closes++
			u.mu.Unlock()
			return // FIN right after the response, no Connection: close
		}
	}
}

// answer reads req's body and answers it. false: the connection is done.
func (u *chaosUpstream) answer(cc *chaosConn, req *http.Request, id uint64, bw *bufio.Writer) bool {
	h := crc32.NewIEEE()
	n, err := io.Copy(h, req.Body)
	if err != nil {
		return false // an incomplete body: the proxy aborted, as it must
	}
	if req.Method == http.MethodPost {
		wantLen, _ := strconv.ParseInt(req.Header.Get("X-Body-Len"), 10, 64)
		wantSum := req.Header.Get("X-Body-Sum")
		u.mu.Lock()
		u.posts[id]++
		if got := fmt.Sprintf("%08x", h.Sum32()); n != wantLen || got != wantSum {
			u.bad = append(u.bad, fmt.Sprintf("POST id %d received as complete with %d bytes sum %s; the app sent %d bytes sum %s (framing: Content-Length %d, Transfer-Encoding %q)",
				id, n, got, wantLen, wantSum, req.ContentLength, req.TransferEncoding))
		}
		u.mu.Unlock()
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nok %d", len(strconv.FormatUint(id, 10))+3, id)
		return bw.Flush() == nil && u.responded()
	}

	q := req.URL.Query()
	size, _ := strconv.Atoi(q.Get("size"))
	chunked := q.Get("chunked") == "1"
	body := soakBody(id, size)
	switch req.URL.Path {
	case "/broken/stall-header":
		u.mu.Lock()
		u.stalled[id]++
		u.mu.Unlock()
		u.stall(cc, id)
		return false
	case "/broken/garbage":
		bw.WriteString("\x00\x01garbage, not HTTP\r\n\r\n")
		bw.Flush()
		return false
	case "/broken/stall-body":
		writeSoakHead(bw, body, chunked)
		if chunked {
			fmt.Fprintf(bw, "%x\r\n", len(body)/2)
		}
		bw.Write(body[:len(body)/2])
		if bw.Flush() != nil {
			return false
		}
		u.stall(cc, id)
		return false
	}
	writeSoakHead(bw, body, chunked)
	if chunked {
		cw := httputil.NewChunkedWriter(bw)
		for off := 0; off < len(body); off += 16 << 10 {
			cw.Write(body[off:min(off+16<<10, len(body))])
		}
		cw.Close()
		bw.WriteString("\r\n")
	} else {
		bw.Write(body)
	}
	return bw.Flush() == nil && u.responded()
}

func (u *chaosUpstream) responded() bool {
	u.mu.Lock()
	u.responses++
	u.mu.Unlock()
	return true
}

// stall waits until the proxy closes the connection (or stop or a restart
// does), reading and dropping anything that comes.
func (u *chaosUpstream) stall(cc *chaosConn, id uint64) {
	u.mu.Lock()
	u.stalls++
	u.mu.Unlock()
	start := time.Now()
	_, err := io.Copy(io.Discard, cc.c)
	if errors.Is(err, net.ErrClosed) { // we closed it (restart, stop): the proxy never did
		u.mu.Lock()
		u.unended[id] = time.Since(start)
		u.mu.Unlock()
	}
}

func writeSoakHead(bw *bufio.Writer, body []byte, chunked bool) {
	bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
	fmt.Fprintf(bw, "X-Body-Len: %d\r\nX-Body-Sum: %08x\r\n", len(body), crc32.ChecksumIEEE(body))
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	} else {
		fmt.Fprintf(bw, "Content-Length: %d\r\n\r\n", len(body))
	}
}

// idleChaos picks one idle connection at random, if any, and either
// resets it or sends it unsolicited bytes and leaves it open.
func (u *chaosUpstream) idleChaos() {
	u.mu.Lock()
	var idle []*chaosConn
	for cc := range u.conns {
		cc.mu.Lock()
		// Idle: between requests, after at least one. A connection the
		// proxy has just dialed is about to carry its first request.
		if cc.idle && cc.served > 0 && cc.poisoned.IsZero() {
			idle = append(idle, cc)
		}
		cc.mu.Unlock()
	}
	u.mu.Unlock()
	if len(idle) == 0 {
		return
	}
	cc := idle[u.rng.IntN(len(idle))]
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if !cc.idle || !cc.poisoned.IsZero() {
		return
	}
	if u.rng.IntN(2) == 0 {
		// Idle means the proxy has our whole last response: a reset
		// would discard whatever it has not acknowledged.
		if unacked(cc.c) != 0 {
			return
		}
		cc.c.SetLinger(0)
		cc.c.Close() // RST; serve's Peek fails and it ends
		u.mu.Lock()
		u.resets++
		u.mu.Unlock()
		return
	}
	cc.poisoned = time.Now()
	if u.rng.IntN(2) == 0 {
		cc.c.Write([]byte("HTTP/1.1 408 Request Timeout\r\nX-Chaos: unsolicited\r\nContent-Length: 0\r\n\r\n")) // as servers do before an idle close
	} else {
		cc.c.Write([]byte("\x00unsolicited\r\n"))
	}
	u.mu.Lock()
	u.garbage++
	u.mu.Unlock()
}

// unacked returns the bytes c has sent that its peer has not acknowledged
// (SIOCOUTQ); -1 if it cannot tell.
func unacked(c *net.TCPConn) int {
	n := -1
	if raw, err := c.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
				n = v
			}
		})
	}
	return n
}

// soakBody is the body of request id: size bytes that differ from one id
// to the next.
func soakBody(id uint64, size int) []byte {
	b := make([]byte, size)
	x := id*0x9e3779b97f4a7c15 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}
