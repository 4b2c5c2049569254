package metrics

import "testing"

// The DNS error hook starts its series at 0 and counts; the endpoint
// gauge counts each pool's endpoints that are not draining, each once,
// and goes with its pool.
func TestDNSMetrics(t *testing.T) {
	m := New()
	reg := m.Registry()
	fail := m.DNSErrors("svc")
	want(t, reg, "unstuck_dns_resolve_errors_total", l{"upstream": "svc"}, 0)
	fail()
	fail()
	want(t, reg, "unstuck_dns_resolve_errors_total", l{"upstream": "svc"}, 2)

	m.AddPool("svc", fakeStats{
		{Endpoint: "127.0.0.2:80", State: "up"},
		{Endpoint: "127.0.0.3:80", State: "ejected"},
		{Endpoint: "127.0.0.3:80", State: "ejected"},
		{Endpoint: "127.0.0.4:80", State: "draining"},
	})
	m.AddPool("static", fakeStats{{Endpoint: "10.0.0.1:80", State: "up"}})
	want(t, reg, "unstuck_upstream_endpoints", l{"upstream": "svc"}, 2)
	want(t, reg, "unstuck_upstream_endpoints", l{"upstream": "static"}, 1)

	m.RemovePool("static")
	if _, ok := value(t, reg, "unstuck_upstream_endpoints", l{"upstream": "static"}); ok {
		t.Error("a removed upstream's endpoint count is still reported")
	}
}
