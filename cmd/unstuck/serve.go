package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/proxy"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// serve runs the sidecar described by cfg until ctx is cancelled: one pool
// per upstream, one proxy server per listener. Every listener is bound
// before any serves, so a bad address fails the start, not half of it.
func serve(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
	pools := make(map[string]*pool.Pool, len(cfg.Upstreams))
	defer func() {
		for _, p := range pools {
			p.Close()
		}
	}()
	for _, name := range sortedKeys(cfg.Upstreams) {
		u := cfg.Upstreams[name]
		p, err := pool.New(pool.Config{
			Name:           name,
			Endpoints:      u.Endpoints,
			Linger:         u.Linger,
			MaxConns:       u.Pool.MaxConns,
			MaxIdle:        u.Pool.MaxIdle,
			IdleTimeout:    u.Pool.IdleTimeout,
			MaxLifetime:    u.Pool.MaxLifetime,
			MaxRequests:    u.Pool.MaxRequests,
			AcquireTimeout: u.Pool.AcquireTimeout,
			DialTimeout:    u.Dial.Timeout,
			Source:         u.Dial.Source,
			SourcePorts:    pool.PortRange{Lo: u.Dial.SourcePorts.Lo, Hi: u.Dial.SourcePorts.Hi},
			Keepalive:      keepalive(u.Dial.Keepalive),
			UserTimeout:    u.Dial.UserTimeout,
			Logger:         log,
		})
		if err != nil {
			return fmt.Errorf("upstream %s: %w", name, err)
		}
		pools[name] = p
	}

	type listener struct {
		name string
		ln   net.Listener
		srv  *proxy.Server
	}
	var listeners []listener
	defer func() {
		for _, l := range listeners {
			l.ln.Close() // no-op once Serve has closed it
		}
	}()
	for _, name := range sortedKeys(cfg.Listeners) {
		l := cfg.Listeners[name]
		ln, err := proxy.ListenWith(l.Listen, proxy.ListenOptions{ReusePort: l.ReusePort, SocketMode: l.SocketMode})
		if err != nil {
			return fmt.Errorf("listener %s: %w", name, err)
		}
		u := cfg.Upstreams[l.Upstream]
		srv := proxy.New(proxy.Config{
			Name:          name,
			IdleTimeout:   l.IdleTimeout,
			Linger:        l.Linger,
			AppFinTimeout: l.AppFinTimeout,
			Keepalive:     keepalive(l.Keepalive),
			UserTimeout:   l.UserTimeout,
			Logger:        log,
			Upstream: proxy.Upstream{
				Name:                  l.Upstream,
				Pool:                  pools[l.Upstream],
				Retries:               u.Retries,
				ResponseHeaderTimeout: u.Timeouts.ResponseHeader,
				HostHeader:            u.HostHeader,
			},
		})
		listeners = append(listeners, listener{name: name, ln: ln, srv: srv})
	}

	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() {
			if err := l.srv.Serve(l.ln); err != nil {
				errc <- fmt.Errorf("listener %s: %w", l.name, err)
				return
			}
			errc <- nil
		}()
		log.Info("listening", zap.String("listener", l.name), zap.Stringer("addr", l.ln.Addr()),
			zap.String("upstream", cfg.Listeners[l.name].Upstream))
	}

	var failure error
	select {
	case <-ctx.Done():
		log.Info("shutting down", zap.Duration("timeout", cfg.ShutdownTimeout))
	case failure = <-errc:
		log.Error("listener failed", zap.Error(failure))
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	for _, l := range listeners {
		if err := l.srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.Warn("shutdown", zap.String("listener", l.name), zap.Error(err))
		}
	}
	remaining := len(listeners)
	if failure != nil {
		remaining--
	}
	for range remaining {
		if err := <-errc; err != nil && failure == nil {
			failure = err
		}
	}
	return failure
}

func keepalive(k config.Keepalive) sockopt.Keepalive {
	return sockopt.Keepalive{Idle: k.Idle, Interval: k.Interval, Count: k.Count}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
