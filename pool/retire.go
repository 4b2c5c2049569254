package pool

import (
	"slices"
	"time"
)

// Retirement: unstuck closes an idle connection before its server does.
//
// A server closes a keep-alive connection once it has been idle for the
// server's idle timeout. A request sent on it about then crosses the
// server's FIN on the wire: the server never reads it, and a request that
// cannot be retried once written (a POST) fails. The watcher and the peek
// only act once the FIN is here; closing the connection first is what
// removes the race. The pool knows a server's idle timeout in two ways:
// the server says it (Keep-Alive: timeout=N, which the proxy passes on
// with SetServerKeepAlive), or the pool learns it from the idle closes the
// watcher saw on the endpoint (idleFINs). An idle connection is retired
// at (1 - RetireMargin) of the shorter of the two after it went idle: the
// cleaner closes it then (CauseRetired, with the upstream's linger, so the
// server reads EOF before its timer runs out), and Acquire never hands out
// one past that. A Keep-Alive max=M retires a connection at its Release
// once it has served the requests M allows.

// DefaultRetireMargin is Config.RetireMargin's default.
const DefaultRetireMargin = 0.2

// SetServerKeepAlive records what the Keep-Alive header of the response
// just read on c said: the server keeps the connection idle for timeout
// (0: not said), and takes max more requests on it counting the one just
// answered (negative: not said). A later response's timeout replaces an
// earlier one; a max only ever lowers the limit. For the holder, before
// Release or Discard.
func (c *Conn) SetServerKeepAlive(timeout time.Duration, max int) {
	if timeout > 0 {
		c.serverIdle = timeout
	}
	if max >= 0 {
		limit := int64(c.requests.Load()) + int64(max)
		if !c.serverCapped || limit < int64(c.serverLimit) {
			c.serverLimit, c.serverCapped = int32(min(limit, 1<<31-1)), true
		}
	}
}

// spent reports whether c has served every request its server's
// Keep-Alive max allows. For the holder, after the Release that counted
// the last request.
func (c *Conn) spent() bool {
	return c.serverCapped && c.requests.Load() >= c.serverLimit
}

// retireAtLocked returns when c, idle or being made idle, is retired; zero
// if its server's idle timeout is not known. p.mu must be held.
func (p *Pool) retireAtLocked(c *Conn) time.Time {
	t := c.serverIdle
	if l := c.ep.finAges.learned; l > 0 && (t == 0 || l < t) {
		t = l
	}
	if t == 0 {
		return time.Time{}
	}
	return c.idleSince.Add(time.Duration(float64(t) * (1 - p.cfg.RetireMargin)))
}

// retiredLocked reports whether idle connection c is past its retirement.
// It reads the clock only for a connection that has one. p.mu must be
// held.
func (p *Pool) retiredLocked(c *Conn) bool {
	at := p.retireAtLocked(c)
	return !at.IsZero() && !time.Now().Before(at)
}

// retireInLocked is how long idle connection c has left before it is
// retired, for /debug/pool; 0 if that is not known. p.mu must be held.
func (p *Pool) retireInLocked(c *Conn, now time.Time) time.Duration {
	at := p.retireAtLocked(c)
	if at.IsZero() {
		return 0
	}
	return max(at.Sub(now), time.Nanosecond)
}

// learnFINLocked records that the watcher saw c's server close it while
// it was idle (a FIN), at woke. If that changes what the endpoint's idle
// timeout is taken to be, every idle connection's deadline may have
// moved: the cleaner looks again. p.mu must be held.
func (p *Pool) learnFINLocked(c *Conn, woke time.Time) {
	if p.cfg.NoLearnIdleTimeout {
		return
	}
	f := &c.ep.finAges
	before := f.learned
	f.add(woke.Sub(c.idleSince), woke)
	if f.learned != before {
		p.wakeCleanerLocked(time.Time{})
	}
}

// wakeCleanerLocked makes sure the cleaner will act on a deadline at (zero:
// on deadlines that may have moved): it starts the cleaner if it is not
// running, and wakes it if it sleeps past at. p.mu must be held.
func (p *Pool) wakeCleanerLocked(at time.Time) {
	switch {
	case p.closed:
	case !p.cleaning:
		if p.cleanKick == nil {
			p.cleanKick = make(chan struct{}, 1)
		}
		p.cleaning = true
		p.runWG.Add(1)
		go p.cleaner()
	case at.IsZero() || at.Before(p.cleanAt):
		select {
		case p.cleanKick <- struct{}{}:
		default: // a kick is pending already
		}
	}
}

// idleFINs learns an endpoint's idle timeout from the idle ages at which
// its server closed connections, as the watcher saw the FINs. A server
// with an idle timeout closes at about the same age every time; the
// other closes are one-offs to ignore:
//   - a FIN sooner than minIdleFIN after the release is a server closing
//     right after its response (SettleTime's case), not an idle timeout;
//   - FINs within burstWindow of a first one are one event and give one
//     sample, the shortest age; if their ages differ by more than half
//     they are a restart (it closed young connections with old ones) and
//     give none;
//   - the estimate is a low percentile of the last samples: a quarter of
//     them, and at least the shortest, are ignored, so that a one-off close
//     of a young connection (a worker recycled) does not shorten it.
//
// Once connections are retired before it, the server closes none: the
// estimate stays until closes at younger ages show a shorter timeout. A
// server that makes its timeout longer is not noticed; its connections go
// on being retired early, which costs dials, never requests.
//
// Guarded by Pool.mu.
type idleFINs struct {
	ages    [8]time.Duration // one per burst, the last len(ages)
	n       int              // samples in ages, ever
	burst   finBurst         // the latest burst: more FINs may join it
	learned time.Duration    // the estimate; 0 until minFINs samples
}

// finBurst is FINs that arrived together.
type finBurst struct {
	first  time.Time // the first FIN's arrival; zero: no burst yet
	lo, hi time.Duration
}

const (
	// minFINs is how many samples it takes to trust the estimate.
	minFINs = 3
	// minIdleFIN: a FIN sooner after the release is not an idle timeout.
	minIdleFIN = 4 * SettleTime
	// burstWindow: FINs arriving within it of a first one are one event.
	burstWindow = 50 * time.Millisecond
)

// add records the FIN of a connection idle for age, seen at.
func (f *idleFINs) add(age time.Duration, at time.Time) {
	if age < minIdleFIN {
		return
	}
	b := &f.burst
	if !b.first.IsZero() && at.Sub(b.first) <= burstWindow {
		b.lo, b.hi = min(b.lo, age), max(b.hi, age)
	} else {
		if b.sample() {
			f.ages[f.n%len(f.ages)] = b.lo
			f.n++
		}
		*b = finBurst{first: at, lo: age, hi: age}
	}
	f.learned = f.estimate()
}

// sample reports whether the burst is a sample: it happened, and it is
// not a restart.
func (b *finBurst) sample() bool { return !b.first.IsZero() && b.lo >= b.hi/2 }

// estimate returns the learned idle timeout: the sample a quarter of the
// way up (and never the shortest) of the last len(ages) and the latest
// burst; 0 with fewer than minFINs.
func (f *idleFINs) estimate() time.Duration {
	var s [len(f.ages) + 1]time.Duration
	k := copy(s[:], f.ages[:min(f.n, len(f.ages))])
	if f.burst.sample() {
		s[k] = f.burst.lo
		k++
	}
	if k < minFINs {
		return 0
	}
	slices.Sort(s[:k])
	return s[max(1, k/4)]
}
