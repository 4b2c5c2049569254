package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/pool"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// fasthttp's process-wide clock and its worker pool's cleaner,
		// which sleeps out its period after Shutdown.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		// The benchmark's fasthttp client.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*TCPDialer).tcpAddrsClean"),
	)
}

type proxyOpts struct {
	pool     pool.Config
	upstream Upstream
	listener Config
}

// startProxy runs a proxy on 127.0.0.1:0 in front of endpoints and returns
// its address. Everything stops when the test ends.
func startProxy(t testing.TB, o proxyOpts, endpoints ...string) string {
	t.Helper()
	_, addr := startServer(t, o, endpoints...)
	return addr
}

// startServer is startProxy, also returning the server for a test that
// shuts it down itself (Shutdown may run again at the end).
func startServer(t testing.TB, o proxyOpts, endpoints ...string) (*Server, string) {
	t.Helper()
	o.pool.Endpoints = endpoints
	p, err := pool.New(o.pool)
	if err != nil {
		t.Fatal(err)
	}
	o.upstream.Pool = p
	if o.upstream.Name == "" {
		o.upstream.Name = "backend"
	}
	o.listener.Upstream = o.upstream
	if o.listener.Logger == nopLogger {
		o.listener.Logger = nil
	} else if o.listener.Logger == nil {
		o.listener.Logger = zaptest.NewLogger(t, zaptest.Level(zapcore.DebugLevel))
	}
	s := New(o.listener)
	return s, serveLoopback(t, s, p)
}

// upstream runs a net/http server on 127.0.0.1:0.
func upstream(t testing.TB, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func addrOf(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

// rawConn is a client that writes bytes exactly as given and parses
// responses, like an old app would.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawConn) response(method string) (*http.Response, string) {
	r.t.Helper()
	resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		r.t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp, string(body)
}

// eof reports whether the proxy closed the connection (within a bound).
func (r *rawConn) eof() bool {
	r.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := r.br.ReadByte()
	return err != nil && !isTimeout(err)
}

func TestForwardsRequestAndResponse(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Seen-Proto", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Seen-URI", r.RequestURI)
		fmt.Fprintf(w, "%s %s", r.Method, body)
	})
	addr := startProxy(t, proxyOpts{}, addrOf(up))
	c := dialRaw(t, addr)
	c.send("POST /a//b/../c%2Fd?x=1 HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 5\r\n\r\nhello")
	resp, body := c.response("POST")
	if resp.StatusCode != 200 || body != "POST hello" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	for k, want := range map[string]string{
		"X-Seen-Host":  "app.example",
		"X-Seen-XFF":   "10.0.0.1, 127.0.0.1",
		"X-Seen-Proto": "http",
		"X-Seen-URI":   "/a//b/../c%2Fd?x=1",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestHostHeaderOverride(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Host) })
	addr := startProxy(t, proxyOpts{upstream: Upstream{HostHeader: "backend.internal"}}, addrOf(up))
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
	if _, body := c.response("GET"); body != "backend.internal" {
		t.Fatalf("upstream saw Host %q", body)
	}
}

func TestHopByHopHeadersRemovedBothWays(t *testing.T) {
	hop := []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade", "X-Named-By-Connection"}
	var mu sync.Mutex
	var seen http.Header
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
		h := w.Header()
		h.Set("Connection", "X-Up-Private")
		h.Set("X-Up-Private", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Connection", "keep-alive")
		h.Set("Upgrade", "h2c")
		h.Set("X-Up-Public", "1")
		io.WriteString(w, "ok")
	})
	addr := startProxy(t, proxyOpts{}, addrOf(up))
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Named-By-Connection\r\n" +
		"X-Named-By-Connection: secret\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\n" +
		"TE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\nX-End-To-End: yes\r\n\r\n")
	resp, body := c.response("GET")
	if body != "ok" {
		t.Fatalf("body %q", body)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range hop {
		if v, ok := seen[k]; ok {
			t.Errorf("upstream received hop-by-hop %s: %q", k, v)
		}
	}
	if seen.Get("X-End-To-End") != "yes" {
		t.Errorf("end-to-end header lost: %v", seen)
	}
	for _, k := range []string{"Connection", "X-Up-Private", "Keep-Alive", "Proxy-Connection", "Upgrade"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("app received hop-by-hop %s: %q", k, v)
		}
	}
	if resp.Header.Get("X-Up-Public") != "1" {
		t.Errorf("end-to-end response header lost: %v", resp.Header)
	}
}

