// Package resolve keeps an upstream's endpoints in step with DNS: every
// endpoint given by name is looked up again every refresh (A and AAAA),
// each address it has becomes an endpoint, and the set goes to the pool
// (pool.SetEndpoints) when it changes. A Kubernetes headless service is
// such a name: one address per ready pod.
//
// The Go resolver does not give the records' TTL, so the refresh is the
// period, whatever the TTL. A lookup that fails, or finds no address,
// keeps that name's last good addresses: a DNS outage never empties an
// upstream.
package resolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/pool"
)

// DefaultTimeout bounds one name's lookup when Config.Timeout is 0.
const DefaultTimeout = 5 * time.Second

// errNoAddress is a lookup that succeeded with no A or AAAA record: as a
// failure, it keeps the last good addresses.
var errNoAddress = errors.New("the name has no A or AAAA record")

// Config is what a Resolver needs. A zero value means the documented
// default.
type Config struct {
	Upstream  string        // the upstream's name, for logs
	Endpoints []string      // host:port each, as configured; IP literals pass through
	Refresh   time.Duration // how often to look the names up again; 0: once, at start
	Timeout   time.Duration // one name's lookup; 0: DefaultTimeout
	Resolver  *net.Resolver // nil: net.DefaultResolver

	// Set gets each new set of endpoints, on the Resolver's goroutine:
	// the pool's SetEndpoints. It is not called until a lookup changes
	// the set from the configured endpoints (names unresolved).
	Set func([]pool.Addr)
	// OnFailure is called once per failed lookup of a name (an error, or
	// no address); nil: none. The metrics' DNSErrors hook.
	OnFailure func()
	Logger    *zap.Logger // default: no logging
}

// Resolver refreshes one upstream's endpoints. Run it on one goroutine
// (Run or Start).
type Resolver struct {
	// Set by New, read-only after.
	cfg     Config
	log     *zap.Logger
	targets []target
	names   []string // the distinct names among targets, in order

	// Owned by the goroutine running Run.
	good    map[string][]netip.Addr // each name's last good addresses, sorted
	failing map[string]int          // names failing now: failed lookups in a row
	current []pool.Addr             // the set Set last got; at first, the configured one
}

// target is one configured endpoint.
type target struct {
	host, port string
	asIs       bool   // an IP literal (or localhost, or unparsable): passed through as configured
	given      string // as configured
}

// HasNames reports whether any of endpoints is given by a name a Resolver
// would look up: an upstream without one needs no Resolver.
func HasNames(endpoints []string) bool {
	return slices.ContainsFunc(endpoints, func(ep string) bool { return !parse(ep).asIs })
}

func parse(ep string) target {
	host, port, err := net.SplitHostPort(ep)
	_, ipErr := netip.ParseAddr(host)
	// localhost is the loopback (RFC 6761), not a service: its two
	// addresses as two endpoints would send half the dials to the
	// family the app does not listen on.
	asIs := err != nil || ipErr == nil || isLocalhost(host)
	return target{host: host, port: port, asIs: asIs, given: ep}
}

func isLocalhost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}

// New returns a Resolver for cfg; Run or Start sets it going.
func New(cfg Config) *Resolver {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.OnFailure == nil {
		cfg.OnFailure = func() {}
	}
	r := &Resolver{
		cfg:     cfg,
		log:     cfg.Logger.Named("resolve").With(zap.String("upstream", cfg.Upstream)),
		good:    map[string][]netip.Addr{},
		failing: map[string]int{},
	}
	for _, ep := range cfg.Endpoints {
		t := parse(ep)
		r.targets = append(r.targets, t)
		if !t.asIs && !slices.Contains(r.names, t.host) {
			r.names = append(r.names, t.host)
		}
	}
	r.current = r.build()
	return r
}

// Run looks the names up at once, then every Refresh, until ctx ends (with
// a Refresh of 0, it returns after the first round).
func (r *Resolver) Run(ctx context.Context) {
	r.round(ctx)
	if r.cfg.Refresh <= 0 {
		return
	}
	t := time.NewTicker(r.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.round(ctx)
		}
	}
}

// Start runs Run on a goroutine of its own. stop ends it, and returns once
// it has returned: after stop, Set is not called again. stop may be called
// more than once.
func (r *Resolver) Start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go r.runUntilStopped(ctx, done)
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// runUntilStopped is Start's goroutine, named for goroutine dumps.
func (r *Resolver) runUntilStopped(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	r.Run(ctx)
}

// round looks every name up once and hands the set to Set if it changed.
func (r *Resolver) round(ctx context.Context) {
	for _, name := range r.names {
		addrs, err := r.lookup(ctx, name)
		if ctx.Err() != nil {
			return // stopping: no failure of DNS's
		}
		if err != nil {
			r.failed(name, err)
			continue
		}
		if n := r.failing[name]; n > 0 {
			r.log.Info("endpoint name resolves again", zap.String("name", name), zap.Int("failed_lookups", n))
			delete(r.failing, name)
		}
		r.good[name] = addrs
	}
	set := r.build()
	if slices.Equal(set, r.current) {
		return
	}
	r.current = set
	r.log.Info("endpoints from DNS", zap.Strings("endpoints", addrsOf(set)))
	r.cfg.Set(set)
}

// lookup returns name's addresses, IPv4 first, each once.
func (r *Resolver) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	addrs, err := r.cfg.Resolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, err
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	// DNS servers rotate the order of their answers: sorted, the same
	// addresses are the same set, and round_robin walks them in a fixed
	// order.
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	if len(addrs) == 0 {
		return nil, errNoAddress
	}
	return addrs, nil
}

// failed counts a failed lookup of name and warns at the first of a
// streak; the name keeps its last good addresses.
func (r *Resolver) failed(name string, err error) {
	r.cfg.OnFailure()
	r.failing[name]++
	if r.failing[name] > 1 {
		return
	}
	if kept, ok := r.good[name]; ok {
		r.log.Warn("cannot resolve an endpoint name: keeping its last addresses until it resolves again",
			zap.String("name", name), zap.Error(err), zap.Stringers("kept", kept))
	} else {
		r.log.Warn("cannot resolve an endpoint name: dialing it by name until it resolves",
			zap.String("name", name), zap.Error(err))
	}
}

// build returns the endpoint set: the configured endpoints in order, each
// name replaced by its last good addresses (a name that never resolved
// stays as configured: the pool dials it by name), each address once.
func (r *Resolver) build() []pool.Addr {
	var out []pool.Addr
	add := func(a pool.Addr) {
		if !slices.ContainsFunc(out, func(b pool.Addr) bool { return b.Addr == a.Addr }) {
			out = append(out, a)
		}
	}
	for _, t := range r.targets {
		addrs, ok := r.good[t.host]
		if t.asIs || !ok {
			add(pool.Addr{Addr: t.given})
			continue
		}
		for _, a := range addrs {
			add(pool.Addr{Addr: net.JoinHostPort(a.String(), t.port), Name: t.host})
		}
	}
	return out
}

func addrsOf(set []pool.Addr) []string {
	out := make([]string, len(set))
	for i, a := range set {
		out[i] = a.Addr
	}
	return out
}
