// Package sidecar turns a validated configuration into a running unstuck:
// one pool per upstream, one proxy server per listener, the admin listener
// and the metrics. It applies a new configuration while serving (Reload)
// and stops in order (Shutdown). It takes typed config only; reading files,
// the environment and signals is cmd/unstuck's job.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/unstuck-proxy/unstuck/admin"
	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/health"
	"github.com/unstuck-proxy/unstuck/internal/memrelease"
	"github.com/unstuck-proxy/unstuck/metrics"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/proxy"
	"github.com/unstuck-proxy/unstuck/sockopt"
	"github.com/unstuck-proxy/unstuck/tlsclient"
)

// Sidecar is a running unstuck. Its methods may be called from any
// goroutine; Reload and Shutdown are serialised.
type Sidecar struct {
	log     *zap.Logger
	level   zap.AtomicLevel
	metrics *metrics.Metrics
	errc    chan error // a listener that stopped serving on its own

	stopping chan struct{} // closed by Shutdown: retired servers stop draining
	pprof    atomic.Bool   // admin.pprof, read by the debug listener at each request

	activity   atomic.Uint64 // requests served, for memrelease
	stopMemory context.CancelFunc
	memoryDone chan struct{}

	mu        sync.Mutex // guards everything below; held for a whole Reload
	cfg       *config.Config
	upstreams map[string]*upstream
	listeners map[string]*listener
	draining  map[*listener]string // replaced servers still serving their connections, by listener name
	captures  map[string]*captured // capture listeners' destinations, by listener name (capture.go)
	admin     *admin.Server        // admin.listen: probes and /metrics
	debug     *admin.Server        // admin.debug_listen: /debug/pool and pprof
	stopped   bool
	retiring  sync.WaitGroup // listeners and pools being retired after a reload
}

type upstream struct {
	cfg    config.Upstream
	stream bool // its listeners are tcp listeners: a stream pool
	pool   *pool.Pool
	// stopChecks ends the pool's active health checks and waits for them;
	// nil until they start (and without checks).
	stopChecks func()
	// stopDNS stops the DNS refresh of its endpoints (dns.go), before
	// the pool closes.
	stopDNS func()
}

// close stops u's checks and DNS refresh, then closes its pool: idle
// connections close now, busy ones when released.
func (u *upstream) close() {
	if u.stopChecks != nil {
		u.stopChecks()
	}
	u.stopDNS()
	u.pool.Close()
}

type listener struct {
	cfg    config.Listener
	socket *sharedSocket // may pass from an old listener to its replacement
	view   *socketView   // this server's view of socket
	srv    server
	done   chan struct{} // closed when Serve has returned
}

// server is a listener's server: proxy.Server (http) or proxy.TCPServer.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Update(proxy.Config)
	OpenConnections() int
}

// New builds and starts everything cfg describes. Every listener and the
// admin listener are bound before any serves; if one cannot be, New
// releases what it made and returns the error. level is the logger's level,
// which Reload adjusts.
func New(cfg *config.Config, log *zap.Logger, level zap.AtomicLevel) (*Sidecar, error) {
	s := &Sidecar{
		log:       log,
		level:     level,
		metrics:   metrics.New(),
		errc:      make(chan error, 1),
		stopping:  make(chan struct{}),
		upstreams: map[string]*upstream{},
		listeners: map[string]*listener{},
		draining:  map[*listener]string{},
	}
	s.metrics.SetUpstreamCheck(s.upstreamsReachable)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.apply(cfg); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopMemory, s.memoryDone = cancel, make(chan struct{})
	go func() {
		defer close(s.memoryDone)
		memrelease.Run(ctx, cfg.ReleaseMemoryAfterIdle, s.activity.Load, nil)
	}()
	return s, nil
}

// Errors reports a listener that stopped serving by itself (not through
// Reload or Shutdown). The process should shut down.
func (s *Sidecar) Errors() <-chan error { return s.errc }

// AdminAddr returns the admin listener's address, or nil without one.
func (s *Sidecar) AdminAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		return nil
	}
	return s.admin.Addr()
}

// DebugAddr returns the debug listener's address, or nil without one.
func (s *Sidecar) DebugAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.debug == nil {
		return nil
	}
	return s.debug.Addr()
}

