package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
)

func closeWaits(t testing.TB, match func(sockstate.Socket) bool) int {
	t.Helper()
	n, err := sockstate.Count(match)
	if err != nil {
		t.Fatal(err)
	}
	return n[sockstate.CloseWait]
}

// burst sends one GET and one POST on every connection of the client at
// once and waits for all of them.
func burst(c *testpeer.LegacyClient, conns, round int) {
	var wg sync.WaitGroup
	for slot := 1; slot <= conns; slot++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.DoOn(slot, "GET", "/item", nil)
			c.DoOn(slot, "POST", "/order", []byte(fmt.Sprintf("round %d slot %d", round, slot)))
		}()
	}
	wg.Wait()
}

// The problem unstuck exists for, end to end: an upstream that FINs
// connections idle for 200 ms, and a legacy app that never closes a socket
// on EOF. Direct, the app's sockets pile up in CLOSE_WAIT; through unstuck,
// nothing stays in CLOSE_WAIT on any side, no request fails, no POST
// arrives twice, and unstuck closes each upstream connection within
// milliseconds of its FIN (event-driven, not at next use or on a timer).
func TestLegacyAppBehindUnstuckLeavesNoCloseWait(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const conns, rounds = 20, 4

	t.Run("direct, the problem", func(t *testing.T) {
		up := testpeer.StartIdleCloser(t, testpeer.IdleCloserOptions{IdleTimeout: 200 * time.Millisecond})
		app := testpeer.StartLegacyClient(t, up.Addr(), testpeer.LegacyClientOptions{Conns: conns})
		burst(app, conns, 0)
		wait.Until(t, 5*time.Second, "the upstream to FIN every idle connection", func() bool { return up.Fins() >= conns })
		wait.Until(t, 5*time.Second, "the app's sockets to reach CLOSE_WAIT", func() bool {
			n, _ := app.CloseWaitCount()
			return n == conns
		})
		n, _ := app.CloseWaitCount()
		t.Logf("direct: %d of the app's %d sockets stuck in CLOSE_WAIT", n, conns)
	})

	t.Run("through unstuck", func(t *testing.T) {
		up := testpeer.StartIdleCloser(t, testpeer.IdleCloserOptions{IdleTimeout: 200 * time.Millisecond})
		upEnd := netip.MustParseAddrPort(up.Addr())
		addr := startProxy(t, proxyOpts{
			pool:     pool.Config{IdleTimeout: 90 * time.Second},
			upstream: Upstream{Retries: 2},
		}, up.Addr())
		app := testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: conns})

		for round := range rounds {
			burst(app, conns, round)
			// Idle: the upstream FINs every connection unstuck pooled;
			// unstuck must close each at once, so the upstream sees all
			// of them closed long before its 5 s bound.
			wait.Until(t, 5*time.Second, "the upstream to see every connection closed", func() bool {
				return up.Fins() > 0 && up.OpenConns() == 0
			})
			if n := closeWaits(t, sockstate.End(upEnd)); n != 0 {
				t.Fatalf("round %d: %d upstream-side sockets in CLOSE_WAIT", round, n)
			}
		}

		st := app.Stats()
		if len(st.Errors) != 0 || st.Failed["GET"]+st.Failed["POST"] != 0 {
			t.Fatalf("app saw failures: %v; errors %v", st.Failed, st.Errors)
		}
		if want := conns * rounds; st.OK["GET"] != want || st.OK["POST"] != want {
			t.Fatalf("ok %v; want %d of each", st.OK, want)
		}
		if d := up.Duplicates(); len(d) != 0 {
			t.Fatalf("upstream received requests twice: %v", d)
		}
		if n, _ := app.CloseWaitCount(); n != 0 {
			t.Fatalf("%d of the app's sockets in CLOSE_WAIT", n)
		}
		if n := up.PeerNeverClosed(); n != 0 {
			t.Fatalf("unstuck never closed %d connections the upstream FINed", n)
		}
		lat := up.CloseLatencies()
		slices.Sort(lat)
		t.Logf("upstream FIN to unstuck's close over %d connections: p50 %v, p99 %v, max %v",
			len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
		// A bound, not a speed test: fasthttp's pool would take up to its
		// 10 s cleaner or the next use; event-driven detection takes
		// milliseconds even under -race on a loaded machine.
		if lat[len(lat)-1] > time.Second {
			t.Fatalf("slowest close came %v after the FIN", lat[len(lat)-1])
		}
	})
}

// The keep-alive race: the upstream closes right after a random 20% of its
// responses, so some pooled connections die just as they are reused. GETs
// are retried and never fail; POSTs are never sent twice.
func TestKeepAliveRace(t *testing.T) {
	const workers, perWorker = 16, 400
	up := testpeer.StartRaceCloser(t, testpeer.RaceCloserOptions{Fraction: 0.2, Seed: 1})
	addr := startProxy(t, proxyOpts{upstream: Upstream{Retries: 2}, listener: Config{Logger: nopLogger}}, up.Addr())
	app := testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: workers})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := 1; w <= workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				if ctx.Err() != nil {
					return
				}
				method := "GET"
				var body []byte
				if i%2 == 1 {
					method, body = "POST", []byte(fmt.Sprintf("worker %d order %d", w, i))
				}
				app.DoOn(w, method, "/race", body)
			}
		}()
	}
	wg.Wait()
	st := app.Stats()
	total := st.OK["GET"] + st.OK["POST"] + st.Failed["GET"] + st.Failed["POST"]
	t.Logf("%d requests, upstream closed %d connections right after a response; failed GET %d, failed POST %d; app errors %v",
		total, up.Closes(), st.Failed["GET"], st.Failed["POST"], firstN(st.Errors, 3))
	if total != workers*perWorker {
		t.Fatalf("only %d of %d requests ran within the bound", total, workers*perWorker)
	}
	if st.Failed["GET"] != 0 {
		t.Errorf("%d GETs failed; idempotent requests must be retried", st.Failed["GET"])
	}
	if d := up.Duplicates(); len(d) != 0 {
		t.Errorf("requests received twice: %v", d)
	}
	// nginx failed 3 of 69,000 requests on this test here: 0.28 expected
	// in this run's 6,400. Two or more failures would put unstuck behind
	// nginx with 97% confidence (Poisson); one is within nginx's noise.
	// (Measured: 0 failed POSTs in 26 runs on a quiet machine; with the
	// benchmark suite loading both cores, 0 or 1 in each of 8 runs.)
	if st.Failed["POST"] > 1 {
		t.Errorf("%d POSTs failed; nginx's rate is 3 per 69,000 requests", st.Failed["POST"])
	}
}

func firstN(errs []error, n int) []error { return errs[:min(n, len(errs))] }
