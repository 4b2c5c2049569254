package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// ErrNoEndpoint means every endpoint of the upstream is down: ejected by
// health checks or outlier detection, or removed. Nothing was sent: answer
// 503 at once rather than wait out a timeout, and see the logs for why
// each endpoint is down.
var ErrNoEndpoint = errors.New("pool: every upstream endpoint is down (health checks, outlier ejection or DNS)")

// Balancing policies (Config.Balance).
const (
	BalanceP2C        = "p2c"         // the less busy of two endpoints chosen at random (default)
	BalanceLeastConn  = "least_conn"  // the least busy endpoint
	BalanceRoundRobin = "round_robin" // each endpoint in turn
)

// OutlierConfig is passive health: endpoints whose requests keep failing
// are ejected for a while. A zero ConsecutiveFailures turns it off.
type OutlierConfig struct {
	ConsecutiveFailures int           // failed dials, resets and 5xx in a row that eject
	BaseEjection        time.Duration // the first ejection; the nth lasts n times as long (at most 10)
	MaxEjectionPercent  int           // at most this share of the endpoints ejected at once
}

// Addr is an endpoint to dial: Addr is host:port (an IP address once a
// name is resolved) and Name the host name it was resolved from, which TLS
// verifies and sends as SNI; empty when Addr was given as is.
type Addr struct{ Addr, Name string }

// endpointState is why an endpoint takes no new requests; zero: it does.
// Guarded by Pool.mu.
type endpointState struct {
	draining     bool         // removed from the set (SetEndpoints): its connections finish, then it goes
	unhealthy    bool         // failed active health checks (SetHealthy)
	ejectedUntil time.Time    // outlier ejection, until then
	ejectTimer   *time.Timer  // ends the ejection at ejectedUntil; stopped when it ends sooner or the pool closes
	ejections    int          // outlier ejections so far; the next lasts one base longer
	failures     atomic.Int32 // requests failed in a row (Outcome, dial failures); read without the lock by Outcome
}

// hasReasonOut reports whether ep has any reason to be out, an ejection
// whose time is over but not yet ended included: what p.downs counts.
func (ep *endpoint) hasReasonOut() bool {
	return ep.draining || ep.unhealthy || !ep.ejectedUntil.IsZero()
}

// out reports whether ep takes no new requests at now.
func (ep *endpoint) out(now time.Time) bool {
	return ep.draining || ep.unhealthy || now.Before(ep.ejectedUntil)
}

func (ep *endpoint) stateName(now time.Time) string {
	switch {
	case ep.draining:
		return "draining"
	case ep.unhealthy:
		return "unhealthy"
	case now.Before(ep.ejectedUntil):
		return "ejected"
	}
	return "up"
}

// pickLocked chooses where an acquire starts looking (an index into p.eps):
// the endpoint the balancing policy prefers among those taking requests;
// the loops from there go round-robin. ErrNoEndpoint if none takes
// requests. p.mu must be held.
func (p *Pool) pickLocked() (int, error) {
	n := len(p.eps)
	var now time.Time
	if p.downs > 0 {
		now = time.Now()
	}
	up := func(i int) bool { return p.downs == 0 || !p.eps[i].out(now) }
	busy := func(i int) int { return p.eps[i].conns - p.eps[i].idle.len }
	rr := int(p.rr.Add(1))
	switch p.cfg.Balance {
	case BalanceRoundRobin:
		for i := range n {
			if j := (rr + i) % n; up(j) {
				return j, nil
			}
		}
	case BalanceLeastConn:
		best := -1
		for i := range n {
			if j := (rr + i) % n; up(j) && (best < 0 || busy(j) < busy(best)) {
				best = j
			}
		}
		if best >= 0 {
			return best, nil
		}
	default: // p2c
		a, b := rand.IntN(n), rand.IntN(n)
		switch {
		case up(a) && up(b) && busy(b) < busy(a):
			return b, nil
		case up(a):
			return a, nil
		case up(b):
			return b, nil
		}
		for i := range n { // both chosen are down: the first that is not
			if j := (rr + i) % n; up(j) {
				return j, nil
			}
		}
	}
	return 0, ErrNoEndpoint
}

// usableLocked reports whether ep takes new requests now; for the loops
// that walk p.eps from pickLocked's start. p.mu must be held.
func (p *Pool) usableLocked(ep *endpoint) bool {
	if p.downs == 0 {
		return true
	}
	if ep.draining || ep.unhealthy {
		return false
	}
	return ep.ejectedUntil.IsZero() || !time.Now().Before(ep.ejectedUntil) // the clock only for an ejection
}

