package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/proxy"
	"github.com/unstuck-proxy/unstuck/tlsclient"
)

// captured is a capture listener's destinations, and what they were made
// from: a reload that changes none of it keeps them.
type captured struct {
	key   captureKey
	dests *proxy.Destinations
}

// captureKey is everything a capture listener's destinations depend on.
type captureKey struct {
	stream    bool // a tcp listener's: stream pools
	capture   config.Capture
	upstreams map[string]config.Upstream // their settings, matched by address
}

// applyCaptures returns the destinations of each capture listener of cfg:
// the running ones where nothing they depend on changed, else new ones.
// The caller closes the old ones not kept (retireCaptures) once the new
// ones serve. s.mu must be held.
func (s *Sidecar) applyCaptures(cfg *config.Config) (map[string]*captured, error) {
	caps := map[string]*captured{}
	for _, name := range slices.Sorted(maps.Keys(cfg.Listeners)) {
		lc := cfg.Listeners[name]
		if !lc.Capture {
			continue
		}
		key := captureKey{stream: lc.Protocol == "tcp", capture: cfg.Capture, upstreams: cfg.Upstreams}
		if old := s.captures[name]; old != nil && reflect.DeepEqual(old.key, key) {
			caps[name] = old
			continue
		}
		m, err := s.newMatcher(name, key)
		if err != nil {
			for n, c := range caps {
				if s.captures[n] != c {
					c.dests.Close() // made here: nothing uses them
				}
			}
			return nil, err
		}
		caps[name] = &captured{key: key, dests: proxy.NewDestinations(proxy.DestinationsConfig{
			Max:         cfg.Capture.MaxDestinations,
			IdleTimeout: cfg.Capture.IdleTimeout,
			New:         m.newDestination,
			Closed:      func(_ netip.AddrPort, up *proxy.Upstream) { s.metrics.ForgetUpstream(up.Name) },
			CheckLoops:  cfg.Capture.Mark == 0, // with a mark, an app may run as unstuck's UID
			Logger:      s.log.With(zap.String("listener", name)),
		})}
	}
	s.warnSelfCapture(cfg)
	return caps, nil
}

// retireCaptures closes, in the background, the destinations of s's
// capture listeners that caps does not keep: busy connections close when
// their pairs and exchanges give them back. s.mu must be held.
func (s *Sidecar) retireCaptures(caps map[string]*captured) {
	for name, old := range s.captures {
		if caps[name] != old {
			s.retiring.Add(1)
			go func() {
				defer s.retiring.Done()
				old.dests.Close()
			}()
		}
	}
	s.captures = caps
}

// closeCaptures closes every capture listener's destinations, at Shutdown
// once the listeners are shut down.
func (s *Sidecar) closeCaptures() {
	s.mu.Lock()
	caps := s.captures
	s.captures = nil
	s.mu.Unlock()
	for _, c := range caps {
		c.dests.Close()
	}
}

// listenerConfig is proxyConfig for listener name: for a capture listener,
// with its destinations instead of an upstream's pool.
func (s *Sidecar) listenerConfig(name string, lc config.Listener, cfg *config.Config, ups map[string]*upstream, caps map[string]*captured) proxy.Config {
	var p *pool.Pool
	if u := ups[lc.Upstream]; u != nil {
		p = u.pool
	}
	pc := proxyConfig(name, lc, cfg, p, s.log, nil)
	if c := caps[name]; lc.Capture && c != nil {
		pc.Capture = c.dests
	}
	return pc
}

// warnSelfCapture warns when this process's own connections would be
// captured by the rules cfg describes: its UID is not excluded and no
// mark is set.
func (s *Sidecar) warnSelfCapture(cfg *config.Config) {
	k := cfg.Capture
	if k.Listener == "" || k.Mark != 0 || slices.Contains(k.ExcludeUIDs, uint32(os.Getuid())) {
		return
	}
	s.log.Warn("capture.exclude_uids does not list this process's UID: if unstuck capture's rules are installed, its connections to captured destinations are captured again, and fail",
		zap.Int("uid", os.Getuid()), zap.Uint32s("exclude_uids", k.ExcludeUIDs))
}

// matcher makes the upstreams of one capture listener's destinations.
type matcher struct {
	s        *Sidecar
	listener string
	key      captureKey
	byAddr   map[netip.AddrPort]string // a named upstream's endpoint → its name
	tls      map[string]*tls.Config    // by upstream name; "" for none
}

// newMatcher resolves the endpoints of cfg's upstreams, so that a
// destination that is one of them takes that upstream's settings (the
// first by name, if several list it), and builds their TLS configs.
func (s *Sidecar) newMatcher(listener string, key captureKey) (*matcher, error) {
	m := &matcher{s: s, listener: listener, key: key, byAddr: map[netip.AddrPort]string{}, tls: map[string]*tls.Config{}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, name := range slices.Sorted(maps.Keys(key.upstreams)) {
		u := key.upstreams[name]
		for _, ep := range u.Endpoints {
			for _, a := range addrsOf(ctx, ep) {
				if _, taken := m.byAddr[a]; !taken {
					m.byAddr[a] = name
				}
			}
		}
		if u.TLS.Enabled {
			tc, err := tlsclient.New(u.TLS, key.stream)
			if err != nil {
				return nil, fmt.Errorf("upstream %s: %w", name, err)
			}
			m.tls[name] = tc
		}
	}
	return m, nil
}

// addrsOf returns the addresses of endpoint host:port: itself for an IP,
// the name's addresses otherwise (none if it does not resolve now).
func addrsOf(ctx context.Context, endpoint string) []netip.AddrPort {
	if a, err := netip.ParseAddrPort(endpoint); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.Addr().Unmap(), a.Port())}
	}
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		return nil
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	out := make([]netip.AddrPort, len(ips))
	for i, ip := range ips {
		out[i] = netip.AddrPortFrom(ip.Unmap(), uint16(p))
	}
	return out
}

// newDestination makes the upstream of dst, seen for the first time: a
// pool with dst as its one endpoint, under the settings of the upstream
// that lists dst, or the defaults. Its name, the upstream label of its
// metrics, is the listener's and dst's, such as captured/10.0.0.5:5432.
func (m *matcher) newDestination(dst netip.AddrPort) (proxy.Upstream, error) {
	settings, uc := m.byAddr[dst], config.DefaultUpstream()
	if settings != "" {
		uc = m.key.upstreams[settings]
	}
	name := m.listener + "/" + dst.String()
	pc := poolConfig(name, uc, m.s.log, m.s.metrics.Upstream(name))
	pc.Endpoints = []string{dst.String()}
	pc.Stream = m.key.stream
	pc.Mark = uint32(m.key.capture.Mark)
	if tc := m.tls[settings]; tc != nil {
		pc.TLS, pc.TLSHandshakeTimeout = tc, uc.Dial.TLSHandshakeTimeout
	}
	p, err := pool.New(pc)
	if err != nil {
		return proxy.Upstream{}, fmt.Errorf("destination %s: %w", dst, err)
	}
	m.s.metrics.AddPool(name, p)
	if ce := m.s.log.Check(zap.DebugLevel, "new captured destination"); ce != nil {
		ce.Write(zap.String("listener", m.listener), zap.Stringer("destination", dst), zap.String("settings", settings))
	}
	return proxyUpstream(name, uc, p), nil
}
