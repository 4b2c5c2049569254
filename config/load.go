package config

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/agnivade/levenshtein"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/unstuck-proxy/unstuck"
)

// Flag names that AddFlags defines and Load reads.
const (
	FlagConfig   = "config"
	FlagListen   = "listen"
	FlagUpstream = "upstream"
	FlagLogLevel = "log-level"
	FlagAdmin    = "admin"
)

// ImplicitFile is the file Load reads when no file is named, if it exists
// in the working directory.
const ImplicitFile = "config.yaml"

// EnvPrefix starts the name of every environment variable Load reads.
const EnvPrefix = "UNSTUCK_"

// AddFlags defines the flags Load reads on fs: --config/-c, --listen,
// --upstream, --admin and --log-level.
func AddFlags(fs *pflag.FlagSet) {
	fs.StringP(FlagConfig, "c", "", "read the configuration from `FILE` (default ./"+ImplicitFile+" if it exists, else the built-in default)")
	fs.String(FlagListen, "", "dev mode: accept app connections on `ADDR` (host:port or unix:/path); needs --upstream; reads no file")
	fs.String(FlagUpstream, "", "dev mode: forward to `HOST:PORT`; needs --listen")
	fs.String(FlagAdmin, "", "override admin.listen (probes and /metrics) with `ADDR`, host:port or \"\" for none; for dev mode above all")
	fs.String(FlagLogLevel, "", "override log.level with `LEVEL`: debug, info, warn or error")
}

// LoadOptions says where Load finds the configuration.
type LoadOptions struct {
	File    string         // read when --config is not set; empty: ./config.yaml if it exists, else Default
	Flags   *pflag.FlagSet // if not nil, parsed, with AddFlags' flags
	Environ []string       // "KEY=value"; nil: os.Environ()
	Default []byte         // nil: unstuck.DefaultConfig

	// Warn, if not nil, is told of each UNSTUCK_ variable that names no
	// key, except Kubernetes' service links (UNSTUCK_PORT and the like).
	Warn func(Problem)
}

// Load reads, layers, decodes and validates the configuration. The layers,
// each overriding the one before: the schema's defaults; one YAML source
// (the --config file, else LoadOptions.File, else ./config.yaml if it
// exists, else LoadOptions.Default; in dev mode, --listen and --upstream,
// a listener "app" forwarding to an upstream "backend"); the environment
// (EnvName; lists comma-separated; empty variables ignored unless the key
// is tagged env:"empty"), which can set any key of the listeners and
// upstreams the source names but cannot add one; the --log-level and
// --admin flags.
//
// Names of listeners and upstreams are lower case letters, digits, "-" and
// "_". A listener that names no upstream gets the only upstream, if there
// is just one. Load finds every problem it can before giving up; the
// error, if any, is a Problems sorted by key.
func Load(opts LoadOptions) (*Config, error) {
	if opts.Flags == nil {
		opts.Flags = pflag.NewFlagSet("", pflag.ContinueOnError)
		AddFlags(opts.Flags)
	}
	t := &tree{values: map[string]any{}, layers: viper.New(), origin: map[string]string{}, names: map[string][]string{}, bad: map[string]bool{}}
	if !t.read(opts) {
		return nil, t.probs.err()
	}
	if opts.Environ == nil {
		opts.Environ = os.Environ()
	}
	// viper layers the sources: the file's values, then the
	// environment's, then the flag. MergeConfigMap never fails.
	_ = t.layers.MergeConfigMap(t.values)
	_ = t.layers.MergeConfigMap(t.readEnv(opts.Environ, opts.Warn))
	for key, name := range map[string]string{"log.level": FlagLogLevel, "admin.listen": FlagAdmin} {
		if f := opts.Flags.Lookup(name); f != nil && f.Changed {
			t.layers.Set(key, f.Value.String())
			t.origin[key] = "flag --" + name
		}
	}

	cfg := &Config{Listeners: map[string]Listener{}, Upstreams: map[string]Upstream{}}
	t.decode(cfg, "", topFields)
	for _, name := range t.names["listeners"] {
		l := Listener{Name: name}
		t.decode(&l, "listeners."+name+".", listenerFields)
		if ups := t.names["upstreams"]; l.Upstream == "" && len(ups) == 1 && !l.Capture {
			l.Upstream = ups[0]
		}
		cfg.Listeners[name] = l
	}
	for _, name := range t.names["upstreams"] {
		u := Upstream{Name: name}
		t.decode(&u, "upstreams."+name+".", upstreamFields)
		if _, set := t.origin["upstreams."+name+".pool.max_idle"]; !set {
			u.Pool.MaxIdle = min(u.Pool.MaxIdle, max(u.Pool.MaxConns, 0))
		}
		cfg.Upstreams[name] = u
	}
	if t.check(cfg); len(t.probs) > 0 {
		return nil, t.probs.err()
	}
	cfg.File = t.disk
	return cfg, nil
}

