package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// streamingServer is the server of the classic CLOSE_WAIT victim: it reads
// records and closes each connection after a random 100-600 ms (an idle
// timeout, a restart, a load balancer: the client cannot tell which).
type streamingServer struct {
	ln      net.Listener
	wg      sync.WaitGroup
	records atomic.Int64
	closes  atomic.Int64
}

func startStreamingServer(t *testing.T) *streamingServer {
	t.Helper()
	return startStreamingServerAt(t, "127.0.0.1:0")
}

// startStreamingServerAt is startStreamingServer listening on addr.
func startStreamingServerAt(t *testing.T, addr string) *streamingServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &streamingServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for i := uint64(0); ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go s.serve(c, rand.New(rand.NewPCG(i, 1)))
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *streamingServer) serve(c net.Conn, r *rand.Rand) {
	defer s.wg.Done()
	defer s.closes.Add(1)
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Duration(100+r.IntN(500)) * time.Millisecond))
	br := bufio.NewReader(c)
	for {
		if _, err := br.ReadString('\n'); err != nil {
			return
		}
		s.records.Add(1)
	}
}

// streamingClient is the victim: it writes a record every 50 ms on one
// long connection and, when a write fails, dials a new one, never closing
// the old socket. Its abandoned sockets stay open until stop.
type streamingClient struct {
	addr    string
	mu      sync.Mutex
	all     []net.Conn
	written atomic.Int64
	redials atomic.Int64
	done    chan struct{}
	wg      sync.WaitGroup
}

func startStreamingClient(addr string) *streamingClient {
	c := &streamingClient{addr: addr, done: make(chan struct{})}
	c.wg.Add(1)
	go c.run()
	return c
}

func (c *streamingClient) run() {
	defer c.wg.Done()
	var conn net.Conn
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		if conn == nil {
			nc, err := net.DialTimeout("tcp", c.addr, time.Second)
			if err == nil {
				c.mu.Lock()
				c.all = append(c.all, nc)
				c.mu.Unlock()
				conn = nc
			}
		}
		if conn != nil {
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := fmt.Fprintf(conn, "record %d\n", i); err != nil {
				conn = nil // abandoned, never closed: the legacy bug
				c.redials.Add(1)
			} else {
				c.written.Add(1)
			}
		}
		select {
		case <-tick.C:
		case <-c.done:
			return
		}
	}
}

func (c *streamingClient) stop() {
	close(c.done)
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, nc := range c.all {
		nc.Close()
	}
}

// TestE2EStreamingClientNeverInCloseWait is the scenario unstuck exists
// for, end to end: streaming clients that reconnect on error but never
// close a socket, and a server that closes their connections. Directly,
// their abandoned sockets pile up in CLOSE_WAIT; through unstuck (tcp
// mode, half_close: close), none is ever seen in CLOSE_WAIT on the
// clients' side, sampled every 2 ms for the whole run, in the test's own
// network namespace.
func TestE2EStreamingClientNeverInCloseWait(t *testing.T) {
	if !isolated(t) {
		return
	}
	const clients, run = 4, 3 * time.Second
	srv := startStreamingServer(t)
	srvAddr := srv.ln.Addr().String()

	t.Run("direct, the control", func(t *testing.T) {
		worst := streamAndSample(t, srvAddr, clients, run)
		if worst == 0 {
			t.Fatalf("no client socket ever sat in CLOSE_WAIT without unstuck: the scenario does not reproduce the bug")
		}
		t.Logf("without unstuck: up to %d client sockets in CLOSE_WAIT", worst)
	})

	t.Run("through unstuck", func(t *testing.T) {
		listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
		file := filepath.Join(t.TempDir(), "unstuck.yaml")
		yaml := fmt.Sprintf(`listeners:
  stream:
    listen: %s
    protocol: tcp
    half_close: close
upstreams:
  backend:
    endpoints: [%q]
    pool: {min_idle: 2}
`, listen, srvAddr)
		if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startUnstuck(t, childOpts{}, "--config", file)
		c.waitAccepting(t, listen)
		before := srv.closes.Load()
		if worst := streamAndSample(t, listen, clients, run); worst != 0 {
			t.Errorf("through unstuck: %d client sockets in CLOSE_WAIT at once; want none, ever", worst)
		}
		if n := srv.closes.Load() - before; n < clients {
			t.Errorf("the server closed %d connections; the test wants it to close some", n)
		}
		c.stop(t)
	})
}

// streamAndSample runs streaming clients against addr for d and returns
// the most client sockets (connections to addr, the clients' side) seen in
// CLOSE_WAIT in one sample.
func streamAndSample(t *testing.T, addr string, clients int, d time.Duration) int {
	t.Helper()
	ap, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var cs []*streamingClient
	for range clients {
		cs = append(cs, startStreamingClient(addr))
	}
	clientSide := sockstate.RemotePort(uint16(ap.Port))
	worst, samples := 0, 0
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		counts, err := sockstate.Count(clientSide)
		if err != nil {
			t.Fatal(err)
		}
		worst = max(worst, counts[sockstate.CloseWait])
		samples++
		time.Sleep(2 * time.Millisecond) // the sampling period, not a synchronisation
	}
	var written, redials int64
	for _, c := range cs {
		c.stop()
		written += c.written.Load()
		redials += c.redials.Load()
	}
	t.Logf("%d samples; clients wrote %d records and redialed %d times", samples, written, redials)
	if redials == 0 {
		t.Errorf("no client ever redialed: the server closed nothing the clients noticed")
	}
	return worst
}
