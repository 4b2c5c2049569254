// Package pool owns every upstream connection of one upstream: it dials
// them, hands them out for one request at a time, takes them back, and
// closes an idle one the moment its peer half-closes it.
//
// The life of a connection: dial (Acquire), which registers its socket with
// the epoll watcher once, for good → serve one request (the caller) →
// Release → idle → Acquire again once a peek finds it clean; or closed: by
// the watcher at the peer's FIN or RST or the kernel's timeout (keepalive,
// user_timeout), by the peek at unsolicited bytes,
// or at idle_timeout, max_lifetime, max_requests, max_idle, its retirement
// before the server's own idle timeout (retire.go) or Close. A
// request costs the pool no epoll_ctl, only the peek. Every close applies
// the upstream's linger.
package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

var (
	// ErrExhausted means every endpoint had max_conns connections busy
	// for the whole acquire_timeout. Answer 503; raise pool.max_conns or
	// find out why the upstream is slow.
	ErrExhausted = errors.New("pool: no free upstream connection within acquire_timeout")
	// ErrClosed means the pool was closed (shutdown or reload); the
	// request should be answered with an error, not retried here.
	ErrClosed = errors.New("pool: closed")
)

// DialError is a failure to connect to an endpoint. Nothing was sent, so
// any request may be retried elsewhere.
type DialError struct {
	Addr   string
	Err    error
	Reason string // DialErrorReason(Err), for metrics and logs
}

func (e *DialError) Error() string {
	var op *net.OpError
	if errors.As(e.Err, &op) {
		return e.Err.Error() // already "dial tcp <addr>: ..."
	}
	return fmt.Sprintf("dial %s: %v", e.Addr, e.Err)
}
func (e *DialError) Unwrap() error { return e.Err }

// Config is what a pool needs. A zero value means the documented default.
type Config struct {
	Name      string   // the upstream's name, for logs and metrics
	Endpoints []string // host:port each; at least one
	Linger    sockopt.Linger

	MaxConns       int           // per endpoint, open or dialing; default 512
	MaxIdle        int           // per endpoint; default 128
	IdleTimeout    time.Duration // close connections idle this long; 0: never
	MaxLifetime    time.Duration // close connections this old once idle; 0: never
	MaxRequests    int           // close after this many requests; 0: unlimited
	AcquireTimeout time.Duration // wait for a free slot at MaxConns; 0: no limit
	DialTimeout    time.Duration // 0: the kernel's own connect timeout

	// Balance is how an Acquire picks an endpoint: BalanceP2C (default),
	// BalanceLeastConn or BalanceRoundRobin, on requests in flight.
	Balance string
	// Outlier ejects endpoints whose requests keep failing.
	Outlier OutlierConfig

	// MinIdle connections, across the endpoints, are kept dialed and idle
	// (a warm pool): a background goroutine replaces each one taken or
	// closed, backing off while dials fail. 0: none.
	MinIdle int
	// RetireMargin: an idle connection is retired (closed by unstuck,
	// CauseRetired) at (1 - RetireMargin) of its server's idle timeout,
	// as the server declared it (Conn.SetServerKeepAlive) or as learned
	// from the idle closes the watcher saw (retire.go). Between 0 and 1;
	// 0: DefaultRetireMargin. NoLearnIdleTimeout turns learning off
	// (pool.learn_idle_timeout: false); declared timeouts still count.
	RetireMargin       float64
	NoLearnIdleTimeout bool

	// Stream pools serve TCP pairs: a connection is handed out once, for
	// good, and bytes a server sends first (a banner, a greeting) are the
	// app's, not unsolicited: they stay in the socket for the pair.
	// Connections get no buffers.
	Stream bool

	// TLS, if not nil, makes every connection a TLS client connection
	// (tls.go). An empty ServerName is each endpoint's host; give the
	// config a ClientSessionCache for resumption. TLSHandshakeTimeout
	// bounds the handshake; 0: 5s.
	TLS                 *tls.Config
	TLSHandshakeTimeout time.Duration

	// ResponseHeaderBytes caps a response's status line and headers: it is
	// the size of each busy connection's read buffer
	// (limits.response_header_bytes); 0: 64 KiB.
	ResponseHeaderBytes int

	// Outbound sockets.
	Source      netip.Addr        // bind this local IP (IP_BIND_ADDRESS_NO_PORT); zero: the kernel's choice
	SourcePorts PortRange         // with Source: the ephemeral ports to use; zero: the system range
	Keepalive   sockopt.Keepalive // TCP keepalive; zero Idle: off
	UserTimeout time.Duration     // TCP_USER_TIMEOUT; 0: the kernel's default
	Mark        uint32            // SO_MARK (capture.mark: the capture rules pass such connections); 0: none

	Logger   *zap.Logger // default: no logging
	Observer Observer    // default: none
}

