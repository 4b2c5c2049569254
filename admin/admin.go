// Package admin serves unstuck's admin listeners. It is low-traffic, so it
// uses net/http, not fasthttp. A Server has one of two roles:
//
// Probes (admin.listen), fit for the pod IP, where the kubelet and
// Prometheus reach it:
//
//	GET /healthz     200 "ok\n" while the process runs
//	GET /readyz      200 "ready\n", or 503 and the reason on one line
//	GET /metrics     Prometheus text format
//
// Debug (admin.debug_listen), on loopback only, for a person on the host
// or behind kubectl port-forward:
//
//	GET /debug/pool     per upstream: {"endpoints": Stats(), "conns": Snapshot()}
//	GET /debug/pprof/   Go's profiler, while Config.Pprof says so (else 404)
//
// Other paths are 404; other methods than GET and HEAD are 405. The port
// keeps a file descriptor in reserve, so that it answers even when the
// process has run out of them (see reserveListener).
package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/metrics"
	"github.com/unstuck-proxy/unstuck/pool"
)

// DefaultAddr is where a Config without Addr listens: an ephemeral port on
// loopback (read it with Addr).
const DefaultAddr = "127.0.0.1:0"

// Timeouts of the admin server. A scrape reads every socket table, so the
// write timeout leaves room for a large host.
const (
	readHeaderTimeout = 5 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
)

// PoolView is what /debug/pool shows of one upstream's pool; *pool.Pool is
// one.
type PoolView interface {
	Stats() []pool.EndpointStats
	Snapshot() []pool.ConnInfo
}

// Role says which endpoints a Server serves.
type Role int

const (
	// Probes serves /healthz, /readyz and /metrics.
	Probes Role = iota
	// Debug serves /debug/pool and, while Config.Pprof says so,
	// /debug/pprof/. Its address must be a loopback one (config checks).
	Debug
)

// Config is what the admin server needs. A zero value means the documented
// default.
type Config struct {
	Addr    string           // host:port; default DefaultAddr
	Role    Role             // default Probes
	Metrics *metrics.Metrics // Probes; nil: /metrics is 404
	// Ready reports whether the sidecar can carry traffic: nil, else why
	// not. It is called for each /readyz (Probes); nil means always ready.
	Ready func() error
	// Pools returns the current pools by upstream name; it is called for
	// each /debug/pool (Debug), so a reload's new pools show. nil: no pools.
	Pools func() map[string]PoolView
	// Pprof reports whether /debug/pprof/ is served (Debug); it is asked
	// at each request, so a reload turns the profiler on or off in place.
	// nil: never.
	Pprof  func() bool
	Logger *zap.Logger // default: no logging
}

// Server is the admin HTTP server.
type Server struct {
	cfg     Config
	log     *zap.Logger
	handler http.Handler

	mu   sync.Mutex
	ln   net.Listener  // set by Start; guarded by mu
	srv  *http.Server  // set by Start; guarded by mu
	done chan struct{} // closed when serve returns; set by Start
}

// New returns a server for cfg; Start binds and serves it.
func New(cfg Config) *Server {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Server{cfg: cfg, log: cfg.Logger.Named("admin")}
	s.handler = s.newHandler()
	return s
}

// Handler returns the admin endpoints, for tests or to mount elsewhere.
func (s *Server) Handler() http.Handler { return s.handler }

// Start binds Config.Addr (an error if it is taken) and serves in a
// goroutine it owns until Shutdown. Starting twice is an error.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("admin: already started")
	}
	tl, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("admin: listen: %w", err)
	}
	ln, err := newReserveListener(tl, s.log)
	if err != nil {
		tl.Close()
		return fmt.Errorf("admin: descriptor reserve: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           closeReserved(s.handler),
		ConnContext:       markReserved,
		ReadHeaderTimeout: readHeaderTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          zap.NewStdLog(s.log),
	}
	s.done = make(chan struct{})
	go s.serve(s.srv, ln, s.done)
	msg := "admin listening"
	if s.cfg.Role == Debug {
		msg = "debug listening"
	}
	s.log.Info(msg, zap.Stringer("addr", ln.Addr()))
	return nil
}

// serve runs srv on ln until Shutdown, then closes done.
func (s *Server) serve(srv *http.Server, ln net.Listener, done chan<- struct{}) {
	defer close(done)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("admin server stopped", zap.Error(err))
	}
}

// Addr returns the bound address, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting, lets in-flight requests finish until ctx ends
// (then closes their connections), and returns once the serving goroutine
// has exited. It returns ctx's error if requests were cut off. Before Start
// it does nothing.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		srv.Close() // ctx ended: cut the stragglers
	}
	<-done // Serve returns as soon as the listener is closed
	return err
}

func (s *Server) newHandler() http.Handler {
	mux := http.NewServeMux()
	// "GET" patterns also match HEAD; the mux answers other methods 405 and
	// unknown paths 404.
	if s.cfg.Role == Debug {
		mux.HandleFunc("GET /debug/pool", s.debugPool)
		// Go's profiler, for "where does the CPU go" on a live sidecar.
		mux.Handle("GET /debug/pprof/", s.whilePprof(pprof.Index))
		mux.Handle("GET /debug/pprof/profile", s.whilePprof(pprof.Profile))
		mux.Handle("GET /debug/pprof/trace", s.whilePprof(pprof.Trace))
		mux.Handle("GET /debug/pprof/symbol", s.whilePprof(pprof.Symbol))
		return mux
	}
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.cfg.Metrics != nil {
		reg := s.cfg.Metrics.Registry()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog: zap.NewStdLog(s.log.Named("metrics")),
			// A failed collector (say, /proc/net unreadable) must not hide
			// the others.
			ErrorHandling: promhttp.ContinueOnError,
		}))
	}
	return mux
}

// whilePprof serves h while Config.Pprof says so, else 404 as for any
// unknown path.
func (s *Server) whilePprof(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Pprof == nil || !s.cfg.Pprof() {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	})
}

func writeText(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body)) // the scraper went away: nothing to do
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeText(w, http.StatusOK, "ok\n")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			reason := strings.Join(strings.Fields(err.Error()), " ") // one line
			writeText(w, http.StatusServiceUnavailable, reason+"\n")
			return
		}
	}
	writeText(w, http.StatusOK, "ready\n")
}

// poolDebug is one upstream in /debug/pool.
type poolDebug struct {
	Endpoints []pool.EndpointStats `json:"endpoints"`
	Conns     []pool.ConnInfo      `json:"conns"`
}

// debugPool writes every pool as JSON: upstreams by name (encoding/json
// sorts map keys), endpoints in config order, connections by endpoint then
// local address.
func (s *Server) debugPool(w http.ResponseWriter, _ *http.Request) {
	var pools map[string]PoolView
	if s.cfg.Pools != nil {
		pools = s.cfg.Pools()
	}
	out := make(map[string]poolDebug, len(pools))
	for name, p := range pools {
		d := poolDebug{Endpoints: p.Stats(), Conns: p.Snapshot()}
		if d.Endpoints == nil {
			d.Endpoints = []pool.EndpointStats{}
		}
		if d.Conns == nil {
			d.Conns = []pool.ConnInfo{}
		}
		slices.SortFunc(d.Conns, func(a, b pool.ConnInfo) int {
			return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Local, b.Local))
		})
		out[name] = d
	}
	body, err := json.MarshalIndent(out, "", "  ")
	if err != nil { // only plain structs and strings: cannot happen
		s.log.Error("encoding /debug/pool", zap.Error(err))
		writeText(w, http.StatusInternalServerError, "encoding failed\n")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(append(body, '\n'))
}
