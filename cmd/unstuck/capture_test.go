package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/unstuck-proxy/unstuck/capture"
)

// swapRules replaces the rule installer and remover for the test and
// records what they were asked.
func swapRules(t *testing.T, fail error) (installed *[]capture.Rules, removed *int) {
	t.Helper()
	installed, removed = new([]capture.Rules), new(int)
	oldI, oldR := installRules, removeRules
	installRules = func(r capture.Rules) error {
		*installed = append(*installed, r)
		return errors.Join(fail, r.Check())
	}
	removeRules = func() error { *removed++; return fail }
	t.Cleanup(func() { installRules, removeRules = oldI, oldR })
	return installed, removed
}

func writeCaptureConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "unstuck.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const captureYAML = `listeners:
  captured: {listen: "127.0.0.1:15001", protocol: tcp, capture: true}
capture:
  listener: captured
  ports: [5432]
  cidrs: ["10.0.0.0/8"]
  exclude_uids: [65532]
  mark: 7
`

// unstuck capture turns the capture section into rules for the listener's
// port and families, and prints them; --remove removes.
func TestCaptureCommand(t *testing.T) {
	installed, removed := swapRules(t, nil)
	file := writeCaptureConfig(t, captureYAML)
	code, out, errOut := runCmd(t, nil, "capture", "--config", file)
	want := capture.Rules{Port: 15001, IPv4: true, Ports: []uint16{5432}, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		ExcludePorts: []uint16{}, ExcludeUIDs: []uint32{65532}, ExcludeMark: 7}
	if code != 0 || len(*installed) != 1 || !reflect.DeepEqual((*installed)[0], want) {
		t.Fatalf("capture: code %d, installed %+v, stderr %q; want 0 and %+v", code, *installed, errOut, want)
	}
	if !strings.Contains(out, "installed:\n"+want.String()) {
		t.Errorf("stdout %q; want the rules", out)
	}

	code, out, _ = runCmd(t, nil, "capture", "--remove", "--config", file)
	if code != 0 || *removed != 1 || out != "removed table inet unstuck\n" {
		t.Errorf("capture --remove: code %d, removed %d, stdout %q", code, *removed, out)
	}
}

func TestCaptureCommandFails(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		fail       error
		want       string
	}{
		{"no listener", "listeners: {a: {listen: '127.0.0.1:1', protocol: tcp, capture: true}}\n", nil,
			"capture.listener is not set: there is nothing to capture"},
		{"invalid", strings.NewReplacer("exclude_uids: [65532]", "exclude_uids: []", "  mark: 7\n", "").Replace(captureYAML), nil,
			"capture.exclude_uids: empty, and capture.mark is 0"},
		{"kernel", captureYAML, errors.New("operation not permitted"), "operation not permitted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			swapRules(t, tc.fail)
			code, _, errOut := runCmd(t, nil, "capture", "--config", writeCaptureConfig(t, tc.yaml))
			if code != exitFailed || !strings.Contains(errOut, tc.want) {
				t.Errorf("code %d, stderr %q; want %d and %q", code, errOut, exitFailed, tc.want)
			}
		})
	}
}
