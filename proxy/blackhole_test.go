package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/pool"
)

// blackholeServerEnv makes the test binary, re-executed inside the test's
// network namespace, serve HTTP on the address it holds instead of running
// tests (see TestMain).
const blackholeServerEnv = "UNSTUCK_TEST_BLACKHOLE_SERVER"

// serveInNamespace is the upstream the blackhole test runs inside its
// namespace. It serves until killed.
func serveInNamespace(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("ready")
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	os.Exit(0)
}

// netns is a network namespace joined to the test's by a veth pair: the
// test's side has host, the namespace's side peer.
type netns struct {
	name, veth string
	host, peer string // IPv4 addresses of a /30
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates the namespace and veth pair, and removes both when the
// test ends. It fails, never skips: the test must run in CI, as root with
// iproute2 and nftables (.ci/run installs them).
func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test creates a network namespace: it needs root (CI runs as root)")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s (apt-get install iproute2 nftables): %v", tool, err)
		}
	}
	id := os.Getpid() % 100000
	n := &netns{
		name: fmt.Sprintf("unstuck-bh-%d", id),
		veth: fmt.Sprintf("ubh%d", id),
		host: fmt.Sprintf("10.231.%d.1", id%250),
		peer: fmt.Sprintf("10.231.%d.2", id%250),
	}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	run(t, "ip", "link", "add", n.veth+"a", "type", "veth", "peer", "name", n.veth+"b")
	t.Cleanup(func() { exec.Command("ip", "link", "del", n.veth+"a").Run() })
	run(t, "ip", "link", "set", n.veth+"b", "netns", n.name)
	run(t, "ip", "addr", "add", n.host+"/30", "dev", n.veth+"a")
	run(t, "ip", "link", "set", n.veth+"a", "up")
	run(t, "ip", "netns", "exec", n.name, "ip", "addr", "add", n.peer+"/30", "dev", n.veth+"b")
	run(t, "ip", "netns", "exec", n.name, "ip", "link", "set", n.veth+"b", "up")
	run(t, "ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up")
	return n
}

// blackhole drops every packet into and out of the namespace, silently:
// no FIN, no RST, no ICMP.
func (n *netns) blackhole(t *testing.T) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(`table inet blackhole {
	chain in { type filter hook input priority 0; policy drop; }
	chain out { type filter hook output priority 0; policy drop; }
}
`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
}

// serve starts the helper upstream inside the namespace on port.
func (n *netns) serve(t *testing.T, port int) string {
	t.Helper()
	addr := fmt.Sprintf("%s:%d", n.peer, port)
	cmd := exec.Command("ip", "netns", "exec", n.name, os.Args[0])
	cmd.Env = append(os.Environ(), blackholeServerEnv+"="+addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("helper said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("upstream in namespace: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream in namespace not ready within 10s")
	}
	return addr
}

// A blackholed upstream (packets silently dropped after the connection is
// pooled): with user_timeout 1s the kernel gives up on unacknowledged data
// after a second, unstuck answers 504 and closes the connection, instead of
// holding it for the kernel's 15-minute default.
func TestBlackholedUpstream(t *testing.T) {
	n := newNetns(t)
	upstreamAddr := n.serve(t, 8080)
	const userTimeout = time.Second
	addr := startProxy(t, proxyOpts{
		pool:     pool.Config{UserTimeout: userTimeout, DialTimeout: time.Second},
		upstream: Upstream{ResponseHeaderTimeout: 30 * time.Second}, // not what fires here
	}, upstreamAddr)

	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("before the blackhole: %d %q", resp.StatusCode, body)
	}

	n.blackhole(t)
	start := time.Now()
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, _ := c.response("GET")
	took := time.Since(start)
	if resp.StatusCode != 504 {
		t.Fatalf("blackholed upstream: got %d; want 504", resp.StatusCode)
	}
	if took > userTimeout+time.Second {
		t.Fatalf("504 after %v; want within user_timeout (%v) plus 1s", took, userTimeout)
	}
	remote := sockstate.RemotePort(8080)
	states, err := sockstate.Count(func(s sockstate.Socket) bool {
		return remote(s) && s.Remote.Addr().String() == n.peer
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 0 {
		t.Fatalf("sockets to the blackholed upstream left: %v", states)
	}
	t.Logf("blackholed upstream: 504 after %v (user_timeout %v); no socket left towards it", took, userTimeout)
}
