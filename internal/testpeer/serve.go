package testpeer

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// request is a parsed request head.
type request struct {
	method, target, path, query string
	header                      http.Header
	contentLength               int64 // -1: chunked
	close                       bool  // answer with Connection: close, then close
}

// errBadRequest is answered with 400 and a close; other read errors mean the
// peer is gone or the server is closing.
type errBadRequest struct{ msg string }

func (e errBadRequest) Error() string { return "bad request: " + e.msg }

// serveConn owns cn from accept to close: it reads requests, answers them
// and applies the server's close policy. The loop closes cn on return.
func (s *Server) serveConn(cn *conn) {
	br := bufio.NewReaderSize(cn.c, 32<<10)
	bw := bufio.NewWriterSize(cn.c, 32<<10)
	tp := textproto.NewReader(br)
	buf := make([]byte, 32<<10) // body copies
	for seq := 1; ; seq++ {
		if !s.awaitRequest(cn, br) {
			return
		}
		req, err := readRequestHead(tp)
		if err != nil {
			var bad errBadRequest
			if errors.As(err, &bad) {
				s.logf("conn %d: %v", cn.id, err)
				writeHead(bw, http.StatusBadRequest, 0, true)
				bw.Flush()
			}
			return
		}
		// Decided before answering, so nothing (not even the lock in
		// closeNow) runs between the last response byte and the FIN.
		raceClose := s.race != nil && s.race.closeNow()
		if !s.serveRequest(cn, seq, req, br, tp, bw, buf) || req.close {
			return
		}
		if raceClose {
			cn.c.Close() // FIN right behind the last response byte, no Connection: close
			return
		}
	}
}

// awaitRequest waits for the first byte of the next request. For an
// IdleCloser the wait is bounded by the idle timeout (a read deadline: one
// timer per connection) and a timeout half-closes the connection.
func (s *Server) awaitRequest(cn *conn, br *bufio.Reader) bool {
	if s.idleTimeout > 0 {
		cn.c.SetReadDeadline(time.Now().Add(s.idleTimeout))
	}
	_, err := br.Peek(1)
	if err == nil {
		if s.idleTimeout > 0 {
			cn.c.SetReadDeadline(time.Time{})
		}
		return true
	}
	if s.idleTimeout > 0 && isTimeout(err) {
		s.closeIdle(cn)
	}
	return false
}

// serveRequest reads the body of req, records it and answers. false means
// the connection is unusable (peer gone, server closing, write failed).
func (s *Server) serveRequest(cn *conn, seq int, req *request, br *bufio.Reader, tp *textproto.Reader, bw *bufio.Writer, buf []byte) bool {
	if req.contentLength != 0 && strings.EqualFold(req.header.Get("Expect"), "100-continue") {
		bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if bw.Flush() != nil {
			return false
		}
	}
	var body io.Reader = io.LimitReader(br, max(req.contentLength, 0))
	if req.contentLength < 0 {
		body = httputil.NewChunkedReader(br)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, body, buf)
	if err == nil && req.contentLength > 0 && n < req.contentLength {
		err = io.ErrUnexpectedEOF
	}
	if err == nil && req.contentLength < 0 {
		_, err = tp.ReadMIMEHeader() // trailer section, up to the empty line
	}
	if err != nil {
		return false
	}
	sum := hex.EncodeToString(h.Sum(nil))
	id := req.header.Get("X-Request-Id")
	s.record(Record{
		Conn: cn.id, ConnSeq: seq, Method: req.method, Target: req.target, Path: req.path,
		RequestID: id, BodyLen: n, BodySha256: sum, At: time.Now(),
	}, req.header)

	if !s.sleep(s.opts.Delay) {
		return false
	}
	kv := []string{
		"X-Request-Id", id,
		"X-Conn", strconv.Itoa(cn.id),
		"X-Conn-Seq", strconv.Itoa(seq),
		"X-Received-Length", strconv.FormatInt(n, 10),
		"X-Received-Sha256", sum,
	}
	status := http.StatusOK
	var respBody []byte
	switch {
	case req.path == "/upload":
		respBody = fmt.Appendf(nil, "%s %d", sum, n)
	case strings.HasPrefix(req.path, "/bytes/"):
		return s.serveBytes(req, bw, kv, buf)
	case strings.HasPrefix(req.path, "/status/"):
		code, err := strconv.Atoi(strings.TrimPrefix(req.path, "/status/"))
		if err != nil || code < 200 || code > 999 || code == 204 || code == 304 {
			status = http.StatusBadRequest
		} else {
			status = code
		}
	case strings.HasPrefix(req.path, "/sleep/"):
		d, err := time.ParseDuration(strings.TrimPrefix(req.path, "/sleep/"))
		if err != nil || d < 0 {
			status = http.StatusBadRequest
		} else if !s.sleep(d) {
			return false
		}
	}
	if respBody == nil {
		respBody = fmt.Appendf(nil, "%s %s id=%s len=%d sha256=%s\n", req.method, req.target, id, n, sum)
	}
	kv = append(kv, "Content-Type", "text/plain; charset=utf-8")
	writeHead(bw, status, int64(len(respBody)), req.close, kv...)
	if req.method != http.MethodHead {
		bw.Write(respBody)
	}
	if bw.Flush() != nil {
		return false
	}
	s.countResponse()
	return true
}

