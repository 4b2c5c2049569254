package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/viper"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	Key    string // full key, such as upstreams.backend.pool.max_conns; a file name for file-level problems
	Msg    string // what is wrong, quoting the bad value
	Source string // where the value came from, such as config.yaml:12, env UNSTUCK_LOG_LEVEL or flag --log-level; may be empty
}

func (p Problem) String() string {
	s := strings.TrimPrefix(p.Key+": "+p.Msg, ": ") // without a key, the message alone
	if p.Source != "" {
		s += " (" + p.Source + ")"
	}
	return s
}

// Problems is every problem found in a configuration, sorted by key. It is
// the error Load and Config.Validate return.
type Problems []Problem

// Error returns one problem per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// err returns ps sorted as an error, or nil if there are none.
func (ps Problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	slices.SortStableFunc(ps, func(a, b Problem) int { return cmp.Or(strings.Compare(a.Key, b.Key), strings.Compare(a.Msg, b.Msg)) })
	return ps
}

// AsProblems returns the problems in err: all of them if err is a Problems,
// else one Problem holding err's text.
func AsProblems(err error) Problems {
	if ps := Problems(nil); errors.As(err, &ps) {
		return ps
	}
	return Problems{{Msg: err.Error()}}
}

// Validate checks the values of c, which Load has already done. It is for
// configurations built in code. The error, if any, is a Problems.
func (c *Config) Validate() error {
	t := &tree{layers: viper.New()} // no values as written: messages quote them as built
	t.check(c)
	return t.probs.err()
}

