package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// chunks writes a chunked body: n chunks of size bytes, each size line
// followed by ext, then the last chunk and an empty trailer.
func chunks(n, size int, ext string) string {
	var b strings.Builder
	data := strings.Repeat("d", size)
	for range n {
		fmt.Fprintf(&b, "%x%s\r\n%s\r\n", size, ext, data)
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

const (
	getReq    = "GET /a HTTP/1.1\r\nHost: app\r\nUser-Agent: test\r\n\r\n"
	postHead  = "POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: "
	chunkHead = "POST /c HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
)

// framingCases are inputs with the guard's verdict: err, or nil and
// whether it ends at a request boundary (done) or stops following (lost).
var framingCases = []struct {
	name    string
	in      string
	maxHead int
	err     error
	lost    bool
}{
	{name: "get", in: getReq},
	{name: "pipelined gets", in: getReq + getReq + getReq},
	{name: "leading empty lines", in: "\r\n\r\n" + getReq},
	{name: "no header lines", in: "GET / HTTP/1.0\r\n\r\n" + getReq},
	{name: "http/1.0 getReq", in: "GET / HTTP/1.0\r\nHost: app\r\n\r\n"},
	{name: "content-length body with bare LFs", in: postHead + "12\r\n\r\nline\nline\n\n\n" + getReq},
	{name: "content-length 0", in: postHead + "0\r\n\r\n" + getReq},
	{name: "content-length without space, any case", in: "POST / HTTP/1.1\r\ncontent-LENGTH:3\r\n\r\n\n\n\n" + getReq},
	{name: "chunked", in: chunkHead + "5\r\nhello\r\n1A\r\n" + strings.Repeat("x", 26) + "\r\n0\r\n\r\n" + getReq},
	{name: "chunked, any case, no space", in: "POST / HTTP/1.1\r\ntransfer-encoding:CHUNKED\r\n\r\n0\r\n\r\n" + getReq},
	{name: "chunk data with bare LFs", in: chunkHead + "3\r\n\n\n\n\r\n0\r\n\r\n" + getReq},
	{name: "chunk extensions under the cap", in: chunkHead + "5;name=value;q=\"a b\"\r\nhello\r\n0;last\r\n\r\n" + getReq},
	{name: "chunk size with whitespace", in: chunkHead + "5 \r\nhello\r\n0\t\r\n\r\n" + getReq},
	{name: "chunk size upper hex, leading zeros", in: chunkHead + "000A\r\n0123456789\r\n0\r\n\r\n" + getReq},
	{name: "trailers", in: chunkHead + "5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n" + getReq},
	{name: "1 KiB chunks with short extensions", in: chunkHead + chunks(64, 1024, ";e=1") + getReq},
	{name: "one byte per chunk", in: chunkHead + chunks(4096, 1, "") + getReq},
	{name: "chunk line of 4095 bytes", in: chunkHead + "1;" + strings.Repeat("e", 4093) + "\r\nx\r\n0\r\n\r\n" + getReq},

	{name: "bare LF ends the request line", in: "GET / HTTP/1.1\nHost: app\r\n\r\n", err: errBareLF},
	{name: "bare LF ends a header", in: "GET / HTTP/1.1\r\nHost: app\nX: y\r\n\r\n", err: errBareLF},
	{name: "bare LF head, no CRLFCRLF anywhere", in: "GET / HTTP/1.1\nHost: app\n\n", err: errBareLF},
	{name: "bare LF as the empty line", in: "GET / HTTP/1.1\r\nHost: app\r\n\n", err: errBareLF},
	{name: "bare LF as a leading empty line", in: "\n" + getReq, err: errBareLF},
	{name: "bare LF in a pipelined head", in: getReq + "GET /b HTTP/1.1\r\nHost: app\n\r\n", err: errBareLF},
	{name: "bare LF after a body", in: postHead + "2\r\n\r\nok" + "GET / HTTP/1.1\n", err: errBareLF},
	{name: "bare LF after a chunk size", in: chunkHead + "5\nhello\r\n0\r\n\r\n", err: errChunkBareLF},
	{name: "bare LF after an extension", in: chunkHead + "5;a=b\nhello\r\n0\r\n\r\n", err: errChunkBareLF},
	{name: "bare LF after chunk data", in: chunkHead + "5\r\nhello\n0\r\n\r\n", err: errChunkBareLF},
	{name: "bare LF after the last chunk", in: chunkHead + "0\n\r\n", err: errChunkBareLF},
	{name: "bare LF in a trailer", in: chunkHead + "0\r\nX: y\n\r\n", err: errChunkBareLF},
	{name: "bare LF ends the trailers", in: chunkHead + "0\r\nX: y\r\n\n", err: errChunkBareLF},
	{name: "chunk data not followed by CRLF", in: chunkHead + "5\r\nhelloX\r\n0\r\n\r\n", err: errChunkCRLF},
	{name: "CR inside an extension", in: chunkHead + "5;a\rb\r\nhello\r\n0\r\n\r\n", err: errChunkCRLF},
	{name: "CR then not LF after data", in: chunkHead + "5\r\nhello\rX", err: errChunkCRLF},
	{name: "chunk size not hex", in: chunkHead + "g\r\n", err: errChunkSize},
	{name: "empty chunk size", in: chunkHead + "\r\n", err: errChunkSize},
	{name: "chunk size with a sign", in: chunkHead + "+5\r\nhello\r\n0\r\n\r\n", err: errChunkSize},
	{name: "17 hex digits", in: chunkHead + strings.Repeat("0", 16) + "1\r\nx\r\n0\r\n\r\n", err: errChunkSize},
	{name: "chunk line of 4096 bytes", in: chunkHead + "1;" + strings.Repeat("e", 4094) + "\r\nx\r\n0\r\n\r\n", err: errChunkLine},
	{name: "5 KiB chunk line", in: chunkHead + "1;" + strings.Repeat("e", 5<<10) + "\r\nx\r\n0\r\n\r\n", err: errChunkLine},
	{name: "64 KiB chunk extension", in: chunkHead + "1;e=" + strings.Repeat("e", 64<<10) + "\r\nx\r\n0\r\n\r\n", err: errChunkLine},
	{name: "1 KiB extension per 1-byte chunk", in: chunkHead + chunks(100, 1, ";"+strings.Repeat("e", 1023)) + getReq, err: errChunkOverhead},
	{name: "trailers past the overhead cap", in: chunkHead + "0\r\n" + strings.Repeat("X-T: "+strings.Repeat("t", 1000)+"\r\n", 20) + "\r\n", err: errChunkOverhead},
	{name: "space in a trailer name", in: chunkHead + "0\r\n8 000: y\r\n\r\n", err: errTrailerName},
	{name: "trailer with no colon", in: chunkHead + "0\r\nX-Sum\r\n\r\n", err: errTrailerName},
	{name: "trailer with an empty name", in: chunkHead + "0\r\n: y\r\n\r\n", err: errTrailerName},
	{name: "trailer line of 5 KiB", in: chunkHead + "0\r\nX: " + strings.Repeat("t", 5<<10) + "\r\n\r\n", err: errChunkLine},

	{name: "CONNECT", in: "CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n\x16\x03\x01\n\n", lost: true},
	{name: "content-length and transfer-encoding", in: "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\n", lost: true},
	{name: "two content-lengths", in: "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n\n", lost: true},
	{name: "content-length list", in: "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", lost: true},
	{name: "content-length too long", in: "POST / HTTP/1.1\r\nContent-Length: " + strings.Repeat("1", 30) + "\r\n\r\n", lost: true},
	{name: "transfer-encoding not plain", in: "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", lost: true},
	{name: "space before the colon", in: "POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n\n\n\n", lost: true},
	{name: "obs-fold", in: "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", lost: true},
	{name: "head over maxHead", in: "GET / HTTP/1.1\r\nX: " + strings.Repeat("x", 100) + "\nY: y\n\n", maxHead: 64, lost: true},
	{name: "head of exactly maxHead", in: getReq + "GET /b HTTP/1.1\n", maxHead: len(getReq), err: errBareLF},
	{name: "a long header name", in: "GET / HTTP/1.1\r\n" + strings.Repeat("X", 100) + ": 1\r\n\r\n" + getReq},
	// After a request that carries Upgrade come another protocol's bytes,
	// or nothing: its body is followed, then nothing.
	{name: "upgrade, then another protocol", in: upgradeHead + "\x81\x05hello\n\n\r\n", lost: true},
	{name: "upgrade, any case", in: "GET / HTTP/1.1\r\nupGRADE:websocket\r\n\r\n\n", lost: true},
	{name: "upgrade with a body, then another protocol", in: "POST / HTTP/1.1\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\nok\n\n", lost: true},
	{name: "upgrade with a chunked body, then another protocol", in: "POST / HTTP/1.1\r\nUpgrade: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\n\n", lost: true},
	{name: "upgrade with a bare LF in its chunked body", in: "POST / HTTP/1.1\r\nUpgrade: x\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n", err: errChunkBareLF},
	{name: "a header named like Upgrade", in: "GET / HTTP/1.1\r\nUpgrades: x\r\nX-Upgrade: y\r\n\r\n" + getReq},
}

// guardResult is what a guard ends in after feeding pieces.
type guardResult struct {
	err  error
	at   int          // where in the input the violation is
	g    framingGuard // pre zeroed: it is scratch space; only state and err once failed or lost
	done bool         // at a request boundary
}

func feedPieces(maxHead int, pieces ...[]byte) guardResult {
	g := framingGuard{maxHead: maxHead}
	var err error
	at := 0
	for _, p := range pieces {
		if err = g.feed(p); err != nil {
			at += g.good
			break
		}
		at += len(p)
	}
	// Once failed, feeding again returns the same error.
	if again := g; err != nil {
		if e := again.feed([]byte("\r\n")); e != err {
			err = fmt.Errorf("feed after %v returned %v", err, e)
		}
	}
	g.pre = [headPrefix]byte{}
	if g.state == guardFailed || g.state == guardLost {
		// Counters stop wherever the violation was found.
		g = framingGuard{maxHead: g.maxHead, state: g.state, err: g.err}
	}
	done := g.state == guardHead && !g.started && g.headLen == 0 && g.line == 0
	return guardResult{err: err, at: at, g: g, done: done}
}

func TestFramingGuard(t *testing.T) {
	for _, tc := range framingCases {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.in)
			whole := feedPieces(tc.maxHead, in)
			if whole.err != tc.err {
				t.Fatalf("feed whole: %v, want %v", whole.err, tc.err)
			}
			if (tc.err == errBareLF || tc.err == errChunkBareLF) && in[whole.at] != '\n' {
				t.Fatalf("violation at %d: %q", whole.at, in[whole.at])
			}
			if tc.err == nil {
				if lost := whole.g.state == guardLost; lost != tc.lost {
					t.Fatalf("lost %v, want %v", lost, tc.lost)
				}
				if !tc.lost && !whole.done {
					t.Fatalf("not at a request boundary: %+v", whole.g)
				}
			}
			check := func(how string, r guardResult) {
				t.Helper()
				if r != whole {
					t.Fatalf("%s: %v %+v, whole: %v %+v", how, r.err, r.g, whole.err, whole.g)
				}
			}
			// Every two-piece split (the long inputs: near the ends and
			// at each of a sample of positions).
			for i := range len(in) + 1 {
				if len(in) > 2000 && i > 300 && i < len(in)-300 && i%97 != 0 {
					continue
				}
				check(fmt.Sprintf("split at %d", i), feedPieces(tc.maxHead, in[:i], in[i:]))
			}
			check("byte by byte", feedPieces(tc.maxHead, splitEvery(in, 1)...))
			rng := rand.New(rand.NewPCG(1, uint64(len(in))))
			for range 50 {
				check("random split", feedPieces(tc.maxHead, randomSplit(rng, in)...))
			}
		})
	}
}

