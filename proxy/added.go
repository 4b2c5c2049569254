package proxy

import "time"

// The latency unstuck itself adds to a request (Observer.Added), in two
// phases, each from the last byte of a message read on one side to its last
// byte written on the other: how much later the message arrives whole than
// it would with no proxy in between. What the upstream or the app spends
// producing or taking in the message is theirs and is not counted: an
// upstream's think time, a body the app or the upstream sends slowly. What
// unstuck does in between is: parsing aside, every rewrite, the wait for a
// pooled connection, a new connection's dial and TLS handshake, failed
// attempts and their retries, and the write system calls.
const (
	// AddedRequest: from the request's last byte read from the app to its
	// last byte written to the upstream (the flush of the attempt that
	// was answered, or the last one). The start is the moment fasthttp
	// hands over the parsed request head (its request time) for a request
	// without a body, else the read of the body's last byte. Reported at
	// the end of the exchange, once per request that was written
	// upstream whole.
	AddedRequest = "request"
	// AddedResponse: from the upstream's response's last byte read (the
	// end of its head for a response without a body, else the read that
	// returned its body's end) to the return of the last write to the
	// app that carried part of it. Reported once per upstream response
	// written to the app whole, at the request boundary (or the close, or
	// the end of an HTTP/1.0 raw stream); a write that fails drops it. A
	// response fasthttp holds back to send with the next pipelined one is
	// measured to the moment it was held.
	AddedResponse = "response"
)

// responseRead starts the response phase: t is when the response's last
// byte was read from the upstream. It runs on the goroutine that writes the
// response to the app (fasthttp's, or a raw stream's).
func (c *appConn) responseRead(t time.Time) {
	if c != nil {
		c.respRead, c.respWrote = t, time.Time{}
		c.respPending.Store(true)
	}
}

// wrote follows a write to the app while a response phase runs: the end of
// the last write so far, or, if it failed, no phase at all.
func (c *appConn) wrote(err error) {
	if err != nil {
		c.respPending.Store(false)
		return
	}
	c.respWrote = time.Now()
}

// responseWritten ends the response phase, if one runs, and reports it: the
// response's bytes have all been written.
func (c *appConn) responseWritten() {
	if c == nil || !c.respPending.Load() {
		return
	}
	end := c.respWrote
	if end.IsZero() { // held back for a pipelined response, or nothing left to write
		end = time.Now()
	}
	c.respPending.Store(false)
	c.l.obs.Added(AddedResponse, end.Sub(c.respRead))
}
