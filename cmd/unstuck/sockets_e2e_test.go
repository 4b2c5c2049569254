package main

// End-to-end tests of the listener's socket: a restart next to thousands of
// TIME_WAIT sockets, and two processes sharing a port with SO_REUSEPORT.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// politeGet is a well-behaved app on its own connection: one GET, the
// whole response, then it waits for the server's FIN (unstuck's
// idle_timeout) and closes on EOF. The server closed first, so the
// server's socket keeps TIME_WAIT. It returns the ends of the server's
// socket.
func politeGet(addr string) (sockstate.Ends, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return sockstate.Ends{}, err
	}
	return sockstate.EndsOf(conn).Peer(), politeExchange(conn, addr)
}

func politeExchange(conn net.Conn, addr string) error {
	defer conn.Close() // on EOF: the app's FIN
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /tw HTTP/1.1\r\nHost: %s\r\n\r\n", addr); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if b, err := br.ReadByte(); err != io.EOF {
		return fmt.Errorf("waiting for the server's FIN: got byte %q, error %v", b, err)
	}
	return nil
}

// TestE2ERestartWithTimeWait: unstuck closes 1,000 idle app connections
// first (linger graceful), so the port has up to 1,000 sockets in
// TIME_WAIT; a new unstuck started right after the old one exits binds
// that port on its first try and serves. In a namespace of its own, whose
// counters are this test's: every one of the 1,000 entered TIME_WAIT, and
// none leaves the table across the restart.
func TestE2ERestartWithTimeWait(t *testing.T) {
	t.Parallel()
	if !isolated(t) {
		return
	}
	const conns, batch = 1000, 100
	upstream := startUpstream(t)
	port := testpeer.FreePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	path := writeConfig(t, "unstuck.yaml", fmt.Sprintf(`listeners:
  app:
    listen: %s
    idle_timeout: 50ms
    linger: graceful
upstreams:
  backend:
    endpoints: [%q]
`, listen, upstream))
	first := startUnstuck(t, childOpts{}, "--config", path)
	first.waitAccepting(t, listen)
	before, err := sockstate.Counters()
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu     sync.Mutex
		failed []error
		ends   []sockstate.Ends // unstuck's side of each connection
	)
	for start := 0; start < conns; start += batch {
		var wg sync.WaitGroup
		for range batch {
			wg.Go(func() {
				end, err := politeGet(listen)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed = append(failed, err)
				}
				ends = append(ends, end)
			})
		}
		wg.Wait() // bounded: every connection has a 10s deadline
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d app connections failed; first: %v", len(failed), conns, failed[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Each connection puts unstuck's side in TIME_WAIT (the app closes
	// second: it has none), and nothing else is left. Fewer stay in the
	// table: a later batch's SYN from the same client port takes the old
	// TIME_WAIT over, and an RST ends one.
	// The namespace's count also has the upstream connections unstuck
	// closed, less those still in the table; one a later dial took over
	// (tcp_tw_reuse) can add one: at least every app connection.
	unstucksSide := sockstate.Conns(ends...)
	upstreams := sockstate.End(netip.MustParseAddrPort(upstream))
	entered := func() int {
		after, err := sockstate.Counters()
		if err != nil {
			t.Fatal(err)
		}
		up, err := sockstate.Count(upstreams)
		if err != nil {
			t.Fatal(err)
		}
		return int(after["TcpExt.TW"]-before["TcpExt.TW"]) - up[sockstate.TimeWait]
	}
	counts, err := sockstate.WaitFor(ctx, unstucksSide, func(m map[sockstate.State]int) bool {
		return len(m) == 1 && m[sockstate.TimeWait] > 0 && entered() >= conns
	})
	if err != nil {
		t.Fatalf("unstuck's side on port %d: %d sockets entered TIME_WAIT, want %d: %v", port, entered(), conns, err)
	}
	t.Logf("port %d before the restart: %v", port, counts)

	first.stop(t)
	second := startUnstuck(t, childOpts{}, "--config", path)
	second.waitStderr(t, listenerUp)
	if out := second.stderr.String(); strings.Contains(out, "address already in use") {
		t.Fatalf("the restart could not bind %s:\n%s", listen, out)
	}
	// Nothing has connected to the port since, and TIME_WAIT lasts 60s:
	// every socket is still there.
	want := counts
	counts, err = sockstate.Count(unstucksSide)
	if err != nil || !maps.Equal(counts, want) {
		t.Errorf("unstuck's side once the new unstuck listens: %v (%v); want the %v from before", counts, err, want)
	}
	t.Logf("port %d once the new unstuck listens: %v", port, counts)
	second.waitAccepting(t, listen)
	if code, body := get(t, listen); code != http.StatusOK || body != upstreamBody {
		t.Errorf("GET after the restart: %d %q; want 200 %q", code, body, upstreamBody)
	}
	second.stop(t)
}

// TestE2EReusePortTwoProcesses: two unstuck processes with reuse_port bind
// the same address and both serve; when the first stops, the second serves
// every new connection: a replacement without downtime. Each sends its own
// Host to an upstream that echoes it, which tells them apart.
func TestE2EReusePortTwoProcesses(t *testing.T) {
	t.Parallel()
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Host)
	}))
	t.Cleanup(echo.Close)
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	start := func(host string) *child {
		path := writeConfig(t, host+".yaml", fmt.Sprintf(`listeners:
  app:
    listen: %s
    reuse_port: true
upstreams:
  backend:
    endpoints: [%q]
    host_header: %s
`, listen, echo.Listener.Addr(), host))
		c := startUnstuck(t, childOpts{}, "--config", path)
		c.waitStderr(t, listenerUp)
		return c
	}
	one := start("one")
	one.waitAccepting(t, listen)
	two := start("two")
	if a, b := one.adminAddr(t), two.adminAddr(t); a == b {
		t.Fatalf("both processes report admin address %s", a)
	}

	// New connections, one request each, until both processes have served.
	served := map[string]int{}
	for i := 0; i < 200 && (served["one"] == 0 || served["two"] == 0); i++ {
		code, body, err := httpGet("http://" + listen + "/")
		if err != nil || code != http.StatusOK {
			t.Fatalf("request %d with both running: %d %q %v", i+1, code, body, err)
		}
		served[body]++
	}
	t.Logf("with both running: %v", served)
	if served["one"] == 0 || served["two"] == 0 || len(served) != 2 {
		t.Fatalf("served by %v; want both one and two", served)
	}

	one.stop(t)
	var errs []error
	for i := range 100 {
		code, body, err := httpGet("http://" + listen + "/")
		if err == nil && (code != http.StatusOK || body != "two") {
			err = fmt.Errorf("%d %q; want 200 \"two\"", code, body)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("request %d: %w", i+1, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("%d of 100 requests failed after the first process stopped:\n%v", len(errs), err)
	}
	two.stop(t)
}
