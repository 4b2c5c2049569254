package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	Key    string // full key, such as upstreams.backend.pool.max_conns; a file name for file-level problems
	Msg    string // what is wrong, quoting the bad value
	Source string // where the value came from, such as config.yaml:12, env UNSTUCK_LOG_LEVEL or flag --log-level; may be empty
}

func (p Problem) String() string {
	s := p.Msg
	if p.Key != "" {
		s = p.Key + ": " + s
	}
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

func (ps *Problems) add(key, format string, args ...any) {
	*ps = append(*ps, Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// err returns ps sorted as an error, or nil if there are none.
func (ps Problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.Key, b.Key), strings.Compare(a.Msg, b.Msg))
	})
	return ps
}

// AsProblems returns the problems in err: all of them if err is a Problems,
// else one Problem holding err's text.
func AsProblems(err error) Problems {
	var ps Problems
	if errors.As(err, &ps) {
		return ps
	}
	return Problems{{Msg: err.Error()}}
}

// Validate checks the values of c, which Load has already done. It is for
// configurations built in code. The error, if any, is a Problems.
func (c *Config) Validate() error {
	return c.problems(func(string) bool { return false }).err()
}

// checkFields checks each value of fields in the struct v against the
// schema's tags, unless reported says its key was reported already.
func checkFields(ps *Problems, v reflect.Value, prefix string, fields []field, reported func(string) bool) {
	for _, f := range fields {
		fv := v.FieldByIndex(f.index)
		if m := f.check(fv); m != "" && !reported(prefix+f.key) {
			ps.add(prefix+f.key, "%q: %s", f.format(fv), m)
		}
	}
}

// problems checks every value in c and the references between them. A
// check that compares a key with another skips it if reported(other).
func (c *Config) problems(reported func(key string) bool) Problems {
	var ps Problems
	checkFields(&ps, reflect.ValueOf(c).Elem(), "", topFields, reported)
	upstreams := slices.Sorted(maps.Keys(c.Upstreams))
	if len(c.Listeners) == 0 {
		ps.add("listeners", "none defined; want at least one listener")
	}
	if len(upstreams) == 0 {
		ps.add("upstreams", "none defined; want at least one upstream")
	}

	var seen []listenAddr
	conflict := func(key string, a listenAddr) bool {
		for _, b := range seen {
			if a.overlaps(b) {
				ps.add(key, "%q: conflicts with %s (%q)", a.text, b.key, b.text)
				return true
			}
		}
		return false
	}
	for _, name := range slices.Sorted(maps.Keys(c.Listeners)) {
		l, p := c.Listeners[name], "listeners."+name+"."
		checkFields(&ps, reflect.ValueOf(&l).Elem(), p, listenerFields, reported)
		if l.Listen == "" {
			ps.add(p+"listen", "missing; want host:port or unix:/path")
		} else if addr, msg := parseListen(p+"listen", l.Listen); msg != "" {
			ps.add(p+"listen", "%q: %s", l.Listen, msg)
		} else if !conflict(p+"listen", addr) {
			seen = append(seen, addr)
		}
		switch _, ok := c.Upstreams[l.Upstream]; {
		case l.Upstream == "" && len(upstreams) > 0:
			ps.add(p+"upstream", "missing; want one of: %s", strings.Join(upstreams, ", "))
		case l.Upstream == "":
			ps.add(p+"upstream", "missing; want the name of an upstream")
		case !ok:
			ps.add(p+"upstream", "%q names no upstream (have: %s)", l.Upstream, cmp.Or(strings.Join(upstreams, ", "), "none"))
		}
		checkKeepalive(&ps, p+"keepalive.", l.Keepalive, reported)
	}

	if a := c.Admin.Listen; strings.HasPrefix(a, "unix:") {
		ps.add("admin.listen", "%q: unix sockets are not supported for admin.listen; want host:port", a)
	} else if addr, msg := parseListen("admin.listen", a); a != "" && msg != "" {
		ps.add("admin.listen", "%q: %s", a, msg)
	} else if a != "" {
		conflict("admin.listen", addr)
	}

	for _, name := range upstreams {
		u, p := c.Upstreams[name], "upstreams."+name+"."
		checkFields(&ps, reflect.ValueOf(&u).Elem(), p, upstreamFields, reported)
		if len(u.Endpoints) == 0 {
			ps.add(p+"endpoints", "empty; want at least one host:port")
		}
		for i, e := range u.Endpoints {
			key := fmt.Sprintf("%sendpoints[%d]", p, i)
			if msg := checkEndpoint(e); msg != "" {
				ps.add(key, "%q: %s", e, msg)
			} else if j := slices.Index(u.Endpoints[:i], e); j >= 0 {
				ps.add(key, "%q: same as endpoints[%d]", e, j)
			}
		}
		if strings.ContainsFunc(u.HostHeader, badHostRune) {
			ps.add(p+"host_header", "%q: not a host; want a name such as example.com or example.com:8080", u.HostHeader)
		}
		if pl := u.Pool; pl.MaxIdle > pl.MaxConns && pl.MaxConns >= 1 && !reported(p+"pool.max_conns") && !reported(p+"pool.max_idle") {
			ps.add(p+"pool.max_idle", "%q: more than pool.max_conns (%d)", strconv.Itoa(pl.MaxIdle), pl.MaxConns)
		}
		if r := u.Dial.SourcePorts; r != (PortRange{}) && r.check() == "" && !u.Dial.Source.IsValid() && !reported(p+"dial.source") {
			ps.add(p+"dial.source_ports", "%q: dial.source_ports needs dial.source", r.String())
		}
		checkKeepalive(&ps, p+"dial.keepalive.", u.Dial.Keepalive, reported)
	}
	return ps
}