// ListenerAddr returns the bound address of a listener, or nil.
func (s *Sidecar) ListenerAddr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.listeners[name]; l != nil {
		return l.socket.ln.Addr()
	}
	return nil
}

// Reload applies cfg without dropping an established app connection or an
// in-flight request:
//
//   - an upstream whose settings changed gets a new pool; requests already
//     holding a connection of the old pool finish on it, the old pool's idle
//     connections close, and its endpoints drain;
//   - a listener whose address changed is rebound alone: the new address
//     binds first, then the old one stops accepting and drains;
//   - a listener whose idle_timeout, idle_release_after, protocol, upstream
//     name, limits.request_header_bytes or limits.max_conns changed gets a
//     new server on the same socket: the old server stops accepting and
//     drains, the socket never stops accepting;
//   - admin.listen or admin.debug_listen that changed is bound anew, then
//     the old one closes;
//   - everything else (linger, app_fin_timeout, keepalive, user_timeout,
//     the request timeouts, limits.request_body_bytes, the access log, the
//     log level, admin.pprof, admin.ready_requires_upstream) applies in
//     place.
//
// If anything cannot be applied (a new address cannot be bound), nothing
// is: the old configuration keeps running and the error says why.
func (s *Sidecar) Reload(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("sidecar: reload after shutdown")
	}
	if err := s.apply(cfg); err != nil {
		s.metrics.ReloadFailed()
		return err
	}
	s.metrics.ReloadOK()
	return nil
}

// ReloadRejected counts a reload whose configuration did not load (it
// never reached Reload).
func (s *Sidecar) ReloadRejected() { s.metrics.ReloadFailed() }

