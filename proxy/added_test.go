package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
)

// addedRecorder is an Observer that keeps every added-latency observation.
type addedRecorder struct {
	nopObserver
	mu    sync.Mutex
	added map[string][]time.Duration
}

func (o *addedRecorder) Added(phase string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.added == nil {
		o.added = map[string][]time.Duration{}
	}
	o.added[phase] = append(o.added[phase], d)
}

// await waits until there are n observations of each phase (the response
// phase is reported at the request boundary, which may come after the app
// has its response), and returns them; more than n fails the test.
func (o *addedRecorder) await(t *testing.T, n int) (request, response []time.Duration) {
	t.Helper()
	get := func() ([]time.Duration, []time.Duration) {
		o.mu.Lock()
		defer o.mu.Unlock()
		return append([]time.Duration(nil), o.added[AddedRequest]...), append([]time.Duration(nil), o.added[AddedResponse]...)
	}
	wait.Until(t, 5*time.Second, fmt.Sprintf("%d observations of each phase", n), func() bool {
		request, response = get()
		return len(request) >= n && len(response) >= n
	})
	if len(request) != n || len(response) != n {
		t.Fatalf("%d request and %d response observations; want %d of each", len(request), len(response), n)
	}
	return request, response
}

// slowness is the time the upstream or the app spends on its own part of
// an exchange in these tests: thinking, or sending or reading a message
// slowly. It is the behaviour under test, not a wait for anything.
const slowness = 100 * time.Millisecond

// What the upstream and the app spend is theirs: an upstream that thinks,
// or sends its response's body in two parts with a pause between, and an
// app that sends its request's body so, make each exchange take at least
// that pause, and none of it shows in unstuck's added latency, whatever
// the way the body goes (none, read whole, streamed with a length,
// chunked, raw to an HTTP/1.0 app; a request's read whole by fasthttp,
// streamed with a length, chunked). Each request is counted once in each
// phase.
func TestAddedLatencyLeavesOutUpstreamAndAppTime(t *testing.T) {
	large := strings.Repeat("x", 256<<10) // streamed: past maxBufferedBody
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			var first, second string
			switch req.URL.Path {
			case "/think":
				time.Sleep(slowness)
				first = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
			case "/no-content":
				time.Sleep(slowness)
				first = "HTTP/1.1 204 No Content\r\n\r\n"
			case "/slow-body":
				first, second = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello", " world"
			case "/chunked":
				first, second = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "6\r\n world\r\n0\r\n\r\n"
			case "/large":
				first = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(large)) + large[:len(large)/2]
				second = large[len(large)/2:]
			}
			if _, err := io.WriteString(c, first); err != nil {
				return
			}
			if second != "" {
				time.Sleep(slowness)
				if _, err := io.WriteString(c, second); err != nil {
					return
				}
			}
		}
	})
	obs := &addedRecorder{}
	addr := startProxy(t, proxyOpts{listener: Config{Observer: obs}}, up.addr())

	get := func(path string) [2]string { return [2]string{"GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"} }
	cases := []struct {
		name    string
		request [2]string // sent with a pause between the two parts
		http10  bool
		body    string
	}{
		{"upstream think time", get("/think"), false, "hello"},
		{"no body", get("/no-content"), false, ""},
		{"slow body read whole", get("/slow-body"), false, "hello world"},
		{"slow chunked body", get("/chunked"), false, "hello world"},
		{"slow large body", get("/large"), false, large},
		{"slow chunked body to HTTP/1.0", [2]string{"GET /chunked HTTP/1.0\r\nHost: x\r\n\r\n"}, true, "hello world"},
		{"slow request body read whole",
			[2]string{"POST /think HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello", " world"}, false, "hello"},
		{"slow large request body", [2]string{
			fmt.Sprintf("POST /think HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", len(large)) + large[:len(large)/2],
			large[len(large)/2:]}, false, "hello"},
		{"slow chunked request body",
			[2]string{"POST /think HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "6\r\n world\r\n0\r\n\r\n"}, false, "hello"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			start := time.Now()
			c.send(tc.request[0])
			if tc.request[1] != "" {
				time.Sleep(slowness) // the slow app
				c.send(tc.request[1])
			}
			var body string
			if tc.http10 {
				all, err := io.ReadAll(c.br)
				if err != nil {
					t.Fatal(err)
				}
				_, body, _ = strings.Cut(string(all), "\r\n\r\n")
			} else {
				_, body = c.response("GET")
			}
			took := time.Since(start)
			if body != tc.body {
				t.Fatalf("body %.40q; want %.40q", body, tc.body)
			}
			peers := slowness // the upstream's pause, and the app's if it made one
			if tc.request[1] != "" {
				peers += slowness
			}
			if took < peers {
				t.Fatalf("the exchange took %v; the test wants at least %v of the peers' own time", took, peers)
			}
			request, response := obs.await(t, i+1)
			t.Logf("took %v; added: request %v, response %v", took, request[i], response[i])
			// The two phases and the peers' pauses are disjoint stretches of
			// the exchange: if a phase held a pause, they would add up to
			// more than the exchange took. (An absolute bound would fail on
			// a loaded machine, where a niced test can wait 100 ms for a
			// CPU.)
			if request[i] <= 0 || response[i] <= 0 || request[i]+response[i] > took-peers {
				t.Errorf("added request %v + response %v of an exchange that took %v; want each more than 0 and together at most the %v the peers did not spend",
					request[i], response[i], took, took-peers)
			}
		})
	}
}

