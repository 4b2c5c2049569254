package proxy

import (
	"bytes"
	"errors"
	"fmt"
)

// framingGuard follows the raw bytes of the requests on one app connection,
// in order and across reads, request after request, and fails at the first
// byte that breaks their framing. It sees what fasthttp's parser cannot
// report in time:
//
//   - a head line ended by a bare LF. fasthttp ends a head only at CRLFCRLF,
//     so a head written with LFs alone waits, unanswered, until the app
//     closes; and a pipelined request's head is read by fasthttp with no
//     read of ours at its boundary.
//   - a chunked body whose lines are overlong or mostly not data. fasthttp
//     skips chunk extensions without bound.
//
// It frames bodies by Content-Length or chunked as checkRequest accepts
// them. After a request that carries an Upgrade header (and its body) it
// stops following the connection: the bytes that come next may be another
// protocol's, and that request is the connection's last as HTTP (handle
// pairs the connection or closes it after the response). On a head checkRequest refuses anyway (both framing headers, a
// duplicate or unplain one, a name that is not a token, obs-fold, CONNECT)
// or one longer than maxHead (fasthttp's 431), it stops following the
// connection, which is then closed, and returns nil from then on. After a
// violation every feed returns the same error.
//
// The zero value is ready. feed does not allocate; a head costs a few
// IndexByte calls, a Content-Length body none.
type framingGuard struct {
	// maxHead caps a head, leading empty lines included; 0:
	// DefaultMaxRequestHeaderBytes. Set it to the server's header limit.
	maxHead int

	state guardState
	err   error // the violation, once found
	// good is, after a feed that found the violation, how many bytes of
	// its b came before the byte that broke the framing.
	good int

	// The line being read: a head, chunk-size or trailer line.
	line int              // its bytes so far, before its LF
	cr   bool             // its last byte so far is CR
	pre  [headPrefix]byte // a head line's first bytes, while it spans feeds

	// The head being read.
	headLen int   // bytes so far
	started bool  // its request line has been seen
	hasCL   bool  // a Content-Length line
	hasTE   bool  // a Transfer-Encoding: chunked line
	cl      int64 // the Content-Length
	upgrade bool  // an Upgrade line
	// lastHead: the head just read carried Upgrade (and is not one
	// checkRequest refuses); after its body the connection is no longer
	// followed.
	lastHead bool

	// The body.
	left   uint64 // Content-Length or chunk data bytes still to come
	size   uint64 // the chunk size being read
	digits int    // its hex digits so far
	excess int64  // net/http's chunk overhead count (see endChunkLine)
	// A trailer line's name is still being read (no ':' yet), and its
	// length so far.
	inName  bool
	nameLen int
}

type guardState uint8

const (
	guardHead      guardState = iota // a head, or before one
	guardBody                        // Content-Length body bytes
	guardChunkSize                   // a chunk-size line's hex digits
	guardChunkLine                   // the rest of a chunk-size line
	guardChunkData                   // chunk data
	guardChunkCR                     // the CRLF after chunk data
	guardChunkLF
	guardTrailer // trailer lines, ended by an empty one
	guardLost    // not followed any more
	guardFailed  // err found
)

const (
	// headPrefix holds the longest framing line checkRequest accepts:
	// "Content-Length: " and 18 digits, then CR.
	headPrefix = 40
	// maxChunkLine is net/http's maxLineLength: a chunk-size or trailer
	// line has fewer bytes than this before its CRLF.
	maxChunkLine = 4096
	// maxChunkDigits is the most hex digits a chunk size may have (fasthttp
	// accepts 15).
	maxChunkDigits = 16
	// maxChunkExcess bounds a chunked body's non-data bytes, as net/http.
	maxChunkExcess = 16 << 10
)

// errBareLF is a request head line ended by LF alone: it is
// errMalformedHead, which requestError answers with 400.
var errBareLF = errMalformedHead

// errMalformedChunked is what the errChunk* errors wrap: a chunked request
// body unstuck refuses (400). The upstream request carrying it, if one
// started, must be aborted.
var errMalformedChunked = errors.New("malformed chunked request body")

