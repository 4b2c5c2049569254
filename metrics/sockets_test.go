package metrics

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/wait"
)

// fixtureInodes are the sockets of testdata/proc that unstuck's
// descriptors hold; 3001 and 3002, also to 10.0.0.5:9000, are the app's.
func fixtureInodes() (map[uint64]bool, error) {
	return map[uint64]bool{1001: true, 1002: true, 1003: true, 1004: true, 1005: true, 1006: true, 1007: true, 2001: true, 2002: true}, nil
}

// TestSocketCollectorFixture checks the matching against fixed tables (see
// testdata/proc): listener port 15001 (0x3A99), upstream app at
// 10.0.0.5:9000, upstream static at 127.0.0.1:8080.
func TestSocketCollectorFixture(t *testing.T) {
	m := New()
	m.sockets.dir, m.sockets.inodes = "testdata/proc", fixtureInodes
	reg := m.Registry()
	err := m.SetSockets(t.Context(),
		map[string]uint16{"in": 15001, "unix": 0},
		map[string][]string{
			"app":    {"10.0.0.5:9000", "10.0.0.5:9000"}, // listed twice: one series
			"static": {"127.0.0.1:8080", "no-port"},
		})
	if err == nil {
		t.Error("SetSockets: no error for endpoint \"no-port\"")
	}

	sock := func(state, side string) l { return l{"state": state, "side": side} }
	for _, tc := range []struct {
		state, side string
		n           float64
	}{
		{"LISTEN", "listener", 2}, // tcp and tcp6
		{"ESTABLISHED", "listener", 1},
		{"CLOSE_WAIT", "listener", 1},
		{"TIME_WAIT", "listener", 0},
		{"FIN_WAIT2", "listener", 0},
		{"ESTABLISHED", "upstream", 3}, // one over tcp6, IPv4-mapped; not the app's
		{"TIME_WAIT", "upstream", 0},   // closed: no process's
		{"CLOSE_WAIT", "upstream", 1},  // not the app's
		{"LISTEN", "upstream", 0},
		{"FIN_WAIT2", "upstream", 0},
		{"SYN_SENT", "upstream", 0},
	} {
		want(t, reg, "unstuck_tcp_sockets", sock(tc.state, tc.side), tc.n)
	}
	want(t, reg, "unstuck_host_close_wait_sockets", l{}, 4)
	want(t, reg, "unstuck_upstream_local_ports", l{"upstream": "app", "endpoint": "10.0.0.5:9000"}, 6) // whoever holds them
	want(t, reg, "unstuck_upstream_local_ports", l{"upstream": "static", "endpoint": "127.0.0.1:8080"}, 1)
	want(t, reg, "unstuck_upstream_local_ports", l{"upstream": "static", "endpoint": "no-port"}, 0)

	// Replace-all: what is not in the new call is no longer watched.
	if err := m.SetSockets(t.Context(), nil, map[string][]string{"static": {"127.0.0.1:8080"}}); err != nil {
		t.Fatal(err)
	}
	want(t, reg, "unstuck_tcp_sockets", sock("LISTEN", "listener"), 0)
	want(t, reg, "unstuck_tcp_sockets", sock("ESTABLISHED", "upstream"), 1)
	if _, ok := value(t, reg, "unstuck_upstream_local_ports", l{"upstream": "app", "endpoint": "10.0.0.5:9000"}); ok {
		t.Error("unwatched endpoint still reported")
	}
}

// TestOwnInodes: the sockets of this process's descriptors, a listener's
// among them, and not another process's: a child process (this test
// binary again) holds a listener of its own while the test looks.
func TestOwnInodes(t *testing.T) {
	if os.Getenv(ownInodesChild) == "1" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(1)
		}
		fmt.Println(ln.Addr())
		io.Copy(io.Discard, os.Stdin) // until the parent closes our stdin
		os.Exit(0)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := netip.MustParseAddrPort(ln.Addr().String())

	child := exec.Command(os.Args[0], "-test.run", "^TestOwnInodes$")
	child.Env = append(os.Environ(), ownInodesChild+"=1")
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); child.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the child's listener: %q, %v", line, err)
	}
	childPort, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("the child's listener: %q, %v", line, err)
	}

	socks, err := sockstate.List()
	if err != nil {
		t.Fatal(err)
	}
	own, err := ownInodes()
	if err != nil {
		t.Fatal(err)
	}
	found, foundChild := false, false
	for _, s := range socks {
		switch {
		case s.Local == port && s.State == sockstate.Listen:
			found = own[s.Inode]
		case s.Local == childPort && s.State == sockstate.Listen:
			foundChild = true
			if own[s.Inode] {
				t.Errorf("the child's listener on %v is counted among this process's sockets", childPort)
			}
		}
	}
	if !found {
		t.Errorf("the listener on %v is not among this process's sockets", port)
	}
	if !foundChild {
		t.Errorf("the child's listener on %v is not in the socket table: the test did not test", childPort)
	}
}

