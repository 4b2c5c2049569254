package pool

import (
	"testing"
	"time"
)

// AcquireNew dials even while idle connections wait: with three idle, the
// server accepts a fourth.
func TestAcquireNewDialsPastIdle(t *testing.T) {
	srv := newFinServer(t)
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}})
	cs := acquireN(t, p, srv, 3)
	for _, c := range cs {
		p.Release(c)
	}
	c, err := p.AcquireNew()
	if err != nil {
		t.Fatal(err)
	}
	srv.accepted(t)
	for _, old := range cs {
		if c == old {
			t.Fatal("AcquireNew handed out an idle connection")
		}
	}
	if c.Reused() {
		t.Fatal("AcquireNew's connection says it was reused")
	}
	p.Release(c)
	waitCounts(t, p, 4, 4, time.Second)
}

// expectReplaced checks that AcquireNew dialed c anew instead of handing
// out old, the server's first connection, and closed old as replaced.
func expectReplaced(t *testing.T, srv *finServer, obs *recObserver, c, old *Conn) {
	t.Helper()
	srv.accepted(t)
	if c == old {
		t.Fatal("AcquireNew handed out the old connection")
	}
	expectClosedByPeer(t, srv.conn(0), 5*time.Second)
	if n, _ := obs.counts(CauseReplaced); n != 1 {
		t.Fatalf("%d closes with cause replaced; want 1", n)
	}
}

// At MaxConns, AcquireNew closes the idle connection (cause replaced) and
// dials in its slot.
func TestAcquireNewReplacesIdleAtMaxConns(t *testing.T) {
	srv := newFinServer(t)
	obs := newRecObserver()
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, Observer: obs})
	old := acquireN(t, p, srv, 1)[0]
	p.Release(old)

	c, err := p.AcquireNew()
	if err != nil {
		t.Fatal(err)
	}
	expectReplaced(t, srv, obs, c, old)
	if open, idle := p.counts(); open != 1 || idle != 0 {
		t.Fatalf("%d open, %d idle; want 1, 0", open, idle)
	}
	p.Release(c)
}

// At MaxConns with nothing idle, AcquireNew waits; the connection released
// to it is replaced by a new one.
func TestAcquireNewWaitsThenReplacesHandedOver(t *testing.T) {
	srv := newFinServer(t)
	obs := newRecObserver()
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, MaxConns: 1, AcquireTimeout: 10 * time.Second, Observer: obs})
	held := acquireN(t, p, srv, 1)[0]
	got := make(chan *Conn, 1)
	go func() {
		c, err := p.AcquireNew()
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitForWaiter(t, p)
	p.Release(held)
	c := <-got
	if c == nil {
		return
	}
	expectReplaced(t, srv, obs, c, held)
	p.Release(c)
	waitCounts(t, p, 1, 1, time.Second)
}
