package main

// End-to-end tests: they build the real binary once and run it as a child
// process on 127.0.0.1, the way a pod or a person would.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// Bounds of every wait on the child.
const (
	e2eBuildTimeout = 5 * time.Minute
	e2eStartTimeout = 15 * time.Second // until the listener accepts
	e2eStopTimeout  = 5 * time.Second  // from SIGTERM, or for a command, until exit
	e2eKillTimeout  = 10 * time.Second // from SIGKILL in cleanup until Wait returns
)

// e2eVersion is the version the binary is built with, through the same
// -X main.version the Dockerfile uses.
const e2eVersion = "e2e-test"

// e2eBinEnv holds the binary's path for a test re-run in a network
// namespace of its own (see isolated), which uses the binary its parent
// built.
const e2eBinEnv = "UNSTUCK_TEST_E2E_BIN"

var e2eBin struct {
	once sync.Once
	dir  string // removed by TestMain
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if e2eBin.dir != "" {
		os.RemoveAll(e2eBin.dir)
	}
	os.Exit(code)
}

// unstuckBinary builds the binary on first use and returns its path. It is
// built with the go command and the -race setting of the running test.
func unstuckBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	e2eBin.once.Do(func() {
		if bin := os.Getenv(e2eBinEnv); bin != "" {
			e2eBin.path = bin
			return
		}
		dir, err := os.MkdirTemp("", "unstuck-e2e-")
		if err != nil {
			e2eBin.err = err
			return
		}
		e2eBin.dir = dir
		bin := filepath.Join(dir, "unstuck")
		args := []string{"build", "-buildvcs=false", "-ldflags", "-X main.version=" + e2eVersion, "-o", bin}
		if raceEnabled() {
			args = append(args, "-race")
		}
		ctx, cancel := context.WithTimeout(context.Background(), e2eBuildTimeout)
		defer cancel()
		// go test puts its own GOROOT/bin first in PATH.
		cmd := exec.CommandContext(ctx, "go", append(args, ".")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			e2eBin.err = fmt.Errorf("%s: %v\n%s", cmd, err, out)
			return
		}
		e2eBin.path = bin
		os.Setenv(e2eBinEnv, bin) // for the re-runs in namespaces
	})
	if e2eBin.err != nil {
		t.Fatalf("building unstuck: %v", e2eBin.err)
	}
	return e2eBin.path
}

// isolated is netns.Isolated for an end-to-end test: the binary is built
// (or the -short skip taken) first, here, and the re-run uses it.
func isolated(t *testing.T) bool {
	t.Helper()
	unstuckBinary(t)
	return netns.Isolated(t)
}

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// child is a running unstuck process. It is killed in the test's cleanup
// if it is still running, and its output is logged if the test failed.
type child struct {
	cmd            *exec.Cmd
	stdout, stderr *testpeer.SyncBuffer
	done           chan struct{} // closed when Wait has returned
}

// childOpts says how to start a child.
type childOpts struct {
	dir string   // working directory; empty: a new empty one, so no ./config.yaml is read
	env []string // added to the test's environment, less its UNSTUCK_ variables
	uid uint32   // run as this user (and group) ID; 0: as the test
}

func startUnstuck(t *testing.T, o childOpts, args ...string) *child {
	t.Helper()
	bin := unstuckBinary(t)
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "UNSTUCK_") && !strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv)
		}
	}
	// A race-enabled binary sleeps 1s at exit unless told not to.
	gorace := os.Getenv("GORACE")
	if !strings.Contains(gorace, "atexit_sleep_ms") {
		gorace = strings.TrimSpace(gorace + " atexit_sleep_ms=0")
	}
	env = append(env, "GORACE="+gorace)
	// Tests run in parallel: each child's admin listener takes a free port.
	env = append(env, "UNSTUCK_ADMIN_LISTEN=127.0.0.1:0", "UNSTUCK_ADMIN_DEBUG_LISTEN=127.0.0.1:0")
	c := &child{
		cmd:    exec.Command(bin, args...),
		stdout: new(testpeer.SyncBuffer),
		stderr: new(testpeer.SyncBuffer),
		done:   make(chan struct{}),
	}
	c.cmd.Dir = o.dir
	c.cmd.Env = append(env, o.env...)
	if o.uid != 0 {
		c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: o.uid, Gid: o.uid}}
	}
	c.cmd.Stdout = c.stdout
	c.cmd.Stderr = c.stderr
	c.cmd.WaitDelay = time.Second // don't hang on a pipe a stray grandchild holds
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", c.cmd, err)
	}
	go func() {
		c.cmd.Wait() // the exit status is read from ProcessState
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			c.cmd.Process.Kill()
			select {
			case <-c.done:
			case <-time.After(e2eKillTimeout):
				t.Errorf("unstuck pid %d still not reaped %v after SIGKILL", c.cmd.Process.Pid, e2eKillTimeout)
			}
		}
		if t.Failed() {
			t.Logf("%s\nstdout:\n%s\nstderr:\n%s", strings.Join(c.cmd.Args, " "), c.stdout, c.stderr)
		}
	})
	return c
}