// checkKeepalive checks what keepalive on (idle not 0s) needs beyond each
// value's own range.
func checkKeepalive(ps *Problems, p string, k Keepalive, reported func(key string) bool) {
	if k.Idle <= 0 || reported(p+"idle") {
		return
	}
	if k.Interval == 0 && !reported(p+"interval") {
		ps.add(p+"interval", "%q: must be more than 0 while keepalive is on (idle is not 0s)", fmt.Sprint(k.Interval))
	}
	if k.Count == 0 && !reported(p+"count") {
		ps.add(p+"count", "%q: want at least 1 while keepalive is on (idle is not 0s)", "0")
	}
}

// listenAddr is a parsed listener address.
type listenAddr struct {
	key, text string // the key and the address as configured
	unix      string // cleaned socket path, for unix:/path
	host      string // lower case, without brackets
	port      int
}

// overlaps reports whether a and b cannot both be bound at once.
func (a listenAddr) overlaps(b listenAddr) bool {
	if a.unix != "" || b.unix != "" {
		return a.unix == b.unix
	}
	if a.port != b.port || a.port == 0 {
		return false // port 0 picks a free port each time
	}
	return a.host == b.host || covers(a.host, b.host) || covers(b.host, a.host)
}

// covers reports whether binding the wildcard w takes host h's port too.
func covers(w, h string) bool {
	ip := net.ParseIP(h)
	return w == "" || w == "::" || w == "0.0.0.0" && ip != nil && ip.To4() != nil
}

// parseListen parses the listener address s of key, "host:port" or
// "unix:/path". The message is empty when s is good.
func parseListen(key, s string) (listenAddr, string) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok && path == "" {
		return listenAddr{}, "empty unix socket path"
	} else if ok {
		return listenAddr{key: key, text: s, unix: filepath.Clean(path)}, ""
	}
	host, port, msg := splitHostPort(s)
	return listenAddr{key: key, text: s, host: strings.ToLower(host), port: port}, msg
}

// checkEndpoint checks an upstream "host:port". The message is empty when
// s is good.
func checkEndpoint(s string) string {
	host, port, msg := splitHostPort(s)
	switch {
	case strings.HasPrefix(s, "unix:"):
		return "unix sockets are not supported for upstreams; want host:port"
	case msg != "":
		return msg
	case host == "":
		return "missing host"
	case port == 0:
		return "port out of range (want 1-65535)"
	}
	return ""
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
	case errors.As(err, &ae):
		return "", 0, strings.TrimSuffix(ae.Err, " in address")
	case err != nil:
		return "", 0, err.Error()
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
