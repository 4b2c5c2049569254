package metrics

import (
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/unstuck-proxy/unstuck"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/proxy"
)

// value returns the value of the series name{labels} (all its labels, no
// more), and whether it exists. Histograms give their sample count.
func value(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; !ok || v != lp.GetValue() {
					continue metrics
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), true
			default:
				t.Fatalf("%s: unexpected type %v", name, mf.GetType())
			}
		}
	}
	return 0, false
}

// want checks the series name{labels} exists with value v.
func want(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string, v float64) {
	t.Helper()
	got, ok := value(t, reg, name, labels)
	if !ok {
		t.Errorf("%s%v: no such series", name, labels)
		return
	}
	if got != v {
		t.Errorf("%s%v = %v, want %v", name, labels, got, v)
	}
}

type l = map[string]string

// wantBy checks several series of metric name that differ in one label:
// labels(k) names the series that should have value values[k]. Keys are
// checked in order, so failures read the same on every run.
func wantBy(t *testing.T, reg prometheus.Gatherer, name string, labels func(string) l, values map[string]float64) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(values)) {
		want(t, reg, name, labels(k), values[k])
	}
}

func TestPrecreatedSeries(t *testing.T) {
	m := New()
	m.Upstream("app")
	m.Listener("in", "app")
	reg := m.Registry()

	for _, c := range []string{"fin", "rst", "unsolicited", "idle_timeout", "max_lifetime",
		"max_requests", "max_idle", "server_close", "error", "shutdown", "replaced", "timeout"} {
		want(t, reg, "unstuck_upstream_closes_total", l{"upstream": "app", "cause": c}, 0)
	}
	for _, code := range []string{"2xx", "3xx", "4xx", "5xx"} {
		want(t, reg, "unstuck_requests_total", l{"listener": "in", "upstream": "app", "code": code, "reason": ""}, 0)
	}
	for reason, class := range proxy.Reasons {
		want(t, reg, "unstuck_requests_total", l{"listener": "in", "upstream": "app", "code": codeClasses[class], "reason": reason}, 0)
	}
	for _, r := range []string{"dial", "stale"} {
		want(t, reg, "unstuck_retries_total", l{"listener": "in", "upstream": "app", "reason": r}, 0)
	}
	for _, how := range []string{"graceful", "reset", "bounded", "escalated"} {
		want(t, reg, "unstuck_app_connections_closed_total", l{"listener": "in", "how": how}, 0)
	}
	for _, r := range []string{"bad_request", "header_too_large", "uri_too_long", "body_too_large",
		"header_timeout", "body_timeout", "body_incomplete", "method", "conn_limit"} {
		want(t, reg, "unstuck_requests_refused_total", l{"listener": "in", "reason": r}, 0)
	}
	for _, p := range []string{"request", "response_header", "response_body"} {
		want(t, reg, "unstuck_app_aborts_total", l{"listener": "in", "upstream": "app", "phase": p}, 0)
	}
	for _, p := range []string{"response_header", "response_idle", "write"} {
		want(t, reg, "unstuck_upstream_timeouts_total", l{"listener": "in", "upstream": "app", "phase": p}, 0)
	}
	want(t, reg, "unstuck_app_connections_open", l{"listener": "in"}, 0)
	want(t, reg, "unstuck_pool_waits_total", l{"upstream": "app"}, 0)
	want(t, reg, "unstuck_pool_exhausted_total", l{"upstream": "app"}, 0)
	want(t, reg, "unstuck_config_reloads_total", l{}, 0)
	want(t, reg, "unstuck_config_reload_errors_total", l{}, 0)
}