func splitEvery(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

func randomSplit(rng *rand.Rand, b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := 1 + rng.IntN(min(len(b), 1+rng.IntN(64)))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// TestFramingGuardErrors: a head's bare LF is the read path's 400 for a
// malformed head; a chunked body's errors have one sentinel.
func TestFramingGuardErrors(t *testing.T) {
	if !errors.Is(errBareLF, errMalformedHead) {
		t.Error("errBareLF is not errMalformedHead")
	}
	for _, err := range []error{errChunkBareLF, errChunkSize, errChunkCRLF, errChunkLine, errChunkOverhead} {
		if !errors.Is(err, errMalformedChunked) {
			t.Errorf("%v does not wrap errMalformedChunked", err)
		}
	}
}

// TestFramingGuardAllocs: following a head, a Content-Length body and a
// chunked body allocates nothing.
func TestFramingGuardAllocs(t *testing.T) {
	in := []byte(getReq + postHead + "5\r\n\r\nhello" + chunkHead + chunks(4, 100, ";e=1") + "\r\n" + getReq)
	var g framingGuard
	pieces := splitEvery(in, 7)
	if n := testing.AllocsPerRun(100, func() {
		for _, p := range pieces {
			if err := g.feed(p); err != nil {
				t.Fatal(err)
			}
		}
	}); n != 0 {
		t.Errorf("%v allocations per run", n)
	}
}

// guardConn is the read path the guard is meant for: bytes before a
// violation are handed over, the read after fails.
type guardConn struct {
	net.Conn
	g       framingGuard // owned by the serving goroutine, as pending
	pending error
}

func (c *guardConn) Read(b []byte) (int, error) {
	if c.pending != nil {
		return 0, c.pending
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		if gerr := c.g.feed(b[:n]); gerr != nil {
			c.pending = gerr
			return c.g.good, nil
		}
	}
	return n, err
}

func newGuardConn(c net.Conn) net.Conn { return &guardConn{Conn: c} }

// TestFramingGuardWithFasthttp: behind the guard, fasthttp answers a
// pipelined bare-LF head with 400 instead of waiting for ever, refuses a
// bare LF ending the request line (which checkRequest cannot see), and a
// handler reading a body with a 64 KiB chunk extension gets an error.
func TestFramingGuardWithFasthttp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{
		StreamRequestBody: true,
		Logger:            zapPrintf{zap.NewNop()},
		Handler: func(ctx *fasthttp.RequestCtx) {
			if body := ctx.RequestBodyStream(); body == nil {
				ctx.SetBody(ctx.Request.Body()) // no stream: the body, if any, was read whole
			} else if _, err := io.Copy(io.Discard, body); err != nil {
				ctx.SetStatusCode(fasthttp.StatusBadRequest)
				ctx.SetConnectionClose()
				return
			}
			ctx.Response.SetBodyString("ok")
		},
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(wrapListener{ln, newGuardConn}) }()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	for _, tc := range []struct {
		name, in string
		want     []int // statuses, then the connection is closed
	}{
		{"pipelined bare-LF head", getReq + "GET /b HTTP/1.1\nHost: app\n\n", []int{200, 400}},
		{"bare LF ends the request line", "GET / HTTP/1.1\nHost: app\r\n\r\n", []int{400}},
		{"64 KiB chunk extension", chunkHead + "1;e=" + strings.Repeat("e", 64<<10) + "\r\nx\r\n0\r\n\r\n", []int{400}},
		{"chunked, then a GET", chunkHead + chunks(8, 1024, ";e=1") + getReq + "GET /c HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", []int{200, 200, 200}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, tc.in); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			for i, want := range tc.want {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("response %d: %d, want %d", i, resp.StatusCode, want)
				}
			}
			// Closed: EOF, or RST over the body fasthttp did not read.
			if n, err := br.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("after the responses: %d, %v; want EOF", n, err)
			}
		})
	}
}

