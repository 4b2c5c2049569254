package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzRequestPath sends each input, as raw bytes from an app, through one
// proxy to a recording upstream and checks what the upstream received
// against refParse applied to the input: every request the upstream got
// must be the input's next valid request, with the same method, target,
// body and end-to-end header fields. The app half-closes after its bytes,
// as an app that leaves would.
//
//	go test -run '^$' -fuzz '^FuzzRequestPath$' -fuzztime 15s ./proxy
func FuzzRequestPath(f *testing.F) {
	rec := startRecorder(f)
	s, addr := startServer(f, proxyOpts{listener: Config{Logger: nopLogger}}, rec.addr())
	f.Fuzz(func(t *testing.T, in []byte) {
		got := rec.collect(t, func() { sendAndDrain(t, addr, in) }, s.OpenConnections)
		want, why := refParseAll(in)
		for i, r := range got {
			if r.err != nil {
				t.Fatalf("upstream received bytes that are no valid request (%v):\n%q", r.err, clip(r.raw))
			}
			if i >= len(want) {
				t.Fatalf("upstream received request %d, but the input holds %d valid requests, then: %v\nupstream got: %q",
					i+1, len(want), why, clip(r.raw))
			}
			if diff := sameRequest(want[i], r.req); diff != "" {
				t.Fatalf("request %d: %s\napp sent:     %q\nupstream got: %q", i+1, diff, clip(want[i].raw), clip(r.raw))
			}
		}
	})
}

// sendAndDrain writes in on a fresh app connection, half-closes it and
// reads until the proxy closes it, within a bound.
func sendAndDrain(t *testing.T, addr string, in []byte) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	// The write runs beside the read: a proxy that answers early and
	// stops reading must not block us.
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	io.Copy(io.Discard, c)
	<-werr
}

// received is one request (or the bytes that failed to parse as one) as
// the recording upstream saw it.
type received struct {
	req *refRequest
	raw []byte
	err error // not nil: the bytes are no valid request
}

// recorder is a peer that parses what it receives with refParse,
// answers each request with a 200 and records it.
type recorder struct {
	*peer

	mu    sync.Mutex
	conns map[*recConn]struct{} // open ones
	got   []received
}

// recConn is one upstream connection. Its script owns buf and reads;
// read counts the bytes it has taken in and parsed, so quiet can compare
// it with what the kernel received.
type recConn struct {
	c    *net.TCPConn
	mu   sync.Mutex // guards done, read, partial
	done bool       // the script closed c
	read uint64
	// partial: bytes of an unfinished request wait in buf.
	partial bool
}

func startRecorder(tb testing.TB) *recorder {
	tb.Helper()
	r := &recorder{conns: map[*recConn]struct{}{}}
	r.peer = startPeer(tb, func(c net.Conn, _ *bufio.Reader) {
		rc := &recConn{c: c.(*net.TCPConn)}
		r.mu.Lock()
		r.conns[rc] = struct{}{}
		r.mu.Unlock()
		r.serve(rc)
	})
	return r
}

// serve owns rc: it parses requests as their bytes arrive, read from the
// connection itself (the peer's recording reader is left unused), and
// answers each, until the proxy closes the connection or collect ends it.
func (r *recorder) serve(rc *recConn) {
	defer func() {
		rc.mu.Lock()
		rc.done = true
		rc.c.Close()
		rc.mu.Unlock()
		r.mu.Lock()
		delete(r.conns, rc)
		r.mu.Unlock()
	}()
	var buf []byte
	chunk := make([]byte, 64<<10)
	for {
		n, err := rc.c.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for len(buf) > 0 {
			req, used, perr := refParse(buf)
			if errors.Is(perr, errIncomplete) {
				break
			}
			raw := bytes.Clone(buf[:max(used, 0)])
			if perr != nil {
				raw = bytes.Clone(buf)
			}
			r.mu.Lock()
			r.got = append(r.got, received{req: req, raw: raw, err: perr})
			r.mu.Unlock()
			if perr != nil {
				rc.account(n, false)
				return
			}
			buf = buf[used:]
			rc.c.Write([]byte(okResponse))
		}
		rc.account(n, len(buf) > 0)
		if err != nil {
			return // a partial request at EOF was never complete: not recorded
		}
	}
}

func (rc *recConn) account(n int, partial bool) {
	rc.mu.Lock()
	rc.read += uint64(n)
	rc.partial = partial
	rc.mu.Unlock()
}

