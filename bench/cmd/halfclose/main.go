// Command halfclose measures how long a proxy takes to close an idle
// pooled upstream connection after the upstream half-closes it.
//
// It is the upstream. For each size and each target it sends N concurrent
// requests through the proxy and holds them until all N have arrived, so
// the proxy opens N upstream connections; it answers them all, waits until
// the proxy's pool is quiet, then sends FIN (shutdown SHUT_WR) on every
// connection and times, per connection, from its own FIN until its read
// sees the proxy close (EOF or RST). Of -rounds such rounds it reports the
// one with the median p99.
//
// A size is N or N/GAP. A plain N sends the N FINs at once, back to back,
// as when many upstream connections are closed together. N/GAP (such as
// 200/5ms) sends them one at a time, GAP apart, as an upstream's idle
// timeouts do; then the loop of N shutdown calls is not part of what each
// connection's delay measures.
//
// The target "ideal" is the floor of the measurement: a child process of
// this program that dials N connections straight to the upstream and has
// one goroutine per connection blocked reading it, closing it on EOF. The
// ratio to it is taken per size, between rows with the same N and GAP.
//
//	halfclose -listen 127.0.0.1:19100 -sizes 200/5ms,200,8000 \
//	    -target ideal -target unstuck=127.0.0.1:19105 -target nginx=127.0.0.1:19101
package main

import (
	"bufio"
	"cmp"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/unstuck-proxy/unstuck/bench/internal/rig"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19100", "the upstream's address; the proxies forward here")
	sizes := flag.String("sizes", "200/5ms,8000", "comma-separated sizes: N sends N FINs at once, N/GAP sends them one every GAP (such as 200/5ms)")
	wait := flag.Duration("wait", 5*time.Second, "how long to wait for the closes after the last FIN")
	rounds := flag.Int("rounds", 3, "rounds per target and size; the one with the median p99 is reported")
	idealPeer := flag.Int("ideal-peer", 0, "internal: run as the ideal peer with this many connections to -listen")
	var targets rig.Targets
	flag.Var(&targets, "target", "name=host:port of a proxy, or ideal; repeatable")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("halfclose: ")

	if *idealPeer > 0 {
		runIdealPeer(*listen, *idealPeer)
		return
	}
	up, err := rig.Listen(*listen, rig.UpstreamConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer up.Close()

	var specs []size
	for _, s := range strings.Split(*sizes, ",") {
		sz, err := parseSize(s)
		if err != nil {
			log.Fatalf("-sizes: %v", err)
		}
		specs = append(specs, sz)
	}

	fmt.Println("| proxy | N | FINs | pooled | closed | p50 ms | p99 ms | max ms | p99 / ideal p99 |")
	fmt.Println("|---|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, sz := range specs {
		// An unreported first round warms this process (goroutine stacks,
		// buffers) so the first target measured is not penalised.
		measure(up, rig.Target{Name: "ideal"}, size{n: sz.n}, *wait)
		var idealP99 time.Duration
		for _, t := range targets {
			r := median(up, t, sz, *wait, *rounds)
			if t.Name == "ideal" {
				idealP99 = r.sum.P99
			}
			ratio := "-"
			if idealP99 > 0 && r.sum.N > 0 {
				ratio = fmt.Sprintf("%.2fx", float64(r.sum.P99)/float64(idealP99))
			}
			p50, p99, mx := "-", "-", "-"
			if r.sum.N > 0 {
				p50, p99, mx = rig.Ms(r.sum.P50), rig.Ms(r.sum.P99), rig.Ms(r.sum.Max)
			}
			fmt.Printf("| %s | %d | %s | %d | %d | %s | %s | %s | %s |\n",
				t.Name, sz.n, sz, r.pooled, r.sum.N, p50, p99, mx, ratio)
			if r.note != "" {
				fmt.Fprintf(os.Stderr, "halfclose: %s N=%d FINs %s: %s\n", t.Name, sz.n, sz, r.note)
			}
		}
	}
}

// size is one entry of -sizes: N idle connections whose FINs are sent
// gap apart, or all at once when gap is 0.
type size struct {
	n   int
	gap time.Duration
}

