package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// checkRequest looks at a request fasthttp has parsed, before anything of
// it is forwarded, and returns the status it must get instead (0: forward
// it) and the Refuse* reason to count.
//
// fasthttp's parser already refuses most malformed heads (they reach
// requestError instead); it leniently accepts a few that a proxy must not
// pass on, and normalises them so that only the wire bytes tell:
// RawHeaders holds them exactly as received. One pass over those bytes
// refuses what nginx, HAProxy and Envoy refuse: both Content-Length and
// Transfer-Encoding, any framing header that is not plain, header names
// that are not tokens, control bytes, obs-fold and bare LF.
//
// The request line's own line ending is not in RawHeaders: a bare LF
// there is only seen by the framing guard (framing.go).
func checkRequest(req *fasthttp.Request) (status int, reason string) {
	h := &req.Header
	if h.IsConnect() {
		// A tunnel is not something a reverse proxy implements, for any
		// resource: 501 rather than a 405 whose Allow would have to speak
		// for the upstream's resources.
		return fasthttp.StatusNotImplemented, RefuseMethod
	}
	// fasthttp accepts any HTTP/d.d and treats it as 1.0.
	if p := h.Protocol(); string(p) != "HTTP/1.1" && string(p) != "HTTP/1.0" {
		return fasthttp.StatusHTTPVersionNotSupported, RefuseBadRequest
	}
	if !validHost(h.Host()) || !validTarget(h.Method(), h.RequestURI(), h.Host()) || !validHeaderBlock(h.RawHeaders()) {
		return fasthttp.StatusBadRequest, RefuseBadRequest
	}
	return 0, ""
}

// validHost accepts a Host value that is a host and an optional port
// (RFC 9110 7.2): no userinfo, which fasthttp would otherwise turn into an
// Authorization header the app never sent, and nothing a URI would split
// on.
func validHost(host []byte) bool {
	for _, c := range host {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == ':', c == '[', c == ']', c == '_', c == '~', c == '%':
		default:
			return false
		}
	}
	return true
}

// validTarget accepts origin-form, "*" with OPTIONS, and absolute-form
// with http or https whose authority is the Host header's. Authority-form
// belongs to CONNECT alone.
//
// unstuck forwards an absolute-form target in origin-form with the Host
// header as received; RFC 9112 §3.2.2 says the target's authority wins.
// Rather than pick one of two hosts, a request naming two is refused (an
// app configured with an HTTP proxy sends the same host twice).
func validTarget(method, uri, host []byte) bool {
	if len(uri) > 0 && uri[0] == '/' {
		return true
	}
	if len(uri) == 1 && uri[0] == '*' {
		return string(method) == fasthttp.MethodOptions
	}
	var port string
	switch {
	case hasPrefixFold(uri, "http://"):
		uri, port = uri[len("http://"):], ":80"
	case hasPrefixFold(uri, "https://"):
		uri, port = uri[len("https://"):], ":443"
	default:
		return false
	}
	authority := uri
	for i, c := range uri {
		if c == '/' || c == '?' || c == '#' {
			authority = uri[:i]
			break
		}
	}
	return sameAuthority(authority, host, port)
}

// sameAuthority compares a target's authority with a Host value, ignoring
// case and the scheme's default port. Userinfo is refused (RFC 9110 §4.2.4).
func sameAuthority(a, host []byte, defaultPort string) bool {
	for _, c := range a {
		if c == '@' {
			return false
		}
	}
	trim := func(b []byte) []byte {
		if n := len(b) - len(defaultPort); n > 0 && string(b[n:]) == defaultPort {
			return b[:n]
		}
		return b
	}
	a, host = trim(a), trim(host)
	if len(a) == 0 || len(a) != len(host) {
		return false
	}
	for i := range a {
		if a[i]|0x20 != host[i]|0x20 {
			return false
		}
	}
	return true
}

// validHeaderBlock reports whether raw, the header lines as received and
// their empty last line, is what a smuggling-resistant proxy forwards: every
// line as nextFraming reads it; at most one Host; Content-Length or
// Transfer-Encoding but not both, each once and plain. An empty raw (no
// header lines) is valid: fasthttp hands over no empty line only for a head
// without header lines.
//
// It runs on every request: one pass, table lookups, no allocation.
func validHeaderBlock(raw []byte) bool {
	var host, cl, te int
	end, ok := walkFraming(raw, func(field framingField, value []byte) bool {
		switch field {
		case fieldHost:
			host++
		case fieldContentLength:
			cl++
			return cl == 1 && plainContentLength(value)
		case fieldTransferEncoding:
			te++
			return te == 1 && plainChunked(value)
		}
		return true
	})
	if !end {
		return ok && len(raw) == 0 // no empty line after the last framing field
	}
	return host <= 1 && (cl == 0 || te == 0)
}

