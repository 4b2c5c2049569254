package demo

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

// dialTimeout bounds each connection the legacy app opens.
const dialTimeout = 2 * time.Second

// app is the legacy application the demo shows: it holds conns keep-alive
// HTTP/1.1 connections and, when one fails (or the server answers
// Connection: close), it uses a new one next time but never closes the old
// socket. The abandoned sockets stay open until close, so those whose peer
// closed sit in CLOSE_WAIT, as in production.
type app struct {
	addr    string
	timeout time.Duration // bounds each request, first byte written to last read
	slots   []*slot
	ids     atomic.Uint64 // request id counter

	mu       sync.Mutex // guards everything below
	closed   bool
	all      []*net.TCPConn   // every connection ever opened, live or abandoned
	ends     []sockstate.Ends // the app's side of each of all
	ok       int
	failed   int
	dials    int
	firstErr error
}

// slot is one of the app's connections. mu is held for a whole request.
type slot struct {
	mu   sync.Mutex
	conn *net.TCPConn // nil: dial before the next request
	br   *bufio.Reader
}

// appStats are the app's results so far.
type appStats struct {
	ok, failed int
	dials      int   // connections opened, the first ones included
	firstErr   error // the first failed request; nil if none
}

// newApp dials conns connections to addr. The caller owns the app and must
// close it.
func newApp(addr string, conns int, timeout time.Duration) (*app, error) {
	a := &app{addr: addr, timeout: timeout}
	for range conns {
		sl := &slot{}
		if err := a.dial(sl); err != nil {
			a.close()
			return nil, err
		}
		a.slots = append(a.slots, sl)
	}
	return a, nil
}

// dial gives sl a new connection. The caller holds sl.mu (or owns sl).
func (a *app) dial(sl *slot) error {
	nc, err := net.DialTimeout("tcp", a.addr, dialTimeout)
	if err != nil {
		return fmt.Errorf("legacy app: %w", err)
	}
	tc := nc.(*net.TCPConn)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		tc.Close()
		return net.ErrClosed
	}
	a.all = append(a.all, tc)
	a.ends = append(a.ends, sockstate.EndsOf(tc))
	a.dials++
	sl.conn, sl.br = tc, bufio.NewReader(tc)
	return nil
}

// get sends GET / on connection i (from 1) and reads the whole response;
// the result goes into the app's stats.
func (a *app) get(i int) {
	id := "app-" + strconv.FormatUint(a.ids.Add(1), 10)
	err := a.roundTrip(a.slots[i-1], id)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.ok++
		return
	}
	a.failed++
	if a.firstErr == nil {
		a.firstErr = fmt.Errorf("GET / (%s): %w", id, err)
	}
}

// roundTrip runs one request on sl. A failure drops sl's connection
// without closing it: the leak being shown.
func (a *app) roundTrip(sl *slot, id string) error {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.conn == nil {
		if err := a.dial(sl); err != nil {
			return err
		}
	}
	c, br := sl.conn, sl.br
	c.SetDeadline(time.Now().Add(a.timeout))
	abandon := func() { sl.conn, sl.br = nil, nil }

	req := "GET / HTTP/1.1\r\nHost: " + a.addr + "\r\nX-Request-Id: " + id + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		abandon()
		return fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		abandon()
		return fmt.Errorf("read response: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		abandon()
		return fmt.Errorf("read body: %w", err)
	case resp.Close:
		abandon() // a legacy app drops the connection but never closes it
	default:
		c.SetDeadline(time.Time{})
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// stats returns the app's results so far.
func (a *app) stats() appStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return appStats{ok: a.ok, failed: a.failed, dials: a.dials, firstErr: a.firstErr}
}

// match returns a sockstate filter for the app's own sockets, those opened
// so far.
func (a *app) match() func(sockstate.Socket) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return sockstate.Conns(a.ends...)
}

// close closes every connection the app ever opened, abandoned or not,
// and interrupts requests in progress. Later calls do nothing.
func (a *app) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	for _, c := range a.all {
		c.Close() // one that stays open, openSockets reports
	}
}