var (
	errChunkBareLF   = fmt.Errorf("%w: bare LF line ending", errMalformedChunked)
	errChunkSize     = fmt.Errorf("%w: invalid chunk size", errMalformedChunked)
	errChunkCRLF     = fmt.Errorf("%w: CR without LF, or chunk data without CRLF", errMalformedChunked)
	errChunkLine     = fmt.Errorf("%w: chunk or trailer line of %d bytes or more", errMalformedChunked, maxChunkLine)
	errChunkOverhead = fmt.Errorf("%w: too much non-data (chunk extensions or trailers)", errMalformedChunked)
	errTrailerName   = fmt.Errorf("%w: a trailer field whose name is not a token", errMalformedChunked)
)

// feed follows b, the next bytes the app sent. It returns the first
// framing violation, and nil while there is none or once the connection is
// no longer followed. When it finds the violation, b[:g.good] is sound: a
// read path that hands those bytes over and fails the next read keeps
// fasthttp from parsing a head from the bytes after (a bare LF ending the
// request line is invisible to checkRequest).
func (g *framingGuard) feed(b []byte) error {
	for off := 0; off < len(b); {
		b := b[off:]
		var n int
		var err error
		switch g.state {
		case guardHead:
			n, err = g.head(b)
		case guardBody, guardChunkData:
			n = len(b)
			if uint64(n) > g.left {
				n = int(g.left)
			}
			if g.left -= uint64(n); g.left == 0 {
				if g.state == guardBody {
					g.state = g.afterMessage()
				} else {
					g.state = guardChunkCR
				}
			}
		case guardChunkSize:
			n, err = g.chunkSize(b)
		case guardChunkLine, guardTrailer:
			n, err = g.chunkLine(b)
		case guardChunkCR:
			switch b[0] {
			case '\r':
				g.state, n = guardChunkLF, 1
			case '\n':
				err = errChunkBareLF
			default:
				err = errChunkCRLF
			}
		case guardChunkLF:
			if b[0] != '\n' {
				err = errChunkCRLF
			}
			g.state, n = guardChunkSize, 1
		case guardLost:
			return nil
		default: // guardFailed
			g.good = 0
			return g.err
		}
		if err != nil {
			// n is where in b the violation is.
			g.state, g.err, g.good = guardFailed, err, off+n
			return err
		}
		off += n
	}
	return nil
}

// head reads a head's lines from b and returns how many bytes of b it
// used: all of them, or up to the end of the head. The sub-steps of feed
// return, with an error, the index in b of the byte at fault.
func (g *framingGuard) head(b []byte) (int, error) {
	limit := g.maxHead
	if limit <= 0 {
		limit = DefaultMaxRequestHeaderBytes
	}
	w := b
	if room := limit - g.headLen; len(w) > room {
		w = w[:room] // bytes past the limit are fasthttp's 431 to answer
	}
	for i := 0; ; {
		j := bytes.IndexByte(w[i:], '\n')
		if j < 0 {
			g.linePart(w[i:])
			if g.headLen += len(w); g.headLen >= limit {
				g.state = guardLost
			}
			return len(b), nil
		}
		end := i + j
		if end > i && w[end-1] != '\r' || end == i && !(g.line > 0 && g.cr) {
			return end, errBareLF
		}
		line, full := w[i:end], end-i
		if g.line > 0 {
			g.linePart(line)
			line, full = g.pre[:min(g.line, headPrefix)], g.line
		}
		g.line, g.cr = 0, false
		i = end + 1
		if g.headLine(line, full) {
			g.endHead()
			return i, nil
		}
		if g.state == guardLost {
			return len(b), nil
		}
	}
}

// linePart records p, the next bytes of a line not yet ended.
func (g *framingGuard) linePart(p []byte) {
	if len(p) == 0 {
		return
	}
	if g.line < headPrefix {
		copy(g.pre[g.line:], p)
	}
	g.line += len(p)
	g.cr = p[len(p)-1] == '\r'
}