func (c *Config) applyDefaults() {
	if c.MaxConns <= 0 {
		c.MaxConns = 512
	}
	if c.MaxIdle <= 0 {
		c.MaxIdle = 128
	}
	if c.RetireMargin <= 0 || c.RetireMargin >= 1 {
		c.RetireMargin = DefaultRetireMargin
	}
	if c.ResponseHeaderBytes <= 0 {
		c.ResponseHeaderBytes = defaultResponseHeaderBytes
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
}

// PortRange is an inclusive range of local ports; zero means unset.
type PortRange struct{ Lo, Hi uint16 }

// Pool is the set of connections to one upstream's endpoints.
type Pool struct {
	cfg     Config
	log     *zap.Logger
	dialer  net.Dialer
	eps     []*endpoint
	rr      atomic.Uint32 // round-robin start for the next Acquire
	watch   *watcher
	readers readerPool     // busy connections' read buffers
	done    chan struct{}  // closed by Close; stops the cleaner
	runWG   sync.WaitGroup // the watcher and the cleaner
	closeq  chan victim    // the watcher's closes, for the closers
	closers sync.WaitGroup

	// dialCtx ends with Close, cancelling the dials in flight.
	dialCtx     context.Context
	cancelDials context.CancelFunc

	mu     sync.Mutex
	closed bool
	nextID uint64
	all    map[uint64]*Conn // every open connection, by watcher id
	// dialing counts the dials in flight, from the check of closed to the
	// socket's registration with the watcher: Close waits for them before
	// it closes the epoll set. Add only under mu while !closed.
	dialing sync.WaitGroup
	// lingering counts the bounded-linger closes running on their own
	// goroutines (closeLingering). Add only under mu while !lingerWaited;
	// Close sets lingerWaited and waits for them, and closes after that
	// run on their caller's goroutine.
	lingering    sync.WaitGroup
	lingerWaited bool

	// downs counts the endpoints with a reason to take no requests
	// (endpointState): while it is 0, no acquire looks at the clock.
	downs int

	victims  []victim // onReadable's buffer; the watcher goroutine owns it
	cleaning bool     // the cleaner goroutine runs
	// cleanAt, guarded by mu, is when the cleaner wakes next (zero: it is
	// not sleeping on a deadline); cleanKick (buffered 1, made under mu
	// before the first cleaner starts, never changed) wakes it sooner, for
	// an earlier deadline (wakeCleanerLocked).
	cleanAt   time.Time
	cleanKick chan struct{}

	// warmKick wakes the warmer (buffered 1) when a connection leaves the
	// idle list; nil without MinIdle.
	warmKick chan struct{}
}

// endpoint is one host:port. All fields but addr are guarded by Pool.mu.
type endpoint struct {
	addr          string
	tls           *tls.Config // Config.TLS with this endpoint's ServerName; nil: plain TCP
	conns         int         // open or being dialed; at most MaxConns
	idle          connList    // most recently released at the front
	waiters       []*waiter   // FIFO of Acquire calls waiting for a slot
	finAges       idleFINs    // how long idle connections lasted before the server's FIN (retire.go)
	endpointState             // why it takes no new requests, if it does not (endpoints.go)
}

// waiter is an Acquire blocked at MaxConns. It receives either a released
// connection or, with c == nil, a slot to dial into.
type waiter struct {
	ch     chan grant // buffered 1: sends never block
	served bool       // guarded by Pool.mu
}

type grant struct {
	c   *Conn
	err error
}

// New creates a pool and starts its watcher. Close releases both.
func New(cfg Config) (*Pool, error) {
	cfg.applyDefaults()
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("pool: no endpoints")
	}
	w, err := newWatcher()
	if err != nil {
		return nil, err
	}
	p := &Pool{
		cfg:    cfg,
		log:    cfg.Logger.Named("pool").With(zap.String("upstream", cfg.Name)),
		dialer: newDialer(cfg),
		watch:  w,
		done:   make(chan struct{}),
		all:    make(map[uint64]*Conn),
	}
	p.dialCtx, p.cancelDials = context.WithCancel(context.Background())
	p.readers.size = cfg.ResponseHeaderBytes
	for _, addr := range cfg.Endpoints {
		p.eps = append(p.eps, p.newEndpoint(Addr{Addr: addr}))
	}
	p.closeq = make(chan victim, 1024)
	for range 2 * runtime.GOMAXPROCS(0) { // close(2) on loopback also runs the peer's side
		p.closers.Add(1)
		go p.closer()
	}
	p.runWG.Add(1)
	go p.watchLoop()
	if cfg.MinIdle > 0 {
		p.warmKick = make(chan struct{}, 1)
		p.runWG.Add(1)
		go p.warmer()
	}
	return p, nil
}

// watchLoop runs the watcher until Close closes its epoll set.
func (p *Pool) watchLoop() {
	defer p.runWG.Done()
	p.watch.run(p.onReadable)
}

// SettleTime is how long a released connection must have been idle before
// a careful Acquire takes it. A server that closes right after a response
// (without saying Connection: close) sends its FIN within microseconds on
// an idle host; 5 ms also covers a busy one. By then the watcher or the
// release has seen the FIN and acted on it, or the peek before reuse finds
// it.
const SettleTime = 5 * time.Millisecond

