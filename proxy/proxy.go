// Package proxy is the app's side of unstuck: a fasthttp server on the
// listener that forwards each request over a pooled upstream connection.
//
// The path of one request: Server.handle prepares the request (hop-by-hop
// headers out, X-Forwarded-* in), then roundTrip acquires a connection from
// the pool, writes the request, reads the response header, and either reads
// a small body and releases the connection at once, or hands the body to
// fasthttp as a stream whose Close releases it.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Bodies up to this size are buffered whole, which makes them replayable
// for a retry; larger or chunked ones stream through in both directions.
const maxBufferedBody = 64 << 10

// Upstream is where a listener sends its requests.
type Upstream struct {
	Name                  string
	Pool                  *pool.Pool
	Retries               int           // extra attempts, see retryable
	ResponseHeaderTimeout time.Duration // 0: none
	// ResponseIdleTimeout bounds each wait for the next bytes of a
	// response body (timeouts.response_idle); 0: none.
	ResponseIdleTimeout time.Duration
	// WriteTimeout bounds each write of a request to the upstream that
	// makes no progress (timeouts.write); 0: none.
	WriteTimeout time.Duration
	HostHeader   string // "": keep the client's Host
}

// Config describes one listener. Zero values are the documented defaults.
type Config struct {
	Name        string
	IdleTimeout time.Duration // close app connections idle this long; 0: never
	// IdleReleaseAfter releases an app connection's goroutine and buffers
	// after it has waited this long for a request (see park.go); 0: never.
	IdleReleaseAfter time.Duration
	Linger           sockopt.Linger    // how unstuck closes app connections
	AppFinTimeout    time.Duration     // after a graceful close, wait this long for the app's FIN; default 5s
	Keepalive        sockopt.Keepalive // TCP keepalive on app connections; zero Idle: off
	UserTimeout      time.Duration     // TCP_USER_TIMEOUT on app connections; 0: the kernel's default
	// ReadHeaderTimeout bounds the time from a request's first byte to the
	// end of its headers (read_header_timeout); 0: none. An app
	// connection waiting between requests is not affected.
	ReadHeaderTimeout time.Duration
	// BodyReadTimeout bounds each wait for the next bytes of a request
	// body (body_read_timeout); 0: none.
	BodyReadTimeout time.Duration
	// SendTimeout bounds each write to the app that makes no progress
	// (send_timeout); 0: none.
	SendTimeout time.Duration
	// MaxRequestHeaderBytes caps a request's line and headers
	// (limits.request_header_bytes); 0: 64 KiB.
	MaxRequestHeaderBytes int
	// MaxRequestBodyBytes caps a request body (limits.request_body_bytes);
	// 0: no limit.
	MaxRequestBodyBytes int64
	// MaxConns caps the app connections open at once on this listener
	// (limits.max_conns); 0: no limit. At the cap the listener stops
	// accepting until one closes; the kernel's backlog holds the rest.
	MaxConns  int
	AccessLog bool           // one info line per request
	Activity  *atomic.Uint64 // if set, counted up once per request (idle memory release watches it)
	Upstream  Upstream
	Logger    *zap.Logger
	Observer  Observer // default: none
}

// Server serves one listener. Its upstream, app-socket settings and access
// log switch can change while it serves (see Update); the rest of Config
// is fixed for its life.
type Server struct {
	name string
	log  *zap.Logger
	obs  Observer
	srv  *fasthttp.Server

	idleTimeout, idleReleaseAfter time.Duration
	activity                      *atomic.Uint64 // nil: not counted

	up        atomic.Pointer[Upstream]   // read once per request
	sockets   atomic.Pointer[appSockets] // read at accept and close
	accessLog atomic.Bool

	mu   sync.Mutex
	ln   *lingerListener // set by Serve; guarded by mu
	shut bool            // Shutdown began; guarded by mu
}

