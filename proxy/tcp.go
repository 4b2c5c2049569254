package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/pool"
)

// TCPServer serves a protocol: tcp listener. Each app connection is paired
// with an upstream connection of its own, taken from the upstream's stream
// pool (warm, with pool.min_idle), and bytes pass both ways untouched until
// the pair ends (pair.go). The server owns every pair: one goroutine each
// (servePair), which closes both sides.
type TCPServer struct {
	name     string
	log      *zap.Logger
	obs      Observer
	maxConns int // limits.max_conns; fixed for the server's life

	up        atomic.Pointer[Upstream]
	capture   atomic.Pointer[Destinations] // a capture listener's; nil otherwise
	isCapture bool                         // fixed at NewTCP
	sockets   atomic.Pointer[appSockets]
	policy    atomic.Pointer[pairPolicy]
	accessLog atomic.Bool

	mu   sync.Mutex
	ln   *lingerListener // set by Serve
	shut bool            // Shutdown began
	// pairs are the running pairs; pairs.wg counts the servePair
	// goroutines, Add under mu while !shut.
	pairs pairSet
}

// NewTCP returns a tcp-mode server for cfg; Serve starts it. Of Config it
// uses the app-socket settings, IdleTimeout, HalfClose, HalfCloseTimeout,
// MaxConns, AccessLog and Upstream (whose pool should be a Stream pool).
func NewTCP(cfg Config) *TCPServer {
	cfg.applyDefaults()
	s := &TCPServer{
		name:     cfg.Name,
		log:      cfg.Logger.Named("tcp").With(zap.String("listener", cfg.Name)),
		obs:      cfg.Observer,
		maxConns: cfg.MaxConns,

		isCapture: cfg.Capture != nil,
	}
	s.Update(cfg)
	return s
}

// Update applies a new configuration to pairs made from now on; running
// pairs keep theirs.
func (s *TCPServer) Update(cfg Config) {
	up := cfg.Upstream
	s.up.Store(&up)
	s.capture.Store(cfg.Capture)
	s.sockets.Store(newAppSockets(cfg))
	s.policy.Store(newPairPolicy(cfg))
	s.accessLog.Store(cfg.AccessLog)
}

// DefaultHalfCloseTimeout is half_close_timeout's default.
const DefaultHalfCloseTimeout = 5 * time.Second

// Serve accepts app connections on ln until Shutdown.
func (s *TCPServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	l, err := newLingerListener(ln, &s.sockets, s.obs, nil, s.maxConns, s.log)
	if err != nil {
		s.mu.Unlock()
		ln.Close()
		return err
	}
	if s.isCapture {
		l.capture = &s.capture
	}
	s.ln = l
	s.mu.Unlock()

	var backoff time.Duration // after a temporary accept error, as net/http's Serve
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isShut() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		c := nc.(*appConn)
		s.mu.Lock()
		if s.shut {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.pairs.wg.Add(1)
		s.mu.Unlock()
		go s.servePair(c)
	}
}

func (s *TCPServer) isShut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shut
}

// servePair owns one app connection from accept to close: it takes an
// upstream connection, runs the pair, and closes both sides as the pair's
// end says. The upstream connection goes back to the pool only to be
// closed (Discard or Reset): a pair's connection is never reused.
func (s *TCPServer) servePair(c *appConn) {
	defer s.pairs.wg.Done()
	start := time.Now()
	up, pc, leave, err := s.acquire(c)
	if err != nil {
		s.log.Warn("no upstream connection: closing the app connection",
			zap.String("upstream", up.Name), zap.Stringer("app", c.RemoteAddr()), zap.Error(err))
		c.Close()
		s.obs.PairEnded(PairDialError, 0, 0)
		return
	}
	defer leave() // after pc is given back by runPair
	p := newPair(c.Conn, pc.NetConn(), *s.policy.Load())
	runPair(&s.pairs, s.obs, s.log, &s.accessLog, p, c, up, pc, start)
}

// acquire takes an upstream connection for c's pair: of the listener's
// upstream, or of a capture listener's destination for c. A pool closed by
// a reload is replaced by then: the current upstream is tried once more.
// leave, a no-op but for a destination, is called once pc is given back.
// On error up is still named, for the log.
func (s *TCPServer) acquire(c *appConn) (up *Upstream, pc *pool.Conn, leave func(), err error) {
	if s.isCapture {
		return s.acquireCaptured(c.origDst)
	}
	up = s.up.Load()
	pc, err = up.Pool.Acquire(false)
	if errors.Is(err, pool.ErrClosed) {
		if next := s.up.Load(); next != up {
			up = next
			pc, err = up.Pool.Acquire(false)
		}
	}
	return up, pc, func() {}, err
}

// acquireCaptured is acquire for a capture listener's connection to dst.
func (s *TCPServer) acquireCaptured(dst netip.AddrPort) (*Upstream, *pool.Conn, func(), error) {
	for attempt := 0; ; attempt++ {
		d, up, leave, err := openDestination(&s.capture, dst)
		if err != nil {
			return &Upstream{Name: dst.String()}, nil, nil, err
		}
		pc, err := up.Pool.Acquire(false)
		if err == nil {
			return up, pc, leave, nil
		}
		leave()
		if !errors.Is(err, pool.ErrClosed) || attempt > 0 || s.capture.Load() == d {
			return up, nil, nil, err
		}
	}
}

// awaitFIN half-closes c and discards what it still sends until its FIN
// (true) or timeout (false).
func awaitFIN(c net.Conn, timeout time.Duration) bool {
	closeWrite(c)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, c)
	return err == nil
}

// upstreamCause is how the pool counts the close of a pair's upstream
// connection.
func upstreamCause(pairCause string) pool.Cause {
	switch pairCause {
	case PairUpstreamFIN:
		return pool.CauseFIN
	case PairUpstreamRST:
		return pool.CauseRST
	case PairIdleTimeout:
		return pool.CauseIdleTimeout
	case PairShutdown:
		return pool.CauseShutdown
	}
	return pool.CausePairEnd
}

// Shutdown stops accepting and lets running pairs go on until ctx ends;
// then it ends them (both sides reset: unstuck is going away and cannot
// wait for either peer) and waits for their closes.
func (s *TCPServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shut = true
	l := s.ln
	s.mu.Unlock()
	if l != nil {
		l.Close()
	}
	s.pairs.end(ctx, func() {
		if l != nil {
			l.stop() // from now on an app's close waits for no FIN
		}
	})
	if l != nil {
		l.wait()
	}
	return ctx.Err()
}

// OpenConnections returns the app connections open: paired, or closing.
func (s *TCPServer) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln.openConns()
}
