package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/unstuck-proxy/unstuck/internal/wait"
)

// wireRecorder is a peer that answers each request net/http's parser
// finds complete (body included) with a 200, so a request forwarded by
// mistake is seen as a 200 by the app, not as a hang; it counts them.
type wireRecorder struct {
	*peer
	complete atomic.Int64 // requests received whole
}

func startWireRecorder(t testing.TB) *wireRecorder {
	t.Helper()
	r := &wireRecorder{}
	r.peer = startPeer(t, serveHTTP(func(*http.Request) string {
		r.complete.Add(1)
		return okResponse
	}))
	return r
}

// state returns every byte received, on all connections; the requests
// received whole; and the connections the proxy has not closed yet.
func (r *wireRecorder) state() (got []byte, complete, open int) {
	return r.gotAll(), int(r.complete.Load()), r.openConns()
}

// refusalLog is an Observer that keeps the Refused reasons.
type refusalLog struct {
	nopObserver
	mu      sync.Mutex
	reasons []string
}

func (o *refusalLog) Refused(reason string) {
	o.mu.Lock()
	o.reasons = append(o.reasons, reason)
	o.mu.Unlock()
}

func (o *refusalLog) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.reasons...)
}

// refusalReason is the Refused reason a refusal with status counts under.
func refusalReason(status int) string {
	switch status {
	case fasthttp.StatusNotImplemented:
		return RefuseMethod
	case fasthttp.StatusRequestHeaderFieldsTooLarge:
		return RefuseHeaderTooLarge
	}
	return RefuseBadRequest
}

// malformedProxy is a proxy in front of a wireRecorder, counting refusalLog.
func malformedProxy(t *testing.T, cfg Config) (*wireRecorder, *refusalLog, string) {
	t.Helper()
	rec := startWireRecorder(t)
	obs := &refusalLog{}
	cfg.Observer = obs
	addr := startProxy(t, proxyOpts{listener: cfg}, rec.addr())
	return rec, obs, addr
}

// The heads of validate_test.go's table, over a real connection: each
// refused one gets its status and a closed connection, is counted, and
// not one byte of it reaches the upstream; the legal ones are forwarded.
func TestMalformedHeadsOnTheWire(t *testing.T) {
	for _, tc := range headCases {
		t.Run(tc.name, func(t *testing.T) {
			rec, obs, addr := malformedProxy(t, Config{})
			c := dialRaw(t, addr)
			c.c.SetDeadline(time.Now().Add(5 * time.Second))
			c.send(tc.head + tc.body)
			method, _, _ := strings.Cut(strings.TrimLeft(tc.head, "\r\n"), " ")
			resp, _ := c.response(method)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (refused by %s)", resp.StatusCode, tc.status, tc.by)
			}
			if tc.status == 200 {
				if _, complete, _ := rec.state(); complete != 1 {
					t.Fatalf("upstream received %d complete requests, want 1", complete)
				}
				return
			}
			if !c.eof() {
				t.Error("app connection left open after a refusal")
			}
			if got, _, _ := rec.state(); len(got) != 0 {
				t.Errorf("upstream received %q", got)
			}
			if got, want := obs.list(), []string{refusalReason(tc.status)}; !sameReasons(got, want) {
				t.Errorf("refusalLog counted %q, want %q", got, want)
			}
		})
	}
}

