package proxy

import (
	"errors"
	"fmt"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/pool"
)

const maxInterimResponses = 8

var errTooManyInterim = errors.New("too many interim 1xx responses")

// upstreamError is a failed attempt with one endpoint, with the facts
// about its connection that the retry rules need, taken before the
// connection went back to the pool.
type upstreamError struct {
	op       string // write, read, read body
	endpoint string
	err      error
	timeout  bool  // the attempt ran past a deadline
	reused   bool  // the connection had served a request before
	written  int64 // bytes of the request written to it
	read     int64 // bytes of the response read from it
}

func (e *upstreamError) Error() string {
	return fmt.Sprintf("%s %s: %v", e.op, e.endpoint, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

// statusFor maps an upstream failure to the status the app receives: 503
// when the pool had no free connection, a capture listener no room for a
// destination, or an upgrade's 101 came during Shutdown, 504 on any timeout, 502 otherwise (refused, reset, closed,
// malformed).
func statusFor(err error) int {
	if errors.Is(err, pool.ErrExhausted) || errors.Is(err, pool.ErrClosed) || errors.Is(err, pool.ErrNoEndpoint) || errors.Is(err, errShuttingDown) ||
		errors.Is(err, ErrTooManyDestinations) {
		return fasthttp.StatusServiceUnavailable
	}
	var ue *upstreamError
	if errors.As(err, &ue) && ue.timeout {
		return fasthttp.StatusGatewayTimeout
	}
	// net.Error, syscall.ETIMEDOUT (TCP_USER_TIMEOUT, keepalive) and
	// fasthttp's ErrTimeout all say Timeout().
	var te interface{ Timeout() bool }
	if errors.As(err, &te) && te.Timeout() {
		return fasthttp.StatusGatewayTimeout
	}
	return fasthttp.StatusBadGateway
}

// fail answers the app with the status for err and a short plain-text body.
func (s *Server) fail(ctx *fasthttp.RequestCtx, up *Upstream, err error) {
	code := statusFor(err)
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(code)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.Response.SetBodyString(fasthttp.StatusMessage(code) + "\n")
	s.log.Warn("upstream request failed",
		zap.String("upstream", up.Name), zap.Int("status", code),
		zap.ByteString("method", ctx.Method()), zap.ByteString("uri", ctx.RequestURI()),
		zap.Error(err))
}
