// Command httputilproxy is net/http/httputil.ReverseProxy with a
// keep-alive Transport sized for the benchmark: the standard library's
// reverse proxy, one goroutine reading each idle upstream connection.
//
//	httputilproxy -listen 127.0.0.1:19004 -upstream 127.0.0.1:19000 -max-idle 512
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19004", "address to accept app connections on")
	upstream := flag.String("upstream", "127.0.0.1:19000", "host:port to forward to")
	maxIdle := flag.Int("max-idle", 512, "idle upstream connections kept")
	flag.Parse()

	target := &url.URL{Scheme: "http", Host: *upstream}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        *maxIdle,
			MaxIdleConnsPerHost: *maxIdle,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		ErrorLog: log.New(io.Discard, "", 0), // 502s are counted by the client
	}
	srv := &http.Server{Addr: *listen, Handler: rp, ErrorLog: log.New(io.Discard, "", 0)}
	log.Fatal(srv.ListenAndServe())
}
