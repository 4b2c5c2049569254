package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoRoot is the repository, seen from this package's directory (where
// go test runs).
const repoRoot = ".."

// testVersion is passed as the Dockerfile's VERSION build argument.
const testVersion = "deploy-test"

const buildTimeout = 5 * time.Minute

// dockerfile is what the tests take from the repository's Dockerfile.
type dockerfile struct {
	buildEnv    []string // NAME=value words before "go build"
	buildArgs   []string // the words after "go": build, flags, package
	buildOut    string   // the value of -o
	user        string   // USER of the final stage
	env         []string // ENV of the final stage, NAME=value
	copies      []dockerCopy
	entrypoint  []string
	cmd         []string
	healthcheck []string // HEALTHCHECK CMD, exec form
}

// dockerCopy is one COPY of the final stage.
type dockerCopy struct {
	from string   // --from
	srcs []string // sources
	dst  string
}

// parseDockerfile reads the Dockerfile at path. buildArgs override ARG
// defaults, as docker build --build-arg does. Only what the tests need is
// understood; anything else in a form they cannot follow is an error, so
// that a change to the Dockerfile cannot slip past them.
func parseDockerfile(path string, buildArgs map[string]string) (*dockerfile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	args := map[string]string{}
	d := &dockerfile{}
	for _, line := range dockerLines(string(data)) {
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			// A new stage: what the image runs comes from the last one.
			d.user, d.env, d.copies, d.entrypoint, d.cmd, d.healthcheck = "", nil, nil, nil, nil, nil
		case "ARG":
			name, def, _ := strings.Cut(rest, "=")
			if v, ok := buildArgs[name]; ok {
				def = v
			}
			args[name] = def
		case "RUN":
			if !strings.Contains(rest, "go build") {
				continue
			}
			if d.buildArgs != nil {
				return nil, fmt.Errorf("%s: more than one RUN with go build", path)
			}
			words, err := shellWords(rest, func(name string) (string, bool) {
				v, ok := args[name]
				return v, ok
			})
			if err != nil {
				return nil, fmt.Errorf("%s: RUN %s: %w", path, rest, err)
			}
			env, cmd := splitAssignments(words)
			if len(cmd) < 2 || cmd[0] != "go" || cmd[1] != "build" {
				return nil, fmt.Errorf("%s: RUN %s: want [NAME=value ...] go build ...", path, rest)
			}
			d.buildEnv, d.buildArgs = env, cmd[1:]
			if d.buildOut = flagValue(d.buildArgs, "-o"); d.buildOut == "" {
				return nil, fmt.Errorf("%s: RUN %s: no -o", path, rest)
			}
		case "USER":
			d.user = rest
		case "ENV":
			words, err := shellWords(rest, func(name string) (string, bool) {
				v, ok := args[name]
				return v, ok
			})
			env, other := splitAssignments(words)
			if err != nil || len(env) == 0 || len(other) > 0 {
				return nil, fmt.Errorf("%s: ENV %s: want NAME=value ... (%v)", path, rest, err)
			}
			d.env = append(d.env, env...)
		case "COPY":
			var c dockerCopy
			fields := strings.Fields(rest)
			for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
				if v, ok := strings.CutPrefix(fields[0], "--from="); ok {
					c.from = v
				}
				fields = fields[1:]
			}
			if len(fields) < 2 {
				return nil, fmt.Errorf("%s: COPY %s: want sources and a destination", path, rest)
			}
			c.srcs, c.dst = fields[:len(fields)-1], fields[len(fields)-1]
			d.copies = append(d.copies, c)
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(rest), &argv); err != nil {
				return nil, fmt.Errorf("%s: %s %s: want the exec form (a JSON array): %w", path, instr, rest, err)
			}
			if strings.ToUpper(instr) == "CMD" {
				d.cmd = argv
			} else {
				d.entrypoint = argv
			}
		case "HEALTHCHECK":
			fields := strings.Fields(rest)
			for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
				fields = fields[1:]
			}
			if len(fields) < 2 || fields[0] != "CMD" {
				return nil, fmt.Errorf("%s: HEALTHCHECK %s: want [--option=value ...] CMD [...]", path, rest)
			}
			jsonArgv := strings.TrimSpace(strings.SplitN(rest, "CMD", 2)[1])
			if err := json.Unmarshal([]byte(jsonArgv), &d.healthcheck); err != nil {
				return nil, fmt.Errorf("%s: HEALTHCHECK CMD %s: want the exec form (the image has no shell): %w", path, jsonArgv, err)
			}
		}
	}
	if d.buildArgs == nil {
		return nil, fmt.Errorf("%s: no RUN with go build", path)
	}
	return d, nil
}

// dockerLines returns the Dockerfile's instructions, one a line: comments
// and blank lines dropped, continued lines joined.
func dockerLines(text string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s)
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(trimmed)
		out = append(out, cur.String())
		cur.Reset()
	}
	return out
}

// imageArgv is what the image runs: ENTRYPOINT then CMD.
func (d *dockerfile) imageArgv() []string {
	return append(append([]string{}, d.entrypoint...), d.cmd...)
}

// configPath is the value of --config in the image's command line.
func (d *dockerfile) configPath() string { return flagValue(d.imageArgv(), "--config") }

// binaryDest is where the final stage copies the built binary.
func (d *dockerfile) binaryDest() string {
	for _, c := range d.copies {
		if c.from != "" && len(c.srcs) == 1 && c.srcs[0] == d.buildOut {
			return c.dst
		}
	}
	return ""
}

