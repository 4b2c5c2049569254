package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/pool"
)

// Bodies up to this size are buffered whole, which makes them replayable
// for a retry; larger or chunked ones stream through in both directions.
const maxBufferedBody = 64 << 10

var (
	errAppGone       = errors.New("the app closed its connection")
	errBodyTooLarge  = errors.New("request body larger than limits.request_body_bytes")
	errBodyTruncated = errors.New("the app's request body ended before its declared length")
)

// appBody reads a request body from the app for the upstream. It is what
// makes a body complete or not at all: every byte is counted against the
// length the app declared, and any failure (the app leaving, a malformed
// chunk, a timeout, the size limit) is kept in err, so that the exchange
// answers the app for it and the upstream connection, which may have
// received part of the body, is discarded rather than reused. fasthttp's
// own Request.Body would instead store the error's text as the body.
//
// It belongs to the handler's goroutine.
type appBody struct {
	r       io.Reader // fasthttp's stream of the body, framing decoded
	app     *appConn  // for the read deadline; nil outside a listener
	want    int       // the declared Content-Length; -1: chunked
	got     int64
	max     int64         // limits.request_body_bytes; 0: none
	timeout time.Duration // body_read_timeout; 0: none
	err     error         // the first failure, the app's
	eof     bool          // read to its end
	done    time.Time     // when the read of its last byte returned; zero: not yet

	// The upstream connection the body is being written to: each read
	// renews its write deadline, so a slow app does not time out a write
	// that is only waiting for it.
	upstream     net.Conn
	writeTimeout time.Duration
}

func newAppBody(r io.Reader, app *appConn, want int, lim *requestLimits) *appBody {
	if lim.bodyReadTimeout <= 0 {
		// No body timeout: the headers' deadline must not bound the body.
		app.bodyDeadline(0)
	}
	return &appBody{r: r, app: app, want: want, max: lim.maxBody, timeout: lim.bodyReadTimeout}
}

func (b *appBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.timeout > 0 {
		b.app.bodyDeadline(b.timeout) // cleared at the request's end
	}
	n, err := b.r.Read(p)
	b.got += int64(n)
	switch {
	case b.max > 0 && b.got > b.max:
		err = errBodyTooLarge
	case err == io.EOF && b.want >= 0 && b.got < int64(b.want):
		err = errBodyTruncated
	}
	if err == io.EOF {
		b.eof = true
	} else if err != nil {
		b.err = err
		return n, err
	}
	if b.done.IsZero() && (b.eof || b.want >= 0 && b.got == int64(b.want)) {
		b.done = time.Now()
	}
	if b.upstream != nil && b.writeTimeout > 0 {
		b.app.upstreamWriteDeadline(b.upstream, b.writeTimeout)
	}
	return n, err
}

// lastRead returns when the body's last byte was read, or else if it
// never was (an empty body, or one not read to its end).
func (b *appBody) lastRead(or time.Time) time.Time {
	if b.done.IsZero() {
		return or
	}
	return b.done
}

// readInto reads the whole body (at most maxBufferedBody) and makes it
// req's body, replayable.
func (b *appBody) readInto(req *fasthttp.Request) error {
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	if cap(buf.B) < b.want {
		buf.B = make([]byte, b.want)
	}
	buf.B = buf.B[:b.want]
	if _, err := io.ReadFull(b, buf.B); err != nil {
		if b.err == nil {
			b.err = err
		}
		return b.err
	}
	req.SetBody(buf.B)
	return nil
}

// writeRequest writes req upstream as the app sent it: its request line
// with the target as it came, its headers, and its body framed as
// declared. fasthttp's Request.Write would rebuild the target from the
// parsed URI (dropping an empty query "?") and turn a URI's userinfo into
// an Authorization header. A chunked body is re-chunked as it streams;
// its trailer fields are dropped (RFC 9112 7.1.2 lets a recipient that
// removes the chunked coding discard them).
func writeRequest(bw *bufio.Writer, req *fasthttp.Request, body *appBody) error {
	if err := req.Header.Write(bw); err != nil {
		return err
	}
	if body == nil {
		_, err := bw.Write(req.Body())
		return err
	}
	if body.want >= 0 {
		n, err := io.Copy(bw, io.LimitReader(body, int64(body.want)))
		if err == nil && n < int64(body.want) {
			err = errBodyTruncated
		}
		return err
	}
	return writeChunked(bw, body)
}

// writeChunked copies r to bw as chunks, one per read, each flushed so
// that a body that trickles in reaches the upstream as it comes.
func writeChunked(bw *bufio.Writer, r io.Reader) error {
	buf := chunkBuffers.Get().(*[]byte)
	defer chunkBuffers.Put(buf)
	for {
		n, err := r.Read(*buf)
		if n > 0 {
			if _, werr := fmt.Fprintf(bw, "%x\r\n", n); werr != nil {
				return werr
			}
			bw.Write((*buf)[:n])
			bw.WriteString("\r\n")
			if werr := bw.Flush(); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			_, werr := bw.WriteString("0\r\n\r\n")
			return werr
		}
		if err != nil {
			return err
		}
	}
}

var chunkBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// refuseBody answers a request whose body could not be read from the app:
// nothing of it was forwarded as complete. It returns the reason.
func (s *Server) refuseBody(ctx *fasthttp.RequestCtx, err error) string {
	code, reason := fasthttp.StatusBadRequest, RefuseBadRequest // a malformed chunk, most likely
	switch {
	case errors.Is(err, errBodyTooLarge):
		code, reason = fasthttp.StatusRequestEntityTooLarge, RefuseBodyTooLarge
	case timedOut(err):
		code, reason = fasthttp.StatusRequestTimeout, RefuseBodyTimeout
	case appLeft(err):
		reason = RefuseBodyIncomplete
	}
	s.refuse(ctx, code, reason, err)
	return reason
}

// appLeft reports the errors of a body the app stopped sending by closing
// or resetting its connection.
func appLeft(err error) bool {
	return errors.Is(err, errBodyTruncated) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// timedOut reports a deadline that ran out. fasthttp's parsers return
// their own ErrTimeout, which says so too.
func timedOut(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, fasthttp.ErrTimeout) {
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// upstreamBody streams a response body from an upstream connection to the
// app. It owns the connection, and the end of the exchange, until fasthttp
// closes it after writing the body (or failing to): a body read to its end
// gives the connection back for reuse, anything else discards it.
type upstreamBody struct {
	x        exchange
	framing  *fasthttp.Response // its BodyStream reads the body off c
	c        *pool.Conn
	reusable bool
	eof      bool
	err      error
	closed   bool
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	x := &b.x
	x.app.upstreamReadDeadline(b.c.NetConn(), x.up.ResponseIdleTimeout)
	n, err := b.framing.BodyStream().Read(p)
	x.bytes += n
	switch {
	case err == io.EOF:
		if !b.eof {
			x.app.responseRead(time.Now()) // the response phase starts (added.go)
		}
		b.eof = true
	case err != nil && b.err == nil:
		b.err = err
	}
	return n, err
}

// Close runs once fasthttp is done with the body, on the handler's
// goroutine (or the raw stream's); it is the end of the exchange.
func (b *upstreamBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	x := &b.x
	fasthttp.ReleaseResponse(b.framing)
	if !b.eof {
		switch {
		// Closed before its end with no failure of ours to read it: the
		// write to the app failed, which is the app gone, whether or not
		// the abort watch has seen it yet.
		case x.app.wasAborted(), b.err == nil:
			x.aborted = "response_body"
			x.s.obs.AppAborted(x.aborted)
		case timedOut(b.err):
			x.s.obs.UpstreamTimeout("response_idle")
			x.s.log.Warn("upstream response stalled mid-body",
				zap.String("upstream", x.up.Name), zap.String("endpoint", x.endpoint),
				zap.Int("bytes", x.bytes), zap.Error(b.err))
		}
	}
	switch {
	case b.eof && b.reusable:
		x.giveBack(b.c, "")
	case b.eof:
		x.giveBack(b.c, pool.CauseServerClose)
	default:
		x.giveBack(b.c, pool.CauseError)
	}
	x.streams = false
	x.finish()
	return nil
}

// streamRaw sends b to an HTTP/1.0 app: the response header without
// Content-Length or Transfer-Encoding, then the body's bytes as they come,
// then the connection's close, which marks the end. fasthttp writes every
// body of unknown length chunked, so unstuck takes the connection over
// (Hijack) for this one response.
func (s *Server) streamRaw(ctx *fasthttp.RequestCtx, b *upstreamBody) {
	resp := &ctx.Response
	resp.Header.SetContentLength(-2) // also sets Connection: close
	s.raw.Add(1)
	// As for an upgrade (upgrade.go): if fasthttp closes the connection
	// instead of hijacking it, the exchange still ends, giving the
	// upstream connection back, and Shutdown's wait for raw streams too.
	app := b.x.app
	var pending *pendingHijack
	if app != nil {
		pending = &pendingHijack{abandon: func() {
			defer s.raw.Done()
			b.Close()
		}}
		app.hijack.Store(pending)
	}
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(nc net.Conn) {
		if app != nil && app.hijack.Swap(nil) != pending {
			return // abandoned: fasthttp hijacks or closes, never both, so never
		}
		defer s.raw.Done()
		defer nc.Close() // KeepHijackedConns: ours to close, with the listener's close policy
		defer b.Close()
		bw := bufio.NewWriterSize(nc, 4<<10)
		if err := resp.Header.Write(bw); err != nil || bw.Flush() != nil {
			return
		}
		// Straight to the connection, each read as it comes: a stream
		// that trickles must not wait in a buffer.
		if _, err := io.Copy(nc, b); err != nil && !b.eof && b.x.app != nil {
			// A body cut short must not end like a whole one.
			_ = b.x.app.abort()
		}
		b.x.app.responseWritten()
	})
}
