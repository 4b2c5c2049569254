package proxy

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
)

var soakDuration = flag.Duration("soak.duration", 20*time.Second,
	"how long TestChaosSoak sends requests (go test -run TestChaosSoak -soak.duration 1h ./proxy)")

// Soak shape: clients, request bounds and how often the upstream
// misbehaves.
const (
	soakClients      = 8
	soakMaxRequests  = 1 << 20          // per client; the duration ends it first
	soakClientWait   = 10 * time.Second // per request: far beyond every proxy timeout, so reaching it means a wait without end
	soakIdleChaos    = 20 * time.Millisecond
	soakRestartEvery = 4 * time.Second

	// The proxy's upstream timeouts, and how long a broken answer may
	// take to end: the timeout once (a retried timeout is caught by the
	// upstream's count instead), with room for a loaded -race run.
	soakHeaderTimeout = time.Second
	soakIdleTimeout   = time.Second
	soakBrokenBound   = 4 * time.Second
)

// soakSizes are body sizes, either way: empty, small, buffered whole,
// and streamed (over maxBufferedBody, 64 KiB).
var soakSizes = []int{0, 1, 700, 8<<10 + 1, 20000, 64 << 10, 64<<10 + 1, 100 << 10, 300 << 10}

type soakKind string

const (
	kindGet         soakKind = "GET"
	kindPost        soakKind = "POST"
	kindStallHeader soakKind = "GET /broken/stall-header"
	kindStallBody   soakKind = "GET /broken/stall-body"
	kindGarbage     soakKind = "GET /broken/garbage"
)

func (k soakKind) broken() bool { return strings.Contains(string(k), "/broken/") }

// Outcomes a client sees.
const (
	outOK        = "ok"
	outTruncated = "body cut short" // an error before the framing's end
	outConnErr   = "connection error before a response"
	outTimeout   = "no end within the client's wait"
	outCorrupt   = "body complete but wrong" // never allowed
)

type soakResult struct {
	kind       soakKind
	id         uint64
	size       int
	chunked    bool
	start, end time.Time
	outcome    string // an out* or "status NNN"
	detail     string
}

