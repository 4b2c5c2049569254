package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
)

// Tests for issue 11's findings on the request path: each reproduces one
// finding with raw bytes on both sides.

// countingObserver counts the issue 11 events, retries, and answers by
// status and reason.
type countingObserver struct {
	nopObserver
	mu       sync.Mutex
	refused  map[string]int
	aborted  map[string]int
	timeouts map[string]int
	retries  map[string]int
	statuses map[int]int
	reasons  map[string]int // Request's reason; "" for the upstream's answers
}

func newCountingObserver() *countingObserver {
	return &countingObserver{refused: map[string]int{}, aborted: map[string]int{},
		timeouts: map[string]int{}, retries: map[string]int{}, statuses: map[int]int{}, reasons: map[string]int{}}
}

func (o *countingObserver) Refused(r string) { o.mu.Lock(); o.refused[r]++; o.mu.Unlock() }
func (o *countingObserver) AppAborted(p string) {
	o.mu.Lock()
	o.aborted[p]++
	o.mu.Unlock()
}
func (o *countingObserver) UpstreamTimeout(p string) {
	o.mu.Lock()
	o.timeouts[p]++
	o.mu.Unlock()
}
func (o *countingObserver) Retry(reason string) {
	o.mu.Lock()
	o.retries[reason]++
	o.mu.Unlock()
}
func (o *countingObserver) Request(status int, reason string, _ time.Duration, _ int) {
	o.mu.Lock()
	o.statuses[status]++
	o.reasons[reason]++
	o.mu.Unlock()
}

func (o *countingObserver) count(m *map[string]int, k string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return (*m)[k]
}

func (o *countingObserver) status(code int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.statuses[code]
}

// An app that declares Content-Length: 20000, sends 10,000 bytes and leaves
// (by FIN or by RST) must not have a request reach the upstream as
// complete. Before: by FIN the upstream got a POST with Content-Length:
// 10000; by RST one whose body was Go's error text.
func TestIncompleteBodyNeverReachesUpstream(t *testing.T) {
	for _, how := range []string{"fin", "rst"} {
		for _, size := range []int{20000, 200000} { // buffered, streamed
			t.Run(fmt.Sprintf("%s/%d", how, size), func(t *testing.T) {
				up := startPeer(t, serveOK)
				obs := newCountingObserver()
				addr := startProxy(t, proxyOpts{listener: Config{Observer: obs}}, up.addr())
				c := dialRaw(t, addr)
				c.send(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size))
				c.send(strings.Repeat("a", size/2))
				if how == "rst" {
					c.c.(*net.TCPConn).SetLinger(0)
				}
				c.c.Close()
				// Counted as a refusal if the body's read failed first,
				// as an abort if the abort watch saw the app go first.
				wait.Until(t, 5*time.Second, "the refusal or abort to be counted", func() bool {
					return obs.count(&obs.refused, RefuseBodyIncomplete)+obs.count(&obs.aborted, "request") == 1
				})
				// Whatever reached the upstream is not a complete request.
				for i := range up.accepted() {
					got := up.got(i)
					if req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(got))); err == nil {
						if body, err := io.ReadAll(req.Body); err == nil {
							t.Fatalf("the upstream received a complete request: %s %s with %d body bytes", req.Method, req.URL, len(body))
						}
					}
				}
				if n := obs.status(200); n != 0 {
					t.Fatalf("%d requests answered 200", n)
				}
			})
		}
	}
}

// An HTTP/1.0 app gets a body of unknown length (chunked, or delimited by
// the upstream's close) raw, ended by unstuck's close: never chunked.
func TestHTTP10AppGetsRawBody(t *testing.T) {
	for name, resp := range map[string]string{
		"chunked": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
		"close":   "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world",
	} {
		t.Run(name, func(t *testing.T) {
			up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, resp)
				if name == "close" {
					return // the deferred close ends the body
				}
				br.ReadByte() // keep-alive: wait for unstuck to go
			})
			addr := startProxy(t, proxyOpts{}, up.addr())
			c := dialRaw(t, addr)
			c.send("GET /x HTTP/1.0\r\nHost: x\r\n\r\n")
			all, err := io.ReadAll(c.br)
			if err != nil {
				t.Fatal(err)
			}
			head, body, _ := strings.Cut(string(all), "\r\n\r\n")
			if strings.Contains(strings.ToLower(head), "transfer-encoding") {
				t.Fatalf("an HTTP/1.0 app got Transfer-Encoding:\n%s", head)
			}
			if body != "hello world" {
				t.Fatalf("body %q; want the raw bytes", body)
			}
		})
	}
}