// ownInodesChild marks TestOwnInodes' child process.
const ownInodesChild = "OWNINODES_TEST_CHILD"

func TestSocketCollectorReadError(t *testing.T) {
	m := New()
	m.sockets.dir = t.TempDir() // no tcp file
	if _, err := m.Registry().Gather(); err == nil {
		t.Fatal("Gather: no error for a missing socket table")
	}
}

func TestResolve(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		endpoint string
		want     []netip.AddrPort
	}{
		{"10.0.0.5:9000", []netip.AddrPort{ap("10.0.0.5:9000")}},
		{"[::ffff:10.0.0.5]:9000", []netip.AddrPort{ap("10.0.0.5:9000")}},
		{"[fe80::1%eth0]:80", []netip.AddrPort{ap("[fe80::1]:80")}},
		{":8080", []netip.AddrPort{ap("127.0.0.1:8080"), ap("[::1]:8080")}},
		{"0.0.0.0:8080", []netip.AddrPort{ap("127.0.0.1:8080"), ap("[::1]:8080")}},
		{"localhost:8080", nil}, // from /etc/hosts: contains 127.0.0.1:8080
	} {
		got, err := resolve(t.Context(), tc.endpoint)
		if err != nil {
			t.Errorf("resolve(%q): %v", tc.endpoint, err)
			continue
		}
		if tc.want == nil {
			if !slices.Contains(got, ap("127.0.0.1:8080")) {
				t.Errorf("resolve(%q) = %v, want 127.0.0.1:8080 among them", tc.endpoint, got)
			}
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("resolve(%q) = %v, want %v", tc.endpoint, got, tc.want)
		}
	}
	for _, bad := range []string{"no-port", "10.0.0.5:notaport99999", "10.0.0.5:99999"} {
		if got, err := resolve(t.Context(), bad); err == nil {
			t.Errorf("resolve(%q) = %v, want an error", bad, got)
		}
	}
}

// waitFor scrapes until the series name{labels} exists with value want,
// or fails the test after a deadline.
func waitFor(t *testing.T, m *Metrics, what, name string, labels l, want float64) {
	t.Helper()
	wait.UntilNil(t, 10*time.Second, what, func() error {
		if v, ok := value(t, m.Registry(), name, labels); !ok || v != want {
			return fmt.Errorf("%s%v = %v (exists: %v); want %v", name, labels, v, ok, want)
		}
		return nil
	})
}

// TestSocketCollectorCloseWait puts a real loopback socket in CLOSE_WAIT:
// the server side closes, the client does not. In a namespace of its own,
// so the host-wide counts are exactly this test's sockets.
func TestSocketCollectorCloseWait(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		acc <- accepted{c, err}
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	client, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var a accepted
	select {
	case a = <-acc:
	case <-time.After(5 * time.Second):
		t.Fatal("accept timed out")
	}
	if a.err != nil {
		t.Fatal(a.err)
	}
	a.c.Close() // FIN to the client, which does not close: CLOSE_WAIT

	// The client's port plays a listener port (an app connection the app
	// closed), the server's address an upstream endpoint (a connection the
	// upstream closed).
	m := New()
	clientPort := uint16(client.LocalAddr().(*net.TCPAddr).Port)
	server := ln.Addr().String()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := m.SetSockets(ctx, map[string]uint16{"in": clientPort}, map[string][]string{"up": {server}}); err != nil {
		t.Fatal(err)
	}

	waitFor(t, m, "server closed", "unstuck_host_close_wait_sockets", l{}, 1)
	waitFor(t, m, "server closed", "unstuck_tcp_sockets", l{"state": "CLOSE_WAIT", "side": "listener"}, 1)
	waitFor(t, m, "server closed", "unstuck_tcp_sockets", l{"state": "CLOSE_WAIT", "side": "upstream"}, 1)
	waitFor(t, m, "server closed", "unstuck_upstream_local_ports", l{"upstream": "up", "endpoint": server}, 1)

	client.Close()
	waitFor(t, m, "client closed", "unstuck_host_close_wait_sockets", l{}, 0)
	waitFor(t, m, "client closed", "unstuck_tcp_sockets", l{"state": "CLOSE_WAIT", "side": "listener"}, 0)
	waitFor(t, m, "client closed", "unstuck_tcp_sockets", l{"state": "CLOSE_WAIT", "side": "upstream"}, 0)
	waitFor(t, m, "client closed", "unstuck_upstream_local_ports", l{"upstream": "up", "endpoint": server}, 0)
}
