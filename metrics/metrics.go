// Package metrics is unstuck's Prometheus telemetry: counters and histograms
// fed by the pool and proxy Observers, gauges computed at scrape time from
// the pools' Stats, and socket-state gauges read from /proc/net/tcp{,6}.
//
// Everything lives in the Metrics' own registry, never the global one, so
// two Metrics (tests, or a future second instance) do not collide.
//
// Wiring, done by serve: New once; Upstream(name) as each pool's Observer
// and AddPool(name, pool) once it exists; Listener(name, upstream) as each
// proxy's Observer; SetSockets with the listener ports and upstream
// endpoints; SetUpstreamCheck with the reachability check of the
// upstreams; ReloadOK or ReloadFailed after each reload. A hot reload calls
// AddPool with the new pool under the same name (or RemovePool for an
// upstream that is gone) and SetSockets again.
package metrics

import (
	"regexp"
	"runtime"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/unstuck-proxy/unstuck"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/proxy"
)

// Label values that are created with a zero before anything happens, so an
// alert on a rate of them sees a series from the start.
var (
	// closeCauses is every pool.Cause.
	closeCauses = []pool.Cause{
		pool.CauseFIN, pool.CauseRST, pool.CauseUnsolicited, pool.CauseIdleTimeout,
		pool.CauseMaxLifetime, pool.CauseMaxRequests, pool.CauseMaxIdle,
		pool.CauseServerClose, pool.CauseError, pool.CauseShutdown,
		pool.CauseReplaced, pool.CauseTimeout, pool.CausePairEnd, pool.CauseRetired,
	}
	retryReasons = []string{"dial", "stale"}
	// closeHows are the ways an app connection ends; "escalated" (the app
	// ignored our FIN and got an RST) is reported by a later change.
	closeHows = []string{"graceful", "reset", "bounded", "escalated"}
	// refuseReasons is every proxy.Refuse* reason.
	refuseReasons = []string{
		proxy.RefuseBadRequest, proxy.RefuseHeaderTooLarge, proxy.RefuseURITooLong,
		proxy.RefuseBodyTooLarge, proxy.RefuseHeaderTimeout, proxy.RefuseBodyTimeout,
		proxy.RefuseBodyIncomplete, proxy.RefuseMethod, proxy.RefuseConnLimit, proxy.RefuseUpgrade,
		proxy.RefuseNotCaptured, proxy.RefuseCaptureLoop,
	}
	abortPhases   = []string{"request", "response_header", "response_body"}
	timeoutPhases = []string{"response_header", "response_idle", "write"}
)

// Histogram buckets, in seconds, with bounds that print as written
// (le="0.0001", not le="0.00010000000000000003").
var (
	// waitBuckets: 500µs to ~16s, doubling.
	waitBuckets = roundBuckets(prometheus.ExponentialBuckets(0.0005, 2, 16))
	// reactionBuckets: 10µs to 100ms, 1-2-5 in each decade.
	reactionBuckets = []float64{10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1}
	// responseBuckets: 500µs to ~16s, doubling.
	responseBuckets = roundBuckets(prometheus.ExponentialBuckets(0.0005, 2, 16))
	// tlsBuckets: 100µs to ~3s, doubling.
	tlsBuckets = roundBuckets(prometheus.ExponentialBuckets(0.0001, 2, 16))
	// addedBuckets: 10µs to ~164ms, doubling: what unstuck adds to a
	// request is counted in microseconds.
	addedBuckets = roundBuckets(prometheus.ExponentialBuckets(0.00001, 2, 15))
)

// roundBuckets rounds each bound to 3 significant digits, so that a
// product of floats (0.0005 × 2^n) prints as the decimal it stands for.
func roundBuckets(b []float64) []float64 {
	out := make([]float64, len(b))
	for i, v := range b {
		out[i], _ = strconv.ParseFloat(strconv.FormatFloat(v, 'g', 3, 64), 64)
	}
	return out
}