// New returns a server for cfg; Serve starts it.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	s := &Server{
		name:             cfg.Name,
		obs:              cfg.Observer,
		log:              cfg.Logger.Named("proxy").With(zap.String("listener", cfg.Name)),
		idleTimeout:      cfg.IdleTimeout,
		idleReleaseAfter: cfg.IdleReleaseAfter,
		activity:         cfg.Activity,
	}
	s.Update(cfg)
	s.srv = &fasthttp.Server{
		Handler:      s.handle,
		ErrorHandler: s.requestError,
		IdleTimeout:  cfg.IdleTimeout,
		// Large bodies stream; small ones are read whole (see
		// maxBufferedBody).
		StreamRequestBody:            true,
		MaxRequestBodySize:           maxBufferedBody,
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		NoDefaultDate:                true,
		Logger:                       zapPrintf{s.log},
		ConnState:                    connStateChanged,
	}
	if cfg.IdleReleaseAfter > 0 {
		// A worker goroutine whose connection was released waits this
		// long for another before it ends; fasthttp's default of 10s
		// would keep the stacks that idle release frees.
		s.srv.MaxIdleWorkerDuration = cfg.IdleReleaseAfter
	}
	return s
}

// connStateChanged follows fasthttp's view of each app connection for idle
// release (park.go).
func connStateChanged(nc net.Conn, st fasthttp.ConnState) {
	c, ok := nc.(*appConn)
	if !ok || !c.parkable {
		return
	}
	switch st {
	case fasthttp.StateIdle:
		c.markWaiting()
	case fasthttp.StateActive:
		c.markBusy()
	}
}

// Update applies the parts of cfg that may change while the server runs:
// the upstream (requests already started finish on the old one), the app
// sockets' linger, FIN timeout, keepalive and user timeout (for
// connections accepted or closed from now on), and the access log.
func (s *Server) Update(cfg Config) {
	up := cfg.Upstream
	s.up.Store(&up)
	if cfg.AppFinTimeout <= 0 {
		cfg.AppFinTimeout = 5 * time.Second
	}
	s.sockets.Store(&appSockets{
		linger:      cfg.Linger,
		keepalive:   cfg.Keepalive,
		userTimeout: cfg.UserTimeout,
		finTimeout:  cfg.AppFinTimeout,
	})
	s.accessLog.Store(cfg.AccessLog)
}

// Serve accepts app connections on ln until Shutdown. Each accepted
// connection is closed with the listener's linger.
func (s *Server) Serve(ln net.Listener) error {
	p, err := newParker(s.idleReleaseAfter, s.idleTimeout, s.srv.ServeConn, s.log, s.obs)
	if err != nil {
		ln.Close()
		return err
	}
	s.mu.Lock()
	if s.shut { // Shutdown came first
		s.mu.Unlock()
		p.shutdown()
		ln.Close()
		return nil
	}
	l := newLingerListener(ln, &s.sockets, s.obs, p)
	s.ln = l
	s.mu.Unlock()
	return s.srv.Serve(l)
}

// Shutdown stops accepting, waits for in-flight requests and closes idle
// app connections with the listener's linger (without waiting for the
// app's FIN), or gives up when ctx ends. App connections still waiting for
// their FIN after an earlier graceful close are reset.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shut = true
	l := s.ln
	s.mu.Unlock()
	if l != nil {
		l.stop()
		l.parker.shutdown()
	}
	err := s.srv.ShutdownWithContext(ctx)
	if l != nil {
		// fasthttp closes the listeners it has; this one Serve may have
		// been about to hand it.
		l.Close()
		waitCtx(ctx, l.parker.wait)
		l.wait()
	}
	return err
}

