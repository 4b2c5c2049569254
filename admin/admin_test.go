package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/metrics"
	"github.com/unstuck-proxy/unstuck/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakePool struct {
	stats []pool.EndpointStats
	conns []pool.ConnInfo
}

func (f fakePool) Stats() []pool.EndpointStats { return f.stats }
func (f fakePool) Snapshot() []pool.ConnInfo   { return f.conns }

// do runs one request through h and returns the status and body.
func do(t *testing.T, h http.Handler, method, path string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Header(), rec.Body.String()
}

func TestEndpoints(t *testing.T) {
	m := metrics.New()
	m.ReloadOK()
	s := New(Config{Metrics: m})
	h := s.Handler()

	for _, tc := range []struct {
		method, path string
		code         int
		body         string // exact, unless contains is set
		contains     string
	}{
		{"GET", "/healthz", 200, "ok\n", ""},
		{"HEAD", "/healthz", 200, "ok\n", ""},  // the recorder keeps it; a server sends none
		{"GET", "/readyz", 200, "ready\n", ""}, // no Ready func: ready
		{"GET", "/metrics", 200, "", "unstuck_config_reloads_total 1\n"},
		{"GET", "/debug/pool", 404, "", ""}, // the debug listener's
		{"GET", "/debug/pprof/", 404, "", ""},
		{"GET", "/debug/pprof/profile", 404, "", ""},
		{"GET", "/", 404, "", ""},
		{"GET", "/healthz/", 404, "", ""},
		{"GET", "/nope", 404, "", ""},
		{"POST", "/nope", 404, "", ""},
		{"POST", "/healthz", 405, "", ""},
		{"PUT", "/readyz", 405, "", ""},
		{"DELETE", "/metrics", 405, "", ""},
	} {
		code, hdr, body := do(t, h, tc.method, tc.path)
		if code != tc.code {
			t.Errorf("%s %s: status %d, want %d (body %q)", tc.method, tc.path, code, tc.code, body)
			continue
		}
		if tc.code == 405 && !strings.Contains(hdr.Get("Allow"), "GET") {
			t.Errorf("%s %s: Allow %q", tc.method, tc.path, hdr.Get("Allow"))
		}
		if tc.code == 200 && tc.contains == "" && body != tc.body {
			t.Errorf("%s %s: body %q, want %q", tc.method, tc.path, body, tc.body)
		}
		if tc.contains != "" && !strings.Contains(body, tc.contains) {
			t.Errorf("%s %s: body lacks %q", tc.method, tc.path, tc.contains)
		}
	}
}

// TestDebugEndpoints: the debug listener serves /debug/pool, and pprof
// only while Pprof says so (a reload flips it in place); never the probes
// or /metrics.
func TestDebugEndpoints(t *testing.T) {
	var pprofOn atomic.Bool
	s := New(Config{Role: Debug, Metrics: metrics.New(), Pprof: pprofOn.Load})
	h := s.Handler()
	for _, tc := range []struct {
		method, path string
		pprof        bool
		code         int
	}{
		{"GET", "/debug/pool", false, 200},
		{"POST", "/debug/pool", false, 405},
		{"GET", "/debug/pprof/", false, 404},
		{"GET", "/debug/pprof/", true, 200},
		{"GET", "/debug/pprof/symbol", false, 404},
		{"GET", "/debug/pprof/symbol", true, 200},
		{"GET", "/debug/pprof/goroutine?debug=1", true, 200}, // Index serves the named profiles
		{"GET", "/healthz", true, 404},
		{"GET", "/readyz", true, 404},
		{"GET", "/metrics", true, 404},
	} {
		pprofOn.Store(tc.pprof)
		if code, _, body := do(t, h, tc.method, tc.path); code != tc.code {
			t.Errorf("%s %s (pprof %v): status %d, want %d (body %.80q)", tc.method, tc.path, tc.pprof, code, tc.code, body)
		}
	}
	if code, _, _ := do(t, New(Config{Role: Debug}).Handler(), "GET", "/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without a Pprof func: status %d, want 404", code)
	}
}

func TestMetricsNil(t *testing.T) {
	if code, _, _ := do(t, New(Config{}).Handler(), "GET", "/metrics"); code != 404 {
		t.Errorf("/metrics without Metrics: status %d, want 404", code)
	}
}

func TestReadyzFlips(t *testing.T) {
	var notReady atomic.Pointer[error]
	s := New(Config{Ready: func() error {
		if e := notReady.Load(); e != nil {
			return *e
		}
		return nil
	}})
	h := s.Handler()

	check := func(wantCode int, wantBody string) {
		t.Helper()
		code, _, body := do(t, h, "GET", "/readyz")
		if code != wantCode || body != wantBody {
			t.Errorf("/readyz = %d %q, want %d %q", code, body, wantCode, wantBody)
		}
	}
	check(200, "ready\n")
	err := errors.New("upstream app: no reachable endpoint\n(10.0.0.1:80 refused)")
	notReady.Store(&err)
	check(503, "upstream app: no reachable endpoint (10.0.0.1:80 refused)\n")
	notReady.Store(nil)
	check(200, "ready\n")
}

