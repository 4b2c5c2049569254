package deploy_test

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// Bounds of every wait on a process in the jail.
const (
	startTimeout = 15 * time.Second // until the admin listener answers
	cmdTimeout   = 10 * time.Second // for a command that exits by itself
)

// checkStatic fails the test unless the ELF file at path is statically
// linked: no interpreter (PT_INTERP), no dynamic section, no needed
// libraries.
func checkStatic(t *testing.T, path string) *elf.File {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			t.Errorf("%s: has a PT_INTERP program header: dynamically linked", path)
		case elf.PT_DYNAMIC:
			t.Errorf("%s: has a PT_DYNAMIC program header: dynamically linked", path)
		}
	}
	if f.Section(".dynamic") != nil {
		t.Errorf("%s: has a .dynamic section", path)
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s: needs libraries %q (%v); want none", path, libs, err)
	}
	return f
}

// TestDockerfileBuild builds the binary with the Dockerfile's go build
// line and checks that it is static, stripped, and carries the flags and
// version the Dockerfile gives it.
func TestDockerfileBuild(t *testing.T) {
	bin, df := buildLikeDockerfile(t)
	f := checkStatic(t, bin)
	// go build records no -ldflags with -trimpath: what they did shows.
	if f.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table; -ldflags -s should have stripped it", bin)
	}
	for _, s := range f.Sections {
		if strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("%s has DWARF section %s; -ldflags -w should have left it out", bin, s.Name)
		}
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	want := map[string]string{
		"CGO_ENABLED": "0",
		"-trimpath":   "true",
	}
	for k, v := range want {
		if settings[k] != v {
			t.Errorf("build setting %s = %q; want %q (Dockerfile: %q %q)", k, settings[k], v, df.buildEnv, df.buildArgs)
		}
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if want := fmt.Sprintf("unstuck %s (%s)\n", testVersion, runtime.Version()); err != nil || string(out) != want {
		t.Errorf("unstuck version: %q, %v; want %q", out, err, want)
	}
}

// jail is an empty root directory that holds only what the image's final
// stage copies in: the binary and the configuration. Processes run in it
// chrooted, as the image's USER, with no environment but PATH and no
// /proc, /dev, /etc/passwd, /etc/hosts, /tmp or anything else.
type jail struct {
	root     string
	uid, gid uint32
	env      []string // the image's ENV, NAME=value
}

// command returns a command that runs argv in the jail.
func (j *jail) command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = "/" // inside the jail: changed to after the chroot
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, j.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     j.root,
		Credential: &syscall.Credential{Uid: j.uid, Gid: j.gid}, // no supplementary groups
		Pdeathsig:  syscall.SIGKILL,
	}
	return cmd
}

// run runs argv in the jail to its end and returns its exit code and
// output.
func (j *jail) run(t *testing.T, argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := j.command(ctx, argv...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		t.Fatalf("%q in the jail: %v\nstderr: %s", argv, err, errOut.String())
	}
	return code, out.String(), errOut.String()
}

// adaptConfig returns the repository's config.yaml with the listener, the
// upstream's endpoints and the admin listener moved to the given addresses,
// and the debug listener to a free loopback port.
func adaptConfig(t *testing.T, listen, upstream, admin string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	section := func(m map[string]any, key string) map[string]any {
		t.Helper()
		s, ok := m[key].(map[string]any)
		if !ok {
			t.Fatalf("config.yaml: %s is not a mapping", key)
		}
		return s
	}
	section(cfg, "admin")["listen"] = admin
	section(cfg, "admin")["debug_listen"] = testpeer.FreeAddr(t)
	section(section(cfg, "listeners"), "app")["listen"] = listen
	section(section(cfg, "upstreams"), "backend")["endpoints"] = []string{upstream}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// httpGet sends GET url with a fresh connection and returns status and
// body; err is any failure to get an answer.
func httpGet(url string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// procStatus returns the values of the Uid: and Gid: lines of
// /proc/PID/status (real, effective, saved, filesystem).
func procStatus(t *testing.T, pid int) (uid, gid string) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid = strings.Join(strings.Fields(v), " ")
		}
		if v, ok := strings.CutPrefix(line, "Gid:"); ok {
			gid = strings.Join(strings.Fields(v), " ")
		}
	}
	return uid, gid
}

