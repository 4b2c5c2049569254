// Command tlsbench is the TLS upstream of the benchmark's tls phase, and
// the paced client that counts the handshakes each proxy makes to it.
//
//	tlsbench serve -dir DIR -stats 127.0.0.1:19600 \
//	    -keepalive ka-unstuck=127.0.0.1:19625 -idle idle-unstuck=127.0.0.1:19635
//
// serve makes a CA and a certificate for -name (and 127.0.0.1) signed by
// it, with crypto/x509 (ECDSA P-256), and writes ca.pem, cert.pem and
// key.pem to -dir before it listens. Each -keepalive and -idle listener is
// an HTTPS server (net/http, HTTP/1.1 only: ALPN http/1.1) that answers
// every request with a fixed 5-byte body and keeps connections alive; an
// -idle listener closes a connection idle for -idle-timeout (1s), as many
// servers and load balancers do. A -plain listener is the same server
// without TLS, keeping connections: the baseline that shows what TLS
// costs. Every listener counts its handshakes, full and resumed (tls.ConnectionState.DidResume, seen in the
// server's VerifyConnection, which runs for resumed handshakes too), those
// at TLS 1.3, the connections it accepted, the requests it answered and the
// handshakes that failed. GET /stats on the plain-HTTP -stats address
// returns them as tab-separated lines, a header first; serve also prints
// them when it ends (SIGTERM or SIGINT).
//
//	tlsbench pace -stats 127.0.0.1:19600 -rounds 3 -bursts 12 -conns 8 \
//	    -target nginx=127.0.0.1:19611 -target unstuck=127.0.0.1:19615
//
// pace is the client: plain HTTP/1.1 keep-alive to each proxy, whose
// upstream is the -idle listener named -prefix plus the target's name (such
// as idle-unstuck). In each of -rounds rounds it takes every target in
// turn, each round starting from another: -conns connections send one GET
// each at the same moment (a burst), wait for all the answers, then stay
// idle for -gap (1.2s, longer than the upstream's idle timeout, so that the
// upstream has closed every connection the proxy holds); -bursts times. A
// target's first run starts with one request alone, followed by a gap, so
// that a proxy with a session cache has one session before the first
// burst. It reads the target's listener counters before and after each
// run and prints markdown tables: per target, the handshakes per 1,000
// requests, full and resumed; per round, the full handshakes of each; the
// latency of the requests. Everything is bounded: each request by
// -timeout, each run by -bursts and -run-time.
//
//	tlsbench stats -stats 127.0.0.1:19600
//	tlsbench get http://127.0.0.1:19609/metrics
//
// stats prints the counters once, get the body of a GET on loopback (for
// the script, which needs no curl).
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/signal"
	"path/filepath"
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
	log.SetFlags(0)
	log.SetPrefix("tlsbench: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: tlsbench serve|pace|stats|get [flags]")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		serveMain(args)
	case "pace":
		paceMain(args)
	case "stats":
		fs := flag.NewFlagSet("stats", flag.ExitOnError)
		addr := fs.String("stats", "127.0.0.1:19600", "serve's -stats address")
		fs.Parse(args)
		body, err := fetchStats(*addr)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(body)
	case "get":
		if len(args) != 1 {
			log.Fatal("usage: tlsbench get http://127.0.0.1:PORT/PATH")
		}
		body, err := get(args[0])
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(body)
	default:
		log.Fatalf("unknown command %q: want serve, pace, stats or get", os.Args[1])
	}
}

// ------------------------------------------------------------------ serve

// named is a repeatable flag: name=host:port.
type named []struct{ name, addr string }

func (n *named) String() string { return fmt.Sprint(*n) }

func (n *named) Set(s string) error {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" || addr == "" {
		return fmt.Errorf("%q: want name=host:port", s)
	}
	if err := loopback(addr); err != nil {
		return err
	}
	*n = append(*n, struct{ name, addr string }{name, addr})
	return nil
}

// counters are one listener's.
type counters struct {
	full, resumed, tls13, conns, requests, failed atomic.Int64
}