// TestChaosSoak runs GETs and POSTs from several keep-alive clients
// through one proxy while the upstream closes, resets, sends garbage,
// stalls and restarts (see chaosUpstream). It asserts that no GET fails
// from recoverable chaos except while the upstream is down, no POST
// reaches the upstream twice, no incomplete body passes as complete at
// either end, every broken answer fails cleanly (502, 504, or a body cut
// short), nothing waits without end; and afterwards no CLOSE_WAIT on any
// side of the soak's connections and goroutines and fds as before.
func TestChaosSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: skipped in -short")
	}
	if !netns.Isolated(t) {
		return
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, duration %v", seed, *soakDuration)

	// The runtime's poller opens its fds on first use; have it before
	// counting.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	fdsBefore := openFDs(t)
	goroutinesBefore := goleak.IgnoreCurrent()

	up := startChaosUpstream(t, seed)
	obs := newCountingObserver()
	s, addr, stopProxy := startSoakProxy(t, up.addr, obs)

	// Chaos: idle connections at a steady pace, restarts now and then.
	chaosCtx, stopChaos := context.WithCancel(context.Background())
	var chaosWG sync.WaitGroup
	chaosWG.Add(2)
	go func() {
		defer chaosWG.Done()
		tick := time.NewTicker(soakIdleChaos)
		defer tick.Stop()
		for {
			select {
			case <-chaosCtx.Done():
				return
			case <-tick.C:
				up.idleChaos()
			}
		}
	}()
	go func() {
		defer chaosWG.Done()
		rng := rand.New(rand.NewPCG(seed, 1))
		for {
			next := soakRestartEvery/2 + time.Duration(rng.Int64N(int64(soakRestartEvery)))
			select {
			case <-chaosCtx.Done():
				return
			case <-time.After(next):
				up.restart(t, time.Duration(50+rng.IntN(250))*time.Millisecond)
			}
		}
	}()

	// Clients.
	deadline := time.Now().Add(*soakDuration)
	var nextID atomic.Uint64
	var mu sync.Mutex
	var results []soakResult
	var clientEnds []sockstate.Ends
	var wg sync.WaitGroup
	for i := range soakClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &soakClient{addr: addr, rng: rand.New(rand.NewPCG(seed, uint64(i)+2))}
			defer c.close()
			var mine []soakResult
			for n := 0; n < soakMaxRequests && time.Now().Before(deadline); n++ {
				mine = append(mine, c.do(nextID.Add(1)))
			}
			mu.Lock()
			results = append(results, mine...)
			clientEnds = append(clientEnds, c.ends...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	stopChaos()
	chaosWG.Wait()
	up.stop() // closes every upstream connection: the proxy must close its side

	// Judge every request.
	up.mu.Lock()
	down := slices.Clone(up.down)
	posts, crossed, stalled, late, seen, unended := up.posts, up.crossed, up.stalled, up.late, up.seen, up.unended
	bad := slices.Clone(up.bad)
	up.mu.Unlock()
	sum := judge(results, down, posts, crossed, stalled, late, seen, unended)
	for _, b := range bad {
		t.Errorf("upstream: %s", b)
	}
	for _, v := range sum.violations[:min(len(sum.violations), 40)] {
		t.Error(v)
	}
	if len(sum.violations) > 40 {
		t.Errorf("... and %d more violations", len(sum.violations)-40)
	}
	logSoakSummary(t, sum, up, obs, len(down))

	// No CLOSE_WAIT on any side of any soak connection.
	up.mu.Lock()
	upEnds := slices.Clone(up.ends)
	up.mu.Unlock()
	checkNoCloseWait(t, clientEnds, upEnds)

	// Everything back to where it started.
	if err := stopProxy(); err != nil {
		t.Errorf("proxy shutdown: %v (open app connections: %d)", err, s.OpenConnections())
	}
	wait.UntilNil(t, 10*time.Second, "no goroutine left after the soak", func() error { // Find itself retries for about 2 s
		return goleak.Find(goroutinesBefore,
			goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
			goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"))
	})
	wait.UntilNil(t, 10*time.Second, "open fds back to before the soak", func() error {
		if n := openFDs(t); n > fdsBefore {
			return fmt.Errorf("open fds %d, %d before the soak", n, fdsBefore)
		}
		return nil
	})
}

// startSoakProxy runs a proxy with short timeouts in front of upstream.
// stop shuts it down and closes its pool; the test's cleanup does it too
// if the test ends first.
func startSoakProxy(t *testing.T, upstream string, obs Observer) (*Server, string, func() error) {
	t.Helper()
	p, err := pool.New(pool.Config{Name: "backend", Endpoints: []string{upstream}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{
		Name:              "soak",
		ReadHeaderTimeout: 2 * time.Second,
		BodyReadTimeout:   2 * time.Second,
		SendTimeout:       2 * time.Second,
		Observer:          obs,
		Upstream: Upstream{
			Name:                  "backend",
			Pool:                  p,
			Retries:               2,
			ResponseHeaderTimeout: soakHeaderTimeout,
			ResponseIdleTimeout:   soakIdleTimeout,
			WriteTimeout:          2 * time.Second,
		},
	})
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	var once sync.Once
	var shutErr error
	stop := func() error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			shutErr = s.Shutdown(ctx)
			<-done
			p.Close()
		})
		return shutErr
	}
	t.Cleanup(func() { stop() })
	return s, ln.Addr().String(), stop
}

// soakClient is one keep-alive app connection, redialed after any failure.
// It never retries: every failure is counted.
type soakClient struct {
	addr string
	rng  *rand.Rand
	c    net.Conn
	br   *bufio.Reader
	ends []sockstate.Ends // of every connection it opened, client side
	seq  int              // requests sent on c
	prev soakResult       // the last request, on any connection
}

func (c *soakClient) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

