package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/wait"
)

// killable is an HTTP upstream on a fixed address that can be killed (its
// listener and every connection closed at once) and started again there.
type killable struct {
	addr   string
	served atomic.Int64
	mu     sync.Mutex
	srv    *http.Server
	done   chan struct{}
}

func startKillable(t *testing.T) *killable {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &killable{addr: ln.Addr().String()}
	k.serve(ln)
	t.Cleanup(k.kill)
	return k
}

func (k *killable) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path != "/healthz" {
			k.served.Add(1) // the app's requests, not the checks
		}
		fmt.Fprint(w, "ok")
	})}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	k.mu.Lock()
	k.srv, k.done = srv, done
	k.mu.Unlock()
}

func (k *killable) kill() {
	k.mu.Lock()
	srv, done := k.srv, k.done
	k.srv = nil
	k.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

func (k *killable) restart(t *testing.T) {
	ln, err := net.Listen("tcp", k.addr)
	if err != nil {
		t.Fatal(err)
	}
	k.serve(ln)
}

// endpointState reads an endpoint's state from the sidecar's pool.
func endpointState(sc *Sidecar, upstream, addr string) string {
	sc.mu.Lock()
	u := sc.upstreams[upstream]
	sc.mu.Unlock()
	for _, st := range u.pool.Stats() {
		if st.Endpoint == addr {
			return st.State
		}
	}
	return "gone"
}

// TestEndpointKilledAndRestarted: a bounded load over three endpoints; one
// is killed, and later started again. No GET that starts after the pool
// took the dead endpoint out fails (only those in flight at the kill
// may), and traffic is back on it within one health interval of its
// return.
func TestEndpointKilledAndRestarted(t *testing.T) {
	const interval = 200 * time.Millisecond
	eps := []*killable{startKillable(t), startKillable(t), startKillable(t)}
	cfg := testConfig(eps[0].addr, eps[1].addr, eps[2].addr)
	u := cfg.Upstreams["backend"]
	u.Health.Interval, u.Health.Path, u.Health.Healthy, u.Health.Unhealthy = interval, "/healthz", 1, 1
	u.Health.Timeout = 100 * time.Millisecond
	cfg.Upstreams["backend"] = u
	sc := start(t, cfg)
	addr := sc.ListenerAddr("app").String()

	type result struct {
		start time.Time
		err   error
	}
	var mu sync.Mutex
	var results []result
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			for n := 0; n < 20000; n++ {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				began := time.Now()
				resp, err := client.Get("http://" + addr + "/")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				mu.Lock()
				results = append(results, result{began, err})
				mu.Unlock()
				time.Sleep(2 * time.Millisecond) // pacing of the load, not a synchronisation
			}
		})
	}
	victim := eps[1]
	wait.Until(t, 5*time.Second, "traffic on every endpoint", func() bool {
		return eps[0].served.Load() > 10 && eps[1].served.Load() > 10 && eps[2].served.Load() > 10
	})
	killed := time.Now()
	victim.kill()
	wait.Until(t, 5*time.Second, "the dead endpoint taken out", func() bool {
		return endpointState(sc, "backend", victim.addr) != "up"
	})
	out := time.Now()
	servedBefore := eps[0].served.Load() + eps[2].served.Load()
	wait.Until(t, 5*time.Second, "load on the other two", func() bool {
		return eps[0].served.Load()+eps[2].served.Load() > servedBefore+200
	})
	victim.served.Store(0)
	victim.restart(t)
	back := time.Now()
	t.Logf("restarted at %s", back.Format("15:04:05.000"))
	wait.Until(t, 5*time.Second, "traffic on the restarted endpoint", func() bool { return victim.served.Load() > 1 })
	returned := time.Since(back)
	close(stop)
	wg.Wait()

	var beforeOut, afterOut, total int
	for _, r := range results {
		total++
		switch {
		case r.err == nil:
		case r.start.Before(out):
			beforeOut++
		default:
			afterOut++
			t.Errorf("a GET started %v after the endpoint was taken out failed: %v", r.start.Sub(out), r.err)
		}
	}
	t.Logf("%d GETs; taken out %v after the kill (%d failed in between); back in traffic %v after its restart (health interval %v)",
		total, out.Sub(killed), beforeOut, returned, interval)
	if beforeOut > 4 {
		t.Errorf("%d GETs failed between the kill and the ejection; at most the 4 in flight may", beforeOut)
	}
	// Health checks are due every interval; a round that began just
	// before the restart missed it, the next one sees it.
	if returned > interval+interval/2 {
		t.Errorf("traffic back %v after the restart; want within one health interval (%v)", returned, interval)
	}
}
