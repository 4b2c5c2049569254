package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/valyala/fasthttp"
)

// errBadResponse is what every response refused for its framing or its
// head wraps: the app gets 502 (failure), the upstream connection is
// discarded, and the attempt is not retried (part of the response was read).
var errBadResponse = errors.New("upstream sent an invalid response head")

var (
	errRespBareLF    = fmt.Errorf("%w: a line not ended by CRLF", errBadResponse)
	errRespVersion   = fmt.Errorf("%w: not HTTP/1.0 or HTTP/1.1", errBadResponse)
	errRespLine      = fmt.Errorf("%w: a status or header line with a control byte, a name that is not a token, or obs-fold", errBadResponse)
	errRespCLAndTE   = fmt.Errorf("%w: both Content-Length and Transfer-Encoding", errBadResponse)
	errRespCL        = fmt.Errorf("%w: a duplicate or invalid Content-Length", errBadResponse)
	errRespTE        = fmt.Errorf("%w: a Transfer-Encoding other than one chunked", errBadResponse)
	errRespTE10      = fmt.Errorf("%w: Transfer-Encoding in an HTTP/1.0 response", errBadResponse)
	errRespUnchecked = fmt.Errorf("%w: its head was parsed beyond the bytes checked", errBadResponse)
)

// readResponseHead reads one response head into h, as h.Read does, and
// then checks it with checkResponse on the bytes as they came, which it
// returns (a view of br's buffer, valid until br is read again). It reads
// nothing past the head; a read fails as h.Read would. An HTTP/1.0 response's
// status line is given unstuck's version, HTTP/1.1 (fasthttp still frames
// it as 1.0).
//
// fasthttp's parse hides what a proxy must refuse: with both
// Content-Length and Transfer-Encoding it drops Content-Length, it drops
// Transfer-Encoding from an HTTP/1.0 response (the chunks then become the
// body, delimited by close), it trims whitespace before a colon and joins
// obs-fold. So the head is first buffered whole, and the bytes fasthttp
// consumed are checked once it has parsed them. Buffering reads exactly
// what h.Read would.
func readResponseHead(h *fasthttp.ResponseHeader, br *bufio.Reader) ([]byte, error) {
	head, err := bufferResponseHead(br)
	if err != nil {
		return nil, err
	}
	before := br.Buffered()
	if err := h.Read(br); err != nil {
		return nil, err
	}
	// A complete head in the buffer is parsed without another read, so
	// head still holds the bytes h came from.
	if head == nil || before-br.Buffered() != len(head) {
		return nil, errRespUnchecked
	}
	if err := checkResponse(h, head); err != nil {
		return nil, err
	}
	if !h.IsHTTP11() {
		// unstuck frames the body to the app itself, chunked if need be:
		// the status line must carry its own version (RFC 9110 §6.2), or
		// an HTTP/1.0 one would come with Transfer-Encoding, which the app
		// must then take as faulty framing (RFC 9112 §6.1).
		h.SetProtocol(protoHTTP11)
	}
	return head, nil
}

var protoHTTP11 = []byte("HTTP/1.1")

