package metrics

import "github.com/prometheus/client_golang/prometheus"

// ForgetUpstream removes every series of upstream name: its pool's
// connections (RemovePool) and its counters and histograms. A capture
// listener's destinations come and go (each is an upstream of its own,
// closed once idle), so that their series are at most as many as the
// destinations open, not as many as ever were. Counters of a name used
// again start from zero, which Prometheus's rate reads as a reset.
func (m *Metrics) ForgetUpstream(name string) {
	m.RemovePool(name)
	l := prometheus.Labels{"upstream": name}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{
		m.dials, m.dialErrors, m.waits, m.waitSeconds, m.exhausted, m.closes, m.reaction,
		m.pairs.warms, m.tls.handshakes, m.tls.seconds,
	} {
		v.DeletePartialMatch(l)
	}
}