// statsHeader names the columns of /stats, after the listener's name.
const statsHeader = "listener\tfull\tresumed\ttls13\tconns\trequests\thandshake_errors\n"

func (c *counters) line(name string) string {
	return fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%d\t%d\n", name, c.full.Load(), c.resumed.Load(),
		c.tls13.Load(), c.conns.Load(), c.requests.Load(), c.failed.Load())
}

// errorCounter is a listener's http.Server ErrorLog: it counts net/http's
// "TLS handshake error" lines and keeps the last few for the exit report.
type errorCounter struct {
	c    *counters
	mu   sync.Mutex
	last []string
}

func (e *errorCounter) Write(p []byte) (int, error) {
	s := strings.TrimSpace(string(p))
	if strings.Contains(s, "TLS handshake error") {
		e.c.failed.Add(1)
	}
	e.mu.Lock()
	if len(e.last) == 5 {
		e.last = e.last[1:]
	}
	e.last = append(e.last, s)
	e.mu.Unlock()
	return len(p), nil
}

var body = []byte("hello")

func serveMain(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "", "directory for ca.pem, cert.pem and key.pem (required)")
	name := fs.String("name", "backend.test", "the server name in the certificate")
	statsAddr := fs.String("stats", "127.0.0.1:19600", "plain-HTTP address of GET /stats")
	idleTimeout := fs.Duration("idle-timeout", time.Second, "an -idle listener closes connections idle this long")
	var keep, idle, plain named
	fs.Var(&keep, "keepalive", "name=host:port of a listener that keeps connections; repeatable")
	fs.Var(&idle, "idle", "name=host:port of a listener that closes idle connections; repeatable")
	fs.Var(&plain, "plain", "name=host:port of a plain-HTTP listener (no TLS) that keeps connections, for comparison; repeatable")
	fs.Parse(args)
	if *dir == "" || len(keep)+len(idle)+len(plain) == 0 {
		log.Fatal("serve: want -dir and at least one -keepalive, -idle or -plain listener")
	}
	if err := loopback(*statsAddr); err != nil {
		log.Fatal(err)
	}
	cert, err := makeCerts(*dir, *name)
	if err != nil {
		log.Fatal(err)
	}

	type lst struct {
		name string
		c    *counters
		errs *errorCounter
		srv  *http.Server
	}
	var all []*lst
	for i, set := range []named{keep, idle, plain} {
		for _, n := range set {
			l := &lst{name: n.name, c: new(counters)}
			l.errs = &errorCounter{c: l.c}
			cfg := &tls.Config{
				Certificates: []tls.Certificate{cert},
				MinVersion:   tls.VersionTLS12,
				NextProtos:   []string{"http/1.1"},
				VerifyConnection: func(cs tls.ConnectionState) error {
					if cs.DidResume {
						l.c.resumed.Add(1)
					} else {
						l.c.full.Add(1)
					}
					if cs.Version == tls.VersionTLS13 {
						l.c.tls13.Add(1)
					}
					return nil
				},
			}
			l.srv = &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					l.c.requests.Add(1)
					io.Copy(io.Discard, r.Body)
					h := w.Header()
					h.Set("Content-Type", "text/plain")
					h.Set("Content-Length", "5")
					w.Write(body)
				}),
				TLSConfig:         cfg,
				TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
				ReadHeaderTimeout: 30 * time.Second,
				ErrorLog:          log.New(l.errs, "", 0),
				ConnState: func(_ net.Conn, s http.ConnState) {
					if s == http.StateNew {
						l.c.conns.Add(1)
					}
				},
			}
			if i == 1 {
				l.srv.IdleTimeout = *idleTimeout
			}
			ln, err := net.Listen("tcp", n.addr)
			if err != nil {
				log.Fatal(err)
			}
			if i == 2 {
				l.srv.TLSConfig = nil
				go l.srv.Serve(ln)
			} else {
				go l.srv.Serve(tls.NewListener(ln, cfg))
			}
			all = append(all, l)
		}
	}
	report := func() string {
		var b strings.Builder
		b.WriteString(statsHeader)
		for _, l := range all {
			b.WriteString(l.c.line(l.name))
		}
		return b.String()
	}
	sln, err := net.Listen("tcp", *statsAddr)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, report()) })
	stats := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go stats.Serve(sln)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stats.Shutdown(ctx)
	for _, l := range all {
		l.srv.Close()
	}
	fmt.Fprint(os.Stderr, report())
	for _, l := range all {
		l.errs.mu.Lock()
		for _, s := range l.errs.last {
			fmt.Fprintf(os.Stderr, "%s: %s\n", l.name, s)
		}
		l.errs.mu.Unlock()
	}
}

