// Package proxy is the app's side of unstuck: a fasthttp server on the
// listener that forwards each request over a pooled upstream connection.
//
// The path of one request: Server.handle prepares the request (hop-by-hop
// headers out, X-Forwarded-* in), then roundTrip acquires a connection from
// the pool, writes the request, reads the response header, and either reads
// a small body and releases the connection at once, or hands the body to
// fasthttp as a stream whose Close releases it. An upgrade request
// (WebSocket) takes the same path on a connection of its own, and a 101
// turns the two connections into a pair (upgrade.go).
package proxy

import (
	"bufio"
	"context"
	"errors"
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
	MaxConns int
	// CloseOnHalfClose ends a TCP pair at the first FIN (half_close:
	// close); false: the FIN is passed on (propagate), and the other
	// direction has HalfCloseTimeout (0: 5s) to end.
	CloseOnHalfClose bool
	HalfCloseTimeout time.Duration
	// RefuseUpgrade answers Connection: Upgrade requests 501 (upgrade:
	// false); otherwise they are forwarded and a 101 makes a TCP pair.
	RefuseUpgrade bool
	AccessLog     bool           // one info line per request
	Activity      *atomic.Uint64 // if set, counted up once per request (idle memory release watches it)
	Upstream      Upstream
	Logger        *zap.Logger
	Observer      Observer // default: none
	// Capture makes a capture listener (capture.go): each app connection
	// goes to its original destination, through that destination's
	// upstream, and Upstream is not used. Whether a server is one is fixed
	// at New; Update may give it other Destinations.
	Capture *Destinations
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

	up        atomic.Pointer[Upstream]     // read once per request
	capture   atomic.Pointer[Destinations] // a capture listener's, read once per request; nil otherwise
	isCapture bool                         // fixed at New
	sockets   atomic.Pointer[appSockets]   // read at accept, at a request's start and at close
	requests  atomic.Pointer[requestLimits]
	accessLog atomic.Bool
	maxConns  int                        // limits.max_conns; fixed for the server's life
	raw       sync.WaitGroup             // raw response streams to HTTP/1.0 apps (hijacked)
	policy    atomic.Pointer[pairPolicy] // for pairs made by upgrades from now on
	// pairs are the upgraded pairs, from their 101 to the close of both
	// sides (upgrade.go); pairs.wg.Add under mu while !shut.
	pairs pairSet

	mu   sync.Mutex
	ln   *lingerListener // set by Serve; guarded by mu
	shut bool            // Shutdown began; guarded by mu
}

// New returns a server for cfg; Serve starts it.
func New(cfg Config) *Server {
	cfg.applyDefaults()
	s := &Server{
		name:             cfg.Name,
		obs:              cfg.Observer,
		log:              cfg.Logger.Named("proxy").With(zap.String("listener", cfg.Name)),
		idleTimeout:      cfg.IdleTimeout,
		idleReleaseAfter: cfg.IdleReleaseAfter,
		activity:         cfg.Activity,
		maxConns:         cfg.MaxConns,
		isCapture:        cfg.Capture != nil,
	}
	s.Update(cfg)
	headerBytes := cfg.MaxRequestHeaderBytes
	if headerBytes <= 0 {
		headerBytes = DefaultMaxRequestHeaderBytes
	}
	s.srv = &fasthttp.Server{
		Handler:      s.handle,
		ErrorHandler: s.requestError,
		IdleTimeout:  cfg.IdleTimeout,
		// Large bodies stream; small ones are read whole (see
		// maxBufferedBody).
		StreamRequestBody:            true,
		MaxRequestBodySize:           maxBufferedBody,
		DisablePreParseMultipartForm: true,
		// The request line and headers must fit the read buffer: it is
		// the header limit (a larger block gets 431).
		ReadBufferSize: headerBytes,
		// Pass the bytes as they came: header names in the app's case,
		// no Server, Date or Content-Type the upstream did not send.
		DisableHeaderNamesNormalizing: true,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		// fasthttp's parse errors would quote the app's head (cookies,
		// Authorization) into the log.
		SecureErrorLogMessage: true,
		Logger:                zapPrintf{s.log},
		ConnState:             connStateChanged,
		// A hijacked connection is ours to close, and fasthttp's read
		// buffer is left to the garbage collector instead of its pool: an
		// upgraded pair lets go of it as soon as it has taken the bytes
		// in it, rather than holding 64 KiB for the pair's life.
		KeepHijackedConns: true,
	}
	if cfg.IdleReleaseAfter > 0 {
		// A worker goroutine whose connection was released waits this
		// long for another before it ends; fasthttp's default of 10s
		// would keep the stacks that idle release frees.
		s.srv.MaxIdleWorkerDuration = cfg.IdleReleaseAfter
	}
	return s
}

