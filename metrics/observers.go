package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/proxy"
)

// Upstream returns the pool.Observer for upstream name. Its label children
// are created here (every close cause with a zero) or, for an endpoint, on
// its first dial; after that no call allocates. Calling it again for the
// same name (a reload) returns an observer that feeds the same series.
func (m *Metrics) Upstream(name string) pool.Observer {
	o := &upstreamObserver{
		m:           m,
		upstream:    name,
		waits:       m.waits.WithLabelValues(name),
		waitSeconds: m.waitSeconds.WithLabelValues(name),
		exhausted:   m.exhausted.WithLabelValues(name),
		reaction:    m.reaction.WithLabelValues(name),
		closes:      make(map[pool.Cause]prometheus.Counter, len(closeCauses)),
	}
	for _, c := range closeCauses {
		o.closes[c] = m.closes.WithLabelValues(name, string(c))
	}
	o.eps.Store(&map[string]dialCounters{})
	return o
}

type upstreamObserver struct {
	m        *Metrics
	upstream string

	// Set by Upstream, read-only after.
	waits, exhausted      prometheus.Counter
	waitSeconds, reaction prometheus.Observer
	closes                map[pool.Cause]prometheus.Counter

	// eps is copied on write under mu, so Dialed reads it without a lock.
	mu  sync.Mutex
	eps atomic.Pointer[map[string]dialCounters]
}

// dialCounters are an endpoint's; errors, by reason, is read-only once made.
type dialCounters struct {
	dials  prometheus.Counter
	errors map[string]prometheus.Counter
}

func (o *upstreamObserver) Dialed(endpoint string, err error) {
	d, ok := (*o.eps.Load())[endpoint]
	if !ok {
		d = o.addEndpoint(endpoint)
	}
	d.dials.Inc()
	if err != nil {
		reason := "other"
		if de, ok := err.(*pool.DialError); ok && de.Reason != "" {
			reason = de.Reason
		}
		if c, ok := d.errors[reason]; ok {
			c.Inc()
		}
	}
}

// addEndpoint creates endpoint's dial counters, both at zero.
func (o *upstreamObserver) addEndpoint(endpoint string) dialCounters {
	o.mu.Lock()
	defer o.mu.Unlock()
	old := *o.eps.Load()
	if d, ok := old[endpoint]; ok {
		return d
	}
	d := dialCounters{
		dials:  o.m.dials.WithLabelValues(o.upstream, endpoint),
		errors: make(map[string]prometheus.Counter, len(pool.DialErrorReasons)),
	}
	for _, r := range pool.DialErrorReasons {
		d.errors[r] = o.m.dialErrors.WithLabelValues(o.upstream, endpoint, r)
	}
	eps := make(map[string]dialCounters, len(old)+1)
	for k, v := range old {
		eps[k] = v
	}
	eps[endpoint] = d
	o.eps.Store(&eps)
	return d
}

func (o *upstreamObserver) Waited(d time.Duration, exhausted bool) {
	o.waits.Inc()
	o.waitSeconds.Observe(d.Seconds())
	if exhausted {
		o.exhausted.Inc()
	}
}

func (o *upstreamObserver) Closed(_ string, cause pool.Cause) {
	if c, ok := o.closes[cause]; ok {
		c.Inc()
		return
	}
	o.m.closes.WithLabelValues(o.upstream, string(cause)).Inc() // a cause added to pool but not here
}

func (o *upstreamObserver) HalfClosed(_ pool.Cause, reaction time.Duration) {
	o.reaction.Observe(reaction.Seconds())
}

func (o *upstreamObserver) Warm(hit bool) { o.m.pairs.warm(o.upstream, hit) }

func (o *upstreamObserver) TLSHandshake(_ string, resumed bool, d time.Duration) {
	o.m.tls.handshake(o.upstream, resumed, d)
}

