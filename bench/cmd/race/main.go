// Command race measures the keep-alive race through each proxy.
//
// It is the upstream: after a random fraction (default 20%) of responses
// it closes the connection at once, FIN right behind the last response
// byte and no "Connection: close", so a proxy that sends its next request
// on that connection before it sees the FIN loses the race. It is also the
// client: a fixed number of workers, each on its own keep-alive connection
// to the target, send GETs and POSTs in turn, every request with a unique
// X-Request-Id, and never retry. The upstream counts each POST id it sees,
// so a POST a proxy sent twice shows up as a duplicate.
//
//	race -listen 127.0.0.1:19200 -requests 50000 \
//	    -target direct=127.0.0.1:19200 -target unstuck=127.0.0.1:19205
//
// With -idle the upstream instead closes connections idle that long, and
// never right after a response (optionally announcing the timeout with
// -keepalive, a Keep-Alive header value such as "timeout=0.3"); with
// -pace-max the client sends only POSTs, in bursts: every connection sends
// one at once, all are answered, then all stay idle a random -pace-min to
// -pace-max, so the proxy's pooled upstream connections sit idle that long
// before the next burst reuses them.
//
//	race -listen 127.0.0.1:19800 -idle 300ms -pace-min 250ms -pace-max 350ms \
//	    -concurrency 8 -bursts 40 -target unstuck=127.0.0.1:19805
package main

import (
	"bufio"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"log"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/unstuck-proxy/unstuck/bench/internal/rig"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19200", "the upstream's address; the proxies forward here")
	requests := flag.Int("requests", 50000, "requests per target, half GET and half POST")
	workers := flag.Int("concurrency", 32, "client connections (and requests in flight) per target")
	fraction := flag.Float64("fraction", 0.2, "probability that the upstream closes right after a response")
	idle := flag.Duration("idle", 0, "the upstream closes connections idle this long (and -fraction is 0); 0: never")
	keepAlive := flag.String("keepalive", "", "a Keep-Alive header value the upstream sends, such as timeout=0.3; empty: none")
	paceMin := flag.Duration("pace-min", 250*time.Millisecond, "paced mode: shortest idle time between bursts")
	paceMax := flag.Duration("pace-max", 0, "paced mode (POSTs in bursts, idle between): longest idle time between bursts; 0: not paced")
	bursts := flag.Int("bursts", 40, "paced mode: bursts per target, each one POST per connection")
	var targets rig.Targets
	flag.Var(&targets, "target", "name=host:port; repeatable")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("race: ")

	seen := newLedger()
	cfg := rig.UpstreamConfig{CloseFraction: *fraction, OnRequest: seen.record}
	if *idle > 0 {
		cfg.CloseFraction, cfg.IdleTimeout, cfg.KeepAlive = 0, *idle, *keepAlive
	}
	up, err := rig.Listen(*listen, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer up.Close()
	if *paceMax > 0 {
		paced(up, seen, targets, *workers, *bursts, *paceMin, *paceMax)
		return
	}

	fmt.Println("| proxy | requests | GET failed /100k | POST failed /100k | duplicate POSTs at upstream | failed POSTs the upstream did get | upstream FINs | req/s | failures seen |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, t := range targets {
		seen.reset()
		fins0 := up.RaceCloses()
		start := time.Now()
		res := drive(t, *requests, *workers)
		elapsed := time.Since(start)
		up.CloseAll()
		dups, executed := seen.duplicates(), seen.received(res.failedPOSTs)
		fmt.Printf("| %s | %d | %s | %s | %d | %d | %d | %.0f | %s |\n",
			t.Name, *requests,
			per100k(res.failed["GET"], res.sent["GET"]), per100k(res.failed["POST"], res.sent["POST"]),
			dups, executed, up.RaceCloses()-fins0,
			float64(*requests)/elapsed.Seconds(), res.kinds())
	}
}

// paced measures each target with POSTs in bursts separated by idle
// times, against an upstream that closes idle connections.
func paced(up *rig.Upstream, seen *ledger, targets rig.Targets, workers, bursts int, lo, hi time.Duration) {
	fmt.Println("| proxy | POSTs | failed | failed % | duplicate POSTs at upstream | failed POSTs the upstream did get | upstream connections | upstream idle closes | seconds | failures seen |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, t := range targets {
		seen.reset()
		acc0, idle0 := up.Accepted(), up.IdleCloses()
		start := time.Now()
		res := drivePaced(t, workers, bursts, lo, hi)
		elapsed := time.Since(start)
		up.CloseAll()
		dups, executed := seen.duplicates(), seen.received(res.failedPOSTs)
		sent, failed := res.sent["POST"], res.failed["POST"]
		pct := "-"
		if sent > 0 {
			pct = fmt.Sprintf("%.1f", float64(failed)*100/float64(sent))
		}
		fmt.Printf("| %s | %d | %d | %s | %d | %d | %d | %d | %.1f | %s |\n",
			t.Name, sent, failed, pct, dups, executed,
			up.Accepted()-acc0, up.IdleCloses()-idle0, elapsed.Seconds(), res.kinds())
	}
}

