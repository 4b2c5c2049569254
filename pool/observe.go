package pool

import "time"

// Observer is told about the pool's connection-level events, for metrics.
// Calls come from request goroutines and the watcher, concurrently; each
// must be cheap and must not call back into the pool. A Config without an
// Observer uses one that does nothing.
type Observer interface {
	// Dialed reports a dial to endpoint; err is nil on success, else a
	// *DialError (its Reason says why).
	Dialed(endpoint string, err error)
	// Waited reports an Acquire that had to wait at MaxConns, for how long,
	// and whether it gave up (ErrExhausted).
	Waited(d time.Duration, exhausted bool)
	// Closed reports every connection the pool closes, with why.
	Closed(endpoint string, cause Cause)
	// HalfClosed reports an idle connection the watcher closed (cause fin
	// or rst) and the time from the watcher's wake-up to the close
	// returning. Unsolicited bytes never wake the watcher: the peek before
	// reuse finds them, and only Closed reports that close.
	HalfClosed(cause Cause, reaction time.Duration)
	// Warm reports, for a pool with MinIdle, whether an Acquire found a
	// warm connection (hit) or had to dial (miss).
	Warm(hit bool)
	// TLSHandshake reports a completed TLS handshake: whether it resumed
	// a session, and how long it took.
	TLSHandshake(endpoint string, resumed bool, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Dialed(string, error)                     {}
func (nopObserver) Waited(time.Duration, bool)               {}
func (nopObserver) Closed(string, Cause)                     {}
func (nopObserver) HalfClosed(Cause, time.Duration)          {}
func (nopObserver) Warm(bool)                                {}
func (nopObserver) TLSHandshake(string, bool, time.Duration) {}

// ConnInfo describes one connection, for /debug/pool.
type ConnInfo struct {
	Endpoint string        `json:"endpoint"`
	Local    string        `json:"local"`
	State    string        `json:"state"` // "idle", "active", or in a stream pool "paired"
	Age      time.Duration `json:"age_ns"`
	Idle     time.Duration `json:"idle_ns,omitempty"` // idle connections only
	Requests int           `json:"requests"`          // completed before the current one
	// Idle connections only: the idle timeout the server's Keep-Alive
	// header declared, and the time left before the pool retires it
	// (retire.go); omitted when not known.
	ServerIdleTimeout time.Duration `json:"server_idle_timeout_ns,omitempty"`
	RetireIn          time.Duration `json:"retire_in_ns,omitempty"`
}

// EndpointStats counts one endpoint's connections.
type EndpointStats struct {
	Endpoint string `json:"endpoint"`
	Open     int    `json:"open"` // busy, idle or dialing
	Idle     int    `json:"idle"`
	Waiters  int    `json:"waiters"`
	// State is up (taking requests), unhealthy (active checks), ejected
	// (outlier detection) or draining (gone from DNS).
	State string `json:"state"`
	// LearnedIdleTimeout is the server's idle timeout as learned from the
	// idle connections it closed (retire.go); 0 until learned.
	LearnedIdleTimeout time.Duration `json:"learned_idle_timeout_ns,omitempty"`
}

// Stats returns per-endpoint counts: cheap, for metrics at scrape time.
func (p *Pool) Stats() []EndpointStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	out := make([]EndpointStats, len(p.eps))
	for i, ep := range p.eps {
		out[i] = EndpointStats{Endpoint: ep.addr, Open: ep.conns, Idle: ep.idle.len, Waiters: len(ep.waiters),
			State: ep.stateName(now), LearnedIdleTimeout: ep.finAges.learned}
	}
	return out
}