func TestUpstreamObserver(t *testing.T) {
	m := New()
	o := m.Upstream("app")
	reg := m.Registry()

	o.Dialed("10.0.0.1:80", nil)
	o.Dialed("10.0.0.1:80", nil)
	o.Dialed("10.0.0.1:80", errors.New("refused"))
	o.Dialed("10.0.0.2:80", errors.New("refused"))
	o.Waited(3*time.Millisecond, false)
	o.Waited(time.Second, true)
	o.Closed("10.0.0.1:80", pool.CauseFIN)
	o.Closed("10.0.0.1:80", pool.CauseFIN)
	o.Closed("10.0.0.2:80", pool.CauseIdleTimeout)
	o.Closed("10.0.0.2:80", pool.Cause("new_cause"))
	o.HalfClosed(pool.CauseFIN, 50*time.Microsecond)

	want(t, reg, "unstuck_upstream_dials_total", l{"upstream": "app", "endpoint": "10.0.0.1:80"}, 3)
	want(t, reg, "unstuck_upstream_dial_errors_total", l{"upstream": "app", "endpoint": "10.0.0.1:80", "reason": "other"}, 1)
	want(t, reg, "unstuck_upstream_dials_total", l{"upstream": "app", "endpoint": "10.0.0.2:80"}, 1)
	want(t, reg, "unstuck_upstream_dial_errors_total", l{"upstream": "app", "endpoint": "10.0.0.2:80", "reason": "other"}, 1)
	want(t, reg, "unstuck_pool_waits_total", l{"upstream": "app"}, 2)
	want(t, reg, "unstuck_pool_wait_seconds", l{"upstream": "app"}, 2)
	want(t, reg, "unstuck_pool_exhausted_total", l{"upstream": "app"}, 1)
	want(t, reg, "unstuck_upstream_closes_total", l{"upstream": "app", "cause": "fin"}, 2)
	want(t, reg, "unstuck_upstream_closes_total", l{"upstream": "app", "cause": "idle_timeout"}, 1)
	want(t, reg, "unstuck_upstream_closes_total", l{"upstream": "app", "cause": "rst"}, 0)
	want(t, reg, "unstuck_upstream_closes_total", l{"upstream": "app", "cause": "new_cause"}, 1)
	want(t, reg, "unstuck_half_close_reaction_seconds", l{"upstream": "app"}, 1)

	// A reload's new observer feeds the same series.
	m.Upstream("app").Closed("10.0.0.1:80", pool.CauseFIN)
	want(t, reg, "unstuck_upstream_closes_total", l{"upstream": "app", "cause": "fin"}, 3)
}

func TestHalfCloseBuckets(t *testing.T) {
	b := reactionBuckets
	if len(b) < 8 || b[0] != 10e-6 || b[len(b)-1] != 0.1 {
		t.Fatalf("reaction buckets %v: want 10µs to 100ms", b)
	}
	for i := 1; i < len(b); i++ {
		if r := b[i] / b[i-1]; r < 2 || r > 2.5 {
			t.Fatalf("reaction buckets %v: not 1-2-5", b)
		}
	}
}

// TestBucketBoundsPrintClean: every histogram's le label is a short
// decimal, as a person would write it, never le="0.00010000000000000003".
func TestBucketBoundsPrintClean(t *testing.T) {
	m := New()
	m.Upstream("app").HalfClosed(pool.CauseFIN, time.Millisecond)
	m.Upstream("app").Waited(time.Millisecond, false)
	m.Upstream("app").TLSHandshake("10.0.0.1:443", false, time.Millisecond)
	m.Listener("in", "app").Request(200, "", time.Millisecond, 0)
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	histograms := 0
	for _, mf := range mfs {
		if mf.GetType() != dto.MetricType_HISTOGRAM || !strings.HasPrefix(mf.GetName(), "unstuck_") {
			continue
		}
		histograms++
		for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
			le := strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)
			digits := strings.TrimLeft(strings.Split(strings.ReplaceAll(le, ".", ""), "e")[0], "0")
			if len(digits) > 3 {
				t.Errorf("%s: le=%q", mf.GetName(), le)
			}
		}
	}
	if histograms < 4 {
		t.Errorf("%d unstuck_ histograms checked; want the 4 this test feeds", histograms)
	}
}

