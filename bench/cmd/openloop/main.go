// Command openloop is an open-loop HTTP/1.1 load generator: N keep-alive
// connections send GET requests on a fixed schedule that together make R
// requests per second, whether or not earlier answers have come back.
// Each request's latency is measured from the time it was meant to be
// sent, so a request held back behind a slow one counts the wait
// (coordinated omission avoided, as wrk2 does). Latencies go into a
// log-linear histogram (HDR-style, under 0.8% error); the result is one
// line of JSON with p50, p90, p99, p99.9, max and errors.
//
//	openloop -url http://127.0.0.1:8080/ -c 64 -rate 10000 -d 10s -warmup 1s
//
// A run is bounded by -d (plus -timeout for the last answers) and by -n.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// hist is a log-linear histogram of durations in nanoseconds: values
// below 256 have a bucket each; above, each power of two is split into 128
// buckets, so a bucket is at most 1/128 of its value wide.
type hist struct {
	counts []uint64
	n      uint64
	max    int64
	sum    float64
}

const (
	subBits  = 7
	subCount = 1 << subBits // buckets per power of two above 2*subCount
	maxShift = 40           // up to 2^48 ns, about 3 days
)

func newHist() *hist {
	return &hist{counts: make([]uint64, 2*subCount+(maxShift+1)*subCount)}
}

func bucket(v int64) int {
	if v < 0 {
		v = 0
	}
	if v < 2*subCount {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - subBits - 1 // >= 1
	if shift > maxShift+1 {
		shift = maxShift + 1
		v = (2*subCount - 1) << shift
	}
	mant := int(v >> shift) // in [subCount, 2*subCount)
	return 2*subCount + (shift-1)*subCount + (mant - subCount)
}

// value is the middle of bucket i.
func value(i int) int64 {
	if i < 2*subCount {
		return int64(i)
	}
	shift := (i-2*subCount)/subCount + 1
	mant := int64((i-2*subCount)%subCount + subCount)
	return mant<<shift + (int64(1)<<shift)/2
}

func (h *hist) record(v int64) {
	h.counts[bucket(v)]++
	h.n++
	h.sum += float64(v)
	if v > h.max {
		h.max = v
	}
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the value at or below which a fraction q of the
// recorded values lie (never above the maximum).
func (h *hist) quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(value(i), h.max)
		}
	}
	return h.max
}

type result struct {
	URL         string  `json:"url"`
	Conns       int     `json:"conns"`
	Rate        float64 `json:"rate"`
	DurationS   float64 `json:"duration_s"` // measured part: to the last answer
	Requests    uint64  `json:"requests"`
	AchievedRPS float64 `json:"achieved_rps"`
	Errors      uint64  `json:"errors"`
	Unsent      uint64  `json:"unsent"`
	MeanMs      float64 `json:"mean_ms"`
	P50Ms       float64 `json:"p50_ms"`
	P90Ms       float64 `json:"p90_ms"`
	P99Ms       float64 `json:"p99_ms"`
	P999Ms      float64 `json:"p999_ms"`
	MaxMs       float64 `json:"max_ms"`
	FirstError  string  `json:"first_error,omitempty"`
}

func ms(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }

