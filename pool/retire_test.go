package pool

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// The learned idle timeout: a low percentile of one sample per burst of
// FINs, ignoring closes right after a response, restarts and one-offs.
func TestIdleFINsEstimate(t *testing.T) {
	const ms = time.Millisecond
	type fin struct {
		at  time.Duration // arrival, from an origin
		age time.Duration
	}
	// apart spaces FINs one second apart, one per event.
	apart := func(ages ...time.Duration) []fin {
		var fs []fin
		for i, a := range ages {
			fs = append(fs, fin{time.Duration(i) * time.Second, a})
		}
		return fs
	}
	// then appends FINs after the last of fs, each event a second on.
	then := func(fs []fin, more ...fin) []fin {
		base := fs[len(fs)-1].at + time.Second
		for _, f := range more {
			fs = append(fs, fin{base + f.at, f.age})
		}
		return fs
	}
	for _, tc := range []struct {
		name string
		fins []fin
		want time.Duration
	}{
		{"nothing seen", nil, 0},
		{"two closes are not enough", apart(300*ms, 300*ms), 0},
		{"three closes at the timeout", apart(300*ms, 302*ms, 301*ms), 301 * ms},
		{"closes right after a response are no idle timeout", apart(1*ms, 2*ms, 1*ms, 3*ms, 19*ms), 0},
		{"a one-off young close is ignored", apart(300*ms, 40*ms, 301*ms, 302*ms), 300 * ms},
		{"two of eight young closes are ignored", apart(300*ms, 40*ms, 300*ms, 300*ms, 60*ms, 300*ms, 300*ms, 300*ms), 300 * ms},
		{"a burst at the timeout is one sample", []fin{{0, 300 * ms}, {ms, 300 * ms}, {2 * ms, 301 * ms}, {40 * ms, 300 * ms}}, 0},
		{"a restart's burst is no sample", then(apart(300*ms, 300*ms, 300*ms),
			fin{0, 30 * ms}, fin{ms, 120 * ms}, fin{2 * ms, 250 * ms}, // the restart
			fin{time.Second, 40 * ms}), // and a one-off after it
			300 * ms},
		{"a shorter timeout is learned", then(apart(300*ms, 300*ms, 300*ms, 300*ms, 300*ms, 300*ms, 300*ms, 300*ms),
			fin{0, 100 * ms}, fin{time.Second, 100 * ms}, fin{2 * time.Second, 100 * ms},
			fin{3 * time.Second, 100 * ms}, fin{4 * time.Second, 100 * ms}, fin{5 * time.Second, 100 * ms}),
			100 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f idleFINs
			origin := time.Now()
			for _, x := range tc.fins {
				f.add(x.age, origin.Add(x.at))
			}
			if f.learned != tc.want {
				t.Errorf("learned %v, want %v", f.learned, tc.want)
			}
		})
	}
}

// released acquires a new connection from p, lets set record what its
// response's Keep-Alive said, and releases it; it returns the connection
// and the server's side of it.
func released(t *testing.T, p *Pool, srv *finServer, set func(*Conn)) (*Conn, net.Conn) {
	t.Helper()
	c, err := p.Acquire(false)
	if err != nil {
		t.Fatal(err)
	}
	peer := srv.peerOf(t, c)
	if set != nil {
		set(c)
	}
	p.Release(c)
	return c, peer
}

// closedWithin reads the server's side of a connection until the pool's
// close (EOF) and returns how long after since it came; it fails the test
// if none comes within bound.
func closedWithin(t *testing.T, peer net.Conn, since time.Time, bound time.Duration) time.Duration {
	t.Helper()
	peer.SetReadDeadline(since.Add(bound))
	if _, err := io.Copy(io.Discard, peer); err != nil {
		t.Fatalf("server side: want the pool's close within %v, got %v", bound, err)
	}
	return time.Since(since)
}

// A connection whose server said Keep-Alive: timeout=200ms is closed by
// the cleaner once idle for (1 - margin) of that, before the server would,
// though the cleaner was asleep until another connection's idle_timeout an
// hour away.
func TestKeepAliveTimeoutRetiresIdleConnection(t *testing.T) {
	const timeout, margin = 200 * time.Millisecond, 0.5
	srv := newFinServer(t)
	obs := newRecObserver()
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, IdleTimeout: time.Hour, RetireMargin: margin, Observer: obs})
	cs := acquireN(t, p, srv, 2)
	peer := srv.peerOf(t, cs[1])
	p.Release(cs[0]) // the cleaner runs, until an hour from now
	start := time.Now()
	cs[1].SetServerKeepAlive(timeout, -1)
	p.Release(cs[1])
	took := closedWithin(t, peer, start, 5*time.Second)
	if want := time.Duration(float64(timeout) * (1 - margin)); took < want || took >= timeout {
		t.Errorf("closed %v after its release; want at %v, before the server's %v", took, want, timeout)
	}
	if closed, _ := obs.counts(CauseRetired); closed != 1 {
		t.Errorf("%d closes retired, want 1", closed)
	}
	waitCounts(t, p, 1, 1, time.Second) // the other one stays: its server said nothing
}

