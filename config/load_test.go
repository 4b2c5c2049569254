package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/unstuck-proxy/unstuck"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

var noEnv = []string{}

// writeConfig writes body to a config file in a fresh directory.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// flags returns a flag set with AddFlags' flags, parsed from args.
func flags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

// mustLoad loads opts and fails the test on any problem.
func mustLoad(t *testing.T, opts LoadOptions) *Config {
	t.Helper()
	if opts.Environ == nil {
		opts.Environ = noEnv
	}
	cfg, err := Load(opts)
	if err != nil {
		t.Fatalf("Load: unexpected problems:\n%v", err)
	}
	return cfg
}

// problemLines loads opts and returns each problem as "key: msg", without
// its source.
func problemLines(t *testing.T, opts LoadOptions) []string {
	t.Helper()
	if opts.Environ == nil {
		opts.Environ = noEnv
	}
	cfg, err := Load(opts)
	if err == nil {
		t.Fatalf("Load succeeded with %+v; want problems", cfg)
	}
	ps, ok := err.(Problems)
	if !ok {
		t.Fatalf("Load error is %T, want Problems: %v", err, err)
	}
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = Problem{Key: p.Key, Msg: p.Msg}.String()
	}
	return lines
}

// wantDefaultConfig is what the repository's config.yaml says.
// wantDefaultConfig is the built-in config.yaml as Load decodes it: the
// schema's defaults (which TestConfigYAML holds config.yaml to) with its
// listener and upstream named.
func wantDefaultConfig() *Config {
	l, u := DefaultListener(), DefaultUpstream()
	l.Name, l.Listen, l.Upstream = "app", "127.0.0.1:8080", "backend"
	u.Name, u.Endpoints = "backend", []string{"127.0.0.1:9000"}
	return &Config{
		Log:             Log{Level: "info", Format: "console"},
		Admin:           Admin{Listen: "127.0.0.1:9901", DebugListen: "127.0.0.1:9902"},
		ShutdownTimeout: 10 * time.Second,

		ReleaseMemoryAfterIdle: 2 * time.Second,
		Listeners:              map[string]Listener{"app": l},
		Upstreams:              map[string]Upstream{"backend": u},
		Capture:                DefaultCapture(),
	}
}