// exitCode waits up to within for the child to exit and returns its code.
func (c *child) exitCode(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("unstuck still running %v later", within)
		return -1
	}
}

// waitAccepting waits until addr accepts TCP connections, and fails the
// test if the child exits first or the wait takes longer than
// e2eStartTimeout.
func (c *child) waitAccepting(t *testing.T, addr string) {
	t.Helper()
	deadline := time.NewTimer(e2eStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-c.done:
			t.Fatalf("unstuck exited with %v before accepting on %s", c.cmd.ProcessState, addr)
		case <-deadline.C:
			t.Fatalf("%s not accepting after %v: %v", addr, e2eStartTimeout, err)
		case <-tick.C:
		}
	}
}

// waitStderr waits until the child's stderr contains s, and fails the test
// if the child exits first or the wait takes longer than e2eStopTimeout.
func (c *child) waitStderr(t *testing.T, s string) {
	t.Helper()
	deadline := time.NewTimer(e2eStopTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(c.stderr.String(), s) {
		select {
		case <-c.done:
			if !strings.Contains(c.stderr.String(), s) {
				t.Fatalf("unstuck exited with %v before writing %q", c.cmd.ProcessState, s)
			}
			return
		case <-deadline.C:
			t.Fatalf("stderr has no %q after %v", s, e2eStopTimeout)
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM and wants exit code 0 within e2eStopTimeout.
func (c *child) stop(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if code := c.exitCode(t, e2eStopTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM; want 0", code)
	}
}

// runUnstuck runs a command that exits by itself and returns its result.
func runUnstuck(t *testing.T, o childOpts, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	c := startUnstuck(t, o, args...)
	code = c.exitCode(t, e2eStopTimeout)
	return code, c.stdout.String(), c.stderr.String()
}

const upstreamBody = "hello from upstream"

// startUpstream starts a loopback HTTP server that answers every request
// with upstreamBody, and returns its host:port.
func startUpstream(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Path", r.URL.Path)
		io.WriteString(w, upstreamBody)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// get sends GET /e2e to the proxy at addr and returns status and body. The
// client keeps its connection open, as an app would, until the test ends.
func get(t *testing.T, addr string) (int, string) {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/e2e")
	if err != nil {
		t.Fatalf("GET through unstuck: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Upstream-Path") != "/e2e" {
		t.Errorf("upstream saw path %q; want /e2e", resp.Header.Get("X-Upstream-Path"))
	}
	return resp.StatusCode, string(body)
}

// TestE2EDevMode: --listen and --upstream proxy a request without any file,
// and SIGTERM ends the process with 0 while the app still holds an idle
// keep-alive connection.
func TestE2EDevMode(t *testing.T) {
	t.Parallel()
	upstream := startUpstream(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	c := startUnstuck(t, childOpts{}, "--listen", listen, "--upstream", upstream)
	c.waitAccepting(t, listen)
	if code, body := get(t, listen); code != http.StatusOK || body != upstreamBody {
		t.Errorf("GET: %d %q; want 200 %q", code, body, upstreamBody)
	}
	c.stop(t)
}

// TestE2EDrainOnSIGTERM: a request in flight when SIGTERM arrives still
// gets its response, and then the process exits with 0.
func TestE2EDrainOnSIGTERM(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default: // a retry; the test waits for the first
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Upstream-Path", r.URL.Path)
		io.WriteString(w, upstreamBody)
	}))
	t.Cleanup(srv.Close)
	// Registered after srv.Close, so it runs first: a failed test must not
	// leave the handler blocked, or srv.Close would wait for it.
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })

	listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	c := startUnstuck(t, childOpts{}, "--listen", listen, "--upstream", srv.Listener.Addr().String())
	c.waitAccepting(t, listen)

	type result struct {
		code int
		body string
	}
	resc := make(chan result, 1)
	go func() {
		// get must not call t.Fatal off the test goroutine: do it by hand.
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + listen + "/e2e")
		if err != nil {
			resc <- result{code: -1, body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			resc <- result{code: -1, body: err.Error()}
			return
		}
		resc <- result{resp.StatusCode, string(b)}
	}()
	select {
	case <-arrived:
	case <-time.After(e2eStartTimeout):
		t.Fatal("the request never reached the upstream")
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	c.waitStderr(t, "shutting down")
	releaseOnce.Do(func() { close(release) })
	select {
	case r := <-resc:
		if r.code != http.StatusOK || r.body != upstreamBody {
			t.Errorf("in-flight GET: %d %q; want 200 %q", r.code, r.body, upstreamBody)
		}
	case <-time.After(e2eStopTimeout):
		t.Fatal("in-flight GET got no response")
	}
	if code := c.exitCode(t, e2eStopTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM; want 0", code)
	}
}

// TestE2EConfigFile: --config FILE, and an UNSTUCK_ variable that replaces
// the file's endpoints.
func TestE2EConfigFile(t *testing.T) {
	t.Parallel()
	live := startUpstream(t)
	dead := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t)) // nothing listens: connection refused
	tests := []struct {
		name     string
		endpoint string // in the file
		env      []string
		code     int
		body     string // "" for any
	}{
		{name: "file", endpoint: live, code: http.StatusOK, body: upstreamBody},
		{name: "env replaces dead endpoint", endpoint: dead,
			env: []string{"UNSTUCK_UPSTREAMS_BACKEND_ENDPOINTS=" + live}, code: http.StatusOK, body: upstreamBody},
		{name: "dead endpoint", endpoint: dead, code: http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			listen := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
			file := filepath.Join(t.TempDir(), "unstuck.yaml")
			yaml := fmt.Sprintf(`log:
  level: debug
listeners:
  app:
    listen: %s
upstreams:
  backend:
    endpoints: [%q]
`, listen, tt.endpoint)
			if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			c := startUnstuck(t, childOpts{env: tt.env}, "--config", file)
			c.waitAccepting(t, listen)
			code, body := get(t, listen)
			if code != tt.code || tt.body != "" && body != tt.body {
				t.Errorf("GET: %d %q; want %d %q", code, body, tt.code, tt.body)
			}
			c.stop(t)
		})
	}
}