// Listener returns the proxy.Observer for listener name, which forwards to
// upstream. Its label children are created here, with zeros for status
// classes 2xx to 5xx of the upstream's answers and every reason of
// unstuck's own (proxy.Reasons), retry reasons dial and stale, both phases
// of the added latency, every way an app connection closes, every refuse
// reason, and every phase of an app abort and of an upstream timeout; no
// call allocates after. Calling it again for the same names returns an
// observer that feeds the same series.
func (m *Metrics) Listener(name, upstream string) proxy.Observer {
	o := &listenerObserver{
		m:         m,
		listener:  name,
		upstream:  upstream,
		response:  m.response.WithLabelValues(name, upstream),
		addedReq:  m.added.WithLabelValues(name, upstream, proxy.AddedRequest),
		addedResp: m.added.WithLabelValues(name, upstream, proxy.AddedResponse),
		open:      m.appOpen.WithLabelValues(name),
		released:  m.appReleased.WithLabelValues(name),
		codes:     make(map[answer]prometheus.Counter, 5+len(proxy.Reasons)),
		retries:   make(map[string]prometheus.Counter, len(retryReasons)),
		closed:    make(map[string]prometheus.Counter, len(closeHows)),
		refused:   make(map[string]prometheus.Counter, len(refuseReasons)),
		aborts:    make(map[string]prometheus.Counter, len(abortPhases)),
		timeouts:  make(map[string]prometheus.Counter, len(timeoutPhases)),
	}
	for class := 1; class <= 5; class++ { // 1xx: an upgrade's 101
		o.codes[answer{class, ""}] = m.requests.WithLabelValues(name, upstream, codeClasses[class], "")
	}
	for reason, class := range proxy.Reasons {
		o.codes[answer{class, reason}] = m.requests.WithLabelValues(name, upstream, codeClasses[class], reason)
	}
	for _, r := range retryReasons {
		o.retries[r] = m.retries.WithLabelValues(name, upstream, r)
	}
	for _, h := range closeHows {
		o.closed[h] = m.appClosed.WithLabelValues(name, h)
	}
	for _, r := range refuseReasons {
		o.refused[r] = m.refused.WithLabelValues(name, r)
	}
	for _, p := range abortPhases {
		o.aborts[p] = m.appAborts.WithLabelValues(name, upstream, p)
	}
	for _, p := range timeoutPhases {
		o.timeouts[p] = m.upTimeouts.WithLabelValues(name, upstream, p)
	}
	o.pairs = m.pairs.forListener(name)
	return o
}

// codeClasses is the code label of each status/100; 0 and anything past 5
// is "other".
var codeClasses = [...]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// answer is a series of unstuck_requests_total within a listener: the
// status class and unstuck's reason ("": the upstream's answer).
type answer struct {
	class  int
	reason string
}

// listenerObserver's fields are set by Listener and read-only after.
type listenerObserver struct {
	m                  *Metrics
	listener, upstream string

	codes               map[answer]prometheus.Counter // missing: created on use
	response            prometheus.Observer
	addedReq, addedResp prometheus.Observer // unstuck_proxy_added_seconds by phase
	retries             map[string]prometheus.Counter
	open                prometheus.Gauge
	released            prometheus.Gauge
	closed              map[string]prometheus.Counter
	refused             map[string]prometheus.Counter // by reason
	aborts              map[string]prometheus.Counter // by phase
	timeouts            map[string]prometheus.Counter // by phase
	pairs               listenerPairs
}

func (o *listenerObserver) Request(status int, reason string, upstream time.Duration, _ int) {
	class := status / 100
	if class < 0 || class >= len(codeClasses) {
		class = 0
	}
	if c, ok := o.codes[answer{class, reason}]; ok {
		c.Inc()
	} else { // a non-HTTP status, a reason added to proxy but not here: rare
		o.m.requests.WithLabelValues(o.listener, o.upstream, codeClasses[class], reason).Inc()
	}
	o.response.Observe(upstream.Seconds())
}

func (o *listenerObserver) Added(phase string, d time.Duration) {
	switch phase {
	case proxy.AddedRequest:
		o.addedReq.Observe(d.Seconds())
	case proxy.AddedResponse:
		o.addedResp.Observe(d.Seconds())
	default: // a phase added to proxy but not here
		o.m.added.WithLabelValues(o.listener, o.upstream, phase).Observe(d.Seconds())
	}
}

func (o *listenerObserver) Retry(reason string) {
	if c, ok := o.retries[reason]; ok {
		c.Inc()
		return
	}
	o.m.retries.WithLabelValues(o.listener, o.upstream, reason).Inc()
}

func (o *listenerObserver) AppConnOpened() { o.open.Inc() }

func (o *listenerObserver) AppConnReleased(delta int) { o.released.Add(float64(delta)) }

func (o *listenerObserver) AppConnClosed(how string) {
	o.open.Dec()
	if c, ok := o.closed[how]; ok {
		c.Inc()
		return
	}
	o.m.appClosed.WithLabelValues(o.listener, how).Inc()
}

func (o *listenerObserver) Refused(reason string) {
	if c, ok := o.refused[reason]; ok {
		c.Inc()
		return
	}
	o.m.refused.WithLabelValues(o.listener, reason).Inc() // a reason added to proxy but not here
}

func (o *listenerObserver) AppAborted(phase string) {
	if c, ok := o.aborts[phase]; ok {
		c.Inc()
		return
	}
	o.m.appAborts.WithLabelValues(o.listener, o.upstream, phase).Inc()
}

func (o *listenerObserver) UpstreamTimeout(phase string) {
	if c, ok := o.timeouts[phase]; ok {
		c.Inc()
		return
	}
	o.m.upTimeouts.WithLabelValues(o.listener, o.upstream, phase).Inc()
}