// newDialer returns the dialer for cfg. Every option is set on the socket
// before it binds or connects (see sockopt). Go's own keepalive default is
// off so that only cfg.Keepalive applies.
func newDialer(cfg Config) net.Dialer {
	d := net.Dialer{
		Timeout:   cfg.DialTimeout,
		KeepAlive: -1,
		Control: sockopt.Control(func(fd int) error {
			if err := sockopt.SetReuseAddr(fd); err != nil {
				return err
			}
			if cfg.Source.IsValid() {
				if err := sockopt.SetBindAddressNoPort(fd); err != nil {
					return err
				}
				if cfg.SourcePorts.Lo != 0 {
					if err := sockopt.SetLocalPortRange(fd, cfg.SourcePorts.Lo, cfg.SourcePorts.Hi); err != nil {
						return err
					}
				}
			}
			if err := sockopt.SetKeepalive(fd, cfg.Keepalive); err != nil {
				return err
			}
			if cfg.Mark != 0 {
				if err := sockopt.SetMark(fd, cfg.Mark); err != nil {
					return fmt.Errorf("SO_MARK (capture.mark needs CAP_NET_ADMIN): %w", err)
				}
			}
			if cfg.UserTimeout > 0 {
				return sockopt.SetUserTimeout(fd, cfg.UserTimeout)
			}
			return nil
		}),
	}
	if cfg.Source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: cfg.Source.AsSlice()}
	}
	return d
}

// Acquire returns a connection for one request: an idle one if any endpoint
// has one, else a new one where an endpoint is below MaxConns, else the
// first one released or slot freed within AcquireTimeout.
//
// Idle connections are reused most recently released first. A careful
// Acquire, for a request that cannot be retried once written (a POST),
// takes the longest-idle connection instead, and only if it is settled
// (idle for at least SettleTime); otherwise it dials a new one. Only when
// every endpoint is at MaxConns does it take an unsettled one.
//
// The caller owns the connection until it passes it to Release or Discard,
// and never touches it after that.
func (p *Pool) Acquire(careful bool) (*Conn, error) {
	var now time.Time
	if careful {
		now = time.Now()
	}
	settled := careful
	// One lock from the balancer's pick to the idle connection taken: the
	// request path takes p.mu once here and once in Release, which under
	// load is where handlers on different Ps meet.
	p.mu.Lock()
	start, err := p.pickLocked()
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	for { // p.mu held
		// The endpoint the balancer picked first: its idle connection, or
		// a new one to it. Only when it has neither room nor an idle one
		// do the others' idle connections count, so that idle
		// connections do not keep a less busy endpoint out.
		if c := p.acquireIdleUnlock(start, 1, settled, now); c != nil {
			p.warmHit()
			return c, nil
		}
		p.mu.Lock()
		if ep := p.eps[start%len(p.eps)]; !p.closed && ep.conns < p.cfg.MaxConns && p.usableLocked(ep) {
			ep.conns++
			p.mu.Unlock()
			p.warmMiss()
			return p.dial(ep)
		}
		if c := p.acquireIdleUnlock(start, len(p.eps), settled, now); c != nil {
			p.warmHit()
			return c, nil
		}
		if hook := testHookAcquireRelock.Load(); hook != nil {
			(*hook)()
		}
		// Between acquireIdleUnlock's unlock and this lock, a Close, a freed
		// slot or a Release may have landed: each is seen here, before
		// queueing, since nothing would tell a waiter queued after it.
		p.mu.Lock()
		if done, c, err := p.dialFreeSlotLocked(start); done {
			p.warmMiss()
			return c, err
		}
		if !settled && !p.anyIdleLocked() {
			c, err := p.waitUnlock(start, false)
			if err != errRepick {
				return c, err
			}
			p.mu.Lock()
			if start, err = p.pickLocked(); err != nil {
				p.mu.Unlock()
				return nil, err
			}
			continue
		}
		// No room to dial: an unsettled connection beats waiting (careful),
		// and one released since acquireIdleUnlock looked is taken now.
		settled = false
	}
}

// testHookAcquireRelock runs in Acquire between an acquireIdleUnlock that found
// nothing and the lock that decides to dial or wait.
var testHookAcquireRelock atomic.Pointer[func()]

// AcquireNew returns a newly dialed connection, never an idle one. It is
// for a retry after a failure on a reused connection: the idle ones may be
// as stale as that one was.
//
// It dials where an endpoint is below MaxConns. Where all are at MaxConns,
// it closes the longest-idle connection it finds (CauseReplaced) and dials
// in its slot. With none idle it waits like Acquire, up to AcquireTimeout;
// a released connection handed to it is closed too (CauseReplaced), and it
// dials in that slot: a rare path, and putting the connection back would
// need its own peek and waiter hand-off.
//
// The caller owns the connection until it passes it to Release or Discard,
// and never touches it after that.
func (p *Pool) AcquireNew() (*Conn, error) {
	p.mu.Lock()
	start, err := p.pickLocked()
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	if done, c, err := p.dialFreeSlotLocked(start); done {
		return c, err
	}
	for i := range p.eps {
		ep := p.eps[(start+i)%len(p.eps)]
		if !p.usableLocked(ep) {
			continue
		}
		if c := ep.idle.back; c != nil {
			p.takeLocked(c)
			delete(p.all, c.id) // its slot stays counted, for the new one
			p.mu.Unlock()
			p.closeConn(c, CauseReplaced)
			return p.dial(ep)
		}
	}
	c, err := p.waitUnlock(start, true)
	if err == errRepick {
		return p.AcquireNew() // the endpoint waited on left: pick again
	}
	return c, err
}

// dialFreeSlotLocked, with p.mu held, ends an acquire that need not
// wait: ErrClosed if the pool is closed, else a dial into a free slot;
// both unlock p.mu. With every endpoint at MaxConns it returns done false
// and p.mu still held.
func (p *Pool) dialFreeSlotLocked(start int) (done bool, c *Conn, err error) {
	if p.closed {
		p.mu.Unlock()
		return true, nil, ErrClosed
	}
	ep := p.reserveSlotLocked(start)
	if ep == nil {
		return false, nil, nil
	}
	p.mu.Unlock()
	c, err = p.dial(ep)
	return true, c, err
}

