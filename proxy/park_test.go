package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// releaseCounter is an Observer that follows idle release and closes.
type releaseCounter struct {
	nopObserver
	released, closed atomic.Int64
}

func (c *releaseCounter) AppConnReleased(delta int) { c.released.Add(int64(delta)) }
func (c *releaseCounter) AppConnClosed(string)      { c.closed.Add(1) }

// echoUpstream answers every request with its method, path and body.
func echoUpstream(t testing.TB) string {
	return addrOf(upstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
	}))
}

func get(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n" }

// An idle app connection gives up its goroutine (and fasthttp's buffers
// with it) and comes back the moment the app sends: the goroutine count
// falls back to where it was before the connections opened, every
// connection still answers, and it is released again afterwards.
func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	const n = 40
	obs := &releaseCounter{}
	addr := startProxy(t, proxyOpts{listener: Config{IdleReleaseAfter: 300 * time.Millisecond, Observer: obs}},
		echoUpstream(t))
	warm := dialRaw(t, addr) // starts the pool and the upstream's goroutines
	warm.send(get("/warm"))
	warm.response("GET")
	wait.Until(t, 5*time.Second, "the warm-up connection released", func() bool { return obs.released.Load() == 1 })
	// Goroutines serving a connection are counted by their stack, not by
	// runtime.NumGoroutine: other tests' goroutines still winding down would
	// move that count.
	base := servingGoroutines()

	// One request at a time, so that the pool keeps one upstream
	// connection (and the in-process upstream one goroutine for it).
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = dialRaw(t, addr)
		conns[i].send(get(fmt.Sprintf("/first/%d", i)))
		if _, body := conns[i].response("GET"); body != fmt.Sprintf("GET /first/%d ", i) {
			t.Fatalf("conn %d: %q", i, body)
		}
	}
	// Every connection not yet released holds a goroutine. On a loaded
	// machine the first may be released before the last is served, so
	// those released by the time of the count are left out of it.
	g := servingGoroutines() - base
	serving := n - int(obs.released.Load()-1)
	if g < serving {
		t.Fatalf("%d goroutines serving %d connections not yet released", g, serving)
	}
	wait.Until(t, 5*time.Second, "every connection released", func() bool { return obs.released.Load() == n+1 })
	wait.Until(t, 5*time.Second, "the goroutines gone", func() bool { return servingGoroutines() <= base })

	for i, c := range conns {
		c.send(get(fmt.Sprintf("/second/%d", i)))
		if _, body := c.response("GET"); body != fmt.Sprintf("GET /second/%d ", i) {
			t.Fatalf("conn %d after release: %q", i, body)
		}
	}
	wait.Until(t, 5*time.Second, "every connection released again", func() bool { return obs.released.Load() == n+1 })
	if c := obs.closed.Load(); c != 0 {
		t.Fatalf("%d app connections closed; want none", c)
	}
}

// A pipelined request that fasthttp has partly buffered is never mistaken
// for an idle connection: the release would drop the buffered half. The
// first request is answered, the connection waits (longer than the release
// time) for the rest of the second, and then answers it.
func TestPartlyBufferedPipelinedRequestIsNotReleased(t *testing.T) {
	const after = 20 * time.Millisecond
	obs := &releaseCounter{}
	addr := startProxy(t, proxyOpts{listener: Config{IdleReleaseAfter: after, Observer: obs}}, echoUpstream(t))
	c := dialRaw(t, addr)
	second := "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	c.send(get("/one") + second[:20])
	if _, body := c.response("GET"); body != "GET /one " {
		t.Fatalf("first: %q", body)
	}
	// Whatever the sweeper does in ten release periods, it must not
	// release this connection.
	deadline := time.Now().Add(10 * after)
	for time.Now().Before(deadline) {
		if r := obs.released.Load(); r != 0 {
			t.Fatalf("connection with half a request buffered was released")
		}
		time.Sleep(after / 4)
	}
	c.send(second[20:])
	if _, body := c.response("POST"); body != "POST /two hello" {
		t.Fatalf("second: %q", body)
	}
	// Fully pipelined: two whole requests in one write, both answered.
	c.send(get("/three") + get("/four"))
	for _, want := range []string{"GET /three ", "GET /four "} {
		if _, body := c.response("GET"); body != want {
			t.Fatalf("pipelined: %q, want %q", body, want)
		}
	}
}

