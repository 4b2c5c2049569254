package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// tlsMetrics count TLS handshakes to upstreams.
type tlsMetrics struct {
	handshakes *prometheus.CounterVec   // upstream, resumed
	seconds    *prometheus.HistogramVec // upstream
}

func registerTLSMetrics(reg *prometheus.Registry) *tlsMetrics {
	m := &tlsMetrics{
		handshakes: counterVec("unstuck_upstream_tls_handshakes_total",
			"TLS handshakes with upstream endpoints that completed; resumed=\"true\" reused a session (no certificate exchange).",
			"upstream", "resumed"),
		seconds: histogramVec("unstuck_upstream_tls_handshake_seconds",
			"Time of completed TLS handshakes with upstream endpoints.",
			tlsBuckets, "upstream"),
	}
	reg.MustRegister(m.handshakes, m.seconds)
	return m
}

func (m *tlsMetrics) handshake(upstream string, resumed bool, d time.Duration) {
	m.handshakes.WithLabelValues(upstream, strconv.FormatBool(resumed)).Inc()
	m.seconds.WithLabelValues(upstream).Observe(d.Seconds())
}