// walkFraming walks raw, a header block as received, with nextFraming,
// the walk requests and responses share: it calls check on each Host,
// Content-Length and Transfer-Encoding line in order, with the value as
// received, and stops at the first one check refuses. end reports that
// the walk reached the empty line ending raw; ok is false when it stopped
// at a line nextFraming refuses or check refused. Both false and true
// (a raw that ends without its empty line, or is empty) is for the caller
// to judge.
//
// check must not let its arguments escape: the walk runs on every
// exchange and allocates nothing.
func walkFraming(raw []byte, check func(field framingField, value []byte) bool) (end, ok bool) {
	for i := 0; i < len(raw); {
		var field framingField
		var value []byte
		field, value, i = nextFraming(raw, i)
		switch field {
		case fieldBad:
			return false, false
		case fieldEnd:
			return true, true
		}
		if !check(field, value) {
			return false, false
		}
	}
	return false, true
}

// framingField is what nextFraming stops at.
type framingField int

const (
	fieldEnd              framingField = iota // the empty line ending the block
	fieldBad                                  // a line that breaks the rules, or no empty line
	fieldHost                                 // Host
	fieldContentLength                        // Content-Length
	fieldTransferEncoding                     // Transfer-Encoding
)

// nextFraming reads header lines from raw[i:], a header block as received,
// by the rules requests and responses share: every line a token name, ':',
// field-value bytes (no control byte but HTAB, no DEL), CRLF, up to an
// empty line that is raw's last two bytes. It stops at the first line
// that names Host, Content-Length or Transfer-Encoding (any case) and
// returns which, the value with its OWS, and where the next line starts;
// the caller applies its own rules and calls again from there. It stops
// with fieldEnd at the empty line, and with fieldBad at a line that breaks
// the rules (obs-fold: SP or HTAB at a line's start; an empty name;
// whitespace or a non-token byte in a name; a bare CR or LF, NUL or any
// other control byte, which stop a value's scan) or at raw's end without
// the empty line.
//
// Other lines are passed over inside it: on a typical head the caller
// takes one or two calls, not one a line (checkRequest and checkResponse
// run on every exchange).
func nextFraming(raw []byte, i int) (field framingField, value []byte, next int) {
	for i < len(raw) {
		start := i
		for i < len(raw) && tokenByte[raw[i]] {
			i++
		}
		if i == start {
			if i+2 == len(raw) && raw[i] == '\r' && raw[i+1] == '\n' {
				return fieldEnd, nil, len(raw)
			}
			return fieldBad, nil, len(raw)
		}
		if i == len(raw) || raw[i] != ':' {
			return fieldBad, nil, len(raw)
		}
		name := raw[start:i]
		i++
		vstart := i
		i = skipValue(raw, i)
		if i+1 >= len(raw) || raw[i] != '\r' || raw[i+1] != '\n' {
			return fieldBad, nil, len(raw)
		}
		value := raw[vstart:i]
		i += 2

		switch len(name) {
		case len("Host"):
			if equalFold(name, "Host") {
				return fieldHost, value, i
			}
		case len("Content-Length"):
			if equalFold(name, "Content-Length") {
				return fieldContentLength, value, i
			}
		case len("Transfer-Encoding"):
			if equalFold(name, "Transfer-Encoding") {
				return fieldTransferEncoding, value, i
			}
		}
	}
	return fieldBad, nil, len(raw)
}

// plainContentLength accepts what every client sends: an optional single
// space and digits (no sign, list or trailing whitespace). Equal
// duplicates, which RFC 9112 §6.3 lets a recipient merge, are refused by
// the caller as nginx does: no client sends them, and accepting them is one
// more way for two parsers to disagree.
func plainContentLength(v []byte) bool {
	return digits(trimOneSpace(v))
}

// plainChunked accepts "chunked" in any case after an optional single
// space, and nothing else: no list ("chunked, identity"), no other coding
// (identity, gzip), no tab or extra whitespace around it. These are the
// classic Transfer-Encoding obfuscations; a legacy client never sends any.
func plainChunked(v []byte) bool {
	return equalFold(trimOneSpace(v), "chunked")
}

