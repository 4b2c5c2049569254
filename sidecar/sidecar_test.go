package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		// net/http's keep-alive connections of the test's scrape client.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("internal/poll.runtime_pollWait"),
	)
}

// testConfig is one listener "app" on 127.0.0.1:0 in front of one upstream
// "backend" with the given endpoints, admin on 127.0.0.1:0.
func testConfig(endpoints ...string) *config.Config {
	l := config.DefaultListener()
	l.Name, l.Listen, l.Upstream = "app", "127.0.0.1:0", "backend"
	u := config.DefaultUpstream()
	u.Name, u.Endpoints = "backend", endpoints
	return &config.Config{
		Log:             config.Log{Level: "debug", Format: "console"},
		Admin:           config.Admin{Listen: "127.0.0.1:0"},
		ShutdownTimeout: 5 * time.Second,
		Listeners:       map[string]config.Listener{"app": l},
		Upstreams:       map[string]config.Upstream{"backend": u},
	}
}

func start(t *testing.T, cfg *config.Config) *Sidecar {
	t.Helper()
	sc, err := New(cfg, zaptest.NewLogger(t), zap.NewAtomicLevel())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sc.Shutdown(ctx)
	})
	return sc
}

// pinned gives a listener a fixed address: a reload must not move it.
func pinned(t *testing.T, cfg *config.Config, sc *Sidecar) string {
	t.Helper()
	addr := sc.ListenerAddr("app").String()
	l := cfg.Listeners["app"]
	l.Listen = addr
	cfg.Listeners["app"] = l
	return addr
}

// clone copies cfg deeply enough for a test to change one upstream or
// listener of the copy.
func clone(cfg *config.Config) *config.Config {
	c := *cfg
	c.Listeners = map[string]config.Listener{}
	for k, v := range cfg.Listeners {
		c.Listeners[k] = v
	}
	c.Upstreams = map[string]config.Upstream{}
	for k, v := range cfg.Upstreams {
		v.Endpoints = append([]string(nil), v.Endpoints...)
		c.Upstreams[k] = v
	}
	return &c
}

// startWithApp starts a sidecar for a fresh upstream, its listener pinned,
// and an app of conns keep-alive connections that has sent one request
// through it.
func startWithApp(t *testing.T, conns int) (cfg *config.Config, sc *Sidecar, addr string, app *testpeer.LegacyClient) {
	t.Helper()
	up := testpeer.StartServer(t, testpeer.Options{})
	cfg = testConfig(up.Addr())
	sc = start(t, cfg)
	addr = pinned(t, cfg, sc)
	app = testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: conns})
	if _, err := app.Do("GET", "/", nil); err != nil {
		t.Fatal(err)
	}
	return cfg, sc, addr, app
}

// withListener returns a copy of cfg with change applied to its listener
// "app".
func withListener(cfg *config.Config, change func(l *config.Listener)) *config.Config {
	next := clone(cfg)
	l := next.Listeners["app"]
	change(&l)
	next.Listeners["app"] = l
	return next
}

// Endpoints change mid-run under a bounded load: no request fails, no app
// connection is dropped (each keeps its local port), and requests move to
// the new endpoint while the old one drains.
func TestReloadUnderLoadKeepsAppConnections(t *testing.T) {
	oldUp := testpeer.StartServer(t, testpeer.Options{})
	newUp := testpeer.StartServer(t, testpeer.Options{})
	cfg := testConfig(oldUp.Addr())
	sc := start(t, cfg)
	addr := pinned(t, cfg, sc)

	const conns, perConn = 8, 150
	app := testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: conns})
	portsBefore := app.LocalPorts()

	var wg sync.WaitGroup
	half := make(chan struct{})
	var halfOnce sync.Once
	for slot := 1; slot <= conns; slot++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perConn {
				if i == perConn/2 {
					halfOnce.Do(func() { close(half) })
				}
				method, body := "GET", []byte(nil)
				if i%3 == 0 {
					method, body = "POST", []byte(fmt.Sprintf("slot %d req %d", slot, i))
				}
				app.DoOn(slot, method, "/reload", body)
			}
		}()
	}
	<-half
	next := clone(cfg)
	u := next.Upstreams["backend"]
	u.Endpoints = []string{newUp.Addr()}
	next.Upstreams["backend"] = u
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	st := app.Stats()
	if len(st.Errors) != 0 {
		t.Fatalf("%d requests failed across the reload: %v", len(st.Errors), st.Errors[:min(3, len(st.Errors))])
	}
	if st.Dials != conns {
		t.Fatalf("the app dialed %d connections; want its %d to survive the reload", st.Dials, conns)
	}
	if after := app.LocalPorts(); fmt.Sprint(after) != fmt.Sprint(portsBefore) {
		t.Fatalf("app connections changed: local ports %v before, %v after", portsBefore, after)
	}
	if len(newUp.Received()) == 0 {
		t.Fatal("no request reached the new endpoint")
	}
	if d := append(oldUp.Duplicates(), newUp.Duplicates()...); len(d) != 0 {
		t.Fatalf("requests received twice: %v", d)
	}
	t.Logf("%d requests, %d before the switch on the old endpoint, %d after on the new; 0 failed",
		conns*perConn, len(oldUp.Received()), len(newUp.Received()))
	wait.Until(t, 10*time.Second, "the old endpoint to drain", func() bool { return oldUp.OpenConns() == 0 })
}

