package config

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Capture configures transparent capture: the nftables rules unstuck
// capture installs (an init container runs it), and what a capture
// listener (listeners.<name>.capture) does with the connections redirected
// to it.
type Capture struct {
	Listener        string         `key:"listener" default:"" doc:"the listener (with capture: true) that unstuck capture redirects the app's connections to; empty: unstuck capture installs nothing"`
	Ports           []uint16       `key:"ports" default:"" item:"a port such as 5432" doc:"destination ports captured; empty: any port (cidrs must then be set)"`
	CIDRs           []netip.Prefix `key:"cidrs" default:"" item:"an address or CIDR such as 10.0.0.0/8" doc:"destination addresses captured, such as 10.0.0.0/8 or 127.0.0.5; empty: any address (ports must then be set). A connection is captured if both match"`
	ExcludePorts    []uint16       `key:"exclude_ports" default:"" item:"a port such as 22" doc:"destination ports never captured"`
	ExcludeUIDs     []uint32       `key:"exclude_uids" default:"" item:"a user ID such as 1337" doc:"connections of processes running as these UIDs are never captured: list the UID unstuck runs as, or it would capture its own"`
	Mark            int            `key:"mark" default:"0" max:"4294967295" doc:"connections with this socket mark are never captured, and unstuck sets it on its connections to captured destinations (that needs CAP_NET_ADMIN); 0: none"`
	MaxDestinations int            `key:"max_destinations" default:"64" min:"1" doc:"destinations with a pool at once, per capture listener; at the limit the one idle longest is closed, and with none idle a connection to a new destination is reset"`
	IdleTimeout     time.Duration  `key:"idle_timeout" default:"60s" min:"1ns" doc:"a destination with no connection for this long has its pool closed and its metrics removed; more than 0"`
}

// RedirectFamilies reports which families the capture rules can redirect
// to a listener at listen: they redirect to 127.0.0.1 and ::1, so it must
// listen on one of them or on a wildcard address. ok is false for any
// other address.
func RedirectFamilies(listen string) (ipv4, ipv6, ok bool) {
	host, _, msg := splitHostPort(listen)
	switch host = strings.ToLower(host); {
	case msg != "":
	case host == "" || host == "::":
		return true, true, true // dual-stack
	case host == "0.0.0.0" || host == "127.0.0.1":
		return true, false, true
	case host == "::1":
		return false, true, true
	}
	return false, false, false
}

// checkCapture checks the capture section against the listeners; check
// checks each capture listener.
func (t *tree) checkCapture(c *Config) {
	k := c.Capture
	if k.Listener == "" {
		if len(k.Ports) > 0 || len(k.CIDRs) > 0 {
			t.add("capture.listener", "missing; capture.ports and capture.cidrs say what unstuck capture redirects, and it needs a capture listener to redirect to")
		}
		return
	}
	l, ok := c.Listeners[k.Listener]
	v4, v6, fits := RedirectFamilies(l.Listen)
	_, port, _ := splitHostPort(l.Listen)
	switch {
	case !ok:
		t.add("capture.listener", "%q names no listener%s", k.Listener, suggest(k.Listener, slices.Sorted(maps.Keys(c.Listeners))))
	case !l.Capture:
		t.add("capture.listener", "%q: listener %s has no capture: true, so it would forward what is redirected to it to its upstream", k.Listener, k.Listener)
	case !fits && !strings.HasPrefix(l.Listen, "unix:"):
		t.add("capture.listener", "%q: listener %s listens on %q, but captured connections are redirected to 127.0.0.1 or ::1; listen on one of them or on all addresses, such as 127.0.0.1:15001 or [::]:15001 (IPv4 and IPv6)", k.Listener, k.Listener, l.Listen)
	case fits && port == 0:
		t.add("capture.listener", "%q: listener %s listens on port 0; the rules need a fixed port", k.Listener, k.Listener)
	}
	if len(k.Ports) == 0 && len(k.CIDRs) == 0 {
		t.add("capture.ports", "empty, and so is capture.cidrs: refusing to capture every connection; list the destination ports or addresses to capture")
	}
	if len(k.ExcludeUIDs) == 0 && k.Mark == 0 {
		t.add("capture.exclude_uids", "empty, and capture.mark is 0: unstuck's own connections to the destinations would be captured again; list the UID unstuck runs as")
	}
	for i, p := range k.CIDRs {
		if l.Capture && fits && (p.Addr().Is4() && !v4 || p.Addr().Is6() && !v6) {
			t.add(fmt.Sprintf("capture.cidrs[%d]", i), "%q: listener %s on %q does not take this family; listen on [::]:PORT for IPv4 and IPv6", p, k.Listener, l.Listen)
		}
	}
}