// apply moves from s.cfg (nil at start) to cfg. s.mu must be held. New
// sockets and pools are made first; only when all exist is anything
// switched over or retired.
func (s *Sidecar) apply(cfg *config.Config) (err error) {
	var (
		newUps  = map[string]*upstream{}
		newLns  = map[string]*listener{}
		created []*upstream
		bound   []*listener
		adm     *admin.Server
		debug   *admin.Server
	)
	defer func() {
		if err == nil {
			return
		}
		for _, l := range bound {
			l.socket.close()
		}
		for _, u := range created {
			u.close()
		}
		for _, a := range []*admin.Server{adm, debug} {
			if a != nil {
				a.Shutdown(context.Background())
			}
		}
	}()

	for _, name := range slices.Sorted(maps.Keys(cfg.Upstreams)) {
		uc := cfg.Upstreams[name]
		stream := servesTCP(cfg, name)
		if old := s.upstreams[name]; old != nil && reflect.DeepEqual(old.cfg, uc) && old.stream == stream {
			newUps[name] = old
			continue
		}
		pc := poolConfig(name, uc, s.log, s.metrics.Upstream(name))
		pc.Stream = stream
		pc.Mark = uint32(cfg.Capture.Mark) // the capture rules pass unstuck's own connections
		if uc.TLS.Enabled {
			tc, err := tlsclient.New(uc.TLS, stream)
			if err != nil {
				return fmt.Errorf("upstream %s: %w", name, err)
			}
			pc.TLS, pc.TLSHandshakeTimeout = tc, uc.Dial.TLSHandshakeTimeout
		}
		p, err := pool.New(pc)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", name, err)
		}
		u := &upstream{cfg: uc, stream: stream, pool: p, stopDNS: s.startDNS(name, uc, p)}
		created = append(created, u)
		newUps[name] = u
	}

	for _, name := range slices.Sorted(maps.Keys(cfg.Listeners)) {
		lc := cfg.Listeners[name]
		old := s.listeners[name]
		sameAddr := old != nil && (old.cfg.Listen == lc.Listen || old.socket.ln.Addr().String() == lc.Listen)
		switch {
		case sameAddr && !needsNewServer(old.cfg, lc):
			old.cfg.Listen = lc.Listen
			newLns[name] = old
		case sameAddr:
			// Same address: the new server takes over the socket.
			newLns[name] = &listener{cfg: lc, socket: old.socket, done: make(chan struct{})}
		default:
			ln, err := proxy.ListenWith(lc.Listen, proxy.ListenOptions{ReusePort: lc.ReusePort, SocketMode: lc.SocketMode})
			if err != nil {
				return fmt.Errorf("listener %s: %w", name, err)
			}
			l := &listener{cfg: lc, socket: newSharedSocket(ln, s.log), done: make(chan struct{})}
			bound = append(bound, l)
			newLns[name] = l
		}
	}

	if cfg.Admin.Listen != "" && (s.cfg == nil || s.cfg.Admin.Listen != cfg.Admin.Listen) {
		adm = admin.New(admin.Config{
			Addr:    cfg.Admin.Listen,
			Metrics: s.metrics,
			Ready:   s.ready,
			Logger:  s.log,
		})
		if err := adm.Start(); err != nil {
			adm = nil
			return err // says "admin: ..."
		}
	}
	if cfg.Admin.DebugListen != "" && (s.cfg == nil || s.cfg.Admin.DebugListen != cfg.Admin.DebugListen) {
		debug = admin.New(admin.Config{
			Addr:   cfg.Admin.DebugListen,
			Role:   admin.Debug,
			Pools:  s.poolViews,
			Pprof:  s.pprof.Load,
			Logger: s.log,
		})
		if err := debug.Start(); err != nil {
			debug = nil
			return fmt.Errorf("admin.debug_listen: %w", err)
		}
	}

	caps, err := s.applyCaptures(cfg)
	if err != nil {
		return err
	}

	// Everything exists: switch over.
	s.level.SetLevel(levelOf(cfg.Log.Level))
	s.pprof.Store(cfg.Admin.Pprof)
	for _, name := range slices.Sorted(maps.Keys(cfg.Upstreams)) {
		if t := cfg.Upstreams[name].TLS; t.Enabled && t.InsecureSkipVerify {
			s.log.Warn("tls.insecure_skip_verify: the upstream's certificate is not verified; anyone on the path can read and change its traffic",
				zap.String("upstream", name))
		}
	}
	for name, l := range newLns {
		lc := cfg.Listeners[name]
		pc := s.listenerConfig(name, lc, cfg, newUps, caps)
		pc.Activity = &s.activity
		if l.srv != nil {
			l.cfg = lc
			l.srv.Update(pc)
			continue
		}
		pc.Observer = s.metrics.Listener(name, lc.Upstream)
		if lc.Protocol == "tcp" {
			l.srv = proxy.NewTCP(pc)
		} else {
			l.srv = proxy.New(pc)
		}
		l.view = l.socket.view()
		go s.serve(name, l)
		s.log.Info("listening", zap.String("listener", name), zap.Stringer("addr", l.socket.ln.Addr()),
			zap.String("upstream", lc.Upstream))
	}
	for name, u := range newUps {
		s.metrics.AddPool(name, u.pool)
	}
	for _, u := range created {
		u.startChecks(s.log)
	}

	// Retire what was replaced or removed, without waiting for it here.
	timeout := cfg.ShutdownTimeout
	for name, old := range s.listeners {
		switch l := newLns[name]; {
		case l == nil:
			s.retireListener(name, old, timeout) // removed
		case l != old:
			s.replaceListener(name, old, l.socket == old.socket)
		}
	}
	// Servers replaced earlier still serve their app connections: point
	// them at the new pools too.
	for l, name := range s.draining {
		if newUps[l.cfg.Upstream] != nil || l.cfg.Capture && caps[name] != nil {
			l.srv.Update(s.listenerConfig(name, l.cfg, cfg, newUps, caps)) // Activity is fixed at New
		}
	}
	for name, old := range s.upstreams {
		if newUps[name] != old {
			old.stopDNS() // its pool retires: no more endpoint changes
			if newUps[name] == nil {
				s.metrics.RemovePool(name)
			}
			s.retiring.Add(1)
			go func() {
				defer s.retiring.Done()
				old.close()
			}()
		}
	}
	if adm != nil || cfg.Admin.Listen == "" {
		s.retireAdmin(s.admin)
		s.admin = adm
	}
	if debug != nil || cfg.Admin.DebugListen == "" {
		s.retireAdmin(s.debug)
		s.debug = debug
	}
	s.retireCaptures(caps)
	s.upstreams, s.listeners, s.cfg = newUps, newLns, cfg
	s.watchSockets()
	return nil
}