// applyDefaults sets what a zero Config leaves to its default: no logging,
// no observer.
func (cfg *Config) applyDefaults() {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
}

// DefaultMaxRequestHeaderBytes is limits.request_header_bytes' default.
const DefaultMaxRequestHeaderBytes = 64 << 10

// connStateChanged follows fasthttp's view of each app connection: the
// read_header_timeout starts at a request's first byte (StateActive) and
// ends at the request boundary (StateIdle), where idle release (park.go)
// takes over.
func connStateChanged(nc net.Conn, st fasthttp.ConnState) {
	c, ok := nc.(*appConn)
	if !ok {
		return
	}
	switch st {
	case fasthttp.StateIdle:
		c.responseWritten()
		c.requestDone()
		if c.parkable {
			c.markWaiting()
		}
	case fasthttp.StateActive:
		if c.parkable {
			c.markBusy()
		}
		c.requestStarted()
	case fasthttp.StateClosed:
		c.responseWritten() // a last response, flushed before the close
		if h := c.hijack.Swap(nil); h != nil {
			h.abandon() // fasthttp closed the connection instead of hijacking it
		}
	}
}

// Update applies the parts of cfg that may change while the server runs:
// the upstream (requests already started finish on the old one), the app
// sockets' linger, FIN timeout, keepalive and user timeout (for
// connections accepted or closed from now on), the request limits, the
// upgrade settings (for upgrades from now on), and the access log.
func (s *Server) Update(cfg Config) {
	up := cfg.Upstream
	s.up.Store(&up)
	s.capture.Store(cfg.Capture)
	s.sockets.Store(newAppSockets(cfg))
	s.requests.Store(&requestLimits{
		bodyReadTimeout: cfg.BodyReadTimeout,
		maxBody:         cfg.MaxRequestBodyBytes,
		refuseUpgrade:   cfg.RefuseUpgrade,
	})
	s.policy.Store(newPairPolicy(cfg))
	s.accessLog.Store(cfg.AccessLog)
}

// requestLimits are the settings a request reads once, at its start.
type requestLimits struct {
	bodyReadTimeout time.Duration // 0: none
	maxBody         int64         // 0: no limit
	refuseUpgrade   bool          // upgrade: false
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
	l, err := newLingerListener(ln, &s.sockets, s.obs, p, s.maxConns, s.log)
	if err != nil {
		s.mu.Unlock()
		p.shutdown()
		ln.Close()
		return err
	}
	l.maxHead = s.srv.ReadBufferSize
	if s.isCapture {
		l.capture = &s.capture
	}
	s.ln = l
	s.mu.Unlock()
	return s.srv.Serve(l)
}

// Shutdown stops accepting, waits for in-flight requests and closes idle
// app connections with the listener's linger (without waiting for the
// app's FIN), or gives up when ctx ends. App connections still waiting for
// their FIN after an earlier graceful close are reset. Upgraded pairs go
// on until ctx ends; then they are ended (both sides reset, as in tcp
// mode) and Shutdown waits for their closes.
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
	// fasthttp does not count hijacked connections: the pairs are ours to
	// wait for and end.
	if s.pairs.end(ctx, nil) && err == nil {
		err = ctx.Err()
	}
	if l != nil {
		// fasthttp closes the listeners it has; this one Serve may have
		// been about to hand it.
		l.Close()
		waitCtx(ctx, l.parker.wait)
		waitCtx(ctx, s.raw.Wait)
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

// OpenConnections returns the number of app connections open: being
// served, released while idle (park.go), or closing. fasthttp's own count
// is one short once its Serve has returned, and misses released ones.
func (s *Server) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln.openConns()
}