func BenchmarkFramingGuard(b *testing.B) {
	body := bytes.Repeat([]byte("b"), 64<<10)
	for _, bc := range []struct {
		name  string
		reads [][]byte // one request, as its reads
	}{
		{"get", [][]byte{[]byte("GET /api/v1/items?id=42 HTTP/1.1\r\nHost: upstream.internal\r\n" +
			"User-Agent: legacy-app/1.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n")}},
		{"content-length 64KiB", append([][]byte{[]byte(postHead + "65536\r\n\r\n")}, splitEvery(body, 16<<10)...)},
		{"chunked 1KiB chunks", [][]byte{[]byte(chunkHead), []byte(chunks(64, 1024, ""))}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var n int
			for _, r := range bc.reads {
				n += len(r)
			}
			b.SetBytes(int64(n))
			b.ReportAllocs()
			var g framingGuard
			for b.Loop() {
				for _, r := range bc.reads {
					if err := g.feed(r); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// guardBoundaries feeds data a byte at a time and returns where the
// guard ended the first request's head and the request (-1: not there;
// an upgrade request ends where the guard stops following),
// and its error and the state it was in when it failed.
func guardBoundaries(data []byte) (headEnd, reqEnd int, failedIn guardState, err error) {
	var g framingGuard
	headEnd, reqEnd = -1, -1
	for i := range data {
		inHead := g.state == guardHead && g.started
		failedIn = g.state
		if err = g.feed(data[i : i+1]); err != nil {
			return headEnd, reqEnd, failedIn, err
		}
		if g.state == guardLost && g.lastHead {
			// An upgrade request ends here; nothing after it is followed.
			if inHead {
				headEnd = i + 1
			}
			return headEnd, i + 1, 0, nil
		}
		if g.state == guardLost {
			return headEnd, reqEnd, failedIn, nil
		}
		if inHead && (g.state != guardHead || !g.started) {
			headEnd = i + 1
		}
		if headEnd >= 0 && g.state == guardHead && !g.started && g.headLen == 0 && g.line == 0 {
			return headEnd, i + 1, 0, nil
		}
	}
	return headEnd, reqEnd, 0, nil
}

// FuzzFramingGuard checks that the guard is split-invariant, and that on
// a first request whose head the guard follows and net/http reads,
// both end the head at the same byte; and that where net/http reads the
// whole HTTP/1.1 request, the guard ends it at the same byte too.
//
// Not compared: heads the guard refuses (bare LF, which net/http accepts)
// or stops following (checkRequest refuses them); what net/http refuses
// and the guard passes on (invalid request lines or names: checkRequest's
// to refuse; chunk-size lines fasthttp refuses); HTTP/1.0 bodies
// (net/http ignores Transfer-Encoding there, fasthttp refuses it); and
// trailers, where the guard is stricter than net/http on purpose.
func FuzzFramingGuard(f *testing.F) {
	for _, tc := range framingCases {
		if len(tc.in) < 8<<10 {
			f.Add([]byte(tc.in))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		whole := feedPieces(0, data)
		if byByte := feedPieces(0, splitEvery(data, 1)...); byByte != whole {
			t.Fatalf("byte by byte: %v %+v, whole: %v %+v", byByte.err, byByte.g, whole.err, whole.g)
		}
		if len(data) > 1 {
			i := int(data[0]) % len(data)
			if r := feedPieces(0, data[:i], data[i:]); r != whole {
				t.Fatalf("split at %d: %v %+v, whole: %v %+v", i, r.err, r.g, whole.err, whole.g)
			}
		}

		headEnd, reqEnd, failedIn, gerr := guardBoundaries(data)
		if headEnd < 0 {
			return // a head the guard refuses, or does not follow
		}
		r := bytes.NewReader(data)
		br := bufio.NewReader(r) // net/http's server size: it bounds trailers
		consumed := func() int { return len(data) - r.Len() - br.Buffered() }
		req, err := http.ReadRequest(br)
		if err != nil {
			return // checkRequest's to refuse
		}
		if got := consumed(); got != headEnd {
			t.Fatalf("net/http's head ends at %d, the guard's at %d", got, headEnd)
		}
		if !req.ProtoAtLeast(1, 1) {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return // fasthttp's to refuse, or the body is incomplete
		}
		switch got := consumed(); {
		case gerr != nil && failedIn == guardTrailer:
			// Stricter than net/http on purpose: trailers count as
			// overhead and must end lines with CRLF.
		case gerr != nil:
			t.Fatalf("net/http reads a request of %d bytes, the guard fails: %v", got, gerr)
		case got != reqEnd:
			t.Fatalf("net/http's request ends at %d, the guard's at %d", got, reqEnd)
		}
	})
}
