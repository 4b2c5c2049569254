// Command fhproxy is the plainest fasthttp reverse proxy: a fasthttp.Server
// whose handler passes each request to one fasthttp.HostClient. It is the
// baseline unstuck is compared with: same library, no half-close watch.
//
//	fhproxy -listen 127.0.0.1:19003 -upstream 127.0.0.1:19000
package main

import (
	"flag"
	"log"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19003", "address to accept app connections on")
	upstream := flag.String("upstream", "127.0.0.1:19000", "host:port to forward to")
	maxConns := flag.Int("max-conns", 1024, "upstream connections open at once")
	flag.Parse()

	client := &fasthttp.HostClient{
		Addr:                          *upstream,
		MaxConns:                      *maxConns,
		MaxIdleConnDuration:           90 * time.Second,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
	}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.Request.Header.Del("Connection") // hop-by-hop; keep-alive both sides
			if err := client.Do(&ctx.Request, &ctx.Response); err != nil {
				ctx.Response.Reset()
				ctx.Error("Bad Gateway\n", fasthttp.StatusBadGateway)
			}
			ctx.Response.Header.Del("Connection")
		},
		NoDefaultServerHeader:         true,
		NoDefaultDate:                 true,
		NoDefaultContentType:          true,
		DisableHeaderNamesNormalizing: true,
		Concurrency:                   64 << 10,
	}
	log.Fatal(srv.ListenAndServe(*listen))
}
