package sidecar

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/internal/testdns"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
)

const dnsName = "backend.unstuck.test" // .test: reserved, never a real name (RFC 6761)

// useDNS points the sidecars the test starts at a DNS server of its own.
// Call it before start: the cleanup that restores the resolver then runs
// after the sidecar's Shutdown.
func useDNS(t *testing.T) *testdns.Server {
	t.Helper()
	dns := testdns.Start(t)
	dnsResolver = dns.Resolver()
	t.Cleanup(func() { dnsResolver = nil })
	return dns
}

// startOnOnePort starts a keep-alive upstream on each of ips, all on one
// port (as the addresses of one name in DNS), and returns them by IP, and
// the port.
func startOnOnePort(t *testing.T, ips ...string) (map[string]*testpeer.Server, string) {
	t.Helper()
	for range 20 { // a port free on the first address may be taken on another
		ups := map[string]*testpeer.Server{}
		first, err := testpeer.NewServer(testpeer.Options{Listen: ips[0] + ":0"})
		if err != nil {
			t.Fatal(err)
		}
		ups[ips[0]] = first
		_, port, _ := net.SplitHostPort(first.Addr())
		for _, ip := range ips[1:] {
			s, err := testpeer.NewServer(testpeer.Options{Listen: net.JoinHostPort(ip, port)})
			if err != nil {
				break
			}
			ups[ip] = s
		}
		if len(ups) == len(ips) {
			for _, s := range ups {
				t.Cleanup(func() { s.Close() })
			}
			return ups, port
		}
		for _, s := range ups {
			s.Close()
		}
	}
	t.Fatalf("no port free on all of %v in 20 tries", ips)
	return nil, ""
}

// dnsConfig is testConfig with its upstream given by dnsName on port,
// refreshed every 20ms.
func dnsConfig(port string) *config.Config {
	cfg := testConfig(net.JoinHostPort(dnsName, port))
	u := cfg.Upstreams["backend"]
	u.DNSRefresh = 20 * time.Millisecond
	cfg.Upstreams["backend"] = u
	return cfg
}

func backendPool(sc *Sidecar) *pool.Pool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.upstreams["backend"].pool
}

// waitEndpoints waits until the backend pool's endpoints taking part are
// ips on port.
func waitEndpoints(t *testing.T, sc *Sidecar, port string, ips ...string) {
	t.Helper()
	var want []string
	for _, ip := range ips {
		want = append(want, net.JoinHostPort(ip, port))
	}
	slices.Sort(want)
	wait.UntilNil(t, 10*time.Second, fmt.Sprintf("the endpoints to be %v", want), func() error {
		got := backendPool(sc).EndpointAddrs()
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("they are %v", got)
		}
		return nil
	})
}

// load is a few keep-alive app connections sending GETs and POSTs through
// the sidecar, one goroutine each, until finish.
type load struct {
	app  *testpeer.LegacyClient
	stop chan struct{}
	wg   sync.WaitGroup
}

func startLoad(t *testing.T, addr string, conns int) *load {
	t.Helper()
	l := &load{
		app:  testpeer.StartLegacyClient(t, addr, testpeer.LegacyClientOptions{Conns: conns}),
		stop: make(chan struct{}),
	}
	for slot := 1; slot <= conns; slot++ {
		l.wg.Add(1)
		go l.send(slot)
	}
	t.Cleanup(l.finish) // after a failed wait too
	return l
}

// send is one app connection's loop, bounded in case finish never comes.
func (l *load) send(slot int) {
	defer l.wg.Done()
	for i := range 50_000 {
		select {
		case <-l.stop:
			return
		default:
		}
		if i%3 == 0 {
			l.app.DoOn(slot, "POST", "/dns", fmt.Appendf(nil, "slot %d req %d", slot, i))
		} else {
			l.app.DoOn(slot, "GET", "/dns", nil)
		}
	}
}