func TestListenerObserver(t *testing.T) {
	m := New()
	o := m.Listener("in", "app")
	reg := m.Registry()

	for _, s := range []int{200, 204, 301, 404, 502, 101, 0, 999} {
		o.Request(s, "", 2*time.Millisecond, 0)
	}
	o.Request(503, proxy.ReasonPoolExhausted, time.Millisecond, 0)
	o.Request(504, proxy.ReasonTimeout, time.Millisecond, 0)
	o.Request(499, proxy.ReasonAppClosed, time.Millisecond, 0)
	o.Request(502, "new_reason", time.Millisecond, 0)
	o.Retry("dial")
	o.Retry("stale")
	o.Retry("stale")
	o.AppConnOpened()
	o.AppConnOpened()
	o.AppConnOpened()
	o.AppConnClosed("graceful")
	o.AppConnClosed("reset")

	lb := func(code string) l { return l{"listener": "in", "upstream": "app", "code": code, "reason": ""} }
	wantBy(t, reg, "unstuck_requests_total", lb,
		map[string]float64{"2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1, "1xx": 1, "other": 2})
	lr := func(code, reason string) l {
		return l{"listener": "in", "upstream": "app", "code": code, "reason": reason}
	}
	want(t, reg, "unstuck_requests_total", lr("5xx", "pool_exhausted"), 1)
	want(t, reg, "unstuck_requests_total", lr("5xx", "timeout"), 1)
	want(t, reg, "unstuck_requests_total", lr("5xx", "dial_error"), 0)
	want(t, reg, "unstuck_requests_total", lr("4xx", "app_closed"), 1)
	want(t, reg, "unstuck_requests_total", lr("5xx", "new_reason"), 1)
	want(t, reg, "unstuck_upstream_response_seconds", l{"listener": "in", "upstream": "app"}, 12)
	wantBy(t, reg, "unstuck_retries_total",
		func(r string) l { return l{"listener": "in", "upstream": "app", "reason": r} },
		map[string]float64{"dial": 1, "stale": 2})
	want(t, reg, "unstuck_app_connections_open", l{"listener": "in"}, 1)
	wantBy(t, reg, "unstuck_app_connections_closed_total",
		func(how string) l { return l{"listener": "in", "how": how} },
		map[string]float64{"graceful": 1, "reset": 1, "bounded": 0})
}

// TestRefusalsAbortsAndTimeouts counts each new observer call under its
// own label, a value not created up front included.
func TestRefusalsAbortsAndTimeouts(t *testing.T) {
	m := New()
	o := m.Listener("in", "app")
	reg := m.Registry()

	o.Refused(proxy.RefuseHeaderTooLarge)
	o.Refused(proxy.RefuseHeaderTooLarge)
	o.Refused(proxy.RefuseBodyIncomplete)
	o.Refused("new_reason")
	o.AppAborted("response_body")
	o.AppAborted("response_body")
	o.AppAborted("request")
	o.UpstreamTimeout("response_idle")
	o.UpstreamTimeout("write")
	o.UpstreamTimeout("write")
	o.UpstreamTimeout("new_phase")

	ref := func(r string) l { return l{"listener": "in", "reason": r} }
	wantBy(t, reg, "unstuck_requests_refused_total", ref,
		map[string]float64{"header_too_large": 2, "body_incomplete": 1, "bad_request": 0, "new_reason": 1})
	ph := func(p string) l { return l{"listener": "in", "upstream": "app", "phase": p} }
	wantBy(t, reg, "unstuck_app_aborts_total", ph,
		map[string]float64{"response_body": 2, "request": 1, "response_header": 0})
	wantBy(t, reg, "unstuck_upstream_timeouts_total", ph,
		map[string]float64{"response_idle": 1, "write": 2, "response_header": 0, "new_phase": 1})

	// A reload's new observer feeds the same series.
	m.Listener("in", "app").Refused(proxy.RefuseHeaderTooLarge)
	want(t, reg, "unstuck_requests_refused_total", ref("header_too_large"), 3)
}

func TestReloadCounters(t *testing.T) {
	start := float64(time.Now().Unix())
	m := New()
	reg := m.Registry()
	// The start is a load that succeeded.
	want(t, reg, "unstuck_config_last_reload_success", l{}, 1)
	if ts, _ := value(t, reg, "unstuck_config_last_reload_success_timestamp_seconds", l{}); ts < start {
		t.Errorf("last reload success timestamp %v before the start %v", ts, start)
	}
	m.ReloadOK()
	m.ReloadOK()
	m.ReloadFailed()
	want(t, reg, "unstuck_config_reloads_total", l{}, 2)
	want(t, reg, "unstuck_config_reload_errors_total", l{}, 1)
	want(t, reg, "unstuck_config_last_reload_success", l{}, 0)
	m.ReloadOK()
	want(t, reg, "unstuck_config_last_reload_success", l{}, 1)
}

func TestBuildInfo(t *testing.T) {
	want(t, New().Registry(), "unstuck_build_info", l{"version": unstuck.Version, "goversion": runtime.Version()}, 1)
}

// TestUpstreamReachable: the gauge asks the check at each scrape.
func TestUpstreamReachable(t *testing.T) {
	m := New()
	reg := m.Registry()
	if _, ok := value(t, reg, "unstuck_upstream_reachable", l{"upstream": "app"}); ok {
		t.Error("a series before SetUpstreamCheck")
	}
	down := errors.New("no endpoint reachable")
	var state map[string]error
	m.SetUpstreamCheck(func() map[string]error { return state })
	state = map[string]error{"app": nil, "db": down}
	want(t, reg, "unstuck_upstream_reachable", l{"upstream": "app"}, 1)
	want(t, reg, "unstuck_upstream_reachable", l{"upstream": "db"}, 0)
	state = map[string]error{"app": down}
	want(t, reg, "unstuck_upstream_reachable", l{"upstream": "app"}, 0)
	if _, ok := value(t, reg, "unstuck_upstream_reachable", l{"upstream": "db"}); ok {
		t.Error("a removed upstream still reported")
	}
}

// TestNames: every metric, with or without a series yet, and no other.
func TestNames(t *testing.T) {
	names := New().Names()
	for _, n := range []string{"unstuck_requests_total", "unstuck_upstream_response_seconds", "unstuck_build_info",
		"unstuck_tcp_sockets", "unstuck_upstream_reachable", "unstuck_tcp_pair_closes_total", "go_goroutines", "process_open_fds"} {
		if !slices.Contains(names, n) {
			t.Errorf("Names() lacks %s", n)
		}
	}
	if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("Names() not sorted or not unique: %v", names)
	}
}

// TestHotPathAllocs proves the observer calls made per request and per
// connection allocate nothing once their series exist.
func TestHotPathAllocs(t *testing.T) {
	m := New()
	up := m.Upstream("app")
	ln := m.Listener("in", "app")
	up.Dialed("10.0.0.1:80", nil) // creates the endpoint's series
	dialErr := errors.New("refused")

	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"Request", func() { ln.Request(200, "", time.Millisecond, 0) }},
		{"Request5xx", func() { ln.Request(502, "", time.Millisecond, 1) }},
		{"RequestOwn5xx", func() { ln.Request(502, proxy.ReasonDialError, time.Millisecond, 1) }},
		{"RequestRefused", func() { ln.Request(413, proxy.RefuseBodyTooLarge, time.Millisecond, 0) }},
		{"Retry", func() { ln.Retry("stale") }},
		{"Refused", func() { ln.Refused(proxy.RefuseBodyTooLarge) }},
		{"AppAborted", func() { ln.AppAborted("response_body") }},
		{"UpstreamTimeout", func() { ln.UpstreamTimeout("response_idle") }},
		{"AppConnOpenedClosed", func() { ln.AppConnOpened(); ln.AppConnClosed("reset") }},
		{"Closed", func() { up.Closed("10.0.0.1:80", pool.CauseFIN) }},
		{"Dialed", func() { up.Dialed("10.0.0.1:80", nil) }},
		{"DialedError", func() { up.Dialed("10.0.0.1:80", dialErr) }},
		{"Waited", func() { up.Waited(time.Millisecond, true) }},
		{"HalfClosed", func() { up.HalfClosed(pool.CauseRST, 20*time.Microsecond) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, tc.f); n != 0 {
				t.Errorf("%v allocations per call, want 0", n)
			}
		})
	}
}