// An app that gives up on a stalled response (waiting for the headers, or
// after half the body) makes unstuck abort the upstream exchange at once:
// nothing of unstuck's stays in CLOSE_WAIT, the upstream connection is
// closed, and the request is counted as 499.
func TestAppGivingUpOnStalledResponse(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	for _, phase := range []string{"response_header", "response_body"} {
		t.Run(phase, func(t *testing.T) {
			release := make(chan struct{})
			upstreamEOF := make(chan struct{}, 1)
			up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				if phase == "response_body" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("x", 50000))
				}
				go func() { <-release; c.Close() }()
				if _, err := br.ReadByte(); err != nil {
					upstreamEOF <- struct{}{} // unstuck closed its side
				}
			})
			defer close(release)
			obs := newCountingObserver()
			addr := startProxy(t, proxyOpts{listener: Config{Observer: obs}}, up.addr())
			c := dialRaw(t, addr)
			c.send("GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
			if phase == "response_body" {
				if _, err := io.ReadFull(c.br, make([]byte, 1000)); err != nil {
					t.Fatal(err)
				}
			} else {
				wait.Until(t, 5*time.Second, "the upstream to get the request", func() bool { return up.accepted() == 1 && up.got(0) != "" })
			}
			mine := sockstate.Conn(addrPort(c.c.RemoteAddr()), addrPort(c.c.LocalAddr()))
			c.c.Close()
			select {
			case <-upstreamEOF:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream connection was not closed after the app left")
			}
			defer func() { t.Logf("aborted %v statuses %v timeouts %v", obs.aborted, obs.statuses, obs.timeouts) }()
			wait.Until(t, 5*time.Second, "the abort to be counted", func() bool {
				return obs.count(&obs.aborted, phase) == 1 && obs.status(StatusClientClosed) == 1
			})
			wait.Until(t, 5*time.Second, "unstuck's app socket to be gone", func() bool {
				n, _ := sockstate.Count(mine)
				return n[sockstate.CloseWait]+n[sockstate.Established] == 0
			})
		})
	}
}

// read_header_timeout ends a request whose headers trickle in; an idle
// connection between requests is not affected by it.
func TestReadHeaderTimeout(t *testing.T) {
	up := startPeer(t, serveOK)
	obs := newCountingObserver()
	addr := startProxy(t, proxyOpts{listener: Config{Observer: obs, ReadHeaderTimeout: 300 * time.Millisecond}}, up.addr())

	idle := dialRaw(t, addr)
	idle.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	idle.response("GET")

	slow := dialRaw(t, addr)
	slow.send("GET / HTTP/1.1\r\n")
	start := time.Now()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for range 40 { // a byte every 50ms, for at most 2s
		<-ticker.C
		if _, err := slow.c.Write([]byte("X")); err != nil {
			break
		}
		if obs.count(&obs.refused, RefuseHeaderTimeout) > 0 {
			break
		}
	}
	if resp, _ := slow.response("GET"); resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d; want 408", resp.StatusCode)
	}
	if !slow.eof() {
		t.Fatal("a connection trickling its headers was not closed")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("closed after %v", took)
	}
	// The idle connection, waiting longer than the timeout, still works.
	idle.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := idle.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("idle connection: %d", resp.StatusCode)
	}
}

// body_read_timeout ends an upload that stops; the upstream connection it
// held is discarded and the request counted.
func TestBodyReadTimeout(t *testing.T) {
	up := startPeer(t, serveOK)
	obs := newCountingObserver()
	addr := startProxy(t, proxyOpts{listener: Config{Observer: obs, BodyReadTimeout: 200 * time.Millisecond}}, up.addr())
	c := dialRaw(t, addr)
	c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + strings.Repeat("a", 100000))
	resp, _ := c.response("POST")
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d; want 408", resp.StatusCode)
	}
	if n := obs.count(&obs.refused, RefuseBodyTimeout); n != 1 {
		t.Fatalf("body timeouts counted: %d", n)
	}
}

// timeouts.response_idle ends a response body that stops mid-way.
func TestResponseIdleTimeout(t *testing.T) {
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("x", 70000))
		br.ReadByte() // stall until unstuck closes
	})
	obs := newCountingObserver()
	addr := startProxy(t, proxyOpts{
		listener: Config{Observer: obs},
		upstream: Upstream{ResponseIdleTimeout: 200 * time.Millisecond},
	}, up.addr())
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || n == 100000 {
		t.Fatalf("read %d bytes, %v; want a truncated body", n, err)
	}
	wait.Until(t, 5*time.Second, "the timeout to be counted", func() bool {
		return obs.count(&obs.timeouts, "response_idle") == 1
	})
}