// check checks each value in c against the schema's tags, and the values
// against each other.
func (t *tree) check(c *Config) {
	t.checkFields(reflect.ValueOf(c).Elem(), "", topFields)
	upstreams := slices.Sorted(maps.Keys(c.Upstreams))
	if len(c.Listeners) == 0 {
		t.add("listeners", "none defined; want at least one listener")
	}
	// A capture listener needs no upstream; any other does.
	if len(upstreams) == 0 && (len(c.Listeners) == 0 || slices.ContainsFunc(slices.Collect(maps.Values(c.Listeners)), func(l Listener) bool { return !l.Capture })) {
		t.add("upstreams", "none defined; want at least one upstream")
	}

	var seen []listenAddr
	listen := func(key, s string) {
		a, msg := parseListen(key, s)
		if i := slices.IndexFunc(seen, a.overlaps); msg == "" && i >= 0 {
			msg = fmt.Sprintf("conflicts with %s (%q)", seen[i].key, seen[i].text)
		}
		if msg != "" {
			t.add(key, "%q: %s", s, msg)
		} else {
			seen = append(seen, a)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Listeners)) {
		l, p := c.Listeners[name], "listeners."+name+"."
		t.checkFields(reflect.ValueOf(l), p, listenerFields)
		if l.Listen == "" {
			t.add(p+"listen", "missing; want host:port or unix:/path")
		} else {
			listen(p+"listen", l.Listen)
		}
		if l.Capture && strings.HasPrefix(l.Listen, "unix:") {
			t.add(p+"listen", "%q: a capture listener takes redirected TCP connections; want host:port", l.Listen)
		}
		switch _, ok := c.Upstreams[l.Upstream]; {
		case l.Capture && l.Upstream != "":
			t.add(p+"upstream", "%q: a capture listener forwards each connection to its original destination and takes no upstream (an upstream whose endpoints include a destination lends it its settings)", l.Upstream)
		case l.Capture:
		case l.Upstream == "" && len(upstreams) > 0:
			t.add(p+"upstream", "missing; want one of: %s", strings.Join(upstreams, ", "))
		case l.Upstream == "":
			t.add(p+"upstream", "missing; want the name of an upstream")
		case !ok:
			t.add(p+"upstream", "%q names no upstream (have: %s)", l.Upstream, cmp.Or(strings.Join(upstreams, ", "), "none"))
		}
		t.checkKeepalive(p+"keepalive.", l.Keepalive)
		// A tcp pair keeps its upstream connection for good; an http
		// listener's pool hands its connections back: one pool cannot do both.
		for _, other := range slices.Sorted(maps.Keys(c.Listeners)) {
			if o := c.Listeners[other]; other < name && o.Upstream == l.Upstream && l.Upstream != "" && o.Protocol != l.Protocol && !o.Capture && !l.Capture {
				t.add(p+"upstream", "%q is also the upstream of listener %s, whose protocol is %s; an upstream serves http listeners or tcp listeners, not both", l.Upstream, other, o.Protocol)
			}
		}
	}
	t.checkCapture(c)
	if a := c.Admin.Listen; strings.HasPrefix(a, "unix:") {
		t.add("admin.listen", "%q: unix sockets are not supported for admin.listen; want host:port", a)
	} else if a != "" {
		listen("admin.listen", a)
	}
	// The debug listener shows upstream addresses and, with pprof, the
	// process's memory: never on an address another host can reach.
	if a := c.Admin.DebugListen; strings.HasPrefix(a, "unix:") {
		t.add("admin.debug_listen", "%q: unix sockets are not supported for admin.debug_listen; want a loopback host:port such as 127.0.0.1:9902", a)
	} else if host, _, msg := splitHostPort(a); a != "" && msg == "" && !isLoopback(host) {
		t.add("admin.debug_listen", "%q: want a loopback address such as 127.0.0.1:9902 or [::1]:9902; /debug/pool and pprof are not for the network (use kubectl port-forward)", a)
	} else if a != "" {
		listen("admin.debug_listen", a)
	}

	for _, name := range upstreams {
		u, p := c.Upstreams[name], "upstreams."+name+"."
		t.checkFields(reflect.ValueOf(u), p, upstreamFields)
		if len(u.Endpoints) == 0 {
			t.add(p+"endpoints", "empty; want at least one host:port")
		}
		for i, e := range u.Endpoints {
			host, port, msg := splitHostPort(e)
			switch j := slices.Index(u.Endpoints[:i], e); {
			case strings.HasPrefix(e, "unix:"):
				msg = "unix sockets are not supported for upstreams; want host:port"
			case msg != "":
			case host == "":
				msg = "missing host"
			case port == 0:
				msg = "port out of range (want 1-65535)"
			case j >= 0:
				msg = fmt.Sprintf("same as endpoints[%d]", j)
			}
			if msg != "" {
				t.add(fmt.Sprintf("%sendpoints[%d]", p, i), "%q: %s", e, msg)
			}
		}
		if strings.ContainsFunc(u.HostHeader, badHostRune) {
			t.add(p+"host_header", "%q: not a host; want a name such as example.com or example.com:8080", u.HostHeader)
		}
		if pl := u.Pool; pl.MaxIdle > pl.MaxConns && pl.MaxConns >= 1 && !t.isBad(p+"pool.max_conns") {
			t.add(p+"pool.max_idle", "%s: more than pool.max_conns (%d)", t.quote(p+"pool.max_idle", strconv.Itoa(pl.MaxIdle)), pl.MaxConns)
		}
		if pl := u.Pool; pl.MinIdle > pl.MaxIdle && pl.MaxIdle >= 0 {
			t.add(p+"pool.min_idle", "%s: more than pool.max_idle (%d)", t.quote(p+"pool.min_idle", strconv.Itoa(pl.MinIdle)), pl.MaxIdle)
		}
		t.checkTLS(p+"tls.", u.TLS)
		if r := u.Dial.SourcePorts; r.Lo != 0 && r.Lo <= r.Hi && !u.Dial.Source.IsValid() && !t.isBad(p+"dial.source") {
			t.add(p+"dial.source_ports", "%s: dial.source_ports needs dial.source", t.quote(p+"dial.source_ports", r.String()))
		}
		t.checkKeepalive(p+"dial.keepalive.", u.Dial.Keepalive)
	}
}

// checkFields checks each value of fields in the struct v against its tags.
func (t *tree) checkFields(v reflect.Value, prefix string, fields []field) {
	for _, f := range fields {
		fv := v.FieldByIndex(f.index)
		if m := f.check(fv); m != "" {
			t.add(prefix+f.key, "%s: %s", t.quote(prefix+f.key, f.format(fv)), m)
		}
	}
}