// finish stops the load and waits for the requests in flight. Safe to
// call more than once.
func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// waitServed waits until up has answered more than since requests.
func waitServed(t *testing.T, up *testpeer.Server, since int, what string) {
	t.Helper()
	wait.Until(t, 10*time.Second, what, func() bool { return up.Responses() > since })
}

// The endpoints follow the name's addresses under a bounded load: an
// address that joins gets requests, one that leaves drains (no new
// requests, its connections close) with no request failing and no app
// connection dropped, and while DNS fails the last good set keeps
// serving; an address that comes back gets requests again.
func TestDNSEndpointsFollowTheName(t *testing.T) {
	dns := useDNS(t)
	ups, port := startOnOnePort(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	a, b, c := ups["127.0.0.2"], ups["127.0.0.3"], ups["127.0.0.4"]
	dns.Set(dnsName, "127.0.0.2", "127.0.0.3")
	sc := start(t, dnsConfig(port))
	waitEndpoints(t, sc, port, "127.0.0.2", "127.0.0.3")

	const conns = 6
	l := startLoad(t, sc.ListenerAddr("app").String(), conns)
	ports := l.app.LocalPorts()
	waitServed(t, a, 0, "127.0.0.2 to get requests")
	waitServed(t, b, 0, "127.0.0.3 to get requests")

	// An address joins: it gets requests.
	dns.Set(dnsName, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	waitEndpoints(t, sc, port, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	waitServed(t, c, 0, "the new endpoint 127.0.0.4 to get requests")

	// An address leaves: it drains, and then gets nothing.
	dns.Set(dnsName, "127.0.0.3", "127.0.0.4")
	waitEndpoints(t, sc, port, "127.0.0.3", "127.0.0.4")
	wait.Until(t, 10*time.Second, "the removed endpoint 127.0.0.2 to drain: its connections closed, the endpoint gone", func() bool {
		gone := !slices.ContainsFunc(backendPool(sc).Stats(), func(s pool.EndpointStats) bool {
			return s.Endpoint == a.Addr()
		})
		return gone && a.OpenConns() == 0
	})
	drained := a.Responses()

	// DNS fails: the last good set keeps serving.
	dns.Fail(true)
	errs := `unstuck_dns_resolve_errors_total{upstream="backend"}`
	wait.Until(t, 10*time.Second, "two failed lookups to be counted", func() bool { return scrape(t, sc, errs) >= 2 })
	fromB, fromC := b.Responses(), c.Responses()
	waitServed(t, b, fromB, "127.0.0.3 to keep getting requests while DNS fails")
	waitServed(t, c, fromC, "127.0.0.4 to keep getting requests while DNS fails")
	if got := backendPool(sc).EndpointAddrs(); len(got) != 2 {
		t.Fatalf("while DNS fails the endpoints are %v; want the last good two", got)
	}
	if v := scrape(t, sc, `unstuck_upstream_endpoints{upstream="backend"}`); v != 2 {
		t.Fatalf("unstuck_upstream_endpoints = %v while DNS fails; want 2", v)
	}
	if n := a.Responses(); n != drained {
		t.Fatalf("the removed endpoint answered %d requests after it drained", n-drained)
	}

	// DNS is back, with 127.0.0.2 again and without 127.0.0.3.
	dns.Fail(false)
	dns.Set(dnsName, "127.0.0.2", "127.0.0.4")
	waitEndpoints(t, sc, port, "127.0.0.2", "127.0.0.4")
	waitServed(t, a, drained, "127.0.0.2, back in DNS, to get requests again")
	wait.Until(t, 10*time.Second, "the removed endpoint 127.0.0.3 to drain", func() bool { return b.OpenConns() == 0 })

	l.finish()
	st := l.app.Stats()
	if len(st.Errors) != 0 {
		t.Fatalf("%d requests failed: %v", len(st.Errors), st.Errors[:min(3, len(st.Errors))])
	}
	if st.Dials != conns || fmt.Sprint(l.app.LocalPorts()) != fmt.Sprint(ports) {
		t.Fatalf("app connections changed: %d dials, local ports %v then %v", st.Dials, ports, l.app.LocalPorts())
	}
	for ip, up := range ups {
		if d := up.Duplicates(); len(d) != 0 {
			t.Fatalf("%s received requests twice: %v", ip, d)
		}
	}
	t.Logf("%d GETs and %d POSTs, 0 failed; answered by 127.0.0.2: %d, 127.0.0.3: %d, 127.0.0.4: %d",
		st.OK["GET"], st.OK["POST"], a.Responses(), b.Responses(), c.Responses())
}

// resolvers counts the goroutines running a resolve.Resolver.
func resolvers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("resolve.(*Resolver).runUntilStopped("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// An upstream's resolver lives as long as its pool: a reload that
// replaces the pool replaces it, one that leaves no name or fails to
// apply leaves none behind, and Shutdown stops it. Stops wait for the
// goroutine, so the counts hold the moment Reload returns.
func TestDNSResolverLivesWithItsPool(t *testing.T) {
	dns := useDNS(t)
	ups, port := startOnOnePort(t, "127.0.0.2")
	dns.Set(dnsName, "127.0.0.2")
	cfg := dnsConfig(port)
	sc := start(t, cfg)
	addr := pinned(t, cfg, sc)
	count := func(when string, want int) {
		t.Helper()
		if n := resolvers(); n != want {
			t.Fatalf("%s: %d resolver goroutines, want %d", when, n, want)
		}
	}
	count("at start", 1)
	waitEndpoints(t, sc, port, "127.0.0.2")
	if code, _ := get(t, addr, "/"); code != 200 {
		t.Fatalf("through the resolved endpoint: %d", code)
	}

	changed := clone(cfg)
	u := changed.Upstreams["backend"]
	u.DNSRefresh = time.Hour
	changed.Upstreams["backend"] = u
	if err := sc.Reload(changed); err != nil {
		t.Fatal(err)
	}
	count("after a reload that replaced the pool", 1)

	// A reload that cannot apply (the listener's new address is taken)
	// stops the resolver it started for its new pool.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := withListener(cfg, func(l *config.Listener) { l.Listen = taken.Addr().String() })
	if err := sc.Reload(bad); err == nil {
		t.Fatal("a reload onto a taken address applied")
	}
	count("after a reload that failed", 1)

	static := clone(cfg)
	u = static.Upstreams["backend"]
	u.Endpoints = []string{ups["127.0.0.2"].Addr()}
	static.Upstreams["backend"] = u
	if err := sc.Reload(static); err != nil {
		t.Fatal(err)
	}
	count("after a reload to IP endpoints", 0)
	if v := scrape(t, sc, `unstuck_upstream_endpoints{upstream="backend"}`); v != 1 {
		t.Fatalf("unstuck_upstream_endpoints = %v; want 1", v)
	}

	if err := sc.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	count("after a reload back to the name", 1)
	if err := sc.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	count("after Shutdown", 0)
}

// dns_refresh 0 resolves once, at start: the name's later addresses are
// not seen.
func TestDNSRefreshZeroResolvesOnce(t *testing.T) {
	dns := useDNS(t)
	_, port := startOnOnePort(t, "127.0.0.2", "127.0.0.3")
	dns.Set(dnsName, "127.0.0.2")
	cfg := dnsConfig(port)
	u := cfg.Upstreams["backend"]
	u.DNSRefresh = 0
	cfg.Upstreams["backend"] = u
	sc := start(t, cfg)
	waitEndpoints(t, sc, port, "127.0.0.2")
	wait.Until(t, 10*time.Second, "the resolver to be done", func() bool { return resolvers() == 0 })
	asked := dns.Queries(dnsName)
	dns.Set(dnsName, "127.0.0.3")
	if code, _ := get(t, sc.ListenerAddr("app").String(), "/"); code != 200 {
		t.Fatalf("through the endpoint resolved at start: %d", code)
	}
	if q := dns.Queries(dnsName); q != asked {
		t.Fatalf("%d more questions after the one resolution", q-asked)
	}
}