func main() {
	rawURL := flag.String("url", "", "http://host:port/path to GET")
	conns := flag.Int("c", 64, "keep-alive connections")
	rate := flag.Float64("rate", 1000, "requests per second over all connections")
	dur := flag.Duration("d", 10*time.Second, "measured duration (after the warm-up)")
	warm := flag.Duration("warmup", time.Second, "warm-up at the same rate, not measured")
	maxN := flag.Uint64("n", 0, "stop after this many measured requests (0: no limit beyond -d)")
	timeout := flag.Duration("timeout", 5*time.Second, "per-request timeout (dial, write, answer)")
	flag.Parse()
	u, err := url.Parse(*rawURL)
	if err != nil || u.Scheme != "http" || u.Host == "" || *conns < 1 || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "usage: openloop -url http://host:port/path -c N -rate R -d DUR [-warmup DUR] [-n COUNT] [-timeout DUR]")
		os.Exit(2)
	}
	path := u.RequestURI()
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: openloop\r\n\r\n")

	// Connection i sends at start + i*gap/N + k*gap, gap = N/R: the
	// connections' schedules interleave into one even stream of R/s.
	gap := time.Duration(float64(*conns) / *rate * 1e9)
	start := time.Now().Add(50 * time.Millisecond)
	measureFrom := start.Add(*warm)
	end := measureFrom.Add(*dur)
	var measured atomic.Uint64 // measured requests sent (for -n)
	var stop atomic.Bool

	type connResult struct {
		h      *hist
		errs   uint64
		unsent uint64
		first  string
	}
	results := make([]connResult, *conns)
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := &results[i]
			r.h = newHist()
			var c net.Conn
			var br *bufio.Reader
			fail := func(err error) {
				r.errs++
				if r.first == "" {
					r.first = err.Error()
				}
				if c != nil {
					c.Close()
					c = nil
				}
			}
			// lost is a request that failed: counted if measured; either
			// way the next request dials again.
			lost := func(measure bool, err error) {
				if measure {
					fail(err)
				} else if c != nil {
					c.Close()
					c = nil
				}
			}
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for k := 0; ; k++ {
				intended := start.Add(time.Duration(i)*gap/time.Duration(*conns) + time.Duration(k)*gap)
				if !intended.Before(end) || stop.Load() {
					return
				}
				measure := !intended.Before(measureFrom)
				if measure && *maxN > 0 && measured.Add(1) > *maxN {
					stop.Store(true)
					return
				}
				if d := time.Until(intended); d > 0 {
					time.Sleep(d)
				}
				// Too far behind to still mean anything: count it as not sent.
				if time.Since(intended) > *timeout {
					if measure {
						r.unsent++
					}
					continue
				}
				if c == nil {
					nc, err := net.DialTimeout("tcp", u.Host, *timeout)
					if err != nil {
						lost(measure, err)
						continue
					}
					c = nc
					br = bufio.NewReaderSize(c, 16<<10)
				}
				c.SetDeadline(time.Now().Add(*timeout))
				if _, err := c.Write(req); err != nil {
					lost(measure, err)
					continue
				}
				status, keep, err := readResponse(br)
				lat := time.Since(intended)
				if err != nil {
					lost(measure, err)
					continue
				}
				if measure {
					if status < 200 || status > 299 {
						fail(fmt.Errorf("status %d", status))
					} else {
						r.h.record(int64(lat))
					}
				}
				if !keep && c != nil {
					c.Close()
					c = nil
				}
			}
		}(i)
	}
	wg.Wait()
	// From the first measured send to the last answer: a target that
	// cannot keep up answers the schedule's requests over a longer time.
	elapsed := time.Since(measureFrom)
	h := newHist()
	res := result{URL: *rawURL, Conns: *conns, Rate: *rate, DurationS: math.Round(elapsed.Seconds()*1e3) / 1e3}
	for _, r := range results {
		h.merge(r.h)
		res.Errors += r.errs
		res.Unsent += r.unsent
		if res.FirstError == "" {
			res.FirstError = r.first
		}
	}
	res.Requests = h.n
	res.AchievedRPS = math.Round(float64(h.n) / elapsed.Seconds())
	if h.n > 0 {
		res.MeanMs = ms(int64(h.sum / float64(h.n)))
	}
	res.P50Ms, res.P90Ms, res.P99Ms = ms(h.quantile(0.50)), ms(h.quantile(0.90)), ms(h.quantile(0.99))
	res.P999Ms, res.MaxMs = ms(h.quantile(0.999)), ms(h.max)
	json.NewEncoder(os.Stdout).Encode(res)
}

// readResponse reads one response (status line, headers, body by
// Content-Length or chunked) and says whether the connection stays open.
func readResponse(br *bufio.Reader) (status int, keep bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	s := string(line)
	if len(s) < 12 || !strings.HasPrefix(s, "HTTP/1.") {
		return 0, false, fmt.Errorf("bad status line %q", strings.TrimSpace(s))
	}
	status, err = strconv.Atoi(s[9:12])
	if err != nil {
		return 0, false, fmt.Errorf("bad status line %q", strings.TrimSpace(s))
	}
	keep = s[7] == '1'
	length, chunked := int64(-1), false
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		h := strings.TrimRight(string(line), "\r\n")
		if h == "" {
			break
		}
		name, val, ok := strings.Cut(h, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch strings.ToLower(name) {
		case "content-length":
			length, err = strconv.ParseInt(val, 10, 64)
			if err != nil {
				return 0, false, errors.New("bad Content-Length")
			}
		case "transfer-encoding":
			chunked = strings.Contains(strings.ToLower(val), "chunked")
		case "connection":
			v := strings.ToLower(val)
			if strings.Contains(v, "close") {
				keep = false
			} else if strings.Contains(v, "keep-alive") {
				keep = true
			}
		}
	}
	switch {
	case chunked:
		for {
			line, err = br.ReadSlice('\n')
			if err != nil {
				return 0, false, err
			}
			sz, _, _ := strings.Cut(strings.TrimSpace(string(line)), ";")
			n, err := strconv.ParseInt(sz, 16, 64)
			if err != nil {
				return 0, false, errors.New("bad chunk size")
			}
			if n == 0 {
				for { // trailers up to the empty line
					line, err = br.ReadSlice('\n')
					if err != nil {
						return 0, false, err
					}
					if strings.TrimSpace(string(line)) == "" {
						return status, keep, nil
					}
				}
			}
			if _, err := br.Discard(int(n) + 2); err != nil {
				return 0, false, err
			}
		}
	case length >= 0:
		_, err = br.Discard(int(length))
		return status, keep, err
	case status == 204 || status == 304 || status < 200:
		return status, keep, nil
	default: // body to the close
		_, err = io.Copy(io.Discard, br)
		return status, false, err
	}
}
