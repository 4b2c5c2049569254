package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/valyala/fasthttp"
)

// Who refuses a malformed head: fasthttp's parser (the app gets its answer
// from requestError) or checkRequest; "" for a head that is forwarded.
const (
	byParser = "fasthttp"
	byCheck  = "checkRequest"
)

type headCase struct {
	name   string
	head   string
	status int    // what the app gets; 200: forwarded
	by     string // byParser, byCheck or ""
	// body follows the head on the wire: a forwarded one's, or a refused
	// one's that fasthttp reads (up to 8 KiB of a Content-Length body)
	// before the handler, and so checkRequest, runs.
	body string
}

// headCases are the request heads of issue 11's smuggling and malformed
// input findings, and their legal neighbours. The same table drives the
// unit test below and the wire test in malformed_test.go.
var headCases = []headCase{
	// Framing.
	{"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, byCheck, ""},
	{"TE and CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400, byCheck, ""},
	{"CL and TE identity", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\n", 400, byCheck, "hello"},
	{"CL twice, equal", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400, byParser, ""},
	{"CL twice, different", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, byParser, ""},
	{"CL list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400, byParser, ""},
	{"CL plus sign", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400, byParser, ""},
	{"CL negative", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, byParser, ""},
	{"CL hex", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n", 400, byParser, ""},
	{"CL empty", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400, byParser, ""},
	{"CL overflow", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400, byParser, ""},
	{"CL 19 digits", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000000\r\n\r\n", 400, byCheck, strings.Repeat("b", 8<<10)},
	{"CL two spaces", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:  5\r\n\r\n", 400, byCheck, "hello"},
	{"CL tab", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\t5\r\n\r\n", 400, byCheck, "hello"},
	{"CL trailing space", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 \r\n\r\n", 400, byCheck, "hello"},
	{"CL space in number", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 0\r\n\r\n", 400, byParser, ""},
	{"CL space before colon", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n", 400, byParser, ""},
	{"TE chunked, identity", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400, byParser, ""},
	{"TE gzip, chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400, byParser, ""},
	{"TE xchunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", 400, byParser, ""},
	{"TE identity", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 400, byCheck, ""},
	{"TE two spaces", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  chunked\r\n\r\n", 400, byCheck, ""},
	{"TE tab before", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n", 400, byCheck, ""},
	{"TE tab after", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n", 400, byCheck, ""},
	{"TE space after", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked \r\n\r\n", 400, byCheck, ""},
	{"TE vertical tab", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\v\r\n\r\n", 400, byParser, ""},
	{"TE twice", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, byParser, ""},
	{"TE space before colon", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400, byParser, ""},
	{"TE folded", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 400, byCheck, ""},
	{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, byParser, ""},

	// Names, values, line endings.
	{"space in name", "GET / HTTP/1.1\r\nHost: x\r\nX Foo: 1\r\n\r\n", 400, byCheck, ""},
	{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo : 1\r\n\r\n", 400, byParser, ""},
	{"empty name", "GET / HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n", 400, byParser, ""},
	{"no colon", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo\r\n\r\n", 400, byParser, ""},
	{"NUL in name", "GET / HTTP/1.1\r\nHost: x\r\nX-\x00Foo: 1\r\n\r\n", 400, byParser, ""},
	{"slash in name", "GET / HTTP/1.1\r\nHost: x\r\nX/Foo: 1\r\n\r\n", 400, byParser, ""},
	{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\x00b\r\n\r\n", 400, byParser, ""},
	{"SOH in value", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\x01b\r\n\r\n", 400, byParser, ""},
	{"DEL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\x7fb\r\n\r\n", 400, byParser, ""},
	{"bare CR in value", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\rb\r\n\r\n", 400, byParser, ""},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\r\n b\r\n\r\n", 400, byCheck, ""},
	{"obs-fold with tab", "GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\r\n\tb\r\n\r\n", 400, byCheck, ""},
	{"space before first header", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400, byParser, ""},
	{"bare LF in a header line", "GET / HTTP/1.1\r\nHost: x\nX-Foo: 1\r\n\r\n", 400, byCheck, ""},
	{"bare LF ending the block, CRLFCRLF later", "GET / HTTP/1.1\r\nHost: x\r\n\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n", 400, byCheck, ""},

	// Method, target, version, Host.
	{"CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501, byCheck, ""},
	{"authority-form GET", "GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, byParser, ""},
	{"asterisk GET", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, byParser, ""},
	{"ftp absolute-form", "GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, byCheck, ""},
	{"absolute-form naming another host", "GET http://x/p HTTP/1.1\r\nHost: y\r\n\r\n", 400, byCheck, ""},
	{"absolute-form with userinfo", "GET http://u@x/p HTTP/1.1\r\nHost: x\r\n\r\n", 400, byCheck, ""},
	{"absolute-form without a host", "GET http:///p HTTP/1.1\r\nHost: x\r\n\r\n", 400, byCheck, ""},
	{"HTTP/2.0 line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, byCheck, ""},
	{"HTTP/1.2 line", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505, byCheck, ""},
	{"no version", "GET /\r\nHost: x\r\n\r\n", 400, byParser, ""},
	{"two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, byParser, ""},
	{"no Host in 1.1", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, byParser, ""},
	{"control byte in target", "GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400, byParser, ""},

	// Larger than any read buffer (fasthttp's 4 KiB; 64 KiB configured).
	{"70 KB header", "GET / HTTP/1.1\r\nHost: x\r\nCookie: " + strings.Repeat("c", 70<<10) + "\r\n\r\n", 431, byParser, ""},
	{"70 KB target", "GET /" + strings.Repeat("u", 70<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n", 431, byParser, ""},

	// Legal, odd-looking: forwarded.
	{"plain GET", "GET /p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", ""},
	{"HTTP/1.0 without headers", "GET / HTTP/1.0\r\n\r\n", 200, "", ""},
	{"TE Chunked in capitals", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n", 200, "", "0\r\n\r\n"},
	{"TE without space", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:chunked\r\n\r\n", 200, "", "1\r\nx\r\n0\r\n\r\n"},
	{"CL without space, leading zeros", "POST / HTTP/1.1\r\nHost: x\r\ncontent-length:005\r\n\r\n", 200, "", "hello"},
	{"every tchar in a name, tab and obs-text in a value", "GET / HTTP/1.1\r\nHost: x\r\n!#$%&'*+-.^_`|~09AZaz: a\tb \x80\xff\r\n\r\n", 200, "", ""},
	{"empty value", "GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n", 200, "", ""},
	{"absolute-form", "GET http://x/p HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", ""},
	{"absolute-form, default port, other case", "GET HTTP://X.example:80?q HTTP/1.1\r\nHost: x.EXAMPLE\r\n\r\n", 200, "", ""},
	{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", ""},
	{"empty line before the request line", "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", ""},
}

// parseHead parses head as fasthttp's server does.
func parseHead(t *testing.T, head string) (*fasthttp.Request, error) {
	t.Helper()
	req := fasthttp.AcquireRequest()
	t.Cleanup(func() { fasthttp.ReleaseRequest(req) })
	err := req.Header.Read(bufio.NewReader(strings.NewReader(head)))
	return req, err
}

// TestCheckRequestTable proves the table's "by" column: fasthttp's parser
// refuses exactly the heads it says, checkRequest the rest.
func TestCheckRequestTable(t *testing.T) {
	for _, tc := range headCases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := parseHead(t, tc.head)
			if (err != nil) != (tc.by == byParser) {
				t.Fatalf("fasthttp's parse error: %v; table says the refuser is %q", err, tc.by)
			}
			if err != nil {
				if code, _ := requestStatus(err); code != tc.status {
					t.Fatalf("requestError would answer %d, want %d (%v)", code, tc.status, err)
				}
				return
			}
			code, reason := checkRequest(req)
			want := tc.status
			if want == 200 {
				want = 0
			}
			if code != want || (code != 0) != (reason != "") {
				t.Fatalf("checkRequest = %d %q, want %d", code, reason, want)
			}
		})
	}
}

// A bare LF before any CRLFCRLF leaves fasthttp waiting for more; it is
// only an answer of its own once the app closes.
func TestBareLFHeadIsIncompleteToFasthttp(t *testing.T) {
	for _, head := range []string{
		"GET / HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\n",
	} {
		_, err := parseHead(t, head)
		if err == nil || !errors.Is(err, io.EOF) {
			t.Errorf("%q: %v; want fasthttp to have waited for more (EOF)", head, err)
		}
	}
}

func TestValidHeaderBlock(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want bool
	}{
		{"", true},
		{"\r\n", true},
		{"Host: x\r\n\r\n", true},
		{"Host: x\r\n", false},       // no empty line
		{"Host: x\r\n\r\nX", false},  // bytes after it
		{"Host: x\r\n\n", false},     // bare LF empty line
		{"Host: x\r\r\n\r\n", false}, // CR CR LF
		{"Host: x\r\nHOST: y\r\n\r\n", false},
		{"Content-Length: 1\r\ncontent-length: 1\r\n\r\n", false},
		{"Transfer-Encoding: chunked\r\ncontent-length: 1\r\n\r\n", false},
		{"X-Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"Content-Length: 123456789012345678\r\n\r\n", true},
	} {
		if got := validHeaderBlock([]byte(tc.raw)); got != tc.want {
			t.Errorf("validHeaderBlock(%q) = %v, want %v", tc.raw, got, tc.want)
		}
	}
}

// fasthttp hands RawHeaders the exact wire bytes even when it rewrote a
// folded header in place, so checkRequest sees what the app sent.
func TestRawHeadersAreTheWireBytes(t *testing.T) {
	const block = "X-A: 1\r\nX-Fold: a\r\n  b\r\nx-lower: \x80\r\n\r\n"
	req, err := parseHead(t, "GET / HTTP/1.1\r\n"+block)
	if err == nil {
		t.Fatal("no Host, yet parsed")
	}
	req, err = parseHead(t, "GET / HTTP/1.1\r\nHost: x\r\n"+block)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(req.Header.RawHeaders()), "Host: x\r\n"+block; got != want {
		t.Fatalf("RawHeaders = %q, want %q", got, want)
	}
}

func TestRequestStatus(t *testing.T) {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		err    error
		code   int
		reason string
	}{
		{&fasthttp.ErrSmallBuffer{}, 431, RefuseHeaderTooLarge},
		{fasthttp.ErrBodyTooLarge, 413, RefuseBodyTooLarge},
		{timeout, 408, RefuseHeaderTimeout},
		{fmt.Errorf("error when reading request headers: %w", timeout), 408, RefuseHeaderTimeout},
		{io.ErrUnexpectedEOF, 400, RefuseBodyIncomplete},
		{fmt.Errorf("error when reading request headers: %w", io.EOF), 400, ""},
		{&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, 400, ""},
		{fmt.Errorf("error when reading request headers: %w", errMalformedHead), 400, RefuseBadRequest},
		{errors.New("cannot find whitespace in the first line of request"), 400, RefuseBadRequest},
	} {
		code, reason := requestStatus(tc.err)
		if code != tc.code || reason != tc.reason {
			t.Errorf("%v: %d %q, want %d %q", tc.err, code, reason, tc.code, tc.reason)
		}
	}
}

// skipValue's word-at-a-time scan stops where the byte-wise one does, for
// every byte value at every position of a word.
func TestSkipValue(t *testing.T) {
	naive := func(b []byte) int {
		i := 0
		for i < len(b) && valueByte[b[i]] {
			i++
		}
		return i
	}
	b := make([]byte, 24)
	for c := range 256 {
		for pos := range len(b) {
			for i := range b {
				b[i] = 'a' + byte(i%26)
			}
			b[pos] = byte(c)
			if got, want := skipValue(b, 0), naive(b); got != want {
				t.Fatalf("byte %#x at %d: skipValue = %d, want %d", c, pos, got, want)
			}
		}
	}
}

// A typical browser-sized head.
const benchHead = "GET /static/app.js?v=3 HTTP/1.1\r\nHost: app.example\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
	"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n" +
	"Referer: http://app.example/\r\nCookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n" +
	"Connection: keep-alive\r\n\r\n"

func BenchmarkCheckRequest(b *testing.B) {
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	if err := req.Header.Read(bufio.NewReader(strings.NewReader(benchHead))); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(req.Header.RawHeaders())))
	b.ReportAllocs()
	for b.Loop() {
		if code, _ := checkRequest(req); code != 0 {
			b.Fatal(code)
		}
	}
}

func TestCheckRequestDoesNotAllocate(t *testing.T) {
	req, err := parseHead(t, benchHead)
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { checkRequest(req) }); n != 0 {
		t.Fatalf("%v allocations per checkRequest", n)
	}
}