func TestEmbeddedDefault(t *testing.T) {
	got := mustLoad(t, LoadOptions{Default: unstuck.DefaultConfig})
	if want := wantDefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("embedded default:\n got %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestEmbeddedDefaultMatchesSchema keeps config.yaml and the schema's
// defaults in step: the file must spell out every default.
func TestEmbeddedDefaultMatchesSchema(t *testing.T) {
	cfg := mustLoad(t, LoadOptions{Default: unstuck.DefaultConfig})
	l := cfg.Listeners["app"]
	l.Name, l.Listen, l.Upstream = "", "", ""
	if want := DefaultListener(); !reflect.DeepEqual(l, want) {
		t.Errorf("config.yaml listener:\n got %+v\nwant %+v (DefaultListener)", l, want)
	}
	u := cfg.Upstreams["backend"]
	u.Name, u.Endpoints = "", nil
	if want := DefaultUpstream(); !reflect.DeepEqual(u, want) {
		t.Errorf("config.yaml upstream:\n got %+v\nwant %+v (DefaultUpstream)", u, want)
	}
	for _, f := range slices.Concat(topFields, listenerFields, upstreamFields) {
		leaf := f.key[strings.LastIndexByte(f.key, '.')+1:]
		if !strings.Contains(string(unstuck.DefaultConfig), leaf+":") {
			t.Errorf("config.yaml does not mention key %s", f.key)
		}
	}
}

func TestMinimalFileGetsDefaults(t *testing.T) {
	got := mustLoad(t, LoadOptions{File: "testdata/minimal.yaml"})
	if got.File != "testdata/minimal.yaml" {
		t.Errorf("File = %q; want the file read", got.File)
	}
	got.File = ""
	if want := wantDefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("minimal.yaml:\n got %+v\nwant %+v", got, want)
	}
}

func TestFullFile(t *testing.T) {
	got := mustLoad(t, LoadOptions{File: "testdata/full.yaml"})
	want := &Config{
		Log:             Log{Level: "debug", Format: "json", Access: true},
		Admin:           Admin{Listen: "[::1]:9902", DebugListen: "[::1]:9903", Pprof: true, ReadyRequiresUpstream: true},
		ShutdownTimeout: 30 * time.Second,
		Capture:         DefaultCapture(),
		Listeners: map[string]Listener{
			"web": func() Listener {
				l := DefaultListener()
				l.Name, l.Listen, l.Upstream = "web", "unix:/run/unstuck/web.sock", "api"
				l.IdleTimeout, l.IdleReleaseAfter, l.Linger = 5*time.Minute, 250*time.Millisecond, sockopt.Linger{Mode: sockopt.Bounded, Timeout: 3 * time.Second}
				l.AppFinTimeout, l.ReusePort, l.SocketMode = 500*time.Millisecond, true, 0o600
				l.Keepalive, l.UserTimeout = Keepalive{Interval: 10 * time.Second, Count: 3}, 1500*time.Millisecond
				l.ReadHeaderTimeout, l.BodyReadTimeout, l.SendTimeout = 2*time.Second, 0, 30*time.Second
				l.Limits = ListenerLimits{RequestHeaderBytes: 16 << 10, RequestBodyBytes: 8 << 20, MaxConns: 1000}
				return l
			}(),
			"admin": func() Listener {
				l := DefaultListener()
				l.Name, l.Listen, l.Upstream, l.Linger = "admin", "[::1]:8081", "static", sockopt.Linger{Mode: sockopt.Graceful}
				return l
			}(),
		},
		Upstreams: map[string]Upstream{
			"api": func() Upstream {
				u := DefaultUpstream()
				u.Name, u.Endpoints = "api", []string{"10.0.0.1:9000", "api.internal:9001"}
				u.HostHeader, u.Linger, u.Retries = "api.example.com", sockopt.Linger{Mode: sockopt.Reset}, 0
				u.Pool = PoolLimits{MaxConns: 64, MaxIdle: 8, IdleTimeout: 90 * time.Second, MaxLifetime: 10 * time.Minute,
					MaxRequests: 1000, AcquireTimeout: 250 * time.Millisecond, LearnIdleTimeout: false, RetireMargin: 25}
				u.Dial = Dial{Timeout: 500 * time.Millisecond, Source: netip.MustParseAddr("2001:db8::5"),
					SourcePorts: PortRange{Lo: 20000, Hi: 29999},
					Keepalive:   Keepalive{Idle: time.Minute, Interval: 5 * time.Second, Count: 5},
					UserTimeout: 30 * time.Second, TLSHandshakeTimeout: 5 * time.Second}
				u.Timeouts = Timeouts{ResponseIdle: 15 * time.Second, Write: 0}
				u.Limits = UpstreamLimits{ResponseHeaderBytes: 131072}
				return u
			}(),
			"static": func() Upstream {
				u := DefaultUpstream()
				u.Name, u.Endpoints = "static", []string{"127.0.0.1:9100"}
				return u
			}(),
		},
		File: "testdata/full.yaml",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("full.yaml:\n got %+v\nwant %+v", got, want)
	}
}

func TestAnchorsAndMergeKeys(t *testing.T) {
	path := writeConfig(t, `
listeners:
  app: {listen: 127.0.0.1:8080, upstream: b}
upstreams:
  a: &base
    endpoints: [127.0.0.1:9000]
    pool: {max_conns: 7, max_idle: 1}
  b:
    <<: *base
    retries: 5
`)
	cfg := mustLoad(t, LoadOptions{File: path})
	b := cfg.Upstreams["b"]
	if b.Retries != 5 || b.Pool.MaxConns != 7 || !slices.Equal(b.Endpoints, []string{"127.0.0.1:9000"}) {
		t.Errorf("upstream b = %+v; want retries 5, max_conns 7 and a's endpoints", b)
	}

	// Each mapping merges the one before twice: expanded naively, 2^40
	// merges; read once each, a few dozen.
	var y strings.Builder
	y.WriteString("x: &m0 {access: true}\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&y, "x%d: &m%d {<<: [*m%d, *m%d]}\n", i, i, i-1, i-1)
	}
	y.WriteString("log: {<<: *m40}\n")
	lines := problemLines(t, LoadOptions{File: writeConfig(t, y.String())})
	if want := "listeners: none defined; want at least one listener"; !slices.Contains(lines, want) {
		t.Errorf("problems %q; want %q among them", lines, want)
	}
}

func TestLayers(t *testing.T) {
	minimal := "testdata/minimal.yaml"
	tests := []struct {
		name  string
		opts  LoadOptions
		check func(*Config) any // returns the value under test
		want  any
	}{{
		name:  "env sets a key the file leaves out",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS=64"}},
		check: func(c *Config) any { return c.Upstreams["backend"].Pool.MaxConns },
		want:  64,
	}, {
		name:  "max_idle left out follows a smaller max_conns",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS=64"}},
		check: func(c *Config) any { return c.Upstreams["backend"].Pool.MaxIdle },
		want:  64,
	}, {
		name:  "env overrides log level",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_LOG_LEVEL=debug"}},
		check: func(c *Config) any { return c.Log.Level },
		want:  "debug",
	}, {
		name:  "env overrides a key the file sets",
		opts:  LoadOptions{File: "testdata/full.yaml", Environ: []string{"UNSTUCK_UPSTREAMS_API_POOL_MAX_IDLE=3"}},
		check: func(c *Config) any { return c.Upstreams["api"].Pool.MaxIdle },
		want:  3,
	}, {
		name:  "env list is comma separated",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_ENDPOINTS=10.0.0.1:80, 10.0.0.2:80"}},
		check: func(c *Config) any { return c.Upstreams["backend"].Endpoints },
		want:  []string{"10.0.0.1:80", "10.0.0.2:80"},
	}, {
		name:  "env duration and linger",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_LISTENERS_APP_IDLE_TIMEOUT=1m", "UNSTUCK_LISTENERS_APP_LINGER=graceful"}},
		check: func(c *Config) any { l := c.Listeners["app"]; return []any{l.IdleTimeout, l.Linger.Mode} },
		want:  []any{time.Minute, sockopt.Graceful},
	}, {
		name:  "env sets reuse_port",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_LISTENERS_APP_REUSE_PORT=true"}},
		check: func(c *Config) any { return c.Listeners["app"].ReusePort },
		want:  true,
	}, {
		name:  "env sets dial.source",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_DIAL_SOURCE=127.0.0.2"}},
		check: func(c *Config) any { return c.Upstreams["backend"].Dial.Source },
		want:  netip.MustParseAddr("127.0.0.2"),
	}, {
		name: "env sets dial.source_ports and nested keepalive",
		opts: LoadOptions{File: minimal, Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_DIAL_SOURCE=::1",
			"UNSTUCK_UPSTREAMS_BACKEND_DIAL_SOURCE_PORTS=20000-20009", "UNSTUCK_UPSTREAMS_BACKEND_DIAL_KEEPALIVE_COUNT=9"}},
		check: func(c *Config) any { d := c.Upstreams["backend"].Dial; return []any{d.SourcePorts, d.Keepalive.Count} },
		want:  []any{PortRange{Lo: 20000, Hi: 20009}, 9},
	}, {
		name:  "empty env turns the admin listener off",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_ADMIN_LISTEN="}},
		check: func(c *Config) any { return c.Admin.Listen },
		want:  "",
	}, {
		name:  "empty env turns off the admin listener the file sets",
		opts:  LoadOptions{File: "testdata/full.yaml", Environ: []string{"UNSTUCK_ADMIN_LISTEN="}},
		check: func(c *Config) any { return c.Admin.Listen },
		want:  "",
	}, {
		name:  "env sets admin.listen",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_ADMIN_LISTEN=127.0.0.1:9999"}},
		check: func(c *Config) any { return c.Admin.Listen },
		want:  "127.0.0.1:9999",
	}, {
		name:  "env sets shutdown_timeout",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_SHUTDOWN_TIMEOUT=30s"}},
		check: func(c *Config) any { return c.ShutdownTimeout },
		want:  30 * time.Second,
	}, {
		name:  "env turns listener keepalive off",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_LISTENERS_APP_KEEPALIVE_IDLE=0s"}},
		check: func(c *Config) any { return c.Listeners["app"].Keepalive },
		want:  Keepalive{Interval: 10 * time.Second, Count: 3},
	}, {
		name:  "env sets socket_mode and user_timeout",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_LISTENERS_APP_SOCKET_MODE=0600", "UNSTUCK_LISTENERS_APP_USER_TIMEOUT=20s"}},
		check: func(c *Config) any { l := c.Listeners["app"]; return []any{l.SocketMode, l.UserTimeout} },
		want:  []any{os.FileMode(0o600), 20 * time.Second},
	}, {
		name:  "env cannot create an upstream",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_UPSTREAMS_OTHER_ENDPOINTS=10.0.0.1:80"}},
		check: func(c *Config) any { return len(c.Upstreams) },
		want:  1,
	}, {
		name:  "empty env is ignored",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_RETRIES="}},
		check: func(c *Config) any { return c.Upstreams["backend"].Retries },
		want:  2,
	}, {
		name:  "unrelated UNSTUCK_ variables are ignored",
		opts:  LoadOptions{File: minimal, Environ: []string{"UNSTUCK_PORT=tcp://10.0.0.1:80", "UNSTUCK_SERVICE_HOST=10.0.0.1"}},
		check: func(c *Config) any { return c.Listeners["app"].Listen },
		want:  "127.0.0.1:8080",
	}, {
		name:  "dash in a name is an underscore in env",
		opts:  LoadOptions{File: writeConfig(t, "listeners: {my-app: {listen: ':1'}}\nupstreams: {b: {endpoints: ['h:1']}}"), Environ: []string{"UNSTUCK_LISTENERS_MY_APP_PROTOCOL=HTTP"}},
		check: func(c *Config) any { return c.Listeners["my-app"].Protocol },
		want:  "http",
	}, {
		name:  "empty env is ignored for dial.source",
		opts:  LoadOptions{File: "testdata/full.yaml", Environ: []string{"UNSTUCK_UPSTREAMS_API_DIAL_SOURCE="}},
		check: func(c *Config) any { return c.Upstreams["api"].Dial.Source },
		want:  netip.MustParseAddr("2001:db8::5"),
	}, {
		name:  "file turns the admin listener off",
		opts:  LoadOptions{File: writeConfig(t, "admin: {listen: ''}\nlisteners: {a: {listen: ':1'}}\nupstreams: {b: {endpoints: ['h:1']}}")},
		check: func(c *Config) any { return c.Admin.Listen },
		want:  "",
	}, {
		name:  "flag overrides env",
		opts:  LoadOptions{File: minimal, Flags: flags(t, "--log-level", "warn"), Environ: []string{"UNSTUCK_LOG_LEVEL=debug"}},
		check: func(c *Config) any { return c.Log.Level },
		want:  "warn",
	}, {
		name:  "unset flag leaves env",
		opts:  LoadOptions{File: minimal, Flags: flags(t), Environ: []string{"UNSTUCK_LOG_LEVEL=debug"}},
		check: func(c *Config) any { return c.Log.Level },
		want:  "debug",
	}, {
		name:  "--config overrides File",
		opts:  LoadOptions{File: "testdata/nonexistent.yaml", Flags: flags(t, "-c", "testdata/full.yaml")},
		check: func(c *Config) any { return c.Log.Format },
		want:  "json",
	}, {
		name:  "a sole upstream is the listener's default",
		opts:  LoadOptions{File: writeConfig(t, "listeners: {a: {listen: ':1'}}\nupstreams: {only: {endpoints: ['h:1']}}")},
		check: func(c *Config) any { return c.Listeners["a"].Upstream },
		want:  "only",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.check(mustLoad(t, tt.opts)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDevMode(t *testing.T) {
	// A broken ./config.yaml proves dev mode reads no file.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ImplicitFile), []byte("{{{"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)

	got := mustLoad(t, LoadOptions{Flags: flags(t, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001")})
	want := wantDefaultConfig()
	l := want.Listeners["app"]
	l.Listen = "127.0.0.1:7000"
	want.Listeners["app"] = l
	u := want.Upstreams["backend"]
	u.Endpoints = []string{"127.0.0.1:7001"}
	want.Upstreams["backend"] = u
	if !reflect.DeepEqual(got, want) {
		t.Errorf("dev mode:\n got %+v\nwant %+v", got, want)
	}

	// --admin moves the admin listener, over the environment, or turns it off.
	for _, addr := range []string{"127.0.0.1:7002", ""} {
		got = mustLoad(t, LoadOptions{
			Flags:   flags(t, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001", "--admin", addr),
			Environ: []string{"UNSTUCK_ADMIN_LISTEN=127.0.0.1:7003"},
		})
		if got.Admin.Listen != addr {
			t.Errorf("--admin %q: admin.listen = %q", addr, got.Admin.Listen)
		}
	}
	lines := problemLines(t, LoadOptions{Flags: flags(t, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001", "--admin", "127.0.0.1:7000")})
	wantLines := []string{`admin.listen: "127.0.0.1:7000": conflicts with listeners.app.listen ("127.0.0.1:7000")`}
	if !slices.Equal(lines, wantLines) {
		t.Errorf("--admin on the listener's address: problems\n got %q\nwant %q", lines, wantLines)
	}

	got = mustLoad(t, LoadOptions{
		Flags:   flags(t, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001"),
		Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_RETRIES=0"},
	})
	if r := got.Upstreams["backend"].Retries; r != 0 {
		t.Errorf("dev mode with UNSTUCK_UPSTREAMS_BACKEND_RETRIES=0: retries = %d", r)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", ":7000"}, "--upstream: missing; dev mode needs both --listen and --upstream"},
		{[]string{"--upstream", "h:1"}, "--listen: missing; dev mode needs both --listen and --upstream"},
		{[]string{"--listen", ":7000", "--upstream", "h:1", "-c", "x.yaml"}, `--config: "x.yaml": cannot be combined with --listen and --upstream, which read no file`},
		{[]string{"--listen", "nowhere", "--upstream", "h:1"}, `listeners.app.listen: "nowhere": missing port`},
	} {
		lines := problemLines(t, LoadOptions{Flags: flags(t, tt.args...)})
		if !slices.Equal(lines, []string{tt.want}) {
			t.Errorf("%q: got problems %q, want %q", tt.args, lines, tt.want)
		}
	}
}

func TestImplicitFile(t *testing.T) {
	t.Chdir(t.TempDir())
	// No ./config.yaml: the default bytes.
	cfg := mustLoad(t, LoadOptions{Default: []byte("listeners: {x: {listen: ':1'}}\nupstreams: {y: {endpoints: ['h:1']}}")})
	if _, ok := cfg.Listeners["x"]; !ok {
		t.Errorf("without ./config.yaml: listeners %v, want x from Default", cfg.Listeners)
	}
	// Nil Default: the embedded one.
	if cfg := mustLoad(t, LoadOptions{}); !reflect.DeepEqual(cfg, wantDefaultConfig()) {
		t.Errorf("nil Default: got %+v, want the embedded default", cfg)
	}
	// ./config.yaml wins over Default.
	if err := os.WriteFile(ImplicitFile, []byte("log: {level: error}\nlisteners: {z: {listen: ':1'}}\nupstreams: {y: {endpoints: ['h:1']}}"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = mustLoad(t, LoadOptions{Default: unstuck.DefaultConfig})
	if _, ok := cfg.Listeners["z"]; !ok || cfg.Log.Level != "error" {
		t.Errorf("with ./config.yaml: got %+v, want its listener z and level error", cfg)
	}
}

// TestProblems runs each kind of mistake through Load and expects a line
// naming the key and the value.
func TestProblems(t *testing.T) {
	const ok = "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}\n"
	tests := []struct {
		name string
		yaml string
		env  []string
		want []string // every line, sorted
	}{
		{"not an integer", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], pool: {max_conns: abc}}}",
			nil, []string{`upstreams.backend.pool.max_conns: "abc" is not an integer`}},
		{"not an integer from env", ok, []string{"UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS=abc"},
			[]string{`upstreams.backend.pool.max_conns: "abc" is not an integer`}},
		{"float for integer", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], retries: 1.5}}",
			nil, []string{`upstreams.backend.retries: "1.5" is not an integer`}},
		{"bad linger", "listeners: {app: {listen: 127.0.0.1:8080, linger: sometimes}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.linger: "sometimes": want graceful, reset or a duration such as 2s`}},
		{"zero linger", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], linger: 0s}}",
			nil, []string{`upstreams.backend.linger: "0s": a duration must be positive (use reset for an immediate RST)`}},
		{"unknown upstream", "listeners: {app: {listen: 127.0.0.1:8080, upstream: nope}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.upstream: "nope" names no upstream (have: backend)`}},
		{"missing upstream among several", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {a: {endpoints: ['h:1']}, b: {endpoints: ['h:2']}}",
			nil, []string{`listeners.app.upstream: missing; want one of: a, b`}},
		{"port out of range", "listeners: {app: {listen: '127.0.0.1:99999'}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.listen: "127.0.0.1:99999": port out of range`}},
		{"bad host:port", "listeners: {app: {listen: '127.0.0.1'}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.listen: "127.0.0.1": missing port`}},
		{"port not a number", "listeners: {app: {listen: 'localhost:http'}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.listen: "localhost:http": port "http" is not a number`}},
		{"empty unix path", "listeners: {app: {listen: 'unix:'}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.listen: "unix:": empty unix socket path`}},
		{"missing listen", "listeners: {app: {protocol: http}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.listen: missing; want host:port or unix:/path`}},
		{"endpoint missing port", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: [localhost]}}",
			nil, []string{`upstreams.backend.endpoints[0]: "localhost": missing port`}},
		{"endpoint missing host and duplicate", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: [':80', 'h:1', 'h:1']}}",
			nil, []string{`upstreams.backend.endpoints[0]: ":80": missing host`, `upstreams.backend.endpoints[2]: "h:1": same as endpoints[1]`}},
		{"unknown top-level key", ok + "upstreamz: {}\n",
			nil, []string{`upstreamz: unknown key (did you mean upstreams?)`}},
		{"unknown key in an entry", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], pool: {max_conn: 5}}}",
			nil, []string{`upstreams.backend.pool.max_conn: unknown key (did you mean max_conns?)`}},
		{"key at the wrong level", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], max_conns: 5}}",
			nil, []string{`upstreams.backend.max_conns: unknown key (did you mean upstreams.backend.pool.max_conns?)`}},
		{"unknown top-level key near a new one", ok + "shutdown_timout: 5s\n",
			nil, []string{`shutdown_timout: unknown key (did you mean shutdown_timeout?)`}},
		{"unknown admin key", ok + "admin: {listn: ':9901'}\n",
			nil, []string{`admin.listn: unknown key (did you mean listen?)`}},
		{"scalar for admin", ok + "admin: off\n",
			nil, []string{`admin: want a mapping, got "off"`}},
		{"scalar for keepalive", "listeners: {app: {listen: 127.0.0.1:8080, keepalive: 0s}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.keepalive: want a mapping, got "0s"`}},
		{"unknown keepalive key", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], dial: {keepalive: {cnt: 3}}}}",
			nil, []string{`upstreams.backend.dial.keepalive.cnt: unknown key (did you mean count?)`}},
		{"bad new keys from env", ok, []string{"UNSTUCK_SHUTDOWN_TIMEOUT=0s", "UNSTUCK_UPSTREAMS_BACKEND_DIAL_SOURCE=localhost", "UNSTUCK_LISTENERS_APP_SOCKET_MODE=999"},
			[]string{
				`listeners.app.socket_mode: "999" is not an octal file mode; want one such as 0660`,
				`shutdown_timeout: "0s": must be more than 0`,
				`upstreams.backend.dial.source: "localhost" is not an IP address; want one such as 10.0.0.5 or 2001:db8::5`,
			}},
		{"unknown key, no suggestion", ok + "log: {colour: red}\n",
			nil, []string{`log.colour: unknown key`}},
		{"list for a scalar", "listeners: {app: {listen: [a, b]}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.listen: want a string, got a list`}},
		{"scalar for a list", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: '127.0.0.1:9000'}}",
			nil, []string{`upstreams.backend.endpoints: want a list such as ["127.0.0.1:9000"], got "127.0.0.1:9000"`}},
		{"scalar for a section", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], pool: 5}}",
			nil, []string{`upstreams.backend.pool: want a mapping, got "5"`}},
		{"mapping for a scalar", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], retries: {a: 1}}}",
			nil, []string{`upstreams.backend.retries: want an integer, got a mapping`}},
		{"listeners is a list", "listeners: [a]\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners: want a mapping of name to listener settings, such as listeners: {app: {...}}, got a list`}},
		{"entry settings without a name", "listeners: {listen: 127.0.0.1:8080}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.listen: want a mapping of listener settings, got "127.0.0.1:8080"; settings go under a name, such as listeners.app.listen`}},
		{"bad name", "listeners: {App: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners: none defined; want at least one listener`, `listeners.App: bad listener name; use lower case letters, digits, '-' and '_'`}},
		{"negative duration", "listeners: {app: {listen: 127.0.0.1:8080, idle_timeout: -1s}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.idle_timeout: "-1s": must not be negative`}},
		{"duration without unit", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], dial: {timeout: 5}}}",
			nil, []string{`upstreams.backend.dial.timeout: "5" has no unit; write 5s or 5ms`}},
		{"not a duration", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], timeouts: {response_header: soon}}}",
			nil, []string{`upstreams.backend.timeouts.response_header: "soon" is not a duration; want one such as 500ms, 2s or 1m30s`}},
		{"negative counts", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], retries: -1, pool: {max_idle: -1, max_requests: -2}}}",
			nil, []string{
				`upstreams.backend.pool.max_idle: "-1": must not be negative`,
				`upstreams.backend.pool.max_requests: "-2": must not be negative`,
				`upstreams.backend.retries: "-1": must not be negative`,
			}},
		{"max_idle over max_conns", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], pool: {max_conns: 4, max_idle: 5}}}",
			nil, []string{`upstreams.backend.pool.max_idle: "5": more than pool.max_conns (4)`}},
		{"max_idle not compared with a bad max_conns", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], pool: {max_conns: x, max_idle: 600}}}",
			nil, []string{`upstreams.backend.pool.max_conns: "x" is not an integer`}},
		{"max_conns below 1", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], pool: {max_conns: 0, max_idle: 0}}}",
			nil, []string{`upstreams.backend.pool.max_conns: "0": want at least 1`}},
		{"min_idle above max_idle", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], pool: {max_idle: 4, min_idle: 5}}}",
			nil, []string{`upstreams.backend.pool.min_idle: "5": more than pool.max_idle (4)`}},
		{"one upstream for tcp and http", "listeners: {a: {listen: 127.0.0.1:8080}, b: {listen: 127.0.0.1:8081, protocol: tcp}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.b.upstream: "backend" is also the upstream of listener a, whose protocol is http; an upstream serves http listeners or tcp listeners, not both`}},
		{"tls key without tls", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], tls: {server_name: api.test}}}",
			nil, []string{`upstreams.backend.tls.enabled: false, but tls.server_name is set; set tls.enabled: true to use TLS`}},
		{"tls key without its certificate", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], tls: {enabled: true, key_file: /k.pem}}}",
			nil, []string{`upstreams.backend.tls.cert_file: missing; key_file needs the certificate it is the key of`}},
		{"tls alpn item", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000'], tls: {enabled: true, alpn: [{h2: 1}]}}}",
			nil, []string{`upstreams.backend.tls.alpn[0]: want a protocol name such as http/1.1, got a mapping`}},
		{"protocol", "listeners: {app: {listen: 127.0.0.1:8080, protocol: grpc}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.protocol: "grpc": want http or tcp`}},
		{"log level and format", ok + "log: {level: loud, format: xml, access: maybe}\n",
			nil, []string{`log.access: "maybe": want true or false`, `log.format: "xml": want console or json`, `log.level: "loud": want debug, info, warn or error`}},
		{"no listeners", "upstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners: none defined; want at least one listener`}},
		{"empty file", "# nothing\n",
			nil, []string{`listeners: none defined; want at least one listener`, `upstreams: none defined; want at least one upstream`}},
		{"no endpoints", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: {endpoints: []}}",
			nil, []string{`upstreams.backend.endpoints: empty; want at least one host:port`}},
		{"empty upstream entry", "listeners: {app: {listen: 127.0.0.1:8080}}\nupstreams: {backend: }",
			nil, []string{`upstreams.backend.endpoints: empty; want at least one host:port`}},
		{"same address twice", "listeners: {a: {listen: 127.0.0.1:8080}, b: {listen: '127.0.0.1:8080'}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.b.listen: "127.0.0.1:8080": conflicts with listeners.a.listen ("127.0.0.1:8080")`}},
		{"wildcard overlaps", "listeners: {a: {listen: ':8080'}, b: {listen: '127.0.0.1:8080'}, c: {listen: '127.0.0.1:8081'}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.b.listen: "127.0.0.1:8080": conflicts with listeners.a.listen (":8080")`}},
		{"same unix socket", "listeners: {a: {listen: 'unix:/tmp/x.sock'}, b: {listen: 'unix:/tmp//x.sock'}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.b.listen: "unix:/tmp//x.sock": conflicts with listeners.a.listen ("unix:/tmp/x.sock")`}},
		{"key written twice in a merged mapping", "listeners: {app: {listen: 127.0.0.1:8080, upstream: b}}\nupstreams: {a: &a {endpoints: ['h:1'], retries: 1, retries: 2}, b: {<<: *a}}",
			nil, []string{`upstreams.a.retries: written twice; first at line 2`}},
		{"key written twice", "listeners: {app: {listen: 127.0.0.1:8080, listen: 127.0.0.1:8081}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.listen: written twice; first at line 1`}},
		{"top level is a list", "- a\n- b\n",
			nil, []string{`config.yaml: want a mapping with log, listeners and upstreams at the top level, got a list`}},
		{"syntax error", "listeners:\n  app:\n\tlisten: 127.0.0.1:8080\n",
			nil, []string{`config.yaml: line 3: found character that cannot start any token`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.yaml)
			lines := problemLines(t, LoadOptions{File: path, Environ: tt.env})
			for i := range lines {
				lines[i] = strings.ReplaceAll(lines[i], path, "config.yaml")
			}
			if !slices.Equal(lines, tt.want) {
				t.Errorf("problems:\n got %q\nwant %q", lines, tt.want)
			}
		})
	}
}

func TestProblemSources(t *testing.T) {
	path := writeConfig(t, "listeners:\n  app:\n    listen: 127.0.0.1:8080\n    linger: sometimes\nupstreams: {backend: {endpoints: ['127.0.0.1:9000', localhost]}}\n")
	_, err := Load(LoadOptions{
		File:    path,
		Flags:   flags(t, "--log-level", "loud"),
		Environ: []string{"UNSTUCK_UPSTREAMS_BACKEND_RETRIES=x"},
	})
	want := strings.Join([]string{
		`listeners.app.linger: "sometimes": want graceful, reset or a duration such as 2s (` + path + `:4)`,
		`log.level: "loud": want debug, info, warn or error (flag --log-level)`,
		`upstreams.backend.endpoints[1]: "localhost": missing port (` + path + `:5)`,
		`upstreams.backend.retries: "x" is not an integer (env UNSTUCK_UPSTREAMS_BACKEND_RETRIES)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("got error:\n%v\nwant:\n%s", err, want)
	}
}

// TestManyProblems checks that every problem in one file is reported, one
// per line, sorted by key.
func TestManyProblems(t *testing.T) {
	_, err := Load(LoadOptions{File: "testdata/bad.yaml", Environ: noEnv})
	want := strings.Join([]string{
		`listeners.app.linger: "sometimes": want graceful, reset or a duration such as 2s (testdata/bad.yaml:6)`,
		`listeners.app.listen: "127.0.0.1:99999": port out of range (testdata/bad.yaml:5)`,
		`listeners.app.upstream: "nope" names no upstream (have: backend) (testdata/bad.yaml:7)`,
		`upstreams.backend.endpoints[0]: "localhost": missing port (testdata/bad.yaml:10)`,
		`upstreams.backend.pool.max_conn: unknown key (did you mean max_conns?) (testdata/bad.yaml:13)`,
		`upstreams.backend.pool.max_conns: "abc" is not an integer (testdata/bad.yaml:12)`,
		`upstreamz: unknown key (did you mean upstreams?) (testdata/bad.yaml:2)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("got error:\n%v\nwant:\n%s", err, want)
	}
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		file string
		want string
	}{
		{"not found", filepath.Join(dir, "missing.yaml"), filepath.Join(dir, "missing.yaml") + ": file not found"},
		{"a directory", dir, dir + ": is a directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lines := problemLines(t, LoadOptions{File: tt.file})
			if !slices.Equal(lines, []string{tt.want}) {
				t.Errorf("got %q, want %q", lines, tt.want)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		msg  string
	}{
		{"90s", 90 * time.Second, ""},
		{"1m30s", 90 * time.Second, ""},
		{"0", 0, ""},
		{"0s", 0, ""},
		{"0.0", 0, ""},
		{"90", 0, `"90" has no unit; write 90s or 90ms`},
		{"1.5", 0, `"1.5" has no unit; write 1.5s or 1.5ms`},
		{"-1s", 0, `"-1s": must not be negative`},
		{"soon", 0, `"soon" is not a duration; want one such as 500ms, 2s or 1m30s`},
	} {
		got, msg := parseDuration(tt.in)
		if got != tt.want || msg != tt.msg {
			t.Errorf("parseDuration(%q) = %v, %q; want %v, %q", tt.in, got, msg, tt.want, tt.msg)
		}
	}
}

func TestEnvName(t *testing.T) {
	for key, want := range map[string]string{
		"log.level":                        "UNSTUCK_LOG_LEVEL",
		"upstreams.backend.pool.max_conns": "UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS",
		"listeners.my-app.listen":          "UNSTUCK_LISTENERS_MY_APP_LISTEN",
	} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", key, got, want)
		}
	}
}

// withKey returns a valid configuration with key, written relative to the
// top level, set to value (as written in YAML).
func withKey(key, value string) string {
	nest := func(key string) string {
		parts := strings.Split(key, ".")
		s := parts[len(parts)-1] + ": " + value
		for i := len(parts) - 2; i >= 0; i-- {
			s = parts[i] + ": {" + s + "}"
		}
		return s
	}
	listener, upstream := "listen: 127.0.0.1:8080", "endpoints: ['127.0.0.1:9000']"
	var top string
	if rest, ok := strings.CutPrefix(key, "listeners.app."); ok {
		listener += ", " + nest(rest)
	} else if rest, ok := strings.CutPrefix(key, "upstreams.backend."); ok {
		upstream += ", " + nest(rest)
	} else {
		top = nest(key) + "\n"
	}
	return top + "listeners: {app: {" + listener + "}}\nupstreams: {backend: {" + upstream + "}}\n"
}

// keyCase is one value of a key, loaded as the only change to a valid
// configuration (withKey).
type keyCase struct {
	key, value string
	want       any    // the value decoded, if problem is empty
	problem    string // the one problem, without the key
}

// runKeyCases loads each case through Load: a case with a problem must
// give that one problem, named by the full key; one without must decode
// to want, read back from the Config with get[key].
func runKeyCases(t *testing.T, get map[string]func(*Config) any, tests []keyCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			opts := LoadOptions{File: writeConfig(t, withKey(tt.key, tt.value))}
			if tt.problem != "" {
				lines := problemLines(t, opts)
				if want := []string{tt.key + ": " + tt.problem}; !slices.Equal(lines, want) {
					t.Errorf("problems:\n got %q\nwant %q", lines, want)
				}
				return
			}
			if got := get[tt.key](mustLoad(t, opts)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v (%T), want %v (%T)", got, got, tt.want, tt.want)
			}
		})
	}
}