// headLine takes a head line: line is it, or its first headPrefix bytes,
// with its CR; full is its length. It reports whether the line ends the
// head, and sets guardLost on a head checkRequest refuses.
func (g *framingGuard) headLine(line []byte, full int) bool {
	if full == 1 { // CRLF
		// Empty lines before a request line are allowed (RFC 9112 §2.2).
		return g.started
	}
	if len(line) > headPrefix {
		line = line[:headPrefix]
	}
	if !g.started {
		g.started = true
		if bytes.HasPrefix(line, []byte("CONNECT ")) {
			g.state = guardLost // 501: a tunnel's bytes are not requests
		}
		return false
	}
	k := 0
	for k < len(line) && tokenByte[line[k]] {
		k++
	}
	if k == len(line) {
		return false // a name longer than any framing header's
	}
	if k == 0 || line[k] != ':' {
		g.state = guardLost // obs-fold, or not a token name
		return false
	}
	name := line[:k]
	switch len(name) {
	case len("Content-Length"):
		if !equalFold(name, "Content-Length") {
			return false
		}
		if v, ok := g.framingValue(line, k, full, &g.hasCL, plainContentLength); ok {
			g.cl = 0
			for _, c := range trimOneSpace(v) {
				g.cl = g.cl*10 + int64(c-'0')
			}
		}
	case len("Upgrade"):
		g.upgrade = g.upgrade || equalFold(name, "Upgrade")
	case len("Transfer-Encoding"):
		if equalFold(name, "Transfer-Encoding") {
			g.framingValue(line, k, full, &g.hasTE, plainChunked)
		}
	}
	return false
}

// framingValue takes a Content-Length or Transfer-Encoding line (name
// line[:k], length full) as checkRequest would: it must be whole (not cut
// at headPrefix), the first of its name (*seen, then set) and plain. It
// returns the value without its CRLF, or sets guardLost.
func (g *framingGuard) framingValue(line []byte, k, full int, seen *bool, plain func([]byte) bool) ([]byte, bool) {
	if full > len(line) || *seen || !plain(line[k+1:full-1]) {
		g.state = guardLost
		return nil, false
	}
	*seen = true
	return line[k+1 : full-1], true
}

// endHead starts what follows a head: its body, or the next head.
func (g *framingGuard) endHead() {
	g.lastHead = g.upgrade
	switch {
	case g.hasCL && g.hasTE:
		g.state, g.lastHead = guardLost, false // checkRequest refuses it
	case g.hasTE:
		g.state, g.size, g.digits, g.excess = guardChunkSize, 0, 0, 0
	case g.cl > 0:
		g.state, g.left = guardBody, uint64(g.cl)
	default:
		g.state = g.afterMessage()
	}
	g.headLen, g.started, g.hasCL, g.hasTE, g.cl, g.upgrade = 0, false, false, false, 0, false
}

// afterMessage is the state after a request's last byte: the next head,
// or, after a request that asked to upgrade, not following any more.
func (g *framingGuard) afterMessage() guardState {
	if g.lastHead {
		return guardLost
	}
	return guardHead
}

// chunkSize reads a chunk size's hex digits from b and returns how many
// bytes of b it used. The byte after them is left to chunkLine.
func (g *framingGuard) chunkSize(b []byte) (int, error) {
	for i, c := range b {
		if v := unhex[c]; v < 16 {
			if g.digits == maxChunkDigits {
				return i, errChunkSize
			}
			g.size = g.size<<4 | uint64(v)
			g.digits++
			continue
		}
		switch {
		case g.digits == 0:
		case c == ';', c == '\r', c == ' ', c == '\t':
			// An extension, the CRLF, or whitespace fasthttp allows
			// before either.
			g.state, g.line, g.cr = guardChunkLine, g.digits, false
			return i, nil
		case c == '\n':
			return i, errChunkBareLF
		}
		return i, errChunkSize
	}
	return len(b), nil
}

