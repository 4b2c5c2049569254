package metrics

import (
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/unstuck-proxy/unstuck/pool"
)

// StatsSource is what AddPool reads at scrape time; *pool.Pool is one.
type StatsSource interface {
	Stats() []pool.EndpointStats
}

// AddPool makes upstream name's connections appear in
// unstuck_upstream_connections, and its learned idle timeouts in
// unstuck_upstream_learned_idle_timeout_seconds, read from p.Stats at each
// scrape. A pool already added under name is replaced (a reload swapped
// it).
func (m *Metrics) AddPool(name string, p StatsSource) {
	m.pools.mu.Lock()
	defer m.pools.mu.Unlock()
	m.pools.pools[name] = p
}

// RemovePool stops reporting upstream name's connections; its series
// disappear from the next scrape. Unknown names are ignored.
func (m *Metrics) RemovePool(name string) {
	m.pools.mu.Lock()
	defer m.pools.mu.Unlock()
	delete(m.pools.pools, name)
}

// poolCollector reports each added pool's connections by endpoint and
// state, and each endpoint's learned idle timeout.
type poolCollector struct {
	conns, up, learned *prometheus.Desc

	mu    sync.Mutex
	pools map[string]StatsSource // guarded by mu
}

func newPoolCollector() *poolCollector {
	return &poolCollector{
		conns: prometheus.NewDesc("unstuck_upstream_connections",
			"Open upstream connections at scrape time, by state: idle (pooled, watched for a FIN) or active (serving a request, or dialing).",
			[]string{"upstream", "endpoint", "state"}, nil),
		up: prometheus.NewDesc("unstuck_upstream_endpoint_up",
			"1 for an endpoint taking requests; 0 while it is unhealthy (active checks), ejected (outlier detection) or draining (gone from DNS), as state says.",
			[]string{"upstream", "endpoint", "state"}, nil),
		learned: prometheus.NewDesc("unstuck_upstream_learned_idle_timeout_seconds",
			"The idle timeout an endpoint's server was learned to have, from the idle connections it closed; idle connections are retired before it. Absent until learned.",
			[]string{"upstream", "endpoint"}, nil),
		pools: make(map[string]StatsSource),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.conns
	ch <- c.up
	ch <- c.learned
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	type named struct {
		name string
		p    StatsSource
	}
	c.mu.Lock()
	pools := make([]named, 0, len(c.pools))
	for name, p := range c.pools {
		pools = append(pools, named{name, p})
	}
	c.mu.Unlock()
	slices.SortFunc(pools, func(a, b named) int { return strings.Compare(a.name, b.name) })

	for _, np := range pools {
		// Stats takes the pool's lock; ours is not held. An endpoint listed
		// twice is summed: one series each (the shorter learned timeout).
		stats := np.p.Stats()
		merged := make([]pool.EndpointStats, 0, len(stats))
	next:
		for _, s := range stats {
			for i := range merged {
				if merged[i].Endpoint == s.Endpoint {
					merged[i].Open += s.Open
					merged[i].Idle += s.Idle
					if l := s.LearnedIdleTimeout; l > 0 && (merged[i].LearnedIdleTimeout == 0 || l < merged[i].LearnedIdleTimeout) {
						merged[i].LearnedIdleTimeout = l
					}
					continue next
				}
			}
			merged = append(merged, s)
		}
		for _, s := range merged {
			up := 0.0
			if s.State == "up" {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, np.name, s.Endpoint, s.State)
			ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue,
				float64(s.Idle), np.name, s.Endpoint, "idle")
			ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue,
				float64(s.Open-s.Idle), np.name, s.Endpoint, "active")
			if s.LearnedIdleTimeout > 0 {
				ch <- prometheus.MustNewConstMetric(c.learned, prometheus.GaugeValue,
					s.LearnedIdleTimeout.Seconds(), np.name, s.Endpoint)
			}
		}
	}
}