// A reload that cannot be applied (its new address is taken) changes
// nothing: the old listener keeps serving and the error is counted.
func TestReloadThatCannotApplyKeepsRunning(t *testing.T) {
	up := testpeer.StartServer(t, testpeer.Options{})
	cfg := testConfig(up.Addr())
	sc := start(t, cfg)
	addr := pinned(t, cfg, sc)

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	next := withListener(cfg, func(l *config.Listener) { l.Listen = taken.Addr().String() })
	if err := sc.Reload(next); err == nil {
		t.Fatal("reload onto a taken address succeeded")
	}
	if code, _ := get(t, addr, "/"); code != 200 {
		t.Fatalf("after a failed reload the old listener answers %d", code)
	}
	if v := scrape(t, sc, "unstuck_config_reload_errors_total"); v != 1 {
		t.Fatalf("unstuck_config_reload_errors_total = %v; want 1", v)
	}
	if v := scrape(t, sc, "unstuck_config_last_reload_success"); v != 0 {
		t.Fatalf("unstuck_config_last_reload_success = %v; want 0", v)
	}
}

// /readyz is "ready to carry traffic": 200 with the backend down, unless
// admin.ready_requires_upstream asks for it, which a reload switches in
// place. unstuck_upstream_reachable says either way.
func TestReadyzAndUpstreamReachability(t *testing.T) {
	cfg := testConfig(testpeer.FreeAddr(t))
	sc := start(t, cfg)
	admin := sc.AdminAddr().String()
	if code, body := get(t, admin, "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz with the backend down: %d %q; want 200 ready", code, body)
	}
	if v := scrape(t, sc, `unstuck_upstream_reachable{upstream="backend"}`); v != 0 {
		t.Errorf("unstuck_upstream_reachable = %v; want 0", v)
	}

	next := clone(cfg) // admin.listen as it was (127.0.0.1:0): not rebound
	next.Admin.ReadyRequiresUpstream = true
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	code, body := get(t, admin, "/readyz")
	if code != 503 || !strings.HasPrefix(body, "upstream backend: no endpoint reachable") {
		t.Errorf("/readyz with ready_requires_upstream: %d %q; want 503 naming the upstream", code, body)
	}

	up := testpeer.StartServer(t, testpeer.Options{})
	next = clone(next)
	u := next.Upstreams["backend"]
	u.Endpoints = []string{up.Addr()}
	next.Upstreams["backend"] = u
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, admin, "/readyz"); code != 200 {
		t.Errorf("/readyz with a live backend: %d %q", code, body)
	}
	if v := scrape(t, sc, `unstuck_upstream_reachable{upstream="backend"}`); v != 1 {
		t.Errorf("unstuck_upstream_reachable = %v; want 1", v)
	}
	if v := scrape(t, sc, "unstuck_config_last_reload_success"); v != 1 {
		t.Errorf("unstuck_config_last_reload_success = %v; want 1", v)
	}
}

