package deploy_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/config"
)

const unitFile = "systemd/unstuck.service"

// unit is a parsed systemd unit file: section, then key, then every value
// the key was given, in order.
type unit map[string]map[string][]string

// parseUnit reads a unit file's sections and key=value lines.
func parseUnit(path string) (unit, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	var cont strings.Builder
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cont.WriteString(s + " ")
			continue
		}
		line = cont.String() + line
		cont.Reset()
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("%s:%d: want key=value in a [section], got %q", path, n, line)
		}
		key = strings.TrimSpace(key)
		u[section][key] = append(u[section][key], strings.TrimSpace(value))
	}
	return u, sc.Err()
}

// get returns the last value of key in section, and whether it is set.
func (u unit) get(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// get1 is get without the second result.
func (u unit) get1(section, key string) string {
	v, _ := u.get(section, key)
	return v
}

// parseTimespan parses a systemd time span such as 15, 15s, 1min 30s or
// 500ms; a bare number is seconds.
func parseTimespan(s string) (time.Duration, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	r := strings.NewReplacer(" ", "", "min", "m", "sec", "s", "hr", "h")
	return time.ParseDuration(r.Replace(s))
}

// TestSystemdUnit checks unstuck.service against the configuration it is
// installed with (the repository's config.yaml).
func TestSystemdUnit(t *testing.T) {
	u, err := parseUnit(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.LoadOptions{File: filepath.Join(repoRoot, "config.yaml"), Environ: []string{}})
	if err != nil {
		t.Fatalf("config.yaml: %v", err)
	}

	start, _ := u.get("Service", "ExecStart")
	argv := strings.Fields(start)
	if len(argv) == 0 || argv[0] != "/usr/local/bin/unstuck" || flagValue(argv, "--config") != "/etc/unstuck/config.yaml" {
		t.Errorf("ExecStart=%s; want /usr/local/bin/unstuck --config /etc/unstuck/config.yaml", start)
	}
	if reload, _ := u.get("Service", "ExecReload"); !slices.Equal(strings.Fields(reload), []string{"/bin/kill", "-HUP", "$MAINPID"}) {
		t.Errorf("ExecReload=%s; want /bin/kill -HUP $MAINPID: unstuck reloads on SIGHUP", reload)
	}
	stop, ok := u.get("Service", "TimeoutStopSec")
	d, err := parseTimespan(stop)
	if !ok || err != nil || d < cfg.ShutdownTimeout {
		t.Errorf("TimeoutStopSec=%s (%v); want at least shutdown_timeout %v of config.yaml", stop, err, cfg.ShutdownTimeout)
	}
	// unstuck sends READY=1 once bound (cmd/unstuck's TestE2ESdNotify), so
	// that After=unstuck.service means "after unstuck listens".
	if typ, _ := u.get("Service", "Type"); typ != "notify" {
		t.Errorf("Type=%s; want notify: unstuck tells systemd when its listeners are bound", typ)
	}
	if na, ok := u.get("Service", "NotifyAccess"); ok && na != "main" && na != "exec" {
		t.Errorf("NotifyAccess=%s; want main (the default with Type=notify): only unstuck itself notifies", na)
	}
	if !strings.Contains(u.get1("Service", "RestrictAddressFamilies"), "AF_UNIX") {
		t.Error("RestrictAddressFamilies without AF_UNIX: sd_notify's socket is a unix one")
	}
	dyn, _ := u.get("Service", "DynamicUser")
	if user, _ := u.get("Service", "User"); dyn != "yes" && (user == "" || user == "root" || user == "0") {
		t.Errorf("DynamicUser=%s User=%s; want DynamicUser=yes or a User that is not root", dyn, user)
	}
	if n, ok := u.get("Service", "LimitNOFILE"); !ok || n == "" {
		t.Error("no LimitNOFILE")
	}
	want := map[string]string{
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
	}
	for k, v := range want {
		if got, ok := u.get("Service", k); !ok || got != v {
			t.Errorf("%s=%s (set: %v); want %s=%s", k, got, ok, k, v)
		}
	}
	// The socket-state metrics read /proc/net: ProcSubset=pid hides it.
	if got, _ := u.get("Service", "ProcSubset"); got == "pid" {
		t.Error("ProcSubset=pid hides /proc/net/tcp, which the socket metrics read")
	}
	if got, _ := u.get("Install", "WantedBy"); got != "multi-user.target" {
		t.Errorf("WantedBy=%s; want multi-user.target", got)
	}
}

// TestSystemdVerify runs systemd-analyze verify on the unit, pointed at a
// real binary, where systemd-analyze exists.
func TestSystemdVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze on this machine")
	}
	bin, _ := buildLikeDockerfile(t)
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "ExecStart=/usr/local/bin/unstuck ", "ExecStart="+bin+" ")
	path := filepath.Join(t.TempDir(), "unstuck.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}