// reserveSlotLocked counts a new connection on the first endpoint from
// start (round-robin) below MaxConns and returns it, for the caller to
// dial; nil if every endpoint is at MaxConns. p.mu must be held.
func (p *Pool) reserveSlotLocked(start int) *endpoint {
	for i := range p.eps {
		ep := p.eps[(start+i)%len(p.eps)]
		if ep.conns < p.cfg.MaxConns && p.usableLocked(ep) {
			ep.conns++
			return ep
		}
	}
	return nil
}

// waitUnlock queues a waiter on start's endpoint, unlocks p.mu (which
// must be held) and waits as wait does.
func (p *Pool) waitUnlock(start int, fresh bool) (*Conn, error) {
	ep := p.eps[start%len(p.eps)]
	if !p.usableLocked(ep) {
		// It went out since the pick (Acquire drops p.mu for the peek):
		// a slot freed there must not be dialed, nor waited for.
		p.mu.Unlock()
		return nil, errRepick
	}
	w := &waiter{ch: make(chan grant, 1)}
	ep.waiters = append(ep.waiters, w)
	p.mu.Unlock()
	return p.wait(ep, w, fresh)
}

// acquireIdleUnlock hands out an idle connection that passes the peek
// before reuse, trying span endpoints in round-robin order from start;
// settled asks for one idle since at least SettleTime before now. It closes
// the dead ones it finds on the way, and returns nil if none is left. p.mu
// must be held; it is released before the return. The one syscall of a
// hand-out, the peek, runs outside p.mu.
func (p *Pool) acquireIdleUnlock(start, span int, settled bool, now time.Time) *Conn {
	for { // p.mu held
		if p.closed {
			p.mu.Unlock()
			return nil
		}
		c := p.popIdleLocked(start, span, settled, now)
		retire := c != nil && p.retiredLocked(c)
		if retire {
			p.dropLocked(c)
		}
		p.mu.Unlock()
		if c == nil {
			return nil
		}
		if retire {
			p.closeConn(c, CauseRetired)
			p.mu.Lock()
			continue
		}
		// Taken out of the idle list under the lock: from now on the watcher
		// only notes a FIN or RST for Release (see Release). Peek before
		// reuse. It catches a FIN that landed after the watcher's last
		// look and before it could act, and unsolicited bytes, which never
		// wake the watcher (see watchEvents): here, not on arrival, is
		// where an idle connection that received bytes nobody asked for
		// is closed (CauseUnsolicited), before a request goes on it.
		r := p.peek(c)
		if r == sockopt.Open {
			p.handOut(c)
			return c
		}
		p.mu.Lock()
		p.dropLocked(c)
		p.mu.Unlock()
		p.closeConn(c, causeOfPeek(r))
		p.mu.Lock()
	}
}

// popIdleLocked takes an idle connection out of its endpoint's idle list:
// the most recently released, or with settled the longest idle, and only
// if it has been idle for at least SettleTime. p.mu must be held.
func (p *Pool) popIdleLocked(start, span int, settled bool, now time.Time) *Conn {
	for i := range min(span, len(p.eps)) {
		ep := p.eps[(start+i)%len(p.eps)]
		if !p.usableLocked(ep) {
			continue
		}
		c := ep.idle.front
		if settled {
			c = ep.idle.back
			if c != nil && now.Sub(c.idleSince) < SettleTime {
				continue // nothing settled here
			}
		}
		if c == nil {
			continue
		}
		p.takeLocked(c)
		return c
	}
	return nil
}

// wait blocks an Acquire at MaxConns until a grant or AcquireTimeout. With
// fresh (AcquireNew) a connection handed over is replaced by a new one.
func (p *Pool) wait(ep *endpoint, w *waiter, fresh bool) (c *Conn, err error) {
	start := time.Now()
	defer func() { p.cfg.Observer.Waited(time.Since(start), errors.Is(err, ErrExhausted)) }()
	var timeout <-chan time.Time // nil: wait as long as it takes
	if p.cfg.AcquireTimeout > 0 {
		t := time.NewTimer(p.cfg.AcquireTimeout)
		defer t.Stop()
		timeout = t.C
	}
	var g grant
	select {
	case g = <-w.ch:
	case <-timeout:
		p.mu.Lock()
		if !w.served {
			for i, x := range ep.waiters {
				if x == w {
					ep.waiters = append(ep.waiters[:i], ep.waiters[i+1:]...)
					break
				}
			}
			p.mu.Unlock()
			return nil, ErrExhausted
		}
		p.mu.Unlock()
		g = <-w.ch // served just as the timer fired
	}
	switch {
	case g.err != nil:
		return nil, g.err
	case g.c != nil && fresh:
		p.mu.Lock()
		delete(p.all, g.c.id) // its slot stays counted, for the new one
		p.mu.Unlock()
		p.closeConn(g.c, CauseReplaced)
		return p.dial(ep)
	case g.c != nil:
		return p.handedOver(g.c)
	default:
		return p.dial(ep) // a slot was freed for us
	}
}