// skipValue returns the index of the first byte from i on that cannot be
// in a field value (a control byte or DEL; CR ends a valid one). Eight
// bytes at a time while none is below 0x20 or DEL: most of a head is
// values, and this cuts checkRequest's cost to a third.
func skipValue(b []byte, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(b); i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		ctl := (w - 0x20*ones) &^ w & highs // a byte below 0x20
		del := w ^ 0x7f*ones
		del = (del - ones) &^ del & highs // a byte equal to 0x7f
		if ctl|del != 0 {
			break
		}
	}
	for i < len(b) && valueByte[b[i]] {
		i++
	}
	return i
}

func trimOneSpace(v []byte) []byte {
	if len(v) > 0 && v[0] == ' ' {
		return v[1:]
	}
	return v
}

// equalFold compares b with an ASCII s, ignoring case, without the
// allocation-free but Unicode-aware cost of bytes.EqualFold.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if b[i]|0x20 != s[i]|0x20 {
			return false
		}
	}
	return true
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && equalFold(b[:len(prefix)], prefix)
}

// tokenByte is RFC 9110's tchar: the bytes of a field name.
var tokenByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// valueByte is RFC 9110's field-vchar plus SP and HTAB: every byte but the
// controls and DEL (obs-text, 0x80 and up, included).
var valueByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 0x20 && c != 0x7f || c == '\t'
	}
	return t
}()

// errMalformedHead is what the app connection's read path returns for a
// head the framing guard condemns (framing.go); requestError answers it
// with 400.
var errMalformedHead = errors.New("malformed request head: bare LF line ending")

// requestStatus maps an error fasthttp met reading a request to the status
// the app gets and the reason it is counted under; reason "" means the app
// went away before its head was complete: nothing to answer or count.
func requestStatus(err error) (int, string) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small):
		// The request line may be what did not fit (414), but fasthttp
		// hands over neither the buffer nor how far it parsed.
		return fasthttp.StatusRequestHeaderFieldsTooLarge, RefuseHeaderTooLarge
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return fasthttp.StatusRequestEntityTooLarge, RefuseBodyTooLarge
	case errors.As(err, &ne) && ne.Timeout():
		return fasthttp.StatusRequestTimeout, RefuseHeaderTimeout
	case errors.Is(err, io.ErrUnexpectedEOF):
		// The body fasthttp reads ahead (up to 8 KiB) was cut short.
		return fasthttp.StatusBadRequest, RefuseBodyIncomplete
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return fasthttp.StatusBadRequest, ""
	}
	return fasthttp.StatusBadRequest, RefuseBadRequest
}

// requestError is fasthttp's ErrorHandler: a request it could not read
// (malformed, too large, too slow) gets its 4xx here, is logged and
// counted; fasthttp then closes the connection.
func (s *Server) requestError(ctx *fasthttp.RequestCtx, err error) {
	code, reason := requestStatus(err)
	answerRefused(ctx, code)
	if reason == "" {
		// The app left mid-head; the answer goes nowhere.
		if ce := s.log.Check(zapcore.DebugLevel, "app left before its request head was complete"); ce != nil {
			ce.Write(zap.Stringer("remote", ctx.RemoteAddr()), zap.Error(err))
		}
		return
	}
	s.obs.Refused(reason)
	// fasthttp has reset the request: no method or URI to log.
	if ce := s.log.Check(zapcore.InfoLevel, "request refused"); ce != nil {
		ce.Write(zap.Stringer("remote", ctx.RemoteAddr()), zap.Int("status", code),
			zap.String("reason", reason), zap.Error(err))
	}
}

// refuse answers a request unstuck will not forward with code, closes the
// app connection afterwards (its framing may be in doubt), and logs and
// counts it under reason. err may be nil.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, code int, reason string, err error) {
	answerRefused(ctx, code)
	s.obs.Refused(reason)
	if ce := s.log.Check(zapcore.InfoLevel, "request refused"); ce != nil {
		ce.Write(zap.Stringer("remote", ctx.RemoteAddr()), zap.Int("status", code),
			zap.String("reason", reason), zap.ByteString("method", ctx.Method()),
			zap.ByteString("uri", ctx.RequestURI()), zap.Error(err)) // zap.Error(nil) logs nothing
	}
}

func answerRefused(ctx *fasthttp.RequestCtx, code int) {
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(code)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.Response.SetBodyString(fasthttp.StatusMessage(code) + "\n")
	ctx.SetConnectionClose()
}
