// Command tcpbench measures TCP proxies side by side: unstuck's
// protocol: tcp listeners, HAProxy's mode tcp and nginx's stream module,
// against the same upstream and a direct connection to it.
//
// It is the upstream (-listen) and the client. Each connection starts with
// a 16-byte header that tells the upstream what to do:
//
//	up    the client sends N bytes and its FIN; the upstream reads to EOF
//	      and answers with the count (8 bytes), then closes
//	down  the upstream sends N bytes and its FIN; the client reads to EOF
//	both  each sends N bytes at once; the upstream, once it has sent its N
//	      and read the client's N and FIN, sends the count and closes
//	pair  a short pair: the client sends a small request, the upstream a
//	      small reply; the client closes, then the upstream
//
// Tests: up, down and both time one connection moving -bulk bytes (MB/s;
// both counts the two directions together); cps runs -cps-conns workers
// that each open a connection, do one short pair on it and close it, over
// and over, until -cps-max pairs are done or -cps-time has passed
// (connections per second). Every target takes every test in turn, in
// -rounds rounds, each round starting from another target, so that other
// work on the machine hits all of them alike. For a target given with its
// PIDs (-target name=host:port@pid,pid) it reads the processes' user+sys
// time from /proc/PID/stat before and after each run.
//
// It prints markdown tables: each target's median per test, the proxies'
// CPU time per GB moved and per 1,000 pairs (summed over all rounds), and
// the ratios of -subject to every other proxy, run by run. Everything is
// bounded: a bulk run by -timeout, a cps run by -cps-max and -cps-time.
//
//	tcpbench -listen 127.0.0.1:19500 -rounds 3 -bulk 1GiB \
//	    -target direct=127.0.0.1:19500 -target unstuck=127.0.0.1:19505@1234
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
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

// Header modes.
const (
	modeUp   = 'U'
	modeDown = 'D'
	modeBoth = 'B'
	modePair = 'P'
)

const (
	headerLen = 16
	chunk     = 1 << 20 // bytes per write and read of a bulk transfer
)

// The short pair: a request of pairRequest bytes in all (header included)
// and a reply of pairReply bytes, about an RPC's or a small HTTP
// exchange's.
const (
	pairRequest = 128
	pairReply   = 512
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19500", "the upstream's address; the proxies forward here")
	tests := flag.String("tests", "up,down,both,cps", "comma-separated tests: up, down, both, cps")
	rounds := flag.Int("rounds", 3, "rounds over all targets and tests")
	bulkFlag := flag.String("bulk", "1GiB", "bytes per bulk run and direction (KiB, MiB, GiB suffixes)")
	conns := flag.Int("cps-conns", 32, "cps: workers, each with one pair in flight")
	cpsMax := flag.Int("cps-max", 20000, "cps: pairs per run at most")
	cpsTime := flag.Duration("cps-time", 5*time.Second, "cps: duration of a run at most")
	timeout := flag.Duration("timeout", 60*time.Second, "a bulk run, or one pair, that takes longer fails")
	hz := flag.Int("hz", 100, "clock ticks per second of /proc/PID/stat (getconf CLK_TCK)")
	subject := flag.String("subject", "unstuck", "the target whose ratios to the others are reported")
	warm := flag.Bool("warm", true, "before the rounds, a small bulk run and 500 pairs through each target")
	raw := flag.String("raw", "", "also write every run as a tab-separated line to this file")
	var targets rig.Targets
	flag.Var(&targets, "target", "name=host:port[@pid,pid...]; repeatable")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("tcpbench: ")

	bulk, err := parseSize(*bulkFlag)
	if err != nil {
		log.Fatalf("-bulk: %v", err)
	}
	var order []string
	for _, t := range strings.Split(*tests, ",") {
		switch t = strings.TrimSpace(t); t {
		case "up", "down", "both", "cps":
			order = append(order, t)
		case "":
		default:
			log.Fatalf("-tests: unknown test %q", t)
		}
	}
	if len(targets) == 0 || len(order) == 0 || *rounds < 1 {
		log.Fatal("want at least one -target, one test and one round")
	}

	up, err := listenUpstream(*listen, *timeout)
	if err != nil {
		log.Fatal(err)
	}
	defer up.close()

	b := &bench{bulk: bulk, conns: *conns, cpsMax: *cpsMax, cpsTime: *cpsTime, timeout: *timeout, hz: *hz}
	if *warm {
		for _, t := range targets {
			if r := b.bulkRun(t, "up", min(bulk, 64<<20)); r.err != "" {
				log.Printf("warm-up of %s: %s", t.Name, r.err)
			}
			w := *b
			w.cpsMax, w.cpsTime = 500, 2*time.Second
			if r := w.cpsRun(t); r.err != "" {
				log.Printf("warm-up of %s: %s", t.Name, r.err)
			}
		}
	}

	var runs []result
	for r := range *rounds {
		for _, test := range order {
			for i := range targets {
				t := targets[(i+r)%len(targets)]
				var res result
				if test == "cps" {
					res = b.cpsRun(t)
				} else {
					res = b.bulkRun(t, test, bulk)
				}
				res.round = r + 1
				runs = append(runs, res)
				log.Printf("round %d %-5s %-15s %s", r+1, test, t.Name, res.brief())
			}
		}
	}
	if *raw != "" {
		writeRaw(*raw, runs, *hz)
	}
	report(os.Stdout, runs, targets, order, *subject, *hz)
}

