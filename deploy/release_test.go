package deploy_test

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// placeholder stands for every variable when build lines are compared.
func placeholder(name string) (string, bool) { return "{" + name + "}", true }

// buildLine is a go build command reduced to what must match the
// Dockerfile's: CGO_ENABLED, and the arguments without -o's value.
type buildLine struct {
	cgo  string
	args []string
}

func (b buildLine) String() string {
	return fmt.Sprintf("CGO_ENABLED=%s go %s", b.cgo, strings.Join(b.args, " "))
}

// reduceBuild reduces env and the words after the go command.
func reduceBuild(env, args []string) buildLine {
	b := buildLine{cgo: "(unset)"}
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "CGO_ENABLED="); ok {
			b.cgo = v
		}
	}
	for i := 0; i < len(args); i++ {
		if args[i] == "-o" {
			i++
			continue
		}
		if !strings.HasPrefix(args[i], "-o=") {
			b.args = append(b.args, args[i])
		}
	}
	return b
}

// findBuild returns the one go build command among lines (shell syntax).
func findBuild(t *testing.T, what string, lines []string) buildLine {
	t.Helper()
	var found []buildLine
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || !strings.Contains(line, " build ") {
			continue
		}
		words, err := shellWords(line, placeholder)
		if err != nil {
			continue
		}
		env, cmd := splitAssignments(words)
		if len(cmd) >= 2 && (cmd[0] == "go" || cmd[0] == "{GO}") && cmd[1] == "build" {
			found = append(found, reduceBuild(env, cmd[1:]))
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d go build lines; want 1", what, len(found))
	}
	return found[0]
}

// makeTargets returns the recipe lines of each target of a Makefile,
// with $(NAME) written ${NAME}.
func makeTargets(t *testing.T, path string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	targetRE := regexp.MustCompile(`^([A-Za-z0-9_.-]+):([^=]|$)`)
	// $(NAME) is written ${NAME}, as the shell would take it; $$ is make's
	// escape for a $ the shell gets.
	makeVarRE := regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	unescape := func(m string) string {
		if m == "$$" {
			return "$"
		}
		return "${" + m[2:len(m)-1] + "}"
	}
	targets := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(string(data), "\n") {
		if m := targetRE.FindStringSubmatch(line); m != nil {
			cur = m[1]
			targets[cur] = []string{}
			continue
		}
		if r, ok := strings.CutPrefix(line, "\t"); ok && cur != "" {
			targets[cur] = append(targets[cur], makeVarRE.ReplaceAllStringFunc(r, unescape))
			continue
		}
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cur = ""
	}
	return targets
}

func TestScriptsParse(t *testing.T) {
	scripts, err := filepath.Glob(filepath.Join(repoRoot, "scripts", "*.sh"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts/*.sh (%v)", err)
	}
	for _, s := range scripts {
		if out, err := exec.Command("bash", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
		if fi, err := os.Stat(s); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable (%v)", s, err)
		}
	}
}

// TestBuildFlagsMatch: the release script and make build use the
// Dockerfile's flags.
func TestBuildFlagsMatch(t *testing.T) {
	df, err := parseDockerfile(filepath.Join(repoRoot, "Dockerfile"), map[string]string{"VERSION": "{VERSION}"})
	if err != nil {
		t.Fatal(err)
	}
	want := reduceBuild(df.buildEnv, df.buildArgs)
	script, err := os.ReadFile(filepath.Join(repoRoot, "scripts", "release.sh"))
	if err != nil {
		t.Fatal(err)
	}
	targets := makeTargets(t, filepath.Join(repoRoot, "Makefile"))
	for what, got := range map[string]buildLine{
		"scripts/release.sh": findBuild(t, "scripts/release.sh", strings.Split(string(script), "\n")),
		"make build":         findBuild(t, "make build", targets["build"]),
	} {
		if got.cgo != want.cgo || !slices.Equal(got.args, want.args) {
			t.Errorf("%s builds with\n\t%s\nthe Dockerfile with\n\t%s", what, got, want)
		}
	}
}

// TestMakefile: the targets exist, make test is the README's test command
// and make release runs the script.
func TestMakefile(t *testing.T) {
	targets := makeTargets(t, filepath.Join(repoRoot, "Makefile"))
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var testCmd []string
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "go vet ./...") {
			testCmd = append(testCmd, line)
		}
	}
	if len(testCmd) != 1 {
		t.Fatalf("README.md: %d lines start with the test command \"go vet ./...\"; want 1", len(testCmd))
	}
	if got := targets["test"]; !slices.Equal(got, testCmd) {
		t.Errorf("make test runs %q; want the README's test command %q", got, testCmd)
	}
	if got := strings.Join(targets["release"], "\n"); !strings.Contains(got, "scripts/release.sh") {
		t.Errorf("make release runs %q; want scripts/release.sh", got)
	}
	if _, ok := targets["build"]; !ok {
		t.Error("no build target")
	}
}

// TestReleaseScript runs scripts/release.sh and checks what it leaves in
// DIST: two static binaries for their architectures, and SHA256SUMS.
func TestReleaseScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries; skipped with -short")
	}
	dist := t.TempDir()
	cmd := exec.Command("bash", filepath.Join("scripts", "release.sh"))
	cmd.Dir = repoRoot
	// VCS stamping belongs to a checkout, not to what the script does.
	cmd.Env = append(os.Environ(), "VERSION="+testVersion, "DIST="+dist,
		"GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=false"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/release.sh: %v\n%s", err, out)
	}

	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	var want []string
	for _, arch := range []string{"amd64", "arm64"} {
		name := "unstuck-" + testVersion + "-linux-" + arch
		want = append(want, name)
		path := filepath.Join(dist, name)
		f := checkStatic(t, path)
		if f.Machine != machines[arch] {
			t.Errorf("%s: machine %v; want %v", name, f.Machine, machines[arch])
		}
		if arch == runtime.GOARCH {
			out, err := exec.Command(path, "version").CombinedOutput()
			if want := fmt.Sprintf("unstuck %s (%s)\n", testVersion, runtime.Version()); err != nil || string(out) != want {
				t.Errorf("%s version: %q, %v; want %q", name, out, err, want)
			}
		}
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if wantAll := append(slices.Clone(want), "SHA256SUMS"); !slices.Equal(names, slices.Sorted(slices.Values(wantAll))) {
		t.Errorf("dist has %q; want %q", names, wantAll)
	}

	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Errorf("SHA256SUMS: %q; want \"<sha256>  <file>\" (sha256sum -c reads it)", line)
			continue
		}
		listed = append(listed, name)
		h := sha256.Sum256(mustRead(t, filepath.Join(dist, name)))
		if got := hex.EncodeToString(h[:]); got != sum {
			t.Errorf("SHA256SUMS: %s has %s; the file's is %s", name, sum, got)
		}
	}
	if !slices.Equal(listed, want) {
		t.Errorf("SHA256SUMS lists %q; want %q", listed, want)
	}
}