func sameReasons(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

// Odd but legal bytes reach the upstream exactly as the app sent them:
// target, every tchar in a name, tab and obs-text in a value, an empty
// value, a body with NUL and LF.
func TestMalformedPositiveControlForwardedExactly(t *testing.T) {
	rec, obs, addr := malformedProxy(t, Config{})
	const (
		line  = "POST /a%2F..;x=%00?q=%ff&r=/ HTTP/1.1\r\n"
		name  = "!#$%&'*+-.^_`|~09AZaz"
		value = "a\tb \x80\xff\"(){}"
		body  = "he\x00l\nlo\r\n!"
	)
	c := dialRaw(t, addr)
	c.send(line + "Host: x\r\n" + name + ": " + value + "\r\nX-Empty:\r\nContent-Length:10\r\n\r\n" + body)
	if resp, _ := c.response("POST"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got, complete, _ := rec.state()
	if complete != 1 {
		t.Fatalf("upstream received %d complete requests", complete)
	}
	head, gotBody, ok := bytes.Cut(got, []byte("\r\n\r\n"))
	if !ok || string(gotBody) != body {
		t.Fatalf("upstream received body %q, want %q", gotBody, body)
	}
	lines := strings.Split(string(head)+"\r\n", "\r\n")
	if lines[0]+"\r\n" != line {
		t.Errorf("request line %q, want %q", lines[0], line)
	}
	fields := map[string]string{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ":")
		fields[strings.ToLower(k)] = strings.TrimPrefix(v, " ")
	}
	for k, want := range map[string]string{strings.ToLower(name): value, "x-empty": "", "content-length": "10"} {
		if v, ok := fields[k]; !ok || v != want {
			t.Errorf("upstream received %s: %q (present %v), want %q", k, v, ok, want)
		}
	}
	if r := obs.list(); len(r) != 0 {
		t.Errorf("refusalLog counted: %q", r)
	}
}

// Chunked request bodies fasthttp's stream reader fails on are the app's
// mistake: 400, the app connection closed, the upstream exchange aborted
// (its connection closed, no complete request received), counted as a
// refusal and not as an upstream failure. The head goes upstream before
// the body is read, so "nothing complete", not "nothing at all".
func TestMalformedChunkedBodies(t *testing.T) {
	const head = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
	for _, tc := range []struct{ name, body string }{
		{"non-hex chunk size", "zz\r\nhello\r\n0\r\n\r\n"},
		{"0x chunk size", "0x5\r\nhello\r\n0\r\n\r\n"},
		{"negative chunk size", "-5\r\nhello\r\n0\r\n\r\n"},
		{"chunk size overflow", "10000000000000000005\r\nhello\r\n0\r\n\r\n"},
		{"empty chunk size", "\r\nhello\r\n0\r\n\r\n"},
		{"bare LF after chunk size", "5\nhello\r\n0\r\n\r\n"},
		{"bare LF in chunk extension", "5;a\nb\r\nhello\r\n0\r\n\r\n"},
		{"space before chunk extension", "5 ;a=b\r\nhello\r\n0\r\n\r\n"},
		{"chunk data longer than its size", "5\r\nhelloXX\r\n0\r\n\r\n"},
		{"second chunk broken", "5\r\nhello\r\nqq\r\nworld\r\n0\r\n\r\n"},
		{"forbidden trailer", "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"},
		// fasthttp skips extension bytes without any bound: nothing but a
		// limit of unstuck's own refuses this (net/http allows 16 KiB of
		// non-data overhead, Envoy and nginx a line of a few KiB).
		{"64 KiB chunk extension", "5;" + strings.Repeat("e", 64<<10) + "\r\nhello\r\n0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, obs, addr := malformedProxy(t, Config{})
			c := dialRaw(t, addr)
			c.send(head + tc.body)
			resp, _ := c.response("POST")
			if resp.StatusCode != 400 {
				t.Errorf("status %d, want 400", resp.StatusCode)
			}
			if !c.eof() {
				t.Error("app connection left open: the body's framing is in doubt")
			}
			wait.Until(t, 2*time.Second, "the upstream connection closed", func() bool {
				_, _, open := rec.state()
				return open == 0
			})
			if _, complete, _ := rec.state(); complete != 0 {
				t.Errorf("upstream received %d complete requests from a broken body", complete)
			}
			if got, want := obs.list(), []string{RefuseBadRequest}; !sameReasons(got, want) {
				t.Errorf("refusalLog counted %q, want %q", got, want)
			}
		})
	}
}

// A head with bare LFs only never completes for fasthttp, which waits for
// CRLFCRLF; it must be answered at once, without the app closing first:
// the framing guard on the read path refuses it (400). The header timeout
// only bounds the test.
func TestMalformedBareLFHeadIsAnswered(t *testing.T) {
	for _, tc := range []struct{ name, head string }{
		{"LF only", "GET / HTTP/1.1\nHost: x\n\n"},
		{"LF ending the block", "GET / HTTP/1.1\r\nHost: x\r\n\n"},
	} {
		head := tc.head
		t.Run(tc.name, func(t *testing.T) {
			rec, _, addr := malformedProxy(t, Config{ReadHeaderTimeout: time.Second})
			c := dialRaw(t, addr)
			c.send(head)
			c.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatalf("no answer while the app waits: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != 400 {
				t.Errorf("status %d, want 400", resp.StatusCode)
			}
			if !c.eof() {
				t.Error("app connection left open")
			}
			if got, _, _ := rec.state(); len(got) != 0 {
				t.Errorf("upstream received %q", got)
			}
		})
	}
}
