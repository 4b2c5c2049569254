package main

// End-to-end tests of operating the binary: shutdown, hot reload (file
// change and SIGHUP, valid and invalid), the admin endpoints and the access
// log.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
)

// listenerUp is in the stderr line a listener logs once it is bound (the
// admin listener's line says "admin listening" and does not match).
const listenerUp = "\tlistening\t"

// writeConfig writes yaml to name in a new temporary directory and returns
// its path.
func writeConfig(t *testing.T, name, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// replaceFile writes data next to path and renames it over path, the way a
// ConfigMap update or an editor's atomic save does: a reader sees the old
// file or the new one, never half of one.
func replaceFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// eventually is wait.Until.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	wait.Until(t, d, what, cond)
}

// adminAddr waits for the child's admin listener and returns its address.
func (c *child) adminAddr(t *testing.T) string {
	t.Helper()
	return c.loggedAddr(t, "admin listening")
}

// debugAddr waits for the child's debug listener and returns its address.
func (c *child) debugAddr(t *testing.T) string {
	t.Helper()
	return c.loggedAddr(t, "debug listening")
}

// loggedAddr waits for the log line msg and returns the addr it gives.
func (c *child) loggedAddr(t *testing.T, msg string) string {
	t.Helper()
	c.waitStderr(t, msg)
	m := regexp.MustCompile(msg + `\t\{"addr": "([^"]+)"\}`).FindStringSubmatch(c.stderr.String())
	if m == nil {
		t.Fatalf("no address after %q in stderr:\n%s", msg, c.stderr)
	}
	return m[1]
}

// httpGet sends GET url on a connection of its own and returns the status
// and body. It does not touch t, so goroutines may call it.
func httpGet(url string) (int, string, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// adminGet is httpGet of path on the admin listener at addr.
func adminGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	code, body, err := httpGet("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s on admin: %v", path, err)
	}
	return code, body
}

// refused reports whether a dial to addr is refused: nothing listens.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// holdingUpstream answers like startUpstream, but holds each request until
// release is called. arrived gets one value for the first request.
type holdingUpstream struct {
	addr    string
	arrived chan struct{}
	release func()
}

func startHoldingUpstream(t *testing.T) *holdingUpstream {
	t.Helper()
	h := &holdingUpstream{arrived: make(chan struct{}, 1)}
	gate := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case h.arrived <- struct{}{}:
		default: // a retry, or a later request
		}
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Upstream-Path", r.URL.Path)
		io.WriteString(w, upstreamBody)
	}))
	t.Cleanup(srv.Close)
	var once sync.Once
	h.release = func() { once.Do(func() { close(gate) }) }
	// Registered after srv.Close, so it runs first: srv.Close waits for
	// handlers.
	t.Cleanup(h.release)
	h.addr = srv.Listener.Addr().String()
	return h
}