// serveBytes answers /bytes/N with N bytes of Bytes, streamed.
func (s *Server) serveBytes(req *request, bw *bufio.Writer, kv []string, buf []byte) bool {
	n, err := strconv.ParseInt(strings.TrimPrefix(req.path, "/bytes/"), 10, 64)
	if err != nil || n < 0 || n > maxBytes {
		writeHead(bw, http.StatusBadRequest, 0, req.close, kv...)
		if bw.Flush() != nil {
			return false
		}
		s.countResponse()
		return true
	}
	chunked := strings.Contains(req.query, "chunked=1")
	kv = append(kv, "Content-Type", "application/octet-stream", "X-Body-Sha256", ExpectedBytesSha256(n))
	cl := n
	if chunked {
		cl = -1
	}
	writeHead(bw, http.StatusOK, cl, req.close, kv...)
	if req.method != http.MethodHead {
		var w io.Writer = bw
		var cw io.WriteCloser
		if chunked {
			cw = httputil.NewChunkedWriter(bw)
			w = cw
		}
		if _, err := io.CopyBuffer(w, Bytes(n), buf); err != nil {
			return false
		}
		if chunked {
			cw.Close()             // last chunk "0\r\n"
			bw.WriteString("\r\n") // empty trailer section
		}
	}
	if bw.Flush() != nil {
		return false
	}
	s.countResponse()
	return true
}

// readRequestHead reads a request line and header fields.
func readRequestHead(tp *textproto.Reader) (*request, error) {
	var line string
	var err error
	for range 2 { // RFC 9112 2.2: ignore at least one empty line before a request
		if line, err = tp.ReadLine(); err != nil || line != "" {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || target == "" {
		return nil, errBadRequest{fmt.Sprintf("request line %q", line)}
	}
	if proto != "HTTP/1.1" && proto != "HTTP/1.0" {
		return nil, errBadRequest{fmt.Sprintf("protocol %q", proto)}
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isNetErr(err) {
			return nil, err
		}
		return nil, errBadRequest{err.Error()}
	}
	req := &request{method: method, target: target, header: http.Header(hdr)}
	req.path, req.query, _ = strings.Cut(target, "?")
	for _, v := range req.header.Values("Connection") {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "close") {
				req.close = true
			}
		}
	}
	req.close = req.close || proto == "HTTP/1.0" || req.header.Get("X-Close") == "1"

	te, cl := req.header.Values("Transfer-Encoding"), req.header.Values("Content-Length")
	switch {
	case len(te) > 0 && len(cl) > 0:
		return nil, errBadRequest{"both Transfer-Encoding and Content-Length"}
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return nil, errBadRequest{fmt.Sprintf("Transfer-Encoding %q", te)}
		}
		req.contentLength = -1
	case len(cl) > 0:
		for _, v := range cl {
			if v != cl[0] {
				return nil, errBadRequest{fmt.Sprintf("Content-Length %q", cl)}
			}
		}
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 {
			return nil, errBadRequest{fmt.Sprintf("Content-Length %q", cl[0])}
		}
		req.contentLength = n
	}
	return req, nil
}

// writeHead writes a status line and header; contentLength -1 means
// chunked. kv holds field names and values in turn; empty values are left
// out.
func writeHead(bw *bufio.Writer, status int, contentLength int64, closeConn bool, kv ...string) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			bw.WriteString(kv[i] + ": " + kv[i+1] + "\r\n")
		}
	}
	if contentLength < 0 {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	} else {
		bw.WriteString("Content-Length: " + strconv.FormatInt(contentLength, 10) + "\r\n")
	}
	if closeConn {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}
