package sidecar

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/capture"
	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/wait"
)

// A capture listener's destination that an upstream lists takes that
// upstream's settings (here a warm pool: min_idle 1), under the label
// <listener>/<destination>; once unused for capture.idle_timeout its pool
// closes and its series go. A reload that changes nothing the
// destinations depend on keeps them; one that does replaces them. Here
// unstuck and the app are one process: the rules exclude unstuck by the
// mark its pools set.
func TestCaptureDestinations(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	const mark = 0x1e7
	srv := testpeer.ServeEcho(t, "127.0.0.5:0")
	l := config.DefaultListener()
	l.Name, l.Listen, l.Protocol, l.Capture = "captured", "127.0.0.1:0", "tcp", true
	db := config.DefaultUpstream()
	db.Name, db.Endpoints, db.Pool.MinIdle = "db", []string{srv}, 1
	cfg := &config.Config{
		Log:             config.Log{Level: "debug", Format: "console"},
		Admin:           config.Admin{Listen: "127.0.0.1:0"},
		ShutdownTimeout: 5 * time.Second,
		Listeners:       map[string]config.Listener{"captured": l},
		Upstreams:       map[string]config.Upstream{"db": db},
		Capture:         config.DefaultCapture(),
	}
	cfg.Capture.Mark, cfg.Capture.IdleTimeout = mark, 300*time.Millisecond
	sc := start(t, cfg)
	addr := sc.ListenerAddr("captured").(*net.TCPAddr)
	srvPort := uint16(must(net.ResolveTCPAddr("tcp", srv)).Port)
	if err := capture.Install(capture.Rules{Port: uint16(addr.Port), IPv4: true, Ports: []uint16{srvPort}, ExcludeMark: mark}); err != nil {
		t.Fatal(err)
	}

	label := "captured/" + srv
	idle := fmt.Sprintf(`unstuck_upstream_connections{endpoint=%q,state="idle",upstream=%q}`, srv, label)
	hits := fmt.Sprintf(`unstuck_pool_warm_acquires_total{result="hit",upstream=%q}`, label)
	echo := func() {
		t.Helper()
		testpeer.EchoLine(t, srv).Close()
	}
	echo() // makes the destination, with db's settings: a warm connection follows
	wait.Until(t, 5*time.Second, "a warm connection to the destination", func() bool { return scrape(t, sc, idle) == 1 })
	before := max(scrape(t, sc, hits), 0) // the first may have found the warm one already
	echo()
	if n := scrape(t, sc, hits); n != before+1 {
		t.Fatalf("%s = %v; want %v (db's min_idle reached the destination's pool)", hits, n, before+1)
	}

	dests := sc.captures["captured"].dests
	l.Listen = addr.String() // pinned: a reload must not move it
	cfg.Listeners["captured"] = l
	if err := sc.Reload(clone(cfg)); err != nil {
		t.Fatal(err)
	}
	if sc.captures["captured"].dests != dests {
		t.Fatal("a reload that changed nothing replaced the destinations")
	}
	wait.Until(t, 5*time.Second, "the destination closed once unused, its series gone", func() bool {
		return dests.Len() == 0 && scrape(t, sc, hits) == -1 && scrape(t, sc, idle) == -1
	})

	next := clone(cfg)
	next.Capture.MaxDestinations = 8
	if err := sc.Reload(next); err != nil {
		t.Fatal(err)
	}
	if sc.captures["captured"].dests == dests {
		t.Fatal("a reload that changed capture.max_destinations kept the destinations")
	}
	echo() // the new ones serve
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