// The admin listener has the probes and /metrics only; /debug/pool and
// pprof are on the debug listener, pprof while admin.pprof is on.
func TestDebugListener(t *testing.T) {
	up := testpeer.StartServer(t, testpeer.Options{})
	cfg := testConfig(up.Addr())
	cfg.Admin.DebugListen = "127.0.0.1:0"
	sc := start(t, cfg)
	admin, debug := sc.AdminAddr().String(), sc.DebugAddr().String()
	for _, path := range []string{"/debug/pool", "/debug/pprof/", "/debug/pprof/profile?seconds=1"} {
		if code, _ := get(t, admin, path); code != 404 {
			t.Errorf("admin listener %s: %d; want 404", path, code)
		}
	}
	if code, body := get(t, debug, "/debug/pool"); code != 200 || !strings.Contains(body, `"backend"`) {
		t.Errorf("debug listener /debug/pool: %d %q", code, body)
	}
	if code, _ := get(t, debug, "/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ with admin.pprof off: %d; want 404", code)
	}
	if code, _ := get(t, debug, "/metrics"); code != 404 {
		t.Errorf("debug listener /metrics: %d; want 404", code)
	}

	// A reload turns pprof on without moving the debug listener.
	next := clone(cfg) // the addresses as they were (127.0.0.1:0): not rebound
	next.Admin.Pprof = true
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	if got := sc.DebugAddr().String(); got != debug {
		t.Errorf("debug listener moved to %s", got)
	}
	if code, _ := get(t, debug, "/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ with admin.pprof on: %d; want 200", code)
	}

	// "" turns it off.
	next = clone(next)
	next.Admin.DebugListen = ""
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	if sc.DebugAddr() != nil {
		t.Errorf("debug listener still at %v", sc.DebugAddr())
	}
}

// Changing one listener's address rebinds that listener alone; another
// listener's app connections are untouched, and the old address is freed.
func TestReloadRebindsOnlyTheChangedListener(t *testing.T) {
	up := testpeer.StartServer(t, testpeer.Options{})
	cfg := testConfig(up.Addr())
	other := cfg.Listeners["app"]
	other.Name = "other"
	cfg.Listeners["other"] = other
	sc := start(t, cfg)
	addr := pinned(t, cfg, sc)
	otherAddr := sc.ListenerAddr("other").String()
	o := cfg.Listeners["other"]
	o.Listen = otherAddr
	cfg.Listeners["other"] = o

	keep := testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: 2})
	if _, err := keep.Do("GET", "/", nil); err != nil {
		t.Fatal(err)
	}
	next := clone(cfg)
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	o.Listen = free.Addr().String()
	free.Close()
	next.Listeners["other"] = o
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	moved := sc.ListenerAddr("other").String()
	if moved == otherAddr {
		t.Fatal("listener other did not move")
	}
	if code, _ := get(t, moved, "/"); code != 200 {
		t.Fatalf("rebound listener answers %d", code)
	}
	wait.Until(t, 10*time.Second, "the old address to be free", func() bool {
		ln, err := net.Listen("tcp", otherAddr)
		if err == nil {
			ln.Close()
		}
		return err == nil
	})
	for range 3 {
		if _, err := keep.Do("GET", "/", nil); err != nil {
			t.Fatalf("unchanged listener's connection broke: %v", err)
		}
	}
	if st := keep.Stats(); st.Dials != 2 {
		t.Fatalf("the unchanged listener's app reconnected (%d dials)", st.Dials)
	}
}

// idle_timeout needs a new server; it takes over the same socket, so the
// port never stops accepting and established app connections stay.
func TestReloadNewServerOnSameSocket(t *testing.T) {
	cfg, sc, addr, app := startWithApp(t, 2)
	next := withListener(cfg, func(l *config.Listener) { l.IdleTimeout = time.Hour })
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, addr, "/"); code != 200 {
		t.Fatalf("after the new server took over: %d", code)
	}
	for range 2 {
		if _, err := app.Do("GET", "/", nil); err != nil {
			t.Fatalf("established connection: %v", err)
		}
	}
}