// exchange is one request's trip through unstuck. handle fills it in; it
// ends exactly once, in finish: at the end of handle, or, for a response
// body that streams, when fasthttp closes the stream.
type exchange struct {
	s        *Server
	ctx      *fasthttp.RequestCtx
	up       *Upstream
	app      *appConn      // nil only for a connection that is not one of ours (tests)
	start    time.Time     // fasthttp's request time: the request head was read
	took     time.Duration // to the end of the response header, or to the failure
	retries  int
	endpoint string // of the last attempt
	reused   bool
	aborted  string   // the phase in which the app went away; "": it did not
	reason   string   // why unstuck answered itself (Observer.Request); "": the upstream did
	bytes    int      // body bytes streamed to the app
	body     *appBody // the request body while it streams; nil: none, or read whole
	streams  bool     // a body stream owns the exchange's end
	// upgrade: an upgrade request, forwarded on a connection of its own
	// that never goes back to the pool, and never retried once written.
	upgrade bool
	// A capture listener's exchange: the destinations up came from, and
	// leave, called once nothing uses up any more: by handle, by the body
	// stream that took the exchange over, or by the upgrade's pair (each
	// takes it and sets it nil here). nil for other listeners.
	dests *Destinations
	leave func()
	// The request phase of the added latency (added.go): when the
	// request's last byte was read from the app, and how long after it
	// the last attempt finished writing it upstream (sent: it did).
	read    time.Time
	forward time.Duration
	sent    bool
}

// handle forwards one request. fasthttp owns ctx; the upstream connection
// belongs to roundTrip or, for a streamed body, to the body stream.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	if s.activity != nil {
		s.activity.Add(1)
	}
	req := &ctx.Request
	if code, reason := checkRequest(req); code != 0 {
		s.refuse(ctx, code, reason, nil)
		return
	}
	lim := s.requests.Load()
	cl := req.Header.ContentLength()
	if lim.maxBody > 0 && int64(cl) > lim.maxBody {
		s.refuse(ctx, fasthttp.StatusRequestEntityTooLarge, RefuseBodyTooLarge, nil)
		return
	}
	x := exchange{s: s, ctx: ctx, up: s.up.Load(), start: ctx.Time()}
	if x.start.IsZero() { // fasthttp sets it before the handler runs
		x.start = time.Now()
	}
	x.read = x.start
	x.app, _ = ctx.Conn().(*appConn)
	x.app.requestHandled() // the headers are in: their timeout is over
	if s.isCapture {
		if err := x.openDestination(); err != nil {
			x.took = time.Since(x.start)
			x.reason = s.fail(ctx, x.up, err)
			x.finish()
			return
		}
		defer x.leaveDestination() // if nothing took it over
	}
	http10 := !req.Header.IsHTTP11()
	var hops hopDropper
	hops.seeRequest(&req.Header)
	if hops.upgradeOf(http10) == upgradeForward {
		// A connection that is not a listener's (x.app nil: tests
		// serving fasthttp directly) cannot become a pair either.
		if lim.refuseUpgrade || x.app == nil {
			s.refuseUpgrade(ctx)
			return
		}
		x.upgrade = true
	}
	// What follows a request carrying Upgrade may be another protocol's
	// bytes (the framing guard stops there): unless it becomes a pair, the
	// connection ends after its response.
	lastRequest := hops.set&hopUpgrade != 0
	prepareRequest(req, &hops, x.upgrade, clientIP(ctx), x.up.HostHeader)

	// A small body is read whole now so a retry can send it again; a large
	// or chunked one streams. Either way its bytes are checked as they come:
	// nothing incomplete goes upstream as complete.
	var body *appBody
	if req.IsBodyStream() {
		body = newAppBody(req.BodyStream(), x.app, cl, lim)
		if cl >= 0 && cl <= maxBufferedBody {
			if err := body.readInto(req); err != nil {
				s.refuseBody(ctx, err)
				return
			}
			x.read = body.lastRead(x.read)
			body = nil
		} else {
			req.SetBodyStream(body, cl)
			x.body = body
		}
	}
	noHost := len(req.Header.Host()) == 0
	careful := !idempotent(req)

	defer func() {
		if body != nil && !body.eof || lastRequest && !ctx.Hijacked() {
			// Part of the body is still on the wire, or what follows may
			// not be HTTP: where the next request starts is unknown, and
			// the app must hear that this connection ends.
			ctx.SetConnectionClose()
		}
		x.finish()
	}()
	fresh := false // the next attempt must not reuse a pooled connection
	for ; ; x.retries++ {
		c, err := x.acquire(careful, fresh)
		if err != nil {
			if errors.Is(err, pool.ErrClosed) && x.reloaded() {
				// A reload replaced the pool under us: the new one
				// takes this request, as if it had come a moment later.
				x.retries--
				continue
			}
			var de *pool.DialError
			if errors.As(err, &de) && x.retries < x.up.Retries {
				s.retry(ctx, x.retries, "dial", err)
				continue // nothing was sent
			}
			x.took = time.Since(x.start)
			x.reason = s.fail(ctx, x.up, err)
			return
		}
		x.endpoint, x.reused = c.Endpoint(), c.Reused()
		if noHost {
			req.Header.SetHost(x.endpoint)
		}
		err = x.roundTrip(c, req, http10, body)
		switch {
		case err == nil:
			return
		case x.aborted != "":
			x.abort()
			return
		case body != nil && body.err != nil:
			x.reason = s.refuseBody(ctx, body.err)
			return
		}
		var ue *upstreamError
		if errors.As(err, &ue) && x.retries < x.up.Retries && !x.upgrade && retryable(req, ue, body != nil) {
			// A reused connection that failed may have gone stale, and so
			// may every other idle one: the retry dials.
			fresh = ue.reused
			s.retry(ctx, x.retries, "stale", err)
			continue
		}
		x.took = time.Since(x.start)
		x.reason = s.fail(ctx, x.up, err)
		return
	}
}