// A response-header timeout is not retried as if the connection were
// stale: the app gets its 504 after one timeout and the upstream gets the
// request once.
func TestResponseHeaderTimeoutNotRetried(t *testing.T) {
	var requests atomic.Int32
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			requests.Add(1)
		}
	})
	addr := startProxy(t, proxyOpts{upstream: Upstream{Retries: 2, ResponseHeaderTimeout: 200 * time.Millisecond}}, up.addr())
	// Warm a connection so that the timed-out one is a reused one.
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d; want 504", resp.StatusCode)
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("the upstream received the request %d times; want 1", n)
	}
}

// An upstream that closes after every response without saying so: a retry
// after a failure on a reused connection goes to a new connection, so no
// GET fails.
func TestRetryAfterStaleConnectionDials(t *testing.T) {
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, okResponse)
		// The deferred close ends the connection without Connection: close.
	})
	addr := startProxy(t, proxyOpts{upstream: Upstream{Retries: 1}, listener: Config{Logger: nopLogger}}, up.addr())
	const conns, rounds = 8, 50
	var failed atomic.Int32
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				failed.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			for range rounds {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					failed.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d GETs failed", n, conns*rounds)
	}
}

// What the upstream receives is what the app sent, less hop-by-hop
// headers, and what the app receives is what the upstream sent: header
// names in their case, no Date, Server or Content-Type added.
func TestHeadersPassAsSent(t *testing.T) {
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nx-lower: 1\r\nkeep-alive: timeout=5\r\ncontent-length: 2\r\n\r\nok")
		br.ReadByte()
	})
	addr := startProxy(t, proxyOpts{}, up.addr())
	c := dialRaw(t, addr)
	c.send("POST /p HTTP/1.1\r\nHost: x\r\nx-foo: bar\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\nContent-Length: 2\r\n\r\nhi")
	head, _, err := readRawResponse(c.br)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Date: Mon, 01 Jan 2001 00:00:00 GMT\r\n", "x-lower: 1\r\n"} {
		if !strings.Contains(head, want) {
			t.Errorf("response lacks %q:\n%s", want, head)
		}
	}
	for _, unwanted := range []string{"Server:", "Content-Type:", "keep-alive:"} {
		if strings.Contains(head, unwanted) {
			t.Errorf("response has %q:\n%s", unwanted, head)
		}
	}
	wait.Until(t, 5*time.Second, "the request upstream", func() bool { return strings.HasSuffix(up.got(0), "hi") })
	got := up.got(0)
	if !strings.Contains(got, "\r\nx-foo: bar\r\n") {
		t.Errorf("header name not kept as sent:\n%s", got)
	}
	for _, unwanted := range []string{"Content-Type", "x-hop", "connection"} {
		if strings.Contains(strings.ToLower(got), strings.ToLower(unwanted)) {
			t.Errorf("request upstream has %q:\n%s", unwanted, got)
		}
	}
}

// readRawResponse reads a response with a Content-Length body and returns
// its header block as it came.
func readRawResponse(br *bufio.Reader) (head, body string, err error) {
	var h strings.Builder
	cl := 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", "", err
		}
		h.WriteString(line)
		if line == "\r\n" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "content-length") {
			fmt.Sscan(strings.TrimSpace(v), &cl)
		}
	}
	b := make([]byte, cl)
	if _, err := io.ReadFull(br, b); err != nil {
		return "", "", err
	}
	return h.String(), string(b), nil
}

// Large header blocks pass: a 6 KB cookie (over fasthttp's 4 KiB default)
// by default; a request over limits.request_header_bytes gets 431.
func TestRequestHeaderLimit(t *testing.T) {
	up := startPeer(t, serveOK)
	addr := startProxy(t, proxyOpts{}, up.addr())
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\nCookie: " + strings.Repeat("c", 6000) + "\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("6 KB cookie: %d", resp.StatusCode)
	}

	obs := newCountingObserver()
	small := startProxy(t, proxyOpts{listener: Config{Observer: obs, MaxRequestHeaderBytes: 4096}}, up.addr())
	c = dialRaw(t, small)
	c.send("GET / HTTP/1.1\r\nHost: x\r\nCookie: " + strings.Repeat("c", 6000) + "\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("over the limit: %d; want 431", resp.StatusCode)
	}
	if n := obs.count(&obs.refused, RefuseHeaderTooLarge); n != 1 {
		t.Fatalf("refusals counted: %d", n)
	}
}