// ------------------------------------------------------------- upstream

type upstream struct {
	ln      net.Listener
	timeout time.Duration
	wg      sync.WaitGroup
}

func listenUpstream(addr string, timeout time.Duration) (*upstream, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	u := &upstream{ln: ln, timeout: timeout}
	u.wg.Add(1)
	go u.serve()
	return u, nil
}

func (u *upstream) close() {
	u.ln.Close()
	u.wg.Wait()
}

func (u *upstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Printf("upstream: accept: %v", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return
		}
		go func() {
			defer c.Close()
			if err := u.handle(c.(*net.TCPConn)); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Printf("upstream: %v", err)
			}
		}()
	}
}

// handle serves one connection as its header says.
func (u *upstream) handle(c *net.TCPConn) error {
	c.SetDeadline(time.Now().Add(u.timeout))
	var h [headerLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	if h[0] != 'T' || h[1] != 'B' {
		return fmt.Errorf("bad header %q", h[:4])
	}
	n := int64(binary.BigEndian.Uint64(h[8:]))
	switch h[2] {
	case modeUp:
		got, err := drain(c)
		if err != nil {
			return fmt.Errorf("up: read %d of %d: %w", got, n, err)
		}
		return writeCount(c, got)
	case modeDown:
		if err := fill(c, n); err != nil {
			return fmt.Errorf("down: %w", err)
		}
		c.CloseWrite()
		_, err := drain(c)
		return err
	case modeBoth:
		done := make(chan error, 1)
		go func() { done <- fill(c, n) }()
		got, rerr := drain(c)
		if werr := <-done; werr != nil {
			return fmt.Errorf("both: write: %w", werr)
		}
		if rerr != nil {
			return fmt.Errorf("both: read %d of %d: %w", got, n, rerr)
		}
		return writeCount(c, got)
	case modePair:
		req := make([]byte, pairRequest-headerLen)
		if _, err := io.ReadFull(c, req); err != nil {
			return fmt.Errorf("pair: request: %w", err)
		}
		if _, err := c.Write(make([]byte, n)); err != nil {
			return fmt.Errorf("pair: reply: %w", err)
		}
		// The client closes first; then so do we.
		_, err := drain(c)
		return err
	}
	return fmt.Errorf("bad mode %q", h[2])
}

var zeros = make([]byte, chunk)

// fill writes n zero bytes to c.
func fill(c net.Conn, n int64) error {
	for n > 0 {
		k := min(n, chunk)
		w, err := c.Write(zeros[:k])
		n -= int64(w)
		if err != nil {
			return err
		}
	}
	return nil
}

var bufs = sync.Pool{New: func() any { return make([]byte, chunk) }}

// drain reads c to EOF and returns the bytes read.
func drain(c net.Conn) (int64, error) {
	buf := bufs.Get().([]byte)
	defer bufs.Put(buf)
	var total int64
	for {
		k, err := c.Read(buf)
		total += int64(k)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func writeCount(c net.Conn, n int64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	_, err := c.Write(b[:])
	return err
}

func header(mode byte, n int64) []byte {
	h := make([]byte, headerLen)
	h[0], h[1], h[2] = 'T', 'B', mode
	binary.BigEndian.PutUint64(h[8:], uint64(n))
	return h
}

// --------------------------------------------------------------- client

type bench struct {
	bulk    int64
	conns   int
	cpsMax  int
	cpsTime time.Duration
	timeout time.Duration
	hz      int
}

// result is one run of one test through one target.
type result struct {
	round   int
	target  string
	test    string
	bytes   int64 // moved through the target, both directions counted
	pairs   int   // cps: pairs completed
	failed  int   // cps: pairs failed
	elapsed time.Duration
	ticks   int64 // the target's processes' CPU time over the run; -1: no PIDs
	user    int64 // the part of ticks spent in user space
	lat     rig.Summary
	// rst: all the bytes arrived, but the connection then ended with an
	// RST where a FIN was due (read to EOF got ECONNRESET).
	rst bool
	syn int64 // SYN retransmits on the whole machine during the run
	// other: CPU ticks the machine spent on neither the target's
	// processes nor this one (other work, and a target without PIDs)
	other int64
	// ksoft: CPU ticks of the kernel's ksoftirqd threads: packet
	// processing the kernel deferred from the senders' system calls (on
	// loopback, the receiving side's TCP work), which no proxy's
	// /proc/PID/stat counts
	ksoft int64
	err   string
}

// value is the run's headline number: MB/s or pairs/s.
func (r result) value() float64 {
	if r.err != "" && r.pairs == 0 {
		return 0
	}
	s := r.elapsed.Seconds()
	if s <= 0 {
		return 0
	}
	if r.test == "cps" {
		return float64(r.pairs) / s
	}
	return float64(r.bytes) / 1e6 / s
}

func (r result) brief() string {
	s := fmt.Sprintf("%.0f %s", r.value(), unit(r.test))
	if r.ticks >= 0 {
		s += fmt.Sprintf(", proxy CPU %d ticks", r.ticks)
	}
	if r.rst {
		s += ", ended by RST after all bytes"
	}
	if r.test == "cps" {
		s += fmt.Sprintf(", %d pairs, %d failed, p99 %s ms", r.pairs, r.failed, rig.Ms(r.lat.P99))
	}
	if r.err != "" {
		s += ", error: " + r.err
	}
	return s
}

func unit(test string) string {
	if test == "cps" {
		return "conn/s"
	}
	return "MB/s"
}

// bulkRun moves n bytes (each way, for both) through one connection.
func (b *bench) bulkRun(t rig.Target, test string, n int64) result {
	res := result{target: t.Name, test: test}
	m := startMeter(t.PIDs)
	moved, rst, err := bulkOnce(t.Addr, test, n, b.timeout)
	m.stop(&res)
	res.bytes, res.rst = moved, rst
	if err != nil {
		res.err = err.Error()
	}
	return res
}

// meter reads a run's time, its target's CPU time and the machine's SYN
// retransmits.
type meter struct {
	pids        []int
	start       time.Time
	user, sys   int64
	busy, self  int64
	ksoft       int64
	synRetrans0 int64
}

// ksoftirqd are the PIDs of the kernel's ksoftirqd/N threads.
var ksoftirqd = func() []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + d.Name() + "/comm"); err == nil && strings.HasPrefix(string(comm), "ksoftirqd/") {
			pids = append(pids, pid)
		}
	}
	return pids
}()

