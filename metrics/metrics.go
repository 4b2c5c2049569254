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
// endpoints; ReloadOK or ReloadFailed after each reload. A hot reload calls
// AddPool with the new pool under the same name (or RemovePool for an
// upstream that is gone) and SetSockets again.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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

// Histogram buckets, in seconds.
var (
	// waitBuckets: 500µs to ~16s, doubling.
	waitBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)
	// reactionBuckets: 10µs to 100ms, 13 buckets (×2.15 each).
	reactionBuckets = prometheus.ExponentialBucketsRange(10e-6, 0.1, 13)
	// responseBuckets: 500µs to ~16s, doubling.
	responseBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)
)

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
	appOpen     *prometheus.GaugeVec     // listener
	appReleased *prometheus.GaugeVec     // listener
	appClosed   *prometheus.CounterVec   // listener, how
	refused     *prometheus.CounterVec   // listener, reason
	appAborts   *prometheus.CounterVec   // listener, upstream, phase
	upTimeouts  *prometheus.CounterVec   // listener, upstream, phase

	reloads      prometheus.Counter
	reloadErrors prometheus.Counter

	pools   *poolCollector
	sockets *socketCollector
	pairs   *pairMetrics // tcp mode and upgrades (pairs.go)
	tls     *tlsMetrics  // TLS to upstreams (tls.go)
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
			"Requests answered to the app, by status class of the answer.",
			"listener", "upstream", "code"),
		response: histogramVec("unstuck_upstream_response_seconds",
			"Time from a request's first acquire to the end of the upstream's response header (or the failure), retries included.",
			responseBuckets, "listener", "upstream"),
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
		pools:   newPoolCollector(),
		sockets: newSocketCollector(),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.dials, m.dialErrors, m.waits, m.waitSeconds, m.exhausted, m.closes, m.reaction,
		m.retries, m.requests, m.response, m.appOpen, m.appReleased, m.appClosed,
		m.refused, m.appAborts, m.upTimeouts,
		m.reloads, m.reloadErrors,
		m.pools, m.sockets,
	)
	m.pairs = registerPairMetrics(m.reg)
	m.tls = registerTLSMetrics(m.reg)
	return m
}

// counter, counterVec, gaugeVec and histogramVec build a metric from its
// name, help and label names: New declares many, and only those differ.
func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
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
func (m *Metrics) ReloadOK() { m.reloads.Inc() }

// ReloadFailed counts a config reload that was rejected.
func (m *Metrics) ReloadFailed() { m.reloadErrors.Inc() }