// reloaded moves the exchange to the listener's current upstream, or a
// capture listener's current destinations, if a reload replaced the one
// it had; false if none did.
func (x *exchange) reloaded() bool {
	if !x.s.isCapture {
		next := x.s.up.Load()
		changed := next != x.up
		x.up = next
		return changed
	}
	if x.s.capture.Load() == x.dests {
		return false
	}
	x.leaveDestination()
	return x.openDestination() == nil
}

// openDestination sets a capture listener's exchange's upstream: its app
// connection's original destination's, in the listener's current
// destinations. On error x.up is named for the log.
func (x *exchange) openDestination() error {
	if x.app == nil || !x.app.origDst.IsValid() {
		x.up = &Upstream{Name: "none"}
		return ErrNotCaptured // not a listener's connection (tests)
	}
	d, up, leave, err := openDestination(&x.s.capture, x.app.origDst)
	if err != nil {
		x.up = &Upstream{Name: x.app.origDst.String()}
		return err
	}
	x.dests, x.up, x.leave = d, up, leave
	return nil
}

// leaveDestination ends a capture listener's exchange's use of its
// destination, if it still has it.
func (x *exchange) leaveDestination() {
	if x.leave != nil {
		x.leave()
		x.leave = nil
	}
}

// acquire takes a connection for one attempt; fresh asks for a newly
// dialed one, as does an upgrade: a pair must never take a pooled
// connection away from the requests that would reuse it.
func (x *exchange) acquire(careful, fresh bool) (*pool.Conn, error) {
	if fresh || x.upgrade {
		return x.up.Pool.AcquireNew()
	}
	return x.up.Pool.Acquire(careful)
}

// abort answers an app that went away: 499 in the log and the metrics, and
// the connection closed (there is nobody to read a response).
func (x *exchange) abort() {
	x.took = time.Since(x.start)
	x.ctx.Response.Reset()
	x.ctx.Response.SetStatusCode(StatusClientClosed)
	x.ctx.SetConnectionClose()
	x.reason = ReasonAppClosed
	x.s.obs.AppAborted(x.aborted)
}

// StatusClientClosed is the status logged for a request whose app closed
// or reset its connection before the response was complete (nginx's 499).
const StatusClientClosed = 499

// finish reports a finished exchange to the observer and the access log.
// It runs once: at the end of handle, unless a body stream took the
// exchange over, in which case the stream's Close runs it. With the access
// log off it allocates nothing.
func (x *exchange) finish() {
	if x.streams {
		return
	}
	defer x.leaveDestination()
	s, ctx := x.s, x.ctx
	status := ctx.Response.StatusCode()
	if x.aborted != "" {
		status, x.reason = StatusClientClosed, ReasonAppClosed
	}
	if x.took == 0 {
		x.took = time.Since(x.start)
	}
	s.obs.Request(status, x.reason, x.took, x.retries)
	if x.sent {
		s.obs.Added(AddedRequest, x.forward)
	}
	if !s.accessLog.Load() {
		return
	}
	req := &ctx.Request
	bytes, reqBytes := x.bytes, 0
	if !ctx.Response.IsBodyStream() {
		bytes = len(ctx.Response.Body())
	}
	if x.body != nil {
		reqBytes = int(x.body.got)
	} else if !req.IsBodyStream() { // Body would read a stream
		reqBytes = len(req.Body())
	}
	ce := s.log.Check(zapcore.InfoLevel, "access")
	if ce == nil {
		return
	}
	ce.Write(
		zap.ByteString("method", ctx.Method()), zap.ByteString("uri", ctx.RequestURI()),
		zap.ByteString("protocol", req.Header.Protocol()),
		zap.Int("status", status), stringIfSet("response_flag", x.reason),
		zap.Int("request_bytes", reqBytes), zap.Int("bytes", bytes),
		zap.Duration("duration", time.Since(x.start)), zap.Duration("upstream_time", x.took),
		zap.String("endpoint", x.endpoint), zap.Bool("reused", x.reused), zap.Int("retries", x.retries),
		zap.Stringer("remote", ctx.RemoteAddr()), zap.ByteString("user_agent", req.Header.UserAgent()),
		bytesIfSet("x_request_id", req.Header.Peek("X-Request-Id")))
}

