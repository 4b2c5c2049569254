package pool

import (
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// A blackholed upstream ended by TCP keepalive (ETIMEDOUT) is closed with
// cause timeout, not rst: by the watcher when the connection is idle, by
// the peek at Release when it was busy. In a namespace of its own: it
// blackholes the namespace's loopback.
func TestBlackholedConnectionClosedAsTimeout(t *testing.T) {
	if !netns.Isolated(t) {
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
	netns.Blackhole(t, 0) // every packet: no FIN, no RST, no ICMP

	wait.Until(t, 15*time.Second, "the watcher closes the idle connection as timeout", func() bool {
		_, byWatcher := obs.counts(CauseTimeout)
		return byWatcher == 1
	})
	wait.Until(t, 15*time.Second, "the watcher notes the busy connection's end", func() bool {
		return p.noted(busy.id)
	})
	p.Release(busy)
	wait.Until(t, 5*time.Second, "the busy connection closed as timeout at Release", func() bool {
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