// TestNewKeys runs good and bad values of the socket, admin and shutdown
// keys through Load. A bad value's problem names the full key and the
// value as written.
func TestNewKeys(t *testing.T) {
	get := map[string]func(*Config) any{
		"admin.listen":                              func(c *Config) any { return c.Admin.Listen },
		"shutdown_timeout":                          func(c *Config) any { return c.ShutdownTimeout },
		"release_memory_after_idle":                 func(c *Config) any { return c.ReleaseMemoryAfterIdle },
		"listeners.app.idle_release_after":          func(c *Config) any { return c.Listeners["app"].IdleReleaseAfter },
		"listeners.app.reuse_port":                  func(c *Config) any { return c.Listeners["app"].ReusePort },
		"listeners.app.socket_mode":                 func(c *Config) any { return c.Listeners["app"].SocketMode },
		"listeners.app.app_fin_timeout":             func(c *Config) any { return c.Listeners["app"].AppFinTimeout },
		"listeners.app.keepalive.idle":              func(c *Config) any { return c.Listeners["app"].Keepalive },
		"listeners.app.keepalive.interval":          func(c *Config) any { return c.Listeners["app"].Keepalive },
		"listeners.app.keepalive.count":             func(c *Config) any { return c.Listeners["app"].Keepalive },
		"listeners.app.user_timeout":                func(c *Config) any { return c.Listeners["app"].UserTimeout },
		"upstreams.backend.dial.source":             func(c *Config) any { return c.Upstreams["backend"].Dial.Source },
		"upstreams.backend.dial.keepalive.idle":     func(c *Config) any { return c.Upstreams["backend"].Dial.Keepalive },
		"upstreams.backend.dial.keepalive.count":    func(c *Config) any { return c.Upstreams["backend"].Dial.Keepalive },
		"upstreams.backend.dial.user_timeout":       func(c *Config) any { return c.Upstreams["backend"].Dial.UserTimeout },
		"upstreams.backend.dial.keepalive.interval": func(c *Config) any { return c.Upstreams["backend"].Dial.Keepalive },
	}
	ka := func(idle, interval time.Duration, count int) Keepalive {
		return Keepalive{Idle: idle, Interval: interval, Count: count}
	}
	const (
		s  = time.Second
		ms = time.Millisecond
	)
	tests := []keyCase{
		{key: "admin.listen", value: "'127.0.0.1:9000'", want: "127.0.0.1:9000"},
		{key: "admin.listen", value: "'[::1]:0'", want: "[::1]:0"},
		{key: "admin.listen", value: "''", want: ""},
		{key: "admin.listen", value: "localhost", problem: `"localhost": missing port`},
		{key: "admin.listen", value: "'127.0.0.1:99999'", problem: `"127.0.0.1:99999": port out of range`},
		{key: "admin.listen", value: "'unix:/run/admin.sock'", problem: `"unix:/run/admin.sock": unix sockets are not supported for admin.listen; want host:port`},
		{key: "admin.listen", value: "'127.0.0.1:8080'", problem: `"127.0.0.1:8080": conflicts with listeners.app.listen ("127.0.0.1:8080")`},
		{key: "admin.listen", value: "':8080'", problem: `":8080": conflicts with listeners.app.listen ("127.0.0.1:8080")`},

		{key: "shutdown_timeout", value: "1m", want: time.Minute},
		{key: "shutdown_timeout", value: "0", problem: `"0": must be more than 0`},
		{key: "shutdown_timeout", value: "-1s", problem: `"-1s": must not be negative`},
		{key: "shutdown_timeout", value: "30", problem: `"30" has no unit; write 30s or 30ms`},

		{key: "release_memory_after_idle", value: "5s", want: 5 * time.Second},
		{key: "release_memory_after_idle", value: "0s", want: time.Duration(0)},
		{key: "release_memory_after_idle", value: "-1s", problem: `"-1s": must not be negative`},
		{key: "release_memory_after_idle", value: "soon", problem: `"soon" is not a duration; want one such as 500ms, 2s or 1m30s`},

		{key: "listeners.app.idle_release_after", value: "250ms", want: 250 * ms},
		{key: "listeners.app.idle_release_after", value: "0s", want: time.Duration(0)},
		{key: "listeners.app.idle_release_after", value: "-1s", problem: `"-1s": must not be negative`},

		{key: "listeners.app.reuse_port", value: "true", want: true},
		{key: "listeners.app.reuse_port", value: "false", want: false},
		{key: "listeners.app.reuse_port", value: "yes", problem: `"yes": want true or false`},

		{key: "listeners.app.socket_mode", value: "'0600'", want: os.FileMode(0o600)},
		{key: "listeners.app.socket_mode", value: "0777", want: os.FileMode(0o777)},
		{key: "listeners.app.socket_mode", value: "660", want: os.FileMode(0o660)},
		{key: "listeners.app.socket_mode", value: "0", want: os.FileMode(0)},
		{key: "listeners.app.socket_mode", value: "'1777'", problem: `"1777": want 0 to 0777`},
		{key: "listeners.app.socket_mode", value: "'0800'", problem: `"0800" is not an octal file mode; want one such as 0660`},
		{key: "listeners.app.socket_mode", value: "0o600", problem: `"0o600" is not an octal file mode; want one such as 0660`},
		{key: "listeners.app.socket_mode", value: "rw-rw----", problem: `"rw-rw----" is not an octal file mode; want one such as 0660`},
		{key: "listeners.app.socket_mode", value: "''", problem: `"" is not an octal file mode; want one such as 0660`},

		{key: "listeners.app.app_fin_timeout", value: "250ms", want: 250 * ms},
		{key: "listeners.app.app_fin_timeout", value: "0s", problem: `"0s": must be more than 0`},
		{key: "listeners.app.app_fin_timeout", value: "-5s", problem: `"-5s": must not be negative`},
		{key: "listeners.app.app_fin_timeout", value: "soon", problem: `"soon" is not a duration; want one such as 500ms, 2s or 1m30s`},

		{key: "listeners.app.keepalive.idle", value: "0s", want: ka(0, 10*s, 3)},
		{key: "listeners.app.keepalive.idle", value: "2m", want: ka(2*time.Minute, 10*s, 3)},
		{key: "listeners.app.keepalive.idle", value: "1500ms", problem: `"1500ms": want whole seconds (the kernel counts TCP_KEEPIDLE in seconds)`},
		{key: "listeners.app.keepalive.idle", value: "500ms", problem: `"500ms": want whole seconds (the kernel counts TCP_KEEPIDLE in seconds)`},
		{key: "listeners.app.keepalive.idle", value: "10h", problem: `"10h": want at most 9h6m7s (the kernel's limit for TCP_KEEPIDLE)`},
		{key: "listeners.app.keepalive.interval", value: "1s", want: ka(30*s, s, 3)},
		{key: "listeners.app.keepalive.interval", value: "0s", problem: `"0s": must be more than 0 while keepalive is on (idle is not 0s)`},
		{key: "listeners.app.keepalive.interval", value: "2.5s", problem: `"2.5s": want whole seconds (the kernel counts TCP_KEEPINTVL in seconds)`},
		{key: "listeners.app.keepalive.count", value: "1", want: ka(30*s, 10*s, 1)},
		{key: "listeners.app.keepalive.count", value: "127", want: ka(30*s, 10*s, 127)},
		{key: "listeners.app.keepalive.count", value: "0", problem: `"0": want at least 1 while keepalive is on (idle is not 0s)`},
		{key: "listeners.app.keepalive.count", value: "128", problem: `"128": want at most 127 (the kernel's limit for TCP_KEEPCNT)`},
		{key: "listeners.app.keepalive.count", value: "-1", problem: `"-1": must not be negative`},
		{key: "listeners.app.keepalive.count", value: "three", problem: `"three" is not an integer`},

		{key: "listeners.app.user_timeout", value: "0s", want: time.Duration(0)},
		{key: "listeners.app.user_timeout", value: "1500ms", want: 1500 * ms},
		{key: "listeners.app.user_timeout", value: "1.5ms", problem: `"1.5ms": want whole milliseconds (the kernel counts TCP_USER_TIMEOUT in milliseconds)`},
		{key: "listeners.app.user_timeout", value: "600h", problem: `"600h": want at most 596h31m23.647s (the kernel's limit for TCP_USER_TIMEOUT)`},
		{key: "listeners.app.user_timeout", value: "-1ms", problem: `"-1ms": must not be negative`},

		{key: "upstreams.backend.dial.source", value: "127.0.0.2", want: netip.MustParseAddr("127.0.0.2")},
		{key: "upstreams.backend.dial.source", value: "'2001:db8::5'", want: netip.MustParseAddr("2001:db8::5")},
		{key: "upstreams.backend.dial.source", value: "''", want: netip.Addr{}},
		{key: "upstreams.backend.dial.source", value: "'10.0.0.5:1234'", problem: `"10.0.0.5:1234": want an IP address without a port (set ports with dial.source_ports)`},
		{key: "upstreams.backend.dial.source", value: "eth0", problem: `"eth0" is not an IP address; want one such as 10.0.0.5 or 2001:db8::5`},
		{key: "upstreams.backend.dial.source", value: "10.0.0.256", problem: `"10.0.0.256" is not an IP address; want one such as 10.0.0.5 or 2001:db8::5`},

		{key: "upstreams.backend.dial.keepalive.idle", value: "0", want: ka(0, 10*s, 3)},
		{key: "upstreams.backend.dial.keepalive.idle", value: "0.5s", problem: `"0.5s": want whole seconds (the kernel counts TCP_KEEPIDLE in seconds)`},
		{key: "upstreams.backend.dial.keepalive.interval", value: "32767s", want: ka(30*s, 32767*s, 3)},
		{key: "upstreams.backend.dial.keepalive.interval", value: "0s", problem: `"0s": must be more than 0 while keepalive is on (idle is not 0s)`},
		{key: "upstreams.backend.dial.keepalive.count", value: "200", problem: `"200": want at most 127 (the kernel's limit for TCP_KEEPCNT)`},
		{key: "upstreams.backend.dial.user_timeout", value: "45s", want: 45 * s},
		{key: "upstreams.backend.dial.user_timeout", value: "100us", problem: `"100us": want whole milliseconds (the kernel counts TCP_USER_TIMEOUT in milliseconds)`},
	}
	runKeyCases(t, get, tests)
}