// stringIfSet and bytesIfSet are a field, left out when empty.
func stringIfSet(key, v string) zap.Field {
	if v == "" {
		return zap.Skip()
	}
	return zap.String(key, v)
}

func bytesIfSet(key string, v []byte) zap.Field {
	if len(v) == 0 {
		return zap.Skip()
	}
	return zap.ByteString(key, v)
}

// roundTrip sends req on c and reads the response into the exchange's
// response. It always passes c on, through giveBack: to the pool, or to
// the response's body stream, which gives it back once fasthttp has
// written the body to the app. While it runs, an app that closes or resets
// its connection wakes it (appConn.attach).
func (x *exchange) roundTrip(c *pool.Conn, req *fasthttp.Request, http10 bool, body *appBody) error {
	up, resp := x.up, &x.ctx.Response
	nc := c.NetConn()
	x.sent = false
	if !x.app.attach(nc) {
		x.aborted = "request"
		x.giveBack(c, "") // nothing was written on it
		return errAppGone
	}
	x.app.upstreamWriteDeadline(nc, up.WriteTimeout)
	if body != nil {
		body.upstream, body.writeTimeout = nc, up.WriteTimeout
	}
	bw := c.Writer()
	err := writeRequest(bw, req, body)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return x.failed("write", c, err, "request", "write")
	}
	read := x.read
	if body != nil {
		read = body.lastRead(read)
	}
	x.forward, x.sent = time.Since(read), true

	x.app.upstreamReadDeadline(nc, up.ResponseHeaderTimeout)
	br := c.Reader()
	head, err := readResponseHeader(resp, br)
	if err != nil {
		return x.failed("read", c, err, "response_header", "response_header")
	}
	headRead := time.Now()
	x.took = headRead.Sub(x.start)
	code := resp.Header.StatusCode()
	if code == fasthttp.StatusSwitchingProtocols {
		if !x.upgrade {
			return x.failed("read", c, errUnaskedSwitch, "response_header", "response_header")
		}
		return x.switchProtocols(c, head)
	}
	serverClose := resp.Header.ConnectionClose()
	if ka := stripResponseHops(&resp.Header); ka.said() {
		// Before c goes back: the pool retires it before the server's
		// idle timeout or its last request (pool/retire.go).
		c.SetServerKeepAlive(ka.timeout, ka.maxOrNone())
	}

	if req.Header.IsHead() || code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified {
		resp.SkipBody = true
		x.giveBack(c, closeCause(serverClose))
		x.app.responseRead(headRead)
		return nil
	}
	cl := resp.Header.ContentLength()
	if cl >= 0 && cl <= maxBufferedBody {
		x.app.upstreamReadDeadline(nc, up.ResponseIdleTimeout)
		resp.StreamBody = false
		// A body that came with the head was read when the head was.
		withHead := br.Buffered() >= cl
		if err := resp.ReadBody(br, 0); err != nil {
			return x.failed("read body", c, err, "response_body", "response_idle")
		}
		bodyRead := headRead
		if !withHead {
			bodyRead = time.Now()
		}
		x.giveBack(c, closeCause(serverClose))
		x.app.responseRead(bodyRead)
		return nil
	}

	// Large, chunked, or delimited by close: stream it. The framing reader
	// lives in a response of its own: resp's body is about to become our
	// stream, and replacing a body closes the old one.
	framing := fasthttp.AcquireResponse()
	framing.StreamBody = true
	framing.Header.SetContentLength(cl)
	x.app.upstreamReadDeadline(nc, up.ResponseIdleTimeout)
	if err := framing.ReadBody(br, 0); err != nil {
		fasthttp.ReleaseResponse(framing)
		return x.failed("read body", c, err, "response_body", "response_idle")
	}
	b := &upstreamBody{
		x:        *x,
		framing:  framing,
		c:        c,
		reusable: !serverClose && cl != -2, // -2: the body ends at close
	}
	x.streams = true // b.x finishes the exchange now
	x.leave = nil    // and leaves the destination
	if http10 && cl < 0 {
		// RFC 9112 6.1: no chunked framing towards an HTTP/1.0 app. The
		// body goes as it comes, and its end is the connection's close.
		x.s.streamRaw(x.ctx, b)
		return nil
	}
	size := cl
	if size < 0 {
		size = -1 // chunked towards the app
	}
	resp.SetBodyStream(b, size)
	return nil
}

