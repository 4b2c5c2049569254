package proxy

import (
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/pool"
)

// A blackholed upstream (packets silently dropped after the connection is
// pooled): with user_timeout 1s the kernel gives up on unacknowledged data
// after a second, unstuck answers 504 and closes the connection, instead of
// holding it for the kernel's 15-minute default. In a namespace of its
// own, where an nftables rule drops the upstream's packets.
func TestBlackholedUpstream(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	upEnd := netip.MustParseAddrPort(addrOf(up))
	const userTimeout = time.Second
	addr := startProxy(t, proxyOpts{
		pool:     pool.Config{UserTimeout: userTimeout, DialTimeout: time.Second},
		upstream: Upstream{ResponseHeaderTimeout: 30 * time.Second}, // not what fires here
	}, addrOf(up))

	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("before the blackhole: %d %q", resp.StatusCode, body)
	}

	netns.Blackhole(t, upEnd.Port())
	start := time.Now()
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, _ := c.response("GET")
	took := time.Since(start)
	if resp.StatusCode != 504 {
		t.Fatalf("blackholed upstream: got %d; want 504", resp.StatusCode)
	}
	if took > userTimeout+time.Second {
		t.Fatalf("504 after %v; want within user_timeout (%v) plus 1s", took, userTimeout)
	}
	// unstuck's sockets towards the upstream (the upstream's own side
	// never heard of the close: its packets are dropped too).
	states, err := sockstate.Count(func(s sockstate.Socket) bool { return s.Remote == upEnd })
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 0 {
		t.Fatalf("sockets to the blackholed upstream left: %v", states)
	}
	t.Logf("blackholed upstream: 504 after %v (user_timeout %v); no socket left towards it", took, userTimeout)
}