// TestE2EShutdown: on SIGTERM the listener refuses new connections at once
// and /readyz turns 503, while a request already in flight still gets its
// response; then the process exits 0 and the admin port is closed too.
func TestE2EShutdown(t *testing.T) {
	t.Parallel()
	up := startHoldingUpstream(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	c := startUnstuck(t, childOpts{}, "--listen", listen, "--upstream", up.addr)
	c.waitAccepting(t, listen)
	admin := c.adminAddr(t)

	type result struct {
		code int
		body string
		err  error
	}
	resc := make(chan result, 1)
	go func() {
		code, body, err := httpGet("http://" + listen + "/slow")
		resc <- result{code, body, err}
	}()
	select {
	case <-up.arrived:
	case <-time.After(e2eStartTimeout):
		t.Fatal("the request never reached the upstream")
	}

	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	c.waitStderr(t, "shutting down")
	// The listener closes right after the log line: poll, with a bound,
	// while the request is still held.
	wait.Until(t, 2*time.Second, "listener refusing new connections during the drain",
		func() bool { return refused(listen) })
	wait.Until(t, 2*time.Second, "/readyz 503 during the drain", func() bool {
		code, body := adminGet(t, admin, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "shutting down")
	})
	select {
	case r := <-resc:
		t.Fatalf("in-flight request ended before its upstream answered: %d %q %v", r.code, r.body, r.err)
	default:
	}

	up.release()
	select {
	case r := <-resc:
		if r.err != nil || r.code != http.StatusOK || r.body != upstreamBody {
			t.Errorf("in-flight GET: %d %q %v; want 200 %q", r.code, r.body, r.err, upstreamBody)
		}
	case <-time.After(e2eStopTimeout):
		t.Fatal("in-flight GET got no response")
	}
	if code := c.exitCode(t, e2eStopTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM; want 0", code)
	}
	if !refused(admin) {
		t.Errorf("admin port %s still accepts after exit", admin)
	}
}

// TestE2EShutdownIdleLegacyConn: SIGTERM while a legacy app holds an idle
// keep-alive connection and never closes it. unstuck half-closes it
// (linger graceful); the app never answers with its FIN, so shutdown must
// reset it at once rather than wait out app_fin_timeout, and exit promptly
// leaving the app's socket out of CLOSE_WAIT.
func TestE2EShutdownIdleLegacyConn(t *testing.T) {
	t.Parallel()
	if !isolated(t) {
		return
	}
	upstream := startUpstream(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	path := writeConfig(t, "unstuck.yaml", fmt.Sprintf(`listeners:
  app:
    listen: %s
    linger: graceful
    app_fin_timeout: 30s
upstreams:
  backend:
    endpoints: [%q]
`, listen, upstream))
	c := startUnstuck(t, childOpts{}, "--config", path)
	c.waitAccepting(t, listen)
	app := testpeer.StartLegacyClient(t, listen, testpeer.LegacyClientOptions{Conns: 1})
	if _, err := app.Do(http.MethodGet, "/idle", nil); err != nil {
		t.Fatalf("GET: %v", err)
	}
	start := time.Now()
	c.stop(t) // within e2eStopTimeout, well under app_fin_timeout and shutdown_timeout
	t.Logf("exited %v after SIGTERM", time.Since(start))
	if n, err := app.CloseWaitCount(); err != nil || n != 0 {
		t.Errorf("app sockets in CLOSE_WAIT after unstuck exited: %d (%v); want 0 (reset)", n, err)
	}
}

// reloadYAML is the configuration of the reload tests: one listener, one
// upstream with one endpoint, and its pool.max_conns written as given (so
// a test can make it invalid).
func reloadYAML(listen, endpoint, maxConns string) string {
	return fmt.Sprintf(`listeners:
  app:
    listen: %s
upstreams:
  backend:
    endpoints: [%q]
    pool:
      max_conns: %s
`, listen, endpoint, maxConns)
}

// symlinkedConfig writes yaml to a file and returns a symlink to it in
// another directory, and the file itself. unstuck watches the directory of
// the path it is given; writing the file in place changes nothing there,
// so only SIGHUP can reload it.
func symlinkedConfig(t *testing.T, yaml string) (link, file string) {
	t.Helper()
	file = writeConfig(t, "real.yaml", yaml)
	link = filepath.Join(t.TempDir(), "unstuck.yaml")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	return link, file
}

// appTraffic sends GETs on every connection of app, one goroutine per
// connection, until stop or perConn requests each.
func appTraffic(app *testpeer.LegacyClient, conns, perConn int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for slot := 1; slot <= conns; slot++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perConn {
				select {
				case <-done:
					return
				default:
				}
				app.Send(testpeer.Request{Method: http.MethodGet, Path: "/reload", Slot: slot}) // counted in Stats
			}
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait() // bounded: each request has the client's timeout
	}
}

// receivedBy reports whether srv received a request with this id.
func receivedBy(srv *testpeer.Server, id string) bool {
	return slices.ContainsFunc(srv.Received(), func(r testpeer.Record) bool { return r.RequestID == id })
}

// TestE2EReloadFileChange and TestE2EReloadSIGHUP: the app keeps sending
// on its keep-alive connections while the upstream's endpoint changes from
// A to B. No request fails, requests then reach B only, and the app's
// sockets are the ones it had (a reload drops no app connection).
func TestE2EReloadFileChange(t *testing.T) {
	t.Parallel()
	if !isolated(t) {
		return
	}
	testReload(t, false)
}

func TestE2EReloadSIGHUP(t *testing.T) {
	t.Parallel()
	if !isolated(t) {
		return
	}
	testReload(t, true)
}

func testReload(t *testing.T, sighup bool) {
	const conns = 3
	a := testpeer.StartServer(t, testpeer.Options{})
	b := testpeer.StartServer(t, testpeer.Options{})
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	var path, file string
	if sighup {
		path, file = symlinkedConfig(t, reloadYAML(listen, a.Addr(), "64"))
	} else {
		path = writeConfig(t, "unstuck.yaml", reloadYAML(listen, a.Addr(), "64"))
	}
	c := startUnstuck(t, childOpts{}, "--config", path)
	c.waitAccepting(t, listen)

	app := testpeer.StartLegacyClient(t, listen, testpeer.LegacyClientOptions{Conns: conns})
	ports := app.LocalPorts()
	stop := appTraffic(app, conns, 20000)
	t.Cleanup(stop)
	wait.Until(t, e2eStartTimeout, "30 requests at A", func() bool { return len(a.Received()) >= 30 })

	toB := reloadYAML(listen, b.Addr(), "64")
	if sighup {
		if err := os.WriteFile(file, []byte(toB), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP: %v", err)
		}
		c.waitStderr(t, "configuration reloaded")
	} else {
		// The file watcher starts just after the listener: replace the file
		// again every half second until a reload shows (the same content
		// reloads as a no-op).
		polls := 0
		wait.Until(t, e2eStopTimeout, "a reload after the file changed", func() bool {
			if strings.Contains(c.stderr.String(), "configuration reloaded") {
				return true
			}
			if polls%50 == 0 {
				replaceFile(t, path, toB)
			}
			polls++
			return false
		})
	}
	wait.Until(t, e2eStopTimeout, "30 requests at B", func() bool { return len(b.Received()) >= 30 })
	stop()

	// Every request from now on goes to B.
	atA := len(a.Received())
	for i := range 20 {
		resp, err := app.Send(testpeer.Request{Method: http.MethodGet, Path: "/after", Slot: i%conns + 1})
		if err != nil {
			t.Fatalf("GET after the reload: %v", err)
		}
		if !receivedBy(b, resp.RequestID) {
			t.Errorf("request %s after the reload did not reach B", resp.RequestID)
		}
	}
	if n := len(a.Received()); n != atA {
		t.Errorf("A received %d requests after the reload; want 0", n-atA)
	}

	st := app.Stats()
	t.Logf("requests: %d ok (A %d, B %d), %d failed", st.OK["GET"], len(a.Received()), len(b.Received()), st.Failed["GET"])
	if len(st.Errors) > 0 {
		t.Errorf("%d requests failed across the reload; first: %v", len(st.Errors), st.Errors[0])
	}
	if after := app.LocalPorts(); st.Dials != conns || !slices.Equal(after, ports) {
		t.Errorf("app dialed %d times, local ports %v → %v; want its %d connections kept", st.Dials, ports, after, conns)
	}
	// Polled: the last request's socket states may still change.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := sockstate.WaitFor(ctx, app.Match(), func(m map[sockstate.State]int) bool {
		return m[sockstate.Established] == conns && len(m) == 1
	}); err != nil {
		t.Errorf("app sockets: want %d, all ESTABLISHED: %v", conns, err)
	}
	out := c.stderr.String()
	want, notWant := `"trigger": "file changed"`, `"trigger": "SIGHUP"`
	if sighup {
		want, notWant = notWant, want
	}
	if !strings.Contains(out, want) || strings.Contains(out, notWant) {
		t.Errorf("stderr: want a reload with %s and none with %s", want, notWant)
	}
	app.Close() // first: see TestE2EShutdownIdleLegacyConn
	c.stop(t)
}