// handedOver readies a connection a Release handed straight to this
// waiter. It gets the same peek before reuse as an idle one in acquireIdleUnlock:
// the peer may have ended it while it was busy (Release dropped the note
// in c.missed for this peek) or since. A dead one is closed and the waiter
// dials into its slot instead, which stays counted in ep.conns. The waiter
// owns c from the moment it received it.
func (p *Pool) handedOver(c *Conn) (*Conn, error) {
	r := p.peek(c)
	if r == sockopt.Open {
		p.handOut(c)
		return c, nil
	}
	p.mu.Lock()
	delete(p.all, c.id) // the watcher drops events for it from now on
	p.mu.Unlock()
	p.closeConn(c, causeOfPeek(r))
	return p.dial(c.ep)
}

// dial opens a connection on a slot already counted in ep.conns; on
// failure the slot is freed. Close waits for it (p.dialing) and cancels its
// connect; a dial that Close overtakes closes its socket (CauseShutdown)
// and returns ErrClosed, so no socket is registered with a closed watcher.
// Every failure after the connect closes the socket through closeConn.
func (p *Pool) dial(ep *endpoint) (*Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.forgetLocked(ep)
		p.mu.Unlock()
		return nil, ErrClosed
	}
	p.dialing.Add(1)
	p.mu.Unlock()
	defer p.dialing.Done()

	nc, err := p.dialer.DialContext(p.dialCtx, "tcp", ep.addr)
	if err != nil && p.dialCtx.Err() != nil {
		p.mu.Lock()
		p.forgetLocked(ep)
		p.mu.Unlock()
		return nil, ErrClosed // cancelled by Close: no dial error to count
	}
	if err != nil {
		if ce := p.log.Check(zapcore.DebugLevel, "upstream dial failed"); ce != nil {
			ce.Write(zap.String("endpoint", ep.addr), zap.Error(err))
		}
		return nil, p.failDial(ep, nil, err, true)
	}
	c := &Conn{ep: ep, nc: nc, tcp: nc, created: time.Now(), readers: &p.readers}
	c.io.nc = nc
	c.peekFn = c.peekFD
	if hook := testHookDialed.Load(); hook != nil {
		(*hook)(c)
	}
	raw, err := rawConn(nc)
	c.raw = raw
	p.mu.Lock()
	if err != nil {
		p.mu.Unlock()
		return nil, p.failDial(ep, c, err, false)
	}
	if p.closed {
		p.forgetLocked(ep)
		p.mu.Unlock()
		p.closeConn(c, CauseShutdown) // Close is waiting for this dial
		return nil, ErrClosed
	}
	p.nextID++
	c.id = p.nextID
	// In p.all before it is registered, so that a FIN the watcher reports
	// from the first moment (EPOLL_CTL_ADD reports one already there) is
	// noted for Release, not dropped as an event for a closed connection.
	p.all[c.id] = c
	p.mu.Unlock()
	// A stream pool's connection is watched only once it is idle
	// (putIdle): one a pair takes at once never is, and saves the
	// epoll_ctl.
	if werr := p.watchConn(c); !p.cfg.Stream && werr != nil {
		return nil, p.failDial(ep, c, fmt.Errorf("watch: %w", werr), false)
	}
	if ep.tls != nil {
		if err := p.handshake(c); err != nil {
			p.log.Warn("upstream TLS handshake failed", zap.String("endpoint", ep.addr),
				zap.String("reason", DialErrorReason(err)), zap.Error(err))
			return nil, p.failDial(ep, c, err, true)
		}
	}
	p.cfg.Observer.Dialed(ep.addr, nil)
	if !p.cfg.Stream {
		c.attachBuffers()
	}
	if ce := p.log.Check(zapcore.DebugLevel, "upstream connection opened"); ce != nil {
		ce.Write(zap.String("endpoint", ep.addr), zap.Stringer("local", nc.LocalAddr()))
	}
	return c, nil
}

// watchConn adds c's socket to the watcher's epoll set, for its whole life
// (closing the socket removes it); in a stream pool it does nothing until
// c is about to be idle.
func (p *Pool) watchConn(c *Conn) error {
	if p.cfg.Stream && !c.watched {
		return nil
	}
	var werr error
	if err := c.control(func(fd int) { werr = p.watch.register(fd, c.id) }); err != nil {
		werr = err
	}
	return werr
}

// failDial ends a dial that failed and returns its DialError: c, if the
// connect got that far, closes (CauseError), the slot is freed, and the
// failure is counted.
// A failure of the endpoint's own (the connect, the TLS handshake) also
// counts toward its outlier ejection; one of ours (a descriptor, the
// watcher) does not.
func (p *Pool) failDial(ep *endpoint, c *Conn, err error, endpointsFault bool) *DialError {
	de := &DialError{Addr: ep.addr, Err: err, Reason: DialErrorReason(err)}
	p.cfg.Observer.Dialed(ep.addr, de)
	var ejected []*Conn
	p.mu.Lock()
	if c != nil {
		p.dropLocked(c) // c.id is 0 before p.all has it: no entry to delete
	} else {
		p.forgetLocked(ep)
	}
	if endpointsFault {
		ejected = p.outcomeLocked(ep, true, nil)
	}
	p.mu.Unlock()
	if c != nil {
		p.closeConn(c, CauseError)
	}
	for _, e := range ejected {
		p.closeConn(e, CauseEjected)
	}
	return de
}

// testHookDialed runs in dial between the connect and the check of closed.
var testHookDialed atomic.Pointer[func(*Conn)]

