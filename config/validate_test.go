package config

import (
	"errors"
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
			Log:       Log{Level: "info", Format: "console"},
			Listeners: map[string]Listener{"app": l},
			Upstreams: map[string]Upstream{"backend": u},
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.change(c)
			err := c.Validate()
			var ps Problems
			if !errors.As(err, &ps) {
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
		a, msgA := parseListen(tt.a)
		b, msgB := parseListen(tt.b)
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
