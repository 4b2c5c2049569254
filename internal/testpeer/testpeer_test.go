package testpeer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/wait"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawConn is a test-side connection that writes raw bytes and reads
// responses with net/http's parser.
type rawConn struct {
	*net.TCPConn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second)) // bounds every read in the test
	return &rawConn{c.(*net.TCPConn), bufio.NewReader(c)}
}

func (c *rawConn) roundTrip(t *testing.T, raw string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	return c.read(t, "GET")
}

func (c *rawConn) read(t *testing.T, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func sha(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

func TestServerPaths(t *testing.T) {
	s := StartServer(t, Options{})
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{Conns: 1})
	body := []byte("hello upstream")
	tests := []struct {
		name, method, path string
		body               []byte
		status             int
		wantBody           string
		wantHeader         map[string]string
	}{
		{"echo", "GET", "/a?b=c", nil, 200, "GET /a?b=c id=legacy-1 len=0 sha256=" + sha(nil) + "\n",
			map[string]string{"X-Request-Id": "legacy-1", "X-Conn": "1", "X-Conn-Seq": "1"}},
		{"upload", "POST", "/upload", body, 200, fmt.Sprintf("%s %d", sha(body), len(body)),
			map[string]string{"X-Received-Sha256": sha(body), "X-Received-Length": "14", "X-Conn-Seq": "2"}},
		{"put upload", "PUT", "/upload", []byte{}, 200, sha(nil) + " 0", nil},
		{"status", "GET", "/status/503", nil, 503, "", nil},
		{"bad status", "GET", "/status/x", nil, 400, "", nil},
		{"bytes", "GET", "/bytes/1000", nil, 200, "", map[string]string{"X-Body-Sha256": ExpectedBytesSha256(1000), "Content-Length": "1000"}},
		{"bytes head", "HEAD", "/bytes/1000", nil, 200, "", map[string]string{"Content-Length": "1000"}},
		{"bytes chunked", "GET", "/bytes/100000?chunked=1", nil, 200, "", map[string]string{"X-Body-Sha256": ExpectedBytesSha256(100000)}},
		{"bad bytes", "GET", "/bytes/-1", nil, 400, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := lc.Do(tt.method, tt.path, tt.body)
			if tt.status == 200 && err != nil {
				t.Fatal(err)
			}
			var se *StatusError
			if tt.status != 200 && (!errors.As(err, &se) || se.Status != tt.status) {
				t.Fatalf("err %v, want status %d", err, tt.status)
			}
			if tt.wantBody != "" && string(resp.Body) != tt.wantBody {
				t.Errorf("body %q, want %q", resp.Body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if x := resp.Header.Get("X-Body-Sha256"); x != "" && tt.method != "HEAD" && resp.BodySha256 != x {
				t.Errorf("body sha256 %s, header says %s", resp.BodySha256, x)
			}
		})
	}
	if got := s.Conns(); got != 1 {
		t.Errorf("server accepted %d connections, want 1 (keep-alive)", got)
	}
	if st := lc.Stats(); st.OK["GET"] != 3 || st.Failed["GET"] != 3 || st.OK["POST"] != 1 || st.Dials != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestRecordsDuplicatesAndHeaders(t *testing.T) {
	s := StartServer(t, Options{KeepHeaders: 2})
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{Conns: 2})
	hop := http.Header{"Connection": {"keep-alive, X-Hop"}, "X-Hop": {"1"}, "Te": {"trailers"}, "Keep-Alive": {"timeout=5"}}
	for _, r := range []Request{
		{Method: "POST", Path: "/pay", Body: []byte("1"), ID: "once"},
		{Method: "POST", Path: "/pay", Body: []byte("2"), ID: "twice"},
		{Method: "POST", Path: "/pay", Body: []byte("2"), ID: "twice"},
		{Method: "GET", Path: "/hop", ID: "hop", Header: hop},
		{Method: "GET", Path: "/anon"},
	} {
		if _, err := lc.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Duplicates(); fmt.Sprint(got) != "[twice]" {
		t.Errorf("Duplicates() = %v, want [twice]", got)
	}
	recs := s.Received()
	if len(recs) != 5 {
		t.Fatalf("%d records, want 5", len(recs))
	}
	if r := recs[1]; r.Method != "POST" || r.Path != "/pay" || r.RequestID != "twice" || r.BodyLen != 1 || r.BodySha256 != sha([]byte("2")) {
		t.Errorf("record %+v", r)
	}
	h := s.HeadersFor("hop")
	if h == nil {
		t.Fatal("no headers kept for hop")
	}
	for k, v := range hop {
		if fmt.Sprint(h[k]) != fmt.Sprint(v) {
			t.Errorf("header %s = %q, want %q", k, h[k], v)
		}
	}
	if h.Get("Host") != s.Addr() {
		t.Errorf("Host %q", h.Get("Host"))
	}
	if s.HeadersFor("once") != nil {
		t.Error("headers of the first request kept beyond KeepHeaders=2")
	}
	if got := s.LastHeaders().Get("X-Request-Id"); got != "legacy-1" {
		t.Errorf("last request id %q", got)
	}
}

func TestCloseOnDemand(t *testing.T) {
	s := StartServer(t, Options{})
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{})
	resp, err := lc.Send(Request{Method: "GET", Path: "/", Header: http.Header{"X-Close": {"1"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Close {
		t.Error("response without Connection: close")
	}
	wait.Until(t, 5*time.Second, "closed by server", func() bool { return s.OpenConns() == 0 })
	if _, err := lc.Do("GET", "/", nil); err != nil {
		t.Fatal(err)
	}
	if st := lc.Stats(); st.Dials != 2 || st.Abandoned != 1 {
		t.Errorf("stats %+v, want 2 dials, 1 abandoned", st)
	}
	// HTTP/1.0 closes too.
	c := dialRaw(t, s.Addr())
	resp2, _ := c.roundTrip(t, "GET / HTTP/1.0\r\n\r\n")
	if !resp2.Close {
		t.Error("HTTP/1.0 response not closing")
	}
}

func TestDelays(t *testing.T) {
	s := StartServer(t, Options{Delay: 50 * time.Millisecond})
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{})
	start := time.Now()
	if _, err := lc.Do("GET", "/sleep/100ms", nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("answered after %v, want >= 150ms", d)
	}
	if _, err := lc.Do("GET", "/sleep/bogus", nil); err == nil {
		t.Error("bad duration accepted")
	}
}

func TestCloseInterruptsSleep(t *testing.T) {
	s, err := NewServer(Options{})
	if err != nil {
		t.Fatal(err)
	}
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{Timeout: 30 * time.Second})
	errc := make(chan error, 1)
	go func() {
		_, err := lc.Do("GET", "/sleep/1m", nil)
		errc <- err
	}()
	wait.Until(t, 5*time.Second, "request received", func() bool { return len(s.Received()) == 1 })
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("request succeeded after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("request still blocked after server Close")
	}
}

func TestBadRequests(t *testing.T) {
	s := StartServer(t, Options{Logf: t.Logf})
	for _, raw := range []string{
		"GARBAGE\r\n\r\n",
		"GET / HTTP/2.0\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
	} {
		c := dialRaw(t, s.Addr())
		resp, _ := c.roundTrip(t, raw)
		if resp.StatusCode != 400 || !resp.Close {
			t.Errorf("%q: status %d close %v, want 400 and close", raw, resp.StatusCode, resp.Close)
		}
	}
	if n := len(s.Received()); n != 0 {
		t.Errorf("%d bad requests recorded", n)
	}
}

const big = 64 << 20

func TestLargeBodies(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB bodies")
	}
	s := StartServer(t, Options{})
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{Timeout: 60 * time.Second})

	t.Run("upload", func(t *testing.T) {
		body := make([]byte, big)
		if _, err := io.ReadFull(Bytes(big), body); err != nil {
			t.Fatal(err)
		}
		resp, err := lc.Do("POST", "/upload", body)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("%s %d", sha(body), big); string(resp.Body) != want {
			t.Errorf("upload reply %q, want %q", resp.Body, want)
		}
	})
	t.Run("download", func(t *testing.T) {
		resp, err := lc.Do("GET", fmt.Sprintf("/bytes/%d", big), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.BodyLen != big || resp.BodySha256 != ExpectedBytesSha256(big) || resp.Header.Get("X-Body-Sha256") != resp.BodySha256 {
			t.Errorf("got %d bytes sha %s, header %s, want %d bytes sha %s",
				resp.BodyLen, resp.BodySha256, resp.Header.Get("X-Body-Sha256"), big, ExpectedBytesSha256(big))
		}
	})
	t.Run("chunked upload with 100-continue and trailer", func(t *testing.T) {
		c := dialRaw(t, s.Addr())
		io.WriteString(c, "PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
		if resp, _ := c.read(t, "PUT"); resp.StatusCode != 100 {
			t.Fatalf("status %d, want 100 Continue", resp.StatusCode)
		}
		bw := bufio.NewWriter(c)
		cw := httputil.NewChunkedWriter(bw)
		h := sha256.New()
		n, err := io.CopyBuffer(io.MultiWriter(cw, h), Bytes(big/4), make([]byte, 100_000))
		if err != nil {
			t.Fatal(err)
		}
		cw.Close()
		bw.WriteString("X-Trailer: done\r\n\r\n")
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		resp, body := c.read(t, "PUT")
		if want := fmt.Sprintf("%x %d", h.Sum(nil), n); resp.StatusCode != 200 || body != want {
			t.Errorf("status %d body %q, want %q", resp.StatusCode, body, want)
		}
		// The connection is still in step: another request works.
		if resp, _ := c.roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
			t.Errorf("next request: status %d", resp.StatusCode)
		}
	})
}

func TestBytesDeterministic(t *testing.T) {
	a, _ := io.ReadAll(Bytes(1000))
	b, _ := io.ReadAll(Bytes(100))
	if len(a) != 1000 || string(a[:100]) != string(b) {
		t.Error("Bytes(100) is not a prefix of Bytes(1000)")
	}
	if ExpectedBytesSha256(1000) != sha(a) || ExpectedBytesSha256(0) != sha(nil) {
		t.Error("ExpectedBytesSha256 disagrees with Bytes")
	}
}

// TestIdleCloserFINsIdleConn: the server FINs a connection idle for
// IdleTimeout, and measures how fast a client that closes on EOF closes.
func TestIdleCloserFINsIdleConn(t *testing.T) {
	const idle = 200 * time.Millisecond
	s := StartIdleCloser(t, IdleCloserOptions{IdleTimeout: idle})
	c := dialRaw(t, s.Addr())
	c.roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	answered := time.Now()

	// A client that closes on EOF.
	n, err := c.br.Read(make([]byte, 1))
	eof := time.Now()
	if n != 0 || err != io.EOF {
		t.Fatalf("read %d, %v; want EOF", n, err)
	}
	c.Close()
	if waited := eof.Sub(answered); waited < idle/2 || waited > idle+time.Second {
		t.Errorf("FIN after %v idle, want about %v", waited, idle)
	}
	wait.Until(t, 5*time.Second, "peer close measured", func() bool { return len(s.CloseLatencies()) == 1 })
	if lat := s.CloseLatencies()[0]; lat > time.Second {
		t.Errorf("close latency %v for a client that closes on EOF", lat)
	}
	if s.Fins() != 1 || s.PeerNeverClosed() != 0 || s.LateWrites() != 0 {
		t.Errorf("fins %d never %d late %d", s.Fins(), s.PeerNeverClosed(), s.LateWrites())
	}
}

// TestIdleCloserBusyConnNotClosed: a request in progress longer than
// IdleTimeout is not cut.
func TestIdleCloserBusyConnNotClosed(t *testing.T) {
	s := StartIdleCloser(t, IdleCloserOptions{IdleTimeout: 50 * time.Millisecond})
	c := dialRaw(t, s.Addr())
	resp, _ := c.roundTrip(t, "GET /sleep/200ms HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 || s.Fins() != 0 {
		t.Errorf("status %d, fins %d", resp.StatusCode, s.Fins())
	}
}

// TestIdleCloserPeerNeverCloses: a peer that ignores the FIN sits in
// CLOSE_WAIT and is counted once PeerCloseBound passes. In a namespace of
// its own, so one read of the socket table is exact.
func TestIdleCloserPeerNeverCloses(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	s := StartIdleCloser(t, IdleCloserOptions{IdleTimeout: 50 * time.Millisecond, PeerCloseBound: 200 * time.Millisecond})
	c := dialRaw(t, s.Addr())
	c.roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	mine := sockstate.Conn(c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort())
	if _, err := sockstate.WaitFor(waitCtx(t), mine, func(m map[sockstate.State]int) bool { return m[sockstate.CloseWait] == 1 }); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, "peer counted as never closing", func() bool { return s.PeerNeverClosed() == 1 })
	if len(s.CloseLatencies()) != 0 {
		t.Errorf("latencies %v", s.CloseLatencies())
	}
	// Only a close ends CLOSE_WAIT.
	if m, err := sockstate.Count(mine); err != nil || !maps.Equal(m, map[sockstate.State]int{sockstate.CloseWait: 1}) {
		t.Errorf("client socket %v, %v; want still CLOSE_WAIT", m, err)
	}
}

// TestLegacyClientLeaksCloseWait is the problem unstuck solves: a legacy
// client talking straight to an upstream that closes idle connections ends
// up with its sockets in CLOSE_WAIT, loses requests and leaks the sockets.
// In a namespace of its own, so one read of the socket table is exact.
func TestLegacyClientLeaksCloseWait(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const n = 4
	// Idle 500ms: the client dials its connections before its first
	// requests, and on a loaded machine 100ms between the two was seen to
	// pass (the first GET then read the FIN).
	s := StartIdleCloser(t, IdleCloserOptions{IdleTimeout: 500 * time.Millisecond})
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{Conns: n})
	for range n {
		if _, err := lc.Do("GET", "/", nil); err != nil {
			t.Fatal(err)
		}
	}
	first := lc.Match()
	if _, err := sockstate.WaitFor(waitCtx(t), first, func(m map[sockstate.State]int) bool { return m[sockstate.CloseWait] == n }); err != nil {
		t.Fatal("legacy sockets:", err)
	}
	wait.Until(t, 5*time.Second, "CloseWaitCount() to agree", func() bool {
		cw, err := lc.CloseWaitCount()
		return err == nil && cw == n
	})
	// Each connection's next request is lost; the client moves on to a new
	// connection and leaves the old socket in CLOSE_WAIT.
	for range n {
		if _, err := lc.Do("POST", "/upload", []byte("lost")); err == nil {
			t.Error("POST on a FINed connection succeeded")
		}
	}
	for range n {
		if _, err := lc.Do("GET", "/", nil); err != nil {
			t.Fatal(err)
		}
	}
	st := lc.Stats()
	if st.Failed["POST"] != n || st.OK["GET"] != 2*n || st.Abandoned != n || st.Dials != 2*n || len(lc.LocalPorts()) != 2*n {
		t.Errorf("stats %+v, %d ports", st, len(lc.LocalPorts()))
	}
	if m, err := sockstate.Count(first); err != nil || !maps.Equal(m, map[sockstate.State]int{sockstate.CloseWait: n}) {
		t.Errorf("abandoned sockets %v, %v; want %d still in CLOSE_WAIT", m, err, n)
	}
	wait.Until(t, 5*time.Second, "late writes seen", func() bool { return s.LateWrites() == n })
	for _, r := range s.Received() {
		if r.Method == "POST" {
			t.Errorf("lost POST was processed: %+v", r)
		}
	}
	lc.Close()
	if _, err := sockstate.WaitFor(waitCtx(t), first, func(m map[sockstate.State]int) bool { return m[sockstate.CloseWait] == 0 }); err != nil {
		t.Fatal("after Close:", err)
	}
}

func TestRaceCloser(t *testing.T) {
	const requests, fraction = 300, 0.2
	s := StartRaceCloser(t, RaceCloserOptions{Fraction: fraction, Seed: 1})
	lc := StartLegacyClient(t, s.Addr(), LegacyClientOptions{})
	var failed int
	for range requests {
		if _, err := lc.Do("GET", "/", nil); err != nil {
			failed++
		}
	}
	// The server counts a response once its write returns, which can be
	// after the client has read it all: wait for the count to catch up.
	wait.Until(t, 5*time.Second, "the server to count every response", func() bool { return s.Responses() == requests-failed })
	closes, responses := s.Closes(), s.Responses()
	if got := float64(closes) / float64(responses); got < fraction/2 || got > fraction*1.5 {
		t.Errorf("closed after %d of %d responses (%.2f), want about %.2f", closes, responses, got, fraction)
	}
	// Every close loses exactly the next request on that connection.
	if failed != closes && failed != closes-1 {
		t.Errorf("%d requests failed, server closed %d times", failed, closes)
	}
	if responses != requests-failed || len(s.Received()) != responses {
		t.Errorf("responses %d, received %d, ok requests %d", responses, len(s.Received()), requests-failed)
	}
}

func TestRaceCloserFINFollowsResponse(t *testing.T) {
	s := StartRaceCloser(t, RaceCloserOptions{Fraction: 1})
	c := dialRaw(t, s.Addr())
	resp, _ := c.roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.Close {
		t.Error("response announces Connection: close")
	}
	if n, err := c.br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("after response: read %d, %v; want EOF", n, err)
	}
	if s.Closes() != 1 {
		t.Errorf("closes %d", s.Closes())
	}
}

func TestLegacyClientDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := NewLegacyClient(addr, LegacyClientOptions{}); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("got %v, want connection refused", err)
	}
}