// shellWords splits one simple shell command into words as sh would:
// single and double quotes, backslashes, and $NAME or ${NAME} expanded
// through vars (an unknown name is an error). It rejects what a lone simple
// command has no use for: ; & | < > ` and $( ).
func shellWords(line string, vars func(string) (string, bool)) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		inWord bool
		quote  rune // 0, '\'' or '"'
	)
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\\':
			if i+1 >= len(rs) {
				return nil, fmt.Errorf("trailing backslash")
			}
			i++
			if quote == '"' && !strings.ContainsRune("$`\"\\", rs[i]) {
				cur.WriteRune('\\')
			}
			cur.WriteRune(rs[i])
			inWord = true
		case r == '$':
			name, n, err := varName(rs[i+1:])
			if err != nil {
				return nil, err
			}
			v, ok := vars(name)
			if !ok {
				return nil, fmt.Errorf("unknown variable $%s", name)
			}
			cur.WriteString(v)
			i += n
			inWord = true
		case quote == '"':
			if r == '"' {
				quote = 0
			} else if r == '`' {
				return nil, fmt.Errorf("command substitution is not supported")
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote = r
			inWord = true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case strings.ContainsRune(";&|<>`", r):
			return nil, fmt.Errorf("%q: want one simple command", r)
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c", quote)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)

// varName reads the name after a $ in rs: NAME or {NAME}. It returns the
// name and how many runes it took.
func varName(rs []rune) (string, int, error) {
	s := string(rs)
	if rest, ok := strings.CutPrefix(s, "{"); ok {
		name, _, found := strings.Cut(rest, "}")
		if !found || !nameRE.MatchString(name) || nameRE.FindString(name) != name {
			return "", 0, fmt.Errorf("want ${NAME}, got ${%s", rest)
		}
		return name, len([]rune(name)) + 2, nil
	}
	name := nameRE.FindString(s)
	if name == "" {
		return "", 0, fmt.Errorf("want $NAME or ${NAME} after $ (no $( ) or special parameters)")
	}
	return name, len([]rune(name)), nil
}

// splitAssignments splits leading NAME=value words from the command.
func splitAssignments(words []string) (env, cmd []string) {
	for i, w := range words {
		name, _, ok := strings.Cut(w, "=")
		if !ok || !nameRE.MatchString(name) || nameRE.FindString(name) != name {
			return words[:i], words[i:]
		}
	}
	return words, nil
}

// flagValue returns the value of flag in args (as "-o X" or "-o=X"), or "".
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

// withFlagValue returns args with flag's value replaced by v.
func withFlagValue(args []string, flag, v string) []string {
	out := append([]string{}, args...)
	for i, a := range out {
		if a == flag && i+1 < len(out) {
			out[i+1] = v
		} else if strings.HasPrefix(a, flag+"=") {
			out[i] = flag + "=" + v
		}
	}
	return out
}

func TestShellWords(t *testing.T) {
	vars := func(name string) (string, bool) {
		v, ok := map[string]string{"VERSION": "v1", "EMPTY": ""}[name]
		return v, ok
	}
	tests := []struct {
		line    string
		want    []string
		wantErr bool
	}{
		{`CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/unstuck ./cmd/unstuck`,
			[]string{"CGO_ENABLED=0", "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v1", "-o", "/out/unstuck", "./cmd/unstuck"}, false},
		{`a 'b $VERSION' "c $VERSION" d\ e "" x$EMPTY`, []string{"a", "b $VERSION", "c v1", "d e", "", "x"}, false},
		{`"a\"b" "a\b"`, []string{`a"b`, `a\b`}, false},
		{`go build && echo`, nil, true},
		{`go build; echo`, nil, true},
		{`go build $(pwd)`, nil, true},
		{`go build $NOPE`, nil, true},
		{`go build "open`, nil, true},
	}
	for _, tt := range tests {
		got, err := shellWords(tt.line, vars)
		if (err != nil) != tt.wantErr || (!tt.wantErr && strings.Join(got, "|") != strings.Join(tt.want, "|")) {
			t.Errorf("shellWords(%q) = %q, %v; want %q, error %v", tt.line, got, err, tt.want, tt.wantErr)
		}
	}
}

// built is the binary built from the Dockerfile's go build line, once per
// test process; TestMain removes its directory.
var built struct {
	once sync.Once
	dir  string
	path string
	df   *dockerfile
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildLikeDockerfile runs the Dockerfile's go build line, with VERSION set
// to testVersion, in the repository, and returns the binary and the parsed
// Dockerfile. Only -o changes: the binary goes to a temporary directory.
func buildLikeDockerfile(t *testing.T) (string, *dockerfile) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	built.once.Do(func() {
		built.df, built.err = parseDockerfile(filepath.Join(repoRoot, "Dockerfile"), map[string]string{"VERSION": testVersion})
		if built.err != nil {
			return
		}
		if built.dir, built.err = os.MkdirTemp("", "unstuck-deploy-"); built.err != nil {
			return
		}
		bin := filepath.Join(built.dir, "unstuck")
		built.err = goCommand(built.df.buildEnv, withFlagValue(built.df.buildArgs, "-o", bin)...)
		built.path = bin
	})
	if built.err != nil {
		t.Fatalf("building as the Dockerfile does: %v", built.err)
	}
	return built.path, built.df
}

// goCommand runs the go command in the repository with args, its
// environment plus env. VCS stamping is off, as in the image's build,
// whose context has no .git (.dockerignore).
func goCommand(env []string, args ...string) error {
	gocmd, err := exec.LookPath("go") // go test puts its own GOROOT/bin first in PATH
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, gocmd, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=false"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s (env %q): %v\n%s", cmd, env, err, out)
	}
	return nil
}
