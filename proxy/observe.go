package proxy

import "time"

// Observer is told about the listener's requests and app connections, for
// metrics. Calls come from many goroutines at once; each must be cheap. A
// Config without an Observer uses one that does nothing.
type Observer interface {
	// Request reports one answered request: the status the app got; why
	// unstuck answered it itself (a Reason* or Refuse* constant), "" for
	// the upstream's answer; the time from the first Acquire to the end of
	// the response header (or to the failure); and how many retries it
	// took.
	Request(status int, reason string, upstream time.Duration, retries int)
	// Retry reports a retry and why: "dial" (nothing was sent) or
	// "stale" (a reused connection failed before any response byte; the
	// retry goes to a newly dialed connection).
	Retry(reason string)
	// Refused reports a request answered with a 4xx by unstuck itself and
	// never forwarded (or aborted upstream before it was complete):
	// reason is one of the Refuse* constants.
	Refused(reason string)
	// AppAborted reports an app that closed or reset its connection while
	// its request was in flight (logged as 499); phase is "request"
	// (before or while sending upstream), "response_header" or
	// "response_body".
	AppAborted(phase string)
	// UpstreamTimeout reports an upstream wait that ran out: phase is
	// "response_header", "response_idle" or "write".
	UpstreamTimeout(phase string)
	// AppConnOpened and AppConnClosed bracket every app connection. how is
	// "graceful" (FIN), "reset" (RST) or "bounded" (SO_LINGER N).
	AppConnOpened()
	AppConnClosed(how string)
	// AppConnReleased reports app connections released while idle (+1)
	// and handed back or closed (-1); see park.go.
	AppConnReleased(delta int)
	// PairOpened and PairEnded bracket every TCP pair (tcp mode, or an
	// HTTP Upgrade): cause is one of the Pair* constants, and the bytes
	// moved each way. A pair that never got an upstream connection ends
	// (PairDialError) without opening.
	PairOpened()
	PairEnded(cause string, toUpstream, toApp int64)
	// Added reports the time one request or response spent in unstuck
	// itself, by phase, AddedRequest or AddedResponse: see added.go for
	// where each interval begins and ends.
	Added(phase string, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Request(int, string, time.Duration, int) {}
func (nopObserver) Retry(string)                            {}
func (nopObserver) Refused(string)                          {}
func (nopObserver) AppAborted(string)                       {}
func (nopObserver) UpstreamTimeout(string)                  {}
func (nopObserver) AppConnOpened()                          {}
func (nopObserver) AppConnClosed(string)                    {}
func (nopObserver) AppConnReleased(int)                     {}
func (nopObserver) PairOpened()                             {}
func (nopObserver) PairEnded(string, int64, int64)          {}
func (nopObserver) Added(string, time.Duration)             {}

// Reasons for Observer.Request, beside the Refuse* ones: why unstuck
// answered a request itself instead of passing the upstream's answer on.
// They are the access log's response_flag and metric label values: keep
// them stable.
const (
	ReasonDialError     = "dial_error"     // no endpoint took a connection (502; 504 when the dial timed out)
	ReasonPoolExhausted = "pool_exhausted" // max_conns busy for the whole acquire_timeout (503)
	ReasonNoEndpoint    = "no_endpoint"    // every endpoint out: unhealthy, ejected or gone from DNS (503)
	ReasonShutdown      = "shutdown"       // the pool or listener is shutting down (503)
	ReasonTimeout       = "timeout"        // timeouts.response_header or write, or the kernel's (504)
	ReasonUpstreamReset = "upstream_reset" // the upstream closed or reset the connection before its response head (502)
	ReasonBadResponse   = "bad_response"   // the upstream's response head was malformed or too large (502)
	ReasonAppClosed     = "app_closed"     // the app went away mid-exchange: logged as 499, nothing sent
)

// Reasons is every reason Observer.Request may report, with the status
// class (status/100) it comes with.
var Reasons = map[string]int{
	ReasonDialError: 5, ReasonPoolExhausted: 5, ReasonNoEndpoint: 5, ReasonShutdown: 5,
	ReasonTimeout: 5, ReasonUpstreamReset: 5, ReasonBadResponse: 5, ReasonAppClosed: 4,
	RefuseBadRequest: 4, RefuseBodyTooLarge: 4, RefuseBodyTimeout: 4, RefuseBodyIncomplete: 4,
}

// Reasons for Observer.Refused; metric label values, keep them stable.
const (
	RefuseBadRequest     = "bad_request"      // malformed or ambiguous request (400)
	RefuseHeaderTooLarge = "header_too_large" // limits.request_header_bytes (431)
	RefuseURITooLong     = "uri_too_long"     // request line too long (414)
	RefuseBodyTooLarge   = "body_too_large"   // limits.request_body_bytes (413)
	RefuseHeaderTimeout  = "header_timeout"   // read_header_timeout (408)
	RefuseBodyTimeout    = "body_timeout"     // body_read_timeout (408)
	RefuseBodyIncomplete = "body_incomplete"  // the app ended its connection mid-body (400)
	RefuseMethod         = "method"           // CONNECT and the like (405/501)
	RefuseUpgrade        = "upgrade"          // an upgrade request on a listener with upgrade: false (501)
	RefuseConnLimit      = "conn_limit"       // limits.max_conns reached: accept waited (http) or the connection was reset (tcp)
	RefuseNotCaptured    = "not_captured"     // a capture listener's connection made to it directly, not redirected: reset at accept
	RefuseCaptureLoop    = "capture_loop"     // a capture listener's connection made by unstuck's own UID: its own connection captured again, reset at accept
)