func TestDebugPool(t *testing.T) {
	pools := map[string]PoolView{
		"zeta": fakePool{}, // nothing yet: empty arrays, not null
		"app": fakePool{
			stats: []pool.EndpointStats{
				{Endpoint: "10.0.0.2:80", Open: 1, Idle: 1, LearnedIdleTimeout: 5 * time.Second},
				{Endpoint: "10.0.0.1:80", Open: 2, Idle: 0, Waiters: 3},
			},
			conns: []pool.ConnInfo{
				{Endpoint: "10.0.0.2:80", Local: "10.0.0.9:5000", State: "idle", Age: 2 * time.Second, Idle: time.Second, Requests: 4,
					ServerIdleTimeout: 10 * time.Second, RetireIn: 3 * time.Second},
				{Endpoint: "10.0.0.1:80", Local: "10.0.0.9:5002", State: "active", Age: time.Millisecond},
				{Endpoint: "10.0.0.1:80", Local: "10.0.0.9:5001", State: "active", Age: time.Millisecond},
			},
		},
	}
	s := New(Config{Role: Debug, Pools: func() map[string]PoolView { return pools }})
	code, hdr, body := do(t, s.Handler(), "GET", "/debug/pool")
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, Content-Type %q", code, hdr.Get("Content-Type"))
	}

	var got map[string]struct {
		Endpoints []pool.EndpointStats `json:"endpoints"`
		Conns     []pool.ConnInfo      `json:"conns"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	app := got["app"]
	if len(app.Endpoints) != 2 || app.Endpoints[0].Endpoint != "10.0.0.2:80" || app.Endpoints[1].Waiters != 3 {
		t.Errorf("app endpoints %+v: want config order, all fields", app.Endpoints)
	}
	var locals []string
	for _, c := range app.Conns {
		locals = append(locals, c.Local)
	}
	if strings.Join(locals, " ") != "10.0.0.9:5001 10.0.0.9:5002 10.0.0.9:5000" {
		t.Errorf("conns in order %v, want by endpoint then local", locals)
	}
	if c := app.Conns[2]; c.Age != 2*time.Second || c.Idle != time.Second || c.Requests != 4 || c.State != "idle" {
		t.Errorf("idle conn decoded as %+v", c)
	}
	if z, ok := got["zeta"]; !ok || z.Endpoints == nil || z.Conns == nil {
		t.Errorf("empty pool: %+v (present %v), want empty arrays", z, ok)
	}
	if c := app.Conns[2]; c.ServerIdleTimeout != 10*time.Second || c.RetireIn != 3*time.Second || app.Endpoints[0].LearnedIdleTimeout != 5*time.Second {
		t.Errorf("retirement facts decoded as conn %+v, endpoint %+v", c, app.Endpoints[0])
	}
	if !strings.Contains(body, `"learned_idle_timeout_ns": 5000000000`) || strings.Count(body, "learned_idle_timeout_ns") != 1 {
		t.Errorf("the learned idle timeout is not shown once, for the endpoint that has one:\n%s", body)
	}
	if !strings.Contains(body, `"age_ns": 2000000000`) || !strings.Contains(body, `"endpoints": []`) {
		t.Errorf("body does not use the json tags or empty arrays:\n%s", body)
	}
	// Stable: upstreams sorted, same bytes every time.
	if strings.Index(body, `"app"`) > strings.Index(body, `"zeta"`) {
		t.Errorf("upstreams not sorted:\n%s", body)
	}
	for range 5 {
		if _, _, again := do(t, s.Handler(), "GET", "/debug/pool"); again != body {
			t.Fatalf("output changed between calls:\n%s\n---\n%s", body, again)
		}
	}
}

func TestStartTakenPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := New(Config{Addr: ln.Addr().String()})
	if err := s.Start(); err == nil {
		s.Shutdown(context.Background())
		t.Fatal("Start on a taken port: no error")
	}
	if s.Addr() != nil {
		t.Errorf("Addr after a failed Start = %v, want nil", s.Addr())
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after a failed Start: %v", err)
	}
}

// TestStartServeShutdown serves real requests over loopback, including a
// kept-alive connection, and checks Shutdown leaves no goroutine behind.
func TestStartServeShutdown(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	s := New(Config{Addr: "127.0.0.1:0", Metrics: metrics.New()})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		t.Error("second Start: no error")
	}
	addr := s.Addr()
	if addr == nil {
		t.Fatal("Addr nil after Start")
	}

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, path := range []string{"/healthz", "/metrics", "/readyz"} {
		resp, err := c.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s %v", path, resp.Status, err)
		}
		if path == "/metrics" && !bytes.Contains(body, []byte("# HELP unstuck_")) {
			t.Errorf("/metrics has no unstuck_ metric")
		}
	}

	resp, err := c.Head("http://" + addr.String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(body) != 0 {
		t.Errorf("HEAD /readyz: %s, body %q, %v", resp.Status, body, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if _, err := c.Get("http://" + addr.String() + "/healthz"); err == nil {
		t.Error("still serving after Shutdown")
	}
	tr.CloseIdleConnections()
}