// Keep-Alive max=M retires a connection at the Release of the M-th
// request counted from the response that said it; max=0 at once.
func TestKeepAliveMaxRetiresAtRelease(t *testing.T) {
	for _, tc := range []struct {
		name string
		maxs []int // what each response on the connection says
	}{
		{"max=0", []int{0}},
		{"max counts down (Apache)", []int{3, 2, 1}},
		{"max stays (the lower limit holds)", []int{2, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFinServer(t)
			obs := newRecObserver()
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs})
			var first *Conn
			var peer net.Conn
			for i, m := range tc.maxs {
				c, err := p.Acquire(false)
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					first, peer = c, srv.peerOf(t, c)
				} else if c != first {
					t.Fatalf("request %d: a new connection; the server's max allowed the old one", i+1)
				}
				c.SetServerKeepAlive(0, m)
				p.Release(c)
			}
			closedWithin(t, peer, time.Now(), 5*time.Second)
			if closed, _ := obs.counts(CauseRetired); closed != 1 {
				t.Errorf("%d closes retired, want 1", closed)
			}
			waitCounts(t, p, 0, 0, time.Second)
		})
	}
}

// Acquire never hands out a connection past its retirement, though the
// cleaner has not closed it yet: it closes it (retired) and dials.
func TestAcquireNeverHandsOutRetired(t *testing.T) {
	for _, careful := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "careful"}[careful], func(t *testing.T) {
			srv := newFinServer(t)
			obs := newRecObserver()
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs})
			old, peer := released(t, p, srv, func(c *Conn) { c.SetServerKeepAlive(time.Hour, -1) })
			// The cleaner sleeps until 48 minutes from now; move the
			// connection's idle start back so that its retirement is past.
			p.mu.Lock()
			old.idleSince = time.Now().Add(-time.Hour)
			p.mu.Unlock()
			c, err := p.Acquire(careful)
			if err != nil {
				t.Fatal(err)
			}
			if c == old {
				t.Fatal("Acquire handed out a connection past its retirement")
			}
			closedWithin(t, peer, time.Now(), 5*time.Second)
			if closed, _ := obs.counts(CauseRetired); closed != 1 {
				t.Errorf("%d closes retired, want 1", closed)
			}
			p.Release(c)
		})
	}
}

// idleCloseServer accepts connections and closes each once it has been
// idle (no byte from the pool) for idle, as a server with an idle timeout
// does. Each connection's end is reported on ends: true if the server
// closed it (its timer ran out), false if the pool's close (EOF) came
// first.
func idleCloseServer(t *testing.T, idle time.Duration) (*finServer, <-chan bool) {
	t.Helper()
	ends := make(chan bool, 100)
	srv := startTestServer(t, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(idle))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			ends <- true
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c) // until the pool's close
			return
		}
		if err == io.EOF {
			ends <- false
		}
	})
	return srv, ends
}

func nextEnd(t *testing.T, ends <-chan bool) bool {
	t.Helper()
	select {
	case serverClosed := <-ends:
		return serverClosed
	case <-time.After(5 * time.Second):
		t.Fatal("no connection ended within 5s")
		return false
	}
}

// The pool learns an endpoint's idle timeout from the FINs of its first
// idle connections, shows it in Stats, and from then on retires idle
// connections before the server closes them: the server reads the pool's
// EOF before its timer runs out. With learning off, nothing is learned and
// the server goes on closing them.
func TestLearnsIdleTimeoutFromFINs(t *testing.T) {
	const serverIdle = 200 * time.Millisecond
	for _, learn := range []bool{true, false} {
		t.Run(map[bool]string{true: "learning", false: "off"}[learn], func(t *testing.T) {
			srv, ends := idleCloseServer(t, serverIdle)
			obs := newRecObserver()
			// A wide margin: the server's timer starts at its accept, and
			// timers fire late under the race detector.
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Observer: obs, NoLearnIdleTimeout: !learn, RetireMargin: 0.3})
			dialRelease := func() {
				t.Helper()
				c, err := p.Acquire(false)
				if err != nil {
					t.Fatal(err)
				}
				p.Release(c)
			}
			for i := range minFINs {
				dialRelease()
				if !nextEnd(t, ends) {
					t.Fatalf("warm-up %d: the pool closed the connection before its server did", i+1)
				}
				waitCounts(t, p, 0, 0, 5*time.Second) // the watcher saw the FIN
			}
			learned := p.Stats()[0].LearnedIdleTimeout
			switch {
			case !learn && learned != 0:
				t.Fatalf("learning off, yet learned %v", learned)
			case learn && (learned < serverIdle*9/10 || learned > serverIdle*3/2):
				t.Fatalf("learned %v; the server closes idle connections at %v", learned, serverIdle)
			}
			for i := range 3 {
				dialRelease()
				if serverClosed := nextEnd(t, ends); serverClosed == learn {
					t.Fatalf("connection %d after learning %v: closed by the server %v", i+1, learned, serverClosed)
				}
				waitCounts(t, p, 0, 0, 5*time.Second)
			}
			closed, _ := obs.counts(CauseRetired)
			if want := map[bool]int{true: 3, false: 0}[learn]; closed != want {
				t.Errorf("%d closes retired, want %d", closed, want)
			}
			t.Logf("learned %v from a server that closes at %v", learned, serverIdle)
		})
	}
}
