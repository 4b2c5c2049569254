// Command memory measures a proxy's resident memory (VmRSS) per idle app
// connection and per idle pooled upstream connection. It is the upstream
// and the client, and reads /proc/PID/status of the proxy.
//
// Each kind is measured on its own, freshly started proxy, so that memory
// one measurement freed cannot absorb the next one's growth:
//
//   - -app: N keep-alive app connections, one request each (at most a few
//     hundred in flight, served over a small pool), left open.
//   - -pooled: N concurrent requests, held at the upstream until all N
//     arrived, so the proxy opens N upstream connections; then the app side
//     is closed and the N connections idle in the pool.
//
// Every reading is taken once the proxy's RSS has settled after the
// traffic: VmRSS is sampled every 250 ms and read once it has changed by
// at most 1% over the last 2 s, but no sooner than -settle and no later
// than -settle-max after the traffic. A proxy that frees memory when idle
// (unstuck releases idle connections' goroutines and buffers, and returns
// freed memory to the OS) is thus measured after it did.
//
//	memory -listen 127.0.0.1:19400 -app 127.0.0.1:19405 -app-pid 4242 \
//	    -pooled 127.0.0.1:19406 -pooled-pid 4243 -n 8000
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/unstuck-proxy/unstuck/bench/internal/rig"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19400", "the upstream's address; the proxies forward here")
	appAddr := flag.String("app", "127.0.0.1:19405", "the proxy to measure app connections on")
	appPID := flag.Int("app-pid", 0, "its process id")
	poolAddr := flag.String("pooled", "127.0.0.1:19406", "the proxy to measure pooled upstream connections on")
	poolPID := flag.Int("pooled-pid", 0, "its process id")
	n := flag.Int("n", 8000, "connections of each kind")
	settle := flag.Duration("settle", 3*time.Second, "minimum quiet time before each reading")
	settleMax := flag.Duration("settle-max", 15*time.Second, "maximum quiet time before each reading, settled or not")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("memory: ")
	if *appPID == 0 || *poolPID == 0 {
		log.Fatal("-app-pid and -pooled-pid are required")
	}
	up, err := rig.Listen(*listen, rig.UpstreamConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer up.Close()
	// read returns pid's settled VmRSS and how long after quiet (the end
	// of the traffic) it was taken.
	read := func(pid int, quiet time.Time, what string) (int, time.Duration) {
		rss, settled, err := settledRSS(pid, quiet, *settle, *settleMax)
		if err != nil {
			log.Fatal(err)
		}
		waited := time.Since(quiet)
		if !settled {
			log.Printf("%s: VmRSS still changing after %.1f s; took %d KiB", what, waited.Seconds(), rss)
		}
		return rss, waited
	}
	warm := func(addr string) {
		if _, failed, err := rig.RequestAll(addr, 64, false, 10*time.Second); failed > 0 {
			log.Fatalf("warm-up: %d failed: %v", failed, err)
		}
	}

	fmt.Println("| idle connections | N | VmRSS before (KiB) | settled after s | VmRSS after (KiB) | settled after s | KiB per connection |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	row := func(what string, n, before int, beforeWait time.Duration, after int, afterWait time.Duration) {
		per := "-"
		if n > 0 {
			per = fmt.Sprintf("%.1f", float64(after-before)/float64(n))
		}
		fmt.Printf("| %s | %d | %d | %.1f | %d | %.1f | %s |\n",
			what, n, before, beforeWait.Seconds(), after, afterWait.Seconds(), per)
	}

	// App connections.
	warm(*appAddr)
	before, beforeWait := read(*appPID, time.Now(), "app, before")
	conns, failed, err := rig.RequestAll(*appAddr, *n, true, 40*time.Second)
	if failed > 0 {
		log.Printf("app connections: %d of %d requests failed, first: %v", failed, *n, err)
	}
	after, afterWait := read(*appPID, time.Now(), "app, after")
	row("app connections (keep-alive, after one request)", len(conns), before, beforeWait, after, afterWait)
	for _, c := range conns {
		c.Close()
	}
	up.CloseAll()

	// Pooled upstream connections.
	warm(*poolAddr)
	up.CloseAll()
	before, beforeWait = read(*poolPID, time.Now(), "pooled, before")
	g := up.Hold(*n)
	timer := time.AfterFunc(30*time.Second, g.Open)
	_, failed, err = rig.RequestAll(*poolAddr, *n, false, 40*time.Second)
	quiet := time.Now()
	timer.Stop()
	g.Open()
	if failed > 0 {
		log.Printf("pooled connections: %d of %d requests failed, first: %v", failed, *n, err)
	}
	idle := up.WaitStable(500*time.Millisecond, 5*time.Second)
	after, afterWait = read(*poolPID, quiet, "pooled, after")
	row("pooled upstream connections (after the burst that made them)", idle, before, beforeWait, after, afterWait)
}

// Settling: VmRSS is sampled every rssEvery and counts as settled once
// every sample of the last rssWindow is within rssTolerance of the
// latest.
const (
	rssEvery     = 250 * time.Millisecond
	rssWindow    = 2 * time.Second
	rssTolerance = 0.01
)

// settledRSS samples pid's VmRSS from now until it has settled, and
// returns the last sample. It returns no sooner than quiet+minWait; at
// quiet+maxWait it returns the last sample with settled false.
func settledRSS(pid int, quiet time.Time, minWait, maxWait time.Duration) (rss int, settled bool, err error) {
	type sample struct {
		at  time.Time
		rss int
	}
	var samples []sample
	for {
		if rss, err = vmRSS(pid); err != nil {
			return 0, false, err
		}
		now := time.Now()
		samples = append(samples, sample{now, rss})
		// Drop the samples older than the window, but keep the newest of
		// them: it shows that the window is covered.
		for len(samples) > 1 && now.Sub(samples[1].at) >= rssWindow {
			samples = samples[1:]
		}
		stable := now.Sub(samples[0].at) >= rssWindow
		for _, s := range samples {
			if float64(abs(s.rss-rss)) > rssTolerance*float64(rss) {
				stable = false
			}
		}
		since := now.Sub(quiet)
		if stable && since >= minWait {
			return rss, true, nil
		}
		if since >= maxWait {
			return rss, false, nil
		}
		time.Sleep(rssEvery)
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// vmRSS returns VmRSS of process pid, in KiB.
func vmRSS(pid int) (int, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