// rawConn returns nc's descriptor, for use inside its Control only.
func rawConn(nc net.Conn) (syscall.RawConn, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("pool: %T has no file descriptor", nc)
	}
	return sc.SyscallConn()
}

// Release takes back a connection whose request and response completed
// cleanly and which the server did not ask to close. It goes to a waiting
// Acquire, or idles under watch. After Release the caller must not touch c.
//
// No FIN is lost, though its epoll event fires only once, at arrival, and
// may fire while c is busy. onReadable and the locked section below both
// run under p.mu, and only the latter makes c idle, so the watcher acts
// either wholly before it or wholly after it:
//   - before: c was not idle, so the watcher noted it in c.missed; we take
//     the note and, c idle, peek (recheck), which sees the FIN and closes.
//   - after: c is idle, so the watcher closes it itself.
//   - a waiter takes c instead of the idle list: we drop the note, and the
//     waiter peeks c before its request (handedOver), as acquireIdleUnlock does.
//   - the FIN lands after the last peek that let c out (acquireIdleUnlock's or
//     handedOver's): its event comes later still, and is one of the above
//     at c's next Release; the request itself may fail, like any stale
//     connection's, and the proxy's retry rules apply.
//
// A FIN cannot be read away (EOF is returned again to every read and
// peek), so a peek any time after the FIN sees it.
//
// A second Release or Discard of c does nothing, as long as no Acquire has
// handed c out again since (then c is someone else's).
func (p *Pool) Release(c *Conn) {
	if c.released.Swap(true) {
		return // released or discarded already
	}
	c.requests.Add(1)
	switch {
	case p.cfg.MaxRequests > 0 && int(c.requests.Load()) >= p.cfg.MaxRequests:
		p.discard(c, CauseMaxRequests)
		return
	case p.cfg.MaxLifetime > 0 && time.Since(c.created) >= p.cfg.MaxLifetime:
		p.discard(c, CauseMaxLifetime)
		return
	case c.br != nil && c.br.Buffered() > 0:
		p.discard(c, CauseUnsolicited) // bytes beyond the response
		return
	case c.spent():
		p.discard(c, CauseRetired) // the server's Keep-Alive max
		return
	}
	c.detachBuffers()
	p.putIdle(c)
}

// putIdle hands c, released or newly dialed by the warmer, to a waiting
// Acquire or makes it idle under watch.
func (p *Pool) putIdle(c *Conn) {
	if p.cfg.Stream && !c.watched {
		c.watched = true
		if err := p.watchConn(c); err != nil {
			p.discard(c, CauseError)
			return
		}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.discard(c, CauseShutdown)
		return
	}
	missed := c.missed
	c.missed = false
	ep := c.ep
	if p.downs > 0 && ep.out(time.Now()) {
		// Its endpoint left (DNS) or was taken out while c was busy: c
		// closes instead of idling where nothing takes it.
		p.mu.Unlock()
		cause := CauseEjected
		if ep.draining {
			cause = CauseDrained
		}
		p.discard(c, cause)
		return
	}
	if w := ep.popWaiterLocked(); w != nil {
		p.mu.Unlock()
		w.ch <- grant{c: c} // the waiter's peek stands in for recheck
		return
	}
	if ep.idle.len >= p.cfg.MaxIdle {
		p.mu.Unlock()
		p.discard(c, CauseMaxIdle)
		return
	}
	c.idleSince = time.Now()
	ep.idle.pushFront(c)
	c.idle = true
	if d, _ := p.deadline(c); !d.IsZero() {
		p.wakeCleanerLocked(d)
	}
	p.mu.Unlock()
	if missed {
		p.recheck(c)
	}
}

// recheck peeks at a connection just made idle that the watcher saw ended
// while it was busy (a note in c.missed), and closes it if its peer has
// gone. The watcher will not report that FIN or RST again. c is idle, so
// another goroutine may take it meanwhile: the peek runs inside
// c.control, which keeps the descriptor open, with a result of its own.
func (p *Pool) recheck(c *Conn) {
	r := sockopt.PeekError
	_ = c.control(func(fd int) { r = sockopt.Peek(fd) })
	if r == sockopt.Open {
		return
	}
	p.mu.Lock()
	if !c.idle {
		p.mu.Unlock() // handed out meanwhile; its own peek decides
		return
	}
	p.takeLocked(c)
	p.dropLocked(c)
	p.mu.Unlock()
	p.closeConn(c, causeOfPeek(r))
}

// Discard closes a connection that must not be reused, for the given
// cause, and frees its slot. After Discard the caller must not touch c. A
// second Release or Discard of c does nothing, as for Release.
func (p *Pool) Discard(c *Conn, cause Cause) {
	if c.released.Swap(true) {
		return // released or discarded already
	}
	p.discard(c, cause)
}

// Reset closes c at once with an RST (SO_LINGER 0), whatever the
// upstream's linger: for a TCP pair whose app reset its side, so that the
// upstream sees an error, never a clean end of stream. After Reset the
// caller must not touch c; a second Release, Discard or Reset does nothing.
func (p *Pool) Reset(c *Conn, cause Cause) {
	if c.released.Swap(true) {
		return
	}
	c.reset = true
	p.discard(c, cause)
}

// discard is Discard, for a c already marked released.
func (p *Pool) discard(c *Conn, cause Cause) {
	if cause == CauseServerClose {
		c.requests.Add(1) // the exchange completed; the server ended the connection with it
	}
	c.detachBuffers()
	p.mu.Lock()
	p.dropLocked(c)
	p.mu.Unlock()
	p.closeConn(c, cause)
}

