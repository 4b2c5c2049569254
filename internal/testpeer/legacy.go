package testpeer

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/legacyconn"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

// LegacyClientOptions configure a LegacyClient.
type LegacyClientOptions struct {
	// Conns is how many keep-alive connections the client holds. Zero
	// means 1.
	Conns int
	// Timeout bounds each request, from the first byte written to the last
	// byte read. Zero means 5s.
	Timeout time.Duration
	// DialTimeout bounds each dial. Zero means 2s.
	DialTimeout time.Duration
	// KeepBody is how many bytes of each response body Response.Body keeps
	// (the rest is only hashed). Zero means 1 MiB.
	KeepBody int
	// IDPrefix starts each generated X-Request-Id. Zero means "legacy".
	IDPrefix string
}

// LegacyClient models the legacy application unstuck sits in front of: it
// holds a few keep-alive HTTP/1.1 connections and, when one fails (or the
// server answers Connection: close), it gives up on it and uses a new one
// next time, but never closes the old socket (legacyconn, which the demo's
// app shares). The abandoned sockets stay open until Close, so those whose
// peer closed sit in CLOSE_WAIT, as in production. Requests on one
// connection run one at a time.
type LegacyClient struct {
	addr  string
	opts  LegacyClientOptions
	conns *legacyconn.Conns
	next  atomic.Uint64 // round robin over conns
	ids   atomic.Uint64 // request id counter

	mu    sync.Mutex // guards stats
	stats Stats      // Dials and Abandoned are conns'
}

// Stats are a LegacyClient's results so far.
type Stats struct {
	OK        map[string]int // complete 2xx responses, by method
	Failed    map[string]int // errors and non-2xx responses, by method
	Errors    []error        // one per failed request, in order
	Dials     int            // connections opened, including the first Conns
	Abandoned int            // connections given up on and left open
}

// Request is one request for LegacyClient.Send.
type Request struct {
	Method string
	Path   string      // request target, such as "/upload?x=1"
	Body   []byte      // sent with Content-Length; nil and GET/HEAD: no body
	Header http.Header // extra fields, written as given
	ID     string      // X-Request-Id; "" generates one
	Slot   int         // connection to use, 1..Conns; 0: round robin
}

// Response is a response the LegacyClient read in full.
type Response struct {
	Status     int
	Header     http.Header
	Body       []byte // up to KeepBody bytes
	BodyLen    int64
	BodySha256 string // hex, of the whole body
	RequestID  string
	Slot       int  // 1..Conns
	Close      bool // the server asked to close ("Connection: close")
}

// StatusError is the error for a non-2xx response; the Response is returned
// with it.
type StatusError struct{ Status int }

func (e *StatusError) Error() string { return "testpeer: status " + strconv.Itoa(e.Status) }

// NewLegacyClient dials opts.Conns connections to addr. After it returns the
// caller owns the client and must Close it.
func NewLegacyClient(addr string, opts LegacyClientOptions) (*LegacyClient, error) {
	if opts.Conns <= 0 {
		opts.Conns = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 2 * time.Second
	}
	if opts.KeepBody <= 0 {
		opts.KeepBody = 1 << 20
	}
	if opts.IDPrefix == "" {
		opts.IDPrefix = "legacy"
	}
	conns, err := legacyconn.Dial(addr, legacyconn.Options{
		Name:        "testpeer: legacy client",
		Conns:       opts.Conns,
		DialTimeout: opts.DialTimeout,
		ReadBuffer:  32 << 10,
	})
	if err != nil {
		return nil, err
	}
	return &LegacyClient{
		addr:  addr,
		opts:  opts,
		conns: conns,
		stats: Stats{OK: map[string]int{}, Failed: map[string]int{}},
	}, nil
}

