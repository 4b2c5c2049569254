package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/capture"
	"github.com/unstuck-proxy/unstuck/internal/nftlist"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// sidecarUID is the user the sidecar runs as in the capture tests, as in
// deploy/kubernetes: not root, and excluded by the rules.
const sidecarUID = 65534

// TestE2ECapture is transparent capture end to end, in the test's own
// network namespace: an app (this test, as root) that connects to its
// server's real address, 127.0.0.5, and never closes a socket the server
// closed. Without capture its sockets pile up in CLOSE_WAIT. Then unstuck
// capture (the init container's command, run twice: the same rules)
// installs the rules and the sidecar runs as another, excluded, user: the
// app's connections reach the capture listener, which pairs each with its
// own connection to the original destination; the server's peers are all
// the sidecar's sockets (its own connections were not captured again),
// and no app socket is ever in CLOSE_WAIT. A port not in capture.ports is
// not captured; IPv6 (::1) is. unstuck capture --remove takes the rules
// away.
func TestE2ECapture(t *testing.T) {
	if !isolated(t) {
		return
	}
	const clients, run = 4, 3 * time.Second
	srv := startStreamingServerAt(t, "127.0.0.5:0")
	srvAddr := netip.MustParseAddrPort(srv.ln.Addr().String())
	notCaptured := netip.MustParseAddrPort(testpeer.ServeEcho(t, "127.0.0.5:0"))
	server6 := netip.MustParseAddrPort(testpeer.ServeEcho(t, "[::1]:0"))

	t.Run("direct, the control", func(t *testing.T) {
		if worst := streamAndSample(t, srvAddr.String(), clients, run); worst == 0 {
			t.Fatal("no app socket ever sat in CLOSE_WAIT without capture: the scenario does not reproduce the bug")
		}
	})

	// The sidecar, not root, must reach its binary and configuration
	// (t.TempDir's parent is root's alone).
	dir, err := os.MkdirTemp("", "unstuck-capture-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, d := range []string{filepath.Dir(unstuckBinary(t)), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port := testpeer.FreePort(t)
	file := filepath.Join(dir, "unstuck.yaml")
	yaml := fmt.Sprintf(`listeners:
  captured:
    listen: "[::]:%d"
    protocol: tcp
    half_close: close
    capture: true
capture:
  listener: captured
  ports: [%d, %d]
  exclude_uids: [%d]
`, port, srvAddr.Port(), server6.Port(), sidecarUID)
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}

	var first nftlist.Listing
	for i := range 2 {
		code, stdout, stderr := runUnstuck(t, childOpts{dir: dir}, "capture", "--config", file)
		if code != 0 || !strings.Contains(stdout, "installed:") {
			t.Fatalf("unstuck capture: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		l, ok := listNft(t)
		switch {
		case !ok:
			t.Fatalf("no table inet %s after unstuck capture", capture.Table)
		case i == 0:
			first = l
			t.Logf("rules installed:\n%s", stdout)
		case !reflect.DeepEqual(l, first):
			t.Fatalf("unstuck capture run twice, the rules differ:\nfirst:  %+v\nsecond: %+v", first, l)
		}
	}

	c := startUnstuck(t, childOpts{dir: dir, uid: sidecarUID}, "--config", file)
	c.waitStderr(t, listenerUp) // not a dial: that connection would not be a captured one
	admin := c.adminAddr(t)

	t.Run("captured", func(t *testing.T) {
		before := srv.records.Load()
		if worst := captureAndSample(t, srvAddr, clients, run); worst != 0 {
			t.Errorf("through capture: %d app sockets in CLOSE_WAIT at once; want none, ever", worst)
		}
		if srv.records.Load() == before {
			t.Error("the server received no record through capture")
		}
	})

	t.Run("a port not captured", func(t *testing.T) {
		if viaSidecar(t, notCaptured.String()) {
			t.Error("a connection to a port not in capture.ports went through the sidecar")
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		if !viaSidecar(t, server6.String()) {
			t.Error("a connection to [::1] on a captured port reached the server directly")
		}
	})

	_, metrics := adminGet(t, admin, "/metrics")
	for _, want := range []string{
		fmt.Sprintf(`unstuck_upstream_dials_total{endpoint="%s",upstream="captured/%s"}`, srvAddr, srvAddr),
		fmt.Sprintf(`unstuck_upstream_dials_total{endpoint="%s",upstream="captured/%s"}`, server6, server6),
		`unstuck_requests_refused_total{listener="captured",reason="not_captured"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	c.stop(t)

	if code, stdout, stderr := runUnstuck(t, childOpts{dir: dir}, "capture", "--remove", "--config", file); code != 0 {
		t.Fatalf("unstuck capture --remove: exit %d\n%s%s", code, stdout, stderr)
	}
	if l, ok := listNft(t); ok {
		t.Fatalf("table left after unstuck capture --remove: %+v", l)
	}
}

// captureAndSample runs streaming clients against the server at srv, as
// the app (root), for d, and returns the most app sockets seen in
// CLOSE_WAIT in one sample. The app's sockets stay connected to srv as far
// as it can tell (NAT rewrites below them); every sample also checks that
// each connection the server has comes from the sidecar's user, so none
// is the app's (not captured) or reaches it twice (captured again).
func captureAndSample(t *testing.T, srv netip.AddrPort, clients int, d time.Duration) int {
	t.Helper()
	var cs []*streamingClient
	for range clients {
		cs = append(cs, startStreamingClient(srv.String()))
	}
	worst, served := 0, 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		socks, err := sockstate.List()
		if err != nil {
			t.Fatal(err)
		}
		byLocal := map[netip.AddrPort]sockstate.Socket{}
		for _, s := range socks {
			byLocal[s.Local] = s
		}
		closeWait := 0
		for _, s := range socks {
			switch {
			case s.Remote == srv && s.State == sockstate.CloseWait && s.UID == 0:
				closeWait++
			case s.Local == srv && s.State == sockstate.Established:
				if peer, ok := byLocal[s.Remote]; ok && peer.State == sockstate.Established && peer.UID != sidecarUID {
					t.Fatalf("the server's connection from %v is of uid %d; want the sidecar's, %d", s.Remote, peer.UID, sidecarUID)
				} else if ok {
					served++
				}
			}
		}
		worst = max(worst, closeWait)
		time.Sleep(2 * time.Millisecond) // the sampling period, not a synchronisation
	}
	var redials int64
	for _, c := range cs {
		c.stop()
		redials += c.redials.Load()
	}
	if redials == 0 {
		t.Error("no client ever redialed: the server closed nothing the clients noticed")
	}
	if served == 0 {
		t.Error("no sample saw the server connected to the sidecar")
	}
	return worst
}

// viaSidecar connects to addr as the app, exchanges a line with the echo
// server there, and reports whether the server's end of it belongs to a
// connection from the sidecar rather than from the app's socket itself.
func viaSidecar(t *testing.T, addr string) bool {
	t.Helper()
	c := testpeer.EchoLine(t, addr)
	defer c.Close()
	app := sockstate.EndsOf(c)
	socks, err := sockstate.List()
	if err != nil {
		t.Fatal(err)
	}
	direct := slices.ContainsFunc(socks, func(s sockstate.Socket) bool { return s.Local == app.Remote && s.Remote == app.Local })
	return !direct
}

// listNft is table inet unstuck as the nftables library reads it back.
func listNft(t *testing.T) (nftlist.Listing, bool) {
	t.Helper()
	return nftlist.List(t, capture.Table, capture.Chain)
}
