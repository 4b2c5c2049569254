package config

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"
)

// TestValidate checks a configuration built in code.
func TestValidate(t *testing.T) {
	good := func() *Config {
		l := DefaultListener()
		l.Name, l.Listen, l.Upstream = "app", "127.0.0.1:8080", "backend"
		u := DefaultUpstream()
		u.Name, u.Endpoints = "backend", []string{"127.0.0.1:9000"}
		return &Config{
			Log:             Log{Level: "info", Format: "console"},
			Admin:           Admin{Listen: "127.0.0.1:9901"},
			ShutdownTimeout: 10 * time.Second,
			Listeners:       map[string]Listener{"app": l},
			Upstreams:       map[string]Upstream{"backend": u},
			Capture:         DefaultCapture(),
		}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}

	tests := []struct {
		name   string
		change func(*Config)
		want   []string
	}{
		{"negative durations", func(c *Config) {
			u := c.Upstreams["backend"]
			u.Pool.AcquireTimeout = -time.Second
			u.Timeouts.ResponseHeader = -time.Millisecond
			c.Upstreams["backend"] = u
		}, []string{
			`upstreams.backend.pool.acquire_timeout: "-1s": must not be negative`,
			`upstreams.backend.timeouts.response_header: "-1ms": must not be negative`,
		}},
		{"max_idle over max_conns", func(c *Config) {
			u := c.Upstreams["backend"]
			u.Pool.MaxConns, u.Pool.MaxIdle = 2, 3
			c.Upstreams["backend"] = u
		}, []string{`upstreams.backend.pool.max_idle: "3": more than pool.max_conns (2)`}},
		{"bad host header", func(c *Config) {
			u := c.Upstreams["backend"]
			u.HostHeader = "a b"
			c.Upstreams["backend"] = u
		}, []string{`upstreams.backend.host_header: "a b": not a host; want a name such as example.com or example.com:8080`}},
		{"no upstreams", func(c *Config) { c.Upstreams = nil }, []string{
			`listeners.app.upstream: "backend" names no upstream (have: none)`,
			`upstreams: none defined; want at least one upstream`,
		}},
		{"unix endpoint", func(c *Config) {
			u := c.Upstreams["backend"]
			u.Endpoints = []string{"unix:/x.sock"}
			c.Upstreams["backend"] = u
		}, []string{`upstreams.backend.endpoints[0]: "unix:/x.sock": unix sockets are not supported for upstreams; want host:port`}},
		{"zero shutdown timeout, no admin", func(c *Config) {
			c.ShutdownTimeout = 0
			c.Admin.Listen = ""
		}, []string{`shutdown_timeout: "0s": must be more than 0`}},
		{"admin on a listener's port", func(c *Config) {
			c.Admin.Listen = "127.0.0.1:8080"
		}, []string{`admin.listen: "127.0.0.1:8080": conflicts with listeners.app.listen ("127.0.0.1:8080")`}},
		{"debug listener on the admin listener's address", func(c *Config) {
			c.Admin.DebugListen = "127.0.0.1:9901"
		}, []string{`admin.debug_listen: "127.0.0.1:9901": conflicts with admin.listen ("127.0.0.1:9901")`}},
		{"debug listener on a listener's address", func(c *Config) {
			c.Admin.DebugListen = "127.0.0.1:8080"
		}, []string{`admin.debug_listen: "127.0.0.1:8080": conflicts with listeners.app.listen ("127.0.0.1:8080")`}},
		{"debug listener covered by a wildcard admin listener", func(c *Config) {
			c.Admin.Listen, c.Admin.DebugListen = "0.0.0.0:9901", "127.0.0.1:9901"
		}, []string{`admin.debug_listen: "127.0.0.1:9901": conflicts with admin.listen ("0.0.0.0:9901")`}},
		{"debug listener off the loopback", func(c *Config) {
			c.Admin.DebugListen = "0.0.0.0:9902"
		}, []string{`admin.debug_listen: "0.0.0.0:9902": want a loopback address such as 127.0.0.1:9902 or [::1]:9902; /debug/pool and pprof are not for the network (use kubectl port-forward)`}},
		{"debug listener on a unix socket", func(c *Config) {
			c.Admin.DebugListen = "unix:/run/debug.sock"
		}, []string{`admin.debug_listen: "unix:/run/debug.sock": unix sockets are not supported for admin.debug_listen; want a loopback host:port such as 127.0.0.1:9902`}},
		{"debug listener on loopback names", func(c *Config) {
			c.Admin.DebugListen = "localhost:9902"
			c.Admin.Listen = "[::1]:9902"
		}, nil},
		{"listener socket options", func(c *Config) {
			l := c.Listeners["app"]
			l.SocketMode = os.ModeSocket | 0o660
			l.AppFinTimeout = 0
			l.Keepalive = Keepalive{Idle: 1500 * time.Millisecond, Interval: 0, Count: 0}
			l.UserTimeout = time.Microsecond
			c.Listeners["app"] = l
		}, []string{
			`listeners.app.app_fin_timeout: "0s": must be more than 0`,
			`listeners.app.keepalive.count: "0": want at least 1 while keepalive is on (idle is not 0s)`,
			`listeners.app.keepalive.idle: "1.5s": want whole seconds (the kernel counts TCP_KEEPIDLE in seconds)`,
			`listeners.app.keepalive.interval: "0s": must be more than 0 while keepalive is on (idle is not 0s)`,
			`listeners.app.socket_mode: "0100000660": want 0 to 0777`,
			`listeners.app.user_timeout: "1µs": want whole milliseconds (the kernel counts TCP_USER_TIMEOUT in milliseconds)`,
		}},
		{"keepalive off checks only ranges", func(c *Config) {
			l := c.Listeners["app"]
			l.Keepalive = Keepalive{Interval: 0, Count: 128}
			c.Listeners["app"] = l
		}, []string{`listeners.app.keepalive.count: "128": want at most 127 (the kernel's limit for TCP_KEEPCNT)`}},
		{"listener limits and timeouts", func(c *Config) {
			l := c.Listeners["app"]
			l.ReadHeaderTimeout = -time.Second
			l.SendTimeout = -time.Millisecond
			l.Limits = ListenerLimits{RequestHeaderBytes: 1024, RequestBodyBytes: -1, MaxConns: -2}
			c.Listeners["app"] = l
		}, []string{
			`listeners.app.limits.max_conns: "-2": must not be negative`,
			`listeners.app.limits.request_body_bytes: "-1": must not be negative`,
			`listeners.app.limits.request_header_bytes: "1KiB": want at least 4096 (4KiB)`,
			`listeners.app.read_header_timeout: "-1s": must not be negative`,
			`listeners.app.send_timeout: "-1ms": must not be negative`,
		}},
		{"zero header limits are refused, not taken as defaults", func(c *Config) {
			l := c.Listeners["app"]
			l.Limits.RequestHeaderBytes = 0
			c.Listeners["app"] = l
			u := c.Upstreams["backend"]
			u.Limits.ResponseHeaderBytes = 0
			u.Timeouts.ResponseIdle = -time.Second
			u.Timeouts.Write = -time.Second
			c.Upstreams["backend"] = u
		}, []string{
			`listeners.app.limits.request_header_bytes: "0": want at least 4096 (4KiB)`,
			`upstreams.backend.limits.response_header_bytes: "0": want at least 4096 (4KiB)`,
			`upstreams.backend.timeouts.response_idle: "-1s": must not be negative`,
			`upstreams.backend.timeouts.write: "-1s": must not be negative`,
		}},
		{"source ports without source", func(c *Config) {
			u := c.Upstreams["backend"]
			u.Dial.SourcePorts = PortRange{Lo: 20000, Hi: 29999}
			c.Upstreams["backend"] = u
		}, []string{`upstreams.backend.dial.source_ports: "20000-29999": dial.source_ports needs dial.source`}},
		{"source ports reversed", func(c *Config) {
			u := c.Upstreams["backend"]
			u.Dial.Source = netip.MustParseAddr("127.0.0.2")
			u.Dial.SourcePorts = PortRange{Lo: 3, Hi: 2}
			u.Dial.Keepalive.Count = -1
			c.Upstreams["backend"] = u
		}, []string{
			`upstreams.backend.dial.keepalive.count: "-1": must not be negative`,
			`upstreams.backend.dial.source_ports: "3-2": the first port is more than the last`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.change(c)
			err := c.Validate()
			var ps Problems
			if tt.want == nil && err != nil {
				t.Fatalf("Validate() = %v, want no problem", err)
			} else if tt.want != nil && !errors.As(err, &ps) {
				t.Fatalf("Validate() = %v, want Problems", err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestListenOverlap(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:80", "127.0.0.1:80", true},
		{"127.0.0.1:80", "127.0.0.2:80", false},
		{":80", "127.0.0.1:80", true},
		{"[::]:80", "[::1]:80", true},
		{"0.0.0.0:80", "127.0.0.1:80", true},
		{"0.0.0.0:80", "[::1]:80", false},
		{"127.0.0.1:0", "127.0.0.1:0", false},
		{"unix:/a", "unix:/a/", true},
		{"unix:/a", "127.0.0.1:80", false},
	} {
		a, msgA := parseListen("a", tt.a)
		b, msgB := parseListen("b", tt.b)
		if msgA != "" || msgB != "" {
			t.Fatalf("parseListen: %q %q", msgA, msgB)
		}
		if got := a.overlaps(b); got != tt.want {
			t.Errorf("%q overlaps %q = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestAsProblems(t *testing.T) {
	ps := AsProblems(errors.New("boom"))
	if len(ps) != 1 || ps[0].String() != "boom" {
		t.Errorf("AsProblems(plain error) = %q", ps)
	}
	in := Problems{{Key: "a", Msg: "b"}}
	if got := AsProblems(in); !slices.Equal(got, in) {
		t.Errorf("AsProblems(Problems) = %q", got)
	}
}
