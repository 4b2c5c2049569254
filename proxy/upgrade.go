package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Upgrade on HTTP listeners (RFC 9110 7.8). A request whose Connection
// lists "upgrade" and that carries an Upgrade header (WebSocket) goes
// through handle and roundTrip like any other, with three differences: its
// Connection and Upgrade headers are forwarded; its upstream connection is
// newly dialed (AcquireNew) and never goes back to the pool; and it is
// never sent twice. A 101 Switching Protocols ends the exchange here
// (switchProtocols): the 101's head goes to the app byte for byte, and the
// app connection and the upstream connection become a pair (pair.go), as in
// tcp mode, under the listener's half_close policy, timeouts and linger.
// Any other answer is an ordinary response, after which the app connection
// closes: what the app sent after an upgrade request is not known to be
// HTTP (the framing guard stops following there).
//
// Ownership after the 101: the exchange, on fasthttp's handler goroutine,
// hands both connections to an upgraded and asks fasthttp to hijack the app
// connection. fasthttp then either hijacks it (serveUpgraded, on a
// goroutine of fasthttp's, which starts runUpgraded) or, if it fails before
// that (flushing an earlier pipelined response to an app that left),
// closes it (connStateChanged → abandon). Whichever takes the upgraded out
// of appConn.hijack owns it; runUpgraded closes both sides.

var (
	// errUnaskedSwitch is a 101 to a request that did not ask to upgrade:
	// the connection no longer speaks HTTP (502, discarded).
	errUnaskedSwitch = fmt.Errorf("%w: 101 Switching Protocols to a request that did not ask to upgrade", errBadResponse)
	// errShuttingDown is a 101 that came after Shutdown began: no pair is
	// made, the app gets 503 and the upstream connection an RST.
	errShuttingDown = errors.New("upgrade not made: the listener is shutting down")
)

// upgraded is an upgrade between its 101 and its pair: both connections
// and what has already been read of them.
type upgraded struct {
	s      *Server
	app    *appConn
	up     *Upstream
	c      *pool.Conn
	upConn net.Conn
	toApp  []byte // the 101's head and what the upstream sent behind it
	start  time.Time
	leave  func() // a capture listener's: ends the use of up's destination; nil otherwise
	// pending is in app.hijack until fasthttp's hijack or close takes it.
	pending *pendingHijack
}

// leaveDestination ends a capture listener's pair's use of its
// destination, once both sides are closed.
func (u *upgraded) leaveDestination() {
	if u.leave != nil {
		u.leave()
	}
}

// switchProtocols takes c, on which the upstream answered the exchange's
// upgrade request with 101 (head, its bytes as they came), out of the
// exchange: from here on c and the app connection belong to the upgrade
// (see above), and fasthttp writes no response. It returns an error, and
// has closed c, if no pair can be made.
func (x *exchange) switchProtocols(c *pool.Conn, head []byte) error {
	s := x.s
	x.app.detach() // the pair watches both sides itself
	// head and what follows it are views of c's read buffer, which goes
	// back to its pool when c is closed: the pair gets a copy.
	br := c.Reader()
	rest, _ := br.Peek(br.Buffered())
	toApp := make([]byte, 0, len(head)+len(rest))
	toApp = append(append(toApp, head...), rest...)

	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		x.up.Pool.Reset(c, pool.CauseShutdown)
		return errShuttingDown
	}
	s.pairs.wg.Add(1)
	s.mu.Unlock()
	u := &upgraded{s: s, app: x.app, up: x.up, c: c, upConn: c.NetConn(), toApp: toApp, start: time.Now(), leave: x.leave}
	x.leave = nil // the pair's now
	u.pending = &pendingHijack{abandon: u.abandon}
	x.app.hijack.Store(u.pending)
	x.ctx.HijackSetNoResponse(true)
	x.ctx.Hijack(func(nc net.Conn) { s.serveUpgraded(u, nc) })
	return nil
}

// serveUpgraded is the hijack of an upgraded app connection, on fasthttp's
// goroutine: it takes the bytes fasthttp read past the request, and starts
// the pair on a goroutine of its own. Returning at once lets fasthttp's
// read buffer (the size of the header limit) go to the garbage collector
// (KeepHijackedConns) instead of living as long as the pair.
func (s *Server) serveUpgraded(u *upgraded, nc net.Conn) {
	if u.app.hijack.Swap(nil) != u.pending {
		return // abandoned: fasthttp hijacks or closes, never both, so never
	}
	toUp := takeBuffered(nc, u.app.Conn)
	go s.runUpgraded(u, toUp)
}

