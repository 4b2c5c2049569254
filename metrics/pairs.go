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
// listenerPairs are one listener's pair series, made up front (at zero,
// so that a rate alert sees them from the start) and read-only after: a
// pair's open and end take no label lookup.
type listenerPairs struct {
	open           prometheus.Gauge
	closes         map[string]prometheus.Counter // by cause
	toUpstream     prometheus.Counter
	toApp          prometheus.Counter
	closesFallback *prometheus.CounterVec
	listener       string
}

func (m *pairMetrics) forListener(name string) listenerPairs {
	lp := listenerPairs{
		open:           m.open.WithLabelValues(name),
		closes:         make(map[string]prometheus.Counter, len(pairCauses)),
		toUpstream:     m.bytes.WithLabelValues(name, "to_upstream"),
		toApp:          m.bytes.WithLabelValues(name, "to_app"),
		closesFallback: m.closes,
		listener:       name,
	}
	for _, c := range pairCauses {
		lp.closes[c] = m.closes.WithLabelValues(name, c)
	}
	return lp
}

func (o *listenerObserver) PairOpened() { o.pairs.open.Inc() }

func (o *listenerObserver) PairEnded(cause string, toUpstream, toApp int64) {
	lp := &o.pairs
	if cause != proxy.PairDialError {
		lp.open.Dec()
	}
	if c, ok := lp.closes[cause]; ok {
		c.Inc()
	} else {
		lp.closesFallback.WithLabelValues(lp.listener, cause).Inc() // a cause added to proxy but not here
	}
	lp.toUpstream.Add(float64(toUpstream))
	lp.toApp.Add(float64(toApp))
}