// limits.request_body_bytes: a body over it gets 413 and never reaches the
// upstream whole, declared (Content-Length) or not (chunked). fasthttp
// reads up to 8 KiB of a body before the handler sees the request, so the
// test sends the bodies.
func TestRequestBodyLimit(t *testing.T) {
	up := startPeer(t, serveOK)
	addr := startProxy(t, proxyOpts{listener: Config{MaxRequestBodyBytes: 1000}}, up.addr())
	c := dialRaw(t, addr)
	c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + strings.Repeat("a", 2000))
	if resp, _ := c.response("POST"); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared: status %d; want 413", resp.StatusCode)
	}
	c = dialRaw(t, addr)
	c.send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + strings.Repeat("a", 2000) + "\r\n")
	if resp, _ := c.response("POST"); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked: status %d; want 413", resp.StatusCode)
	}
	if got := up.got(0); strings.HasSuffix(got, "0\r\n\r\n") {
		t.Fatalf("the upstream got a complete request:\n%.200s", got)
	}
}

// limits.max_conns: at the cap the listener stops accepting until an app
// connection closes.
func TestMaxConns(t *testing.T) {
	up := startPeer(t, serveOK)
	obs := newCountingObserver()
	addr := startProxy(t, proxyOpts{listener: Config{Observer: obs, MaxConns: 1}}, up.addr())
	first := dialRaw(t, addr)
	first.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	first.response("GET")
	second := dialRaw(t, addr) // connects: the kernel's backlog holds it
	second.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	wait.Until(t, 5*time.Second, "the limit to be counted", func() bool {
		return obs.count(&obs.refused, RefuseConnLimit) == 1
	})
	first.c.Close()
	if resp, _ := second.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("second connection: %d", resp.StatusCode)
	}
}

// A response header block over 8 KiB (a large Set-Cookie) passes: it gets
// 502 only over limits.response_header_bytes.
func TestLargeResponseHeaderPasses(t *testing.T) {
	up := startPeer(t, serveHTTP(func(*http.Request) string {
		return "HTTP/1.1 200 OK\r\nSet-Cookie: " + strings.Repeat("s", 20000) + "\r\nContent-Length: 2\r\n\r\nok"
	}))
	addr := startProxy(t, proxyOpts{}, up.addr())
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("default limit: %d %q", resp.StatusCode, body)
	}
	small := startProxy(t, proxyOpts{pool: pool.Config{ResponseHeaderBytes: 8192}}, up.addr())
	c = dialRaw(t, small)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("over the limit: %d; want 502", resp.StatusCode)
	}
}

// send_timeout ends an app connection whose app stopped reading a response:
// the app's window full, unstuck's write waits, and after send_timeout the
// exchange ends and the upstream connection is closed.
func TestSendTimeout(t *testing.T) {
	upstreamDone := make(chan error, 1)
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
		chunk := make([]byte, 64<<10)
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for {
			if _, err := c.Write(chunk); err != nil {
				upstreamDone <- err
				return
			}
		}
	})
	obs := newCountingObserver()
	addr := startProxy(t, proxyOpts{listener: Config{Observer: obs, SendTimeout: 300 * time.Millisecond}}, up.addr())
	c := dialRaw(t, addr)
	c.send("GET /big HTTP/1.1\r\nHost: x\r\n\r\n") // and never read
	select {
	case err := <-upstreamDone:
		if isTimeout(err) {
			t.Fatal("the upstream's write timed out: unstuck kept the exchange open")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the exchange did not end")
	}
}

// The deadlines of one request end with it. After an upload under
// body_read_timeout, a connection idle for longer still serves its next
// request; and read_header_timeout does not bound the body that follows
// the headers (idle release off, so that nothing else resets the socket's
// deadline).
func TestRequestDeadlinesEndWithTheRequest(t *testing.T) {
	up := startPeer(t, serveOK)
	t.Run("body timeout, then idle", func(t *testing.T) {
		addr := startProxy(t, proxyOpts{listener: Config{BodyReadTimeout: 200 * time.Millisecond}}, up.addr())
		c := dialRaw(t, addr)
		c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + strings.Repeat("a", 20000))
		if resp, _ := c.response("POST"); resp.StatusCode != 200 {
			t.Fatalf("upload: %d", resp.StatusCode)
		}
		<-time.After(600 * time.Millisecond) // idle three times the body timeout: what is tested
		c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, _ := c.response("GET"); resp.StatusCode != 200 {
			t.Fatalf("after idling: %d", resp.StatusCode)
		}
	})
	t.Run("header timeout, slow body", func(t *testing.T) {
		addr := startProxy(t, proxyOpts{listener: Config{ReadHeaderTimeout: 200 * time.Millisecond}}, up.addr())
		c := dialRaw(t, addr)
		c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + strings.Repeat("a", 10000))
		<-time.After(600 * time.Millisecond) // a pause in the body longer than the header timeout
		c.send(strings.Repeat("a", 10000))
		if resp, _ := c.response("POST"); resp.StatusCode != 200 {
			t.Fatalf("upload: %d", resp.StatusCode)
		}
	})
}
