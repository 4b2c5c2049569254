package metrics

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// dnsMetrics are the endpoint sets of upstreams, which DNS changes for an
// upstream whose endpoints are names (resolve/).
type dnsMetrics struct {
	errors    *prometheus.CounterVec // upstream
	endpoints *prometheus.Desc       // upstream; counted at scrape time from the pools
	pools     *poolCollector         // the pools AddPool added
}

func registerDNSMetrics(reg *prometheus.Registry, pools *poolCollector) *dnsMetrics {
	m := &dnsMetrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "unstuck_dns_resolve_errors_total",
			Help: "Lookups of an upstream's endpoint name that failed or found no address; the name keeps its last good addresses.",
		}, []string{"upstream"}),
		endpoints: prometheus.NewDesc("unstuck_upstream_endpoints",
			"Endpoints of the upstream at scrape time: its IP endpoints and every address its names resolve to (a name not resolved yet counts once); draining ones, gone from DNS, are not counted.",
			[]string{"upstream"}, nil),
		pools: pools,
	}
	reg.MustRegister(m.errors, m)
	return m
}

// DNSErrors returns the hook that counts one failed lookup of upstream's
// endpoint names (resolve.Config.OnFailure). Its series starts at 0.
func (m *Metrics) DNSErrors(upstream string) func() {
	return m.dns.errors.WithLabelValues(upstream).Inc
}

func (m *dnsMetrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.endpoints }

// Collect sends unstuck_upstream_endpoints for each pool: its endpoints
// not draining, an endpoint listed twice counted once.
func (m *dnsMetrics) Collect(ch chan<- prometheus.Metric) {
	m.pools.mu.Lock()
	pools := make(map[string]StatsSource, len(m.pools.pools))
	for name, p := range m.pools.pools {
		pools[name] = p
	}
	m.pools.mu.Unlock()
	for name, p := range pools {
		var eps []string
		for _, s := range p.Stats() { // takes the pool's lock; ours is not held
			if s.State != "draining" && !slices.Contains(eps, s.Endpoint) {
				eps = append(eps, s.Endpoint)
			}
		}
		ch <- prometheus.MustNewConstMetric(m.endpoints, prometheus.GaugeValue, float64(len(eps)), name)
	}
}