// do sends one request of a kind picked at random and reads the answer.
func (c *soakClient) do(id uint64) soakResult {
	r := soakResult{id: id, start: time.Now()}
	defer func() { r.end = time.Now() }()
	switch x := c.rng.IntN(100); {
	case x < 50:
		r.kind = kindGet
	case x < 85:
		r.kind = kindPost
	case x < 90:
		r.kind = kindStallHeader
	case x < 95:
		r.kind = kindStallBody
	default:
		r.kind = kindGarbage
	}
	r.size = soakSizes[c.rng.IntN(len(soakSizes))]
	r.chunked = c.rng.IntN(3) == 0
	if r.kind == kindStallBody && r.size < 2 {
		r.size = 100 << 10
	}
	reused, prev := c.c != nil, c.prev
	r.outcome, r.detail = c.exchange(&r)
	r.end = time.Now()
	if r.outcome != outOK && reused {
		// What came before on this keep-alive connection, which a
		// wrong close or a stale deadline would come from.
		r.detail += fmt.Sprintf("; connection reused, its request %d; before it: %s id %d (%d bytes, chunked %v), %s, ended %v earlier",
			c.seq, prev.kind, prev.id, prev.size, prev.chunked, prev.outcome, r.start.Sub(prev.end).Round(time.Millisecond))
	}
	c.prev = r
	return r
}

func (c *soakClient) exchange(r *soakResult) (outcome, detail string) {
	if c.c == nil {
		nc, err := net.DialTimeout("tcp", c.addr, soakClientWait)
		if err != nil {
			return outConnErr, "dial: " + err.Error()
		}
		c.c, c.br, c.seq = nc, bufio.NewReaderSize(nc, 32<<10), 0
		c.ends = append(c.ends, sockstate.EndsOf(nc))
	}
	keep := false
	defer func() {
		if !keep {
			c.close()
		}
	}()
	c.c.SetDeadline(time.Now().Add(soakClientWait))
	c.seq++

	var head strings.Builder
	var body []byte
	method := "GET"
	switch r.kind {
	case kindPost:
		method = "POST"
		body = soakBody(r.id, r.size)
		fmt.Fprintf(&head, "POST /post HTTP/1.1\r\nHost: soak\r\nX-Id: %d\r\nX-Body-Len: %d\r\nX-Body-Sum: %08x\r\nContent-Type: application/octet-stream\r\n",
			r.id, len(body), crc32.ChecksumIEEE(body))
		if r.chunked {
			head.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		} else {
			fmt.Fprintf(&head, "Content-Length: %d\r\n\r\n", len(body))
		}
	default:
		path := "/get"
		if r.kind.broken() {
			path = strings.TrimPrefix(string(r.kind), "GET ")
		}
		fmt.Fprintf(&head, "GET %s?size=%d&chunked=%d HTTP/1.1\r\nHost: soak\r\nX-Id: %d\r\n\r\n",
			path, r.size, b2i(r.chunked), r.id)
	}
	// The request is written beside the read of the answer: a proxy may
	// answer (502) before it has read a whole upload.
	werr := make(chan error, 1)
	go func() { werr <- writeSoakRequest(c.c, head.String(), body, r.chunked && method == "POST") }()
	defer func() { <-werr }()

	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		if isTimeout(err) {
			return outTimeout, "waiting for the response header"
		}
		return outConnErr, err.Error()
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		if isTimeout(err) {
			return outTimeout, fmt.Sprintf("status %d, body after %d bytes", resp.StatusCode, len(got))
		}
		return outTruncated, fmt.Sprintf("status %d, %d bytes then %v", resp.StatusCode, len(got), err)
	}
	if resp.StatusCode != http.StatusOK {
		keep = !resp.Close
		detail := strings.TrimSpace(string(got))
		if resp.Header.Get("X-Chaos") != "" {
			detail = "the upstream's unsolicited bytes on an idle connection, passed on as the answer"
		}
		return "status " + strconv.Itoa(resp.StatusCode), detail
	}
	if method == "POST" {
		if want := fmt.Sprintf("ok %d", r.id); string(got) != want {
			return outCorrupt, fmt.Sprintf("answer %q, want %q", got, want)
		}
	} else {
		want := soakBody(r.id, r.size)
		if r.kind != kindGet || len(got) != len(want) || crc32.ChecksumIEEE(got) != crc32.ChecksumIEEE(want) {
			return outCorrupt, fmt.Sprintf("%d bytes sum %08x received as complete (upstream says %s bytes sum %s); want %d bytes sum %08x; framing %v",
				len(got), crc32.ChecksumIEEE(got), resp.Header.Get("X-Body-Len"), resp.Header.Get("X-Body-Sum"),
				len(want), crc32.ChecksumIEEE(want), resp.TransferEncoding)
		}
	}
	keep = !resp.Close
	return outOK, ""
}