func ksoftTicks() int64 {
	u, s := cpuTicks(ksoftirqd)
	return u + s
}

var selfPID = []int{os.Getpid()}

func startMeter(pids []int) *meter {
	m := &meter{pids: pids, synRetrans0: synRetrans(), busy: busyTicks(), ksoft: ksoftTicks()}
	m.user, m.sys = cpuTicks(pids)
	u, s := cpuTicks(selfPID)
	m.self = u + s
	m.start = time.Now()
	return m
}

func (m *meter) stop(r *result) {
	r.elapsed = time.Since(m.start)
	u, s := cpuTicks(m.pids)
	su, ss := cpuTicks(selfPID)
	r.ticks, r.user = u+s-m.user-m.sys, u-m.user
	r.ksoft = ksoftTicks() - m.ksoft
	r.other = busyTicks() - m.busy - r.ticks - (su + ss - m.self) - r.ksoft
	if m.pids == nil {
		r.ticks, r.user = -1, -1
	}
	r.syn = synRetrans() - m.synRetrans0
}

// otherCores is the CPU that other work used during the run, in cores.
func (r result) otherCores(hz int) float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.other) / float64(hz) / r.elapsed.Seconds()
}

// busyTicks returns the clock ticks all CPUs of the machine spent busy so
// far (user, nice, system, irq, softirq, steal).
func busyTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var sum int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		sum += v
	}
	return sum
}