// StartLegacyClient is NewLegacyClient for a test: it fails tb on error and
// closes the client when the test ends.
func StartLegacyClient(tb testing.TB, addr string, opts LegacyClientOptions) *LegacyClient {
	tb.Helper()
	c, err := NewLegacyClient(addr, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Do sends a request with a generated X-Request-Id on the next connection,
// round robin.
func (c *LegacyClient) Do(method, path string, body []byte) (*Response, error) {
	return c.Send(Request{Method: method, Path: path, Body: body})
}

// DoOn is Do on connection slot, 1..Conns.
func (c *LegacyClient) DoOn(slot int, method, path string, body []byte) (*Response, error) {
	return c.Send(Request{Method: method, Path: path, Body: body, Slot: slot})
}

// Send sends r and reads the whole response. A connection error abandons
// the connection (see LegacyClient) and is returned; the request is not
// retried. A non-2xx response is returned with a *StatusError.
func (c *LegacyClient) Send(r Request) (*Response, error) {
	if r.ID == "" {
		r.ID = c.opts.IDPrefix + "-" + strconv.FormatUint(c.ids.Add(1), 10)
	}
	i := r.Slot - 1
	if r.Slot <= 0 || r.Slot > c.conns.Len() {
		i = int((c.next.Add(1) - 1) % uint64(c.conns.Len()))
	}
	resp, err := c.send(i, r)
	if resp != nil {
		resp.Slot = i + 1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.stats.Failed[r.Method]++
		c.stats.Errors = append(c.stats.Errors, fmt.Errorf("%s %s (%s): %w", r.Method, r.Path, r.ID, err))
	} else {
		c.stats.OK[r.Method]++
	}
	return resp, err
}

// send runs r on connection i (from 0); the connection is given up on,
// never closed, after an error or a "Connection: close".
func (c *LegacyClient) send(i int, r Request) (*Response, error) {
	var resp *Response
	err := c.conns.Exchange(i, c.opts.Timeout, func(conn net.Conn, br *bufio.Reader) (bool, error) {
		var err error
		resp, err = c.roundTrip(conn, br, r)
		return resp != nil && resp.Close, err
	})
	if err != nil {
		return nil, err
	}
	if resp.Status < 200 || resp.Status > 299 {
		return resp, &StatusError{resp.Status}
	}
	return resp, nil
}

// roundTrip writes r on conn and reads the whole response through br.
func (c *LegacyClient) roundTrip(conn net.Conn, br *bufio.Reader, r Request) (*Response, error) {
	var head bytes.Buffer
	fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: %s\r\nX-Request-Id: %s\r\n", r.Method, r.Path, c.addr, r.ID)
	if r.Body != nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		fmt.Fprintf(&head, "Content-Length: %d\r\n", len(r.Body))
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			fmt.Fprintf(&head, "%s: %s\r\n", k, v)
		}
	}
	head.WriteString("\r\n")
	bufs := net.Buffers{head.Bytes(), r.Body}
	if _, err := bufs.WriteTo(conn); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}

	hr, err := http.ReadResponse(br, &http.Request{Method: r.Method})
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	defer hr.Body.Close()
	h := sha256.New()
	var kept bytes.Buffer
	n, err := io.Copy(io.MultiWriter(h, &limitedBuffer{&kept, c.opts.KeepBody}), hr.Body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return &Response{
		Status:     hr.StatusCode,
		Header:     hr.Header,
		Body:       kept.Bytes(),
		BodyLen:    n,
		BodySha256: hex.EncodeToString(h.Sum(nil)),
		RequestID:  r.ID,
		Close:      hr.Close,
	}, nil
}

// limitedBuffer keeps the first max bytes written to it and accepts the rest.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// Stats returns the client's results so far.
func (c *LegacyClient) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.Dials, st.Abandoned = c.conns.Counts()
	st.OK, st.Failed = make(map[string]int), make(map[string]int)
	for k, v := range c.stats.OK {
		st.OK[k] = v
	}
	for k, v := range c.stats.Failed {
		st.Failed[k] = v
	}
	st.Errors = append([]error(nil), c.stats.Errors...)
	return st
}

// LocalPorts returns the local port of every connection the client has
// opened, live or abandoned, in dial order.
func (c *LegacyClient) LocalPorts() []uint16 {
	ends := c.conns.Ends()
	ports := make([]uint16, len(ends))
	for i, e := range ends {
		ports[i] = e.Local.Port()
	}
	return ports
}

// Match returns a sockstate filter for the client's own sockets (those
// opened so far, by local and remote address), for sockstate.WaitFor.
func (c *LegacyClient) Match() func(sockstate.Socket) bool { return c.conns.Match() }

// PeerMatch returns a sockstate filter for the far side of each of the
// client's connections opened so far: the sockets of the server (or proxy)
// it talks to.
func (c *LegacyClient) PeerMatch() func(sockstate.Socket) bool {
	ends := c.conns.Ends()
	peers := make([]sockstate.Ends, len(ends))
	for i, e := range ends {
		peers[i] = e.Peer()
	}
	return sockstate.Conns(peers...)
}

// SocketStates counts the client's own sockets by TCP state.
func (c *LegacyClient) SocketStates() (map[sockstate.State]int, error) {
	return sockstate.Count(c.Match())
}

// CloseWaitCount returns how many of the client's sockets are in
// CLOSE_WAIT: the peer closed and the client never did.
func (c *LegacyClient) CloseWaitCount() (int, error) {
	m, err := c.SocketStates()
	return m[sockstate.CloseWait], err
}

// Close closes every connection the client ever opened, abandoned or not,
// and interrupts requests in progress. Later calls return nil.
func (c *LegacyClient) Close() error { return c.conns.Close() }