// retireAdmin shuts a replaced admin or debug server down in the
// background; Shutdown waits for it. a may be nil. s.mu must be held.
func (s *Sidecar) retireAdmin(a *admin.Server) {
	if a == nil {
		return
	}
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		a.Shutdown(context.Background())
	}()
}

// serve runs one listener's server until it is shut down.
func (s *Sidecar) serve(name string, l *listener) {
	defer close(l.done)
	if err := l.srv.Serve(l.view); err != nil {
		select {
		case s.errc <- fmt.Errorf("listener %s: %w", name, err):
		default:
		}
	}
}

// retireListener stops a removed listener in the background: its socket
// closes at once, and its connections drain for up to timeout.
func (s *Sidecar) retireListener(name string, l *listener, timeout time.Duration) {
	s.log.Info("removing listener", zap.String("listener", name), zap.Stringer("addr", l.socket.ln.Addr()))
	l.socket.close()
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		l.srv.Shutdown(ctx)
		<-l.done
	}()
}

// replaceListener retires a server whose replacement now accepts (on the
// same socket, or on a new address, in which case the old socket closes).
// The old server keeps serving the app connections it has, with its old
// settings, until the app closes them: a reload drops no app connection.
// s.mu must be held.
func (s *Sidecar) replaceListener(name string, l *listener, sameSocket bool) {
	s.log.Info("replacing listener; its app connections stay with the old settings",
		zap.String("listener", name), zap.Int("connections", l.srv.OpenConnections()))
	l.view.Close()
	if !sameSocket {
		l.socket.close()
	}
	s.draining[l] = name
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for l.srv.OpenConnections() > 0 {
			select {
			case <-t.C:
			case <-s.stopping:
				return // Shutdown shuts it down with the others
			}
		}
		l.srv.Shutdown(context.Background()) // nothing left to wait for
		<-l.done
		s.mu.Lock()
		delete(s.draining, l)
		s.mu.Unlock()
	}()
}

// Shutdown stops accepting on every listener, lets in-flight requests
// finish until ctx ends, closes idle app connections with their linger,
// then closes the pools and the admin listener.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	close(s.stopping)
	ls, ups, adm, debug := s.listeners, s.upstreams, s.admin, s.debug
	var all []*listener
	for _, l := range ls {
		all = append(all, l)
	}
	for l := range s.draining {
		all = append(all, l)
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	var errs []error
	var mu sync.Mutex
	for _, l := range ls {
		l.socket.close() // refuse new connections at once, on every listener
	}
	for _, l := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.srv.Shutdown(ctx); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("listener %s: %w", l.cfg.Name, err))
				mu.Unlock()
			}
			<-l.done
		}()
	}
	wg.Wait()
	for _, u := range ups {
		u.close()
	}
	s.closeCaptures()
	s.retiring.Wait()
	for _, a := range []*admin.Server{adm, debug} {
		if a != nil {
			a.Shutdown(ctx)
		}
	}
	s.stopMemory()
	<-s.memoryDone
	return errors.Join(errs...)
}

// ready is /readyz: unstuck can carry traffic. A Sidecar exists only once
// its configuration is loaded and every listener is bound, so that is
// ready until Shutdown; with admin.ready_requires_upstream, every upstream
// must also be reachable (see upstreamsReachable).
func (s *Sidecar) ready() error {
	s.mu.Lock()
	stopped, cfg := s.stopped, s.cfg
	s.mu.Unlock()
	switch {
	case stopped:
		return errors.New("shutting down")
	case cfg == nil:
		return errors.New("starting") // the admin listener binds before the proxy listeners
	case !cfg.Admin.ReadyRequiresUpstream:
		return nil
	}
	reach := s.upstreamsReachable()
	for _, name := range slices.Sorted(maps.Keys(reach)) {
		if err := reach[name]; err != nil {
			return fmt.Errorf("upstream %s: %w", name, err)
		}
	}
	return nil
}

