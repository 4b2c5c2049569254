package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// startIdleServer runs an upstream that closes a connection once it has
// waited idle for its next request, as servers with a keep-alive timeout
// do; keepAlive, if not empty, is the Keep-Alive header of its responses.
// Its FIN reaches unstuck finDelay after it decided to close, as over a
// link with that latency: a request that arrives meanwhile is never
// answered. (On bare loopback the FIN arrives within microseconds, and the
// keep-alive race is too narrow for a test to see.)
//
// Each connection's end goes on the channel: whether the server closed
// it or unstuck's close (EOF) had reached it first. When its timer runs
// the server looks in the socket itself (the runtime may run the timer
// before it tells a reader what arrived): an EOF there is unstuck's close;
// a request there, when the timer ran late (this process was not
// scheduled), is served, since it may well have come in time.
func startIdleServer(t testing.TB, idle, finDelay time.Duration, keepAlive string) (*peer, <-chan connEnd) {
	t.Helper()
	ends := make(chan connEnd, 1000)
	header := ""
	if keepAlive != "" {
		header = "Keep-Alive: " + keepAlive + "\r\n"
	}
	p := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			since := time.Now()
			c.SetReadDeadline(since.Add(idle))
			if _, err := br.Peek(1); err != nil {
				in := sockopt.PeekError
				if isTimeout(err) {
					in = peekSocket(c)
				}
				if in == sockopt.Unsolicited && time.Since(since) > idle+lateTimer {
					continue // a request, and the timer ran late: serve it
				}
				serverClose := in == sockopt.Open || in == sockopt.Unsolicited
				ends <- connEnd{byServer: serverClose}
				if serverClose {
					time.Sleep(finDelay) // the FIN's flight, not a synchronisation
				}
				return // peer's serve closes c
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			req, err := http.ReadRequest(br)
			if err != nil {
				ends <- connEnd{}
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\n"+header+"Content-Length: 2\r\n\r\nok")
		}
	})
	return p, ends
}

// lateTimer: a server timer that runs this much past its deadline ran
// late.
const lateTimer = 10 * time.Millisecond

// peekSocket says what is in c's socket, whether or not the runtime has
// told a reader yet: nothing (Open), bytes, or its peer's end.
func peekSocket(c net.Conn) sockopt.PeekResult {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return sockopt.PeekError
	}
	r := sockopt.PeekError
	raw.Control(func(fd uintptr) { r = sockopt.Peek(int(fd)) })
	return r
}

// connEnd is how one upstream connection ended.
type connEnd struct {
	byServer bool // the server's timer ran out first
}

// endTally counts the upstream's connection ends as they come.
type endTally struct {
	ends                       <-chan connEnd
	byServer, byUnstuck, total int
}

// next waits for one more end.
func (e *endTally) next(t *testing.T) connEnd {
	t.Helper()
	var end connEnd
	select {
	case end = <-e.ends:
	case <-time.After(5 * time.Second):
		t.Fatal("no upstream connection ended within 5s")
	}
	e.total++
	if end.byServer {
		e.byServer++
	} else {
		e.byUnstuck++
	}
	return end
}

// exchange sends one request on the app's connection to the proxy and
// returns the response's status; 0 and the error if there was none (the
// caller dials again).
func exchangeOn(c net.Conn, br *bufio.Reader, method, body string) (int, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s /retire HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n%s", method, len(body), body); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestRetireBeforeServerCloses: POSTs through unstuck to an upstream that
// closes connections idle for 300 ms, its FIN arriving 20 ms later, paced
// so that each pooled connection sits idle 250 to 350 ms. Idle for 300 to
// 320 ms, a POST goes out on a connection the server has already closed
// and is lost (a POST is not retried once written); idle longer, the
// server's FIN has reached unstuck, which dials instead.
//
// Retiring connections before the server's idle timeout, unstuck closes
// each first, its EOF in the server's socket before the server's timer
// runs: no POST fails and the server closes no connection. The timeout is
// known from the server's Keep-Alive header from the first response on, or
// learned from the first three idle closes the watcher sees (the warm-up:
// three GETs, each left idle until the server closes its connection, about
// a second; their FINs arrive at 320 ms). With retirement off, the same
// run loses POSTs: the test can fail.
//
// The margin is 40% here, not the default 20%: 20% of 300 ms is 60 ms,
// and on a loaded 2-CPU test host a thread of this process can go
// unscheduled for 100 ms and more, which delays unstuck's timer past the
// server's (both run in this process). For the same reason a case with
// retirement that fails runs again, up to three runs: unstuck that did not
// retire fails every run. Real idle timeouts are seconds, and 20% of them
// is hundreds of milliseconds.
func TestRetireBeforeServerCloses(t *testing.T) {
	for _, tc := range []retireCase{
		{name: "keep-alive header", keepAlive: "timeout=0.3, max=100", retires: true},
		{name: "learned", learn: true, retires: true},
		{name: "off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for run := 1; ; run++ {
				var failed, serverCloses int
				t.Run(fmt.Sprintf("run %d", run), func(t *testing.T) { failed, serverCloses = tc.run(t) })
				switch {
				case !tc.retires && failed == 0:
					t.Fatal("without retirement no POST failed: the test does not reach the race")
				case !tc.retires, failed == 0 && serverCloses == 0:
					return
				case run == 3:
					t.Fatalf("with retirement, in each of %d runs, failed POSTs or server closes (last: %d and %d); want none",
						run, failed, serverCloses)
				}
				t.Logf("run %d: %d failed POSTs, %d server closes; running again", run, failed, serverCloses)
			}
		})
	}
}

