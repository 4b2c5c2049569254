package tcpserve

import (
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/wait"
)

// TestCloseEndsHandlers: Close closes the connections whose handlers are
// blocked reading and returns only once every handler has.
func TestCloseEndsHandlers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(ln)
	var mu sync.Mutex
	var ns, ended []int
	l.Serve(func(c *net.TCPConn, n int) {
		mu.Lock()
		ns = append(ns, n)
		mu.Unlock()
		c.Read(make([]byte, 1)) // until Close closes c
		mu.Lock()
		ended = append(ended, n)
		mu.Unlock()
	})
	for range 2 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	wait.Until(t, 5*time.Second, "both handlers running", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ns) == 2
	})
	if got := l.Open(); got != 2 {
		t.Errorf("Open = %d, want 2", got)
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	mu.Lock()
	slices.Sort(ns)
	slices.Sort(ended)
	if !slices.Equal(ns, []int{1, 2}) || !slices.Equal(ended, ns) {
		t.Errorf("accept numbers %v, ended %v: want [1 2] both", ns, ended)
	}
	mu.Unlock()
	if l.Accepted() != 2 || l.Open() != 0 {
		t.Errorf("after Close: Accepted %d, Open %d; want 2, 0", l.Accepted(), l.Open())
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
