package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// fastUpstream is a fasthttp server on 127.0.0.1:0 answering a small
// fixed body, which allocates nothing per request in steady state. Each
// header is a name and a value, added to every response.
func fastUpstream(t testing.TB, header ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		for i := 0; i+1 < len(header); i += 2 {
			ctx.Response.Header.Set(header[i], header[i+1])
		}
		ctx.SetBodyString("hello from upstream")
	}}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Shutdown(); <-done })
	return ln.Addr().String()
}

func benchClient(addr string) *fasthttp.HostClient {
	return &fasthttp.HostClient{Addr: addr, MaxConns: 64, ReadTimeout: 5 * time.Second}
}

// withDefaultTimeouts are the timeouts a default configuration sets
// (config.yaml): the request path is measured as it runs in production.
func withDefaultTimeouts() proxyOpts {
	return proxyOpts{
		listener: Config{Logger: nopLogger, ReadHeaderTimeout: 10 * time.Second,
			BodyReadTimeout: time.Minute, SendTimeout: time.Minute},
		upstream: Upstream{ResponseHeaderTimeout: 30 * time.Second,
			ResponseIdleTimeout: time.Minute, WriteTimeout: time.Minute},
	}
}

// One GET through the proxy over loopback keep-alive connections on both
// sides; client, proxy and upstream all run in this process.
func BenchmarkProxyGET(b *testing.B) {
	addr := startProxy(b, withDefaultTimeouts(), fastUpstream(b))
	client := benchClient(addr)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + addr + "/")
		for pb.Next() {
			if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				b.Fatalf("status %d, err %v", resp.StatusCode(), err)
			}
		}
	})
}

// In steady state a proxied request allocates nothing anywhere in the
// process: not in the proxy, the pool, nor (fasthttp) client and upstream;
// nor does reading an upstream's Keep-Alive header.
func TestProxiedRequestDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts need a build without -race; CI runs this test without it")
	}
	for _, tc := range []struct {
		name   string
		header []string
	}{
		{"plain", nil},
		{"keep-alive header", []string{"Keep-Alive", "timeout=5, max=1000000"}},
	} {
		t.Run(tc.name, func(t *testing.T) { proxiedRequestAllocs(t, tc.header) })
	}
}

func proxiedRequestAllocs(t *testing.T, header []string) {
	srv, addr := startServer(t, withDefaultTimeouts(), fastUpstream(t, header...))
	client := benchClient(addr)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + "/path?q=1")
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	do := func() {
		if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
			t.Fatalf("status %d, err %v", resp.StatusCode(), err)
		}
	}
	for range 100 {
		do() // warm every pool and buffer
	}
	if allocs := testing.AllocsPerRun(1000, do); allocs > 0 {
		t.Fatalf("%.2f allocations per proxied request; want 0", allocs)
	}
	if len(header) > 0 {
		// The header was read: the pool knows the server's timeout.
		idle := 0
		for _, c := range srv.up.Load().Pool.Snapshot() {
			if c.State == "idle" {
				idle++
				if c.ServerIdleTimeout != 5*time.Second {
					t.Errorf("idle connection %+v: want the server's 5s Keep-Alive timeout", c)
				}
			}
		}
		if idle == 0 {
			t.Error("no idle connection to look at")
		}
	}
}
