package resolve

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/unstuck-proxy/unstuck/internal/testdns"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const name = "svc.unstuck.test"

// setter is a fake pool: it records every set it gets, and hands each to
// a test waiting on sets.
type setter struct {
	calls [][]pool.Addr
	sets  chan []pool.Addr // buffered: Set never blocks the resolver
}

func newSetter() *setter { return &setter{sets: make(chan []pool.Addr, 64)} }

func (s *setter) Set(addrs []pool.Addr) {
	s.calls = append(s.calls, addrs)
	s.sets <- addrs
}

// next waits for the next set.
func (s *setter) next(t *testing.T) []pool.Addr {
	t.Helper()
	select {
	case a := <-s.sets:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no new endpoint set within 10s")
		return nil
	}
}

// rig is a Resolver pointed at a DNS server of the test's, with a fake
// setter, a failure count and its logs.
type rig struct {
	dns      *testdns.Server
	set      *setter
	failures int
	logs     *observer.ObservedLogs
	r        *Resolver
}

func newRig(t *testing.T, refresh time.Duration, endpoints ...string) *rig {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	g := &rig{dns: testdns.Start(t), set: newSetter(), logs: logs}
	g.r = New(Config{
		Upstream:  "backend",
		Endpoints: endpoints,
		Refresh:   refresh,
		Timeout:   2 * time.Second,
		Resolver:  g.dns.Resolver(),
		Set:       g.set.Set,
		OnFailure: func() { g.failures++ },
		Logger:    zap.New(core),
	})
	return g
}

// round runs one round on the test's goroutine.
func (g *rig) round() { g.r.round(context.Background()) }

func addrs(name string, port int, ips ...string) []pool.Addr {
	var out []pool.Addr
	for _, ip := range ips {
		a := pool.Addr{Addr: fmt.Sprintf("%s:%d", ip, port), Name: name}
		if strings.Contains(ip, ":") {
			a.Addr = fmt.Sprintf("[%s]:%d", ip, port)
		}
		out = append(out, a)
	}
	return out
}

func wantSet(t *testing.T, got, want []pool.Addr) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("endpoint set\n got %v\nwant %v", got, want)
	}
}

func TestHasNames(t *testing.T) {
	for _, tt := range []struct {
		eps  []string
		want bool
	}{
		{[]string{"127.0.0.1:80"}, false},
		{[]string{"[::1]:80", "10.0.0.1:443"}, false},
		{[]string{"localhost:8080", "app.localhost:80"}, false},
		{[]string{"127.0.0.1:80", "svc.ns.svc.cluster.local:80"}, true},
		{[]string{"api.example:443"}, true},
	} {
		if got := HasNames(tt.eps); got != tt.want {
			t.Errorf("HasNames(%v) = %v, want %v", tt.eps, got, tt.want)
		}
	}
}

// Every address of the name is an endpoint, IPv4 then IPv6, each sorted
// whatever order DNS gives them in, with the name kept for TLS; IP
// literals pass through as configured, in their place.
func TestEveryAddressIsAnEndpoint(t *testing.T) {
	g := newRig(t, 0, "10.9.9.9:81", name+":8080")
	g.dns.Set(name, "127.0.0.4", "::1", "127.0.0.2", "127.0.0.3")
	g.round()
	want := append([]pool.Addr{{Addr: "10.9.9.9:81"}},
		addrs(name, 8080, "127.0.0.2", "127.0.0.3", "127.0.0.4", "::1")...)
	wantSet(t, g.set.next(t), want)

	// The same addresses in another order are no change.
	g.dns.Set(name, "::1", "127.0.0.3", "127.0.0.4", "127.0.0.2")
	g.round()
	if len(g.set.calls) != 1 {
		t.Fatalf("Set called %d times; the same addresses in another order are the same set", len(g.set.calls))
	}
}

