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
	ln   net.Listener
	idle time.Duration
	wg   sync.WaitGroup // the accept loop and one per connection

	mu         sync.Mutex // guards everything below
	closed     bool
	conns      map[*net.TCPConn]struct{} // open, for close
	accepted   int
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
	u := &upstream{ln: ln, idle: idle, conns: map[*net.TCPConn]struct{}{}}
	u.wg.Add(1)
	go u.acceptLoop()
	return u, nil
}

// addr is the upstream's "127.0.0.1:port".
func (u *upstream) addr() string { return u.ln.Addr().String() }

// close stops accepting, closes every connection and waits for the
// upstream's goroutines.
func (u *upstream) close() {
	u.ln.Close()
	u.mu.Lock()
	u.closed = true
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

func (u *upstream) acceptLoop() {
	defer u.wg.Done()
	for {
		u.wg.Add(1) // for serveConn, before the blocking Accept
		c, err := u.ln.Accept()
		if err != nil {
			u.wg.Done()
			return // closed: on loopback nothing else is worth a retry
		}
		tc := c.(*net.TCPConn)
		u.mu.Lock()
		if u.closed { // close ran between Accept and here
			u.mu.Unlock()
			tc.Close()
			u.wg.Done()
			return
		}
		u.accepted++
		u.conns[tc] = struct{}{}
		u.mu.Unlock()
		go u.serveConn(tc)
	}
}

// serveConn owns c from accept to close: it answers requests until c has
// been idle for u.idle, then ends it with closeIdle.
func (u *upstream) serveConn(c *net.TCPConn) {
	defer u.wg.Done()
	defer func() {
		u.mu.Lock()
		delete(u.conns, c)
		u.mu.Unlock()
		c.Close()
	}()
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
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.accepted, u.fins, slices.Clone(u.finToClose)
}