// settled reports whether rc has parsed every byte the kernel received on
// it (or is closed) and holds no partial request.
func (rc *recConn) settled() (settled, partial bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.done {
		return true, false
	}
	var received uint64
	var gerr error
	raw, err := rc.c.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) {
			var info *unix.TCPInfo
			info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			if gerr == nil {
				received = info.Bytes_received
			}
		})
	}
	if err != nil || gerr != nil {
		return true, false // closed under us
	}
	return received == rc.read && !rc.partial, rc.partial
}

// collect runs send and returns what the upstream received meanwhile.
// It waits, within bounds, until the proxy serves no app connection and
// every upstream connection has parsed all it received; a connection
// still holding part of a request then is closed (that request was never
// complete), so the next input starts clean.
func (r *recorder) collect(t *testing.T, send func(), appConns func() int) []received {
	r.mu.Lock()
	r.got = nil
	r.mu.Unlock()
	send()
	quiet := func() (ok bool, partial []*recConn) {
		if appConns() != 0 {
			return false, nil
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		ok = true
		for rc := range r.conns {
			s, p := rc.settled()
			ok = ok && s
			if p {
				partial = append(partial, rc)
			}
		}
		return ok, partial
	}
	deadline, closed := time.Now().Add(time.Second), false
	for {
		ok, partial := quiet()
		if ok {
			break
		}
		if time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
			continue
		}
		if closed || len(partial) == 0 {
			t.Fatalf("%d app connection(s) still served a second after the app closed, or an upstream connection never settled (partial requests: %d)",
				appConns(), len(partial))
		}
		for _, rc := range partial {
			rc.c.Close() // its goroutine sees the error and ends
		}
		deadline, closed = time.Now().Add(2*time.Second), true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got
}

// The reference parser: RFC 9112 read strictly, the way a proxy must
// read what it forwards. It is stricter than net/http where request
// smuggling lives: bare LF, obs-fold, both Content-Length and
// Transfer-Encoding, a repeated or listed Content-Length, a
// Transfer-Encoding other than a single "chunked", and CONNECT (unstuck
// is no forward proxy) are all invalid.

var errIncomplete = errors.New("incomplete")

type field struct{ name, value string }

type refRequest struct {
	method, target, proto string
	header, trailer       []field
	body                  []byte
	raw                   []byte // the request's bytes as sent
}

func (r *refRequest) values(name string) (vs []string) {
	for _, f := range r.header {
		if strings.EqualFold(f.name, name) {
			vs = append(vs, f.value)
		}
	}
	return vs
}

// refParseAll parses the pipelined requests in b, up to the first that is
// invalid or incomplete, whose error it returns.
func refParseAll(b []byte) ([]*refRequest, error) {
	var out []*refRequest
	for len(b) > 0 {
		r, n, err := refParse(b)
		if err != nil {
			return out, err
		}
		out = append(out, r)
		b = b[n:]
	}
	return out, nil
}

// refParse parses one request from the start of b, after any empty lines
// (RFC 9112 2.2), and returns it with the number of bytes it used. The
// error is errIncomplete if b ends first.
func refParse(b []byte) (*refRequest, int, error) {
	p := &parser{b: b}
	for p.i+1 < len(p.b) && p.b[p.i] == '\r' && p.b[p.i+1] == '\n' {
		p.i += 2
	}
	if p.i == len(p.b) || (p.i+1 == len(p.b) && p.b[p.i] == '\r') {
		return nil, 0, errIncomplete
	}
	start := p.i
	r := &refRequest{}
	line, err := p.line()
	if err != nil {
		return nil, 0, err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 || !isToken(parts[0]) {
		return nil, 0, fmt.Errorf("bad request line %q", line)
	}
	r.method, r.target, r.proto = parts[0], parts[1], parts[2]
	if r.proto != "HTTP/1.1" && r.proto != "HTTP/1.0" {
		return nil, 0, fmt.Errorf("bad version %q", r.proto)
	}
	if err := checkTarget(r.method, r.target); err != nil {
		return nil, 0, err
	}
	if r.header, err = p.fields(); err != nil {
		return nil, 0, err
	}

	hosts := r.values("Host")
	if len(hosts) > 1 || (r.proto == "HTTP/1.1" && len(hosts) == 0) {
		return nil, 0, fmt.Errorf("%d Host fields", len(hosts))
	}
	cls, tes := r.values("Content-Length"), r.values("Transfer-Encoding")
	switch {
	case len(cls) > 0 && len(tes) > 0:
		return nil, 0, errors.New("both Content-Length and Transfer-Encoding")
	case len(cls) > 1:
		return nil, 0, errors.New("repeated Content-Length")
	case len(tes) > 0:
		if r.proto != "HTTP/1.1" || len(tes) > 1 || !strings.EqualFold(tes[0], "chunked") {
			return nil, 0, fmt.Errorf("transfer coding %q in %s", tes, r.proto)
		}
		if r.body, r.trailer, err = p.chunked(); err != nil {
			return nil, 0, err
		}
	case len(cls) == 1:
		cl := cls[0]
		if cl == "" || len(cl) > 18 || strings.Trim(cl, "0123456789") != "" {
			return nil, 0, fmt.Errorf("bad Content-Length %q", cl)
		}
		n, _ := strconv.ParseInt(cl, 10, 64)
		if int64(len(p.b)-p.i) < n {
			return nil, 0, errIncomplete
		}
		r.body = p.b[p.i : p.i+int(n)]
		p.i += int(n)
	}
	r.raw = b[start:p.i]
	return r, p.i, nil
}

type parser struct {
	b []byte
	i int
}

// line returns the next line without its CRLF. A bare LF or a CR not
// followed by LF is invalid.
func (p *parser) line() (string, error) {
	rest := p.b[p.i:]
	for k, c := range rest {
		switch {
		case c == '\n' && (k == 0 || rest[k-1] != '\r'):
			return "", errors.New("bare LF")
		case c == '\n':
			p.i += k + 1
			return string(rest[:k-1]), nil
		case c == '\r' && k+1 < len(rest) && rest[k+1] != '\n':
			return "", errors.New("CR not followed by LF")
		}
	}
	return "", errIncomplete
}

// fields reads field lines up to the empty line.
func (p *parser) fields() ([]field, error) {
	var fs []field
	for {
		line, err := p.line()
		if err != nil {
			return nil, err
		}
		if line == "" {
			return fs, nil
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return nil, fmt.Errorf("bad field line %q", line) // obs-fold too
		}
		value = strings.Trim(value, " \t")
		for k := 0; k < len(value); k++ {
			if c := value[k]; c < 0x20 && c != '\t' || c == 0x7f {
				return nil, fmt.Errorf("control byte in field %q", name)
			}
		}
		fs = append(fs, field{name, value})
	}
}

// chunked decodes a chunked body and its trailer section.
func (p *parser) chunked() (body []byte, trailer []field, err error) {
	body = []byte{}
	for {
		line, err := p.line()
		if err != nil {
			return nil, nil, err
		}
		size, ext, _ := strings.Cut(line, ";")
		size = strings.TrimRight(size, " \t") // BWS before a chunk-ext
		if size == "" || len(size) > 15 || strings.Trim(size, "0123456789abcdefABCDEF") != "" {
			return nil, nil, fmt.Errorf("bad chunk size %q", line)
		}
		for k := 0; k < len(ext); k++ {
			if c := ext[k]; c < 0x20 && c != '\t' || c == 0x7f {
				return nil, nil, errors.New("control byte in chunk extension")
			}
		}
		n, _ := strconv.ParseInt(size, 16, 64)
		if n == 0 {
			trailer, err = p.fields()
			return body, trailer, err
		}
		if int64(len(p.b)-p.i) < n+2 {
			return nil, nil, errIncomplete
		}
		body = append(body, p.b[p.i:p.i+int(n)]...)
		p.i += int(n)
		if p.b[p.i] != '\r' || p.b[p.i+1] != '\n' {
			return nil, nil, errors.New("chunk data not followed by CRLF")
		}
		p.i += 2
	}
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for k := 0; k < len(s); k++ {
		c := s[k]
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// checkTarget accepts the request-target forms a reverse proxy forwards:
// origin-form, absolute-form, and "*" for OPTIONS. Bytes beyond ASCII pass,
// as proxies pass them; controls and DEL do not.
func checkTarget(method, target string) error {
	if method == "CONNECT" {
		return errors.New("CONNECT")
	}
	for k := 0; k < len(target); k++ {
		if c := target[k]; c <= 0x20 || c == 0x7f {
			return fmt.Errorf("control byte in target %q", target)
		}
	}
	switch {
	case strings.HasPrefix(target, "/"):
	case target == "*" && method == "OPTIONS":
	case absoluteForm(target):
	default:
		return fmt.Errorf("bad target %q", target)
	}
	return nil
}

func absoluteForm(target string) bool {
	scheme, rest, ok := strings.Cut(target, "://")
	return ok && isToken(scheme) && strings.Trim(strings.ToLower(scheme), "abcdefghijklmnopqrstuvwxyz0123456789+-.") == "" &&
		scheme[0] >= 'A' && rest != ""
}

// originForm is the origin-form of an absolute-form target, which a proxy
// may send instead (RFC 9112 3.2.1), and the authority it names.
func originForm(target string) (path, authority string) {
	_, rest, _ := strings.Cut(target, "://")
	authority, path = rest, "/"
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, path = rest[:i], rest[i:]
		if path[0] == '?' {
			path = "/" + path
		}
	}
	return path, authority
}

// hopByHop is what a proxy removes or rewrites: the hop-by-hop fields of
// RFC 9110 7.6.1 and the pre-standard ones, framing (compared through the
// decoded body), Expect (unstuck answers it), and the X-Forwarded-* fields
// unstuck adds.
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
	"Content-Length", "Expect", "X-Forwarded-For", "X-Forwarded-Proto", "Host",
}

// endToEnd is r's header without hopByHop and the fields its Connection
// names, keyed by name as sent (names keep their case end to end).
func endToEnd(r *refRequest) map[string][]string {
	drop := map[string]bool{}
	for _, k := range hopByHop {
		drop[strings.ToLower(k)] = true
	}
	for _, v := range r.values("Connection") {
		for tok := range strings.SplitSeq(v, ",") {
			drop[strings.ToLower(strings.TrimSpace(tok))] = true
		}
	}
	m := map[string][]string{}
	for _, f := range r.header {
		lower := strings.ToLower(f.name)
		if drop[lower] {
			continue
		}
		name := f.name
		if fasthttpOwned[lower] {
			// fasthttp keeps these in fields of its own and writes their
			// names itself, in canonical case, and an empty one not at
			// all: a known limit of unstuck's faithfulness (README).
			if f.value == "" {
				continue
			}
			name = lower
		}
		m[name] = append(m[name], f.value)
	}
	return m
}

// fasthttpOwned are the request headers whose names fasthttp writes in
// its own case.
var fasthttpOwned = map[string]bool{"host": true, "content-type": true, "content-length": true,
	"user-agent": true, "cookie": true}

// sameRequest describes how up, what the upstream got, differs from in,
// what the app sent; "" if it is the same request.
func sameRequest(in, up *refRequest) string {
	if in.method != up.method {
		return fmt.Sprintf("method %q became %q", in.method, up.method)
	}
	// Host stays as sent; one absent or empty may be filled in (HTTP/1.0
	// apps, which unstuck gives the endpoint's address); an absolute-form
	// target may become origin-form with its authority as Host.
	hosts := in.values("Host")
	if len(hosts) == 1 && hosts[0] == "" {
		hosts = nil
	}
	target := in.target
	if i := strings.IndexByte(target, '#'); i >= 0 && up.target == target[:i] {
		target = up.target // a fragment, meaningless to the upstream, may go
	}
	if target != up.target {
		path, authority := originForm(in.target)
		if !absoluteForm(in.target) || up.target != path {
			return fmt.Sprintf("target %q became %q", in.target, up.target)
		}
		hosts = append(hosts, authority)
	}
	if got := up.values("Host"); len(hosts) > 0 && (len(got) != 1 || !slices.Contains(hosts, got[0])) {
		return fmt.Sprintf("Host %q became %q", hosts, got)
	}
	if !bytes.Equal(in.body, up.body) {
		return fmt.Sprintf("body of %d bytes became %d bytes: %q", len(in.body), len(up.body), clip(up.body))
	}
	want, got := endToEnd(in), endToEnd(up)
	for _, f := range in.trailer { // a proxy may merge trailer fields into the header
		if vs, ok := got[f.name]; ok && len(vs) > len(want[f.name]) {
			want[f.name] = append(want[f.name], f.value)
		}
	}
	for name, vs := range want {
		if !slices.Equal(got[name], vs) {
			return fmt.Sprintf("field %s: %q became %q", name, vs, got[name])
		}
	}
	for name, vs := range got {
		if _, ok := want[name]; !ok {
			return fmt.Sprintf("field %s: %q added", name, vs)
		}
	}
	return ""
}

// clip keeps a failure message readable: the head of a request and the
// size of the rest.
func clip(b []byte) string {
	if len(b) <= 400 {
		return string(b)
	}
	return fmt.Sprintf("%s...(%d more bytes)", b[:400], len(b)-400)
}