// closeConn is the one close of an upstream socket, dial failures
// included: it applies the upstream's linger, closes, and reports the
// close. c is a connection nobody holds any more (the pool has already
// forgotten it, with dropLocked, forgetLocked or handedOver), so the
// closing goroutine owns it. Closing the socket also takes it out of the
// watcher's epoll set.
//
// A bounded linger makes close(2) block while the kernel flushes, so until
// Close has waited for them such closes run on their own goroutine
// (closeLingering) and never hold up a request or the watcher; after
// that, on the caller's.
func (p *Pool) closeConn(c *Conn, cause Cause) {
	linger := p.cfg.Linger
	if c.reset {
		linger = sockopt.Linger{Mode: sockopt.Reset}
	}
	c.applyLinger(linger)
	p.cfg.Observer.Closed(c.ep.addr, cause)
	if ce := p.log.Check(zapcore.DebugLevel, "upstream connection closed"); ce != nil {
		ce.Write(zap.String("endpoint", c.ep.addr), zap.String("cause", string(cause)),
			zap.Int32("requests", c.requests.Load()), zap.Duration("age", time.Since(c.created)))
	}
	nc := c.nc
	if peerGone(cause) {
		nc = c.tcp // no close_notify for a peer that has gone: a TLS close would write to it
	}
	if linger.Blocks() {
		p.mu.Lock()
		if !p.lingerWaited {
			p.lingering.Add(1)
			p.mu.Unlock()
			go p.closeLingering(nc)
			return
		}
		p.mu.Unlock()
	}
	nc.Close()
}

// closeLingering closes a socket with a bounded linger: it returns when
// the kernel has flushed it or the linger is over. Close waits for it.
func (p *Pool) closeLingering(nc net.Conn) {
	defer p.lingering.Done()
	nc.Close()
}

// onReadable runs on the watcher goroutine with the sockets whose peer
// ended them, a FIN or an RST as the event says. An idle one is closed. A
// busy one (handed out, or being released) is noted in c.missed: its
// holder may see the end and Discard it, and otherwise Release peeks (see
// Release for why no FIN is lost). An event for a connection already
// closed (it fired before the close took the socket out of the set) is
// dropped, or its note would never be cleared. The closes go to the closer
// goroutines, so that thousands of FINs at once (an upstream restart) are
// closed on every CPU while the watcher already collects the next batch: a
// close on loopback also pays for the peer's side of the TCP exchange.
func (p *Pool) onReadable(events []readable, woke time.Time) {
	p.mu.Lock()
	for _, ev := range events {
		c := p.all[ev.id]
		if c == nil {
			continue // closed already
		}
		if !c.idle {
			c.missed = true
			continue
		}
		if ev.cause == CauseFIN {
			p.learnFINLocked(c, woke)
		}
		p.takeLocked(c)
		p.dropLocked(c)
		p.victims = append(p.victims, victim{c, ev.cause, woke})
	}
	p.mu.Unlock()
	for i, v := range p.victims {
		if len(p.victims) <= inlineCloses {
			p.closeHalfClosed(v)
		} else {
			p.closeq <- v
		}
		p.victims[i] = victim{}
	}
	p.victims = p.victims[:0] // the watcher goroutine owns this buffer
}

// inlineCloses is how many closes the watcher makes itself rather than
// hand to the closers: a handful costs less than waking them.
const inlineCloses = 32

// closeHalfClosed closes a connection the watcher found ended.
func (p *Pool) closeHalfClosed(v victim) {
	if v.cause == CauseRST {
		v.cause = causeOfError(v.c) // nobody else holds c: its error is ours to read
	}
	if ce := p.log.Check(zapcore.DebugLevel, "upstream half-close detected"); ce != nil {
		ce.Write(zap.String("endpoint", v.c.ep.addr), zap.String("cause", string(v.cause)),
			zap.Duration("idle", time.Since(v.c.idleSince)))
	}
	p.closeConn(v.c, v.cause)
	p.cfg.Observer.HalfClosed(v.cause, time.Since(v.woke))
}

// closer is one of 2×GOMAXPROCS goroutines that close what the watcher
// hands them, until Close closes the queue.
func (p *Pool) closer() {
	defer p.closers.Done()
	for v := range p.closeq {
		p.closeHalfClosed(v)
	}
}

type victim struct {
	c     *Conn
	cause Cause
	woke  time.Time // when the watcher saw it end; zero for other closes
}

// takeLocked takes an idle connection out of the idle list, so that
// neither Acquire nor the watcher finds it idle (the watcher notes a FIN for
// it from now on). Its socket stays in the epoll set until it is closed.
// p.mu must be held.
func (p *Pool) takeLocked(c *Conn) {
	c.ep.idle.remove(c)
	c.idle, c.missed = false, false
	if p.warmKick != nil {
		select {
		case p.warmKick <- struct{}{}:
		default: // a kick is pending already
		}
	}
}

// anyIdleLocked reports whether some endpoint has an idle connection.
// p.mu must be held.
func (p *Pool) anyIdleLocked() bool {
	for _, ep := range p.eps {
		if ep.idle.len > 0 {
			return true
		}
	}
	return false
}

