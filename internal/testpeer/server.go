package testpeer

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/tcpserve"
)

// Options are common to every server. The zero value is a prompt keep-alive
// server that keeps the headers of the last 64 requests.
type Options struct {
	// Delay is waited before every response, on top of any /sleep/D.
	Delay time.Duration
	// KeepHeaders is how many of the most recent requests keep their full
	// header for LastHeaders and HeadersFor. Zero means 64.
	KeepHeaders int
	// Logf, if set, gets one line per request the server could not parse
	// (t.Logf fits). Peers that hang up are not logged.
	Logf func(format string, args ...any)
	// Listen is the address to listen on, such as "127.0.0.3:41234" for
	// one of several endpoints that share a port, as the addresses of a
	// name in DNS do. Empty means "127.0.0.1:0".
	Listen string
}

// Record is one request a server received completely (head and body).
// A request whose body never fully arrived is not recorded.
type Record struct {
	Conn       int    // accept number of the connection, from 1
	ConnSeq    int    // number of the request on its connection, from 1
	Method     string // as sent
	Target     string // request target as sent: path and query
	Path       string // Target without the query
	RequestID  string // X-Request-Id, "" if absent
	BodyLen    int64
	BodySha256 string // hex
	At         time.Time
}

// HeaderRecord is the header of one recent request, as received: every
// field, including Host and hop-by-hop fields, with canonical keys.
type HeaderRecord struct {
	RequestID string
	Header    http.Header
}

// Server is a keep-alive HTTP/1.1 server that records what it receives.
// IdleCloser and RaceCloser are Servers that also close connections on
// their own.
type Server struct {
	loop *tcpserve.Loop // accepts, tracks and closes the connections
	opts Options
	// policy fields are set before the accept loop starts and never change.
	idleTimeout    time.Duration // >0: IdleCloser
	peerCloseBound time.Duration
	race           *raceState // non-nil: RaceCloser

	mu         sync.Mutex // guards everything below
	responses  int
	records    []Record
	headers    []HeaderRecord // ring of the last opts.KeepHeaders
	headerNext int            // next slot of headers to overwrite once full
	idle       idleStats
}

// conn is one accepted connection. Its goroutine (serveConn) owns reads and
// writes; Close may close it from another goroutine to unblock them.
type conn struct {
	id int // accept number, from 1
	c  *net.TCPConn
}

// NewServer starts a well-behaved keep-alive server on 127.0.0.1:0.
// The caller owns it and must Close it.
func NewServer(opts Options) (*Server, error) {
	return newServer(opts, func(*Server) {})
}

// StartServer is NewServer for a test: it fails tb on error and closes the
// server when the test ends.
func StartServer(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func newServer(opts Options, policy func(*Server)) (*Server, error) {
	if opts.KeepHeaders <= 0 {
		opts.KeepHeaders = 64
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("testpeer: %w", err)
	}
	s := &Server{loop: tcpserve.New(ln), opts: opts}
	policy(s)
	s.loop.Serve(func(c *net.TCPConn, n int) { s.serveConn(&conn{id: n, c: c}) })
	return s, nil
}

// Addr is the server's "127.0.0.1:port" (or the address of Options.Listen).
func (s *Server) Addr() string { return s.loop.Addr().String() }

// Close stops accepting, closes every connection (interrupting any delay or
// read in progress) and waits for all of the server's goroutines. It is safe
// to call more than once; later calls return nil.
func (s *Server) Close() error { return s.loop.Close() }

func (s *Server) record(r Record, h http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = append(s.records, r)
	hr := HeaderRecord{RequestID: r.RequestID, Header: h}
	if len(s.headers) < s.opts.KeepHeaders {
		s.headers = append(s.headers, hr)
		return
	}
	s.headers[s.headerNext] = hr
	s.headerNext = (s.headerNext + 1) % len(s.headers)
}

func (s *Server) countResponse() {
	s.mu.Lock()
	s.responses++
	s.mu.Unlock()
}

// Received returns every request received so far, in the order their bodies
// completed.
func (s *Server) Received() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.records)
}

// Duplicates returns, sorted, the non-empty request ids received more than
// once.
func (s *Server) Duplicates() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]int, len(s.records))
	var dups []string
	for _, r := range s.records {
		if r.RequestID == "" {
			continue
		}
		seen[r.RequestID]++
		if seen[r.RequestID] == 2 {
			dups = append(dups, r.RequestID)
		}
	}
	slices.Sort(dups)
	return dups
}

// RecentHeaders returns the headers of the last KeepHeaders requests,
// oldest first. The caller may modify them.
func (s *Server) RecentHeaders() []HeaderRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]HeaderRecord, 0, len(s.headers))
	for i := range s.headers {
		hr := s.headers[(s.headerNext+i)%len(s.headers)]
		out = append(out, HeaderRecord{RequestID: hr.RequestID, Header: hr.Header.Clone()})
	}
	return out
}

// LastHeaders returns the header of the most recent request, or nil.
func (s *Server) LastHeaders() http.Header {
	hs := s.RecentHeaders()
	if len(hs) == 0 {
		return nil
	}
	return hs[len(hs)-1].Header
}

// HeadersFor returns the header of the most recent request with this
// X-Request-Id among the last KeepHeaders, or nil.
func (s *Server) HeadersFor(requestID string) http.Header {
	hs := s.RecentHeaders()
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i].RequestID == requestID {
			return hs[i].Header
		}
	}
	return nil
}

// Conns returns how many connections the server has accepted.
func (s *Server) Conns() int { return s.loop.Accepted() }

// OpenConns returns how many accepted connections are not closed yet.
func (s *Server) OpenConns() int { return s.loop.Open() }

// Responses returns how many responses the server has written in full.
func (s *Server) Responses() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.responses
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf("testpeer %s: "+format, append([]any{s.Addr()}, args...)...)
	}
}

// sleep waits d; false means the server is closing.
func (s *Server) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.loop.Done():
		return false
	}
}