// The half-close counter and the CLOSE_WAIT gauges move as a misbehaving
// upstream and a never-closing client make them move.
func TestMetricsSeeHalfClosesAndCloseWait(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	up := testpeer.StartIdleCloser(t, testpeer.IdleCloserOptions{IdleTimeout: 100 * time.Millisecond})
	cfg := testConfig(up.Addr())
	sc := start(t, cfg)
	addr := sc.ListenerAddr("app").String()

	const conns = 5
	app := testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: conns})
	var wg sync.WaitGroup
	for slot := 1; slot <= conns; slot++ {
		wg.Add(1)
		go func() { defer wg.Done(); app.DoOn(slot, "GET", "/", nil) }()
	}
	wg.Wait()
	wait.Until(t, 10*time.Second, "the upstream's FINs to be counted as half-closes", func() bool {
		return up.OpenConns() == 0 && scrape(t, sc, `unstuck_upstream_closes_total{cause="fin",upstream="backend"}`) >= 1
	})
	if v := scrape(t, sc, `unstuck_requests_total{code="2xx",listener="app",reason="",upstream="backend"}`); v < 1 {
		t.Fatalf("requests_total 2xx = %v", v)
	}
	if v := scrape(t, sc, `unstuck_tcp_sockets{side="upstream",state="CLOSE_WAIT"}`); v != 0 {
		t.Fatalf("unstuck's upstream side shows %v sockets in CLOSE_WAIT", v)
	}

	// A never-closing client of the app's own, bypassing the sidecar, left
	// in CLOSE_WAIT shows in the host-wide gauge: exactly its sockets, in
	// the test's own network namespace.
	direct := testpeer.StartLegacyClient(t, up.Addr(), testpeer.LegacyClientOptions{Conns: 3})
	for slot := 1; slot <= 3; slot++ {
		direct.DoOn(slot, "GET", "/", nil)
	}
	wait.Until(t, 10*time.Second, "the direct client's sockets in CLOSE_WAIT, counted by the host gauge", func() bool {
		n, _ := direct.CloseWaitCount()
		return n == 3 && scrape(t, sc, "unstuck_host_close_wait_sockets") == 3
	})
}

