package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// Who refuses a response head: fasthttp's ResponseHeader.Read, or
// checkResponse on what Read let through; "" for a head that is forwarded.
const (
	respByFasthttp = "fasthttp"
	respByCheck    = "checkResponse"
)

type respCase struct {
	name string
	head string // the response head, and whatever follows it
	by   string
	// lenient is how fasthttp alone frames a head checkResponse refuses
	// (ContentLength(): -1 chunked, -2 until close): the reason it must.
	lenient int
}

// respCases are the response heads issue 11's item 5 is about, and their
// legal neighbours. The unit test proves the "by" column; the wire test
// sends each through a proxy.
var respCases = []respCase{
	// Legal.
	{"CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "", 0},
	{"CL without space", "HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\nhello", "", 0},
	{"CL with OWS", "HTTP/1.1 200 OK\r\nContent-Length: \t5 \t\r\n\r\nhello", "", 0},
	{"CL leading zeros", "HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello", "", 0},
	{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "", 0},
	{"chunked any case", "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "", 0},
	{"close-delimited 1.1", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", "", 0},
	{"close-delimited 1.0", "HTTP/1.0 200 OK\r\n\r\nhello", "", 0},
	{"1.0 with CL", "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "", 0},
	{"no headers", "HTTP/1.1 204 No Content\r\n\r\n", "", 0},
	{"CRLF before status line", "\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "", 0},
	{"obs-text and HTAB in value", "HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\tx\r\nContent-Length: 5\r\n\r\nhello", "", 0},
	{"no reason phrase", "HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello", "", 0},

	// Refused by fasthttp's parse: the error path answers 502.
	{"duplicate CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", respByFasthttp, 0},
	{"duplicate equal CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"CL list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", respByFasthttp, 0},
	{"CL with plus", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", respByFasthttp, 0},
	{"negative CL", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello", respByFasthttp, 0},
	{"CL with inner space", "HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello", respByFasthttp, 0},
	{"CL in hex", "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", respByFasthttp, 0},
	{"empty CL", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nhello", respByFasthttp, 0},
	{"CL overflow", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nhello", respByFasthttp, 0},
	{"TE gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByFasthttp, 0},
	{"TE chunked, identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByFasthttp, 0},
	{"TE identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\nhello", respByFasthttp, 0},
	{"TE xchunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByFasthttp, 0},
	{"TE twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByFasthttp, 0},
	{"TE gzip then chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByFasthttp, 0},
	{"NUL in value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"bare CR in value", "HTTP/1.1 200 OK\r\nX-A: a\rX-B: b\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"DEL in value", "HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"tab in name", "HTTP/1.1 200 OK\r\nX-A\t: a\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"separator in name", "HTTP/1.1 200 OK\r\nX(A): a\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"empty name", "HTTP/1.1 200 OK\r\n: a\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"fold first line", "HTTP/1.1 200 OK\r\n X-A: a\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"two-digit status", "HTTP/1.1 20 OK\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},
	{"not HTTP", "HTXP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", respByFasthttp, 0},

	// Let through by fasthttp; checkResponse refuses.
	{"CL then TE", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByCheck, -1},
	{"TE then CL", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByCheck, -1},
	{"TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByCheck, -2},
	{"TE in 1.0 with CL", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello", respByCheck, 5},
	{"HTTP/1.2", "HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\nhello", respByCheck, 5},
	{"HTTP/2.0 with TE", "HTTP/2.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByCheck, -2},
	{"space before colon, CL", "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", respByCheck, 5},
	{"space before colon, TE", "HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByCheck, -1},
	{"space in name", "HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 5\r\n\r\nhello", respByCheck, 5},
	{"obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", respByCheck, 5},
	{"obs-fold in TE", "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", respByCheck, -1},
	{"bare LF in a header line", "HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 5\r\n\r\nhello", respByCheck, 5},
	{"bare LF status line", "HTTP/1.1 200 OK\n\r\nhello\r\n\r\n", respByCheck, -2},
	{"control byte in reason", "HTTP/1.1 200 O\x01K\r\nContent-Length: 5\r\n\r\nhello", respByCheck, 5},
	{"bare CR in reason", "HTTP/1.1 200 OK\rX-B: b\r\nContent-Length: 5\r\n\r\nhello", respByCheck, 5},
}

// readRespHead reads a head from raw the way readResponseHeader does, into
// a header that keeps names as sent and adds no Content-Type, with or
// without checkResponse.
func readRespHead(t testing.TB, raw string, check bool) (*fasthttp.ResponseHeader, error) {
	t.Helper()
	var h fasthttp.ResponseHeader
	h.DisableNormalizing()
	h.SetNoDefaultContentType(true)
	br := bufio.NewReader(strings.NewReader(raw))
	if check {
		_, err := readResponseHead(&h, br)
		return &h, err
	}
	return &h, h.Read(br)
}

// TestCheckResponseTable proves the table's columns: fasthttp's parse
// refuses exactly the heads it says, checkResponse the rest, and the heads
// only checkResponse refuses are framed by fasthttp as lenient says.
func TestCheckResponseTable(t *testing.T) {
	for _, tc := range respCases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := readRespHead(t, tc.head, false)
			if (err != nil) != (tc.by == respByFasthttp) {
				t.Fatalf("fasthttp's parse error: %v; table says the refuser is %q", err, tc.by)
			}
			if tc.by == respByCheck && h.ContentLength() != tc.lenient {
				t.Errorf("fasthttp frames it as %d; table says %d", h.ContentLength(), tc.lenient)
			}
			_, err = readRespHead(t, tc.head, true)
			switch {
			case tc.by == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.by == respByCheck && !errors.Is(err, errBadResponse):
				t.Fatalf("got %v, want an errBadResponse", err)
			case tc.by == respByFasthttp && err == nil:
				t.Fatal("accepted")
			}
		})
	}
}

// A head that arrives a few bytes at a time is buffered whole before
// fasthttp parses it, and checked all the same.
func TestReadResponseHeadInPieces(t *testing.T) {
	for _, tc := range []struct {
		head string
		bad  bool
	}{
		{"HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("a", 300) + "\r\nContent-Length: 5\r\n\r\nhello", false},
		{"HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("a", 300) + "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true},
	} {
		var h fasthttp.ResponseHeader
		h.DisableNormalizing()
		br := bufio.NewReaderSize(&trickle{s: tc.head, n: 7}, 4096)
		_, err := readResponseHead(&h, br)
		if got := errors.Is(err, errBadResponse); got != tc.bad || (!tc.bad && err != nil) {
			t.Fatalf("bad=%v: got %v", tc.bad, err)
		}
		if !tc.bad {
			if rest, _ := io.ReadAll(br); string(rest) != "hello" {
				t.Fatalf("read past the head: left %q", rest)
			}
		}
	}
}

// trickle reads s at most n bytes at a time.
type trickle struct {
	s string
	n int
}

func (r *trickle) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.n)], r.s)
	r.s = r.s[n:]
	return n, nil
}

// Read errors come out as h.Read's would: nothing at all is EOF, a head
// cut short or larger than the buffer is an error of the same kind, and a
// socket error reported once (ETIMEDOUT from a blackholed upstream, then
// only EOF) is still a timeout: 504, not 502.
func TestReadResponseHeadErrors(t *testing.T) {
	long := "HTTP/1.1 200 OK\r\nX-A: " + strings.Repeat("a", 5000) + "\r\n\r\n"
	for _, tc := range []struct {
		name, head string
		err        error // returned once, after head
	}{
		{"empty", "", nil},
		{"only CRLFs", "\r\n\r\n", nil},
		{"cut short", "HTTP/1.1 200 OK\r\nContent-Len", nil},
		{"larger than the buffer", long, nil},
		{"timeout at once", "", os.ErrDeadlineExceeded},
		{"ETIMEDOUT at once", "", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ETIMEDOUT)}},
		{"ETIMEDOUT mid-head", "HTTP/1.1 200 OK\r\n", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ETIMEDOUT)}},
		{"reset mid-head", "HTTP/1.1 200 OK\r\n", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h, ref fasthttp.ResponseHeader
			_, err := readResponseHead(&h, bufio.NewReaderSize(&onceErr{s: tc.head, err: tc.err}, 4096))
			want := ref.Read(bufio.NewReaderSize(&onceErr{s: tc.head, err: tc.err}, 4096))
			var small, wantSmall *fasthttp.ErrSmallBuffer
			switch {
			case err == nil || want == nil || errors.Is(err, errBadResponse):
				t.Fatalf("got %v, want fasthttp's %v", err, want)
			case errors.Is(err, io.EOF) != errors.Is(want, io.EOF),
				timedOut(err) != timedOut(want),
				errors.Is(err, syscall.ECONNRESET) != errors.Is(want, syscall.ECONNRESET),
				errors.As(err, &small) != errors.As(want, &wantSmall):
				t.Fatalf("got %v, want one like fasthttp's %v", err, want)
			}
		})
	}
}

// onceErr reads s, then fails once with err (if any), then says EOF: what
// a socket does after ETIMEDOUT or ECONNRESET.
type onceErr struct {
	s   string
	err error
}

func (r *onceErr) Read(p []byte) (int, error) {
	if r.s != "" {
		n := copy(p, r.s)
		r.s = r.s[n:]
		return n, nil
	}
	if err := r.err; err != nil {
		r.err = nil
		return 0, err
	}
	return 0, io.EOF
}

func TestCheckResponseDoesNotAllocate(t *testing.T) {
	raw := benchRespHead + "hello"
	var h fasthttp.ResponseHeader
	h.DisableNormalizing()
	sr := strings.NewReader(raw)
	br := bufio.NewReader(sr)
	n := testing.AllocsPerRun(100, func() {
		sr.Reset(raw)
		br.Reset(sr)
		if _, err := readResponseHead(&h, br); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per readResponseHead", n)
	}
}

const benchRespHead = "HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 14:00:00 GMT\r\n" +
	"Content-Type: application/json; charset=utf-8\r\nContent-Length: 5\r\n" +
	"Cache-Control: no-cache, no-store, must-revalidate\r\nVary: Accept-Encoding\r\n" +
	"X-Request-Id: 7b2c1f0e-5d3a-4c8e-9f61-2a4b6c8d0e1f\r\nServer: backend\r\n\r\n"

// BenchmarkCheckResponse is checkResponse's cost on a typical head, apart
// from fasthttp's parse of it (BenchmarkReadResponseHead: both).
func BenchmarkCheckResponse(b *testing.B) {
	var h fasthttp.ResponseHeader
	if err := h.Read(bufio.NewReader(strings.NewReader(benchRespHead))); err != nil {
		b.Fatal(err)
	}
	head := []byte(benchRespHead)
	b.ReportAllocs()
	b.SetBytes(int64(len(head)))
	for b.Loop() {
		if err := checkResponse(&h, head); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadResponseHead(b *testing.B) {
	for _, check := range []bool{false, true} {
		name := "fasthttp"
		if check {
			name = "checked"
		}
		b.Run(name, func(b *testing.B) {
			var h fasthttp.ResponseHeader
			h.DisableNormalizing()
			sr := strings.NewReader(benchRespHead)
			br := bufio.NewReader(sr)
			b.ReportAllocs()
			for b.Loop() {
				sr.Reset(benchRespHead)
				br.Reset(sr)
				var err error
				if check {
					_, err = readResponseHead(&h, br)
				} else {
					err = h.Read(br)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// startBadResponder starts a peer that answers every request head it
// reads with response, then closes the connection if closeAfter.
func startBadResponder(t *testing.T, response string, closeAfter bool) *peer {
	t.Helper()
	return startPeer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil { // GETs: no body
				return
			}
			if _, err := io.WriteString(c, response); err != nil || closeAfter {
				return
			}
		}
	})
}

// appGet sends a GET through the proxy at addr as an app would and returns
// every byte the app receives until the proxy closes the connection.
func appGet(t *testing.T, addr string) []byte {
	t.Helper()
	got, err := appRequest(t, addr, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
	if err != nil {
		t.Fatalf("after %q: %v", got, err)
	}
	return got
}

// appRequest sends req and reads until the proxy closes the connection: the
// bytes, and the error that ended the read (nil: a FIN).
func appRequest(t *testing.T, addr, req string) ([]byte, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return io.ReadAll(c)
}

// completeResponse parses what the app received as net/http does: a
// status (0: not even a complete head) and whether the body ended where
// its framing says it must.
func completeResponse(got []byte) (status int, body string, complete bool) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
	if err != nil {
		return 0, "", false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err == nil
}

// TestBadResponseHeadsGet502 sends every head of the table through a proxy:
// a refused one gets 502, a legal one its own status and body.
func TestBadResponseHeadsGet502(t *testing.T) {
	for _, tc := range respCases {
		t.Run(tc.name, func(t *testing.T) {
			up := startBadResponder(t, tc.head, true)
			addr := startProxy(t, proxyOpts{}, up.addr())
			got := appGet(t, addr)
			status, body, complete := completeResponse(got)
			if tc.by != "" {
				if status != fasthttp.StatusBadGateway {
					t.Fatalf("app got %d, want 502: %q", status, got)
				}
				return
			}
			want := "hello"
			if strings.HasPrefix(tc.head, "HTTP/1.1 204") {
				want = ""
			}
			if status == fasthttp.StatusBadGateway || !complete || body != want {
				t.Fatalf("app got %d %q (complete %v): %q", status, body, complete, got)
			}
		})
	}
}

// TestTruncatedResponseBodyIsNotComplete: a body that breaks its framing
// or ends before it mid-way never reaches the app as a complete response:
// a small one gets 502; once the head is forwarded, the app's connection
// closes without the body's end. (A chunked body whose first chunk size is
// invalid fails before fasthttp has flushed the head it buffered: the app
// gets a closed connection and no bytes at all.)
func TestTruncatedResponseBodyIsNotComplete(t *testing.T) {
	big := strings.Repeat("x", 50000)
	for _, tc := range []struct {
		name, response string
	}{
		{"small CL cut short", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"},
		{"large CL cut short", "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + big},
		{"chunked cut short", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
		{"chunked cut mid-chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhello"},
		{"chunked without the last CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"},
		{"invalid chunk size mid-body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n"},
		{"invalid first chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"},
		{"chunk size with sign", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n+5\r\nhello\r\n0\r\n\r\n"},
		{"chunk data longer than its size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n"},
		{"large chunked cut short", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nc350\r\n" + big + "\r\n4000\r\nxxxx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startBadResponder(t, tc.response, true)
			addr := startProxy(t, proxyOpts{}, up.addr())
			status, body, complete := completeResponse(appGet(t, addr))
			if status != fasthttp.StatusBadGateway && complete {
				t.Fatalf("app got a complete %d with %d body bytes", status, len(body))
			}
		})
	}
}

// TestTruncatedResponseBodyToHTTP10AppIsReset: an HTTP/1.0 app gets a body
// of unknown length delimited by the connection's close (RFC 9112 §6.1),
// so a FIN would tell it the body is complete. When the upstream's body
// breaks off, the app's connection must be reset instead, as nginx does.
func TestTruncatedResponseBodyToHTTP10AppIsReset(t *testing.T) {
	for _, tc := range []struct {
		name, response string
	}{
		{"chunked cut short", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
		{"invalid chunk size mid-body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startBadResponder(t, tc.response, true)
			addr := startProxy(t, proxyOpts{}, up.addr())
			got, err := appRequest(t, addr, "GET / HTTP/1.0\r\nHost: app\r\n\r\n")
			if status, _, _ := completeResponse(got); status != fasthttp.StatusBadGateway && err == nil {
				t.Fatalf("app got %q and a FIN: a complete response to HTTP/1.0", got)
			}
		})
	}
}