// makeCerts writes a new CA (ca.pem) and a certificate for name and
// 127.0.0.1 signed by it (cert.pem, key.pem) to dir, valid for a day.
func makeCerts(dir, name string) (tls.Certificate, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tlsbench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	files := []struct {
		file, typ string
		der       []byte
	}{
		{"ca.pem", "CERTIFICATE", caDER},
		{"cert.pem", "CERTIFICATE", leafDER},
		{"key.pem", "EC PRIVATE KEY", keyDER},
	}
	for _, f := range files {
		data := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(filepath.Join(dir, f.file), data, 0o600); err != nil {
			return tls.Certificate{}, err
		}
	}
	return tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
}

// ------------------------------------------------------------------ stats

func fetchStats(addr string) (string, error) {
	if err := loopback(addr); err != nil {
		return "", err
	}
	return get("http://" + addr + "/stats")
}

// get returns the body of a GET of url, a loopback http:// address.
func get(url string) (string, error) {
	u, err := neturl.Parse(url)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" {
		return "", fmt.Errorf("%s: want http://", url)
	}
	if err := loopback(u.Host); err != nil {
		return "", err
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// snapshot is one listener's counters at a moment.
type snapshot struct{ full, resumed, tls13, conns, requests, failed int64 }

func (a snapshot) sub(b snapshot) snapshot {
	return snapshot{a.full - b.full, a.resumed - b.resumed, a.tls13 - b.tls13, a.conns - b.conns,
		a.requests - b.requests, a.failed - b.failed}
}

func (a snapshot) add(b snapshot) snapshot {
	return snapshot{a.full + b.full, a.resumed + b.resumed, a.tls13 + b.tls13, a.conns + b.conns,
		a.requests + b.requests, a.failed + b.failed}
}

func readStats(addr, listener string) (snapshot, error) {
	body, err := fetchStats(addr)
	if err != nil {
		return snapshot{}, err
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 7 || f[0] != listener {
			continue
		}
		var v [6]int64
		for i := range v {
			if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
				return snapshot{}, fmt.Errorf("/stats: %q: %w", sc.Text(), err)
			}
		}
		return snapshot{v[0], v[1], v[2], v[3], v[4], v[5]}, nil
	}
	return snapshot{}, fmt.Errorf("/stats: no listener %q", listener)
}

// ------------------------------------------------------------------- pace

// run is one target's run in one round.
type run struct {
	round      int
	target     string
	requests   int
	failed     int
	dials      int // client connections to the proxy opened
	firstErr   string
	up         snapshot // the upstream listener's counters, after minus before
	lat        []time.Duration
	start, end time.Time
}

type pacer struct {
	stats, prefix string
	bursts, conns int
	gap, timeout  time.Duration
	runTime       time.Duration
	seen          map[string]bool // targets that had their first run
}

