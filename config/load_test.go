package config

import (
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
func wantDefaultConfig() *Config {
	return &Config{
		Log: Log{Level: "info", Format: "console"},
		Listeners: map[string]Listener{"app": {
			Name: "app", Listen: "127.0.0.1:8080", Protocol: "http", Upstream: "backend",
			Linger: sockopt.Linger{Mode: sockopt.Reset},
		}},
		Upstreams: map[string]Upstream{"backend": {
			Name: "backend", Endpoints: []string{"127.0.0.1:9000"},
			Linger:  sockopt.Linger{Mode: sockopt.Graceful},
			Retries: 2,
			Pool: PoolLimits{MaxConns: 512, MaxIdle: 128, IdleTimeout: 90 * time.Second,
				AcquireTimeout: time.Second},
			Dial:     Dial{Timeout: 2 * time.Second},
			Timeouts: Timeouts{ResponseHeader: 30 * time.Second},
		}},
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
	for _, f := range slices.Concat(logFields, listenerFields, upstreamFields) {
		leaf := f.key[strings.LastIndexByte(f.key, '.')+1:]
		if !strings.Contains(string(unstuck.DefaultConfig), leaf+":") {
			t.Errorf("config.yaml does not mention key %s", f.key)
		}
	}
}

func TestMinimalFileGetsDefaults(t *testing.T) {
	got := mustLoad(t, LoadOptions{File: "testdata/minimal.yaml"})
	if want := wantDefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("minimal.yaml:\n got %+v\nwant %+v", got, want)
	}
}

func TestFullFile(t *testing.T) {
	got := mustLoad(t, LoadOptions{File: "testdata/full.yaml"})
	want := &Config{
		Log: Log{Level: "debug", Format: "json", Access: true},
		Listeners: map[string]Listener{
			"web": {Name: "web", Listen: "unix:/run/unstuck/web.sock", Protocol: "http", Upstream: "api",
				IdleTimeout: 5 * time.Minute, Linger: sockopt.Linger{Mode: sockopt.Bounded, Timeout: 3 * time.Second}},
			"admin": {Name: "admin", Listen: "[::1]:8081", Protocol: "http", Upstream: "static",
				Linger: sockopt.Linger{Mode: sockopt.Graceful}},
		},
		Upstreams: map[string]Upstream{
			"api": {Name: "api", Endpoints: []string{"10.0.0.1:9000", "api.internal:9001"},
				HostHeader: "api.example.com", Linger: sockopt.Linger{Mode: sockopt.Reset},
				Pool: PoolLimits{MaxConns: 64, MaxIdle: 8, IdleTimeout: 90 * time.Second, MaxLifetime: 10 * time.Minute,
					MaxRequests: 1000, AcquireTimeout: 250 * time.Millisecond},
				Dial: Dial{Timeout: 500 * time.Millisecond},
			},
			"static": func() Upstream {
				u := DefaultUpstream()
				u.Name, u.Endpoints = "static", []string{"127.0.0.1:9100"}
				return u
			}(),
		},
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
		{"protocol", "listeners: {app: {listen: 127.0.0.1:8080, protocol: grpc}}\nupstreams: {backend: {endpoints: ['127.0.0.1:9000']}}",
			nil, []string{`listeners.app.protocol: "grpc": want http`}},
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
