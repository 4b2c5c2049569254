package main

// The reload-under-load test: many app connections sending while SIGHUP
// reloads the configuration again and again.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// loadYAML is the configuration of the reload-under-load test. The
// endpoint and response_idle apply in place (the listener's server stays,
// with a new pool); max_conns and idle_release_after need a new server on
// the same socket. The pool's 8 connections are fewer than the app's, so
// requests wait for one when a reload closes the pool under them; the
// acquire timeout is long enough that a loaded machine never reaches it.
type loadYAML struct {
	endpoint         string
	responseIdle     string
	maxConns         int
	idleReleaseAfter string
}

func (y loadYAML) render(listen string) string {
	return fmt.Sprintf(`listeners:
  app:
    listen: %s
    idle_release_after: %s
    limits:
      max_conns: %d
upstreams:
  backend:
    endpoints: [%q]
    pool:
      max_conns: 8
      acquire_timeout: 10s
    timeouts:
      response_idle: %s
`, listen, y.idleReleaseAfter, y.maxConns, y.endpoint, y.responseIdle)
}

// loadTraffic is the apps' load: one goroutine per connection, each
// alternating GET and POST (a body unique to the request) until stop or
// perConn requests. A response that is not the answer to its own request
// (request id, body length and hash as the upstream received them) is a
// mismatch; errors are counted by each client's Stats.
type loadTraffic struct {
	perConn int
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu         sync.Mutex // guards mismatches
	mismatches []string
}

func newLoadTraffic(perConn int) *loadTraffic {
	return &loadTraffic{perConn: perConn, done: make(chan struct{})}
}

// add starts the load on every connection of app, whose requests' ids
// start with name. Not after stop.
func (lt *loadTraffic) add(name string, app *testpeer.LegacyClient, conns int) {
	for slot := 1; slot <= conns; slot++ {
		lt.wg.Add(1)
		go lt.sendOn(name, app, slot)
	}
}

func (lt *loadTraffic) sendOn(name string, app *testpeer.LegacyClient, slot int) {
	defer lt.wg.Done()
	for i := range lt.perConn {
		select {
		case <-lt.done:
			return
		default:
		}
		r := testpeer.Request{Method: http.MethodGet, Path: "/load", Slot: slot, ID: fmt.Sprintf("get-%s-%d-%d", name, slot, i)}
		if i%2 == 1 {
			// 40 to ~4KiB, different for every request.
			body := fmt.Sprintf("%s slot %d request %d %s", name, slot, i, strings.Repeat("x", (slot*131+i*17)%4096))
			r = testpeer.Request{Method: http.MethodPost, Path: "/load", Slot: slot, ID: fmt.Sprintf("post-%s-%d-%d", name, slot, i), Body: []byte(body)}
		}
		resp, err := app.Send(r) // counted in Stats
		if err != nil {
			continue
		}
		sum := sha256.Sum256(r.Body)
		if got, want := resp.Header.Get("X-Request-Id"), r.ID; got != want ||
			resp.Header.Get("X-Received-Sha256") != hex.EncodeToString(sum[:]) ||
			resp.Header.Get("X-Received-Length") != fmt.Sprint(len(r.Body)) {
			lt.mu.Lock()
			lt.mismatches = append(lt.mismatches, fmt.Sprintf("%s %s: answered as id %q length %s",
				r.Method, r.ID, got, resp.Header.Get("X-Received-Length")))
			lt.mu.Unlock()
		}
	}
}

// stop ends the load and waits for every request in flight: bounded, each
// has the client's timeout.
func (lt *loadTraffic) stop() []string {
	lt.once.Do(func() { close(lt.done) })
	lt.wg.Wait()
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return slices.Clone(lt.mismatches)
}

var releasedRE = regexp.MustCompile(`(?m)^unstuck_app_connections_released\{listener="app"\} (\d+)$`)