func paceMain(args []string) {
	fs := flag.NewFlagSet("pace", flag.ExitOnError)
	p := &pacer{seen: map[string]bool{}}
	fs.StringVar(&p.stats, "stats", "127.0.0.1:19600", "serve's -stats address")
	fs.StringVar(&p.prefix, "prefix", "idle-", "a target's upstream listener is this prefix plus its name")
	rounds := fs.Int("rounds", 3, "rounds over all targets")
	fs.IntVar(&p.bursts, "bursts", 12, "bursts per run")
	fs.IntVar(&p.conns, "conns", 8, "client connections: requests per burst")
	fs.DurationVar(&p.gap, "gap", 1200*time.Millisecond, "idle time after each burst (longer than the upstream's idle timeout)")
	fs.DurationVar(&p.timeout, "timeout", 5*time.Second, "a request that takes longer fails")
	fs.DurationVar(&p.runTime, "run-time", 60*time.Second, "a run stops starting bursts after this long")
	subject := fs.String("subject", "unstuck", "the target compared with the others")
	raw := fs.String("raw", "", "also write every run as a tab-separated line to this file")
	var targets rig.Targets
	fs.Var(&targets, "target", "name=host:port; repeatable")
	fs.Parse(args)
	if len(targets) == 0 || *rounds < 1 || p.bursts < 1 || p.conns < 1 {
		log.Fatal("pace: want at least one -target, one round, one burst and one connection")
	}

	var runs []run
	for r := range *rounds {
		for i := range targets {
			t := targets[(i+r)%len(targets)]
			res, err := p.run(t, r+1)
			if err != nil {
				log.Fatal(err)
			}
			log.Printf("round %d %s: %d requests (%d failed), upstream handshakes %d full %d resumed", r+1, t.Name,
				res.requests, res.failed, res.up.full, res.up.resumed)
			runs = append(runs, res)
		}
	}
	report(os.Stdout, runs, targets, *subject, *rounds)
	if *raw != "" {
		writeRaw(*raw, runs)
	}
}

// run makes one target's run: on its first, a lone request and a gap; then
// the bursts.
func (p *pacer) run(t rig.Target, round int) (run, error) {
	res := run{round: round, target: t.Name}
	listener := p.prefix + t.Name
	before, err := readStats(p.stats, listener)
	if err != nil {
		return res, err
	}
	cc := make([]*rig.ClientConn, p.conns)
	defer func() {
		for _, c := range cc {
			if c != nil {
				c.Close()
			}
		}
	}()
	var mu sync.Mutex
	one := func(i int) {
		c := cc[i]
		var err error
		if c == nil {
			var nc *net.TCPConn
			if nc, err = rig.Dial(t.Addr); err == nil {
				c = &rig.ClientConn{TCPConn: nc, BR: bufio.NewReaderSize(nc, 4<<10)}
				cc[i] = c
				mu.Lock()
				res.dials++
				mu.Unlock()
			}
		}
		t0 := time.Now()
		closeConn := false
		if err == nil {
			closeConn, err = rig.Get(c, c.BR, "/paced", p.timeout)
		}
		d := time.Since(t0)
		if c != nil && (err != nil || closeConn) {
			c.Close()
			cc[i] = nil
		}
		mu.Lock()
		defer mu.Unlock()
		res.requests++
		if err != nil {
			res.failed++
			if res.firstErr == "" {
				res.firstErr = err.Error()
			}
			return
		}
		res.lat = append(res.lat, d)
	}
	res.start = time.Now()
	if !p.seen[t.Name] {
		p.seen[t.Name] = true
		one(0)
		time.Sleep(p.gap)
	}
	deadline := time.Now().Add(p.runTime)
	for b := 0; b < p.bursts && time.Now().Before(deadline); b++ {
		var wg sync.WaitGroup
		for i := range p.conns {
			wg.Add(1)
			go func() { defer wg.Done(); one(i) }()
		}
		wg.Wait()
		time.Sleep(p.gap) // also after the last: the next run finds no live upstream connection
	}
	res.end = time.Now()
	// A handshake is counted before its request is answered: every one of
	// this run's is in the counters now.
	after, err := readStats(p.stats, listener)
	if err != nil {
		return res, err
	}
	res.up = after.sub(before)
	return res, nil
}

func perK(n int64, reqs int) string {
	if reqs == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", 1000*float64(n)/float64(reqs))
}

