package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/unstuck-proxy/unstuck"
	"github.com/unstuck-proxy/unstuck/sockopt"
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
	// File is the file to read when the --config flag is not set. Empty:
	// ./config.yaml if it exists, else Default.
	File string
	// Flags, if not nil, is a parsed flag set on which AddFlags was called.
	Flags *pflag.FlagSet
	// Environ is the environment as "KEY=value" strings; nil means
	// os.Environ().
	Environ []string
	// Default is the configuration used when no file is named and
	// ./config.yaml does not exist; nil means unstuck.DefaultConfig.
	Default []byte
}

// Load reads, layers, decodes and validates the configuration.
//
// The layers, each overriding the one before, are:
//
//  1. the defaults of every key (those of the repository's config.yaml);
//  2. one YAML source: the --config file, else LoadOptions.File, else
//     ./config.yaml if it exists, else LoadOptions.Default. In dev mode
//     (--listen and --upstream, which go together and exclude --config) no
//     file is read: the source is a listener "app" on --listen forwarding to
//     an upstream "backend" at --upstream;
//  3. the environment: each key has a variable named UNSTUCK_ and the key in
//     upper case with "." and "-" written as "_", such as UNSTUCK_LOG_LEVEL
//     or UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS. Lists are written
//     comma-separated. Empty variables are ignored, except that
//     UNSTUCK_ADMIN_LISTEN= turns the admin listener off. The environment
//     can set every key of every listener and upstream that the YAML source
//     names, including keys the source leaves out, but it cannot create a
//     listener or upstream: variables for names the source does not have,
//     like any other UNSTUCK_ variable that names no key, are ignored;
//  4. the --log-level flag.
//
// Names of listeners and upstreams are lower case letters, digits, "-" and
// "_". A listener that names no upstream gets the only upstream, if there
// is just one.
//
// Load finds every problem it can before giving up. The error, if any, is
// a Problems sorted by key.
func Load(opts LoadOptions) (*Config, error) {
	t := &tree{
		values: map[string]any{},
		origin: map[string]string{},
		bad:    map[string]bool{},
	}
	if !t.read(opts) {
		return nil, t.probs.err()
	}

	v := viper.New()
	if err := v.MergeConfigMap(t.values); err != nil {
		return nil, Problems{{Key: t.file, Msg: err.Error()}}
	}

	// Register a default for every key of every named entry, so that the
	// environment below can set keys the source left out.
	defs := map[string]string{}
	keys := map[string]field{} // every full key, for the environment
	register := func(prefix string, fields []field) {
		for _, f := range fields {
			key := prefix + f.key
			keys[key] = f
			if !f.noDef {
				defs[key] = f.def
				v.SetDefault(key, f.def)
			}
		}
	}
	register("", topFields)
	for _, name := range t.listeners {
		register("listeners."+name+".", listenerFields)
	}
	for _, name := range t.upstreams {
		register("upstreams."+name+".", upstreamFields)
	}

	env := opts.Environ
	if env == nil {
		env = os.Environ()
	}
	if layer := t.envLayer(env, keys); len(layer) > 0 {
		if err := v.MergeConfigMap(layer); err != nil {
			return nil, Problems{{Msg: "environment: " + err.Error()}}
		}
	}

	if opts.Flags != nil {
		if f := opts.Flags.Lookup(FlagLogLevel); f != nil {
			if err := v.BindPFlag("log.level", f); err != nil {
				return nil, Problems{{Key: "--" + FlagLogLevel, Msg: err.Error()}}
			}
			if f.Changed {
				t.origin["log.level"] = "flag --" + FlagLogLevel
			}
		}
	}

	d := &decoder{get: v.Get, set: t.isSet, defs: defs, bad: t.bad}
	cfg := d.config(t.listeners, t.upstreams)

	ps := append(t.probs, d.probs...)
	for _, p := range cfg.problems(t.isBad) {
		if !t.isBad(p.Key) {
			ps = append(ps, p)
		}
	}
	for i := range ps {
		if ps[i].Source == "" {
			ps[i].Source = t.source(ps[i].Key)
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

// tree is the YAML source checked against the schema: the values of known
// keys only, where each came from, and the problems found on the way.
type tree struct {
	onDisk    bool              // t.file is a file on disk (not the built-in default)
	file      string            // the source's name in messages
	values    map[string]any    // nested maps of strings and []string, for viper
	origin    map[string]string // full key → where its value came from
	listeners []string          // names, in source order
	upstreams []string          // names, in source order
	bad       map[string]bool   // keys (or prefixes) already reported
	probs     Problems          // problems with the source itself
}

// read fills t from the source opts select. It returns false if there is
// nothing to decode.
func (t *tree) read(opts LoadOptions) bool {
	file := opts.File
	var listen, upstream string
	if fs := opts.Flags; fs != nil {
		if f := fs.Lookup(FlagConfig); f != nil && f.Changed {
			file = f.Value.String()
		}
		if f := fs.Lookup(FlagListen); f != nil {
			listen = f.Value.String()
		}
		if f := fs.Lookup(FlagUpstream); f != nil {
			upstream = f.Value.String()
		}
	}

	if listen != "" || upstream != "" {
		switch {
		case listen == "":
			t.probs.add("--"+FlagListen, "missing; dev mode needs both --listen and --upstream")
		case upstream == "":
			t.probs.add("--"+FlagUpstream, "missing; dev mode needs both --listen and --upstream")
		case file != "":
			t.probs.add("--"+FlagConfig, "%q: cannot be combined with --listen and --upstream, which read no file", file)
		default:
			t.dev(listen, upstream)
			return true
		}
		return false
	}

	var data []byte
	switch {
	case file != "":
		t.file, t.onDisk = file, true
		b, err := os.ReadFile(file)
		if err != nil {
			t.probs = append(t.probs, Problem{Key: file, Msg: fileError(err)})
			return false
		}
		data = b
	default:
		b, err := os.ReadFile(ImplicitFile)
		switch {
		case err == nil:
			t.file, t.onDisk, data = ImplicitFile, true, b
		case errors.Is(err, fs.ErrNotExist):
			t.file, data = "built-in config.yaml", opts.Default
			if data == nil {
				data = unstuck.DefaultConfig
			}
		default:
			t.probs = append(t.probs, Problem{Key: ImplicitFile, Msg: fileError(err)})
			return false
		}
	}
	return t.parse(data)
}

func fileError(err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return "file not found"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// dev builds the dev-mode source from --listen and --upstream.
func (t *tree) dev(listen, upstream string) {
	t.file = "dev mode"
	t.values["listeners"] = map[string]any{"app": map[string]any{"listen": listen, "upstream": "backend"}}
	t.values["upstreams"] = map[string]any{"backend": map[string]any{"endpoints": splitList(upstream)}}
	t.listeners = []string{"app"}
	t.upstreams = []string{"backend"}
	t.origin["listeners.app.listen"] = "flag --" + FlagListen
	t.origin["upstreams.backend.endpoints"] = "flag --" + FlagUpstream
}

// parse parses the YAML source and walks it against the schema.
func (t *tree) parse(data []byte) bool {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", "; ")), " ")
		t.probs = append(t.probs, Problem{Key: t.file, Msg: msg})
		return false
	}
	if len(doc.Content) == 0 {
		return true // empty file: Validate says what is missing
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return true
	}
	if root.Kind != yaml.MappingNode {
		t.problem(t.file, root, "want a mapping with log, listeners and upstreams at the top level, got %s", describe(root))
		return false
	}
	for _, kv := range t.pairs(root, "") {
		switch k := kv.key.Value; k {
		case "listeners":
			t.listeners = t.entries(kv.val, k, "listener", listenerFields)
		case "upstreams":
			t.upstreams = t.entries(kv.val, k, "upstream", upstreamFields)
		default:
			if !t.known(kv, "", "", topFields, t.values) {
				t.problem(k, kv.key, "unknown key%s", suggest(k, topKeys))
			}
		}
	}
	return true
}

// topKeys are the keys allowed at the top level.
var topKeys = []string{"log", "admin", "shutdown_timeout", "release_memory_after_idle", "listeners", "upstreams"}

// join joins two parts of a key with ".", skipping an empty one.
func join(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "." + b
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// entries walks the map of listeners or upstreams and returns their names.
func (t *tree) entries(n *yaml.Node, section, what string, fields []field) []string {
	n = resolve(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		t.problem(section, n, "want a mapping of name to %s settings, such as %s: {%s: {...}}, got %s",
			what, section, map[string]string{"listener": "app", "upstream": "backend"}[what], describe(n))
		return nil
	}
	dst := map[string]any{}
	t.values[section] = dst
	var names []string
	for _, kv := range t.pairs(n, section) {
		name := kv.key.Value
		key := section + "." + name
		if !nameRE.MatchString(name) {
			t.problem(key, kv.key, "bad %s name; use lower case letters, digits, '-' and '_'", what)
			continue
		}
		names = append(names, name)
		val := resolve(kv.val)
		if !isNull(val) && val.Kind != yaml.MappingNode {
			hint := ""
			if slices.ContainsFunc(fields, func(f field) bool { return f.key == name }) {
				hint = fmt.Sprintf("; settings go under a name, such as %s.%s.%s", section, map[string]string{"listener": "app", "upstream": "backend"}[what], name)
			}
			t.problem(key, kv.key, "want a mapping of %s settings, got %s%s", what, describe(val), hint)
			continue
		}
		entry := map[string]any{}
		dst[name] = entry
		t.section(val, key, "", fields, entry)
	}
	return names
}

// section walks mapping n, which holds the fields under rel (relative to
// the entry or section at base), and copies known values into dst.
func (t *tree) section(n *yaml.Node, base, rel string, fields []field, dst map[string]any) {
	n = resolve(n)
	if isNull(n) {
		return
	}
	here := join(base, rel)
	if n.Kind != yaml.MappingNode {
		t.problem(here, n, "want a mapping, got %s", describe(n))
		return
	}
	for _, kv := range t.pairs(n, here) {
		if k := kv.key.Value; !t.known(kv, base, rel, fields, dst) {
			t.problem(join(here, k), kv.key, "unknown key%s", suggestField(k, base, rel, fields))
		}
	}
}

// known copies the pair kv, which is under rel, into dst if its key is one
// of fields or leads to some, and reports whether it is.
func (t *tree) known(kv pair, base, rel string, fields []field, dst map[string]any) bool {
	k := kv.key.Value
	relk := join(rel, k)
	if i := slices.IndexFunc(fields, func(f field) bool { return f.key == relk }); i >= 0 {
		t.leaf(kv, join(base, relk), fields[i], dst)
		return true
	}
	if slices.ContainsFunc(fields, func(f field) bool { return strings.HasPrefix(f.key, relk+".") }) {
		sub := map[string]any{}
		dst[k] = sub
		t.section(kv.val, base, relk, fields, sub)
		return true
	}
	return false
}

// leaf copies the value of one known key into dst, as a string or, for
// lists, a []string.
func (t *tree) leaf(kv pair, full string, f field, dst map[string]any) {
	t.origin[full] = t.pos(kv.key)
	n := resolve(kv.val)
	switch {
	case isNull(n):
		// as if the key were left out
	case n.Kind == yaml.ScalarNode && f.kind != kList:
		dst[kv.key.Value] = n.Value
	case n.Kind == yaml.ScalarNode:
		t.problem(full, n, "want %s, got %q", f.kind.want(), n.Value)
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
		t.problem(full, n, "want %s, got %s", f.kind.want(), describe(n))
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
	return fmt.Sprintf("%s:%d", t.file, n.Line)
}

// isBad reports whether key, or a key it is under, was already reported.
func (t *tree) isBad(key string) bool {
	for {
		if t.bad[key] {
			return true
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			return false
		}
		key = key[:i]
	}
}

// isSet reports whether the source, the environment or a flag gave key a
// value.
func (t *tree) isSet(key string) bool {
	_, ok := t.origin[key]
	return ok
}

// source says where the value of key came from, if it is known.
func (t *tree) source(key string) string {
	if s, ok := t.origin[key]; ok {
		return s
	}
	if i := strings.IndexByte(key, '['); i >= 0 {
		return t.origin[key[:i]]
	}
	return ""
}

// envLayer returns the values env sets for keys, as nested maps for viper.
func (t *tree) envLayer(env []string, keys map[string]field) map[string]any {
	vars := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			vars[k] = v
		}
	}
	layer := map[string]any{}
	for key, f := range keys {
		name := EnvName(key)
		val, ok := vars[name]
		if !ok || val == "" && !f.emptyEnv {
			continue
		}
		var v any = val
		if f.kind == kList {
			v = splitList(val)
		}
		setPath(layer, key, v)
		t.origin[key] = "env " + name
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

// splitList splits a list written on one line, separated by commas or
// spaces.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}

// pairs returns the entries of mapping n, which holds the keys under here,
// and reports keys written twice.
func (t *tree) pairs(n *yaml.Node, here string) []pair {
	ps := pairs(n)
	first := map[string]*yaml.Node{}
	out := ps[:0:0]
	for _, p := range ps {
		if f, ok := first[p.key.Value]; ok {
			key := p.key.Value
			if here != "" {
				key = here + "." + key
			}
			t.problem(key, p.key, "written twice; first at line %d", f.Line)
			continue
		}
		first[p.key.Value] = p.key
		out = append(out, p)
	}
	return out
}

// pair is a key and its value in a YAML mapping.
type pair struct{ key, val *yaml.Node }

// pairs returns the entries of mapping n with merge keys (<<) expanded;
// an explicit key wins over a merged one.
func pairs(n *yaml.Node) []pair {
	var own, merged []pair
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
					merged = append(merged, pairs(s)...)
				}
			}
			continue
		}
		own = append(own, pair{k, v})
	}
	out := own
	for _, m := range merged {
		if !slices.ContainsFunc(out, func(p pair) bool { return p.key.Value == m.key.Value }) {
			out = append(out, m)
		}
	}
	return out
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
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	if isNull(n) {
		return "nothing"
	}
	return strconv.Quote(n.Value)
}

// suggestField suggests, for an unknown key k under rel, a key of the same
// entry or section that k may have meant.
func suggestField(k, base, rel string, fields []field) string {
	var here []string
	prefix := ""
	if rel != "" {
		prefix = rel + "."
	}
	for _, f := range fields {
		if rest, ok := strings.CutPrefix(f.key, prefix); ok {
			here = append(here, strings.SplitN(rest, ".", 2)[0])
		}
	}
	if s := suggest(k, here); s != "" {
		return s
	}
	for _, f := range fields {
		if f.key == k || strings.HasSuffix(f.key, "."+k) {
			return " (did you mean " + join(base, f.key) + "?)"
		}
	}
	return ""
}

// suggest returns " (did you mean X?)" for the candidate X closest to k, if
// one is close enough to be a typo.
func suggest(k string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		d := distance(strings.ToLower(k), c)
		if d < bestD && d < max(len(k), 2) {
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
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
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

// decoder turns the layered values into typed ones. A value it cannot
// decode is reported, marked bad, and replaced by its default.
type decoder struct {
	get   func(key string) any  // nil when the key has no value
	set   func(key string) bool // whether the source, env or a flag set key; nil: always
	defs  map[string]string     // full key → default
	bad   map[string]bool       // keys reported so far
	probs Problems
}

func (d *decoder) config(listeners, upstreams []string) *Config {
	c := &Config{
		Log: Log{
			Level:  strings.ToLower(d.str("log.level")),
			Format: strings.ToLower(d.str("log.format")),
			Access: decode(d, "log.access", parseBool),
		},
		Admin:           Admin{Listen: d.str("admin.listen")},
		ShutdownTimeout: decode(d, "shutdown_timeout", durationThat(positive)),

		ReleaseMemoryAfterIdle: decode(d, "release_memory_after_idle", parseDuration),
		Listeners:              make(map[string]Listener, len(listeners)),
		Upstreams:              make(map[string]Upstream, len(upstreams)),
	}
	for _, name := range upstreams {
		c.Upstreams[name] = d.upstream(name)
	}
	for _, name := range listeners {
		l := d.listener(name)
		if l.Upstream == "" && len(upstreams) == 1 {
			l.Upstream = upstreams[0]
		}
		c.Listeners[name] = l
	}
	return c
}

func (d *decoder) listener(name string) Listener {
	p := "listeners." + name + "."
	return Listener{
		Name:        name,
		Listen:      d.str(p + "listen"),
		Protocol:    strings.ToLower(d.str(p + "protocol")),
		Upstream:    d.str(p + "upstream"),
		IdleTimeout: decode(d, p+"idle_timeout", parseDuration),

		IdleReleaseAfter: decode(d, p+"idle_release_after", parseDuration),
		Linger:           decode(d, p+"linger", parseLinger),

		AppFinTimeout: decode(d, p+"app_fin_timeout", durationThat(positive)),
		ReusePort:     decode(d, p+"reuse_port", parseBool),
		SocketMode:    decode(d, p+"socket_mode", parseMode),
		Keepalive:     d.keepalive(p + "keepalive."),
		UserTimeout:   decode(d, p+"user_timeout", durationThat(userTimeout)),

		ReadHeaderTimeout: decode(d, p+"read_header_timeout", parseDuration),
		BodyReadTimeout:   decode(d, p+"body_read_timeout", parseDuration),
		SendTimeout:       decode(d, p+"send_timeout", parseDuration),
		Limits: ListenerLimits{
			RequestHeaderBytes: decode(d, p+"limits.request_header_bytes", sizeThat[int](headerBytes)),
			RequestBodyBytes:   decode(d, p+"limits.request_body_bytes", parseSize),
			MaxConns:           decode(d, p+"limits.max_conns", parseInt),
		},
	}
}

func (d *decoder) keepalive(p string) Keepalive {
	return Keepalive{
		Idle:     decode(d, p+"idle", durationThat(keepaliveTime)),
		Interval: decode(d, p+"interval", durationThat(keepaliveTime)),
		Count:    decode(d, p+"count", parseInt),
	}
}

func (d *decoder) upstream(name string) Upstream {
	p := "upstreams." + name + "."
	maxConns := decode(d, p+"pool.max_conns", parseInt)
	return Upstream{
		Name:       name,
		Endpoints:  d.list(p + "endpoints"),
		Linger:     decode(d, p+"linger", parseLinger),
		Retries:    decode(d, p+"retries", parseInt),
		HostHeader: d.str(p + "host_header"),
		Pool: PoolLimits{
			MaxConns:       maxConns,
			MaxIdle:        d.maxIdle(p, maxConns),
			IdleTimeout:    decode(d, p+"pool.idle_timeout", parseDuration),
			MaxLifetime:    decode(d, p+"pool.max_lifetime", parseDuration),
			MaxRequests:    decode(d, p+"pool.max_requests", parseInt),
			AcquireTimeout: decode(d, p+"pool.acquire_timeout", parseDuration),
		},
		Dial: Dial{
			Timeout:     decode(d, p+"dial.timeout", parseDuration),
			Source:      decode(d, p+"dial.source", parseIP),
			SourcePorts: decode(d, p+"dial.source_ports", parsePortRange),
			Keepalive:   d.keepalive(p + "dial.keepalive."),
			UserTimeout: decode(d, p+"dial.user_timeout", durationThat(userTimeout)),
		},
		Timeouts: Timeouts{
			ResponseHeader: decode(d, p+"timeouts.response_header", parseDuration),
			ResponseIdle:   decode(d, p+"timeouts.response_idle", parseDuration),
			Write:          decode(d, p+"timeouts.write", parseDuration),
		},
		Limits: UpstreamLimits{
			ResponseHeaderBytes: decode(d, p+"limits.response_header_bytes", sizeThat[int](headerBytes)),
		},
	}
}

// maxIdle decodes pool.max_idle of the upstream at prefix p. Left out, it
// is its default or maxConns, whichever is less, so that setting max_conns
// alone stays valid.
func (d *decoder) maxIdle(p string, maxConns int) int {
	n := decode(d, p+"pool.max_idle", parseInt)
	if d.set == nil || d.set(p+"pool.max_idle") {
		return n
	}
	return min(n, max(maxConns, 0))
}

// text returns the value of key as a string; ok is false if it has none.
func (d *decoder) text(key string) (s string, ok bool) {
	switch v := d.get(key).(type) {
	case nil:
		return "", false
	case string:
		return strings.TrimSpace(v), true
	case []string:
		d.fail(key, "want a single value, got a list")
		return "", false
	default:
		return fmt.Sprint(v), true
	}
}

func (d *decoder) str(key string) string {
	s, _ := d.text(key)
	return s
}

func (d *decoder) list(key string) []string {
	var l []string
	switch v := d.get(key).(type) {
	case []string:
		l = v
	case string:
		l = splitList(v)
	}
	if len(l) == 0 {
		return nil
	}
	return l
}

func (d *decoder) fail(key, msg string) {
	d.probs = append(d.probs, Problem{Key: key, Msg: msg})
	d.bad[key] = true
}

// decode parses the value of key, or its default if it has none or parse
// rejects it.
func decode[T any](d *decoder, key string, parse func(string) (T, string)) T {
	if s, ok := d.text(key); ok {
		v, msg := parse(s)
		if msg == "" {
			return v
		}
		d.fail(key, msg)
	}
	v, _ := parse(d.defs[key])
	return v
}

func parseInt(s string) (int, string) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Sprintf("%q is not an integer", s)
	}
	return n, ""
}

func parseBool(s string) (bool, string) {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Sprintf("%q: want true or false", s)
	}
	return b, ""
}