// dropLocked forgets a connection that is about to be closed and frees its
// slot. p.mu must be held.
func (p *Pool) dropLocked(c *Conn) {
	delete(p.all, c.id)
	p.forgetLocked(c.ep)
}

// forgetLocked frees one of ep's connection slots: it goes to the first
// waiting Acquire, which dials into it, or back to the endpoint.
// p.mu must be held.
func (p *Pool) forgetLocked(ep *endpoint) {
	if w := ep.popWaiterLocked(); w != nil {
		w.ch <- grant{}
		return
	}
	ep.conns--
	if ep.draining && ep.conns == 0 {
		p.removeDrainedLocked()
	}
}

func (ep *endpoint) popWaiterLocked() *waiter {
	if len(ep.waiters) == 0 {
		return nil
	}
	w := ep.waiters[0]
	ep.waiters[0] = nil
	ep.waiters = ep.waiters[1:]
	w.served = true
	return w
}

// cleaner closes idle connections past idle_timeout, max_lifetime or
// their retirement. It runs while idle connections have deadlines and
// sleeps until the earliest among them, or a kick (wakeCleanerLocked).
func (p *Pool) cleaner() {
	defer p.runWG.Done()
	const granularity = 10 * time.Millisecond // batches nearby deadlines
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var victims []victim
	for {
		now := time.Now()
		var next time.Time
		victims = victims[:0]
		p.mu.Lock()
		if p.closed || !p.anyIdleLocked() {
			p.cleaning = false
			p.mu.Unlock()
			return
		}
		for _, ep := range p.eps {
			for c := ep.idle.back; c != nil; {
				prev := c.prev
				deadline, cause := p.deadline(c)
				switch {
				case deadline.IsZero(): // none yet: its retirement is not known
				case !deadline.After(now):
					p.takeLocked(c)
					p.dropLocked(c)
					victims = append(victims, victim{c: c, cause: cause})
				case next.IsZero() || deadline.Before(next):
					next = deadline
				}
				c = prev
			}
		}
		p.cleanAt = next
		if next.IsZero() {
			p.cleaning = false // nothing to wait for; wakeCleanerLocked restarts it
		}
		p.mu.Unlock()
		for _, v := range victims {
			p.closeConn(v.c, v.cause)
		}
		if next.IsZero() {
			return
		}
		timer.Reset(max(next.Sub(now), granularity))
		select {
		case <-timer.C:
		case <-p.cleanKick:
		case <-p.done:
			p.mu.Lock()
			p.cleaning = false
			p.mu.Unlock()
			return
		}
	}
}

// deadline returns when an idle connection expires and why; zero if
// never. p.mu must be held.
func (p *Pool) deadline(c *Conn) (time.Time, Cause) {
	var d time.Time
	var cause Cause
	if p.cfg.IdleTimeout > 0 {
		d, cause = c.idleSince.Add(p.cfg.IdleTimeout), CauseIdleTimeout
	}
	if p.cfg.MaxLifetime > 0 {
		if l := c.created.Add(p.cfg.MaxLifetime); d.IsZero() || l.Before(d) {
			d, cause = l, CauseMaxLifetime
		}
	}
	if r := p.retireAtLocked(c); !r.IsZero() && (d.IsZero() || r.Before(d)) {
		d, cause = r, CauseRetired
	}
	return d, cause
}

// Close closes every idle connection, fails waiting Acquires with
// ErrClosed, cancels the dials in flight, and stops the watcher and
// cleaner. Connections in use are closed when they are released. Close
// waits for the pool's goroutines, for the dials in flight (one that
// connected anyway closes its socket, CauseShutdown, and its Acquire gets
// ErrClosed) and for the bounded-linger closes begun before it returns
// (at most the linger); later closes run on their caller's goroutine.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var idle []*Conn
	for _, ep := range p.eps {
		idle = p.takeIdleLocked(ep, idle)
		if ep.ejectTimer != nil {
			ep.ejectTimer.Stop() // the ejection ends with the pool
		}
		for _, w := range ep.waiters {
			w.served = true
			w.ch <- grant{err: ErrClosed}
		}
		ep.waiters = nil
	}
	p.mu.Unlock()
	p.cancelDials()
	for _, c := range idle {
		p.closeConn(c, CauseShutdown)
	}
	close(p.done)
	p.dialing.Wait() // no dial registers a socket from now on
	err := p.watch.close()
	p.runWG.Wait()
	close(p.closeq) // the watcher has stopped: nothing sends any more
	p.closers.Wait()
	p.mu.Lock()
	p.lingerWaited = true
	p.mu.Unlock()
	p.lingering.Wait()
	return err
}

// Snapshot describes every open connection, for /debug/pool.
func (p *Pool) Snapshot() []ConnInfo {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ConnInfo, 0, len(p.all))
	for _, c := range p.all {
		ci := ConnInfo{
			Endpoint: c.ep.addr,
			Local:    c.nc.LocalAddr().String(),
			State:    "active", // "paired" in a stream pool: a TCP pair holds it for good
			Age:      now.Sub(c.created),
			Requests: int(c.requests.Load()),
		}
		if c.idle {
			ci.State, ci.Idle = "idle", now.Sub(c.idleSince)
			ci.ServerIdleTimeout, ci.RetireIn = c.serverIdle, p.retireInLocked(c, now)
		} else if p.cfg.Stream {
			ci.State = "paired"
		}
		out = append(out, ci)
	}
	return out
}
