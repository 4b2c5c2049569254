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

	"github.com/unstuck-proxy/unstuck/internal/legacyconn"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

// dialTimeout bounds each connection the legacy app opens.
const dialTimeout = 2 * time.Second

// app is the legacy application the demo shows: it holds conns keep-alive
// HTTP/1.1 connections and, when one fails (or the server answers
// Connection: close), it uses a new one next time but never closes the old
// socket (legacyconn). The abandoned sockets stay open until close, so
// those whose peer closed sit in CLOSE_WAIT, as in production.
type app struct {
	addr    string
	timeout time.Duration // bounds each request, first byte written to last read
	conns   *legacyconn.Conns
	ids     atomic.Uint64 // request id counter

	mu       sync.Mutex // guards everything below
	ok       int
	failed   int
	firstErr error
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
	cs, err := legacyconn.Dial(addr, legacyconn.Options{Name: "legacy app", Conns: conns, DialTimeout: dialTimeout})
	if err != nil {
		return nil, err
	}
	return &app{addr: addr, timeout: timeout, conns: cs}, nil
}

// get sends GET / on connection i (from 1) and reads the whole response;
// the result goes into the app's stats.
func (a *app) get(i int) {
	id := "app-" + strconv.FormatUint(a.ids.Add(1), 10)
	err := a.roundTrip(i-1, id)
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

// roundTrip runs one request on slot i (from 0). A failure drops the
// slot's connection without closing it: the leak being shown.
func (a *app) roundTrip(i int, id string) error {
	var status int
	err := a.conns.Exchange(i, a.timeout, func(c net.Conn, br *bufio.Reader) (bool, error) {
		req := "GET / HTTP/1.1\r\nHost: " + a.addr + "\r\nX-Request-Id: " + id + "\r\n\r\n"
		if _, err := io.WriteString(c, req); err != nil {
			return false, fmt.Errorf("write: %w", err)
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
		if err != nil {
			return false, fmt.Errorf("read response: %w", err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return false, fmt.Errorf("read body: %w", err)
		}
		status = resp.StatusCode
		return resp.Close, nil
	})
	if err != nil {
		return err
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("status %d", status)
	}
	return nil
}

// stats returns the app's results so far.
func (a *app) stats() appStats {
	dials, _ := a.conns.Counts()
	a.mu.Lock()
	defer a.mu.Unlock()
	return appStats{ok: a.ok, failed: a.failed, dials: dials, firstErr: a.firstErr}
}

// match returns a sockstate filter for the app's own sockets, those opened
// so far.
func (a *app) match() func(sockstate.Socket) bool { return a.conns.Match() }

// close closes every connection the app ever opened, abandoned or not,
// and interrupts requests in progress; a socket that stays open anyway,
// openSockets reports. Later calls do nothing.
func (a *app) close() { a.conns.Close() }