// upstreamsReachable checks every upstream at once (see reachable): nil
// for a reachable one, else why not. It feeds /readyz and the
// unstuck_upstream_reachable gauge.
func (s *Sidecar) upstreamsReachable() map[string]error {
	s.mu.Lock()
	ups := maps.Clone(s.upstreams)
	s.mu.Unlock()
	out := make(map[string]error, len(ups))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, u := range ups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := reachable(u)
			mu.Lock()
			out[name] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// reachable reports whether u has an endpoint that takes connections: one
// with an open connection, or, failing that, one that accepts a TCP
// connection now (each tried for up to a second).
func reachable(u *upstream) error {
	for _, st := range u.pool.Stats() {
		if st.Open > 0 {
			return nil
		}
	}
	var last error
	for _, ep := range u.cfg.Endpoints {
		c, err := net.DialTimeout("tcp", ep, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
	}
	return fmt.Errorf("no endpoint reachable: %w", last)
}

func (s *Sidecar) poolViews() map[string]admin.PoolView {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]admin.PoolView, len(s.upstreams))
	for name, u := range s.upstreams {
		out[name] = u.pool
	}
	return out
}

// watchSockets points the socket-state metrics at the current listener
// ports and upstream endpoints. s.mu must be held.
func (s *Sidecar) watchSockets() {
	ports := map[string]uint16{}
	for name, l := range s.listeners {
		if a, ok := l.socket.ln.Addr().(*net.TCPAddr); ok {
			ports[name] = uint16(a.Port)
		}
	}
	eps := map[string][]string{}
	for name, u := range s.upstreams {
		eps[name] = u.cfg.Endpoints
	}
	ctx, cancel := context.WithTimeout(context.Background(), metrics.ResolveTimeout)
	defer cancel()
	if err := s.metrics.SetSockets(ctx, ports, eps); err != nil {
		s.log.Warn("socket metrics: cannot resolve an endpoint", zap.Error(err))
	}
}

