package testpeer

import (
	"net"
	"testing"

	"github.com/unstuck-proxy/unstuck/internal/tcpserve"
)

// ServeTCP is a raw TCP server at addr (such as "127.0.0.1:0") that runs
// handle on each connection it accepts, on tcpserve's accept loop. When
// the test ends it stops: it closes the connections and waits for the
// handlers.
func ServeTCP(tb testing.TB, addr string, handle func(c *net.TCPConn)) *tcpserve.Loop {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	srv := tcpserve.New(ln)
	srv.Serve(func(c *net.TCPConn, _ int) { handle(c) })
	tb.Cleanup(func() { srv.Close() })
	return srv
}