// tree is one reading of a configuration: the values of known keys, each
// layer over the one before, where each came from, and the problems found.
// Validate uses one with only problems.
type tree struct {
	disk   string              // the file read, if on disk (not the built-in default)
	file   string              // the source's name in messages
	values map[string]any      // full key → a string, or []string for a list, as the source wrote it
	layers *viper.Viper        // values, the environment and the flag, each over the one before; empty in Validate
	origin map[string]string   // full key → where its value came from
	names  map[string][]string // "listeners", "upstreams" → names in source order
	bad    map[string]bool     // keys (or prefixes) already reported
	probs  Problems
}

// decode sets each key of fields in the struct *dst to its value, else its
// default; a value that does not parse is reported and leaves the default.
func (t *tree) decode(dst any, prefix string, fields []field) {
	v := reflect.ValueOf(dst).Elem()
	fill(v, fields)
	for _, f := range fields {
		x, msg, ok := reflect.Value{}, "", true
		switch raw := t.layers.Get(prefix + f.key).(type) { // a string, a list's []string, or nil
		case nil:
			continue
		case []string: // a list from the file
			if x = reflect.ValueOf(raw); f.typ != x.Type() { // a typed list: each item parsed, each bad one reported
				x = f.parseItems(raw, func(i int, m string) {
					ok = false
					t.problem(fmt.Sprintf("%s%s[%d]", prefix, f.key, i), nil, "%s", m)
				})
			}
		case string:
			x, msg = f.parse(strings.TrimSpace(raw))
		}
		if msg != "" {
			t.problem(prefix+f.key, nil, "%s", msg)
		} else if ok {
			v.FieldByIndex(f.index).Set(x)
		}
	}
}

// read fills t from the source opts select. It returns false if there is
// nothing to decode.
func (t *tree) read(opts LoadOptions) bool {
	flag := func(name string) string { return opts.Flags.Lookup(name).Value.String() }
	file, listen, upstream := opts.File, flag(FlagListen), flag(FlagUpstream)
	if opts.Flags.Changed(FlagConfig) {
		file = flag(FlagConfig)
	}
	const needBoth = "missing; dev mode needs both --listen and --upstream"
	switch {
	case listen == "" && upstream == "":
		return t.readFile(file, opts.Default)
	case listen == "":
		t.add("--"+FlagListen, needBoth)
	case upstream == "":
		t.add("--"+FlagUpstream, needBoth)
	case file != "":
		t.add("--"+FlagConfig, "%q: cannot be combined with --listen and --upstream, which read no file", file)
	default:
		t.file, t.names = "dev mode", map[string][]string{"listeners": {"app"}, "upstreams": {"backend"}}
		t.values["listeners.app.listen"], t.origin["listeners.app.listen"] = listen, "flag --"+FlagListen
		t.values["upstreams.backend.endpoints"], t.origin["upstreams.backend.endpoints"] = upstream, "flag --"+FlagUpstream
	}
	return len(t.probs) == 0
}

