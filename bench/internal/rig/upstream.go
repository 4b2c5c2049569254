// Package rig holds what the benchmark programs under bench/cmd share: a
// hand-rolled HTTP/1.1 upstream whose every FIN the program controls, a
// raw client, the -target flag and percentiles. Everything listens and
// dials on loopback only.
package rig

import (
	"bufio"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/tcpserve"
)

// response is the answer to every request: small, fixed, keep-alive.
const response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

// UpstreamConfig says how an Upstream treats its connections. The zero
// value answers every request at once and never closes a connection first.
type UpstreamConfig struct {
	// CloseFraction is the probability, per response, that the server
	// closes the connection right after writing it: its FIN follows the
	// last response byte and the response has no "Connection: close".
	CloseFraction float64
	// IdleTimeout closes a connection that waited this long for its next
	// request; 0: never.
	IdleTimeout time.Duration
	// KeepAlive, if set, is the value of a Keep-Alive header on every
	// response, such as "timeout=0.3".
	KeepAlive string
	// OnRequest, if set, sees each request once its body was read, on the
	// connection's goroutine.
	OnRequest func(*http.Request)
}

// Upstream is an HTTP/1.1 server on loopback. Each connection has one
// goroutine (serve) that owns reads and the final Close; the program may
// half-close a connection (FIN) from outside and learn when the peer closed.
type Upstream struct {
	cfg  UpstreamConfig
	loop *tcpserve.Loop // accepts, runs serve per connection, closes them all

	response   string // what every request gets: response, plus KeepAlive
	raceCloses atomic.Int64
	idleCloses atomic.Int64

	mu   sync.Mutex // guards gate, live
	gate *Gate
	live map[*Conn]struct{}
}

// Conn is one accepted connection.
type Conn struct {
	nc    *net.TCPConn  // reads and Close: serve; CloseWrite: FIN's caller
	finAt atomic.Int64  // UnixNano just before our shutdown(SHUT_WR); 0: none sent
	endAt atomic.Int64  // UnixNano when serve's read returned the peer's close; written by serve
	ended chan struct{} // closed by serve when it returns
}

// Listen starts an Upstream on addr, which must be a loopback address.
// The caller owns it and must Close it.
func Listen(addr string, cfg UpstreamConfig) (*Upstream, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	u := &Upstream{cfg: cfg, loop: tcpserve.New(ln), live: make(map[*Conn]struct{}), response: response}
	if cfg.KeepAlive != "" {
		u.response = strings.Replace(response, "\r\n\r\n", "\r\nKeep-Alive: "+cfg.KeepAlive+"\r\n\r\n", 1)
	}
	u.loop.Serve(func(nc *net.TCPConn, _ int) { u.serve(nc) })
	return u, nil
}

// Addr is the listening address.
func (u *Upstream) Addr() string { return u.loop.Addr().String() }

// Accepted returns how many connections were accepted so far.
func (u *Upstream) Accepted() int64 { return int64(u.loop.Accepted()) }

// RaceCloses returns how many connections were closed right after a
// response (CloseFraction).
func (u *Upstream) RaceCloses() int64 { return u.raceCloses.Load() }

// IdleCloses returns how many connections were closed for IdleTimeout.
func (u *Upstream) IdleCloses() int64 { return u.idleCloses.Load() }