// An app's Connection: close ends the app's connection, not the upstream
// one: the next app connection reuses it.
func TestAppCloseKeepsUpstreamConnection(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RemoteAddr) })
	addr := startProxy(t, proxyOpts{}, addrOf(up))
	var ports []string
	for range 3 {
		c := dialRaw(t, addr)
		c.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, body := c.response("GET")
		if !resp.Close {
			t.Errorf("app asked to close but response does not say Connection: close")
		}
		if !c.eof() {
			t.Errorf("app connection still open after Connection: close")
		}
		ports = append(ports, body)
	}
	if ports[0] != ports[1] || ports[1] != ports[2] {
		t.Fatalf("upstream saw new connections %v; want one reused", ports)
	}
}

// An upstream's Connection: close ends the upstream connection, not the
// app's: the app keeps its connection and its next request gets a new
// upstream one.
func TestUpstreamCloseKeepsAppConnection(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, r.RemoteAddr)
	})
	addr := startProxy(t, proxyOpts{}, addrOf(up))
	c := dialRaw(t, addr)
	var ports []string
	for range 3 {
		c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := c.response("GET")
		if resp.Close || resp.StatusCode != 200 {
			t.Fatalf("status %d, close %v: the app connection must stay open", resp.StatusCode, resp.Close)
		}
		ports = append(ports, body)
	}
	if ports[0] == ports[1] || ports[1] == ports[2] {
		t.Fatalf("upstream connection reused after Connection: close: %v", ports)
	}
}

func TestHTTP10Clients(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.Host)
	})
	addr := startProxy(t, proxyOpts{}, addrOf(up))

	t.Run("without keep-alive", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send("GET / HTTP/1.0\r\n\r\n")
		resp, body := c.response("GET")
		if resp.StatusCode != 200 || body != "HTTP/1.1 "+addrOf(up) {
			t.Fatalf("got %d %q; want the upstream to see HTTP/1.1 and its own address as Host", resp.StatusCode, body)
		}
		if !c.eof() {
			t.Fatal("HTTP/1.0 connection without keep-alive left open")
		}
	})
	t.Run("with keep-alive", func(t *testing.T) {
		c := dialRaw(t, addr)
		for range 3 {
			c.send("GET / HTTP/1.0\r\nHost: legacy\r\nConnection: keep-alive\r\n\r\n")
			resp, body := c.response("GET")
			if resp.StatusCode != 200 || body != "HTTP/1.1 legacy" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if !strings.EqualFold(resp.Header.Get("Connection"), "keep-alive") {
				t.Fatalf("HTTP/1.0 keep-alive response without Connection: keep-alive: %v", resp.Header)
			}
		}
	})
}

func TestExpectContinue(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "expect=%q body=%s", r.Header.Get("Expect"), body)
	})
	addr := startProxy(t, proxyOpts{}, addrOf(up))
	c := dialRaw(t, addr)
	c.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	line, err := c.br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("want 100 Continue before sending the body, got %q %v", line, err)
	}
	if blank, _ := c.br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("100 Continue not followed by a blank line: %q", blank)
	}
	c.send("data")
	resp, body := c.response("POST")
	if resp.StatusCode != 200 || body != `expect="" body=data` {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// pattern is a deterministic, incompressible-enough byte stream.
type pattern struct{ n, off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		x := uint64(p.off + int64(i))
		b[i] = byte((x * 2654435761) >> 13)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func patternSHA(n int64) string {
	h := sha256.New()
	io.Copy(h, &pattern{n: n})
	return hex.EncodeToString(h.Sum(nil))
}

// peakRSS resets and reads the process's peak resident set (VmHWM).
func resetPeakRSS(t *testing.T) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("cannot reset peak RSS: %v", err)
	}
}