// failed ends an attempt that failed on c: it records what the retry rules
// and the status need (before c goes back: after that nothing reads it),
// discards c, and tells apart an app that went away (phase) from an
// upstream that timed out (timeoutPhase).
func (x *exchange) failed(op string, c *pool.Conn, err error, phase, timeoutPhase string) error {
	ue := &upstreamError{
		op: op, endpoint: c.Endpoint(), err: err,
		reused: c.Reused(), written: c.BytesWritten(), read: c.BytesRead(),
		timeout: timedOut(err),
	}
	aborted := x.app.wasAborted()
	x.giveBack(c, pool.CauseError)
	switch {
	case aborted:
		x.aborted = phase
	case ue.timeout:
		x.s.obs.UpstreamTimeout(timeoutPhase)
	}
	return ue
}

// giveBack ends c's turn in this exchange, the one place that does: the
// app's watch lets go of it, then c goes back to the pool (cause "") or is
// discarded for cause. The exchange never touches c again. An upgrade's
// connection, dialed for a pair that did not come about (any answer but
// 101), never goes back: what the upstream made of the upgrade request is
// not known.
func (x *exchange) giveBack(c *pool.Conn, cause pool.Cause) {
	x.app.detach()
	// For outlier ejection: an upstream that failed the exchange (not an
	// app that went away) or answered 5xx.
	x.up.Pool.Outcome(c, cause == pool.CauseError && !x.app.wasAborted() || x.ctx.Response.Header.StatusCode() >= 500)
	if cause == "" && x.upgrade {
		cause = pool.CausePairEnd
	}
	if cause == "" {
		x.up.Pool.Release(c)
		return
	}
	x.up.Pool.Discard(c, cause)
}

// closeCause is how a connection ends after a complete response: reused,
// or closed because the server said Connection: close.
func closeCause(serverClose bool) pool.Cause {
	if serverClose {
		return pool.CauseServerClose
	}
	return ""
}

// readResponseHeader reads the final response header, skipping interim 1xx
// responses (103 Early Hints) the way fasthttp's own client does, and
// returns its bytes as they came (a view of br's buffer, valid until br is
// read again). It does not Reset resp: that would also clear the server's
// choices to add no Date and no default Content-Type, and to keep header
// names as they came.
func readResponseHeader(resp *fasthttp.Response, br *bufio.Reader) ([]byte, error) {
	resp.ResetBody()
	resp.SkipBody = false
	resp.StreamBody = false
	for interim := 0; ; interim++ {
		head, err := readResponseHead(&resp.Header, br)
		if err != nil {
			return nil, err
		}
		code := resp.Header.StatusCode()
		if code < 100 || code >= 200 || code == fasthttp.StatusSwitchingProtocols {
			return head, nil
		}
		if interim == maxInterimResponses {
			return nil, errTooManyInterim
		}
	}
}

// retryable reports whether a request whose attempt failed with ue may be
// sent again on another connection. A timeout never is: the upstream may
// be working on it, and a retry would double its load. An idempotent
// request may, if the connection was a reused one (so it may have gone
// stale) and not one byte of the response arrived. Any request may if not
// one byte of it was written. A streamed body cannot be sent twice once
// its first byte was read.
func retryable(req *fasthttp.Request, ue *upstreamError, streamed bool) bool {
	switch {
	case streamed, ue.timeout:
		return false
	case ue.written == 0:
		return true
	}
	return idempotent(req) && ue.reused && ue.read == 0
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