// serve answers requests on nc until the peer closes, the idle timeout
// passes, a race close is drawn, or the program closes it. It owns the
// Conn's Close, before Ended.
func (u *Upstream) serve(nc *net.TCPConn) {
	c := &Conn{nc: nc, ended: make(chan struct{})}
	u.mu.Lock()
	u.live[c] = struct{}{}
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		delete(u.live, c)
		u.mu.Unlock()
		c.nc.Close()
		close(c.ended)
	}()
	br := bufio.NewReaderSize(c.nc, 4<<10)
	for {
		if u.cfg.IdleTimeout > 0 {
			c.nc.SetReadDeadline(time.Now().Add(u.cfg.IdleTimeout))
		}
		if _, err := br.Peek(1); err != nil {
			// The clock is read before anything else: the error is
			// classified only afterwards, so the time is the read's return.
			end := time.Now().UnixNano()
			if !isTimeout(err) && !errors.Is(err, net.ErrClosed) {
				c.endAt.Store(end) // EOF or RST: the peer closed
			} else if isTimeout(err) {
				u.idleCloses.Add(1)
			}
			return
		}
		c.nc.SetReadDeadline(time.Time{})
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
		if u.cfg.OnRequest != nil {
			u.cfg.OnRequest(req)
		}
		if g := u.currentGate(); g != nil {
			g.arrive()
			<-g.open
		}
		if _, err := io.WriteString(c.nc, u.response); err != nil {
			return
		}
		if u.cfg.CloseFraction > 0 && rand.Float64() < u.cfg.CloseFraction {
			u.raceCloses.Add(1)
			return // the deferred Close sends FIN right behind the response
		}
	}
}

// Live returns the connections whose peer has not closed yet.
func (u *Upstream) Live() []*Conn {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]*Conn, 0, len(u.live))
	for c := range u.live {
		out = append(out, c)
	}
	return out
}

// LiveCount returns len(Live()) without the copy.
func (u *Upstream) LiveCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.live)
}

// WaitStable waits until LiveCount has not changed for quiet, or max has
// passed, and returns the count.
func (u *Upstream) WaitStable(quiet, max time.Duration) int {
	deadline := time.Now().Add(max)
	n, since := u.LiveCount(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if m := u.LiveCount(); m != n {
			n, since = m, time.Now()
		} else if time.Since(since) >= quiet {
			break
		}
	}
	return n
}

// CloseAll closes every live connection and waits for their goroutines.
func (u *Upstream) CloseAll() {
	for _, c := range u.Live() {
		c.nc.Close()
		<-c.ended
	}
}

// Close stops accepting and closes every connection.
func (u *Upstream) Close() { u.loop.Close() }

// FIN half-closes c (shutdown SHUT_WR) and notes when: just before the
// call, since on loopback the FIN reaches the peer inside it.
func (c *Conn) FIN() error {
	c.finAt.Store(time.Now().UnixNano())
	return c.nc.CloseWrite()
}

// Ended is closed once c's goroutine is done with it.
func (c *Conn) Ended() <-chan struct{} { return c.ended }

// CloseDelay returns the time from FIN to the peer's close, and false if
// either did not happen or the peer closed before the FIN.
func (c *Conn) CloseDelay() (time.Duration, bool) {
	fin, end := c.finAt.Load(), c.endAt.Load()
	if fin == 0 || end == 0 || end < fin {
		return 0, false
	}
	return time.Duration(end - fin), true
}

// Gate holds requests until n have arrived (or Open is called), then lets
// them all through, so a proxy in front has to open n upstream
// connections at once.
type Gate struct {
	n       int64
	arrived atomic.Int64
	open    chan struct{}
	once    sync.Once
}

// Hold installs a new gate for the next n requests; later requests pass
// once it is open. Open it yourself after a timeout.
func (u *Upstream) Hold(n int) *Gate {
	g := &Gate{n: int64(n), open: make(chan struct{})}
	u.mu.Lock()
	u.gate = g
	u.mu.Unlock()
	return g
}

func (u *Upstream) currentGate() *Gate {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.gate
}

func (g *Gate) arrive() {
	if g.arrived.Add(1) >= g.n {
		g.Open()
	}
}

// Open lets every held and later request through.
func (g *Gate) Open() { g.once.Do(func() { close(g.open) }) }

// Opened is closed once the gate is open.
func (g *Gate) Opened() <-chan struct{} { return g.open }

// Arrived returns how many requests reached the gate.
func (g *Gate) Arrived() int { return int(g.arrived.Load()) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