func writeSoakRequest(c net.Conn, head string, body []byte, chunked bool) error {
	bw := bufio.NewWriterSize(c, 32<<10)
	bw.WriteString(head)
	if !chunked {
		bw.Write(body)
		return bw.Flush()
	}
	for off := 0; off < len(body); off += 16 << 10 {
		n := min(16<<10, len(body)-off)
		fmt.Fprintf(bw, "%x\r\n", n)
		bw.Write(body[off : off+n])
		bw.WriteString("\r\n")
	}
	bw.WriteString("0\r\n\r\n")
	return bw.Flush()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// soakSummary is the judged soak: counts per kind and outcome, and every
// result that breaks a rule.
type soakSummary struct {
	counts     map[soakKind]map[string]int
	excused    map[string]int // failures allowed by a restart window or a crossing
	violations []string
	total      int
}

// judge applies the soak's rules to every result.
func judge(results []soakResult, down []window, posts map[uint64]int, crossed map[uint64]bool, stalled map[uint64]int, late map[uint64]time.Duration, seen map[uint64]int, unended map[uint64]time.Duration) soakSummary {
	sum := soakSummary{counts: map[soakKind]map[string]int{}, excused: map[string]int{}, total: len(results)}
	sort.Slice(results, func(i, j int) bool { return results[i].start.Before(results[j].start) })
	inDown := func(r soakResult) bool {
		for _, w := range down {
			if !r.start.After(w.to) && !r.end.Before(w.from) {
				return true
			}
		}
		return false
	}
	for _, r := range results {
		if sum.counts[r.kind] == nil {
			sum.counts[r.kind] = map[string]int{}
		}
		sum.counts[r.kind][r.outcome]++
		fail := func(rule string) {
			sum.violations = append(sum.violations, fmt.Sprintf("%s id %d (%d bytes, chunked %v) at +%v took %v: %s: %s (%s; the upstream got its head %d times)",
				r.kind, r.id, r.size, r.chunked, r.start.Sub(results[0].start).Round(time.Millisecond),
				r.end.Sub(r.start).Round(time.Millisecond), rule, r.outcome, r.detail, seen[r.id]))
		}
		if r.kind == kindPost {
			switch n := posts[r.id]; {
			case n > 1:
				fail(fmt.Sprintf("the upstream received this POST %d times", n))
			case n == 0 && r.outcome == outOK:
				fail("answered 200 but the upstream never received it complete")
			}
		}
		// A stall the upstream ended itself (a restart closed it) is a
		// connection that died, not a timeout: its retry is right.
		if _, upstreamEnded := unended[r.id]; stalled[r.id] > 1 && !upstreamEnded {
			n := stalled[r.id]
			fail(fmt.Sprintf("a response header timeout was retried: the upstream received it %d times", n))
		}
		if d, ok := unended[r.id]; ok && d > soakBrokenBound {
			fail(fmt.Sprintf("the proxy never closed the stalled upstream connection: a restart or the end did, after %v", d.Round(time.Millisecond)))
		}
		if took := r.end.Sub(r.start); r.kind.broken() && took > soakBrokenBound {
			fail(fmt.Sprintf("ended only after %v; the proxy's timeouts are %v (header) and %v (body idle)",
				took.Round(time.Millisecond), soakHeaderTimeout, soakIdleTimeout))
		}
		switch {
		case r.outcome == outOK:
			continue
		case r.outcome == outCorrupt:
			fail("an incomplete or wrong body passed as complete")
			continue
		case r.outcome == outTimeout:
			fail("the proxy never ended it")
			continue
		case crossed[r.id]:
			sum.excused["crossed unsolicited bytes"]++
			continue
		case late[r.id] > 0:
			fail(fmt.Sprintf("sent on an upstream connection %v after the upstream's unsolicited bytes arrived on it", late[r.id].Round(time.Millisecond)))
			continue
		case strings.HasPrefix(r.outcome, "status 4"):
			fail("the proxy refused a well-formed request sent at once")
			continue
		case r.outcome == outConnErr:
			// Not even a restart explains a request left unanswered.
			fail("the proxy closed the app connection without an answer")
			continue
		case inDown(r):
			sum.excused["upstream down"]++
			continue
		}
		clean := r.outcome == "status 502" || r.outcome == "status 504"
		switch r.kind {
		case kindGet:
			fail("a GET failed from recoverable chaos")
		case kindPost:
			if !clean && r.outcome != "status 503" {
				fail("a POST failed without a 5xx")
			}
		case kindStallBody:
			if !clean && r.outcome != outTruncated {
				fail("a stalled body did not end cleanly (502, 504 or cut short)")
			}
		default:
			if !clean {
				fail("a broken answer did not end in 502 or 504")
			}
		}
	}
	return sum
}

func logSoakSummary(t *testing.T, sum soakSummary, up *chaosUpstream, obs *countingObserver, restarts int) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "soak summary: %d requests\n", sum.total)
	kinds := []soakKind{kindGet, kindPost, kindStallHeader, kindStallBody, kindGarbage}
	for _, k := range kinds {
		var outs []string
		for o, n := range sum.counts[k] {
			outs = append(outs, fmt.Sprintf("%s: %d", o, n))
		}
		sort.Strings(outs)
		fmt.Fprintf(&b, "  %-26s %s\n", k, strings.Join(outs, ", "))
	}
	fmt.Fprintf(&b, "  failures excused: %v\n", sum.excused)
	obs.mu.Lock()
	fmt.Fprintf(&b, "  proxy retries by reason: %v, upstream timeouts: %v\n", obs.retries, obs.timeouts)
	obs.mu.Unlock()
	up.mu.Lock()
	dups := 0
	for _, n := range up.posts {
		if n > 1 {
			dups++
		}
	}
	fmt.Fprintf(&b, "  upstream: %d connections, %d responses, %d closes after a response, %d idle resets, %d idle garbage, %d requests crossed it, %d stalls, %d restarts, %d POSTs received, %d twice\n",
		up.accepted, up.responses, up.closes, up.resets, up.garbage, len(up.crossed), up.stalls, restarts, len(up.posts), dups)
	up.mu.Unlock()
	fmt.Fprintf(&b, "  violations: %d", len(sum.violations))
	t.Log(b.String())
}

