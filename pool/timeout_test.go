package pool

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// inNetnsEnv tells the test binary, re-executed by inOwnNetns, that it runs
// in a network namespace of its own and may blackhole its loopback.
const inNetnsEnv = "UNSTUCK_TEST_POOL_NETNS"

// inOwnNetns reports whether this process has a network namespace of its
// own. If not, it re-runs the calling test in a new one (unshare -n) and
// fails the test if that run fails; the caller then returns. It fails,
// never skips: CI runs as root with util-linux, iproute2 and tc.
func inOwnNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inNetnsEnv) != "" {
		for _, args := range [][]string{{"ip", "link", "set", "lo", "up"}} {
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test creates a network namespace: it needs root (CI runs as root)")
	}
	for _, tool := range []string{"unshare", "ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s (util-linux, iproute2): %v", tool, err)
		}
	}
	cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in its own network namespace: %v\n%s", err, out)
	}
	t.Logf("in its own network namespace:\n%s", out)
	return false
}

// blackholeLoopback silently drops every packet on this namespace's
// loopback: no FIN, no RST, no ICMP, like a blackholed upstream.
func blackholeLoopback(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("tc", "qdisc", "add", "dev", "lo", "root", "blackhole").CombinedOutput(); err != nil {
		t.Fatalf("tc qdisc add dev lo root blackhole: %v\n%s", err, out)
	}
}

// A blackholed upstream ended by TCP keepalive (ETIMEDOUT) is closed with
// cause timeout, not rst: by the watcher when the connection is idle, by
// the peek at Release when it was busy.
func TestBlackholedConnectionClosedAsTimeout(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	srv := newFinServer(t)
	obs := newRecObserver()
	p := newTestPool(t, Config{
		Endpoints: []string{srv.addr()},
		Keepalive: sockopt.Keepalive{Idle: time.Second, Interval: time.Second, Count: 1},
		Observer:  obs,
	})
	cs := acquireN(t, p, srv, 2)
	idle, busy := cs[0], cs[1]
	p.Release(idle)
	blackholeLoopback(t)

	waitFor(t, 15*time.Second, "the watcher closes the idle connection as timeout", func() bool {
		_, byWatcher := obs.counts(CauseTimeout)
		return byWatcher == 1
	})
	waitFor(t, 15*time.Second, "the watcher notes the busy connection's end", func() bool {
		return p.noted(busy.id)
	})
	p.Release(busy)
	waitFor(t, 5*time.Second, "the busy connection closed as timeout at Release", func() bool {
		closed, _ := obs.counts(CauseTimeout)
		return closed == 2
	})
	if n, _ := obs.counts(CauseRST); n != 0 {
		t.Fatalf("%d closes counted as rst; want 0", n)
	}
	waitCounts(t, p, 0, 0, time.Second)
}

// The socket errors a timeout leaves map to cause timeout; a reset or
// none stays rst.
func TestCauseOfSocketError(t *testing.T) {
	for _, tc := range []struct {
		peek sockopt.PeekResult
		want Cause
	}{
		{sockopt.PeerTimeout, CauseTimeout},
		{sockopt.PeerRST, CauseRST},
		{sockopt.PeerFIN, CauseFIN},
		{sockopt.PeekError, CauseError},
	} {
		if got := causeOfPeek(tc.peek); got != tc.want {
			t.Errorf("causeOfPeek(%v) = %s; want %s", tc.peek, got, tc.want)
		}
	}
}
