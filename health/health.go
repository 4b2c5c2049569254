// Package health runs the active health checks of one upstream: every
// interval, each endpoint gets a check on a connection of its own (never
// one from the pool): a TCP connect (and TLS handshake, where the upstream
// has TLS), or with a path a GET that must answer 2xx. Failures in a row
// take an endpoint out of the pool; passes in a row bring it back.
package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Target is the pool whose endpoints are checked.
type Target interface {
	// EndpointAddrs returns the endpoints to check.
	EndpointAddrs() []string
	// DialCheck opens a connection to addr as the pool would; the check
	// closes it.
	DialCheck(ctx context.Context, addr string) (net.Conn, error)
	// SetHealthy takes addr out of the pool or brings it back; it is
	// told after every check (a passing check also ends an outlier
	// ejection, as Envoy's successful_active_health_check_uneject_host).
	SetHealthy(addr string, healthy bool)
}

// Config is one upstream's checks (upstreams.<name>.health).
type Config struct {
	Interval  time.Duration // between rounds; more than 0
	Timeout   time.Duration // per check; 0: 1s
	Path      string        // "": connect only
	Host      string        // the Host header of the GET; "": the endpoint's address
	Healthy   int           // passes in a row that bring an endpoint back; 0: 1
	Unhealthy int           // failures in a row that take it out; 0: 1
	Logger    *zap.Logger
}

// Run checks t's endpoints every cfg.Interval until ctx ends; an endpoint
// taken out is checked four times as often, so that its return is seen
// within a quarter interval. Endpoints start healthy. It returns when ctx
// ends and its checks have.
func Run(ctx context.Context, cfg Config, t Target) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	cfg.Healthy, cfg.Unhealthy = max(cfg.Healthy, 1), max(cfg.Unhealthy, 1)
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	r := &runner{cfg: cfg, t: t, state: map[string]*streak{}, tick: max(cfg.Interval/downFactor, time.Millisecond)}
	tick := time.NewTicker(r.tick)
	defer tick.Stop()
	for {
		r.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

type runner struct {
	cfg   Config
	t     Target
	state map[string]*streak // by address; the Run goroutine's
	tick  time.Duration      // how often rounds run: Interval/downFactor
}

// downFactor is how much more often an endpoint taken out is checked.
const downFactor = 4

// streak is an endpoint's run of results, what the pool was told, and
// when it is due for its next check.
type streak struct {
	passes, fails int
	down          bool
	next          time.Time
}

// round checks every endpoint that is due at once, and waits for the
// checks.
func (r *runner) round(ctx context.Context) {
	now := time.Now()
	all := r.t.EndpointAddrs()
	var due []string
	for _, addr := range all {
		if s := r.state[addr]; s == nil || !now.Before(s.next) {
			due = append(due, addr)
		}
	}
	results := make([]error, len(due))
	var wg sync.WaitGroup
	for i, addr := range due {
		wg.Go(func() { results[i] = r.check(ctx, addr) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	for i, addr := range due {
		s := r.state[addr]
		if s == nil {
			s = &streak{}
			r.state[addr] = s
		}
		r.record(addr, s, results[i])
		// Due again an interval from now, less half a tick: now is when
		// this round woke, which a late wake-up delays, and a check due a
		// hair after the next tick would wait a whole tick more (measured:
		// 25 of 43 gaps at 1.25 intervals without the slack).
		slack := r.tick / 2
		s.next = now.Add(r.cfg.Interval - slack)
		if s.down {
			s.next = now.Add(r.cfg.Interval/downFactor - slack)
		}
	}
	seen := map[string]bool{}
	for _, addr := range all {
		seen[addr] = true
	}
	for addr := range r.state {
		if !seen[addr] {
			delete(r.state, addr) // gone from the pool (DNS)
		}
	}
}

// record counts one result, crosses a threshold if it is reached, and
// tells the pool the endpoint's state.
func (r *runner) record(addr string, s *streak, err error) {
	if err == nil {
		s.passes, s.fails = s.passes+1, 0
		if s.down && s.passes >= r.cfg.Healthy {
			s.down = false
			r.cfg.Logger.Info("health check passes again", zap.String("endpoint", addr))
		}
	} else {
		s.passes, s.fails = 0, s.fails+1
		if !s.down && s.fails >= r.cfg.Unhealthy {
			s.down = true
			r.cfg.Logger.Warn("health check failing: endpoint taken out", zap.String("endpoint", addr),
				zap.Int("failures", s.fails), zap.Error(err))
		}
	}
	r.t.SetHealthy(addr, !s.down)
}

// check is one check of addr: nil if it passes.
func (r *runner) check(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	c, err := r.t.DialCheck(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if r.cfg.Path == "" {
		return nil
	}
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	host := r.cfg.Host
	if host == "" {
		host = addr
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: unstuck-health-check\r\nConnection: close\r\n\r\n", r.cfg.Path, host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: status %d", r.cfg.Path, resp.StatusCode)
	}
	return nil
}