// TestE2EReloadInvalidKeepsRunning: SIGHUP with an invalid file logs the
// problem by key, counts a rejected reload, and keeps the running
// configuration: requests still go to A, none to the B the bad file names.
func TestE2EReloadInvalidKeepsRunning(t *testing.T) {
	t.Parallel()
	a := testpeer.StartServer(t, testpeer.Options{})
	b := testpeer.StartServer(t, testpeer.Options{})
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	path, file := symlinkedConfig(t, reloadYAML(listen, a.Addr(), "64"))
	c := startUnstuck(t, childOpts{}, "--config", path)
	c.waitAccepting(t, listen)
	admin := c.adminAddr(t)
	app := testpeer.StartLegacyClient(t, listen, testpeer.LegacyClientOptions{Conns: 1})
	if _, err := app.Do(http.MethodGet, "/before", nil); err != nil {
		t.Fatalf("GET before the reload: %v", err)
	}

	if err := os.WriteFile(file, []byte(reloadYAML(listen, b.Addr(), "lots")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
	c.waitStderr(t, "configuration not reloaded")
	c.waitStderr(t, "upstreams.backend.pool.max_conns")
	if out := c.stderr.String(); !strings.Contains(out, "lots") || strings.Contains(out, "configuration reloaded") {
		t.Errorf("stderr: want the bad value \"lots\" named and no reload applied")
	}

	for range 5 {
		resp, err := app.Do(http.MethodGet, "/still", nil)
		if err != nil {
			t.Fatalf("GET after the rejected reload: %v", err)
		}
		if !receivedBy(a, resp.RequestID) {
			t.Errorf("request %s did not reach A, the running configuration's endpoint", resp.RequestID)
		}
	}
	if n := len(b.Received()); n != 0 {
		t.Errorf("B, named only by the rejected file, received %d requests", n)
	}
	_, metrics := adminGet(t, admin, "/metrics")
	for _, want := range []string{"\nunstuck_config_reload_errors_total 1\n", "\nunstuck_config_reloads_total 0\n"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
	app.Close() // first: see TestE2EShutdownIdleLegacyConn
	c.stop(t)
}

// TestE2EAdmin: the admin and debug endpoints of a running binary.
func TestE2EAdmin(t *testing.T) {
	t.Parallel()
	live := startUpstream(t)

	t.Run("live upstream", func(t *testing.T) {
		t.Parallel()
		listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
		c := startUnstuck(t, childOpts{}, "--listen", listen, "--upstream", live)
		c.waitAccepting(t, listen)
		admin := c.adminAddr(t)
		if code, body := adminGet(t, admin, "/healthz"); code != http.StatusOK {
			t.Errorf("/healthz: %d %q; want 200", code, body)
		}
		if code, body := adminGet(t, admin, "/readyz"); code != http.StatusOK {
			t.Errorf("/readyz: %d %q; want 200", code, body)
		}
		if code, body := get(t, listen); code != http.StatusOK {
			t.Fatalf("GET: %d %q", code, body)
		}
		const ok = `unstuck_requests_total{code="2xx",listener="app",reason="",upstream="backend"} 1`
		var metrics string
		wait.Until(t, e2eStopTimeout, "/metrics counting the request", func() bool {
			_, metrics = adminGet(t, admin, "/metrics")
			return strings.Contains(metrics, ok)
		})
		if build := `unstuck_build_info{goversion="` + runtime.Version() + `",version="` + e2eVersion + `"} 1`; !strings.Contains(metrics, build+"\n") {
			t.Errorf("/metrics lacks %q", build)
		}

		code, body := adminGet(t, c.debugAddr(t), "/debug/pool")
		var pools map[string]struct {
			Endpoints []struct {
				Endpoint string `json:"endpoint"`
				Open     int    `json:"open"`
			} `json:"endpoints"`
			Conns []struct {
				Endpoint string `json:"endpoint"`
				State    string `json:"state"`
			} `json:"conns"`
		}
		if err := json.Unmarshal([]byte(body), &pools); code != http.StatusOK || err != nil {
			t.Fatalf("/debug/pool: %d %v\n%s", code, err, body)
		}
		p, ok2 := pools["backend"]
		if !ok2 || len(p.Endpoints) != 1 || p.Endpoints[0].Endpoint != live || p.Endpoints[0].Open != 1 {
			t.Errorf("/debug/pool: want upstream backend with endpoint %s and 1 open connection:\n%s", live, body)
		}
		if len(p.Conns) != 1 || p.Conns[0].Endpoint != live || p.Conns[0].State != "idle" {
			t.Errorf("/debug/pool: want one idle connection to %s:\n%s", live, body)
		}
		c.stop(t)
	})

}

// TestE2EAdminSplit: with its backend down, a running binary stays ready
// (the backend's outage must not take every pod out of its Service) and
// says so in unstuck_upstream_reachable; the admin listener serves no
// /debug path, pprof or not. admin.ready_requires_upstream brings the old
// readiness back.
func TestE2EAdminSplit(t *testing.T) {
	t.Parallel()
	dead := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t)) // nothing listens

	t.Run("default", func(t *testing.T) {
		t.Parallel()
		listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
		c := startUnstuck(t, childOpts{env: []string{"UNSTUCK_ADMIN_PPROF=true"}}, "--listen", listen, "--upstream", dead)
		c.waitAccepting(t, listen)
		admin, debug := c.adminAddr(t), c.debugAddr(t)
		if code, body := adminGet(t, admin, "/healthz"); code != http.StatusOK {
			t.Errorf("/healthz: %d %q; want 200", code, body)
		}
		if code, body := adminGet(t, admin, "/readyz"); code != http.StatusOK || body != "ready\n" {
			t.Errorf("/readyz with the backend down: %d %q; want 200 ready", code, body)
		}
		const down = `unstuck_upstream_reachable{upstream="backend"} 0`
		if _, metrics := adminGet(t, admin, "/metrics"); !strings.Contains(metrics, down+"\n") {
			t.Errorf("/metrics lacks %q", down)
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pool"} {
			if code, _ := adminGet(t, admin, path); code != http.StatusNotFound {
				t.Errorf("admin listener %s: %d; want 404", path, code)
			}
		}
		if code, body := adminGet(t, debug, "/debug/pprof/"); code != http.StatusOK {
			t.Errorf("debug listener /debug/pprof/ with admin.pprof: %d %.100q", code, body)
		}
		c.stop(t)
	})

	t.Run("ready_requires_upstream", func(t *testing.T) {
		t.Parallel()
		listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
		c := startUnstuck(t, childOpts{env: []string{"UNSTUCK_ADMIN_READY_REQUIRES_UPSTREAM=true"}}, "--listen", listen, "--upstream", dead)
		c.waitAccepting(t, listen)
		code, body := adminGet(t, c.adminAddr(t), "/readyz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "upstream backend") ||
			!strings.Contains(body, dead) || strings.Count(body, "\n") != 1 {
			t.Errorf("/readyz: %d %q; want 503 and one line naming upstream backend and %s", code, body, dead)
		}
		c.stop(t)
	})
}

// TestE2EAccessLog: log.access writes exactly one line per request, with
// its method, path, status, endpoint and whether the upstream connection
// was reused.
func TestE2EAccessLog(t *testing.T) {
	t.Parallel()
	upstream := startUpstream(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	path := writeConfig(t, "unstuck.yaml", fmt.Sprintf(`log:
  access: true
listeners:
  app:
    listen: %s
upstreams:
  backend:
    endpoints: [%q]
`, listen, upstream))
	c := startUnstuck(t, childOpts{}, "--config", path)
	c.waitAccepting(t, listen)

	// One app connection, so the first request dials the upstream and the
	// next ones reuse its connection. The POST goes first: a POST takes
	// only a settled idle connection and might dial again.
	app := testpeer.StartLegacyClient(t, listen, testpeer.LegacyClientOptions{Conns: 1})
	reqs := []struct {
		method, path string
		reused       bool
	}{
		{http.MethodPost, "/access/1", false},
		{http.MethodGet, "/access/2?q=1", true},
		{http.MethodGet, "/access/3", true},
	}
	for _, r := range reqs {
		if _, err := app.Do(r.method, r.path, nil); err != nil {
			t.Fatalf("%s %s: %v", r.method, r.path, err)
		}
	}
	app.Close() // first: see TestE2EShutdownIdleLegacyConn
	c.stop(t)   // stderr is complete: a duplicate line would show

	type accessLine struct {
		Method   string `json:"method"`
		URI      string `json:"uri"`
		Status   int    `json:"status"`
		Endpoint string `json:"endpoint"`
		Reused   *bool  `json:"reused"`
	}
	var got []accessLine
	for line := range strings.Lines(c.stderr.String()) {
		if !strings.Contains(line, "\taccess\t") {
			continue
		}
		var l accessLine
		if i := strings.IndexByte(line, '{'); i < 0 || json.Unmarshal([]byte(line[i:]), &l) != nil {
			t.Fatalf("access line without JSON fields: %q", line)
		}
		got = append(got, l)
	}
	if len(got) != len(reqs) {
		t.Fatalf("%d access lines for %d requests", len(got), len(reqs))
	}
	for i, r := range reqs {
		g := got[i]
		if g.Method != r.method || g.URI != r.path || g.Status != http.StatusOK || g.Endpoint != upstream ||
			g.Reused == nil || *g.Reused != r.reused {
			t.Errorf("access line %d: %+v (reused %v); want %s %s 200 endpoint %s reused %v",
				i+1, g, g.Reused != nil && *g.Reused, r.method, r.path, upstream, r.reused)
		}
	}
}

// TestE2ESdNotify: under a service manager (NOTIFY_SOCKET), the binary
// sends READY=1 only once its listener accepts, so that a unit ordered
// After=unstuck.service starts after that, and STOPPING=1 on SIGTERM.
func TestE2ESdNotify(t *testing.T) {
	t.Parallel()
	upstream := startUpstream(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	path := filepath.Join(t.TempDir(), "notify.sock")
	sock := listenNotify(t, path)
	c := startUnstuck(t, childOpts{env: []string{"NOTIFY_SOCKET=" + path}}, "--listen", listen, "--upstream", upstream)

	msg := nextNotify(t, sock, e2eStartTimeout)
	if !slices.Contains(strings.Split(msg, "\n"), "READY=1") {
		t.Fatalf("first message %q; want READY=1", msg)
	}
	// No wait: the listener must already be bound.
	conn, err := net.DialTimeout("tcp", listen, time.Second)
	if err != nil {
		t.Fatalf("READY=1 sent before the listener accepts: %v", err)
	}
	conn.Close()
	if code, body := get(t, listen); code != http.StatusOK || body != upstreamBody {
		t.Errorf("GET: %d %q", code, body)
	}

	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if msg := nextNotify(t, sock, e2eStopTimeout); !slices.Contains(strings.Split(msg, "\n"), "STOPPING=1") {
		t.Errorf("after SIGTERM: %q; want STOPPING=1", msg)
	}
	if code := c.exitCode(t, e2eStopTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
}