// releasedConns returns how many of the app listener's connections have
// released their goroutine, from the admin listener's /metrics.
func releasedConns(t *testing.T, admin string) int {
	t.Helper()
	_, body := adminGet(t, admin, "/metrics")
	m := releasedRE.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// appClient is one app of the test: its client, its connections' local
// ports when they were opened, and how many there are.
type appClient struct {
	name   string
	client *testpeer.LegacyClient
	conns  int
	ports  []uint16
}

// TestE2EReloadUnderLoadSIGHUP: 32 keep-alive app connections send GETs
// and POSTs without pause while SIGHUP reloads the configuration eight
// times, alternating changes applied in place (endpoint A↔B,
// response_idle) with changes that put a new server on the listener's
// socket (max_conns, idle_release_after). After each reload another app
// opens 4 connections, whose first requests the current server answers
// from the endpoint just named, and joins the load: so every server, the
// first and the replaced ones, keeps serving live connections through
// later reloads. 4 more connections sleep released through all the reloads
// and wake under load at the end. No request fails or is answered with
// another's response, no POST reaches an upstream twice, both endpoints
// serve, and every app keeps the connections it opened.
func TestE2EReloadUnderLoadSIGHUP(t *testing.T) {
	t.Parallel()
	const (
		conns        = 32
		joinerConns  = 4
		sleeperConns = 4
		perConn      = 20000              // a bound; the test stops the load long before
		progress     = 16 * conns         // requests to see between reloads, at each
		phaseWait    = 4 * e2eStopTimeout // for a reload's line, and for its progress: ~2s on a loaded 2-CPU machine under -race
	)
	a := testpeer.StartServer(t, testpeer.Options{})
	b := testpeer.StartServer(t, testpeer.Options{})
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	cfg := loadYAML{endpoint: a.Addr(), responseIdle: "60s", maxConns: 0, idleReleaseAfter: "1s"}
	path, file := symlinkedConfig(t, cfg.render(listen))
	c := startUnstuck(t, childOpts{}, "--config", path)
	c.waitAccepting(t, listen)

	load := newLoadTraffic(perConn)
	t.Cleanup(func() { load.stop() })
	var apps []appClient
	join := func(name string, conns int) *testpeer.LegacyClient {
		cl := testpeer.StartLegacyClient(t, listen, testpeer.LegacyClientOptions{Conns: conns, Timeout: 10 * time.Second, IDPrefix: name})
		apps = append(apps, appClient{name: name, client: cl, conns: conns, ports: cl.LocalPorts()})
		return cl
	}
	ok := func() int {
		n := 0
		for _, ap := range apps {
			st := ap.client.Stats()
			n += st.OK[http.MethodGet] + st.OK[http.MethodPost]
		}
		return n
	}
	finished := false
	t.Cleanup(func() {
		if !t.Failed() || finished {
			return
		}
		// Stopped part way: say which requests had failed by then.
		for _, ap := range apps {
			st := ap.client.Stats()
			t.Logf("%s: %v ok, %d failed", ap.name, st.OK, len(st.Errors))
			for _, err := range st.Errors[:min(len(st.Errors), 5)] {
				t.Logf("%s: failed: %v", ap.name, err)
			}
		}
	})
	// The sleeper's connections each send a GET and a POST, then sleep
	// through the reloads with their goroutine released (idle_release_after),
	// and wake at the end.
	sleeper := join("sleeper", sleeperConns)
	sleeperRound := func(round string, want *testpeer.Server) {
		t.Helper()
		for slot := 1; slot <= sleeperConns; slot++ {
			for _, m := range []string{http.MethodGet, http.MethodPost} {
				resp, err := sleeper.Send(testpeer.Request{Method: m, Path: "/sleeper", Body: []byte(fmt.Sprintf("sleeper %d %s %s", slot, round, m)), Slot: slot})
				if err != nil {
					t.Errorf("sleeper connection %d, %s %s: %v", slot, round, m, err)
				} else if !receivedBy(want, resp.RequestID) {
					t.Errorf("sleeper connection %d, %s %s (%s): not received by %s", slot, round, m, resp.RequestID, want.Addr())
				}
			}
		}
	}
	sleeperRound("before", a)
	admin := c.adminAddr(t)
	eventually(t, e2eStopTimeout, "the sleeper's connections released", func() bool {
		return releasedConns(t, admin) >= sleeperConns
	})

	began := time.Now()
	load.add("app", join("app", conns), conns)
	eventually(t, e2eStartTimeout, "the load under way at A", func() bool { return len(a.Received()) >= progress })

	steps := []struct {
		what      string
		change    func(*loadYAML)
		newServer bool
	}{
		{"endpoint A→B, response_idle 30s", func(y *loadYAML) { y.endpoint, y.responseIdle = b.Addr(), "30s" }, false},
		{"max_conns 4096", func(y *loadYAML) { y.maxConns = 4096 }, true},
		{"endpoint B→A", func(y *loadYAML) { y.endpoint = a.Addr() }, false},
		{"idle_release_after 0s", func(y *loadYAML) { y.idleReleaseAfter = "0s" }, true},
		{"response_idle 45s", func(y *loadYAML) { y.responseIdle = "45s" }, false},
		{"max_conns 0, idle_release_after 1s", func(y *loadYAML) { y.maxConns, y.idleReleaseAfter = 0, "1s" }, true},
		{"endpoint A→B, response_idle 60s", func(y *loadYAML) { y.endpoint, y.responseIdle = b.Addr(), "60s" }, false},
		{"max_conns 4096 and endpoint B→A", func(y *loadYAML) { y.maxConns, y.endpoint = 4096, a.Addr() }, true},
	}
	replacements := 0
	for i, step := range steps {
		step.change(&cfg)
		if step.newServer {
			replacements++
		}
		target := map[string]*testpeer.Server{a.Addr(): a, b.Addr(): b}[cfg.endpoint]
		atTarget, okBefore := len(target.Received()), ok()

		if err := os.WriteFile(file, []byte(cfg.render(listen)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP: %v", err)
		}
		eventually(t, phaseWait, fmt.Sprintf("reload %d (%s) logged", i+1, step.what), func() bool {
			out := c.stderr.String()
			return strings.Count(out, "configuration reloaded") == i+1 &&
				strings.Count(out, "replacing listener") == replacements
		})
		if strings.Contains(c.stderr.String(), "configuration not reloaded") {
			t.Fatalf("reload %d (%s) rejected", i+1, step.what)
		}

		// A new app is served by the current server, from the endpoint
		// now named, and joins the load.
		name := fmt.Sprintf("join%d", i+1)
		joiner := join(name, joinerConns)
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			resp, err := joiner.Send(testpeer.Request{Method: m, Path: "/first", Body: []byte(name + " first " + m), Slot: 1})
			if err != nil {
				t.Errorf("%s on a connection opened after reload %d (%s): %v", m, i+1, step.what, err)
			} else if !receivedBy(target, resp.RequestID) {
				t.Errorf("%s %s after reload %d (%s) did not reach %s", m, resp.RequestID, i+1, step.what, cfg.endpoint)
			}
		}
		load.add(name, joiner, joinerConns)
		// The load goes on at the endpoint now named.
		eventually(t, phaseWait, fmt.Sprintf("%d requests at %s after reload %d (%s)", progress, cfg.endpoint, i+1, step.what), func() bool {
			return len(target.Received()) >= atTarget+progress && ok() >= okBefore+progress
		})
	}
	// Still under load, the sleepers wake: served by the first server,
	// replaced four times since, from the endpoint now named.
	if released := releasedConns(t, admin); released < sleeperConns {
		t.Errorf("%d app connections released before the sleepers woke; want their %d still released", released, sleeperConns)
	}
	sleeperRound("after", map[string]*testpeer.Server{a.Addr(): a, b.Addr(): b}[cfg.endpoint])
	mismatches := load.stop()
	finished = true
	elapsed := time.Since(began)

	recA, recB := a.Received(), b.Received()
	okBy, failed, dials := map[string]int{}, 0, 0
	for _, ap := range apps {
		st := ap.client.Stats()
		for m, n := range st.OK {
			okBy[m] += n
		}
		failed += len(st.Errors)
		dials += st.Dials
		for _, err := range st.Errors[:min(len(st.Errors), 5)] {
			t.Errorf("%s: failed: %v", ap.name, err)
		}
		if len(st.Errors) > 0 {
			t.Errorf("%s: %d requests failed across the reloads; want 0", ap.name, len(st.Errors))
		}
		if after := ap.client.LocalPorts(); st.Dials != ap.conns || st.Abandoned != 0 || !slices.Equal(after, ap.ports) {
			t.Errorf("%s dialed %d times, abandoned %d, local ports %v → %v; want its %d connections kept",
				ap.name, st.Dials, st.Abandoned, ap.ports, after, ap.conns)
		}
	}
	t.Logf("%d reloads (%d with a new server) in %v over %d app connections: %d GET and %d POST ok, %d failed; A received %d, B %d",
		len(steps), replacements, elapsed.Round(time.Millisecond), dials, okBy[http.MethodGet], okBy[http.MethodPost],
		failed, len(recA), len(recB))
	for _, m := range mismatches[:min(len(mismatches), 10)] {
		t.Errorf("wrong response: %s", m)
	}
	if okBy[http.MethodGet] == 0 || okBy[http.MethodPost] == 0 {
		t.Errorf("OK by method %v: want GETs and POSTs", okBy)
	}

	// Every POST reached an upstream exactly once: no duplicate at either
	// endpoint, none at both, and as many received as answered.
	if d := a.Duplicates(); len(d) > 0 {
		t.Errorf("A received %d requests twice, such as %s", len(d), d[0])
	}
	if d := b.Duplicates(); len(d) > 0 {
		t.Errorf("B received %d requests twice, such as %s", len(d), d[0])
	}
	posts := map[string]int{}
	for _, r := range slices.Concat(recA, recB) {
		if r.Method == http.MethodPost {
			posts[r.RequestID]++
		}
	}
	var twice []string
	for id, n := range posts {
		if n > 1 {
			twice = append(twice, id)
		}
	}
	if len(twice) > 0 {
		slices.Sort(twice)
		t.Errorf("%d POSTs received more than once across A and B, such as %s", len(twice), twice[0])
	}
	if len(posts) != okBy[http.MethodPost] {
		t.Errorf("upstreams received %d distinct POSTs; the apps got %d answered", len(posts), okBy[http.MethodPost])
	}
	if len(recA) == 0 || len(recB) == 0 {
		t.Errorf("A received %d, B %d: want both endpoints to have served", len(recA), len(recB))
	}

	out := c.stderr.String()
	if n := strings.Count(out, `"trigger": "SIGHUP"`); n != len(steps) {
		t.Errorf("stderr: %d reloads triggered by SIGHUP; want %d", n, len(steps))
	}
	if strings.Contains(out, "DATA RACE") {
		t.Errorf("unstuck reported a data race")
	}
	for _, ap := range apps {
		ap.client.Close() // first: see TestE2EShutdownIdleLegacyConn
	}
	c.stop(t)
}
