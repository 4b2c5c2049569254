package demo

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/tcpserve"
)

// peerCloseBound is how long, after its FIN, the upstream waits for the
// other end to close before it closes its own socket without a verdict.
const peerCloseBound = 5 * time.Second

// upstreamResponse is the upstream's answer to every request.
const upstreamResponse = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"

// upstream is the demo's upstream: a keep-alive HTTP/1.1 server on
// 127.0.0.1 that ends a connection idle for idle the way many upstreams
// do. It sends FIN (shutdown(SHUT_WR)), reads until the other end closes,
// and records how long that took; only then does it close its socket.
type upstream struct {
	loop *tcpserve.Loop // accepts, tracks and closes the connections
	idle time.Duration

	mu         sync.Mutex // guards everything below
	fins       int
	finToClose []time.Duration
}

// newUpstream starts an upstream on 127.0.0.1:0. The caller owns it and
// must close it.
func newUpstream(idle time.Duration) (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &upstream{loop: tcpserve.New(ln), idle: idle}
	u.loop.Serve(func(c *net.TCPConn, _ int) { u.serveConn(c) })
	return u, nil
}

// addr is the upstream's "127.0.0.1:port".
func (u *upstream) addr() string { return u.loop.Addr().String() }

// close stops accepting, closes every connection and waits for the
// upstream's goroutines.
func (u *upstream) close() { u.loop.Close() }

// serveConn owns c from accept to close: it answers requests until c has
// been idle for u.idle, then ends it with closeIdle. The loop closes c on
// return.
func (u *upstream) serveConn(c *net.TCPConn) {
	br := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(u.idle))
		if _, err := br.Peek(1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				u.closeIdle(c)
			}
			return
		}
		c.SetReadDeadline(time.Time{})
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, err = io.Copy(io.Discard, req.Body)
		req.Body.Close()
		if err != nil {
			return
		}
		if _, err := io.WriteString(c, upstreamResponse); err != nil || req.Close {
			return
		}
	}
}

// closeIdle sends FIN on an idle connection and waits, at most
// peerCloseBound, for the other end to close. serveConn closes c after.
func (u *upstream) closeIdle(c *net.TCPConn) {
	finAt := time.Now()
	if err := c.CloseWrite(); err != nil {
		return // reset by the other end, or close ran
	}
	u.mu.Lock()
	u.fins++
	u.mu.Unlock()
	c.SetReadDeadline(finAt.Add(peerCloseBound))
	_, err := io.Copy(io.Discard, c) // nil at EOF
	if err == nil || errors.Is(err, syscall.ECONNRESET) {
		u.mu.Lock()
		u.finToClose = append(u.finToClose, time.Since(finAt))
		u.mu.Unlock()
	} // else a timeout, or close ran: no verdict
}

// stats returns the connections accepted, the FINs sent on idle ones and,
// for each FIN the other end answered with a close, how long that took.
func (u *upstream) stats() (accepted, fins int, finToClose []time.Duration) {
	accepted = u.loop.Accepted()
	u.mu.Lock()
	defer u.mu.Unlock()
	return accepted, u.fins, slices.Clone(u.finToClose)
}