// TestE2EBadConfig: a bad file ends the process with 1, names every
// problem, and binds nothing.
func TestE2EBadConfig(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	file := filepath.Join(t.TempDir(), "bad.yaml")
	yaml := fmt.Sprintf(`listeners:
  app:
    listen: 127.0.0.1:%d
    upstream: nope
    idle_timout: 5s
upstreams:
  backend:
    endpoints: ["127.0.0.1:9000"]
`, port)
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runUnstuck(t, childOpts{}, "--config", file)
	if code != 1 || stdout != "" {
		t.Errorf("exit code %d, stdout %q; want 1 and nothing", code, stdout)
	}
	for _, want := range []string{
		"unstuck: invalid configuration:",
		"listeners.app.idle_timout: unknown key",
		`listeners.app.upstream: "nope" names no upstream`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "listening") {
		t.Errorf("stderr says a listener started:\n%s", stderr)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("port %d of the bad listener is not free after exit: %v", port, err)
	}
	ln.Close()
}

// TestE2ECommands: the commands that exit by themselves.
func TestE2ECommands(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		dir    string
		args   []string
		code   int
		stdout string // wanted prefix
	}{
		{name: "check repo config", dir: root, args: []string{"check", "--config", "config.yaml"},
			stdout: "ok: 1 listeners, 1 upstreams\n"},
		{name: "version", args: []string{"version"}, stdout: "unstuck " + e2eVersion + " (" + runtime.Version() + ")\n"},
		{name: "unknown flag", args: []string{"--nope"}, code: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, _ := runUnstuck(t, childOpts{dir: tt.dir}, tt.args...)
			if code != tt.code || !strings.HasPrefix(stdout, tt.stdout) {
				t.Errorf("exit code %d, stdout %q; want %d and %q", code, stdout, tt.code, tt.stdout)
			}
		})
	}
}