// It reports the bytes moved and whether the connection ended with an RST
// after all of them (an error only where an EOF was due).
func bulkOnce(addr, test string, n int64, timeout time.Duration) (moved int64, rst bool, err error) {
	c, err := rig.Dial(addr)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	switch test {
	case "up":
		if _, err := c.Write(header(modeUp, n)); err != nil {
			return 0, false, err
		}
		if err := fill(c, n); err != nil {
			return 0, false, fmt.Errorf("write: %w", err)
		}
		c.CloseWrite()
		got, err := readCount(c)
		if err != nil {
			return 0, false, fmt.Errorf("count: %w", err)
		}
		if got != n {
			return got, false, fmt.Errorf("the upstream got %d bytes of %d", got, n)
		}
		return n, false, nil
	case "down":
		if _, err := c.Write(header(modeDown, n)); err != nil {
			return 0, false, err
		}
		got, err := drain(c)
		rst = got == n && errors.Is(err, syscall.ECONNRESET)
		if rst {
			err = nil
		}
		if err == nil && got != n {
			err = fmt.Errorf("got %d bytes of %d", got, n)
		}
		return got, rst, err
	case "both":
		if _, err := c.Write(header(modeBoth, n)); err != nil {
			return 0, false, err
		}
		done := make(chan error, 1)
		go func() {
			err := fill(c, n)
			if err == nil {
				err = c.CloseWrite()
			}
			done <- err
		}()
		got, rerr := drain(c)
		rst = got == n+8 && errors.Is(rerr, syscall.ECONNRESET)
		if werr := <-done; werr != nil {
			return got, false, fmt.Errorf("write: %w", werr)
		}
		if rerr != nil && !rst {
			return got, false, rerr
		}
		if got != n+8 {
			return got, false, fmt.Errorf("got %d bytes of %d", got, n+8)
		}
		return 2 * n, rst, nil
	}
	return 0, false, fmt.Errorf("unknown test %q", test)
}

func readCount(c net.Conn) (int64, error) {
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return int64(binary.BigEndian.Uint64(b[:])), nil
}

// cpsRun runs short pairs from b.conns workers until b.cpsMax are done or
// b.cpsTime has passed.
func (b *bench) cpsRun(t rig.Target) result {
	res := result{target: t.Name, test: "cps"}
	var (
		next     atomic.Int64 // pairs started
		done     atomic.Bool
		mu       sync.Mutex
		lats     []time.Duration
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	req := make([]byte, pairRequest)
	copy(req, header(modePair, pairReply))
	m := startMeter(t.PIDs)
	stop := time.AfterFunc(b.cpsTime, func() { done.Store(true) })
	for range b.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, b.cpsMax/b.conns+1)
			var fails int
			var ferr error
			reply := make([]byte, pairReply)
			for !done.Load() && next.Add(1) <= int64(b.cpsMax) {
				s := time.Now()
				if err := pairOnce(t.Addr, req, reply, b.timeout); err != nil {
					fails++
					if ferr == nil {
						ferr = err
					}
					continue
				}
				mine = append(mine, time.Since(s))
			}
			mu.Lock()
			lats = append(lats, mine...)
			failed += fails
			if firstErr == nil {
				firstErr = ferr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	stop.Stop()
	m.stop(&res)
	res.pairs, res.failed = len(lats), failed
	res.bytes = int64(len(lats)) * (pairRequest + pairReply)
	res.lat = rig.Summarize(lats)
	if firstErr != nil {
		res.err = firstErr.Error()
	}
	return res
}

// pairOnce connects, sends req, reads a reply of len(reply) bytes and
// closes.
func pairOnce(addr string, req, reply []byte, timeout time.Duration) error {
	c, err := rig.Dial(addr)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, reply); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	return nil
}

// cpuTicks returns the user and the sys clock ticks the processes used so
// far; a process that is gone counts 0.
func cpuTicks(pids []int) (user, sys int64) {
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		user += u
		sys += s
	}
	return user, sys
}

// synRetrans returns the machine's TcpExt TCPSynRetrans so far (SYNs sent
// again because no answer came: a connect that waited a second or more);
// -1 if unknown.
func synRetrans() int64 {
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return -1
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		for j, name := range names {
			if name == "TCPSynRetrans" {
				v, _ := strconv.ParseInt(values[j], 10, 64)
				return v
			}
		}
	}
	return -1
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: want a positive size such as 1GiB", s)
	}
	return n * mult, nil
}

// --------------------------------------------------------------- report

