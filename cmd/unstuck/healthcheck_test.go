package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
)

// startAdminStub starts a loopback server that answers like the admin
// listener: /healthz 200, /readyz 503 with a reason, /hang never (until the
// client gives up), anything else 404. It returns its host:port.
func startAdminStub(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "upstream backend: no endpoint reachable\n")
	})
	mux.HandleFunc("GET /hang", func(_ http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // the client's timeout closes the connection
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func TestHealthcheck(t *testing.T) {
	addr := startAdminStub(t)
	closed := testpeer.FreeAddr(t)
	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   string // substring
		stderr   string // substring
		noStdout bool
	}{
		{"healthz", []string{"--addr", addr}, 0, "ok: GET http://" + addr + "/healthz: 200\n", "", false},
		{"readyz 503 says why", []string{"--addr", addr, "--path", "/readyz"}, 1, "",
			"GET http://" + addr + "/readyz: 503 Service Unavailable: upstream backend: no endpoint reachable\n", true},
		{"unknown path", []string{"--addr", addr, "--path", "/nope"}, 1, "", "404 Not Found", true},
		{"refused", []string{"--addr", closed}, 1, "", "connection refused", true},
		{"timeout", []string{"--addr", addr, "--path", "/hang", "--timeout", "100ms"}, 1, "", "no answer within 100ms", true},
		{"relative path", []string{"--addr", addr, "--path", "readyz"}, exitUsage, "", `--path "readyz": want an absolute path`, true},
		{"bad addr", []string{"--addr", "localhost"}, exitUsage, "", `admin address "localhost": want host:port`, true},
		{"bad timeout", []string{"--addr", addr, "--timeout", "0s"}, exitUsage, "", "--timeout must be positive", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, nil, append([]string{"healthcheck"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errOut, tt.stderr) ||
				(tt.noStdout && out != "") {
				t.Errorf("healthcheck %v: code %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q",
					tt.args, code, out, errOut, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

// TestHealthcheckFromConfig: without --addr, the address is admin.listen of
// the configuration the root command would load (file, then environment),
// and an admin listener on every interface is checked on loopback.
func TestHealthcheckFromConfig(t *testing.T) {
	addr := startAdminStub(t)
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	cfg := fmt.Sprintf(`admin: {listen: "0.0.0.0:%s"}
listeners: {app: {listen: "%s"}}
upstreams: {backend: {endpoints: ["%s"]}}
`, port, testpeer.FreeAddr(t), testpeer.FreeAddr(t))
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		env    []string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"0.0.0.0 is checked on loopback", nil, []string{"--config", file}, 0,
			"ok: GET http://127.0.0.1:" + port + "/healthz: 200\n", ""},
		{"path", nil, []string{"--config", file, "--path", "/readyz"}, 1, "", "503 Service Unavailable"},
		{"environment overrides the file", []string{"UNSTUCK_ADMIN_LISTEN=" + testpeer.FreeAddr(t)}, []string{"--config", file}, 1,
			"", "connection refused"},
		{"--addr overrides the configuration", []string{"UNSTUCK_ADMIN_LISTEN=" + testpeer.FreeAddr(t)}, []string{"--config", file, "--addr", addr}, 0,
			"ok: GET http://" + addr + "/healthz: 200\n", ""},
		{"admin off", []string{"UNSTUCK_ADMIN_LISTEN="}, []string{"--config", file}, 1,
			"", `the admin listener is off (admin.listen is ""); nothing to check`},
		{"bad configuration", nil, []string{"--config", filepath.Join(t.TempDir(), "missing.yaml")}, 1,
			"", "invalid configuration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, tt.env, append([]string{"healthcheck"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errOut, tt.stderr) {
				t.Errorf("healthcheck %v with %v: code %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q",
					tt.args, tt.env, code, out, errOut, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

func TestHealthcheckURL(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"127.0.0.1:9901", "http://127.0.0.1:9901/healthz"},
		{"0.0.0.0:9901", "http://127.0.0.1:9901/healthz"},
		{":9901", "http://127.0.0.1:9901/healthz"},
		{"[::]:9901", "http://[::1]:9901/healthz"},
		{"[::1]:9901", "http://[::1]:9901/healthz"},
		{"10.1.2.3:9901", "http://10.1.2.3:9901/healthz"},
		{"admin.local:9901", "http://admin.local:9901/healthz"},
	}
	for _, tt := range tests {
		got, err := healthcheckURL(tt.addr, "/healthz")
		if err != nil || got != tt.want {
			t.Errorf("healthcheckURL(%q) = %q, %v; want %q", tt.addr, got, err, tt.want)
		}
	}
}