// SetEndpoints makes addrs the pool's endpoints, as DNS finds them. A new
// address becomes an endpoint at once; one no longer in addrs drains: it
// gets no new requests, its idle connections close with the linger, the
// requests on its busy ones finish, and it goes when its last connection
// closes. One that comes back before that is taken back as it is.
func (p *Pool) SetEndpoints(addrs []Addr) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	var idle []*Conn
	for _, ep := range p.eps {
		keep := slices.ContainsFunc(addrs, func(a Addr) bool { return a.Addr == ep.addr })
		if keep == !ep.draining {
			continue
		}
		p.setDrainingLocked(ep, !keep)
		if !keep {
			idle = p.takeIdleLocked(ep, idle)
			p.log.Info("endpoint removed: draining", zap.String("endpoint", ep.addr), zap.Int("connections", ep.conns))
		}
	}
	for _, a := range addrs {
		if !slices.ContainsFunc(p.eps, func(ep *endpoint) bool { return ep.addr == a.Addr }) {
			p.eps = append(p.eps, p.newEndpoint(a))
			p.log.Info("endpoint added", zap.String("endpoint", a.Addr), zap.String("name", a.Name))
		}
	}
	p.removeDrainedLocked()
	p.mu.Unlock()
	for _, c := range idle {
		p.closeConn(c, CauseDrained)
	}
}

func (p *Pool) newEndpoint(a Addr) *endpoint {
	name := a.Addr
	if a.Name != "" {
		_, port, _ := net.SplitHostPort(a.Addr)
		name = net.JoinHostPort(a.Name, port)
	}
	return &endpoint{addr: a.Addr, tls: tlsFor(p.cfg.TLS, name)}
}

// errRepick tells an Acquire waiting on an endpoint that has left to
// pick another.
var errRepick = errors.New("pool: the endpoint waited on left; pick again")

// repickWaitersLocked sends the Acquires waiting on ep elsewhere: ep is
// out (draining, unhealthy or ejected), and a slot freed there must not be
// dialed. p.mu must be held.
func (p *Pool) repickWaitersLocked(ep *endpoint) {
	for w := ep.popWaiterLocked(); w != nil; w = ep.popWaiterLocked() {
		w.ch <- grant{err: errRepick}
	}
}

// setDrainingLocked changes ep's draining, counting it in p.downs.
func (p *Pool) setDrainingLocked(ep *endpoint, draining bool) {
	p.setOutLocked(ep, func() { ep.draining = draining })
}

// setOutLocked applies change to ep's state and keeps p.downs, the number
// of endpoints with any reason to be out, in step. An endpoint going out
// sends its waiting Acquires elsewhere, whatever the reason. p.mu must be
// held.
func (p *Pool) setOutLocked(ep *endpoint, change func()) {
	was := ep.hasReasonOut()
	change()
	is := ep.hasReasonOut()
	switch {
	case is && !was:
		p.downs++
		p.repickWaitersLocked(ep)
	case was && !is:
		p.downs--
	}
}

// removeDrainedLocked drops draining endpoints with no connection left.
// p.mu must be held.
func (p *Pool) removeDrainedLocked() {
	// A new slice: callers up the stack may be ranging over p.eps.
	p.eps = slices.DeleteFunc(slices.Clone(p.eps), func(ep *endpoint) bool {
		gone := ep.draining && ep.conns == 0 && len(ep.waiters) == 0
		if gone {
			p.downs--
			p.log.Info("endpoint drained", zap.String("endpoint", ep.addr))
		}
		return gone
	})
}

// takeIdleLocked takes ep's idle connections out for closing, appending
// them to out. p.mu must be held.
func (p *Pool) takeIdleLocked(ep *endpoint, out []*Conn) []*Conn {
	for c := ep.idle.front; c != nil; c = ep.idle.front {
		p.takeLocked(c)
		p.dropLocked(c)
		out = append(out, c)
	}
	return out
}