func report(w io.Writer, runs []run, targets rig.Targets, subject string, rounds int) {
	type total struct {
		requests, failed, dials int
		up                      snapshot
		lat                     []time.Duration
		firstErr                string
	}
	tot := map[string]*total{}
	for _, t := range targets {
		tot[t.Name] = &total{}
	}
	for _, r := range runs {
		x := tot[r.target]
		x.requests += r.requests
		x.failed += r.failed
		x.dials += r.dials
		x.up = x.up.add(r.up)
		x.lat = append(x.lat, r.lat...)
		if x.firstErr == "" {
			x.firstErr = r.firstErr
		}
	}
	fmt.Fprintln(w, "| proxy | requests | failed | upstream connections | handshakes | full | resumed | handshakes per 1,000 requests | full per 1,000 | resumed % | TLS 1.3 % | request p50 ms | request p99 ms | upstream handshake errors |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, t := range targets {
		x := tot[t.Name]
		hs := x.up.full + x.up.resumed
		pct := func(n int64) string {
			if hs == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f", 100*float64(n)/float64(hs))
		}
		s := rig.Summarize(x.lat)
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %d | %s | %s | %s | %s | %s | %s | %d |\n", t.Name, x.requests, x.failed,
			x.up.conns, hs, x.up.full, x.up.resumed, perK(hs, x.requests), perK(x.up.full, x.requests),
			pct(x.up.resumed), pct(x.up.tls13), rig.Ms(s.P50), rig.Ms(s.P99), x.up.failed)
	}

	// Full handshakes per round: the first round includes each proxy's
	// first handshake.
	fmt.Fprintln(w)
	head, sep := "| round |", "|---:|"
	for _, t := range targets {
		head += " " + t.Name + " full / resumed |"
		sep += "---:|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, sep)
	for r := 1; r <= rounds; r++ {
		line := fmt.Sprintf("| %d |", r)
		for _, t := range targets {
			for _, x := range runs {
				if x.round == r && x.target == t.Name {
					line += fmt.Sprintf(" %d / %d |", x.up.full, x.up.resumed)
				}
			}
		}
		fmt.Fprintln(w, line)
	}

	// The subject against each other proxy.
	s, ok := tot[subject]
	if !ok {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "| %s vs | full handshakes (%s : other) | full per 1,000 requests (%s : other) | request p99 ratio |\n", subject, subject, subject)
	fmt.Fprintln(w, "|---|---:|---:|---:|")
	sp99 := rig.Summarize(s.lat).P99
	for _, t := range targets {
		if t.Name == subject {
			continue
		}
		x := tot[t.Name]
		r := "-"
		if o := rig.Summarize(x.lat).P99; o > 0 {
			r = fmt.Sprintf("%.2f", float64(sp99)/float64(o))
		}
		fmt.Fprintf(w, "| %s | %d : %d | %s : %s | %s |\n", t.Name, s.up.full, x.up.full,
			perK(s.up.full, s.requests), perK(x.up.full, x.requests), r)
	}
	for _, t := range targets {
		if x := tot[t.Name]; x.firstErr != "" {
			fmt.Fprintf(os.Stderr, "%s: first failure: %s\n", t.Name, x.firstErr)
		}
	}
}

func writeRaw(path string, runs []run) {
	var b strings.Builder
	b.WriteString("round\ttarget\trequests\tfailed\tclient_dials\tupstream_conns\tfull\tresumed\ttls13\thandshake_errors\tp50_ms\tp99_ms\tseconds\n")
	for _, r := range runs {
		s := rig.Summarize(slices.Clone(r.lat))
		fmt.Fprintf(&b, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%.1f\n", r.round, r.target, r.requests, r.failed,
			r.dials, r.up.conns, r.up.full, r.up.resumed, r.up.tls13, r.up.failed, rig.Ms(s.P50), rig.Ms(s.P99),
			r.end.Sub(r.start).Seconds())
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		log.Print(err)
	}
}

// loopback refuses an address off 127.0.0.0/8 and ::1.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return errors.New(addr + ": not a loopback address; the benchmarks stay on 127.0.0.0/8")
	}
	return nil
}