// waitCtx runs wait, giving up on it when ctx ends.
func waitCtx(ctx context.Context, wait func()) {
	done := make(chan struct{})
	go func() {
		wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// OpenConnections returns the number of app connections being served.
func (s *Server) OpenConnections() int { return int(s.srv.GetOpenConnectionsCount()) }

// exchange is what handle learns about one request, for metrics and the
// access log.
type exchange struct {
	start    time.Time
	retries  int
	endpoint string // of the last attempt
	reused   bool
}

// handle forwards one request. fasthttp owns ctx; the upstream connection
// belongs to roundTrip or, for a streamed body, to the body stream.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	if s.activity != nil {
		s.activity.Add(1)
	}
	up := s.up.Load()
	req := &ctx.Request
	if code, reason := checkRequest(req); code != 0 {
		s.refuse(ctx, code, reason, nil)
		return
	}
	prepareRequest(req, clientIP(ctx), up.HostHeader)

	// A small body is read whole now so a retry can send it again.
	streamed := false
	if cl := req.Header.ContentLength(); cl > maxBufferedBody || cl == -1 {
		streamed = true
	} else if req.IsBodyStream() {
		req.Body()
	}
	noHost := len(req.Header.Host()) == 0
	careful := !idempotent(req)

	x := exchange{start: time.Now()}
	defer s.done(ctx, &x)
	for ; ; x.retries++ {
		c, err := up.Pool.Acquire(careful)
		if err != nil {
			if errors.Is(err, pool.ErrClosed) {
				// A reload replaced the pool under us: the new one
				// takes this request, as if it had come a moment later.
				if next := s.up.Load(); next != up {
					up = next
					x.retries--
					continue
				}
			}
			var de *pool.DialError
			if errors.As(err, &de) && x.retries < up.Retries {
				s.retry(ctx, x.retries, "dial", err)
				continue // nothing was sent
			}
			s.fail(ctx, up, err)
			return
		}
		x.endpoint, x.reused = c.Endpoint(), c.Reused()
		if noHost {
			req.Header.SetHost(c.Endpoint())
		}
		err = s.roundTrip(c, up, req, &ctx.Response)
		if err == nil {
			return
		}
		if x.retries < up.Retries && retryable(req, c, streamed) {
			s.retry(ctx, x.retries, "stale", err)
			continue
		}
		s.fail(ctx, up, err)
		return
	}
}

// done reports a finished request to the observer and the access log.
func (s *Server) done(ctx *fasthttp.RequestCtx, x *exchange) {
	took := time.Since(x.start)
	s.obs.Request(ctx.Response.StatusCode(), took, x.retries)
	if !s.accessLog.Load() {
		return
	}
	bytes := ctx.Response.Header.ContentLength() // -1: chunked, streamed
	if !ctx.Response.IsBodyStream() {
		bytes = len(ctx.Response.Body())
	}
	s.log.Info("access",
		zap.ByteString("method", ctx.Method()), zap.ByteString("uri", ctx.RequestURI()),
		zap.Int("status", ctx.Response.StatusCode()), zap.Int("bytes", bytes),
		zap.Duration("duration", took), zap.String("endpoint", x.endpoint),
		zap.Bool("reused", x.reused), zap.Int("retries", x.retries),
		zap.Stringer("remote", ctx.RemoteAddr()))
}

// roundTrip sends req on c and reads the response into resp. It always
// passes c on: to the pool, or to resp's body stream, which releases it
// once fasthttp has written the body to the app.
func (s *Server) roundTrip(c *pool.Conn, up *Upstream, req *fasthttp.Request, resp *fasthttp.Response) error {
	nc := c.NetConn()
	var deadline time.Time // zero: none
	if t := up.ResponseHeaderTimeout; t > 0 {
		deadline = time.Now().Add(t)
	}
	nc.SetDeadline(deadline)
	if req.IsBodyStream() {
		// Uploads may take longer than the header timeout.
		nc.SetWriteDeadline(time.Time{})
	}
	bw := c.Writer()
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		up.Pool.Discard(c, pool.CauseError)
		return newUpstreamError("write", c, err, deadline)
	}

	br := c.Reader()
	if err := readResponseHeader(resp, br); err != nil {
		up.Pool.Discard(c, pool.CauseError)
		return newUpstreamError("read", c, err, deadline)
	}
	serverClose := resp.Header.ConnectionClose()
	if hops := responseHops(&resp.Header); hops != 0 {
		stripHopHeaders(&resp.Header, hops)
	}

	code := resp.Header.StatusCode()
	if req.Header.IsHead() || code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified {
		resp.SkipBody = true
		finish(up.Pool, c, serverClose)
		return nil
	}
	cl := resp.Header.ContentLength()
	if cl >= 0 && cl <= maxBufferedBody {
		resp.StreamBody = false
		if err := resp.ReadBody(br, 0); err != nil {
			up.Pool.Discard(c, pool.CauseError)
			return newUpstreamError("read body", c, err, deadline)
		}
		finish(up.Pool, c, serverClose)
		return nil
	}

	// Large, chunked, or delimited by close: stream it. The response
	// header is in; the body may take as long as it takes.
	nc.SetReadDeadline(time.Time{})
	// The framing reader lives in a response of its own: resp's body is
	// about to become our stream, and replacing a body closes the old one.
	framing := fasthttp.AcquireResponse()
	framing.StreamBody = true
	framing.Header.SetContentLength(cl)
	if err := framing.ReadBody(br, 0); err != nil {
		fasthttp.ReleaseResponse(framing)
		up.Pool.Discard(c, pool.CauseError)
		return newUpstreamError("read body", c, err, deadline)
	}
	body := &upstreamBody{
		framing:  framing,
		c:        c,
		pool:     up.Pool,
		reusable: !serverClose && cl != -2, // -2: the body ends at close
	}
	size := cl
	if size < 0 {
		size = -1 // chunked towards the app
	}
	resp.SetBodyStream(body, size)
	return nil
}