func writeRaw(path string, runs []result, hz int) {
	f, err := os.Create(path)
	if err != nil {
		log.Printf("-raw: %v", err)
		return
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "round\ttest\ttarget\tvalue\tunit\tbytes\tpairs\tfailed\telapsed_s\tproxy_ticks\tuser_ticks\tp50_ms\tp99_ms\tksoftirqd_ticks\tsyn_retrans\tother_cores\tend\terror")
	for _, r := range runs {
		end := "-"
		switch {
		case r.test == "cps":
		case r.rst:
			end = "RST"
		case r.err == "":
			end = "FIN"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%.1f\t%s\t%d\t%d\t%d\t%.3f\t%d\t%d\t%s\t%s\t%d\t%d\t%.2f\t%s\t%s\n",
			r.round, r.test, r.target, r.value(), unit(r.test), r.bytes, r.pairs, r.failed,
			r.elapsed.Seconds(), r.ticks, r.user, rig.Ms(r.lat.P50), rig.Ms(r.lat.P99), r.ksoft, r.syn, r.otherCores(hz), end, r.err)
	}
	w.Flush()
}

// median returns the run with the median value (the lower middle one of
// an even count).
func median(rs []result) result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b result) int {
		switch {
		case a.value() < b.value():
			return -1
		case a.value() > b.value():
			return 1
		}
		return 0
	})
	return s[(len(s)-1)/2]
}

