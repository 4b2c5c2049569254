package proxy

import "time"

// The latency unstuck itself adds to a request (Observer.Added), in two
// phases, each from the last byte of a message read on one side to its last
// byte written on the other: how much later the message arrives whole than
// it would with nothing in between. What the upstream or the app spends
// producing or taking in a message is theirs and is not counted: the
// upstream's think time, a body either side sends slowly. What unstuck does
// in between is: every rewrite, the wait for a pooled connection, a new
// connection's dial and TLS handshake, failed attempts and their retries,
// the write system calls, and a wait for an app that does not read while
// unstuck holds the message's last bytes.
//
// Where each end is taken, and where that is not exactly the byte:
const (
	// AddedRequest: from the request's last byte read from the app to its
	// last byte written to the upstream: the return of the flush of the
	// last attempt. The start is fasthttp's request time for a request
	// without a body or with one fasthttp read whole before the handler
	// (it takes it just after parsing the head, so the parse is left
	// out), else the return of the read that ended the body. Reported at
	// the end of the exchange, once per request written upstream whole by
	// its last attempt, whatever the answer.
	AddedRequest = "request"
	// AddedResponse: from the upstream response's last byte read to the
	// return of the last write to the app after it. The start is the
	// return of the response head's read and parse for a response without
	// a body, else the return of the read that ended the body (for a
	// chunked body, its last chunk; the bytes before it may have been
	// written to the app already). Reported once per upstream response
	// written to the app whole, at the request boundary (fasthttp's
	// StateIdle), the connection's close, or the end of an HTTP/1.0 raw
	// stream; a write that fails drops it. A response fasthttp holds back
	// to send with the next pipelined one is measured to the moment it
	// was held. A 101 has none: what follows is a TCP pair.
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
