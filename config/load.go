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
)

// ImplicitFile is the file Load reads when no file is named, if it exists
// in the working directory.
const ImplicitFile = "config.yaml"

// EnvPrefix starts the name of every environment variable Load reads.
const EnvPrefix = "UNSTUCK_"

// AddFlags defines the flags Load reads on fs: --config/-c, --listen,
// --upstream and --log-level.
func AddFlags(fs *pflag.FlagSet) {
	fs.StringP(FlagConfig, "c", "", "read the configuration from `FILE` (default ./"+ImplicitFile+" if it exists, else the built-in default)")
	fs.String(FlagListen, "", "dev mode: accept app connections on `ADDR` (host:port or unix:/path); needs --upstream; reads no file")
	fs.String(FlagUpstream, "", "dev mode: forward to `HOST:PORT`; needs --listen")
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
// upstreams the source names but cannot add one; the --log-level flag.
//
// Names of listeners and upstreams are lower case letters, digits, "-" and
// "_". A listener that names no upstream gets the only upstream, if there
// is just one. Load finds every problem it can before giving up; the
// error, if any, is a Problems sorted by key.
func Load(opts LoadOptions) (*Config, error) {
	t := &tree{values: map[string]any{}, origin: map[string]string{}, names: map[string][]string{}, bad: map[string]bool{}}
	if !t.read(opts) {
		return nil, t.probs.err()
	}
	v := viper.New()
	if err := v.MergeConfigMap(t.values); err != nil {
		return nil, Problems{{Key: t.file, Msg: err.Error()}}
	}
	// A default for every key of every named entry, so that the
	// environment can set keys the source left out.
	keys := map[string]field{}
	t.each(func(key string, f field) {
		if keys[key] = f; f.hasDef {
			v.SetDefault(key, f.def)
		}
	})
	env := opts.Environ
	if env == nil {
		env = os.Environ()
	}
	if err := v.MergeConfigMap(t.envLayer(env, keys, opts.Warn)); err != nil {
		return nil, Problems{{Msg: "environment: " + err.Error()}}
	}
	if f := flagNamed(opts.Flags, FlagLogLevel); f != nil {
		if err := v.BindPFlag("log.level", f); err != nil {
			return nil, Problems{{Key: "--" + FlagLogLevel, Msg: err.Error()}}
		}
		if f.Changed {
			t.origin["log.level"] = "flag --" + FlagLogLevel
		}
	}

	cfg := &Config{}
	cv := reflect.ValueOf(cfg).Elem()
	t.decode(v.Get, cv, "", topFields)
	for _, e := range entryKinds {
		m := reflect.MakeMap(cv.Field(e.index).Type())
		for _, name := range t.names[e.key] {
			ev := reflect.New(m.Type().Elem()).Elem()
			ev.FieldByName("Name").SetString(name)
			t.decode(v.Get, ev, e.key+"."+name+".", e.fields)
			m.SetMapIndex(reflect.ValueOf(name), ev)
		}
		cv.Field(e.index).Set(m)
	}
	for name, l := range cfg.Listeners {
		if ups := t.names["upstreams"]; l.Upstream == "" && len(ups) == 1 {
			l.Upstream = ups[0]
			cfg.Listeners[name] = l
		}
	}
	for name, u := range cfg.Upstreams {
		if _, set := t.origin["upstreams."+name+".pool.max_idle"]; !set {
			u.Pool.MaxIdle = min(u.Pool.MaxIdle, max(u.Pool.MaxConns, 0))
			cfg.Upstreams[name] = u
		}
	}

	ps := t.probs
	for _, p := range cfg.problems(t.isBad) {
		if !t.isBad(p.Key) {
			ps = append(ps, p)
		}
	}
	for i, p := range ps {
		if k, _, _ := strings.Cut(p.Key, "["); p.Source == "" {
			ps[i].Source = cmp.Or(t.origin[p.Key], t.origin[k]) // an item, or its list
		}
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	if t.onDisk {
		cfg.File = t.file
	}
	return cfg, nil
}

func flagNamed(fs *pflag.FlagSet, name string) *pflag.Flag {
	if fs == nil {
		return nil
	}
	return fs.Lookup(name)
}

// tree is the YAML source checked against the schema: the values of known
// keys only, where each came from, and the problems found on the way.
type tree struct {
	onDisk bool                // file is a file on disk (not the built-in default)
	file   string              // the source's name in messages
	values map[string]any      // nested maps of strings and []string, for viper
	origin map[string]string   // full key → where its value came from
	names  map[string][]string // "listeners", "upstreams" → names in source order
	bad    map[string]bool     // keys (or prefixes) already reported
	probs  Problems
}

// each calls fn for every key of the top level and of every named entry.
func (t *tree) each(fn func(key string, f field)) {
	for _, f := range topFields {
		fn(f.key, f)
	}
	for _, e := range entryKinds {
		for _, name := range t.names[e.key] {
			for _, f := range e.fields {
				fn(e.key+"."+name+"."+f.key, f)
			}
		}
	}
}

// decode sets each key of fields in the struct dst to its value from get.
// A value that does not parse or check is reported, and dst keeps the
// default.
func (t *tree) decode(get func(string) any, dst reflect.Value, prefix string, fields []field) {
	for _, f := range fields {
		key, s := prefix+f.key, ""
		switch raw := get(key).(type) {
		case nil:
			continue
		case []string: // a list from the file or a flag
			if len(raw) > 0 {
				dst.FieldByIndex(f.index).Set(reflect.ValueOf(raw))
			}
			continue
		case string:
			s = strings.TrimSpace(raw)
		default:
			s = fmt.Sprint(raw)
		}
		x, msg := f.parse(s)
		if m := f.check(x); msg == "" && m != "" {
			msg = fmt.Sprintf("%q: %s", s, m)
		}
		if msg != "" {
			t.probs = append(t.probs, Problem{Key: key, Msg: msg})
			t.bad[key] = true
			x, _ = f.parse(f.def)
		}
		if f.kind != kList || x.Len() > 0 {
			dst.FieldByIndex(f.index).Set(x)
		}
	}
}

// read fills t from the source opts select. It returns false if there is
// nothing to decode.
func (t *tree) read(opts LoadOptions) bool {
	file := opts.File
	if f := flagNamed(opts.Flags, FlagConfig); f != nil && f.Changed {
		file = f.Value.String()
	}
	var listen, upstream string
	if f := flagNamed(opts.Flags, FlagListen); f != nil {
		listen = f.Value.String()
	}
	if f := flagNamed(opts.Flags, FlagUpstream); f != nil {
		upstream = f.Value.String()
	}
	const needBoth = "missing; dev mode needs both --listen and --upstream"
	switch {
	case listen == "" && upstream == "":
	case listen == "":
		t.probs.add("--"+FlagListen, needBoth)
		return false
	case upstream == "":
		t.probs.add("--"+FlagUpstream, needBoth)
		return false
	case file != "":
		t.probs.add("--"+FlagConfig, "%q: cannot be combined with --listen and --upstream, which read no file", file)
		return false
	default:
		t.file = "dev mode"
		t.values["listeners"] = map[string]any{"app": map[string]any{"listen": listen, "upstream": "backend"}}
		t.values["upstreams"] = map[string]any{"backend": map[string]any{"endpoints": splitList(upstream)}}
		t.names = map[string][]string{"listeners": {"app"}, "upstreams": {"backend"}}
		t.origin["listeners.app.listen"] = "flag --" + FlagListen
		t.origin["upstreams.backend.endpoints"] = "flag --" + FlagUpstream
		return true
	}

	t.file, t.onDisk = file, true
	if file == "" {
		t.file = ImplicitFile
	}
	data, err := os.ReadFile(t.file)
	if file == "" && errors.Is(err, fs.ErrNotExist) {
		t.file, t.onDisk, data, err = "built-in config.yaml", false, opts.Default, nil
		if data == nil {
			data = unstuck.DefaultConfig
		}
	}
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		t.probs.add(t.file, "file not found")
	case errors.As(err, &pe):
		t.probs.add(t.file, "%s", pe.Err)
	case err != nil:
		t.probs.add(t.file, "%s", err)
	default:
		return t.parse(data)
	}
	return false
}

// parse parses the YAML source and walks it against the schema.
func (t *tree) parse(data []byte) bool {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := strings.ReplaceAll(strings.TrimPrefix(err.Error(), "yaml: "), "\n", "; ")
		t.probs.add(t.file, "%s", strings.Join(strings.Fields(msg), " "))
		return false
	}
	if len(doc.Content) == 0 || isNull(resolve(doc.Content[0])) {
		return true // an empty file: Validate says what is missing
	}
	root := resolve(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		t.problem(t.file, root, "want a mapping with log, listeners and upstreams at the top level, got %s", describe(root))
		return false
	}
	t.walk(root, "", t.values)
	return true
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// walk copies the known keys of mapping n, which is at path, into dst and
// reports the others.
func (t *tree) walk(n *yaml.Node, path string, dst map[string]any) {
	for _, kv := range t.pairs(n, path) {
		k, val := kv.key.Value, resolve(kv.val)
		key := join(path, k)
		at := lookup(key)
		e := at.entries
		switch {
		case at.field != nil:
			t.leaf(kv, key, *at.field, dst)
			continue
		case !at.section:
			t.problem(key, kv.key, "unknown key%s", at.suggest(k))
			continue
		case e != nil && path == e.key && !nameRE.MatchString(k):
			t.problem(key, kv.key, "bad %s name; use lower case letters, digits, '-' and '_'", e.what)
			continue
		case e != nil && path == e.key:
			t.names[e.key] = append(t.names[e.key], k)
			if !isNull(val) && val.Kind != yaml.MappingNode {
				hint := ""
				if slices.ContainsFunc(e.fields, func(f field) bool { return strings.HasPrefix(f.key+".", k+".") }) {
					hint = fmt.Sprintf("; settings go under a name, such as %s.%s.%s", e.key, e.example, k)
				}
				t.problem(key, kv.key, "want a mapping of %s settings, got %s%s", e.what, describe(val), hint)
				continue
			}
		case isNull(val):
			continue
		case e != nil && key == e.key && val.Kind != yaml.MappingNode:
			t.problem(key, val, "want a mapping of name to %s settings, such as %s: {%s: {...}}, got %s", e.what, e.key, e.example, describe(val))
			continue
		case val.Kind != yaml.MappingNode:
			t.problem(key, val, "want a mapping, got %s", describe(val))
			continue
		}
		sub := map[string]any{}
		dst[k] = sub
		if !isNull(val) {
			t.walk(val, key, sub)
		}
	}
}

// place is where a key is in the schema.
type place struct {
	field     *field   // the key has a value
	section   bool     // the key holds other keys
	entries   *entries // the key is listeners or upstreams, or under them
	fields    []field  // the top level's or the entry's
	base, rel string   // the entry ("upstreams.backend") and the key in it
}

func lookup(key string) place {
	at := place{fields: topFields, rel: key}
	parts := strings.SplitN(key, ".", 3)
	for i, e := range entryKinds {
		if parts[0] == e.key {
			at.entries = &entryKinds[i]
			if len(parts) < 3 {
				at.section = true
				return at
			}
			at.fields, at.base, at.rel = e.fields, parts[0]+"."+parts[1], parts[2]
		}
	}
	for i, f := range at.fields {
		if f.key == at.rel {
			at.field = &at.fields[i]
		}
		at.section = at.section || strings.HasPrefix(f.key, at.rel+".")
	}
	return at
}

// suggest suggests, for the unknown key k at at, a key of the same level,
// else one at another level of the same entry, that k may have meant.
func (at place) suggest(k string) string {
	parent, _ := strings.CutSuffix(at.rel, k)
	var here []string
	for _, f := range at.fields {
		if rest, ok := strings.CutPrefix(f.key, parent); ok {
			here = append(here, strings.SplitN(rest, ".", 2)[0])
		}
	}
	for _, e := range entryKinds {
		if parent == "" && at.base == "" {
			here = append(here, e.key)
		}
	}
	if s := suggest(k, here); s != "" {
		return s
	}
	for _, f := range at.fields {
		if f.key == k || strings.HasSuffix(f.key, "."+k) {
			return " (did you mean " + join(at.base, f.key) + "?)"
		}
	}
	return ""
}

// leaf copies the value of one known key into dst, as a string or, for
// lists, a []string.
func (t *tree) leaf(kv pair, full string, f field, dst map[string]any) {
	t.origin[full] = t.pos(kv.key)
	n := resolve(kv.val)
	switch {
	case isNull(n): // as if the key were left out
	case n.Kind == yaml.ScalarNode && f.kind != kList:
		dst[kv.key.Value] = n.Value
	case n.Kind == yaml.SequenceNode && f.kind == kList:
		items := make([]string, 0, len(n.Content))
		for i, item := range n.Content {
			key := fmt.Sprintf("%s[%d]", full, i)
			t.origin[key] = t.pos(item)
			if item = resolve(item); item.Kind != yaml.ScalarNode || isNull(item) {
				t.problem(key, item, "want host:port, got %s", describe(item))
				continue
			}
			items = append(items, item.Value)
		}
		dst[kv.key.Value] = items
	default:
		t.problem(full, n, "want %s, got %s", f.kind.want, describe(n))
	}
}

// problem records a problem with key at node n and marks key as reported.
func (t *tree) problem(key string, n *yaml.Node, format string, args ...any) {
	t.probs = append(t.probs, Problem{Key: key, Msg: fmt.Sprintf(format, args...), Source: t.pos(n)})
	t.bad[key] = true
}

func (t *tree) pos(n *yaml.Node) string {
	if n == nil || n.Line == 0 {
		return t.file
	}
	return t.file + ":" + strconv.Itoa(n.Line)
}

// isBad reports whether key, or a key it is under, was already reported.
func (t *tree) isBad(key string) bool {
	for ; ; key = key[:strings.LastIndexAny(key, ".[")] {
		if t.bad[key] {
			return true
		}
		if !strings.ContainsAny(key, ".[") {
			return false
		}
	}
}

// serviceLink matches the variables Kubernetes sets for a Service, which
// a Service named unstuck starts with UNSTUCK_.
var serviceLink = regexp.MustCompile(`^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)?)$`)

// envLayer returns the values env sets for keys, as nested maps for viper,
// and tells warn of each UNSTUCK_ variable that names no key.
func (t *tree) envLayer(env []string, keys map[string]field, warn func(Problem)) map[string]any {
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			vars[k] = v
		}
	}
	layer, known := map[string]any{}, map[string]bool{}
	for key, f := range keys {
		name := EnvName(key)
		known[name] = true
		if val, ok := vars[name]; ok && (val != "" || f.tag.Get("env") == "empty") {
			setPath(layer, key, val)
			t.origin[key] = "env " + name
		}
	}
	for _, name := range slices.Sorted(maps.Keys(vars)) {
		if warn == nil || known[name] || serviceLink.MatchString(name) {
			continue
		}
		msg := "names no configuration key; ignored" + suggest(name, slices.Sorted(maps.Keys(known)))
		if !strings.Contains(msg, "(") && (strings.HasPrefix(name, "UNSTUCK_LISTENERS_") || strings.HasPrefix(name, "UNSTUCK_UPSTREAMS_")) {
			msg += " (the environment sets keys of the listeners and upstreams the file names; it cannot add one)"
		}
		warn(Problem{Key: name, Msg: msg})
	}
	return layer
}

