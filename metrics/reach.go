package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// SetUpstreamCheck makes unstuck_upstream_reachable report check at each
// scrape: by upstream name, nil for one that is reachable, else why not.
// check runs on the scraping goroutine and may take as long as its dials.
func (m *Metrics) SetUpstreamCheck(check func() map[string]error) {
	c := m.upstreamCheck
	c.mu.Lock()
	defer c.mu.Unlock()
	c.check = check
}

// reachCollector asks, at each scrape, which upstreams are reachable.
type reachCollector struct {
	desc *prometheus.Desc

	mu    sync.Mutex
	check func() map[string]error // guarded by mu; nil: no series
}

func newReachCollector() *reachCollector {
	return &reachCollector{desc: prometheus.NewDesc("unstuck_upstream_reachable",
		"1 if the upstream has an open connection, or one of its endpoints accepted a TCP connection at scrape time; else 0. /readyz fails on a 0 only with admin.ready_requires_upstream.",
		[]string{"upstream"}, nil)}
}

func (c *reachCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *reachCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	check := c.check
	c.mu.Unlock()
	if check == nil {
		return
	}
	for name, err := range check() {
		v := 1.0
		if err != nil {
			v = 0
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, name)
	}
}