func report(w io.Writer, runs []result, targets rig.Targets, tests []string, subject string, hz int) {
	by := map[string][]result{} // test/target -> runs in round order
	for _, r := range runs {
		k := r.test + "/" + r.target
		by[k] = append(by[k], r)
	}
	fmtv := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", v)
	}
	bulkTests := slices.DeleteFunc(slices.Clone(tests), func(t string) bool { return t == "cps" })

	// Medians.
	head, sep := "| target |", "|---|"
	for _, test := range tests {
		switch test {
		case "up":
			head += " one way MB/s |"
		case "down":
			head += " one way back MB/s |"
		case "both":
			head += " both ways MB/s (sum) |"
		case "cps":
			head += " conn/s | pair p50 ms | pair p99 ms | pairs failed |"
			sep += "---:|---:|---:|"
		}
		sep += "---:|"
	}
	if len(bulkTests) > 0 {
		head += " bulk runs failed | bulk runs ended by RST, not FIN |"
		sep += "---:|---:|"
	}
	head += " other work, cores |"
	sep += "---:|"
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, sep)
	for _, t := range targets {
		fmt.Fprintf(w, "| %s |", t.Name)
		for _, test := range tests {
			rs := by[test+"/"+t.Name]
			m := median(rs)
			fmt.Fprintf(w, " %s |", fmtv(m.value()))
			if test == "cps" {
				failed := 0
				for _, r := range rs {
					failed += r.failed
				}
				fmt.Fprintf(w, " %s | %s | %d |", rig.Ms(m.lat.P50), rig.Ms(m.lat.P99), failed)
			}
		}
		if len(bulkTests) > 0 {
			failed, rst, n := 0, 0, 0
			for _, test := range bulkTests {
				for _, r := range by[test+"/"+t.Name] {
					n++
					if r.err != "" {
						failed++
					}
					if r.rst {
						rst++
					}
				}
			}
			fmt.Fprintf(w, " %d of %d | %d of %d |", failed, n, rst, n)
		}
		var others []float64
		for _, test := range tests {
			for _, r := range by[test+"/"+t.Name] {
				others = append(others, r.otherCores(hz))
			}
		}
		slices.Sort(others)
		fmt.Fprintf(w, " %.2f–%.2f, median %.2f |", others[0], others[len(others)-1], others[(len(others)-1)/2])
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)

	// CPU, summed over the rounds: per GB for bulk tests, per 1,000
	// pairs for cps, in seconds and milliseconds.
	type cpuUse struct {
		total, user, ksoft float64
		ok                 bool // the target has PIDs and a run that moved something
	}
	cpu := func(test, target string) cpuUse {
		var ticks, uticks, kticks, bytes int64
		pairs, pids := 0, false
		for _, r := range by[test+"/"+target] {
			if r.err != "" && test != "cps" {
				continue
			}
			if r.ticks >= 0 {
				pids = true
				ticks += r.ticks
				uticks += r.user
			}
			kticks += r.ksoft
			bytes += r.bytes
			pairs += r.pairs
		}
		var per float64 // units per tick: CPU-ms per 1,000 pairs, or CPU-s per GB
		switch {
		case test == "cps" && pairs > 0:
			per = 1e6 / float64(pairs) / float64(hz)
		case test != "cps" && bytes > 0:
			per = 1e9 / float64(bytes) / float64(hz)
		default:
			return cpuUse{}
		}
		return cpuUse{float64(ticks) * per, float64(uticks) * per, float64(kticks) * per, pids}
	}
	head, sep = "| target |", "|---|"
	for _, test := range tests {
		switch test {
		case "up":
			head += " CPU-s per GB, one way | + ksoftirqd |"
		case "down":
			head += " CPU-s per GB, one way back | + ksoftirqd |"
		case "both":
			head += " CPU-s per GB, both ways | + ksoftirqd |"
		case "cps":
			head += " CPU-ms per 1,000 pairs | of which user | of which sys | + ksoftirqd |"
			sep += "---:|---:|"
		}
		sep += "---:|---:|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, sep)
	for _, t := range targets {
		fmt.Fprintf(w, "| %s |", t.Name)
		for _, test := range tests {
			c := cpu(test, t.Name)
			k := "-"
			if c.total > 0 || c.ksoft > 0 {
				k = fmt.Sprintf("%.3f", c.ksoft)
				if test == "cps" {
					k = fmt.Sprintf("%.1f", c.ksoft)
				}
			}
			switch {
			case !c.ok && test == "cps":
				fmt.Fprintf(w, " - | - | - | %s |", k)
			case !c.ok:
				fmt.Fprintf(w, " - | %s |", k)
			case test == "cps":
				fmt.Fprintf(w, " %.1f | %.1f | %.1f | %s |", c.total, c.user, c.total-c.user, k)
			default:
				fmt.Fprintf(w, " %.3f | %s |", c.total, k)
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)

	// Ratios of the subject to each other proxy.
	var others []rig.Target
	for _, t := range targets {
		if t.Name != subject && t.PIDs != nil {
			others = append(others, t)
		}
	}
	if _, ok := by[tests[0]+"/"+subject]; !ok || len(others) == 0 {
		return
	}
	head, sep = "| measure | target |", "|---|---|"
	for _, o := range others {
		head += fmt.Sprintf(" %s / %s | by round |", subject, o.Name)
		sep += "---:|---|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, sep)
	names := map[string]string{"up": "one way MB/s", "down": "one way back MB/s", "both": "both ways MB/s", "cps": "conn/s"}
	for _, test := range tests {
		goal := 1.0
		if test == "cps" {
			goal = 0.9
		}
		fmt.Fprintf(w, "| %s | ≥ %.2f |", names[test], goal)
		s := by[test+"/"+subject]
		for _, o := range others {
			ot := by[test+"/"+o.Name]
			a, b := median(s).value(), median(ot).value()
			mark := ""
			if a > 0 && b > 0 {
				mark = " ✓"
				if a/b < goal {
					mark = " ✗"
				}
			}
			fmt.Fprintf(w, " %s%s | %s |", ratio(a, b), mark, perRound(s, ot))
		}
		fmt.Fprintln(w)
	}
	cpuNames := map[string]string{"up": "CPU per GB, one way", "down": "CPU per GB, one way back", "both": "CPU per GB, both ways", "cps": "CPU per pair"}
	row := func(name, test string, f func(c cpuUse) float64) {
		fmt.Fprintf(w, "| %s | lower is better |", name)
		sc := cpu(test, subject)
		for _, o := range others {
			oc := cpu(test, o.Name)
			if !sc.ok || !oc.ok {
				fmt.Fprint(w, " - | |")
				continue
			}
			fmt.Fprintf(w, " %s | |", ratio(f(sc), f(oc)))
		}
		fmt.Fprintln(w)
	}
	for _, test := range tests {
		row(cpuNames[test], test, func(c cpuUse) float64 { return c.total })
	}
	for _, test := range tests {
		row(cpuNames[test]+", with ksoftirqd", test, func(c cpuUse) float64 { return c.total + c.ksoft })
	}
	if slices.Contains(tests, "cps") {
		row("sys CPU per pair", "cps", func(c cpuUse) float64 { return c.total - c.user })
		row("user CPU per pair", "cps", func(c cpuUse) float64 { return c.user })
	}
	fmt.Fprintln(w)
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 || math.IsNaN(a/b) {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// perRound lists the ratio of a to b in each round.
func perRound(a, b []result) string {
	var parts []string
	for i := range min(len(a), len(b)) {
		parts = append(parts, ratio(a[i].value(), b[i].value()))
	}
	return strings.Join(parts, ", ")
}