// TestImageRunsInEmptyRoot runs the Dockerfile's binary the way the image
// does, with nothing but what the image's final stage copies: chrooted
// into an empty directory holding only the binary and the configuration,
// as the image's USER, with the image's ENTRYPOINT and CMD. It proxies a
// request, passes `unstuck healthcheck` (as given and as the Dockerfile's
// HEALTHCHECK runs it) from inside the jail, and exits 0 on SIGTERM.
func TestImageRunsInEmptyRoot(t *testing.T) {
	bin, df := buildLikeDockerfile(t)
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root (CI runs as root): it chroots into an empty directory and runs the binary as the image's user %s; run it with sudo or as root", df.user)
	}

	// The jail: exactly the final stage's COPYs.
	uidStr, gidStr, ok := strings.Cut(df.user, ":")
	uid, err1 := strconv.ParseUint(uidStr, 10, 32)
	gid, err2 := strconv.ParseUint(gidStr, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("Dockerfile: USER %q; want numeric UID:GID (distroless has no user database a name could come from)", df.user)
	}
	if uid != 65532 || gid != 65532 {
		t.Errorf("Dockerfile: USER %s; want 65532:65532, distroless's nonroot, as deploy/kubernetes assumes", df.user)
	}
	j := &jail{root: t.TempDir(), uid: uint32(uid), gid: uint32(gid), env: df.env}
	if err := os.Chmod(j.root, 0o755); err != nil { // the jail's /, searchable by the user
		t.Fatal(err)
	}
	binDest, cfgPath := df.binaryDest(), df.configPath()
	if binDest == "" || df.entrypoint == nil || df.entrypoint[0] != binDest {
		t.Fatalf("Dockerfile: ENTRYPOINT %q; want the binary copied from the build stage (%q)", df.entrypoint, binDest)
	}
	if cfgPath == "" {
		t.Fatalf("Dockerfile: the image's command %q has no --config", df.imageArgv())
	}

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello from upstream")
	}))
	defer upstream.Close()
	listen, admin := testpeer.FreeAddr(t), testpeer.FreeAddr(t)
	cfg := adaptConfig(t, listen, upstream.Listener.Addr().String(), admin)

	for _, c := range df.copies {
		var data []byte
		var mode os.FileMode = 0o644
		switch {
		case c.dst == binDest:
			data, mode = mustRead(t, bin), 0o755
		case c.dst == cfgPath:
			data = cfg
		default:
			t.Fatalf("Dockerfile: COPY %s %s: the test knows only the binary and %s", c.srcs, c.dst, cfgPath)
		}
		dst := filepath.Join(j.root, c.dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			t.Fatal(err)
		}
	}

	// Start the image's command.
	var stdout, stderr testpeer.SyncBuffer
	cmd := j.command(context.Background(), df.imageArgv()...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %q in the jail: %v", df.imageArgv(), err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	defer func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("unstuck's stderr:\n%s", stderr.String())
		}
	}()

	// Wait for the admin listener.
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		code, _, err := httpGet("http://" + admin + "/healthz")
		if err == nil && code == http.StatusOK {
			break
		}
		select {
		case <-done:
			t.Fatalf("unstuck exited with %v before its admin listener answered", cmd.ProcessState)
		case <-deadline.C:
			t.Fatalf("admin listener %s: no 200 from /healthz after %v: %d %v", admin, startTimeout, code, err)
		case <-tick.C:
		}
	}

	// It runs as the image's user, in the jail.
	wantUID := fmt.Sprintf("%d %d %d %d", uid, uid, uid, uid)
	wantGID := fmt.Sprintf("%d %d %d %d", gid, gid, gid, gid)
	if u, g := procStatus(t, cmd.Process.Pid); u != wantUID || g != wantGID {
		t.Errorf("unstuck runs as Uid %q Gid %q; want %s:%s", u, g, uidStr, gidStr)
	}
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", cmd.Process.Pid)); err != nil || root != j.root {
		t.Errorf("unstuck's root is %q (%v); want the jail %s", root, err, j.root)
	}

	// A request through it.
	if code, body, err := httpGet("http://" + listen + "/through"); err != nil || code != http.StatusOK || body != "hello from upstream" {
		t.Errorf("GET through unstuck: %d %q %v; want 200 %q", code, body, err, "hello from upstream")
	}
	if code, body, err := httpGet("http://" + admin + "/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("GET /readyz: %d %q %v; want 200", code, body, err)
	}
	if code, body, err := httpGet("http://" + admin + "/metrics"); err != nil || code != http.StatusOK || !strings.Contains(body, "unstuck_") {
		t.Errorf("GET /metrics: %d %v, unstuck_ metrics: %v; want 200 with them", code, err, strings.Contains(body, "unstuck_"))
	}

	// The health check, run in the jail as the image's user.
	healthchecks := [][]string{
		{binDest, "healthcheck", "--addr", admin},
		{binDest, "healthcheck", "--addr", admin, "--path", "/readyz"},
		df.healthcheck, // the Dockerfile's HEALTHCHECK: finds the admin address in the config
	}
	if df.healthcheck == nil {
		t.Error("Dockerfile: no HEALTHCHECK CMD")
		healthchecks = healthchecks[:2]
	}
	for _, argv := range healthchecks {
		if code, out, errOut := j.run(t, argv...); code != 0 || !strings.HasPrefix(out, "ok: ") {
			t.Errorf("%q in the jail: exit %d, stdout %q, stderr %q; want 0 and ok", argv, code, out, errOut)
		}
	}
	if code, _, errOut := j.run(t, binDest, "healthcheck", "--addr", testpeer.FreeAddr(t)); code != 1 || !strings.Contains(errOut, "connection refused") {
		t.Errorf("healthcheck of a closed port: exit %d, stderr %q; want 1, connection refused", code, errOut)
	}

	// SIGTERM: exit 0.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit code %d after SIGTERM; want 0", code)
		}
	case <-time.After(cmdTimeout):
		t.Fatalf("no exit %v after SIGTERM", cmdTimeout)
	}

	// The image logs JSON, one object per line, as a log shipper wants.
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	for _, line := range lines {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil || obj["msg"] == nil {
			t.Errorf("the image's log line is not a JSON object with msg: %q", line)
			break
		}
	}

	// Whatever it missed in the jail, it would have said. The one thing
	// it may miss is /proc, for the socket-state and process metrics: a
	// container runtime mounts /proc, the empty jail has none.
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(line, "/proc/") {
			continue
		}
		if l := strings.ToLower(line); strings.Contains(l, "warn") || strings.Contains(l, "error") {
			t.Errorf("unstuck complained in the jail: %s", line)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