// checkNoCloseWait polls until no socket of the soak's connections, on
// any side, is in CLOSE_WAIT, and names each one left.
func checkNoCloseWait(t *testing.T, clientEnds, upEnds []sockstate.Ends) {
	t.Helper()
	// Keys unmapped, as sockstate lists sockets.
	side := map[sockstate.Ends]string{}
	add := func(e sockstate.Ends, mine, peer string) {
		e = sockstate.Ends{Local: netip.AddrPortFrom(e.Local.Addr().Unmap(), e.Local.Port()),
			Remote: netip.AddrPortFrom(e.Remote.Addr().Unmap(), e.Remote.Port())}
		side[e], side[e.Peer()] = mine, peer
	}
	for _, e := range clientEnds {
		add(e, "app client", "proxy, app side")
	}
	for _, e := range upEnds {
		add(e, "upstream", "proxy, upstream side")
	}
	all := make([]sockstate.Ends, 0, len(side))
	for e := range side {
		all = append(all, e)
	}
	match := sockstate.Conns(all...)
	var left []string
	wait.UntilNil(t, 10*time.Second, "no CLOSE_WAIT on any side of the soak's connections", func() error {
		socks, err := sockstate.List()
		if err != nil {
			t.Fatal(err)
		}
		left = left[:0]
		for _, s := range socks {
			if s.State == sockstate.CloseWait && match(s) {
				left = append(left, fmt.Sprintf("%s %v->%v", side[sockstate.Ends{Local: s.Local, Remote: s.Remote}], s.Local, s.Remote))
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("%d sockets in CLOSE_WAIT: %v", len(left), left[:min(len(left), 20)])
		}
		return nil
	})
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
