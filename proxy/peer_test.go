package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// peer is a raw TCP upstream on 127.0.0.1:0 for the wire tests: it
// accepts connections and runs script on each in a goroutine of its own,
// with a reader that records every byte the connection receives (a script
// that reads the conn itself records nothing). The script owns its
// connection until it returns; peer then closes it. At the test's end
// peer closes its listener and every connection still open, and waits
// for all its goroutines.
type peer struct {
	address string
	script  func(c net.Conn, br *bufio.Reader)
	wg      sync.WaitGroup // accept loops and scripts

	mu       sync.Mutex // guards everything below
	ln       net.Listener
	stopped  bool
	open     map[net.Conn]struct{}  // connections whose script runs
	received []*testpeer.SyncBuffer // of every connection accepted, in order
}

func startPeer(tb testing.TB, script func(c net.Conn, br *bufio.Reader)) *peer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &peer{address: ln.Addr().String(), script: script, ln: ln, open: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept(ln)
	tb.Cleanup(p.close)
	return p
}

func (p *peer) addr() string { return p.address }

func (p *peer) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		rec := &testpeer.SyncBuffer{}
		p.mu.Lock()
		if p.stopped || p.ln != ln { // a restart began after Accept returned
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.open[c] = struct{}{}
		p.received = append(p.received, rec)
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c, rec)
	}
}

// serve runs the script on c, then closes it.
func (p *peer) serve(c net.Conn, rec *testpeer.SyncBuffer) {
	defer p.wg.Done()
	defer func() {
		c.Close()
		p.mu.Lock()
		delete(p.open, c)
		p.mu.Unlock()
	}()
	p.script(c, bufio.NewReader(io.TeeReader(c, rec)))
}

// close closes the listener and every connection and waits for all
// goroutines. It may run more than once.
func (p *peer) close() {
	p.mu.Lock()
	p.stopped = true
	p.closeLocked()
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *peer) closeLocked() {
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.open {
		c.Close() // its script sees the error and ends
	}
}

// restart closes the listener and every connection, stays down for
// downFor, and listens again on the same address. It returns when the
// peer went down and came back up; zero times if the peer was closed
// before (a close during the outage leaves it closed).
func (p *peer) restart(downFor time.Duration) (from, to time.Time, err error) {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return time.Time{}, time.Time{}, nil
	}
	from = time.Now()
	p.closeLocked()
	p.mu.Unlock()
	<-time.After(downFor)        // the outage itself, not a synchronisation
	ln, err := Listen(p.address) // SO_REUSEADDR: the old connections' TIME_WAIT does not block it
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("restart: listen again on %s: %w", p.address, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	to = time.Now()
	if p.stopped {
		ln.Close()
		return from, to, nil
	}
	p.ln = ln
	p.wg.Add(1)
	go p.accept(ln)
	return from, to, nil
}

// got returns what connection i (in the order accepted) has received so
// far.
func (p *peer) got(i int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i >= len(p.received) {
		return ""
	}
	return p.received[i].String()
}

// gotAll returns what every connection has received so far, one after
// the other in the order accepted.
func (p *peer) gotAll() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	var all []byte
	for _, rec := range p.received {
		all = append(all, rec.String()...)
	}
	return all
}

func (p *peer) accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.received)
}

// openConns counts the connections whose script has not returned yet.
func (p *peer) openConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.open)
}

// okResponse is the answer of a peer that only needs requests to succeed.
const okResponse = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// serveOK is a peer script that answers every request with okResponse.
func serveOK(c net.Conn, br *bufio.Reader) {
	serveHTTP(func(*http.Request) string { return okResponse })(c, br)
}

// serveHTTP is a peer script that answers every request read from br
// with respond's bytes, once its body is read whole.
func serveHTTP(respond func(req *http.Request) string) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			if _, err := io.WriteString(c, respond(req)); err != nil {
				return
			}
		}
	}
}

// wrapListener hands out every connection it accepts wrapped by wrap.
type wrapListener struct {
	net.Listener
	wrap func(net.Conn) net.Conn
}

func (l wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.wrap(c), nil
}