// Metrics holds every unstuck metric and the registry they are in. Its
// methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	dials       *prometheus.CounterVec   // upstream, endpoint
	dialErrors  *prometheus.CounterVec   // upstream, endpoint, reason
	waits       *prometheus.CounterVec   // upstream
	waitSeconds *prometheus.HistogramVec // upstream
	exhausted   *prometheus.CounterVec   // upstream
	closes      *prometheus.CounterVec   // upstream, cause
	reaction    *prometheus.HistogramVec // upstream

	retries     *prometheus.CounterVec   // listener, upstream, reason
	requests    *prometheus.CounterVec   // listener, upstream, code
	response    *prometheus.HistogramVec // listener, upstream
	added       *prometheus.HistogramVec // listener, upstream, phase
	appOpen     *prometheus.GaugeVec     // listener
	appReleased *prometheus.GaugeVec     // listener
	appClosed   *prometheus.CounterVec   // listener, how
	refused     *prometheus.CounterVec   // listener, reason
	appAborts   *prometheus.CounterVec   // listener, upstream, phase
	upTimeouts  *prometheus.CounterVec   // listener, upstream, phase

	reloads       prometheus.Counter
	reloadErrors  prometheus.Counter
	reloadOK      prometheus.Gauge // 1: the last load or reload was applied
	reloadOKTime  prometheus.Gauge // when one last was, in Unix seconds
	buildInfo     *prometheus.GaugeVec
	upstreamCheck *reachCollector

	pools   *poolCollector
	sockets *socketCollector
	pairs   *pairMetrics // tcp mode and upgrades (pairs.go)
	tls     *tlsMetrics  // TLS to upstreams (tls.go)
	dns     *dnsMetrics  // endpoint sets and DNS lookups (dns.go)
}

// New creates every metric and registers it, with the Go runtime and
// process collectors, in a new registry.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		dials: counterVec("unstuck_upstream_dials_total",
			"Connections dialed to the upstream endpoint, failed dials included.",
			"upstream", "endpoint"),
		dialErrors: counterVec("unstuck_upstream_dial_errors_total",
			"Dials to the upstream endpoint that failed, TLS handshakes included, by reason (see pool.DialErrorReason).",
			"upstream", "endpoint", "reason"),
		waits: counterVec("unstuck_pool_waits_total",
			"Acquires that found max_conns connections busy and had to wait for a slot.",
			"upstream"),
		waitSeconds: histogramVec("unstuck_pool_wait_seconds",
			"How long an acquire waited at max_conns, until it got a slot or gave up.",
			waitBuckets, "upstream"),
		exhausted: counterVec("unstuck_pool_exhausted_total",
			"Acquires that waited the whole acquire_timeout without getting a connection.",
			"upstream"),
		closes: counterVec("unstuck_upstream_closes_total",
			"Upstream connections the pool closed, by cause.",
			"upstream", "cause"),
		reaction: histogramVec("unstuck_half_close_reaction_seconds",
			"Time from the watcher noticing a FIN or RST on an idle upstream connection to its close returning.",
			reactionBuckets, "upstream"),
		retries: counterVec("unstuck_retries_total",
			"Request retries, by reason: dial (connect failed, nothing sent) or stale (a reused connection failed before any response byte).",
			"listener", "upstream", "reason"),
		requests: counterVec("unstuck_requests_total",
			"Requests answered to the app, by status class of the answer and, for an answer unstuck made itself, reason (dial_error, pool_exhausted, no_endpoint, shutdown, timeout, upstream_reset, bad_response, app_closed, or a refused request's reason); reason is empty for the upstream's answers.",
			"listener", "upstream", "code", "reason"),
		response: histogramVec("unstuck_upstream_response_seconds",
			"Time from a request's first acquire to the end of the upstream's response header (or the failure), retries included.",
			responseBuckets, "listener", "upstream"),
		added: histogramVec("unstuck_proxy_added_seconds",
			"Latency unstuck itself adds, by phase: from a message's last byte read on one side to its last byte written on the other. request: from the request's last byte read from the app (the end of its head, or of its body) to its last byte written upstream, including the wait for a pooled connection, a new connection's dial and TLS handshake, and failed attempts before a retry. response: from the upstream response's last byte read (the end of its head, or of its body) to the return of the last write to the app that carried it, including a wait for an app that does not read while unstuck holds those bytes. The upstream's think time and a body either side sends slowly are theirs, not counted. One observation per request written upstream whole, and per upstream response written to the app whole.",
			addedBuckets, "listener", "upstream", "phase"),
		appOpen: gaugeVec("unstuck_app_connections_open",
			"App connections open on the listener.",
			"listener"),
		appReleased: gaugeVec("unstuck_app_connections_released",
			"Open app connections idle long enough that their goroutine and buffers were released; an epoll set watches them for the next request.",
			"listener"),
		appClosed: counterVec("unstuck_app_connections_closed_total",
			"App connections closed, by how: graceful (FIN), reset (RST), bounded (SO_LINGER timeout) or escalated (the app ignored our FIN and got an RST).",
			"listener", "how"),
		refused: counterVec("unstuck_requests_refused_total",
			"Requests unstuck answered itself and never forwarded whole, by reason: bad_request, header_too_large, uri_too_long, body_too_large, header_timeout, body_timeout, body_incomplete, method, conn_limit (accepts held back at limits.max_conns), not_captured (a capture listener's connection made to it directly, reset) or capture_loop (unstuck's own connection captured again, reset: capture.exclude_uids lacks its UID).",
			"listener", "reason"),
		appAborts: counterVec("unstuck_app_aborts_total",
			"Requests whose app closed or reset its connection while they were in flight (logged as 499), by phase: request, response_header or response_body; the upstream exchange was aborted.",
			"listener", "upstream", "phase"),
		upTimeouts: counterVec("unstuck_upstream_timeouts_total",
			"Upstream waits that ran out, by phase: response_header (timeouts.response_header), response_idle (timeouts.response_idle) or write (timeouts.write).",
			"listener", "upstream", "phase"),
		reloads: counter("unstuck_config_reloads_total",
			"Config reloads applied."),
		reloadErrors: counter("unstuck_config_reload_errors_total",
			"Config reloads rejected; the previous config stays in force."),
		reloadOK: gauge("unstuck_config_last_reload_success",
			"1 if the last configuration load (the start, or the last reload) was applied; 0 if the last reload was rejected and an older configuration runs."),
		reloadOKTime: gauge("unstuck_config_last_reload_success_timestamp_seconds",
			"When the running configuration was applied (the start, or the last reload that succeeded), in Unix seconds."),
		buildInfo: gaugeVec("unstuck_build_info",
			"Always 1; its labels say which unstuck this is: version (as released) and goversion (the Go it was built with).",
			"version", "goversion"),
		upstreamCheck: newReachCollector(),
		pools:         newPoolCollector(),
		sockets:       newSocketCollector(),
	}
	m.buildInfo.WithLabelValues(unstuck.Version, runtime.Version()).Set(1)
	m.setReloaded(true)
	m.reg.MustRegister(
		// Go's defaults, and the scheduler's: go_sched_latencies_seconds is
		// how long runnable goroutines waited for a CPU, the first thing to
		// look at when a sidecar adds latency (a CPU limit too tight for
		// its load shows there before anywhere else).
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsScheduler)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.dials, m.dialErrors, m.waits, m.waitSeconds, m.exhausted, m.closes, m.reaction,
		m.retries, m.requests, m.response, m.added, m.appOpen, m.appReleased, m.appClosed,
		m.refused, m.appAborts, m.upTimeouts,
		m.reloads, m.reloadErrors, m.reloadOK, m.reloadOKTime, m.buildInfo,
		m.upstreamCheck, m.pools, m.sockets,
	)
	m.pairs = registerPairMetrics(m.reg)
	m.tls = registerTLSMetrics(m.reg)
	m.dns = registerDNSMetrics(m.reg, m.pools)
	return m
}