// An app that does not read while unstuck holds the last bytes of a
// response does show in the response phase: it ends at the last write to
// the app, not when the response was handed to fasthttp. Small socket
// buffers on both sides keep most of a 64 KiB body (read whole from the
// upstream at once) in unstuck until the app reads.
func TestAddedLatencyEndsAtTheLastWriteToTheApp(t *testing.T) {
	body := strings.Repeat("y", maxBufferedBody)
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
	})
	obs := &addedRecorder{}
	p, err := pool.New(pool.Config{Endpoints: []string{up.addr()}})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Observer: obs, Upstream: Upstream{Name: "backend", Pool: p}})
	addr := serveLoopback(t, smallSendBuffers{s}, p)

	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReaderSize(nc, 1024)
	start := time.Now()
	io.WriteString(nc, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(slowness) // the slow reader under test
	got, err := io.ReadAll(resp.Body)
	if err != nil || len(got) != len(body) {
		t.Fatalf("read %d bytes, %v; want %d", len(got), err, len(body))
	}
	took := time.Since(start)
	request, response := obs.await(t, 1)
	t.Logf("took %v; added: request %v, response %v", took, request[0], response[0])
	if response[0] < slowness {
		t.Errorf("added response %v; want at least the %v the app did not read", response[0], slowness)
	}
	if request[0] <= 0 || request[0]+response[0] > took {
		t.Errorf("added request %v + response %v; want the request's more than 0, and the two at most the %v the exchange took", request[0], response[0], took)
	}
}

// smallSendBuffers serves on a listener whose connections have the
// smallest send buffer the kernel allows.
type smallSendBuffers struct{ *Server }

func (s smallSendBuffers) Serve(ln net.Listener) error {
	return s.Server.Serve(smallSendListener{ln})
}

type smallSendListener struct{ net.Listener }

func (l smallSendListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.SetWriteBuffer(4096); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, err
}

// Waiting for a pooled connection is unstuck's: a request that waits at
// max_conns shows the wait in its request phase, the one that held the
// connection does not.
func TestAddedLatencyCountsThePoolWait(t *testing.T) {
	held, release := make(chan struct{}), make(chan struct{})
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/hold" {
				close(held)
				<-release
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the peer's close, which waits for its script
	obs := &addedRecorder{}
	s, addr := startServer(t, proxyOpts{pool: pool.Config{MaxConns: 1}, listener: Config{Observer: obs}}, up.addr())
	a, b := dialRaw(t, addr), dialRaw(t, addr)
	aSent := time.Now()
	a.send(get("/hold"))
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream never got /hold")
	}
	aWindow := time.Since(aSent) // the first request's phase ends before the upstream has it
	b.send(get("/quick"))
	wait.Until(t, 5*time.Second, "the second request waiting for the pool's one connection", func() bool {
		st := s.up.Load().Pool.Stats()
		return len(st) == 1 && st[0].Waiters == 1
	})
	time.Sleep(slowness) // the wait under test
	free()
	a.response("GET")
	b.response("GET")
	request, _ := obs.await(t, 2)
	// Either may finish first: the one that waited has at least its wait,
	// the other at most the time until the upstream had it.
	short, long := min(request[0], request[1]), max(request[0], request[1])
	t.Logf("added request: %v and %v; the first request reached the upstream %v after it was sent", short, long, aWindow)
	if long < slowness {
		t.Errorf("added request %v and %v; want one at least the %v the second waited for the pool", short, long, slowness)
	}
	if short <= 0 || short > aWindow {
		t.Errorf("added request %v and %v; want one more than 0 and at most the %v the first took to reach the upstream", short, long, aWindow)
	}
}