// SetHealthy marks the endpoint addr healthy or not, as active health
// checks find it. An unhealthy endpoint gets no new requests and its idle
// connections close with the linger, until it is healthy again. Healthy
// also ends an outlier ejection: the check shows the endpoint serves.
func (p *Pool) SetHealthy(addr string, healthy bool) {
	p.mu.Lock()
	var idle []*Conn
	for _, ep := range p.eps {
		if ep.addr != addr {
			continue
		}
		if healthy && !ep.ejectedUntil.IsZero() {
			ep.ejectTimer.Stop()
			p.setOutLocked(ep, func() { ep.ejectedUntil = time.Time{} })
			ep.failures.Store(0)
			p.log.Info("endpoint back from ejection: its health check passes", zap.String("endpoint", addr))
		}
		if ep.unhealthy == !healthy {
			continue
		}
		p.setOutLocked(ep, func() { ep.unhealthy = !healthy })
		if !healthy {
			idle = p.takeIdleLocked(ep, idle)
			p.log.Warn("endpoint unhealthy: no new requests until it passes its checks", zap.String("endpoint", addr))
		} else {
			ep.failures.Store(0)
			p.log.Info("endpoint healthy again", zap.String("endpoint", addr))
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		p.closeConn(c, CauseEjected)
	}
}

// Outcome reports how the request on c ended, for outlier ejection:
// failed is a reset, a failed read or write, a timeout or a 5xx answer.
// Call it before c goes back (Release or Discard). Failed dials are
// counted by the pool itself. A success after a success takes no lock.
func (p *Pool) Outcome(c *Conn, failed bool) {
	if p.cfg.Outlier.ConsecutiveFailures <= 0 || !failed && c.ep.failures.Load() == 0 {
		return
	}
	p.mu.Lock()
	idle := p.outcomeLocked(c.ep, failed, nil)
	p.mu.Unlock()
	for _, c := range idle {
		p.closeConn(c, CauseEjected)
	}
}

// outcomeLocked counts one outcome on ep and ejects it at
// ConsecutiveFailures, unless MaxEjectionPercent of the endpoints are
// ejected already. It returns out with ep's idle connections appended if
// it ejected it. p.mu must be held.
func (p *Pool) outcomeLocked(ep *endpoint, failed bool, out []*Conn) []*Conn {
	o := p.cfg.Outlier
	if o.ConsecutiveFailures <= 0 {
		return out
	}
	if !failed {
		ep.failures.Store(0)
		return out
	}
	n := ep.failures.Add(1)
	now := time.Now()
	if int(n) < o.ConsecutiveFailures || now.Before(ep.ejectedUntil) {
		return out
	}
	ejected := 0
	for _, e := range p.eps {
		if now.Before(e.ejectedUntil) {
			ejected++
		}
	}
	if (ejected+1)*100 > o.MaxEjectionPercent*len(p.eps) {
		return out // would eject too many: keep it
	}
	ep.ejections = min(ep.ejections+1, 10)
	d := time.Duration(ep.ejections) * o.BaseEjection
	p.setOutLocked(ep, func() { ep.ejectedUntil = now.Add(d) })
	ep.failures.Store(0)
	p.log.Warn("endpoint ejected: its requests keep failing", zap.String("endpoint", ep.addr),
		zap.Int("consecutive_failures", o.ConsecutiveFailures), zap.Duration("for", d))
	ep.ejectTimer = time.AfterFunc(d, p.endEjection(ep))
	return p.takeIdleLocked(ep, out)
}

// endEjection returns the function that takes ep back when its ejection
// is over.
func (p *Pool) endEjection(ep *endpoint) func() {
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.closed && !ep.ejectedUntil.IsZero() && !time.Now().Before(ep.ejectedUntil) {
			p.setOutLocked(ep, func() { ep.ejectedUntil = time.Time{} })
			p.log.Info("endpoint back from ejection", zap.String("endpoint", ep.addr))
		}
	}
}

// EndpointAddrs returns the addresses of the endpoints taking part: the
// ones health checks watch (draining ones are leaving).
func (p *Pool) EndpointAddrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.eps))
	for _, ep := range p.eps {
		if !ep.draining {
			out = append(out, ep.addr)
		}
	}
	return out
}

// DialCheck opens a connection to addr as the pool would (its socket
// options, and TLS with the endpoint's server name), for a health check.
// The connection is the caller's, not the pool's: close it.
func (p *Pool) DialCheck(ctx context.Context, addr string) (net.Conn, error) {
	var cfg *tls.Config
	p.mu.Lock()
	for _, ep := range p.eps {
		if ep.addr == addr {
			cfg = ep.tls
		}
	}
	p.mu.Unlock()
	nc, err := p.dialer.DialContext(ctx, "tcp", addr)
	if err != nil || cfg == nil {
		return nc, err
	}
	tc, err := clientHandshake(ctx, nc, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}