// get sends GET path to addr on a new connection and returns the status.
func get(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads one sample from the admin /metrics page; missing is -1.
func scrape(t *testing.T, sc *Sidecar, series string) float64 {
	t.Helper()
	code, body := get(t, sc.AdminAddr().String(), "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// Every timeout and limit key reaches the typed value proxy/ or pool/
// reads it from.
func TestConfigMapsLimitsAndTimeouts(t *testing.T) {
	cfg := testConfig("127.0.0.1:9")
	l := cfg.Listeners["app"]
	l.ReadHeaderTimeout, l.BodyReadTimeout, l.SendTimeout = 1*time.Second, 2*time.Second, 3*time.Second
	l.Limits = config.ListenerLimits{RequestHeaderBytes: 8 << 10, RequestBodyBytes: 1 << 20, MaxConns: 7}
	cfg.Listeners["app"] = l
	u := cfg.Upstreams["backend"]
	u.Timeouts.ResponseIdle, u.Timeouts.Write = 4*time.Second, 5*time.Second
	u.Limits.ResponseHeaderBytes = 32 << 10
	cfg.Upstreams["backend"] = u

	pc := proxyConfig("app", l, cfg, nil, zap.NewNop(), nil)
	if pc.ReadHeaderTimeout != time.Second || pc.BodyReadTimeout != 2*time.Second || pc.SendTimeout != 3*time.Second {
		t.Errorf("proxy timeouts: read header %v, body read %v, send %v", pc.ReadHeaderTimeout, pc.BodyReadTimeout, pc.SendTimeout)
	}
	if pc.MaxRequestHeaderBytes != 8<<10 || pc.MaxRequestBodyBytes != 1<<20 || pc.MaxConns != 7 {
		t.Errorf("proxy limits: header %d, body %d, conns %d", pc.MaxRequestHeaderBytes, pc.MaxRequestBodyBytes, pc.MaxConns)
	}
	if pc.Upstream.ResponseIdleTimeout != 4*time.Second || pc.Upstream.WriteTimeout != 5*time.Second {
		t.Errorf("upstream timeouts: response idle %v, write %v", pc.Upstream.ResponseIdleTimeout, pc.Upstream.WriteTimeout)
	}
	if got := poolConfig("backend", u, zap.NewNop(), nil).ResponseHeaderBytes; got != 32<<10 {
		t.Errorf("pool ResponseHeaderBytes = %d", got)
	}
}

// The retirement keys reach the pool: retire_margin as a fraction,
// learn_idle_timeout as its zero-is-default negation.
func TestConfigMapsRetirement(t *testing.T) {
	u := config.DefaultUpstream()
	if pc := poolConfig("backend", u, zap.NewNop(), nil); pc.RetireMargin != 0.2 || pc.NoLearnIdleTimeout {
		t.Errorf("defaults: RetireMargin %v, NoLearnIdleTimeout %v; want 0.2, false", pc.RetireMargin, pc.NoLearnIdleTimeout)
	}
	u.Pool.RetireMargin, u.Pool.LearnIdleTimeout = 35, false
	if pc := poolConfig("backend", u, zap.NewNop(), nil); pc.RetireMargin != 0.35 || !pc.NoLearnIdleTimeout {
		t.Errorf("set: RetireMargin %v, NoLearnIdleTimeout %v; want 0.35, true", pc.RetireMargin, pc.NoLearnIdleTimeout)
	}
}

func TestNeedsNewServer(t *testing.T) {
	base := config.DefaultListener()
	for _, tt := range []struct {
		name   string
		change func(*config.Listener)
		want   bool
	}{
		{"nothing", func(*config.Listener) {}, false},
		{"read_header_timeout", func(l *config.Listener) { l.ReadHeaderTimeout = time.Second }, false},
		{"body_read_timeout", func(l *config.Listener) { l.BodyReadTimeout = time.Second }, false},
		{"send_timeout", func(l *config.Listener) { l.SendTimeout = time.Second }, false},
		{"limits.request_body_bytes", func(l *config.Listener) { l.Limits.RequestBodyBytes = 1 << 20 }, false},
		{"linger", func(l *config.Listener) { l.Linger.Timeout = time.Second }, false},
		{"limits.request_header_bytes", func(l *config.Listener) { l.Limits.RequestHeaderBytes = 8 << 10 }, true},
		{"limits.max_conns", func(l *config.Listener) { l.Limits.MaxConns = 10 }, true},
		{"idle_timeout", func(l *config.Listener) { l.IdleTimeout = time.Hour }, true},
		{"upstream", func(l *config.Listener) { l.Upstream = "other" }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := base
			tt.change(&b)
			if got := needsNewServer(base, b); got != tt.want {
				t.Errorf("needsNewServer = %v, want %v", got, tt.want)
			}
		})
	}
}

// A reload that changes only timeouts keeps the running server; one that
// changes limits.max_conns gets a new server on the same socket, and the
// app connection already open keeps working.
func TestReloadLimitsAndTimeouts(t *testing.T) {
	// Two connections: see TestReloadKeepsALoneAppConnection for one.
	cfg, sc, addr, app := startWithApp(t, 2)
	server := func() any {
		sc.mu.Lock()
		defer sc.mu.Unlock()
		return sc.listeners["app"].srv
	}
	first := server()

	next := withListener(cfg, func(l *config.Listener) {
		l.ReadHeaderTimeout, l.BodyReadTimeout, l.SendTimeout = 2*time.Second, 3*time.Second, 4*time.Second
		l.Limits.RequestBodyBytes = 1 << 20
	})
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	if server() != first {
		t.Fatal("a change of timeouts replaced the server")
	}

	next = withListener(next, func(l *config.Listener) { l.Limits.MaxConns = 100 })
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	if server() == first {
		t.Fatal("a change of limits.max_conns kept the old server")
	}
	if code, _ := get(t, addr, "/"); code != 200 {
		t.Fatalf("after the new server took over: %d", code)
	}
	for slot := 1; slot <= 2; slot++ {
		if _, err := app.DoOn(slot, "GET", "/", nil); err != nil {
			t.Fatalf("established connection %d: %v", slot, err)
		}
	}
	if st := app.Stats(); st.Dials != 2 {
		t.Fatalf("the app reconnected (%d dials)", st.Dials)
	}
}

// A replaced server with a single app connection left counts it, and so
// keeps serving it until the app closes it.
func TestReloadKeepsALoneAppConnection(t *testing.T) {
	cfg, sc, _, app := startWithApp(t, 1)
	sc.mu.Lock()
	old := sc.listeners["app"]
	sc.mu.Unlock()
	next := withListener(cfg, func(l *config.Listener) { l.IdleTimeout = time.Hour })
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	<-old.done // the old server has stopped accepting
	if n := old.srv.OpenConnections(); n != 1 {
		t.Errorf("the replaced server counts %d open app connections; the app holds 1", n)
	}
	for i := range 3 {
		if _, err := app.Do("GET", "/", nil); err != nil {
			t.Fatalf("request %d on the established connection: %v", i, err)
		}
	}
}