type fakeStats []pool.EndpointStats

func (f fakeStats) Stats() []pool.EndpointStats { return f }

func TestPoolCollector(t *testing.T) {
	m := New()
	reg := m.Registry()
	m.AddPool("app", fakeStats{
		{Endpoint: "10.0.0.1:80", Open: 5, Idle: 2},
		{Endpoint: "10.0.0.2:80", Open: 0, Idle: 0},
	})
	m.AddPool("static", fakeStats{{Endpoint: "127.0.0.1:8080", Open: 1, Idle: 1}})

	ep := func(up, ep, state string) l { return l{"upstream": up, "endpoint": ep, "state": state} }
	want(t, reg, "unstuck_upstream_connections", ep("app", "10.0.0.1:80", "idle"), 2)
	want(t, reg, "unstuck_upstream_connections", ep("app", "10.0.0.1:80", "active"), 3)
	want(t, reg, "unstuck_upstream_connections", ep("app", "10.0.0.2:80", "idle"), 0)
	want(t, reg, "unstuck_upstream_connections", ep("app", "10.0.0.2:80", "active"), 0)
	want(t, reg, "unstuck_upstream_connections", ep("static", "127.0.0.1:8080", "idle"), 1)
	want(t, reg, "unstuck_upstream_connections", ep("static", "127.0.0.1:8080", "active"), 0)

	// A reload swaps the pool; a removed upstream's series go away.
	m.AddPool("app", fakeStats{{Endpoint: "10.0.0.1:80", Open: 7, Idle: 7}})
	m.RemovePool("static")
	want(t, reg, "unstuck_upstream_connections", ep("app", "10.0.0.1:80", "idle"), 7)
	want(t, reg, "unstuck_upstream_connections", ep("app", "10.0.0.1:80", "active"), 0)
	if _, ok := value(t, reg, "unstuck_upstream_connections", ep("app", "10.0.0.2:80", "idle")); ok {
		t.Error("endpoint of the replaced pool still reported")
	}
	if _, ok := value(t, reg, "unstuck_upstream_connections", ep("static", "127.0.0.1:8080", "idle")); ok {
		t.Error("removed pool still reported")
	}

	// The same endpoint listed twice is summed, not a duplicate series.
	m.AddPool("dup", fakeStats{{Endpoint: "a:1", Open: 2, Idle: 1}, {Endpoint: "a:1", Open: 3, Idle: 1}})
	want(t, reg, "unstuck_upstream_connections", ep("dup", "a:1", "active"), 3)
}

