package config

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const captureFile = `
listeners:
  captured:
    listen: "[::]:15001"
    protocol: tcp
    capture: true
  app:
    listen: 127.0.0.1:8080
upstreams:
  backend:
    endpoints: ["127.0.0.1:9000"]
capture:
  listener: captured
  ports: [5432, 6379]
  cidrs: ["10.0.0.0/8", "127.0.0.5", "fd00::/8"]
  exclude_ports: [22]
  exclude_uids: [1337]
`

// A capture section and a capture listener load into typed values: a bare
// address is a one-address CIDR, and the capture listener gets no
// upstream although there is only one (an ordinary listener does).
func TestCaptureLoads(t *testing.T) {
	cfg := mustLoad(t, LoadOptions{File: writeConfig(t, captureFile)})
	want := DefaultCapture()
	want.Listener = "captured"
	want.Ports, want.ExcludePorts, want.ExcludeUIDs = []uint16{5432, 6379}, []uint16{22}, []uint32{1337}
	want.CIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.5/32"), netip.MustParsePrefix("fd00::/8")}
	if !reflect.DeepEqual(cfg.Capture, want) {
		t.Errorf("capture:\n got %+v\nwant %+v", cfg.Capture, want)
	}
	if l := cfg.Listeners["captured"]; !l.Capture || l.Upstream != "" {
		t.Errorf("listener captured: capture %v, upstream %q; want true and none", l.Capture, l.Upstream)
	}
	if l := cfg.Listeners["app"]; l.Upstream != "backend" {
		t.Errorf("listener app: upstream %q; want the only one, backend", l.Upstream)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	// Lists from the environment, comma-separated.
	cfg = mustLoad(t, LoadOptions{File: writeConfig(t, captureFile), Environ: []string{
		"UNSTUCK_CAPTURE_PORTS=80,443", "UNSTUCK_CAPTURE_CIDRS=::1", "UNSTUCK_CAPTURE_MAX_DESTINATIONS=8",
	}})
	if k := cfg.Capture; !slices.Equal(k.Ports, []uint16{80, 443}) || len(k.CIDRs) != 1 || k.CIDRs[0] != netip.MustParsePrefix("::1/128") || k.MaxDestinations != 8 {
		t.Errorf("from the environment: %+v", k)
	}

	// A configuration of capture listeners alone needs no upstream.
	mustLoad(t, LoadOptions{File: writeConfig(t, "listeners: {c: {listen: '127.0.0.1:15001', protocol: tcp, capture: true}}\n")})
}

func TestCaptureProblems(t *testing.T) {
	for _, tc := range []struct {
		name, edit string // edit: replaces the line of captureFile that starts the same way, or is added
		env        []string
		want       []string
	}{
		{name: "bad items", edit: `  ports: [5432, 0, http, 70000]`, want: []string{
			`capture.ports[1]: "0" is not a port; want 1 to 65535`,
			`capture.ports[2]: "http" is not a port; want 1 to 65535`,
			`capture.ports[3]: "70000" is not a port; want 1 to 65535`,
		}},
		{name: "bad cidrs", edit: `  cidrs: ["10.0.0.1/8", "nowhere"]`, want: []string{
			`capture.cidrs[0]: "10.0.0.1/8" has bits set past its prefix length; want 10.0.0.0/8`,
			`capture.cidrs[1]: "nowhere" is not an address or CIDR; want one such as 10.0.0.0/8 or 127.0.0.5`,
		}},
		{name: "bad env", env: []string{"UNSTUCK_CAPTURE_EXCLUDE_UIDS=1337,-1"}, want: []string{
			`capture.exclude_uids: "-1" is not a user ID; want 0 to 4294967295`,
		}},
		{name: "not a list", edit: `  exclude_uids: 1337`, want: []string{
			`capture.exclude_uids: want a list of user IDs such as [1337], got "1337"`,
		}},
		{name: "upstream", edit: `    capture: true
    upstream: backend`, want: []string{
			`listeners.captured.upstream: "backend": a capture listener forwards each connection to its original destination and takes no upstream (an upstream whose endpoints include a destination lends it its settings)`,
		}},
		{name: "unix", edit: `    listen: "unix:/run/c.sock"`, want: []string{
			`listeners.captured.listen: "unix:/run/c.sock": a capture listener takes redirected TCP connections; want host:port`,
		}},
		{name: "names no listener", edit: `  listener: capturd`, want: []string{
			`capture.listener: "capturd" names no listener (did you mean captured?)`,
		}},
		{name: "not a capture listener", edit: `  listener: app`, want: []string{
			`capture.listener: "app": listener app has no capture: true, so it would forward what is redirected to it to its upstream`,
		}},
		{name: "not loopback", edit: `    listen: "10.0.0.1:15001"`, want: []string{
			`capture.listener: "captured": listener captured listens on "10.0.0.1:15001", but captured connections are redirected to 127.0.0.1 or ::1; listen on one of them or on all addresses, such as 127.0.0.1:15001 or [::]:15001 (IPv4 and IPv6)`,
		}},
		{name: "port 0", edit: `    listen: "127.0.0.1:0"`, want: []string{
			`capture.cidrs[2]: "fd00::/8": listener captured on "127.0.0.1:0" does not take this family; listen on [::]:PORT for IPv4 and IPv6`,
			`capture.listener: "captured": listener captured listens on port 0; the rules need a fixed port`,
		}},
		{name: "everything", env: []string{}, edit: "  ports: []\n  cidrs: []", want: []string{
			`capture.ports: empty, and so is capture.cidrs: refusing to capture every connection; list the destination ports or addresses to capture`,
		}},
		{name: "itself", edit: "  exclude_uids: []", want: []string{
			`capture.exclude_uids: empty, and capture.mark is 0: unstuck's own connections to the destinations would be captured again; list the UID unstuck runs as`,
		}},
		{name: "no listener", edit: `  listener: ""`, want: []string{
			`capture.listener: missing; capture.ports and capture.cidrs say what unstuck capture redirects, and it needs a capture listener to redirect to`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := problemLines(t, LoadOptions{File: writeConfig(t, editLines(captureFile, tc.edit)), Environ: tc.env})
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// editLines replaces the line of file that starts as a line of edit does
// (up to its colon) with that line; an edit line that matches none goes
// after the one before it.
func editLines(file, edit string) string {
	if edit == "" {
		return file
	}
	lines := strings.Split(file, "\n")
	at := len(lines) - 1
	for _, e := range strings.Split(edit, "\n") {
		key, _, _ := strings.Cut(e, ":")
		if i := slices.IndexFunc(lines, func(l string) bool { k, _, _ := strings.Cut(l, ":"); return k == key }); i >= 0 {
			lines[i], at = e, i
		} else {
			at++
			lines = slices.Insert(lines, at, e)
		}
	}
	return strings.Join(lines, "\n")
}