// chunkLine reads the rest of a chunk-size line, or a trailer line, from b
// up to its LF, and returns how many bytes of b it used. Only a CRLF may
// end it, and no other CR be in it (fasthttp and net/http agree).
func (g *framingGuard) chunkLine(b []byte) (int, error) {
	w := b
	if room := maxChunkLine + 1 - g.line; len(w) > room {
		w = w[:room]
	}
	j := bytes.IndexByte(w, '\n')
	seg := w
	if j >= 0 {
		seg = w[:j]
	}
	if g.cr && j != 0 {
		return 0, errChunkCRLF
	}
	// A trailer's name first: its bytes come before any CR later in seg,
	// and the earliest fault is reported however the bytes were split.
	if g.state == guardTrailer {
		if k, ok := g.trailerName(seg, j >= 0); !ok {
			return k, errTrailerName
		}
	}

	if k := bytes.IndexByte(seg, '\r'); k >= 0 && k != len(seg)-1 {
		return k + 1, errChunkCRLF // the byte after the CR
	}
	if j < 0 {
		g.line += len(w)
		g.cr = w[len(w)-1] == '\r'
		if g.line > maxChunkLine {
			return len(w) - 1, errChunkLine // no LF where the longest line has it
		}
		return len(w), nil
	}
	if !(j > 0 && w[j-1] == '\r' || j == 0 && g.cr) {
		return j, errChunkBareLF
	}
	g.line += j
	if err := g.endChunkLine(g.line - 1); err != nil {
		return j, err
	}
	return j + 1, nil
}

// trailerName follows the name of a trailer line across feeds: token bytes
// up to its ':' (RFC 9110 5.1), like a header's. seg is the line's next
// bytes, ending with its CR if ends; it reports the offset of a byte that
// breaks the rule.
func (g *framingGuard) trailerName(seg []byte, ends bool) (int, bool) {
	if g.line == 0 {
		g.inName, g.nameLen = true, 0
	}
scan:
	for i, c := range seg {
		if !g.inName {
			break
		}
		switch {
		case c == ':':
			if g.nameLen == 0 {
				return i, false
			}
			g.inName = false
		case c == '\r' && i != len(seg)-1:
			return 0, true // a stray CR: chunkLine reports it
		case c == '\r':
			// The line's end, or a stray CR that the next feed shows:
			// chunkLine's rules decide which.
			if g.line+i == 0 {
				g.inName = false // the empty line that ends the trailers
			}
			break scan
		case !tokenByte[c]:
			return i, false
		default:
			g.nameLen++
		}
	}
	if ends && g.inName && g.line+len(seg) > 0 {
		return len(seg), false // a line with no ':' (an empty one ends the trailers)
	}
	return 0, true
}

// endChunkLine takes a chunk-size or trailer line of n bytes before its
// CRLF.
//
// The overhead rule is net/http's (internal/chunked.go, beginChunk): a
// chunk line and the CRLF after its data add to excess, each chunk takes
// off 16 bytes plus twice its data, never below 0; past 16 KiB the body
// is refused. Streaming a byte per chunk passes; kilobytes of extensions
// per byte of data do not. Trailer lines, which net/http bounds at its
// 4 KiB buffer, add to the same count.
func (g *framingGuard) endChunkLine(n int) error {
	g.excess += int64(n) + 2
	if g.state == guardChunkLine {
		g.excess -= 16 + 2*int64(min(g.size, 1<<40))
		g.excess = max(g.excess, 0)
	}
	if g.excess > maxChunkExcess {
		return errChunkOverhead
	}
	switch {
	case g.state == guardChunkLine && g.size > 0:
		g.state, g.left = guardChunkData, g.size
	case g.state == guardChunkLine:
		g.state = guardTrailer // the last chunk
	case n == 0:
		g.state = g.afterMessage() // the empty line ending the trailers
	}
	g.size, g.digits, g.line, g.cr = 0, 0, 0, false
	return nil
}

// unhex is a hex digit's value, 16 for any other byte.
var unhex = func() (t [256]byte) {
	for i := range t {
		t[i] = 16
	}
	for i, c := range "0123456789abcdef" {
		t[c] = byte(i)
	}
	for i, c := range "ABCDEF" {
		t[c] = byte(10 + i)
	}
	return t
}()