// TestSourcePorts covers dial.source_ports, which needs dial.source.
func TestSourcePorts(t *testing.T) {
	const key = "upstreams.backend.dial.source_ports"
	for _, tt := range []struct {
		dial    string
		want    PortRange
		problem string // the one problem, if any
	}{
		{dial: "{source: 10.0.0.5, source_ports: 20000-29999}", want: PortRange{20000, 29999}},
		{dial: "{source: 10.0.0.5, source_ports: 1-65535}", want: PortRange{1, 65535}},
		{dial: "{source: 10.0.0.5, source_ports: ' 20000 - 20000 '}", want: PortRange{20000, 20000}},
		{dial: "{source: 10.0.0.5, source_ports: ''}", want: PortRange{}},
		{dial: "{source_ports: 20000-29999}", problem: key + `: "20000-29999": dial.source_ports needs dial.source`},
		{dial: "{source: 10.0.0.5, source_ports: 20000}", problem: key + `: "20000": want a port range such as 20000-29999`},
		{dial: "{source: 10.0.0.5, source_ports: a-b}", problem: key + `: "a-b": want a port range such as 20000-29999`},
		{dial: "{source: 10.0.0.5, source_ports: 1-2-3}", problem: key + `: "1-2-3": want a port range such as 20000-29999`},
		{dial: "{source: 10.0.0.5, source_ports: 0-100}", problem: key + `: "0-100": port out of range (want 1-65535)`},
		{dial: "{source: 10.0.0.5, source_ports: 20000-70000}", problem: key + `: "20000-70000": port out of range (want 1-65535)`},
		{dial: "{source: 10.0.0.5, source_ports: 29999-20000}", problem: key + `: "29999-20000": the first port is more than the last`},
		// A bad source is reported once, not again as missing.
		{dial: "{source: nowhere, source_ports: 20000-29999}", problem: `upstreams.backend.dial.source: "nowhere" is not an IP address; want one such as 10.0.0.5 or 2001:db8::5`},
	} {
		t.Run(tt.dial, func(t *testing.T) {
			opts := LoadOptions{File: writeConfig(t, withKey("upstreams.backend.dial", tt.dial))}
			if tt.problem != "" {
				if lines := problemLines(t, opts); !slices.Equal(lines, []string{tt.problem}) {
					t.Errorf("problems:\n got %q\nwant %q", lines, []string{tt.problem})
				}
				return
			}
			if got := mustLoad(t, opts).Upstreams["backend"].Dial.SourcePorts; got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestKeepaliveOff checks that with idle 0s the interval and count are not
// held to the rules for keepalive on, but must still be in range.
func TestKeepaliveOff(t *testing.T) {
	cfg := mustLoad(t, LoadOptions{File: writeConfig(t, withKey("listeners.app.keepalive", "{idle: 0s, interval: 0s, count: 0}"))})
	if got := cfg.Listeners["app"].Keepalive; got != (Keepalive{}) {
		t.Errorf("keepalive = %+v, want all zero", got)
	}
	lines := problemLines(t, LoadOptions{File: writeConfig(t, withKey("listeners.app.keepalive", "{idle: 0s, interval: 1500ms, count: 500}"))})
	want := []string{
		`listeners.app.keepalive.count: "500": want at most 127 (the kernel's limit for TCP_KEEPCNT)`,
		`listeners.app.keepalive.interval: "1500ms": want whole seconds (the kernel counts TCP_KEEPINTVL in seconds)`,
	}
	if !slices.Equal(lines, want) {
		t.Errorf("problems:\n got %q\nwant %q", lines, want)
	}
	// A bad idle is not taken as keepalive on.
	lines = problemLines(t, LoadOptions{File: writeConfig(t, withKey("listeners.app.keepalive", "{idle: x, interval: 0s, count: 0}"))})
	want = []string{`listeners.app.keepalive.idle: "x" is not a duration; want one such as 500ms, 2s or 1m30s`}
	if !slices.Equal(lines, want) {
		t.Errorf("problems:\n got %q\nwant %q", lines, want)
	}
}

// TestDevModeAdminConflict checks that dev mode, which gets the default
// admin.listen, reports a --listen on the admin port.
func TestDevModeAdminConflict(t *testing.T) {
	t.Chdir(t.TempDir())
	lines := problemLines(t, LoadOptions{Flags: flags(t, "--listen", "127.0.0.1:9901", "--upstream", "127.0.0.1:7001")})
	want := []string{`admin.listen: "127.0.0.1:9901": conflicts with listeners.app.listen ("127.0.0.1:9901")`}
	if !slices.Equal(lines, want) {
		t.Errorf("problems:\n got %q\nwant %q", lines, want)
	}
	cfg := mustLoad(t, LoadOptions{
		Flags:   flags(t, "--listen", "127.0.0.1:9901", "--upstream", "127.0.0.1:7001"),
		Environ: []string{"UNSTUCK_ADMIN_LISTEN="},
	})
	if cfg.Admin.Listen != "" {
		t.Errorf("admin.listen = %q, want it off", cfg.Admin.Listen)
	}
}

// TestEnvExamples loads the environment examples of the documentation
// together.
func TestEnvExamples(t *testing.T) {
	cfg := mustLoad(t, LoadOptions{File: "testdata/minimal.yaml", Environ: []string{
		"UNSTUCK_LISTENERS_APP_REUSE_PORT=true",
		"UNSTUCK_UPSTREAMS_BACKEND_DIAL_SOURCE=127.0.0.2",
		"UNSTUCK_ADMIN_LISTEN=",
		"UNSTUCK_SHUTDOWN_TIMEOUT=30s",
		"UNSTUCK_LISTENERS_APP_KEEPALIVE_IDLE=0s",
	}})
	want := wantDefaultConfig()
	l := want.Listeners["app"]
	l.ReusePort = true
	l.Keepalive.Idle = 0
	want.Listeners["app"] = l
	u := want.Upstreams["backend"]
	u.Dial.Source = netip.MustParseAddr("127.0.0.2")
	want.Upstreams["backend"] = u
	want.Admin.Listen = ""
	want.ShutdownTimeout = 30 * time.Second
	want.File = cfg.File
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v\nwant %+v", cfg, want)
	}
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		msg  string
	}{
		{"0", 0, ""},
		{"4096", 4096, ""},
		{"64KiB", 64 << 10, ""},
		{"64 KiB", 64 << 10, ""},
		{"1MiB", 1 << 20, ""},
		{"2GiB", 2 << 30, ""},
		{"0KiB", 0, ""},
		{"64KB", 0, `"64KB": unknown unit "KB"; want KiB, MiB or GiB, or none for bytes`},
		{"64k", 0, `"64k": unknown unit "k"; want KiB, MiB or GiB, or none for bytes`},
		{"64kib", 0, `"64kib": unknown unit "kib"; want KiB, MiB or GiB, or none for bytes`},
		{"1.5MiB", 0, `"1.5MiB" is not a size; want a whole number such as 65536, 64KiB or 1MiB`},
		{"1e6", 0, `"1e6" is not a size; want a whole number such as 65536, 64KiB or 1MiB`},
		{"KiB", 0, `"KiB" is not a size; want one such as 65536, 64KiB or 1MiB`},
		{"big", 0, `"big" is not a size; want one such as 65536, 64KiB or 1MiB`},
		{"", 0, `"" is not a size; want one such as 65536, 64KiB or 1MiB`},
		{"-1", -1, ""}, // check refuses it: TestLimitKeys
		{"-4KiB", -4 << 10, ""},
		{"9223372036854775807", 1<<63 - 1, ""},
		{"9223372036854775808", 0, `"9223372036854775808": too large`},
		{"9000000000GiB", 0, `"9000000000GiB": too large`},
	} {
		got, msg := parseSize(tt.in)
		if got != tt.want || msg != tt.msg {
			t.Errorf("parseSize(%q) = %v, %q; want %v, %q", tt.in, got, msg, tt.want, tt.msg)
		}
	}
}

// TestLimitKeys runs good and bad values of the timeouts and limits that
// bound a request and a response through Load. A bad value's problem names
// the full key and the value as written.
func TestLimitKeys(t *testing.T) {
	get := map[string]func(*Config) any{
		"listeners.app.read_header_timeout":         func(c *Config) any { return c.Listeners["app"].ReadHeaderTimeout },
		"listeners.app.body_read_timeout":           func(c *Config) any { return c.Listeners["app"].BodyReadTimeout },
		"listeners.app.send_timeout":                func(c *Config) any { return c.Listeners["app"].SendTimeout },
		"listeners.app.limits.request_header_bytes": func(c *Config) any { return c.Listeners["app"].Limits.RequestHeaderBytes },
		"listeners.app.limits.request_body_bytes":   func(c *Config) any { return c.Listeners["app"].Limits.RequestBodyBytes },
		"listeners.app.limits.max_conns":            func(c *Config) any { return c.Listeners["app"].Limits.MaxConns },
		"upstreams.backend.timeouts.response_idle":  func(c *Config) any { return c.Upstreams["backend"].Timeouts.ResponseIdle },
		"upstreams.backend.timeouts.write":          func(c *Config) any { return c.Upstreams["backend"].Timeouts.Write },
		"upstreams.backend.limits.response_header_bytes": func(c *Config) any {
			return c.Upstreams["backend"].Limits.ResponseHeaderBytes
		},
	}
	tests := []keyCase{
		{key: "listeners.app.read_header_timeout", value: "5s", want: 5 * time.Second},
		{key: "listeners.app.read_header_timeout", value: "0", want: time.Duration(0)},
		{key: "listeners.app.read_header_timeout", value: "-1s", problem: `"-1s": must not be negative`},
		{key: "listeners.app.read_header_timeout", value: "10", problem: `"10" has no unit; write 10s or 10ms`},
		{key: "listeners.app.body_read_timeout", value: "2m", want: 2 * time.Minute},
		{key: "listeners.app.body_read_timeout", value: "0s", want: time.Duration(0)},
		{key: "listeners.app.body_read_timeout", value: "slow", problem: `"slow" is not a duration; want one such as 500ms, 2s or 1m30s`},
		{key: "listeners.app.send_timeout", value: "250ms", want: 250 * time.Millisecond},
		{key: "listeners.app.send_timeout", value: "-5s", problem: `"-5s": must not be negative`},

		{key: "listeners.app.limits.request_header_bytes", value: "4096", want: 4096},
		{key: "listeners.app.limits.request_header_bytes", value: "1MiB", want: 1 << 20},
		{key: "listeners.app.limits.request_header_bytes", value: "1GiB", want: 1 << 30},
		{key: "listeners.app.limits.request_header_bytes", value: "4095", problem: `"4095": want at least 4096 (4KiB)`},
		{key: "listeners.app.limits.request_header_bytes", value: "0", problem: `"0": want at least 4096 (4KiB)`},
		{key: "listeners.app.limits.request_header_bytes", value: "2GiB", problem: `"2GiB": want at most 1GiB`},
		{key: "listeners.app.limits.request_header_bytes", value: "64KB", problem: `"64KB": unknown unit "KB"; want KiB, MiB or GiB, or none for bytes`},
		{key: "listeners.app.limits.request_header_bytes", value: "[1]", problem: `want a size such as 64KiB, got a list`},
		{key: "listeners.app.limits.request_body_bytes", value: "0", want: int64(0)},
		{key: "listeners.app.limits.request_body_bytes", value: "10MiB", want: int64(10 << 20)},
		{key: "listeners.app.limits.request_body_bytes", value: "8GiB", want: int64(8 << 30)},
		{key: "listeners.app.limits.request_body_bytes", value: "-1", problem: `"-1": must not be negative`},
		{key: "listeners.app.limits.request_body_bytes", value: "lots", problem: `"lots" is not a size; want one such as 65536, 64KiB or 1MiB`},
		{key: "listeners.app.limits.max_conns", value: "0", want: 0},
		{key: "listeners.app.limits.max_conns", value: "2000", want: 2000},
		{key: "listeners.app.limits.max_conns", value: "-1", problem: `"-1": must not be negative`},
		{key: "listeners.app.limits.max_conns", value: "10k", problem: `"10k" is not an integer`},

		{key: "upstreams.backend.timeouts.response_idle", value: "5m", want: 5 * time.Minute},
		{key: "upstreams.backend.timeouts.response_idle", value: "0s", want: time.Duration(0)},
		{key: "upstreams.backend.timeouts.response_idle", value: "-1ms", problem: `"-1ms": must not be negative`},
		{key: "upstreams.backend.timeouts.write", value: "1s", want: time.Second},
		{key: "upstreams.backend.timeouts.write", value: "5", problem: `"5" has no unit; write 5s or 5ms`},
		{key: "upstreams.backend.limits.response_header_bytes", value: "16KiB", want: 16 << 10},
		{key: "upstreams.backend.limits.response_header_bytes", value: "1KiB", problem: `"1KiB": want at least 4096 (4KiB)`},
		{key: "upstreams.backend.limits.response_header_bytes", value: "{a: 1}", problem: `want a size such as 64KiB, got a mapping`},
	}
	runKeyCases(t, get, tests)
}

// TestRetireKeys runs good and bad values of the retirement keys through
// Load: retire_margin is a percentage written with its sign.
func TestRetireKeys(t *testing.T) {
	get := map[string]func(*Config) any{
		"upstreams.backend.pool.learn_idle_timeout": func(c *Config) any { return c.Upstreams["backend"].Pool.LearnIdleTimeout },
		"upstreams.backend.pool.retire_margin":      func(c *Config) any { return c.Upstreams["backend"].Pool.RetireMargin },
	}
	tests := []keyCase{
		{key: "upstreams.backend.pool.learn_idle_timeout", value: "false", want: false},
		{key: "upstreams.backend.pool.learn_idle_timeout", value: "true", want: true},
		{key: "upstreams.backend.pool.learn_idle_timeout", value: "on", problem: `"on": want true or false`},
		{key: "upstreams.backend.pool.retire_margin", value: "10%", want: Percent(10)},
		{key: "upstreams.backend.pool.retire_margin", value: "'35 %'", want: Percent(35)},
		{key: "upstreams.backend.pool.retire_margin", value: "90%", want: Percent(90)},
		{key: "upstreams.backend.pool.retire_margin", value: "20", problem: `"20": want a percentage with its sign, such as 20%`},
		{key: "upstreams.backend.pool.retire_margin", value: "0.2", problem: `"0.2": want a percentage such as 20%`},
		{key: "upstreams.backend.pool.retire_margin", value: "0%", problem: `"0%": want at least 1%`},
		{key: "upstreams.backend.pool.retire_margin", value: "95%", problem: `"95%": want at most 90%`},
		{key: "upstreams.backend.pool.retire_margin", value: "-5%", problem: `"-5%": must not be negative`},
	}
	runKeyCases(t, get, tests)
}

// TestLimitKeysFromEnv sets the new keys from the environment, sizes with
// a unit and without, on a file that leaves them out.
func TestLimitKeysFromEnv(t *testing.T) {
	cfg := mustLoad(t, LoadOptions{File: "testdata/minimal.yaml", Environ: []string{
		"UNSTUCK_LISTENERS_APP_READ_HEADER_TIMEOUT=3s",
		"UNSTUCK_LISTENERS_APP_LIMITS_REQUEST_HEADER_BYTES=32KiB",
		"UNSTUCK_LISTENERS_APP_LIMITS_REQUEST_BODY_BYTES=1048576",
		"UNSTUCK_LISTENERS_APP_LIMITS_MAX_CONNS=64",
		"UNSTUCK_UPSTREAMS_BACKEND_TIMEOUTS_RESPONSE_IDLE=0s",
		"UNSTUCK_UPSTREAMS_BACKEND_LIMITS_RESPONSE_HEADER_BYTES=128KiB",
	}})
	l, u := cfg.Listeners["app"], cfg.Upstreams["backend"]
	if l.ReadHeaderTimeout != 3*time.Second || l.Limits != (ListenerLimits{RequestHeaderBytes: 32 << 10, RequestBodyBytes: 1 << 20, MaxConns: 64}) {
		t.Errorf("listener = %+v", l)
	}
	if u.Timeouts.ResponseIdle != 0 || u.Timeouts.Write != time.Minute || u.Limits.ResponseHeaderBytes != 128<<10 {
		t.Errorf("upstream = %+v", u)
	}
	lines := problemLines(t, LoadOptions{File: "testdata/minimal.yaml", Environ: []string{
		"UNSTUCK_LISTENERS_APP_LIMITS_REQUEST_HEADER_BYTES=1k",
	}})
	want := []string{`listeners.app.limits.request_header_bytes: "1k": unknown unit "k"; want KiB, MiB or GiB, or none for bytes`}
	if !slices.Equal(lines, want) {
		t.Errorf("problems:\n got %q\nwant %q", lines, want)
	}
}
