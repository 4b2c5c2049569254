package testpeer

import (
	"net"
	"net/netip"
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

// FreeAddr returns a loopback host:port that was free a moment ago:
// nothing listens there, until something takes it (a backend that is
// down, or a listen address for a process the test starts).
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// FreePort is the port of a FreeAddr.
func FreePort(tb testing.TB) int {
	tb.Helper()
	return int(netip.MustParseAddrPort(FreeAddr(tb)).Port())
}