// An address that joins is added, one that leaves is removed; an address
// that two endpoints share is one endpoint.
func TestSetFollowsDNS(t *testing.T) {
	g := newRig(t, 0, name+":8080", "127.0.0.3:8080")
	g.dns.Set(name, "127.0.0.2", "127.0.0.3")
	g.round()
	wantSet(t, g.set.next(t), addrs(name, 8080, "127.0.0.2", "127.0.0.3"))

	g.dns.Set(name, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	g.round()
	wantSet(t, g.set.next(t), addrs(name, 8080, "127.0.0.2", "127.0.0.3", "127.0.0.4"))

	g.dns.Set(name, "127.0.0.4")
	g.round()
	// 127.0.0.3 stays: configured as an IP.
	wantSet(t, g.set.next(t), append(addrs(name, 8080, "127.0.0.4"), pool.Addr{Addr: "127.0.0.3:8080"}))
	if g.failures != 0 {
		t.Fatalf("%d failures counted", g.failures)
	}
}

// A failed lookup, or one that finds no address, keeps the last good
// set; each is counted, and a failing streak logs one warning, and its
// end one line.
func TestFailureKeepsLastGoodSet(t *testing.T) {
	g := newRig(t, 0, name+":8080")
	g.dns.Set(name, "127.0.0.2", "127.0.0.3")
	g.round()
	good := g.set.next(t)

	g.dns.Fail(true) // SERVFAIL
	for range 3 {
		g.round()
	}
	g.dns.Fail(false)
	g.dns.Set(name) // NOERROR, no address
	g.round()
	if len(g.set.calls) != 1 {
		t.Fatalf("Set called with %v while DNS failed; want the last good set kept", g.set.calls[1:])
	}
	if g.failures != 4 {
		t.Fatalf("%d failures counted; want 4", g.failures)
	}
	if n := g.logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Fatalf("%d warnings for one failing streak; want 1", n)
	}

	g.dns.Set(name, "127.0.0.3")
	g.round()
	wantSet(t, g.set.next(t), addrs(name, 8080, "127.0.0.3"))
	if n := g.logs.FilterMessage("endpoint name resolves again").Len(); n != 1 {
		t.Fatalf("%d lines for the streak's end; want 1", n)
	}
	wantSet(t, good, addrs(name, 8080, "127.0.0.2", "127.0.0.3"))

	// A new streak warns again.
	g.dns.Fail(true)
	g.round()
	if n := g.logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 2 {
		t.Fatalf("%d warnings after a second failing streak; want 2", n)
	}
}

// A name that has never resolved stays as configured (the pool dials it
// by name), and Set is not called; another name of the upstream still
// gets its addresses.
func TestNeverResolvedStaysAsConfigured(t *testing.T) {
	const other = "other.unstuck.test"
	g := newRig(t, 0, name+":8080", other+":9090")
	g.dns.Set(other, "127.0.0.5")
	g.dns.Fail(true)
	g.round()
	if len(g.set.calls) != 0 {
		t.Fatalf("Set called with %v; every lookup failed", g.set.calls)
	}
	g.dns.Fail(false) // name is NXDOMAIN: it was never set
	g.round()
	wantSet(t, g.set.next(t), append([]pool.Addr{{Addr: name + ":8080"}}, addrs(other, 9090, "127.0.0.5")...))
}

// A refresh of 0 resolves once, at start: Run returns after one round.
func TestRefreshZeroResolvesOnce(t *testing.T) {
	g := newRig(t, 0, name+":8080")
	g.dns.Set(name, "127.0.0.2")
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		g.r.Run(context.Background())
	}()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run with a refresh of 0 did not return after its one round")
	}
	wantSet(t, g.set.next(t), addrs(name, 8080, "127.0.0.2"))
	if q := g.dns.Queries(name); q != 2 {
		t.Fatalf("%d questions; want one A and one AAAA", q)
	}
}

// Start refreshes every Refresh until stop, which returns once the
// goroutine has: no Set after it.
func TestStartRefreshesUntilStopped(t *testing.T) {
	g := newRig(t, 10*time.Millisecond, name+":8080")
	g.dns.Set(name, "127.0.0.2")
	stop := g.r.Start()
	defer stop()
	wantSet(t, g.set.next(t), addrs(name, 8080, "127.0.0.2"))
	g.dns.Set(name, "127.0.0.2", "127.0.0.3")
	wantSet(t, g.set.next(t), addrs(name, 8080, "127.0.0.2", "127.0.0.3"))
	stop()
	stop() // a second stop does nothing
	if n := len(g.set.sets); n != 0 {
		t.Fatalf("%d sets after the last awaited", n)
	}
	calls := len(g.set.calls) // read after stop: the goroutine is gone
	if calls != 2 {
		t.Fatalf("Set called %d times; want 2", calls)
	}
}

// stop cancels a lookup in flight: it returns at once, not at the lookup's
// timeout, and the cancelled lookup is no failure of DNS's.
func TestStopCancelsALookup(t *testing.T) {
	g := newRig(t, time.Hour, name+":8080")
	g.r.cfg.Timeout = time.Hour
	g.dns.Mute(true)
	stop := g.r.Start()
	wait.Until(t, 10*time.Second, "the resolver to ask", func() bool { return g.dns.Queries(name) > 0 })
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return within 10s of a lookup in flight")
	}
	if g.failures != 0 || len(g.set.calls) != 0 {
		t.Fatalf("a cancelled lookup counted %d failures, %d sets", g.failures, len(g.set.calls))
	}
}
