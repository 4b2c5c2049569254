package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/config"
)

const testdata = "../../config/testdata/"

// runCmd runs the command line in-process with the given environment.
func runCmd(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	if env == nil {
		env = []string{}
	}
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut, env)
	return code, out.String(), errOut.String()
}

// swapServe replaces serveFunc for the test and counts its calls.
func swapServe(t *testing.T, fake func(context.Context, *config.Config, *zap.Logger) error) *int {
	t.Helper()
	calls := new(int)
	old := serveFunc
	serveFunc = func(ctx context.Context, o serveOptions) error {
		cfg, log := o.cfg, o.log
		*calls++
		return fake(ctx, cfg, log)
	}
	t.Cleanup(func() { serveFunc = old })
	return calls
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, errOut := runCmd(t, nil, args...)
		if want := "unstuck dev (" + runtime.Version() + ")\n"; code != 0 || out != want || errOut != "" {
			t.Errorf("%s: code %d, stdout %q, stderr %q; want 0, %q, nothing", args, code, out, errOut, want)
		}
	}
}

func TestCheck(t *testing.T) {
	testdata, err := filepath.Abs(testdata)
	if err != nil {
		t.Fatal(err)
	}
	testdata += string(filepath.Separator)
	t.Chdir(t.TempDir()) // no ./config.yaml: the built-in default
	tests := []struct {
		name    string
		args    []string
		env     []string
		code    int
		stdout  string
		stderrs []string // lines stderr must have, in order
	}{
		{name: "built-in default", args: []string{"check"}, stdout: "ok: 1 listeners, 1 upstreams\n"},
		{name: "good file", args: []string{"check", "--config", testdata + "full.yaml"}, stdout: "ok: 2 listeners, 2 upstreams\n"},
		{name: "short flag", args: []string{"check", "-c", testdata + "minimal.yaml"}, stdout: "ok: 1 listeners, 1 upstreams\n"},
		{name: "dev mode", args: []string{"check", "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2"}, stdout: "ok: 1 listeners, 1 upstreams\n"},
		{name: "bad file", args: []string{"check", "-c", testdata + "bad.yaml"}, code: 1, stderrs: []string{
			"unstuck: invalid configuration:",
			`  listeners.app.linger: "sometimes": want graceful, reset or a duration such as 2s (` + testdata + `bad.yaml:6)`,
			`  listeners.app.listen: "127.0.0.1:99999": port out of range (` + testdata + `bad.yaml:5)`,
			`  listeners.app.upstream: "nope" names no upstream (have: backend) (` + testdata + `bad.yaml:7)`,
			`  upstreams.backend.endpoints[0]: "localhost": missing port (` + testdata + `bad.yaml:10)`,
			`  upstreams.backend.pool.max_conn: unknown key (did you mean max_conns?) (` + testdata + `bad.yaml:13)`,
			`  upstreams.backend.pool.max_conns: "abc" is not an integer (` + testdata + `bad.yaml:12)`,
			`  upstreamz: unknown key (did you mean upstreams?) (` + testdata + `bad.yaml:2)`,
		}},
		{name: "missing file", args: []string{"check", "-c", "nope.yaml"}, code: 1, stderrs: []string{
			"unstuck: invalid configuration:", "  nope.yaml: file not found",
		}},
		{name: "bad env", args: []string{"check"}, env: []string{"UNSTUCK_LOG_LEVEL=loud"}, code: 1, stderrs: []string{
			"unstuck: invalid configuration:", `  log.level: "loud": want debug, info, warn or error (env UNSTUCK_LOG_LEVEL)`,
		}},
		{name: "misspelt env", args: []string{"check"}, env: []string{"UNSTUCK_LOG_LEVLE=debug"}, stdout: "ok: 1 listeners, 1 upstreams\n", stderrs: []string{
			"unstuck: warning: UNSTUCK_LOG_LEVLE: names no configuration key; ignored (did you mean UNSTUCK_LOG_LEVEL?)",
		}},
		{name: "service links are no warning", args: []string{"check"}, env: []string{
			"UNSTUCK_PORT=tcp://10.0.0.1:9901", "UNSTUCK_SERVICE_HOST=10.0.0.1", "UNSTUCK_SERVICE_PORT=9901", "UNSTUCK_PORT_9901_TCP_ADDR=10.0.0.1",
		}, stdout: "ok: 1 listeners, 1 upstreams\n"},
		{name: "bad and misspelt env", args: []string{"check"}, env: []string{"UNSTUCK_LOG_LEVEL=loud", "UNSTUCK_LOG_FORAMT=json"}, code: 1, stderrs: []string{
			"unstuck: invalid configuration:", `  log.level: "loud": want debug, info, warn or error (env UNSTUCK_LOG_LEVEL)`,
			"unstuck: warning: UNSTUCK_LOG_FORAMT: names no configuration key; ignored (did you mean UNSTUCK_LOG_FORMAT?)",
		}},
		{name: "flag fixes env", args: []string{"check", "--log-level", "warn"}, env: []string{"UNSTUCK_LOG_LEVEL=loud"}, stdout: "ok: 1 listeners, 1 upstreams\n"},
		{name: "listen without upstream", args: []string{"check", "--listen", "127.0.0.1:1"}, code: 1, stderrs: []string{
			"unstuck: invalid configuration:", "  --upstream: missing; dev mode needs both --listen and --upstream",
		}},
		{name: "upstream without listen", args: []string{"check", "--upstream", "127.0.0.1:1"}, code: 1, stderrs: []string{
			"unstuck: invalid configuration:", "  --listen: missing; dev mode needs both --listen and --upstream",
		}},
		{name: "unknown flag", args: []string{"check", "--nope"}, code: 2, stderrs: []string{
			"unstuck: unknown flag: --nope", "Run 'unstuck --help' for usage.",
		}},
		{name: "stray argument", args: []string{"check", "extra"}, code: 2, stderrs: []string{
			`unstuck: unknown command "extra" for "unstuck check"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, tt.env, tt.args...)
			if code != tt.code || out != tt.stdout {
				t.Errorf("code %d, stdout %q; want %d, %q\nstderr:\n%s", code, out, tt.code, tt.stdout, errOut)
			}
			lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
			if len(tt.stderrs) == 0 && errOut != "" {
				t.Errorf("stderr %q, want nothing", errOut)
			}
			for i, want := range tt.stderrs {
				if i >= len(lines) || lines[i] != want {
					t.Errorf("stderr line %d: want %q; stderr:\n%s", i+1, want, errOut)
					break
				}
			}
		})
	}
}

func TestUnknownCommand(t *testing.T) {
	code, _, errOut := runCmd(t, nil, "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("code %d, stderr %q; want 2 and unknown command", code, errOut)
	}
}

// TestRootBadConfigNeverServes: a bad configuration ends the process with
// exit 1 before anything listens.
func TestRootBadConfigNeverServes(t *testing.T) {
	calls := swapServe(t, func(context.Context, *config.Config, *zap.Logger) error { return nil })
	for _, args := range [][]string{
		{"-c", testdata + "bad.yaml"},
		{"--listen", "127.0.0.1:1"},
		{"--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--log-level", "loud"},
	} {
		code, out, errOut := runCmd(t, nil, args...)
		if code != 1 || !strings.HasPrefix(errOut, "unstuck: invalid configuration:\n") || out != "" {
			t.Errorf("%q: code %d, stdout %q, stderr %q; want 1 and the problems on stderr", args, code, out, errOut)
		}
		if strings.Contains(errOut, "Usage:") {
			t.Errorf("%q: usage printed for a configuration error:\n%s", args, errOut)
		}
	}
	if *calls != 0 {
		t.Errorf("serve called %d times; want never", *calls)
	}
}

func TestRootServes(t *testing.T) {
	var got *config.Config
	calls := swapServe(t, func(_ context.Context, cfg *config.Config, log *zap.Logger) error {
		got = cfg
		log.Info("serving")
		return nil
	})
	code, _, errOut := runCmd(t, []string{"UNSTUCK_LOG_FORMAT=json"}, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001")
	if code != 0 || *calls != 1 {
		t.Fatalf("code %d, serve calls %d; want 0, 1\nstderr:\n%s", code, *calls, errOut)
	}
	if l := got.Listeners["app"]; l.Listen != "127.0.0.1:7000" || l.Upstream != "backend" {
		t.Errorf("listener app = %+v", l)
	}
	if !strings.Contains(errOut, `"msg":"serving"`) {
		t.Errorf("stderr has no JSON log line from serve:\n%s", errOut)
	}
}

// TestRootWarnsAboutEnv: a misspelt UNSTUCK_ variable is logged at start.
func TestRootWarnsAboutEnv(t *testing.T) {
	swapServe(t, func(context.Context, *config.Config, *zap.Logger) error { return nil })
	code, _, errOut := runCmd(t, []string{"UNSTUCK_LOG_FORMAT=json", "UNSTUCK_LOG_LEVLE=debug"}, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001")
	if code != 0 || !strings.Contains(errOut, `"msg":"environment variable ignored","variable":"UNSTUCK_LOG_LEVLE","problem":"names no configuration key; ignored (did you mean UNSTUCK_LOG_LEVEL?)"`) {
		t.Errorf("code %d; want 0 and a warning for UNSTUCK_LOG_LEVLE; stderr:\n%s", code, errOut)
	}
}

func TestRootServeError(t *testing.T) {
	swapServe(t, func(context.Context, *config.Config, *zap.Logger) error {
		return errors.New("listen tcp 127.0.0.1:7000: address already in use")
	})
	code, _, errOut := runCmd(t, nil, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001")
	if code != 1 || !strings.Contains(errOut, "unstuck: listen tcp 127.0.0.1:7000: address already in use\n") {
		t.Errorf("code %d, stderr:\n%s\nwant 1 and the error", code, errOut)
	}
}

// TestRootSignalCancels: SIGTERM cancels the context serve runs under.
func TestRootSignalCancels(t *testing.T) {
	swapServe(t, func(ctx context.Context, _ *config.Config, _ *zap.Logger) error {
		// The handler is installed before serve is called.
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("context not cancelled by SIGTERM")
		}
	})
	code, _, errOut := runCmd(t, nil, "--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001")
	if code != 0 {
		t.Errorf("code %d; want 0\nstderr:\n%s", code, errOut)
	}
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := buildLogger(config.Log{Level: "warn", Format: "json"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", zap.Int("n", 1))
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("want one JSON line, got %q: %v", buf.String(), err)
	}
	if line["msg"] != "shown" || line["level"] != "warn" || line["n"] != 1.0 {
		t.Errorf("log line = %v", line)
	}

	buf.Reset()
	log, _, err = buildLogger(config.Log{Level: "debug", Format: "console"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello")
	if !strings.Contains(buf.String(), "DEBUG\thello") {
		t.Errorf("console line = %q", buf.String())
	}

	for _, l := range []config.Log{{Level: "loud", Format: "json"}, {Level: "info", Format: "xml"}} {
		if _, err := newLogger(l); err == nil {
			t.Errorf("newLogger(%+v) succeeded; want an error", l)
		}
	}
	if _, err := newLogger(config.Log{Level: "info", Format: "console"}); err != nil {
		t.Errorf("newLogger: %v", err)
	}
}
