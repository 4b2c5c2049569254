package metrics

import (
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/proxy"
)

// TestAddedLatency: both phases of unstuck_proxy_added_seconds exist at
// zero from the listener's start, each observation lands in its phase's
// series (a phase proxy adds later in one of its own), in the sub-
// millisecond buckets, and observing allocates nothing.
func TestAddedLatency(t *testing.T) {
	m := New()
	o := m.Listener("in", "app")
	reg := m.Registry()
	lp := func(phase string) l { return l{"listener": "in", "upstream": "app", "phase": phase} }
	const name = "unstuck_proxy_added_seconds"
	wantBy(t, reg, name, lp, map[string]float64{proxy.AddedRequest: 0, proxy.AddedResponse: 0})

	o.Added(proxy.AddedRequest, 15*time.Microsecond)
	o.Added(proxy.AddedRequest, 30*time.Microsecond)
	o.Added(proxy.AddedResponse, 2*time.Millisecond)
	o.Added("new_phase", time.Microsecond)
	wantBy(t, reg, name, lp, map[string]float64{proxy.AddedRequest: 2, proxy.AddedResponse: 1, "new_phase": 1})

	if b := addedBuckets; b[0] != 10e-6 || b[len(b)-1] < 0.1 || b[len(b)-1] > 0.2 {
		t.Errorf("added buckets %v: want 10µs to about 100ms", b)
	}
	for _, phase := range []string{proxy.AddedRequest, proxy.AddedResponse} {
		if n := testing.AllocsPerRun(1000, func() { o.Added(phase, 20*time.Microsecond) }); n != 0 {
			t.Errorf("Added(%s): %v allocations per call, want 0", phase, n)
		}
	}
}