// TLSProblems reads the TLS files of cfg's upstreams as a start would
// (CA bundle, client certificate and key, the key matching the
// certificate), for unstuck check. The error, if any, is a
// config.Problems.
func TLSProblems(cfg *config.Config) error {
	var ps config.Problems
	for _, name := range slices.Sorted(maps.Keys(cfg.Upstreams)) {
		if u := cfg.Upstreams[name]; u.TLS.Enabled {
			if _, err := tlsclient.New(u.TLS, servesTCP(cfg, name)); err != nil {
				ps = append(ps, config.Problem{Key: "upstreams." + name + ".tls", Msg: err.Error()})
			}
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// startChecks starts u's active health checks, if it has any: a GET of
// health.path, or for a tcp upstream or without a path a connect.
func (u *upstream) startChecks(log *zap.Logger) {
	h := u.cfg.Health
	if h.Interval <= 0 {
		return
	}
	path := h.Path
	if u.stream {
		path = "" // a tcp upstream need not speak HTTP
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		health.Run(ctx, health.Config{
			Interval: h.Interval, Timeout: h.Timeout, Path: path, Host: u.cfg.HostHeader,
			Healthy: h.Healthy, Unhealthy: h.Unhealthy,
			Logger: log.Named("health").With(zap.String("upstream", u.cfg.Name)),
		}, u.pool)
	}()
	u.stopChecks = func() { cancel(); <-done }
}

// servesTCP reports whether upstream name is a tcp listener's (config
// validation makes an upstream serve tcp or http listeners, not both).
func servesTCP(cfg *config.Config, name string) bool {
	for _, l := range cfg.Listeners {
		if l.Upstream == name && l.Protocol == "tcp" {
			return true
		}
	}
	return false
}

// needsNewServer reports listener changes, at the same address, that a
// running server cannot take: its fasthttp settings (the header limit is
// its read buffer size), its accept cap and its metric labels. The
// timeouts are read per request, so Update applies them. reuse_port and
// socket_mode apply when the address changes (or at restart).
func needsNewServer(a, b config.Listener) bool {
	return a.IdleTimeout != b.IdleTimeout || a.IdleReleaseAfter != b.IdleReleaseAfter ||
		a.Protocol != b.Protocol || a.Upstream != b.Upstream || a.Capture != b.Capture ||
		a.Limits.RequestHeaderBytes != b.Limits.RequestHeaderBytes || a.Limits.MaxConns != b.Limits.MaxConns
}

// poolConfig maps an upstream's configuration to its pool's.
func poolConfig(name string, u config.Upstream, log *zap.Logger, obs pool.Observer) pool.Config {
	return pool.Config{
		Name:      name,
		Endpoints: u.Endpoints,
		Linger:    u.Linger,
		MaxConns:  u.Pool.MaxConns,
		MaxIdle:   u.Pool.MaxIdle,
		MinIdle:   u.Pool.MinIdle,
		Balance:   u.Balance,
		Outlier: pool.OutlierConfig{
			ConsecutiveFailures: u.Outlier.ConsecutiveFailures,
			BaseEjection:        u.Outlier.BaseEjection,
			MaxEjectionPercent:  u.Outlier.MaxEjectionPercent,
		},
		IdleTimeout:    u.Pool.IdleTimeout,
		MaxLifetime:    u.Pool.MaxLifetime,
		MaxRequests:    u.Pool.MaxRequests,
		AcquireTimeout: u.Pool.AcquireTimeout,
		DialTimeout:    u.Dial.Timeout,

		RetireMargin:       float64(u.Pool.RetireMargin) / 100,
		NoLearnIdleTimeout: !u.Pool.LearnIdleTimeout,

		Source:      u.Dial.Source,
		SourcePorts: pool.PortRange{Lo: u.Dial.SourcePorts.Lo, Hi: u.Dial.SourcePorts.Hi},
		Keepalive:   keepalive(u.Dial.Keepalive),
		UserTimeout: u.Dial.UserTimeout,
		Logger:      log,
		Observer:    obs,

		ResponseHeaderBytes: u.Limits.ResponseHeaderBytes,
	}
}

// proxyConfig maps a listener's configuration, and the upstream it names
// in cfg, to its server's, forwarding to p.
func proxyConfig(name string, l config.Listener, cfg *config.Config, p *pool.Pool, log *zap.Logger, obs proxy.Observer) proxy.Config {
	u := cfg.Upstreams[l.Upstream]
	return proxy.Config{
		Name:        name,
		IdleTimeout: l.IdleTimeout,

		IdleReleaseAfter: l.IdleReleaseAfter,
		Linger:           l.Linger,
		AppFinTimeout:    l.AppFinTimeout,
		Keepalive:        keepalive(l.Keepalive),
		UserTimeout:      l.UserTimeout,

		ReadHeaderTimeout:     l.ReadHeaderTimeout,
		BodyReadTimeout:       l.BodyReadTimeout,
		SendTimeout:           l.SendTimeout,
		MaxRequestHeaderBytes: l.Limits.RequestHeaderBytes,
		MaxRequestBodyBytes:   l.Limits.RequestBodyBytes,
		MaxConns:              l.Limits.MaxConns,
		CloseOnHalfClose:      l.HalfClose == "close",
		HalfCloseTimeout:      l.HalfCloseTimeout,
		RefuseUpgrade:         !l.Upgrade,

		AccessLog: cfg.Log.Access,
		Logger:    log,
		Observer:  obs,
		Upstream:  proxyUpstream(l.Upstream, u, p),
	}
}

// proxyUpstream is what a server needs of upstream name, forwarding to p.
func proxyUpstream(name string, u config.Upstream, p *pool.Pool) proxy.Upstream {
	return proxy.Upstream{
		Name:                  name,
		Pool:                  p,
		Retries:               u.Retries,
		ResponseHeaderTimeout: u.Timeouts.ResponseHeader,
		ResponseIdleTimeout:   u.Timeouts.ResponseIdle,
		WriteTimeout:          u.Timeouts.Write,
		HostHeader:            u.HostHeader,
	}
}

func keepalive(k config.Keepalive) sockopt.Keepalive {
	return sockopt.Keepalive{Idle: k.Idle, Interval: k.Interval, Count: k.Count}
}

func levelOf(s string) zapcore.Level {
	l, err := zapcore.ParseLevel(s)
	if err != nil {
		return zapcore.InfoLevel // config validation rejects bad levels
	}
	return l
}
