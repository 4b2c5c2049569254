package proxy

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/pool"
)

const maxInterimResponses = 8

var errTooManyInterim = errors.New("too many interim 1xx responses")

// upstreamError is a failed exchange with one endpoint.
type upstreamError struct {
	op       string // write, read, read body
	endpoint string
	err      error
	timeout  bool // the exchange ran past its deadline
}

// newUpstreamError records a failure on c. fasthttp's parsers do not
// always wrap the socket's timeout error, so a deadline that has passed
// counts as a timeout too.
func newUpstreamError(op string, c *pool.Conn, err error, deadline time.Time) *upstreamError {
	timeout := errors.Is(err, os.ErrDeadlineExceeded) || (!deadline.IsZero() && !time.Now().Before(deadline))
	return &upstreamError{op: op, endpoint: c.Endpoint(), err: err, timeout: timeout}
}

func (e *upstreamError) Error() string {
	return fmt.Sprintf("%s %s: %v", e.op, e.endpoint, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

// statusFor maps an upstream failure to the status the app receives: 503
// when the pool had no free connection, 504 on any timeout, 502 otherwise
// (refused, reset, closed, malformed).
func statusFor(err error) int {
	if errors.Is(err, pool.ErrExhausted) || errors.Is(err, pool.ErrClosed) {
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
