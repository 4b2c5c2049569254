package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/unstuck-proxy/unstuck/proxy"
)

// pairCauses is every way a TCP pair ends (proxy.Pair*).
var pairCauses = []string{
	proxy.PairAppFIN, proxy.PairUpstreamFIN, proxy.PairAppRST, proxy.PairUpstreamRST,
	proxy.PairHalfCloseTimeout, proxy.PairIdleTimeout, proxy.PairDialError, proxy.PairShutdown,
}

// pairMetrics are the metrics of TCP pairs (tcp listeners and HTTP
// upgrades) and of warm pools.
type pairMetrics struct {
	open   *prometheus.GaugeVec   // listener
	closes *prometheus.CounterVec // listener, cause
	bytes  *prometheus.CounterVec // listener, direction
	warms  *prometheus.CounterVec // upstream, result
}

func registerPairMetrics(reg *prometheus.Registry) *pairMetrics {
	m := &pairMetrics{
		open: gaugeVec("unstuck_tcp_pairs",
			"TCP pairs open (an app connection and its own upstream connection): tcp listeners and HTTP upgrades.",
			"listener"),
		closes: counterVec("unstuck_tcp_pair_closes_total",
			"TCP pairs ended, by what ended them: app_fin, upstream_fin, app_rst, upstream_rst, half_close_timeout, idle_timeout, dial_error, shutdown.",
			"listener", "cause"),
		bytes: counterVec("unstuck_tcp_bytes_total",
			"Bytes moved by TCP pairs, counted when a pair ends; direction is to_upstream or to_app.",
			"listener", "direction"),
		warms: counterVec("unstuck_pool_warm_acquires_total",
			"Acquires from a warm pool (pool.min_idle): result hit (a warm connection was ready) or miss (dialed).",
			"upstream", "result"),
	}
	reg.MustRegister(m.open, m.closes, m.bytes, m.warms)
	return m
}

func (m *pairMetrics) warm(upstream string, hit bool) {
	result := "miss"
	if hit {
		result = "hit"
	}
	m.warms.WithLabelValues(upstream, result).Inc()
}

// forListener creates a listener's series, at zero, so that a rate alert
// sees them from the start.
func (m *pairMetrics) forListener(name string) {
	m.open.WithLabelValues(name)
	for _, c := range pairCauses {
		m.closes.WithLabelValues(name, c)
	}
	m.bytes.WithLabelValues(name, "to_upstream")
	m.bytes.WithLabelValues(name, "to_app")
}

func (o *listenerObserver) PairOpened() { o.m.pairs.open.WithLabelValues(o.listener).Inc() }

func (o *listenerObserver) PairEnded(cause string, toUpstream, toApp int64) {
	m := o.m.pairs
	if cause != proxy.PairDialError {
		m.open.WithLabelValues(o.listener).Dec()
	}
	m.closes.WithLabelValues(o.listener, cause).Inc()
	m.bytes.WithLabelValues(o.listener, "to_upstream").Add(float64(toUpstream))
	m.bytes.WithLabelValues(o.listener, "to_app").Add(float64(toApp))
}
