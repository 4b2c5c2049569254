package config

import (
	"flag"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

var update = flag.Bool("update", false, "rewrite ../config.yaml, and the README's reference table, from the schema")

const yamlHeader = `# unstuck configuration. Every key is shown with its default value; a file
# may leave out any key of a listener or upstream and gets that default.
# Generated from the schema in config/config.go: after changing it, run
#   go test ./config -update
#
# Environment variables override the file: UNSTUCK_ followed by the key in
# upper case, with "." and "-" written as "_", for example
#   UNSTUCK_LOG_LEVEL=debug
#   UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS=64
#   UNSTUCK_UPSTREAMS_BACKEND_ENDPOINTS=10.0.0.1:9000,10.0.0.2:9000
#   UNSTUCK_ADMIN_LISTEN=            (empty: no admin listener; other empty variables are ignored)
# They can set any key of a listener or upstream this file names, but cannot
# add a listener or upstream; a variable that names no key is a warning. The
# --log-level and --admin flags override both.
#
# Durations are written like 500ms, 2s or 1m30s; sizes in bytes (65536) or
# with KiB, MiB or GiB (64KiB). For limits and timeouts, 0 means no limit.
# A value the kernel would round (linger in whole seconds, keepalive in
# whole seconds, user_timeout in whole milliseconds) is refused.
# Check a file with: unstuck check --config FILE
`

// renderYAML writes the configuration file the schema describes: every
// key with its default (or example) and its doc.
func renderYAML() string {
	var b strings.Builder
	b.WriteString(yamlHeader)
	renderKeys(&b, reflect.TypeFor[Config](), "")
	return b.String()
}

func renderKeys(b *strings.Builder, t reflect.Type, indent string) {
	line := func(text, doc string) {
		if doc != "" {
			text = fmt.Sprintf("%-30s # %s", text, doc)
		}
		b.WriteString(text + "\n")
	}
	for i := range t.NumField() {
		sf := t.Field(i)
		key, doc := sf.Tag.Get("key"), sf.Tag.Get("doc")
		if key != "" && indent == "" && (wants[sf.Type] == "" || i == 0 || wants[t.Field(i-1).Type] == "") {
			b.WriteString("\n") // a blank line around each section at the top level
		}
		switch {
		case key == "":
		case sf.Type.Kind() == reflect.Map:
			line(indent+key+":", doc)
			line(indent+"  "+sf.Tag.Get("example")+":", "")
			renderKeys(b, sf.Type.Elem(), indent+"    ")
		case wants[sf.Type] == "":
			line(indent+key+":", doc)
			renderKeys(b, sf.Type, indent+"  ")
		default:
			line(indent+key+": "+shown(sf), doc)
		}
	}
}

// shown is a key's default, or its example, as config.yaml and the README
// write it.
func shown(sf reflect.StructField) string {
	v, ok := sf.Tag.Lookup("default")
	if !ok {
		v = sf.Tag.Get("example")
	}
	switch {
	case sf.Type.Kind() == reflect.Slice && v == "":
		return "[]"
	case sf.Type == reflect.TypeFor[[]string]():
		return `["` + v + `"]`
	case v == "" || sf.Type == reflect.TypeFor[os.FileMode]():
		return strconv.Quote(v)
	}
	return v
}

// TestConfigYAML holds the repository's config.yaml to the schema: every
// key, in order, with its default and its doc.
func TestConfigYAML(t *testing.T) {
	want := renderYAML()
	if *update {
		if err := os.WriteFile("../config.yaml", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := string(unstuck.DefaultConfig); got != want && !*update {
		t.Errorf("config.yaml is not what the schema says; run: go test ./config -update\n got:\n%s\nwant:\n%s", got, want)
	}
}

// schemaKeys returns every key of the schema, in order, as the README
// writes it (listeners.<name>.listen), with its struct field.
func schemaKeys() ([]string, map[string]reflect.StructField) {
	var order []string
	keys := map[string]reflect.StructField{}
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := range t.NumField() {
			sf := t.Field(i)
			key := sf.Tag.Get("key")
			switch {
			case key == "":
			case sf.Type.Kind() == reflect.Map:
				walk(sf.Type.Elem(), prefix+key+".<name>.")
			case wants[sf.Type] == "":
				walk(sf.Type, prefix+key+".")
			default:
				order = append(order, prefix+key)
				keys[prefix+key] = sf
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return order, keys
}

// TestREADMEReference holds the README's configuration reference table to
// the schema: a row for every key and none for a key that does not exist,
// each with the schema's default. With -update it sets the defaults and
// adds a row, from the key's doc, for each key that has none.
func TestREADMEReference(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start, end := strings.Index(text, "\n## Configuration reference\n"), strings.Index(text, "\n### Linger\n")
	if start < 0 || end < start {
		t.Fatal("README: no section ## Configuration reference before ### Linger")
	}
	order, keys := schemaKeys()
	lines := strings.Split(text[start:end], "\n")
	seen, last := map[string]bool{}, -1
	for i, line := range lines {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| `") || len(cells) < 4 {
			continue
		}
		key := strings.Trim(strings.TrimSpace(cells[1]), "`")
		sf, ok := keys[key]
		_, hasDef := sf.Tag.Lookup("default")
		switch last = i; {
		case seen[key]:
			t.Errorf("README: %s has two rows", key)
		case !ok:
			t.Errorf("README: a row for %s, which is no key", key)
		case hasDef && strings.TrimSpace(cells[2]) != "`"+shown(sf)+"`" && *update:
			cells[2] = " `" + shown(sf) + "` "
			lines[i] = strings.Join(cells, "|")
		case hasDef && strings.TrimSpace(cells[2]) != "`"+shown(sf)+"`":
			t.Errorf("README: %s's default is %s; the schema's is `%s` (go test ./config -update)", key, strings.TrimSpace(cells[2]), shown(sf))
		}
		seen[key] = true
	}
	var missing []string
	for _, key := range order {
		if sf := keys[key]; !seen[key] && *update {
			def := ""
			if _, ok := sf.Tag.Lookup("default"); ok {
				def = "`" + shown(sf) + "`"
			}
			doc := sf.Tag.Get("doc")
			missing = append(missing, fmt.Sprintf("| `%s` | %s | %s. |", key, def, strings.ToUpper(doc[:1])+doc[1:]))
		} else if !seen[key] {
			t.Errorf("README: no row for %s (go test ./config -update adds one)", key)
		}
	}
	if *update && last >= 0 {
		lines = slices.Insert(lines, last+1, missing...)
		text = text[:start] + strings.Join(lines, "\n") + text[end:]
		if err := os.WriteFile("../README.md", []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSchemaTags checks what the tags themselves must hold: every key has
// a doc, and every default parses and passes its own checks.
func TestSchemaTags(t *testing.T) {
	_, keys := schemaKeys()
	for key, sf := range keys {
		if sf.Tag.Get("doc") == "" {
			t.Errorf("%s: no doc", key)
		}
	}
	for _, f := range slices.Concat(topFields, listenerFields, upstreamFields) {
		if !f.hasDef {
			continue
		}
		v, msg := f.parse(f.def)
		if msg == "" {
			msg = f.check(v)
		}
		if msg != "" {
			t.Errorf("%s: default %q: %s", f.key, f.def, msg)
		}
	}
	if got := DefaultUpstream().Pool.MaxIdle; got != 128 {
		t.Errorf("DefaultUpstream().Pool.MaxIdle = %d, want 128", got)
	}
}

// TestRoundingRefused: a value the kernel would round is refused with a
// message saying why, whether it comes from the file or the environment;
// one it takes as written passes.
func TestRoundingRefused(t *testing.T) {
	const s = time.Second
	get := map[string]func(*Config) any{
		"listeners.app.linger":                  func(c *Config) any { return c.Listeners["app"].Linger },
		"upstreams.backend.linger":              func(c *Config) any { return c.Upstreams["backend"].Linger },
		"listeners.app.keepalive.idle":          func(c *Config) any { return c.Listeners["app"].Keepalive.Idle },
		"upstreams.backend.dial.keepalive.idle": func(c *Config) any { return c.Upstreams["backend"].Dial.Keepalive.Idle },
		"listeners.app.user_timeout":            func(c *Config) any { return c.Listeners["app"].UserTimeout },
		"upstreams.backend.dial.user_timeout":   func(c *Config) any { return c.Upstreams["backend"].Dial.UserTimeout },
	}
	bounded := func(d time.Duration) sockopt.Linger { return sockopt.Linger{Mode: sockopt.Bounded, Timeout: d} }
	runKeyCases(t, get, []keyCase{
		{key: "listeners.app.linger", value: "3s", want: bounded(3 * s)},
		{key: "listeners.app.linger", value: "1m", want: bounded(time.Minute)},
		{key: "listeners.app.linger", value: "2500ms", problem: `"2500ms": want whole seconds (the kernel counts SO_LINGER in seconds)`},
		{key: "listeners.app.linger", value: "500ms", problem: `"500ms": want whole seconds (the kernel counts SO_LINGER in seconds)`},
		{key: "upstreams.backend.linger", value: "1.5s", problem: `"1.5s": want whole seconds (the kernel counts SO_LINGER in seconds)`},
		{key: "upstreams.backend.linger", value: "RESET", want: sockopt.Linger{Mode: sockopt.Reset}},
		{key: "upstreams.backend.linger", value: "0", problem: `"0": a duration must be positive (use reset for an immediate RST)`},
		{key: "upstreams.backend.linger", value: "5", problem: `"5" has no unit; write 5s or 5ms`},
		{key: "upstreams.backend.linger", value: "-1s", problem: `"-1s": must not be negative`},
		{key: "listeners.app.keepalive.idle", value: "1500ms", problem: `"1500ms": want whole seconds (the kernel counts TCP_KEEPIDLE in seconds)`},
		{key: "upstreams.backend.dial.keepalive.idle", value: "90s", want: 90 * s},
		{key: "listeners.app.user_timeout", value: "1500us", problem: `"1500us": want whole milliseconds (the kernel counts TCP_USER_TIMEOUT in milliseconds)`},
		{key: "upstreams.backend.dial.user_timeout", value: "2500ms", want: 2500 * time.Millisecond},
	})

	lines := problemLines(t, LoadOptions{File: "testdata/minimal.yaml", Environ: []string{"UNSTUCK_LISTENERS_APP_LINGER=2500ms"}})
	want := []string{`listeners.app.linger: "2500ms": want whole seconds (the kernel counts SO_LINGER in seconds)`}
	if !slices.Equal(lines, want) {
		t.Errorf("from env: problems\n got %q\nwant %q", lines, want)
	}

	// Validate holds a configuration built in code to the same rule.
	l := DefaultListener()
	l.Name, l.Listen, l.Upstream, l.Linger = "app", "127.0.0.1:8080", "backend", bounded(2500*time.Millisecond)
	u := DefaultUpstream()
	u.Name, u.Endpoints = "backend", []string{"127.0.0.1:9000"}
	c := &Config{Log: Log{Level: "info", Format: "console"}, ShutdownTimeout: s, Capture: DefaultCapture(),
		Listeners: map[string]Listener{"app": l}, Upstreams: map[string]Upstream{"backend": u}}
	if err := c.Validate(); err == nil || err.Error() != `listeners.app.linger: "2.5s": want whole seconds (the kernel counts SO_LINGER in seconds)` {
		t.Errorf("Validate: %v", err)
	}
}

// TestEnvWarnings: an UNSTUCK_ variable that names no key is a warning,
// with the key it may have meant; Kubernetes' service links are not.
func TestEnvWarnings(t *testing.T) {
	var got []string
	env := []string{
		"UNSTUCK_LOG_LEVLE=debug",
		"UNSTUCK_UPSTREAMS_OTHER_ENDPOINTS=10.0.0.1:80",
		"UNSTUCK_SHUTDOWN=5s",
		"UNSTUCK_LOG_LEVEL=warn", // a key: no warning
		"UNSTUCK_PORT=tcp://10.0.0.1:9901",
		"UNSTUCK_PORT_9901_TCP=tcp://10.0.0.1:9901",
		"UNSTUCK_PORT_9901_TCP_ADDR=10.0.0.1",
		"UNSTUCK_PORT_9901_TCP_PORT=9901",
		"UNSTUCK_PORT_9901_TCP_PROTO=tcp",
		"UNSTUCK_SERVICE_HOST=10.0.0.1",
		"UNSTUCK_SERVICE_PORT=9901",
		"UNSTUCK_SERVICE_PORT_ADMIN=9901",
		"UNSTUCK_ADMIN_SERVICE_HOST=10.0.0.2", // a Service named unstuck-admin
		"OTHER_THING=1",
	}
	cfg := mustLoad(t, LoadOptions{File: "testdata/minimal.yaml", Environ: env, Warn: func(p Problem) { got = append(got, p.String()) }})
	if cfg.Log.Level != "warn" {
		t.Errorf("log.level = %q, want warn from UNSTUCK_LOG_LEVEL", cfg.Log.Level)
	}
	want := []string{
		`UNSTUCK_LOG_LEVLE: names no configuration key; ignored (did you mean UNSTUCK_LOG_LEVEL?)`,
		`UNSTUCK_SHUTDOWN: names no configuration key; ignored`,
		`UNSTUCK_UPSTREAMS_OTHER_ENDPOINTS: names no configuration key; ignored (the environment sets keys of the listeners and upstreams the file names; it cannot add one)`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n got %q\nwant %q", got, want)
	}

	// Warned about also when the configuration has problems.
	got = nil
	if _, err := Load(LoadOptions{File: "testdata/bad.yaml", Environ: env[:1], Warn: func(p Problem) { got = append(got, p.String()) }}); err == nil || len(got) != 1 {
		t.Errorf("bad file: err %v, warnings %q; want problems and one warning", err, got)
	}
}