// takeBuffered returns what fasthttp read from the app past the upgrade
// request (its read buffer, behind nc's Read), without reading the
// socket: with raw's read deadline in the past, a Read that would reach
// the socket fails at once, and the buffer's bytes come out before it.
// The pair sets raw's deadlines anew.
func takeBuffered(nc, raw net.Conn) []byte {
	_ = raw.SetReadDeadline(aLongTimeAgo)
	b, _ := io.ReadAll(nc)
	return b
}

// runUpgraded owns an upgrade's two connections from the hijack to their
// close: it runs the pair, with the bytes already read of each side
// written first (the app's to the upstream, the 101's head and what
// followed it to the app), and closes both sides as the pair's end says.
func (s *Server) runUpgraded(u *upgraded, toUp []byte) {
	defer s.pairs.wg.Done()
	p := newPair(u.app.Conn, u.upConn, *s.policy.Load())
	p.preload(toUp, u.toApp)
	defer u.leaveDestination() // after u.c is given back by runPair
	runPair(&s.pairs, s.obs, s.log, &s.accessLog, p, u.app, u.up, u.c, u.start)
}

// runPair runs p, the pair of app and c, to its end and closes both sides
// as the end says, for a tcp listener's pair (servePair) and an upgrade's
// (runUpgraded) alike; start is when the pair's app connection began, for
// the access log. Nothing touches app or c after.
func runPair(ps *pairSet, obs Observer, log *zap.Logger, accessLog *atomic.Bool, p *pair, app *appConn, up *Upstream, c *pool.Conn, start time.Time) {
	ps.add(p)
	obs.PairOpened()
	end := p.run()
	ps.remove(p)
	endpoint := c.Endpoint() // c is not read once it has gone back
	closePairSides(&end, app, up, c, p.policy.halfCloseTimeout)
	obs.PairEnded(end.cause, end.toUpstream, end.toApp)
	if accessLog.Load() {
		log.Info("pair",
			zap.Stringer("app", app.RemoteAddr()), zap.String("upstream", up.Name),
			zap.String("endpoint", endpoint), zap.String("end", end.cause),
			zap.Int64("to_upstream", end.toUpstream), zap.Int64("to_app", end.toApp),
			zap.Duration("duration", time.Since(start)))
	}
}

// closePairSides closes both sides of an ended pair (a tcp listener's or
// an upgrade's) as end says: the app's with the listener's close policy,
// or an RST; the upstream's after its FIN (awaitFIN, with a graceful
// linger: an upstream that never answers our FIN would keep our socket in
// FIN_WAIT2 and its own in CLOSE_WAIT) or with an RST; never back to the
// pool. Nothing touches app or c after.
func closePairSides(end *pairEnd, app *appConn, up *Upstream, c *pool.Conn, halfCloseTimeout time.Duration) {
	if end.resetApp {
		app.abort()
	} else {
		app.Close()
	}
	if end.cause == PairShutdown {
		end.resetUp = true // unstuck is going away: it cannot wait for the upstream's FIN
	}
	if !end.resetUp && !end.upstreamFIN && up.Pool.Linger().Mode == sockopt.Graceful {
		end.resetUp = !awaitFIN(c.NetConn(), halfCloseTimeout)
	}
	if end.resetUp {
		up.Pool.Reset(c, upstreamCause(end.cause))
	} else {
		up.Pool.Discard(c, upstreamCause(end.cause))
	}
}

// abandon ends an upgrade whose app connection fasthttp closed instead of
// hijacking it: the upstream, which has switched protocols, gets an RST.
func (u *upgraded) abandon() {
	defer u.s.pairs.wg.Done()
	u.up.Pool.Reset(u.c, pool.CausePairEnd)
	u.leaveDestination()
	if ce := u.s.log.Check(zapcore.DebugLevel, "upgrade abandoned: the app connection closed before its pair began"); ce != nil {
		ce.Write(zap.Stringer("app", u.app.RemoteAddr()), zap.String("endpoint", u.c.Endpoint()))
	}
}

// refuseUpgrade answers an upgrade request on a listener that does not
// make them (upgrade: false) with 501, and says why: the app's client
// would otherwise report a bare failure to switch.
func (s *Server) refuseUpgrade(ctx *fasthttp.RequestCtx) {
	s.refuse(ctx, fasthttp.StatusNotImplemented, RefuseUpgrade, nil)
	ctx.Response.SetBodyString(upgradeRefusedBody)
}

const upgradeRefusedBody = "Not Implemented: this listener does not forward Upgrade requests (WebSocket); its upgrade setting is false\n"