// The learned idle timeout of an endpoint is a gauge in seconds, absent
// until learned; an endpoint listed twice reports the shorter.
func TestLearnedIdleTimeoutGauge(t *testing.T) {
	m := New()
	reg := m.Registry()
	m.AddPool("app", fakeStats{
		{Endpoint: "10.0.0.1:80", LearnedIdleTimeout: 5 * time.Second},
		{Endpoint: "10.0.0.2:80"},
		{Endpoint: "a:1", LearnedIdleTimeout: 4 * time.Second},
		{Endpoint: "a:1", LearnedIdleTimeout: 300 * time.Millisecond},
	})
	const name = "unstuck_upstream_learned_idle_timeout_seconds"
	want(t, reg, name, l{"upstream": "app", "endpoint": "10.0.0.1:80"}, 5)
	want(t, reg, name, l{"upstream": "app", "endpoint": "a:1"}, 0.3)
	if _, ok := value(t, reg, name, l{"upstream": "app", "endpoint": "10.0.0.2:80"}); ok {
		t.Error("an endpoint with nothing learned has a series")
	}
}

// TestScrapeText scrapes over HTTP, as Prometheus does: every unstuck_
// metric is exposed with a one-line help, next to the Go and process ones.
func TestScrapeText(t *testing.T) {
	m := New()
	m.sockets.dir = "testdata/proc"
	m.Upstream("app").Closed("10.0.0.1:80", pool.CauseRST)
	m.Upstream("app").Dialed("10.0.0.1:80", nil)
	m.Upstream("app").Waited(time.Millisecond, false)
	m.Upstream("app").HalfClosed(pool.CauseRST, time.Millisecond)
	m.Listener("in", "app").Request(200, "", time.Millisecond, 0)
	m.AddPool("app", fakeStats{{Endpoint: "10.0.0.1:80", Open: 1, LearnedIdleTimeout: 2500 * time.Millisecond}})
	if err := m.SetSockets(t.Context(), map[string]uint16{"in": 15001}, map[string][]string{"app": {"10.0.0.1:80"}}); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	defer srv.Close()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %v %v", resp.Status, err)
	}
	text := string(body)

	for _, name := range []string{
		"unstuck_upstream_connections", "unstuck_upstream_dials_total", "unstuck_upstream_dial_errors_total",
		"unstuck_pool_waits_total", "unstuck_pool_wait_seconds", "unstuck_pool_exhausted_total",
		"unstuck_upstream_closes_total", "unstuck_half_close_reaction_seconds", "unstuck_retries_total",
		"unstuck_requests_total", "unstuck_upstream_response_seconds", "unstuck_app_connections_open",
		"unstuck_app_connections_closed_total", "unstuck_config_reload_errors_total", "unstuck_config_reloads_total",
		"unstuck_requests_refused_total", "unstuck_app_aborts_total", "unstuck_upstream_timeouts_total",
		"unstuck_tcp_sockets", "unstuck_host_close_wait_sockets", "unstuck_upstream_local_ports",
		"unstuck_upstream_learned_idle_timeout_seconds",
		"go_goroutines", "process_open_fds",
	} {
		if !strings.Contains(text, "# HELP "+name+" ") {
			t.Errorf("no help for %s", name)
		}
	}
	for _, line := range []string{
		`unstuck_upstream_closes_total{cause="rst",upstream="app"} 1`,
		`unstuck_requests_total{code="2xx",listener="in",reason="",upstream="app"} 1`,
		`unstuck_upstream_connections{endpoint="10.0.0.1:80",state="active",upstream="app"} 1`,
		`unstuck_upstream_learned_idle_timeout_seconds{endpoint="10.0.0.1:80",upstream="app"} 2.5`,
		`unstuck_tcp_sockets{side="listener",state="LISTEN"} 2`,
		`unstuck_host_close_wait_sockets 4`,
		`unstuck_half_close_reaction_seconds_count{upstream="app"} 1`,
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("scrape lacks %q", line)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "# HELP unstuck_") && len(strings.Fields(line)) < 5 {
			t.Errorf("help too short: %q", line)
		}
	}
}