// The request that wakes a released connection may race the release
// itself: many connections whose idle gaps straddle the release time must
// see every response, in order, and none of their requests lost.
func TestReleaseRacesRequests(t *testing.T) {
	const (
		after  = 10 * time.Millisecond
		conns  = 16
		rounds = 25
	)
	obs := &releaseCounter{}
	addr := startProxy(t, proxyOpts{listener: Config{IdleReleaseAfter: after, Observer: obs}}, echoUpstream(t))
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		c := dialRaw(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				// Gaps from 0 to 2.5×after, so that the next request
				// lands before, during and after the release.
				time.Sleep(time.Duration((i*7+r*3)%11) * after / 4)
				path := fmt.Sprintf("/%d/%d", i, r)
				if _, err := io.WriteString(c.c, get(path)); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(c.br, &http.Request{Method: "GET"})
				if err != nil {
					errs <- fmt.Errorf("conn %d round %d: %w", i, r, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				if string(b) != "GET "+path+" " {
					errs <- fmt.Errorf("conn %d round %d: %q", i, r, b)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if c := obs.closed.Load(); c != 0 {
		t.Fatalf("%d app connections closed; want none", c)
	}
}

// A released connection still obeys idle_timeout, with the listener's
// linger (reset here: the app sees an RST, and nothing is left in
// CLOSE_WAIT or TIME_WAIT on either side).
func TestReleasedConnectionStillTimesOut(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	obs := &releaseCounter{}
	addr := startProxy(t, proxyOpts{listener: Config{
		IdleReleaseAfter: 20 * time.Millisecond, IdleTimeout: 300 * time.Millisecond,
		Linger: sockopt.Linger{Mode: sockopt.Reset}, Observer: obs,
	}}, echoUpstream(t))
	c := dialRaw(t, addr)
	c.send(get("/x"))
	c.response("GET")
	start := time.Now()
	wait.Until(t, 5*time.Second, "the connection released", func() bool { return obs.released.Load() == 1 })
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.br.ReadByte()
	if err == nil || isTimeout(err) {
		t.Fatalf("read on a connection past idle_timeout: %v; want it closed", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("closed %v after the response; idle_timeout is 300ms", d)
	}
	if r := obs.released.Load(); r != 0 {
		t.Fatalf("released gauge %d after the close; want 0", r)
	}
	local, remote := addrPort(c.c.LocalAddr()), addrPort(c.c.RemoteAddr())
	var n map[sockstate.State]int
	defer func() { t.Logf("sockets of the connection: %v", n) }()
	wait.Until(t, 2*time.Second, "no socket of the connection left", func() bool {
		var err error
		n, err = sockstate.Count(sockstate.Either(sockstate.Conn(local, remote), sockstate.Conn(remote, local)))
		if err != nil {
			t.Fatal(err)
		}
		return n[sockstate.CloseWait]+n[sockstate.TimeWait]+n[sockstate.FinWait2] == 0
	})

}

// An app that closes a released connection gets it closed at once: no
// socket of unstuck's waits in CLOSE_WAIT for a request that never comes.
func TestAppClosingReleasedConnectionLeavesNoCloseWait(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	obs := &releaseCounter{}
	addr := startProxy(t, proxyOpts{listener: Config{IdleReleaseAfter: 20 * time.Millisecond, Observer: obs}},
		echoUpstream(t))
	c := dialRaw(t, addr)
	c.send(get("/x"))
	c.response("GET")
	wait.Until(t, 5*time.Second, "the connection released", func() bool { return obs.released.Load() == 1 })
	unstucks := sockstate.Conns(sockstate.EndsOf(c.c).Peer())
	c.c.Close()
	wait.Until(t, 2*time.Second, "unstuck's side closed", func() bool {
		n, err := sockstate.Count(unstucks)
		return err == nil && n[sockstate.CloseWait] == 0 && n[sockstate.Established] == 0
	})
	wait.Until(t, 2*time.Second, "the close counted", func() bool { return obs.closed.Load() == 1 })
	if r := obs.released.Load(); r != 0 {
		t.Fatalf("released gauge %d; want 0", r)
	}
}

// Shutdown closes released connections (the app sees its connection end,
// not a hang), and leaves no goroutine behind (TestMain's goleak).
func TestShutdownClosesReleasedConnections(t *testing.T) {
	obs := &releaseCounter{}
	srv, addr := startServer(t, proxyOpts{listener: Config{IdleReleaseAfter: 20 * time.Millisecond, Observer: obs}},
		echoUpstream(t))
	c := dialRaw(t, addr)
	c.send(get("/x"))
	c.response("GET")
	wait.Until(t, 5*time.Second, "the connection released", func() bool { return obs.released.Load() == 1 })
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.eof() {
		t.Fatal("released connection still open after Shutdown")
	}
	if r := obs.released.Load(); r != 0 {
		t.Fatalf("released gauge %d after Shutdown; want 0", r)
	}
	if n := obs.closed.Load(); n != 1 {
		t.Fatalf("closes counted: %d; want 1", n)
	}
}

// A Shutdown that comes before Serve (a reload retiring a server whose
// serve goroutine has not started yet) makes Serve return at once and
// close its listener, rather than serve a server nobody will stop.
func TestShutdownBeforeServe(t *testing.T) {
	srv := New(Config{IdleReleaseAfter: time.Second})
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		ln.Close()
		<-done
		t.Fatal("Serve after Shutdown kept serving")
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("the listener still accepts after Serve returned")
	}
}

// servingGoroutines counts the goroutines in fasthttp's serve loop of a
// connection, in every server of this process.
func servingGoroutines() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("fasthttp.(*Server).serveConn("))
}
