package pool

import (
	"errors"
	"io"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// finServer accepts connections and, on demand, half-closes all of them
// and measures how long each peer takes to close its side.
type finServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
	ready chan struct{} // one token per accepted connection
}

func newFinServer(t *testing.T) *finServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &finServer{ln: ln, ready: make(chan struct{}, 100000)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.ready <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	return s
}

func (s *finServer) addr() string { return s.ln.Addr().String() }

// finAll sends FIN on every accepted connection and returns, per
// connection, the time from its FIN until the peer's close reached us.
func (s *finServer) finAll(t *testing.T, bound time.Duration) []time.Duration {
	t.Helper()
	s.mu.Lock()
	conns := append([]net.Conn(nil), s.conns...)
	s.mu.Unlock()
	lat := make([]time.Duration, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(bound))
			start := time.Now()
			c.(*net.TCPConn).CloseWrite()
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				lat[i] = -1
				return
			}
			lat[i] = time.Since(start)
		}()
	}
	wg.Wait()
	return lat
}

func newTestPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestIdleConnectionClosedOnPeerFIN(t *testing.T) {
	for _, linger := range []string{"graceful", "reset"} {
		t.Run(linger, func(t *testing.T) {
			srv := newFinServer(t)
			l, _ := sockopt.ParseLinger(linger)
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, Linger: l, IdleTimeout: time.Hour})
			const n = 200
			var conns []*Conn
			for range n {
				c, err := p.Acquire()
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				<-srv.ready
			}
			for _, c := range conns {
				p.Release(c)
			}
			lat := srv.finAll(t, 5*time.Second)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if lat[0] < 0 {
				t.Fatalf("a connection was not closed within 5s of its FIN")
			}
			t.Logf("FIN to close, %d idle connections: p50 %v p99 %v max %v", n, lat[n/2], lat[n*99/100], lat[n-1])
			p.mu.Lock()
			idle := len(p.idleByID)
			open := p.eps[0].conns
			p.mu.Unlock()
			if idle != 0 || open != 0 {
				t.Fatalf("after FINs: %d idle, %d open; want 0, 0", idle, open)
			}
		})
	}
}