// checkTLS checks what the tls keys need of each other. The files are read
// where the TLS configuration is built (tlsclient), at start, reload and
// unstuck check.
func (t *tree) checkTLS(p string, c TLS) {
	if c.CertFile == "" && c.KeyFile != "" {
		t.add(p+"cert_file", "missing; key_file needs the certificate it is the key of")
	}
	if c.CertFile != "" && c.KeyFile == "" {
		t.add(p+"key_file", "missing; cert_file needs its private key")
	}
	for key, set := range map[string]bool{"server_name": c.ServerName != "", "ca_file": c.CAFile != "",
		"cert_file": c.CertFile != "", "insecure_skip_verify": c.InsecureSkipVerify, "alpn": len(c.ALPN) > 0} {
		if set && !c.Enabled {
			t.add(p+"enabled", "false, but tls.%s is set; set tls.enabled: true to use TLS", key)
			return
		}
	}
}

// checkKeepalive checks what keepalive on (idle not 0s) needs beyond each
// value's own range.
func (t *tree) checkKeepalive(p string, k Keepalive) {
	on := k.Idle > 0 && !t.isBad(p+"idle") // a bad idle is not taken as on
	if on && k.Interval == 0 {
		t.add(p+"interval", "%s: must be more than 0 while keepalive is on (idle is not 0s)", t.quote(p+"interval", "0s"))
	}
	if on && k.Count == 0 {
		t.add(p+"count", "%s: want at least 1 while keepalive is on (idle is not 0s)", t.quote(p+"count", "0"))
	}
}

// listenAddr is a parsed listener address.
type listenAddr struct {
	key, text string // the key and the address as configured
	host      string // lower case, without brackets; for unix:/path, unix: and the cleaned path
	port      int    // -1 for unix:/path
}

// overlaps reports whether a and b cannot both be bound at once. Port 0
// picks a free port each time.
func (a listenAddr) overlaps(b listenAddr) bool {
	return a.port == b.port && a.port != 0 && (a.host == b.host || covers(a.host, b.host) || covers(b.host, a.host))
}

// covers reports whether binding the wildcard w takes host h's port too.
func covers(w, h string) bool {
	return w == "" || w == "::" || w == "0.0.0.0" && net.ParseIP(h).To4() != nil
}

// parseListen parses the listener address s of key, "host:port" or
// "unix:/path". The message is empty when s is good.
func parseListen(key, s string) (listenAddr, string) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok && path == "" {
		return listenAddr{}, "empty unix socket path"
	} else if ok {
		return listenAddr{key: key, text: s, host: "unix:" + filepath.Clean(path), port: -1}, ""
	}
	host, port, msg := splitHostPort(s)
	return listenAddr{key: key, text: s, host: strings.ToLower(host), port: port}, msg
}

// isLoopback reports whether host names this machine only: localhost or a
// loopback IP.
func isLoopback(host string) bool {
	ip, err := netip.ParseAddr(host)
	return strings.EqualFold(host, "localhost") || err == nil && ip.Unmap().IsLoopback()
}

func badHostRune(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }

// splitHostPort splits "host:port" and checks both halves, with a short
// message for each way it can be wrong.
func splitHostPort(s string) (host string, port int, msg string) {
	host, ps, err := net.SplitHostPort(s)
	var ae *net.AddrError
	switch {
	case errors.As(err, &ae) && ae.Err == "too many colons in address":
		return "", 0, "too many colons; write an IPv6 address in brackets, as [::1]:8080"
	case errors.As(err, &ae): // the only kind of error SplitHostPort returns
		return "", 0, strings.TrimSuffix(ae.Err, " in address")
	case strings.ContainsFunc(host, badHostRune):
		return "", 0, fmt.Sprintf("bad host %q", host)
	case ps == "":
		return "", 0, "missing port"
	}
	n, err := strconv.Atoi(ps)
	switch {
	case err != nil && strings.Trim(ps, "0123456789") != "":
		return "", 0, fmt.Sprintf("port %q is not a number", ps)
	case err != nil || n < 0 || n > 65535:
		return "", 0, "port out of range"
	}
	return host, n, ""
}
