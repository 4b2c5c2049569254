package health

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeTarget fails the dials of the addresses in down, and records what
// the checker tells it.
type fakeTarget struct {
	mu      sync.Mutex
	down    map[string]bool
	passed  map[string][]bool // each DialCheck's outcome, in order
	told    map[string][]bool // each SetHealthy, in order: the nth is the nth check's verdict
	checked chan string
}

func (f *fakeTarget) EndpointAddrs() []string { return []string{"a:1", "b:1"} }

func (f *fakeTarget) DialCheck(_ context.Context, addr string) (net.Conn, error) {
	f.mu.Lock()
	down := f.down[addr]
	f.passed[addr] = append(f.passed[addr], !down)
	f.mu.Unlock()
	if down {
		return nil, errors.New("refused")
	}
	c1, c2 := net.Pipe()
	c2.Close()
	return c1, nil
}

func (f *fakeTarget) SetHealthy(addr string, healthy bool) {
	f.mu.Lock()
	f.told[addr] = append(f.told[addr], healthy)
	f.mu.Unlock()
	select {
	case f.checked <- addr:
	default:
	}
}

// TestThresholds: unhealthy failures in a row take an endpoint out,
// healthy passes in a row bring it back; the other is untouched.
func TestThresholds(t *testing.T) {
	f := &fakeTarget{down: map[string]bool{"b:1": true}, passed: map[string][]bool{}, told: map[string][]bool{}, checked: make(chan string, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Run(ctx, Config{Interval: 4 * time.Millisecond, Healthy: 2, Unhealthy: 3}, f)
		close(done)
	}()
	waitTold := func(addr string, n int) []bool {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			f.mu.Lock()
			got := append([]bool(nil), f.told[addr]...)
			f.mu.Unlock()
			if len(got) >= n {
				return got[:n]
			}
			select {
			case <-f.checked:
			case <-deadline:
				t.Fatalf("%s: told %v; waited for %d results", addr, got, n)
			}
		}
	}
	if got := waitTold("b:1", 3); got[0] != true || got[1] != true || got[2] != false {
		t.Errorf("b:1 after three failures: told %v; want up, up, then down", got)
	}
	f.mu.Lock()
	f.down["b:1"] = false
	f.mu.Unlock()
	got := waitTold("b:1", 8)
	f.mu.Lock()
	passed := f.passed["b:1"][:len(got)]
	f.mu.Unlock()
	// The first check that passed leaves b:1 down (Healthy is 2); the
	// second brings it back.
	first := slices.Index(passed, true)
	if first < 3 || first+1 >= len(got) || got[first] || !got[first+1] {
		t.Errorf("b:1 after it recovered: checks passed %v, told %v; want down at the first pass, up at the second", passed, got)
	}
	for _, h := range waitTold("a:1", 3) {
		if !h {
			t.Errorf("a:1, which never failed, was taken out")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
}
