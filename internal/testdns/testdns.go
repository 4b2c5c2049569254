// Package testdns is a DNS server on loopback for tests: it answers the A
// and AAAA questions for the names a test sets, and the test changes the
// answers, makes every answer SERVFAIL, or mutes it, while the code under test
// resolves through Resolver.
//
// It speaks UDP only: its answers are a few addresses, well under 512
// bytes, so the Go resolver never has to retry over TCP. Messages are
// parsed and built with golang.org/x/net/dns/dnsmessage, the package the
// Go resolver itself is built on.
package testdns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Server is a DNS server on 127.0.0.1. Its serve goroutine owns the
// socket's reads; Close closes the socket to end it.
type Server struct {
	pc   net.PacketConn
	done chan struct{} // closed when serve returns

	mu      sync.Mutex // guards everything below
	names   map[string][]netip.Addr
	failing bool
	mute    bool
	queries map[string]int // questions received, by name
}

// New starts a server on 127.0.0.1:0. The caller owns it and must Close
// it.
func New() (*Server, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{
		pc:      pc,
		done:    make(chan struct{}),
		names:   map[string][]netip.Addr{},
		queries: map[string]int{},
	}
	go s.serve()
	return s, nil
}

// Start is New for a test: it fails tb on error and closes the server
// when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Addr is the server's "127.0.0.1:port".
func (s *Server) Addr() string { return s.pc.LocalAddr().String() }

// Close stops the server and waits for its goroutine. Safe to call more
// than once.
func (s *Server) Close() {
	s.pc.Close()
	<-s.done
}

// Set makes name answer with addrs (IPv4 ones for A, IPv6 ones for AAAA),
// from the next question on. No addrs: the name exists with no address
// (NOERROR, no answer). A name never set is NXDOMAIN.
func (s *Server) Set(name string, addrs ...string) {
	as := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		as[i] = netip.MustParseAddr(a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names[fqdn(name)] = as
}

// Fail makes every answer SERVFAIL while on: a DNS server that is down in
// all but name.
func (s *Server) Fail(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing = on
}

// Mute makes the server answer nothing while on: a DNS server that is
// unreachable, whose lookups last until their timeout.
func (s *Server) Mute(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mute = on
}

// Queries returns how many questions about name the server has received
// (A and AAAA each count).
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[fqdn(name)]
}

// Resolver returns a Go resolver that asks this server, whatever
// /etc/resolv.conf names (its options, such as search domains, still
// apply; the names this server does not know are NXDOMAIN).
//
// Its connections close when their lookup is cancelled: the Go resolver
// itself only sets the attempt's deadline (resolv.conf's timeout, 5s by
// default) on them, and a cancelled lookup's goroutines would outlive the
// test, for goleak to see.
func (s *Server) Resolver() *net.Resolver {
	addr := s.Addr()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "udp", addr)
			if err == nil {
				context.AfterFunc(ctx, func() { c.Close() })
			}
			return c, err
		},
	}
}

// serve answers each question until Close.
func (s *Server) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // a stray ICMP error on UDP: keep serving
		}
		if out, ok := s.answer(buf[:n]); ok {
			s.pc.WriteTo(out, from)
		}
	}
}

// answer builds the response to the query in msg; false for a message
// that is no query it can answer (it is dropped, as a server would).
func (s *Server) answer(msg []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	name := strings.ToLower(q.Name.String())

	s.mu.Lock()
	s.queries[name]++
	addrs, known := s.names[name]
	failing, mute := s.failing, s.mute
	s.mu.Unlock()
	if mute {
		return nil, false
	}

	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true,
		RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	switch {
	case failing:
		rh.RCode = dnsmessage.RCodeServerFailure
	case !known:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return nil, false
	}
	if rh.RCode == dnsmessage.RCodeSuccess {
		rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
		for _, a := range addrs {
			switch {
			case q.Type == dnsmessage.TypeA && a.Is4():
				err = b.AResource(rr, dnsmessage.AResource{A: a.As4()})
			case q.Type == dnsmessage.TypeAAAA && a.Is6():
				err = b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: a.As16()})
			}
			if err != nil {
				return nil, false
			}
		}
	}
	out, err := b.Finish()
	return out, err == nil
}

func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}