func peakRSS(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// 64 MiB each way, hashed at both ends; the process (client, proxy and
// upstream together) must not grow by anything near the body size.
func TestLargeBodiesStream(t *testing.T) {
	const size = 64 << 20
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
		case "/download":
			w.Header().Set("Content-Length", strconv.Itoa(size))
			io.Copy(w, &pattern{n: size})
		case "/download-chunked":
			io.Copy(w, &pattern{n: size}) // no length: chunked
		}
	})
	addr := startProxy(t, proxyOpts{}, addrOf(up))
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	want := patternSHA(size)

	cases := []struct {
		name    string
		do      func() (*http.Response, error)
		checkUp bool // the upstream reports what it received
	}{
		{"upload", func() (*http.Response, error) {
			req, _ := http.NewRequest("POST", "http://"+addr+"/upload", &pattern{n: size})
			req.ContentLength = size
			return client.Do(req)
		}, true},
		{"upload chunked", func() (*http.Response, error) {
			req, _ := http.NewRequest("POST", "http://"+addr+"/upload", io.MultiReader(&pattern{n: size}))
			req.ContentLength = -1
			return client.Do(req)
		}, true},
		{"download", func() (*http.Response, error) { return client.Get("http://" + addr + "/download") }, false},
		{"download chunked", func() (*http.Response, error) { return client.Get("http://" + addr + "/download-chunked") }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resetPeakRSS(t)
			before := peakRSS(t)
			resp, err := tc.do()
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			var echo bytes.Buffer // the upstream's short answer to an upload
			var sink io.Writer = h
			if tc.checkUp {
				sink = &echo
			}
			n, err := io.Copy(sink, io.LimitReader(resp.Body, size+1))
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("status %d, err %v", resp.StatusCode, err)
			}
			if tc.checkUp {
				// The upstream answers "<bytes> <sha256>" of what it received.
				if got, wantEcho := echo.String(), fmt.Sprintf("%d %s", size, want); got != wantEcho {
					t.Fatalf("upstream received %q; want %q", got, wantEcho)
				}
			} else if got := hex.EncodeToString(h.Sum(nil)); n != size || got != want {
				t.Fatalf("downloaded %d bytes sha256 %s; want %d %s", n, got, size, want)
			}
			grew := peakRSS(t) - before
			t.Logf("%s: peak RSS grew by %d KiB for a %d MiB body", tc.name, grew>>10, size>>20)
			if grew > size/4 {
				t.Fatalf("peak RSS grew by %d MiB moving a %d MiB body: it was buffered", grew>>20, size>>20)
			}
		})
	}
}

func TestUpstreamFailureStatuses(t *testing.T) {
	t.Run("502 when the endpoint refuses", func(t *testing.T) {
		dead := testpeer.FreeAddr(t)
		addr := startProxy(t, proxyOpts{upstream: Upstream{Retries: 2}}, dead)
		c := dialRaw(t, addr)
		c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := c.response("GET"); resp.StatusCode != 502 || !strings.Contains(body, "Bad Gateway") {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("502 when the upstream resets mid-response", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				bufio.NewReader(c).ReadString('\n')
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}()
		addr := startProxy(t, proxyOpts{}, ln.Addr().String())
		c := dialRaw(t, addr)
		c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
		if resp, _ := c.response("POST"); resp.StatusCode != 502 {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
	t.Run("504 when the response header is late", func(t *testing.T) {
		release := make(chan struct{})
		up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		addr := startProxy(t, proxyOpts{upstream: Upstream{ResponseHeaderTimeout: 100 * time.Millisecond}}, addrOf(up))
		c := dialRaw(t, addr)
		c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := c.response("GET"); resp.StatusCode != 504 || !strings.Contains(body, "Gateway Timeout") {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("503 when the pool stays exhausted", func(t *testing.T) {
		release := make(chan struct{})
		entered := make(chan struct{}, 1)
		up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
			entered <- struct{}{}
			<-release
		})
		addr := startProxy(t, proxyOpts{pool: pool.Config{MaxConns: 1, AcquireTimeout: 50 * time.Millisecond}}, addrOf(up))
		slow := dialRaw(t, addr)
		slow.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
		<-entered
		c := dialRaw(t, addr)
		c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := c.response("GET")
		close(release)
		if resp.StatusCode != 503 || !strings.Contains(body, "Service Unavailable") {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if resp, _ := slow.response("GET"); resp.StatusCode != 200 {
			t.Fatalf("the request holding the slot got %d", resp.StatusCode)
		}
	})
}

// nopLogger in proxyOpts asks startProxy for no test logging (benchmarks).
var nopLogger = zap.NewNop()

// The X-Forwarded-For address of an app connection, worked out at accept.
func TestRemoteIP(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, "127.0.0.1"}, // 16-byte form: unmapped
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 2).To4(), Port: 1}, "10.0.0.2"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 1}, "::1"},
		{&net.UnixAddr{Name: "@", Net: "unix"}, "invalid IP"},
	} {
		if got := remoteIP(tc.addr).String(); got != tc.want {
			t.Errorf("remoteIP(%v) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}