// EnvName returns the environment variable that sets key, such as
// UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS for upstreams.backend.pool.max_conns.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

func setPath(m map[string]any, key string, v any) {
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		sub, ok := m[p].(map[string]any)
		if !ok {
			sub = map[string]any{}
			m[p] = sub
		}
		m = sub
	}
	m[parts[len(parts)-1]] = v
}

// join joins two parts of a key with ".", skipping an empty one.
func join(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "." + b
}

// pair is a key and its value in a YAML mapping.
type pair struct{ key, val *yaml.Node }

// pairs returns the entries of mapping n, which is at path, with merge keys
// (<<) expanded, an explicit key winning over a merged one, and reports
// keys written twice.
func (t *tree) pairs(n *yaml.Node, path string) []pair {
	var own, merged []pair
	first := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			v = resolve(v)
			srcs := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, s := range srcs {
				if s = resolve(s); s.Kind == yaml.MappingNode {
					merged = append(merged, (&tree{}).pairs(s, "")...)
				}
			}
		} else if f, ok := first[k.Value]; ok {
			t.problem(join(path, k.Value), k, "written twice; first at line %d", f.Line)
		} else {
			first[k.Value] = k
			own = append(own, pair{k, v})
		}
	}
	for _, m := range merged {
		if first[m.key.Value] == nil {
			first[m.key.Value] = m.key
			own = append(own, m)
		}
	}
	return own
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a node's value for messages: a quoted scalar, "a list"
// or "a mapping".
func describe(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case isNull(n):
		return "nothing"
	}
	return strconv.Quote(n.Value)
}

// suggest returns " (did you mean X?)" for the candidate X closest to k, if
// one is close enough to be a typo.
func suggest(k string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := distance(strings.ToLower(k), strings.ToLower(c)); d < bestD && d < max(len(k), 2) {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