// parseSize parses N or N/GAP.
func parseSize(s string) (size, error) {
	ns, gs, staggered := strings.Cut(strings.TrimSpace(s), "/")
	n, err := strconv.Atoi(ns)
	if err != nil || n <= 0 {
		return size{}, fmt.Errorf("%q: N is not a positive number", s)
	}
	sz := size{n: n}
	if staggered {
		if sz.gap, err = time.ParseDuration(gs); err != nil || sz.gap <= 0 {
			return size{}, fmt.Errorf("%q: GAP is not a positive duration such as 5ms", s)
		}
	}
	return sz, nil
}

// String says how the FINs are sent, for the table.
func (sz size) String() string {
	if sz.gap == 0 {
		return "at once"
	}
	return "every " + sz.gap.String()
}

// median runs rounds rounds and returns the one with the median p99.
func median(up *rig.Upstream, t rig.Target, sz size, wait time.Duration, rounds int) result {
	rs := make([]result, max(rounds, 1))
	for i := range rs {
		rs[i] = measure(up, t, sz, wait)
	}
	slices.SortFunc(rs, func(a, b result) int { return cmp.Compare(a.sum.P99, b.sum.P99) })
	return rs[len(rs)/2]
}

type result struct {
	pooled int         // upstream connections still open when the FINs were sent
	sum    rig.Summary // FIN-to-close delays of those closed within -wait
	note   string      // what went wrong, for stderr
}

// measure runs one round: sz.n idle connections from target t, FIN on
// each as sz says, time the closes. It leaves no connection of the round
// open.
func measure(up *rig.Upstream, t rig.Target, sz size, wait time.Duration) result {
	n := sz.n
	defer func() {
		up.CloseAll()
		time.Sleep(300 * time.Millisecond) // let the proxy finish its closes
	}()
	var r result
	var peer *exec.Cmd
	if t.Name == "ideal" {
		var err error
		if peer, err = startIdealPeer(up.Addr(), n); err != nil {
			r.note = err.Error()
			return r
		}
		defer func() {
			peer.Process.Kill() // it exits by itself once every connection is closed
			peer.Wait()
		}()
	} else {
		g := up.Hold(n)
		timer := time.AfterFunc(30*time.Second, g.Open)
		_, failed, err := rig.RequestAll(t.Addr, n, false, 40*time.Second)
		timer.Stop()
		g.Open()
		if failed > 0 {
			r.note = fmt.Sprintf("%d of %d requests failed, first: %v; %d reached the upstream", failed, n, err, g.Arrived())
		}
	}
	r.pooled = up.WaitStable(500*time.Millisecond, 5*time.Second)

	// Collect the garbage of the burst (client goroutines, buffers) now,
	// for every target alike, rather than during the closes.
	runtime.GC()

	conns := up.Live()
	start := time.Now()
	for i, c := range conns {
		if sz.gap > 0 && i > 0 {
			// On a fixed schedule, so one late wake-up does not shift the rest.
			time.Sleep(time.Until(start.Add(time.Duration(i) * sz.gap)))
		}
		c.FIN()
	}
	deadline := time.After(wait)
	var delays []time.Duration
wait:
	for _, c := range conns {
		select {
		case <-c.Ended():
			if d, ok := c.CloseDelay(); ok {
				delays = append(delays, d)
			}
		case <-deadline:
			break wait
		}
	}
	r.sum = rig.Summarize(delays)
	if r.sum.N < len(conns) {
		r.note += fmt.Sprintf(" %d of %d connections not closed within %v", len(conns)-r.sum.N, len(conns), wait)
	}
	return r
}

// startIdealPeer starts this program as the ideal peer and waits until it
// has dialed all n connections.
func startIdealPeer(addr string, n int) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-listen", addr, "-ideal-peer", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("ideal peer: %q, %v", line, err)
	}
	return cmd, nil
}

// runIdealPeer dials n connections to addr, prints "ready", and closes each
// connection the moment a read on it returns (EOF): the fastest any peer
// can react to a FIN. It returns when all are closed.
func runIdealPeer(addr string, n int) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	var dialed sync.WaitGroup
	for range n {
		wg.Add(1)
		dialed.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			c, err := rig.Dial(addr)
			<-sem
			dialed.Done()
			if err != nil {
				log.Printf("ideal peer: %v", err)
				return
			}
			var b [1]byte
			for {
				if _, err := c.Read(b[:]); err != nil {
					break // EOF: the upstream's FIN
				}
			}
			c.Close()
		}()
	}
	dialed.Wait()
	fmt.Println("ready")
	wg.Wait()
}
