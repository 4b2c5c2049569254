package sockdiag

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// A socket its process shut down for writing still has an owner; one it
// closed is an orphan; a four-tuple nobody has is not found.
func TestLookupTellsCloseFromHalfClose(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			host := "127.0.0.1:0"
			if network == "tcp6" {
				host = "[::1]:0"
			}
			ln, err := net.Listen(network, host)
			if err != nil {
				t.Skip("no loopback for", network, err)
			}
			defer ln.Close()
			dial := func() (client *net.TCPConn, server net.Conn) {
				c, err := net.Dial(network, ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				s, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				return c.(*net.TCPConn), s
			}

			half, hs := dial()
			defer half.Close()
			defer hs.Close()
			half.CloseWrite()
			waitEOF(t, hs)
			got, err := Lookup(addrPort(half.LocalAddr()), addrPort(half.RemoteAddr()))
			if err != nil || got.Orphan() {
				t.Fatalf("half-closed socket: %+v, %v; want an owned socket", got, err)
			}

			closed, cs := dial()
			defer cs.Close()
			local, remote := addrPort(closed.LocalAddr()), addrPort(closed.RemoteAddr())
			closed.Close()
			waitEOF(t, cs)
			got, err = Lookup(local, remote)
			if err != nil || !got.Orphan() {
				t.Fatalf("closed socket: %+v, %v; want an orphan", got, err)
			}

			if _, err := Lookup(netip.AddrPortFrom(local.Addr(), 1), remote); err != ErrNotFound {
				t.Fatalf("unknown four-tuple: %v; want ErrNotFound", err)
			}
		})
	}
}

func waitEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read data; want EOF")
	}
}
