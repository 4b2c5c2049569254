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
//     is closed and the N connections idle in the pool. The burst that
//     makes them leaves garbage (goroutine stacks, request buffers) that
//     Go's runtime returns to the kernel only after a GC, which an idle
//     proxy does every two minutes: the figure includes it.
//
// Every reading is taken after -settle without traffic.
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
	settle := flag.Duration("settle", 3*time.Second, "quiet time before each reading")
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
	read := func(pid int, wait time.Duration) int {
		time.Sleep(wait)
		rss, err := vmRSS(pid)
		if err != nil {
			log.Fatal(err)
		}
		return rss
	}
	warm := func(addr string) {
		if _, failed, err := rig.RequestAll(addr, 64, false, 10*time.Second); failed > 0 {
			log.Fatalf("warm-up: %d failed: %v", failed, err)
		}
	}

	fmt.Println("| idle connections | N | VmRSS before (KiB) | VmRSS after (KiB) | KiB per connection |")
	fmt.Println("|---|---:|---:|---:|---:|")
	row := func(what string, n, before, after int) {
		per := "-"
		if n > 0 {
			per = fmt.Sprintf("%.1f", float64(after-before)/float64(n))
		}
		fmt.Printf("| %s | %d | %d | %d | %s |\n", what, n, before, after, per)
	}

	// App connections.
	warm(*appAddr)
	before := read(*appPID, *settle)
	conns, failed, err := rig.RequestAll(*appAddr, *n, true, 40*time.Second)
	if failed > 0 {
		log.Printf("app connections: %d of %d requests failed, first: %v", failed, *n, err)
	}
	after := read(*appPID, *settle)
	row("app connections (keep-alive, after one request)", len(conns), before, after)
	for _, c := range conns {
		c.Close()
	}
	up.CloseAll()

	// Pooled upstream connections.
	warm(*poolAddr)
	up.CloseAll()
	before = read(*poolPID, *settle)
	g := up.Hold(*n)
	timer := time.AfterFunc(30*time.Second, g.Open)
	_, failed, err = rig.RequestAll(*poolAddr, *n, false, 40*time.Second)
	timer.Stop()
	g.Open()
	if failed > 0 {
		log.Printf("pooled connections: %d of %d requests failed, first: %v", failed, *n, err)
	}
	idle := up.WaitStable(500*time.Millisecond, 5*time.Second)
	after = read(*poolPID, *settle)
	row("pooled upstream connections (after the burst that made them)", idle, before, after)
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