type retireCase struct {
	name      string
	keepAlive string // the server's Keep-Alive header
	learn     bool   // pool.learn_idle_timeout
	retires   bool   // the server's idle timeout is known, one way or the other
}

const (
	retireServerIdle = 300 * time.Millisecond
	retireFINDelay   = 20 * time.Millisecond
	retireMargin     = 0.4
	retirePOSTs      = 22
)

// run sends the POSTs of one case and returns how many failed, and how
// many connections the server closed while unstuck held them idle, after
// the warm-up.
func (tc retireCase) run(t *testing.T) (failed, serverCloses int) {
	up, ends := startIdleServer(t, retireServerIdle, retireFINDelay, tc.keepAlive)
	tally := &endTally{ends: ends}
	srv, addr := startServer(t, proxyOpts{
		pool:     pool.Config{NoLearnIdleTimeout: !tc.learn, RetireMargin: retireMargin},
		upstream: Upstream{Retries: 2},
		listener: Config{Logger: nopLogger},
	}, up.addr())
	p := srv.up.Load().Pool
	var app net.Conn
	var br *bufio.Reader
	send := func(method, body string) (int, error) {
		if app == nil {
			var err error
			if app, err = net.Dial("tcp", addr); err != nil {
				t.Fatal(err)
			}
			br = bufio.NewReader(app)
		}
		code, err := exchangeOn(app, br, method, body)
		if err != nil {
			app.Close()
			app = nil
		}
		return code, err
	}
	defer func() {
		if app != nil {
			app.Close()
		}
	}()

	if tc.learn {
		for i := range 3 {
			if code, err := send("GET", ""); code != 200 {
				t.Fatalf("warm-up GET %d: %d %v", i+1, code, err)
			}
			if !tally.next(t).byServer {
				t.Fatalf("warm-up %d: unstuck closed the connection before the server", i+1)
			}
			wait.Until(t, 5*time.Second, "unstuck closes the connection the server closed", func() bool {
				return p.Stats()[0].Open == 0
			})
		}
		learned := p.Stats()[0].LearnedIdleTimeout
		t.Logf("learned an idle timeout of %v from the warm-up", learned)
		if learned < retireServerIdle || learned > retireServerIdle+retireFINDelay+50*time.Millisecond {
			t.Fatalf("learned %v; the server closes idle connections at %v", learned, retireServerIdle)
		}
	}
	warmUp := tally.byServer

	for i := range retirePOSTs {
		idle := 250*time.Millisecond + time.Duration(i%21)*5*time.Millisecond // 250, 255 ... 350
		if i > 0 {
			time.Sleep(idle) // the load's pace, not a synchronisation
		}
		if code, err := send("POST", fmt.Sprintf("order %d", i)); code != 200 {
			failed++
			t.Logf("POST %d after %v idle: %d %v", i, idle, code, err)
		}
	}
	// Every connection ends: unstuck retires the last one, or the server
	// closes it.
	for tally.total < up.accepted() {
		tally.next(t)
	}
	serverCloses = tally.byServer - warmUp
	t.Logf("%d POSTs: %d failed; upstream connections %d, closed by the server while unstuck held them %d, by unstuck first %d",
		retirePOSTs, failed, up.accepted(), serverCloses, tally.byUnstuck)
	return failed, serverCloses
}
