package testpeer

import (
	"errors"
	"io"
	"slices"
	"syscall"
	"testing"
	"time"
)

// IdleCloserOptions configure an IdleCloser.
type IdleCloserOptions struct {
	Options
	// IdleTimeout is how long a connection may wait for its next request
	// before the server sends FIN. Zero means 200ms.
	IdleTimeout time.Duration
	// PeerCloseBound is how long, after its FIN, the server waits for the
	// peer to close before it counts the peer in PeerNeverClosed and closes
	// its own socket. Zero means 5s.
	PeerCloseBound time.Duration
}

// IdleCloser is a keep-alive server that ends idle connections the way many
// upstreams do: after IdleTimeout without a request in progress it sends FIN
// (shutdown(SHUT_WR)), keeps reading until the peer closes (EOF or
// ECONNRESET) and measures how long that took. Data that arrives after its
// FIN is discarded (see LateWrites). Only then does it close its socket.
type IdleCloser struct {
	*Server
}

type idleStats struct {
	fins        int
	latencies   []time.Duration
	neverClosed int
	lateWrites  int
}

// NewIdleCloser starts an IdleCloser on 127.0.0.1:0. The caller owns it and
// must Close it.
func NewIdleCloser(opts IdleCloserOptions) (*IdleCloser, error) {
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 200 * time.Millisecond
	}
	if opts.PeerCloseBound <= 0 {
		opts.PeerCloseBound = 5 * time.Second
	}
	s, err := newServer(opts.Options, func(s *Server) {
		s.idleTimeout = opts.IdleTimeout
		s.peerCloseBound = opts.PeerCloseBound
	})
	if err != nil {
		return nil, err
	}
	return &IdleCloser{s}, nil
}

// StartIdleCloser is NewIdleCloser for a test: it fails tb on error and
// closes the server when the test ends.
func StartIdleCloser(tb testing.TB, opts IdleCloserOptions) *IdleCloser {
	tb.Helper()
	s, err := NewIdleCloser(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// closeIdle sends FIN on an idle connection and waits, at most
// peerCloseBound, for the peer to close. serveConn closes the socket after.
func (s *Server) closeIdle(cn *conn) {
	finAt := time.Now()
	if err := cn.c.CloseWrite(); err != nil {
		return // reset by the peer, or Close ran
	}
	s.mu.Lock()
	s.idle.fins++
	s.mu.Unlock()
	cn.c.SetReadDeadline(finAt.Add(s.peerCloseBound))
	// Read until the peer closes; the deadline bounds the loop. br is
	// empty (Peek timed out), so read the socket directly.
	buf := make([]byte, 4096)
	late := false
	var err error
	for err == nil {
		var n int
		n, err = cn.c.Read(buf)
		if n > 0 && !late {
			late = true
			s.mu.Lock()
			s.idle.lateWrites++
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == io.EOF || errors.Is(err, syscall.ECONNRESET): // the peer closed
		s.idle.latencies = append(s.idle.latencies, time.Since(finAt))
	case isTimeout(err):
		s.idle.neverClosed++
	} // else Close closed the socket: no verdict
}

// Fins returns how many idle connections the server has sent FIN on.
func (s *IdleCloser) Fins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idle.fins
}

// CloseLatencies returns, per connection the server closed for idleness and
// whose peer then closed, the time from the server's FIN to the peer's
// close, in the order the peers closed.
func (s *IdleCloser) CloseLatencies() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.idle.latencies)
}

// PeerNeverClosed returns how many idle-closed connections were not closed
// by the peer within PeerCloseBound of the FIN.
func (s *IdleCloser) PeerNeverClosed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idle.neverClosed
}

// LateWrites returns how many idle-closed connections received data after
// the server's FIN: a peer that sent a request on a connection it should
// have known was closing (the keep-alive race, lost).
func (s *IdleCloser) LateWrites() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idle.lateWrites
}