var plainNumber = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$`)

// parseDuration accepts Go durations ("90s", "1m30s") and a plain 0.
func parseDuration(s string) (time.Duration, string) {
	if plainNumber.MatchString(s) {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f == 0 {
			return 0, ""
		}
		return 0, fmt.Sprintf("%q has no unit; write %ss or %sms", s, s, s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Sprintf("%q is not a duration; want one such as 500ms, 2s or 1m30s", s)
	}
	if d < 0 {
		return 0, fmt.Sprintf("%q: must not be negative", s)
	}
	return d, ""
}

// durationThat returns a parser of durations that msg, which says what is
// wrong with one, also accepts. Its messages quote the text as written.
func durationThat(msg func(time.Duration) string) func(string) (time.Duration, string) {
	return func(s string) (time.Duration, string) {
		d, m := parseDuration(s)
		if m == "" {
			if m = msg(d); m != "" {
				return 0, fmt.Sprintf("%q: %s", s, m)
			}
		}
		return d, m
	}
}

// sizeUnits are the suffixes a size may have: binary multiples only, so
// that a size means one thing.
var sizeUnits = []struct {
	suffix string
	n      int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}}

// parseSize parses a number of bytes, plain ("65536") or with a KiB, MiB
// or GiB suffix ("64KiB").
func parseSize(s string) (int64, string) {
	num, mult := s, int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.n
			break
		}
	}
	digits := strings.TrimPrefix(num, "-")
	end := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' })
	switch {
	case digits == "" || end == 0:
		return 0, fmt.Sprintf("%q is not a size; want one such as 65536, 64KiB or 1MiB", s)
	case end > 0 && mult == 1 && isLetters(strings.TrimSpace(digits[end:])):
		return 0, fmt.Sprintf("%q: unknown unit %q; want KiB, MiB or GiB, or none for bytes", s, strings.TrimSpace(digits[end:]))
	case end > 0:
		return 0, fmt.Sprintf("%q is not a size; want a whole number such as 65536, 64KiB or 1MiB", s)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	switch {
	case digits != num && n != 0:
		return 0, fmt.Sprintf("%q: must not be negative", s)
	case err != nil || n > math.MaxInt64/mult:
		return 0, fmt.Sprintf("%q: too large", s)
	}
	return n * mult, ""
}

func isLetters(s string) bool {
	return s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
}

// sizeThat returns a parser of sizes into T that msg, which says what is
// wrong with one, also accepts. Its messages quote the text as written.
func sizeThat[T int | int64](msg func(int64) string) func(string) (T, string) {
	return func(s string) (T, string) {
		n, m := parseSize(s)
		if m == "" {
			if m = msg(n); m != "" {
				return 0, fmt.Sprintf("%q: %s", s, m)
			}
		}
		return T(n), m
	}
}

func parseLinger(s string) (sockopt.Linger, string) {
	l, err := sockopt.ParseLinger(s)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), fmt.Sprintf("linger %q: ", s))
		return sockopt.Linger{}, fmt.Sprintf("%q: %s", s, msg)
	}
	return l, ""
}

// parseMode parses a file mode written in octal, as for chmod: "0660" or
// "660".
func parseMode(s string) (os.FileMode, string) {
	if s == "" || strings.Trim(s, "01234567") != "" {
		return 0, fmt.Sprintf("%q is not an octal file mode; want one such as 0660", s)
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > uint64(os.ModePerm) {
		return 0, fmt.Sprintf("%q: want 0 to 0777", s)
	}
	return os.FileMode(n), ""
}

// parseIP parses an IP address; "" is the zero Addr.
func parseIP(s string) (netip.Addr, string) {
	if s == "" {
		return netip.Addr{}, ""
	}
	a, err := netip.ParseAddr(s)
	if err == nil {
		return a, ""
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		if _, err := netip.ParseAddr(host); err == nil {
			return netip.Addr{}, fmt.Sprintf("%q: want an IP address without a port (set ports with dial.source_ports)", s)
		}
	}
	return netip.Addr{}, fmt.Sprintf("%q is not an IP address; want one such as 10.0.0.5 or 2001:db8::5", s)
}

// parsePortRange parses "lo-hi"; "" is the zero PortRange.
func parsePortRange(s string) (PortRange, string) {
	if s == "" {
		return PortRange{}, ""
	}
	los, his, ok := strings.Cut(s, "-")
	lo, okLo := parsePort(los)
	hi, okHi := parsePort(his)
	switch {
	case !ok || okLo < 0 || okHi < 0:
		return PortRange{}, fmt.Sprintf("%q: want a port range such as 20000-29999", s)
	case okLo == 0 || okHi == 0:
		return PortRange{}, fmt.Sprintf("%q: port out of range (want 1-65535)", s)
	}
	r := PortRange{Lo: lo, Hi: hi}
	if msg := r.check(); msg != "" {
		return PortRange{}, fmt.Sprintf("%q: %s", s, msg)
	}
	return r, ""
}

// parsePort parses one port of a range. ok is -1 if s is not a number, 0
// if it is one out of range, 1 if it is good.
func parsePort(s string) (port uint16, ok int) {
	s = strings.TrimSpace(s)
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, -1
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, 0
	}
	return uint16(n), 1
}