// finish hands c back to p after a complete response.
func finish(p *pool.Pool, c *pool.Conn, serverClose bool) {
	if serverClose {
		p.Discard(c, pool.CauseServerClose)
		return
	}
	p.Release(c)
}

// readResponseHeader reads the final response header, skipping interim 1xx
// responses (103 Early Hints) the way fasthttp's own client does.
func readResponseHeader(resp *fasthttp.Response, br *bufio.Reader) error {
	resp.Reset()
	for interim := 0; ; interim++ {
		if err := resp.Header.Read(br); err != nil {
			return err
		}
		code := resp.Header.StatusCode()
		if code < 100 || code >= 200 || code == fasthttp.StatusSwitchingProtocols {
			return nil
		}
		if interim == maxInterimResponses {
			return errTooManyInterim
		}
	}
}

// upstreamBody streams a response body from an upstream connection to the
// app. It owns the connection until fasthttp closes it after writing the
// body (or failing to): a body read to its end releases the connection,
// anything else discards it.
type upstreamBody struct {
	framing  *fasthttp.Response // its BodyStream reads the body off c
	c        *pool.Conn
	pool     *pool.Pool
	reusable bool
	eof      bool
	closed   bool
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	n, err := b.framing.BodyStream().Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close runs once fasthttp is done with the body, on the handler's
// goroutine; it is the end of the connection's turn.
func (b *upstreamBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	fasthttp.ReleaseResponse(b.framing)
	switch {
	case b.eof && b.reusable:
		b.pool.Release(b.c)
	case b.eof:
		b.pool.Discard(b.c, pool.CauseServerClose)
	default:
		b.pool.Discard(b.c, pool.CauseError)
	}
	return nil
}

// retryable reports whether a request that failed on c may be sent again
// on another connection. An idempotent request may, if c was a reused
// connection (so it may have gone stale) and not one byte of the response
// arrived. Any request may if not one byte of it was written. A streamed
// body cannot be sent twice once its first byte was read.
func retryable(req *fasthttp.Request, c *pool.Conn, streamed bool) bool {
	if streamed {
		return false
	}
	if c.BytesWritten() == 0 {
		return true
	}
	return idempotent(req) && c.Reused() && c.BytesRead() == 0
}

func idempotent(req *fasthttp.Request) bool {
	switch string(req.Header.Method()) {
	case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodOptions, fasthttp.MethodTrace,
		fasthttp.MethodPut, fasthttp.MethodDelete:
		return true
	}
	return len(req.Header.Peek("Idempotency-Key")) > 0
}

func (s *Server) retry(ctx *fasthttp.RequestCtx, attempt int, reason string, err error) {
	s.obs.Retry(reason)
	if ce := s.log.Check(zapcore.DebugLevel, "retrying request"); ce != nil {
		ce.Write(zap.Int("attempt", attempt+1), zap.String("reason", reason),
			zap.ByteString("method", ctx.Method()), zap.Error(err))
	}
}

// zapPrintf adapts zap to fasthttp's Logger. fasthttp logs connection
// errors that are the app's business (a reset, a bad request) here.
type zapPrintf struct{ log *zap.Logger }

func (z zapPrintf) Printf(format string, args ...any) {
	z.log.Sugar().Debugf(format, args...)
}
