package testpeer

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

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

// AcceptLoop accepts connections on ln and runs handle for each, one after
// another on the accepting goroutine, so that what handle does happens in
// the order of the accepts (handle starts a goroutine for anything that
// must not hold up the next accept). When the test ends it closes ln and
// waits for the loop.
func AcceptLoop(tb testing.TB, ln net.Listener, handle func(c net.Conn)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
	tb.Cleanup(func() { ln.Close(); <-done })
}

// ServeEcho is a TCP server at addr that echoes what each connection
// sends until its peer closes (10 s at most), until the test ends; it
// returns the server's address.
func ServeEcho(tb testing.TB, addr string) string {
	tb.Helper()
	return ServeTCP(tb, addr, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.Copy(c, c)
	}).Addr().String()
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

// EchoLine connects to addr, where an echo server is (or a proxy in front
// of one), sends a line and reads it back, all within 5 s; anything else
// fails the test. The caller closes the connection it returns.
func EchoLine(tb testing.TB, addr string) net.Conn {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		c.Close()
		tb.Fatal(err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ping\n" {
		c.Close()
		tb.Fatalf("echo through %s: %q, %v", addr, line, err)
	}
	return c
}
