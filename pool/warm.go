package pool

import (
	"time"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Warm pool backoff: a failed dial waits warmBackoffMin, doubling up to
// warmBackoffMax, before the warmer tries again; a success resets it.
const (
	warmBackoffMin = 100 * time.Millisecond
	warmBackoffMax = 5 * time.Second
)

// warmer keeps MinIdle connections idle (Config.MinIdle). It dials what is
// missing, one at a time, then sleeps until a connection leaves the idle
// list (takeLocked kicks it: taken, or closed by the watcher, the cleaner or
// a peek) or its backoff ends. It runs from New until Close.
func (p *Pool) warmer() {
	defer p.runWG.Done()
	backoff := time.Duration(0)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if err := p.fillWarm(); err != nil {
			backoff = min(max(2*backoff, warmBackoffMin), warmBackoffMax)
			if ce := p.log.Check(zap.WarnLevel, "warm pool: dial failed; retrying"); ce != nil {
				ce.Write(zap.Error(err), zap.Duration("backoff", backoff))
			}
			timer.Reset(backoff)
		} else {
			backoff = 0
		}
		select {
		case <-p.warmKick:
			if backoff > 0 {
				continue // dial again only when the backoff is over
			}
		case <-timer.C:
		case <-p.done:
			return
		}
	}
}

// fillWarm dials until MinIdle connections are idle or every endpoint is
// at MaxConns. It returns the first dial error; ErrClosed ends it quietly.
func (p *Pool) fillWarm() error {
	for {
		p.mu.Lock()
		idle := 0
		for _, ep := range p.eps {
			idle += ep.idle.len
		}
		var ep *endpoint
		if !p.closed && idle < p.cfg.MinIdle {
			ep = p.reserveSlotLocked(int(p.rr.Add(1)))
		}
		p.mu.Unlock()
		if ep == nil {
			return nil
		}
		c, err := p.dial(ep)
		if err == ErrClosed {
			return nil
		}
		if err != nil {
			return err
		}
		p.putIdle(c)
	}
}

// peek is the check before a hand-out. A stream pool's connection may hold
// bytes its server sent first: those are the app's, so only a FIN, an RST
// or an error makes it unfit. (Bytes followed by a FIN read as bytes here;
// the FIN woke the watcher while the connection was idle.)
//
// On a TLS connection of a request pool the bytes may be TLS records of
// no concern to a request (session tickets): settleTLS reads them.
func (p *Pool) peek(c *Conn) sockopt.PeekResult {
	r := c.peek()
	switch {
	case p.cfg.Stream && r == sockopt.Unsolicited:
		return sockopt.Open
	case r == sockopt.Unsolicited && c.nc != c.tcp:
		return c.settleTLS()
	}
	return r
}

// handOut readies c for its next holder: a Release or Discard counts
// again, and (unless the pool serves streams) its buffers are attached.
func (p *Pool) handOut(c *Conn) {
	c.released.Store(false)
	if !p.cfg.Stream {
		c.attachBuffers()
	}
}

// Linger is how the pool closes its connections (the upstream's linger).
func (p *Pool) Linger() sockopt.Linger { return p.cfg.Linger }

// warmHit and warmMiss count, for a warm pool, an Acquire served by an
// idle connection or by a dial.
func (p *Pool) warmHit() {
	if p.cfg.MinIdle > 0 {
		p.cfg.Observer.Warm(true)
	}
}

func (p *Pool) warmMiss() {
	if p.cfg.MinIdle > 0 {
		p.cfg.Observer.Warm(false)
	}
}