// counter, counterVec, gaugeVec and histogramVec build a metric from its
// name, help and label names: New declares many, and only those differ.
func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
}

// Registry returns the registry every metric is in, for promhttp.HandlerFor.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ReloadOK counts a config reload that was applied.
func (m *Metrics) ReloadOK() {
	m.reloads.Inc()
	m.setReloaded(true)
}

// ReloadFailed counts a config reload that was rejected.
func (m *Metrics) ReloadFailed() {
	m.reloadErrors.Inc()
	m.setReloaded(false)
}

// setReloaded records the outcome of the latest load; a success also its
// time. New counts as one: the configuration it serves was loaded.
func (m *Metrics) setReloaded(ok bool) {
	if !ok {
		m.reloadOK.Set(0)
		return
	}
	m.reloadOK.Set(1)
	m.reloadOKTime.SetToCurrentTime()
}

// Names returns the name of every metric family m registers, whether or
// not it has a series yet: what a dashboard or an alert may query.
// Histograms' series add _bucket, _sum and _count to theirs.
func (m *Metrics) Names() []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		m.reg.Describe(ch)
		close(ch)
	}()
	var names []string
	for d := range ch {
		// A Desc shows its name only in its String: Desc{fqName: "...", ...}.
		if m := descName.FindStringSubmatch(d.String()); m != nil && !slices.Contains(names, m[1]) {
			names = append(names, m[1])
		}
	}
	slices.Sort(names)
	return names
}

var descName = regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)