// drivePaced sends bursts of POSTs to t: each of the workers' keep-alive
// connections sends one, and once all are answered every connection
// stays idle for a random time in [lo, hi]. A failed request's connection
// is closed and a new one dialed for the next burst; nothing is retried.
func drivePaced(t rig.Target, workers, bursts int, lo, hi time.Duration) *results {
	r := &results{sent: map[string]int{}, failed: map[string]int{}, kindCount: map[string]int{}}
	conns := make([]*rig.ClientConn, workers)
	defer func() {
		for _, cc := range conns {
			if cc != nil {
				cc.Close()
			}
		}
	}()
	for b := range bursts {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				id := t.Name + "-" + strconv.Itoa(b*workers+w)
				var err error
				if conns[w] == nil {
					conns[w], err = dial(t.Addr)
				}
				closeConn := false
				if err == nil {
					closeConn, err = rig.Do(conns[w], conns[w].BR, "POST", "/idle", id, []byte("id="+id), 10*time.Second)
				}
				if (err != nil || closeConn) && conns[w] != nil {
					conns[w].Close()
					conns[w] = nil
				}
				r.mu.Lock()
				r.sent["POST"]++
				if err != nil {
					r.failed["POST"]++
					r.kindCount["POST "+kind(err)]++
					r.failedPOSTs = append(r.failedPOSTs, id)
				}
				r.mu.Unlock()
			})
		}
		wg.Wait()
		if b < bursts-1 {
			time.Sleep(lo + rand.N(hi-lo+1))
		}
	}
	return r
}

func per100k(n, of int) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(n)*100000/float64(of))
}

// ledger counts the POST ids the upstream received.
type ledger struct {
	mu  sync.Mutex
	ids map[string]int
}

func newLedger() *ledger { return &ledger{ids: make(map[string]int)} }

func (l *ledger) record(r *http.Request) {
	if r.Method != http.MethodPost {
		return
	}
	id := r.Header.Get("X-Request-Id")
	l.mu.Lock()
	l.ids[id]++
	l.mu.Unlock()
}

func (l *ledger) reset() {
	l.mu.Lock()
	l.ids = make(map[string]int)
	l.mu.Unlock()
}

// received returns how many of ids (POSTs that failed at the client) the
// upstream did get.
func (l *ledger) received(ids []string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, id := range ids {
		if l.ids[id] > 0 {
			n++
		}
	}
	return n
}

// duplicates returns how many extra copies of POSTs arrived.
func (l *ledger) duplicates() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.ids {
		n += c - 1
	}
	return n
}

type results struct {
	mu          sync.Mutex
	sent        map[string]int
	failed      map[string]int
	failedPOSTs []string
	kindCount   map[string]int
}

// kinds names the commonest failures, most frequent first.
func (r *results) kinds() string {
	ks := slices.Collect(maps.Keys(r.kindCount))
	slices.SortFunc(ks, func(a, b string) int {
		return cmp.Or(cmp.Compare(r.kindCount[b], r.kindCount[a]), strings.Compare(a, b))
	})
	var parts []string
	for _, k := range ks[:min(len(ks), 3)] {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, r.kindCount[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// drive sends n requests to t from the given number of workers. Request i
// is a POST when i is odd. A worker whose request failed closes its
// connection and dials a new one; it never retries.
func drive(t rig.Target, n, workers int) *results {
	r := &results{sent: map[string]int{}, failed: map[string]int{}, kindCount: map[string]int{}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var cc *rig.ClientConn
			defer func() {
				if cc != nil {
					cc.Close()
				}
			}()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				method, body := "GET", []byte(nil)
				id := t.Name + "-" + strconv.Itoa(i)
				if i%2 == 1 {
					method, body = "POST", []byte("id="+id)
				}
				var err error
				if cc == nil {
					cc, err = dial(t.Addr)
				}
				closeConn := false
				if err == nil {
					closeConn, err = rig.Do(cc, cc.BR, method, "/race", id, body, 10*time.Second)
				}
				if (err != nil || closeConn) && cc != nil {
					cc.Close()
					cc = nil
				}
				r.mu.Lock()
				r.sent[method]++
				if err != nil {
					r.failed[method]++
					r.kindCount[method+" "+kind(err)]++
					if method == "POST" {
						r.failedPOSTs = append(r.failedPOSTs, id)
					}
				}
				r.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return r
}

func dial(addr string) (*rig.ClientConn, error) {
	c, err := rig.Dial(addr)
	if err != nil {
		return nil, err
	}
	return &rig.ClientConn{TCPConn: c, BR: bufio.NewReaderSize(c, 4<<10)}, nil
}

// kind names an error briefly: a status, EOF, reset, timeout.
func kind(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "status "):
		return s[strings.Index(s, "status ")+len("status "):]
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case strings.Contains(s, "EOF"):
		return "EOF"
	}
	return s
}
