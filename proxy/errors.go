package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

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

// failure maps an upstream failure to the status the app receives and the
// reason it is counted and logged under (a Reason* constant): 503 when the
// pool (or a capture listeners destinations) had no room, every endpoint was out, or the listener is
// shutting down; 504 on any timeout; 502 otherwise (refused, reset,
// closed, malformed).
func failure(err error) (status int, reason string) {
	switch {
	case errors.Is(err, pool.ErrExhausted), errors.Is(err, ErrTooManyDestinations):
		return fasthttp.StatusServiceUnavailable, ReasonPoolExhausted // a capture listener's destinations count as its pool
	case errors.Is(err, pool.ErrNoEndpoint):
		return fasthttp.StatusServiceUnavailable, ReasonNoEndpoint
	case errors.Is(err, pool.ErrClosed), errors.Is(err, errShuttingDown):
		return fasthttp.StatusServiceUnavailable, ReasonShutdown
	}
	status = fasthttp.StatusBadGateway
	var ue *upstreamError
	// net.Error, syscall.ETIMEDOUT (TCP_USER_TIMEOUT, keepalive) and
	// fasthttp's ErrTimeout all say Timeout().
	var te interface{ Timeout() bool }
	if errors.As(err, &ue) && ue.timeout || errors.As(err, &te) && te.Timeout() {
		status = fasthttp.StatusGatewayTimeout
	}
	var de *pool.DialError
	switch {
	case errors.As(err, &de):
		return status, ReasonDialError
	case status == fasthttp.StatusGatewayTimeout:
		return status, ReasonTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return status, ReasonUpstreamReset
	}
	return status, ReasonBadResponse
}

// fail answers the app with the status for err and a short plain-text
// body, and returns the reason (failure) for the exchange's end.
func (s *Server) fail(ctx *fasthttp.RequestCtx, up *Upstream, err error) string {
	code, reason := failure(err)
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(code)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.Response.SetBodyString(fasthttp.StatusMessage(code) + "\n")
	s.log.Warn("upstream request failed",
		zap.String("upstream", up.Name), zap.Int("status", code), zap.String("reason", reason),
		zap.ByteString("method", ctx.Method()), zap.ByteString("uri", ctx.RequestURI()),
		zap.Error(err))
	return reason
}