// readFile reads and walks file, else ./config.yaml if it exists, else def.
func (t *tree) readFile(file string, def []byte) bool {
	t.disk = cmp.Or(file, ImplicitFile)
	t.file = t.disk
	data, err := os.ReadFile(t.file)
	if file == "" && errors.Is(err, fs.ErrNotExist) {
		t.file, t.disk, data, err = "built-in config.yaml", "", def, nil
		if data == nil {
			data = unstuck.DefaultConfig
		}
	}
	var doc yaml.Node
	if errors.Is(err, fs.ErrNotExist) {
		err = errors.New("file not found")
	} else if err == nil {
		err = yaml.Unmarshal(data, &doc)
	}
	if err != nil { // the cause, without the file's name again, on one line
		msg := strings.TrimPrefix(cmp.Or(errors.Unwrap(err), err).Error(), "yaml: ")
		t.add(t.file, "%s", strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", "; ")), " "))
		return false
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return true // an empty file: check says what is missing
	}
	if root := doc.Content[0]; root.Kind != yaml.MappingNode {
		t.problem(t.file, root, "want a mapping with log, listeners and upstreams at the top level, got %s", describe(root))
		return false
	}
	t.walk(doc.Content[0], "", "", topFields)
	return true
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// walk records the known keys of mapping n and reports the others. n is
// at rel ("" or such as "pool.") in base ("" or an entry such as
// "upstreams.backend."); fields are base's keys.
func (t *tree) walk(n *yaml.Node, base, rel string, fields []field) {
	for _, kv := range t.pairs(n, base+rel) {
		k, val, r := kv.key.Value, kv.val, rel+kv.key.Value
		i := slices.IndexFunc(fields, func(f field) bool { return f.key == r })
		e := slices.IndexFunc(entryKinds, func(e entries) bool { return e.key == base+r })
		switch {
		case i >= 0:
			t.leaf(kv, base+r, fields[i])
		case e < 0 && !slices.ContainsFunc(fields, func(f field) bool { return strings.HasPrefix(f.key, r+".") }):
			t.problem(base+r, kv.key, "unknown key%s", suggestKey(k, base, rel, fields))
		case isNull(val):
		case e >= 0 && val.Kind != yaml.MappingNode:
			ek := entryKinds[e]
			t.problem(base+r, val, "want a mapping of name to %s settings, such as %s: {%s: {...}}, got %s", ek.what, ek.key, ek.example, describe(val))
		case val.Kind != yaml.MappingNode:
			t.problem(base+r, val, "want a mapping, got %s", describe(val))
		case e >= 0:
			t.walkNames(val, &entryKinds[e])
		default:
			t.walk(val, base, r+".", fields)
		}
	}
}

// walkNames records the names in n, the mapping under listeners or
// upstreams, and walks the settings of each.
func (t *tree) walkNames(n *yaml.Node, e *entries) {
	for _, kv := range t.pairs(n, e.key+".") {
		name, val, key := kv.key.Value, kv.val, e.key+"."+kv.key.Value
		hint := ""
		if slices.ContainsFunc(e.fields, func(f field) bool { return strings.HasPrefix(f.key+".", name+".") }) {
			hint = fmt.Sprintf("; settings go under a name, such as %s.%s.%s", e.key, e.example, name)
		}
		switch {
		case !nameRE.MatchString(name):
			t.problem(key, kv.key, "bad %s name; use lower case letters, digits, '-' and '_'", e.what)
			continue
		case isNull(val):
		case val.Kind != yaml.MappingNode:
			t.problem(key, kv.key, "want a mapping of %s settings, got %s%s", e.what, describe(val), hint)
		default:
			t.walk(val, key+".", "", e.fields)
		}
		t.names[e.key] = append(t.names[e.key], name)
	}
}

// suggestKey suggests what the unknown key k at rel in base may have meant:
// a key of the same mapping, else one elsewhere in base.
func suggestKey(k, base, rel string, fields []field) string {
	here, elsewhere := []string(nil), ""
	for _, f := range fields {
		if rest, ok := strings.CutPrefix(f.key, rel); ok {
			here = append(here, strings.SplitN(rest, ".", 2)[0])
		}
		if strings.HasSuffix("."+f.key, "."+k) && elsewhere == "" {
			elsewhere = " (did you mean " + base + f.key + "?)"
		}
	}
	for i := 0; base+rel == "" && i < len(entryKinds); i++ {
		here = append(here, entryKinds[i].key)
	}
	return cmp.Or(suggest(k, here), elsewhere)
}

// leaf records the value of one known key: a string, or a list's []string.
func (t *tree) leaf(kv pair, key string, f field) {
	t.origin[key] = t.pos(kv.key)
	switch n, isList := kv.val, f.typ.Kind() == reflect.Slice; {
	case isNull(n): // as if the key were left out
	case n.Kind == yaml.ScalarNode && !isList:
		t.values[key] = n.Value
	case n.Kind == yaml.SequenceNode && isList:
		items := []string{}
		for i, item := range n.Content {
			ikey := fmt.Sprintf("%s[%d]", key, i)
			t.origin[ikey] = t.pos(item)
			if item = resolve(item); item.Kind != yaml.ScalarNode || isNull(item) {
				t.problem(ikey, item, "want %s, got %s", f.tag.Get("item"), describe(item))
			} else {
				items = append(items, item.Value)
			}
		}
		t.values[key] = items
	default:
		t.problem(key, n, "want %s, got %s", f.want, describe(n))
	}
}

// add records a problem with key, unless key or a key it is under was
// reported already. Its source is where key's value came from.
func (t *tree) add(key, format string, args ...any) {
	if !t.isBad(key) {
		k, _, _ := strings.Cut(key, "[") // an item, or its list
		t.probs = append(t.probs, Problem{key, fmt.Sprintf(format, args...), cmp.Or(t.origin[key], t.origin[k])})
	}
}

// problem records a problem with key, at node n if not nil, and marks key
// as reported.
func (t *tree) problem(key string, n *yaml.Node, format string, args ...any) {
	if n != nil {
		t.origin[key] = t.pos(n)
	}
	t.add(key, format, args...)
	t.bad[key] = true
}

func (t *tree) pos(n *yaml.Node) string { return fmt.Sprintf("%s:%d", t.file, n.Line) }

// isBad reports whether key, or a key it is under, was already reported.
func (t *tree) isBad(key string) bool {
	for i := len(key); i > 0; i = strings.LastIndexAny(key[:i], ".[") {
		if t.bad[key[:i]] {
			return true
		}
	}
	return false
}

// quote quotes the value of key as written, else as formatted.
func (t *tree) quote(key, formatted string) string {
	if s, ok := t.layers.Get(key).(string); ok {
		formatted = strings.TrimSpace(s)
	}
	return strconv.Quote(formatted)
}

// serviceLink matches the variables Kubernetes sets for a Service, which
// a Service named unstuck starts with UNSTUCK_.
var serviceLink = regexp.MustCompile(`^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)?)$`)

// readEnv returns the values env sets for keys of the top level and of
// the named entries, and tells warn of each UNSTUCK_ variable naming none.
func (t *tree) readEnv(env []string, warn func(Problem)) map[string]any {
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			vars[k] = v
		}
	}
	layer, known := map[string]any{}, map[string]bool{}
	set := func(prefix string, fields []field) {
		for _, f := range fields {
			name := EnvName(prefix + f.key)
			if v, ok := vars[name]; ok && (v != "" || f.tag.Get("env") == "empty") {
				layer[prefix+f.key], t.origin[prefix+f.key] = v, "env "+name
			}
			known[name] = true
		}
	}
	set("", topFields)
	for _, e := range entryKinds {
		for _, name := range t.names[e.key] {
			set(e.key+"."+name+".", e.fields)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(vars)) {
		if warn == nil || known[name] || serviceLink.MatchString(name) {
			continue
		}
		hint := suggest(name, slices.Sorted(maps.Keys(known)))
		if hint == "" && (strings.HasPrefix(name, "UNSTUCK_LISTENERS_") || strings.HasPrefix(name, "UNSTUCK_UPSTREAMS_")) {
			hint = " (the environment sets keys of the listeners and upstreams the file names; it cannot add one)"
		}
		warn(Problem{Key: name, Msg: "names no configuration key; ignored" + hint})
	}
	return layer
}

// EnvName returns the environment variable that sets key, such as
// UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS for upstreams.backend.pool.max_conns.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// pair is a key and its value (aliases resolved) in a YAML mapping.
type pair struct{ key, val *yaml.Node }

// pairs returns the entries of mapping n, which is under path, and reports
// keys written twice. Merge keys (<<) are expanded as YAML says: an
// explicit key wins over a merged one, an earlier mapping (and what it
// merges) over a later. A mapping merged twice adds nothing the second
// time: no blow-up.
func (t *tree) pairs(n *yaml.Node, path string) []pair {
	var own []pair
	first, seen := map[string]*yaml.Node{}, map[*yaml.Node]bool{}
	for stack := []*yaml.Node{n}; len(stack) > 0; {
		m := resolve(stack[len(stack)-1])
		stack = stack[:len(stack)-1]
		if m.Kind != yaml.MappingNode || seen[m] {
			continue
		}
		seen[m] = true
		var merged []*yaml.Node
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], resolve(m.Content[i+1])
			switch f := first[k.Value]; {
			case k.ShortTag() == "!!merge" && v.Kind == yaml.SequenceNode:
				merged = append(merged, v.Content...)
			case k.ShortTag() == "!!merge":
				merged = append(merged, v)
			case f != nil && m == n:
				t.problem(path+k.Value, k, "written twice; first at line %d", f.Line)
			case f == nil:
				first[k.Value] = k
				own = append(own, pair{k, v})
			}
		}
		slices.Reverse(merged)
		stack = append(stack, merged...)
	}
	return own
}

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// describe names a node's value for messages.
func describe(n *yaml.Node) string {
	if isNull(n) {
		return "nothing"
	}
	return cmp.Or(map[yaml.Kind]string{yaml.SequenceNode: "a list", yaml.MappingNode: "a mapping"}[n.Kind], strconv.Quote(n.Value))
}

// suggest returns " (did you mean X?)" for the candidate X closest to k, if
// one is close enough to be a typo.
func suggest(k string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := levenshtein.ComputeDistance(strings.ToLower(k), strings.ToLower(c)); d < bestD && d < max(len(k), 2) {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}
