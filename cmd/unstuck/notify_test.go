package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// listenNotify is a service manager's end of NOTIFY_SOCKET: a unix
// datagram socket at name (a path, or "@name" in the abstract namespace).
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	addr := name
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// nextNotify reads the next message, or fails the test after within.
func nextNotify(t *testing.T, c *net.UnixConn, within time.Duration) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(within))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message within %v: %v", within, err)
	}
	return string(buf[:n])
}

func TestNotifier(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify.sock"),
		"@unstuck-notify-test-" + time.Now().Format("150405.000000000"),
	} {
		sock := listenNotify(t, name)
		n := newNotifier([]string{"OTHER=1", "NOTIFY_SOCKET=" + name})
		if err := n.notify("READY=1\nSTATUS=serving"); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := nextNotify(t, sock, 5*time.Second); got != "READY=1\nSTATUS=serving" {
			t.Errorf("%s: got %q", name, got)
		}
	}
	if err := newNotifier([]string{"NOTIFY_SOCKET="}).notify("READY=1"); err != errNoManager {
		t.Errorf("without NOTIFY_SOCKET: %v; want errNoManager", err)
	}
	if err := newNotifier([]string{"NOTIFY_SOCKET=" + filepath.Join(t.TempDir(), "none")}).notify("READY=1"); err == nil {
		t.Error("to a socket nobody listens on: no error")
	}
}