// bufferResponseHead waits until br holds a complete response head and
// returns it (a view of br's buffer, valid until br is next read past it).
// When the buffer fills before the head's end it returns nil and no error:
// h.Read then reports ErrSmallBuffer as it always has, without a read.
// A read error is returned as h.Read would return it: a socket error such
// as ETIMEDOUT or ECONNRESET is reported once, and a second read would
// see only EOF (502 where a timeout must give 504).
//
// A line ended by a bare LF fails at once: fasthttp would accept it only
// once CRLFCRLF happened to arrive somewhere, in the body or never. So
// does obs-fold, which fasthttp would rewrite in the buffer before
// checkResponse saw it. Empty lines before the status line are skipped,
// as fasthttp does (some servers leave a CRLF after a body).
func bufferResponseHead(br *bufio.Reader) ([]byte, error) {
	if _, err := br.Peek(1); err != nil {
		// fasthttp: a timeout, or EOF for any other error on the first
		// byte.
		if timedOut(err) {
			return nil, fasthttp.ErrTimeout
		}
		return nil, io.EOF
	}
	lineStart, status := 0, false
	for {
		b, _ := br.Peek(br.Buffered())
		for {
			if status && lineStart < len(b) && (b[lineStart] == ' ' || b[lineStart] == '\t') {
				// obs-fold: fasthttp joins it in place, in the buffer.
				return nil, errRespLine
			}
			i := bytes.IndexByte(b[lineStart:], '\n')
			if i < 0 {
				break
			}
			i += lineStart
			if i == lineStart || b[i-1] != '\r' {
				return nil, errRespBareLF
			}
			empty := i-1 == lineStart
			lineStart = i + 1
			switch {
			case !empty:
				status = true
			case status:
				return b[:lineStart], nil
			}
		}
		if len(b) == br.Size() {
			return nil, nil
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			if !status && onlyCRLF(b) {
				return nil, io.EOF // fasthttp: CRLFs left after a body, then the close
			}
			return nil, fmt.Errorf("error when reading response headers: %w", err)
		}
	}
}

func onlyCRLF(b []byte) bool {
	for _, c := range b {
		if c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// checkResponse looks at a response head fasthttp has parsed into h from
// head, the bytes as received (status line included), and returns an
// error wrapping errBadResponse if the response must not reach the app.
//
// fasthttp itself already refuses a duplicate Content-Length, one with a
// sign or any non-digit, a Transfer-Encoding other than one "chunked" in
// an HTTP/1.1 response (a list such as "gzip, chunked", "identity",
// "xchunked"), control bytes in a value and most bytes that are not a
// token in a name. This refuses, in one pass, what it lets through: both
// Content-Length and Transfer-Encoding (RFC 9112 §6.3 lets Transfer-Encoding
// win, but calls it a likely smuggling or splitting attempt; a proxy
// that guesses which framing the upstream meant may take the rest as the
// next response on a reused connection, and nginx refuses it too),
// Transfer-Encoding in an HTTP/1.0 response (RFC 9112 §6.1: faulty
// framing), a protocol other than HTTP/1.0 or HTTP/1.1, header names with
// whitespace (before the colon too), obs-fold, and control bytes in the
// status line, whose reason phrase goes to the app as it came.
//
// It runs on every response: no allocation.
func checkResponse(h *fasthttp.ResponseHeader, head []byte) error {
	http11 := false
	switch p := h.Protocol(); string(p) {
	case "HTTP/1.1":
		http11 = true
	case "HTTP/1.0":
	default:
		return errRespVersion
	}
	for len(head) >= 2 && head[0] == '\r' && head[1] == '\n' {
		head = head[2:]
	}
	// The status line: bufferResponseHead found its CRLF.
	i := skipValue(head, 0)
	if i+1 >= len(head) || head[i] != '\r' || head[i+1] != '\n' {
		return errRespLine
	}
	raw := head[i+2:]

	// The header lines: a request's rules (nextFraming), then a
	// response's framing rules, lenient to OWS where a request's are not.
	// The first fault found is the one returned.
	var cl, te int
	var err error
	_, ok := walkFraming(raw, func(field framingField, value []byte) bool {
		switch field {
		case fieldContentLength:
			if cl++; cl > 1 || !digits(trimOWS(value)) {
				err = errRespCL
			}
		case fieldTransferEncoding:
			if !http11 {
				err = errRespTE10
			} else if te++; te > 1 || !equalFold(trimOWS(value), "chunked") {
				err = errRespTE
			}
		}
		return err == nil
	})
	switch {
	case err != nil:
		return err
	case !ok:
		return errRespLine
	case cl > 0 && te > 0:
		return errRespCLAndTE
	}
	return nil
}

// digits accepts 1 to 18 decimal digits (18 cannot overflow an int64).
// Leading zeros are valid (RFC 9110 §8.6: 1*DIGIT).
func digits(v []byte) bool {
	if len(v) == 0 || len(v) > 18 {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// trimOWS trims RFC 9110's optional whitespace, SP and HTAB, from both
// ends: valid around any field value, and what every HTTP parser trims.
func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}
