package proxy

import "time"

// Observer is told about the listener's requests and app connections, for
// metrics. Calls come from many goroutines at once; each must be cheap. A
// Config without an Observer uses one that does nothing.
type Observer interface {
	// Request reports one answered request: the status the app got, the
	// time from the first Acquire to the end of the response header (or to
	// the failure), and how many retries it took.
	Request(status int, upstream time.Duration, retries int)
	// Retry reports a retry and why: "dial" (nothing was sent) or
	// "stale" (a reused connection failed before any response byte).
	Retry(reason string)
	// AppConnOpened and AppConnClosed bracket every app connection. how is
	// "graceful" (FIN), "reset" (RST) or "bounded" (SO_LINGER N).
	AppConnOpened()
	AppConnClosed(how string)
	// AppConnReleased reports app connections released while idle (+1)
	// and handed back or closed (-1); see park.go.
	AppConnReleased(delta int)
}

type nopObserver struct{}

func (nopObserver) Request(int, time.Duration, int) {}
func (nopObserver) Retry(string)                    {}
func (nopObserver) AppConnOpened()                  {}
func (nopObserver) AppConnClosed(string)            {}
func (nopObserver) AppConnReleased(int)             {}
