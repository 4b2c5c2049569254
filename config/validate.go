package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
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

func (ps Problems) sort() {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.Msg, b.Msg)
	})
}

// err returns ps sorted as an error, or nil if there are none.
func (ps Problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	ps.sort()
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

var (
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"console", "json"}
)

// problems checks every value in c and the references between them. A
// check that compares a key with another skips it if reported(other).
func (c *Config) problems(reported func(key string) bool) Problems {
	var ps Problems
	if !slices.Contains(logLevels, c.Log.Level) {
		ps.add("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	if !slices.Contains(logFormats, c.Log.Format) {
		ps.add("log.format", "%q: want console or json", c.Log.Format)
	}

	upstreams := slices.Sorted(maps.Keys(c.Upstreams))
	if len(c.Listeners) == 0 {
		ps.add("listeners", "none defined; want at least one listener")
	}
	if len(upstreams) == 0 {
		ps.add("upstreams", "none defined; want at least one upstream")
	}

	type bound struct {
		name string
		addr listenAddr
	}
	var seen []bound
	for _, name := range slices.Sorted(maps.Keys(c.Listeners)) {
		l := c.Listeners[name]
		p := "listeners." + name + "."
		if l.Listen == "" {
			ps.add(p+"listen", "missing; want host:port or unix:/path")
		} else if addr, msg := parseListen(l.Listen); msg != "" {
			ps.add(p+"listen", "%q: %s", l.Listen, msg)
		} else {
			for _, b := range seen {
				if addr.overlaps(b.addr) {
					ps.add(p+"listen", "%q: conflicts with listeners.%s.listen (%q)", l.Listen, b.name, b.addr.text)
					break
				}
			}
			seen = append(seen, bound{name, addr})
		}
		if l.Protocol != "http" {
			ps.add(p+"protocol", "%q: want http", l.Protocol)
		}
		switch _, ok := c.Upstreams[l.Upstream]; {
		case l.Upstream == "" && len(upstreams) > 0:
			ps.add(p+"upstream", "missing; want one of: %s", strings.Join(upstreams, ", "))
		case l.Upstream == "":
			ps.add(p+"upstream", "missing; want the name of an upstream")
		case !ok:
			have := strings.Join(upstreams, ", ")
			if have == "" {
				have = "none"
			}
			ps.add(p+"upstream", "%q names no upstream (have: %s)", l.Upstream, have)
		}
		nonNegative(&ps, p+"idle_timeout", l.IdleTimeout)
		nonNegative(&ps, p+"idle_release_after", l.IdleReleaseAfter)
		check(&ps, p+"app_fin_timeout", l.AppFinTimeout, positive)
		if l.SocketMode&^os.ModePerm != 0 {
			ps.add(p+"socket_mode", "%q: want 0 to 0777", fmt.Sprintf("0%o", uint32(l.SocketMode)))
		}
		checkKeepalive(&ps, p+"keepalive.", l.Keepalive, reported)
		check(&ps, p+"user_timeout", l.UserTimeout, userTimeout)
		nonNegative(&ps, p+"read_header_timeout", l.ReadHeaderTimeout)
		nonNegative(&ps, p+"body_read_timeout", l.BodyReadTimeout)
		nonNegative(&ps, p+"send_timeout", l.SendTimeout)
		checkSize(&ps, p+"limits.request_header_bytes", int64(l.Limits.RequestHeaderBytes), headerBytes)
		checkSize(&ps, p+"limits.request_body_bytes", l.Limits.RequestBodyBytes, func(int64) string { return "" })
		if l.Limits.MaxConns < 0 {
			ps.add(p+"limits.max_conns", "%q: must not be negative", strconv.Itoa(l.Limits.MaxConns))
		}
	}

	if a := c.Admin.Listen; a != "" {
		if strings.HasPrefix(a, "unix:") {
			ps.add("admin.listen", "%q: unix sockets are not supported for admin.listen; want host:port", a)
		} else if addr, msg := parseListen(a); msg != "" {
			ps.add("admin.listen", "%q: %s", a, msg)
		} else {
			for _, b := range seen {
				if addr.overlaps(b.addr) {
					ps.add("admin.listen", "%q: conflicts with listeners.%s.listen (%q)", a, b.name, b.addr.text)
					break
				}
			}
		}
	}
	check(&ps, "shutdown_timeout", c.ShutdownTimeout, positive)
	nonNegative(&ps, "release_memory_after_idle", c.ReleaseMemoryAfterIdle)

	for _, name := range upstreams {
		u := c.Upstreams[name]
		p := "upstreams." + name + "."
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
		if u.Retries < 0 {
			ps.add(p+"retries", "%q: must not be negative", strconv.Itoa(u.Retries))
		}
		if strings.ContainsFunc(u.HostHeader, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }) {
			ps.add(p+"host_header", "%q: not a host; want a name such as example.com or example.com:8080", u.HostHeader)
		}
		pl := u.Pool
		if pl.MaxConns < 1 {
			ps.add(p+"pool.max_conns", "%q: want at least 1", strconv.Itoa(pl.MaxConns))
		}
		switch {
		case pl.MaxIdle < 0:
			ps.add(p+"pool.max_idle", "%q: must not be negative", strconv.Itoa(pl.MaxIdle))
		case pl.MaxIdle > pl.MaxConns && pl.MaxConns >= 1 && !reported(p+"pool.max_conns"):
			ps.add(p+"pool.max_idle", "%q: more than pool.max_conns (%d)", strconv.Itoa(pl.MaxIdle), pl.MaxConns)
		}
		if pl.MaxRequests < 0 {
			ps.add(p+"pool.max_requests", "%q: must not be negative", strconv.Itoa(pl.MaxRequests))
		}
		nonNegative(&ps, p+"pool.idle_timeout", pl.IdleTimeout)
		nonNegative(&ps, p+"pool.max_lifetime", pl.MaxLifetime)
		nonNegative(&ps, p+"pool.acquire_timeout", pl.AcquireTimeout)
		nonNegative(&ps, p+"dial.timeout", u.Dial.Timeout)
		if r := u.Dial.SourcePorts; r != (PortRange{}) {
			if msg := r.check(); msg != "" {
				ps.add(p+"dial.source_ports", "%q: %s", r.String(), msg)
			} else if !u.Dial.Source.IsValid() && !reported(p+"dial.source") {
				ps.add(p+"dial.source_ports", "%q: dial.source_ports needs dial.source", r.String())
			}
		}
		checkKeepalive(&ps, p+"dial.keepalive.", u.Dial.Keepalive, reported)
		check(&ps, p+"dial.user_timeout", u.Dial.UserTimeout, userTimeout)
		nonNegative(&ps, p+"timeouts.response_header", u.Timeouts.ResponseHeader)
		nonNegative(&ps, p+"timeouts.response_idle", u.Timeouts.ResponseIdle)
		nonNegative(&ps, p+"timeouts.write", u.Timeouts.Write)
		checkSize(&ps, p+"limits.response_header_bytes", int64(u.Limits.ResponseHeaderBytes), headerBytes)
	}
	return ps
}

func nonNegative[D ~int64](ps *Problems, key string, d D) {
	if d < 0 {
		ps.add(key, "%q: must not be negative", fmt.Sprint(d))
	}
}

// check reports what msg finds wrong with the duration d of key. Load
// runs the same msg on the text as written (see durationThat), so that
// from Load this catches only what that let through.
func check(ps *Problems, key string, d time.Duration, msg func(time.Duration) string) {
	if m := msg(d); m != "" {
		ps.add(key, "%q: %s", fmt.Sprint(d), m)
	}
}

// checkSize reports what msg finds wrong with the size n of key, and a
// negative n. As with check, from Load it catches only what parseSize and
// sizeThat let through.
func checkSize(ps *Problems, key string, n int64, msg func(int64) string) {
	m := msg(n)
	if n < 0 {
		m = "must not be negative"
	}
	if m != "" {
		ps.add(key, "%q: %s", formatSize(n), m)
	}
}

// formatSize writes n as a configuration would: with the largest unit that
// divides it, else in bytes.
func formatSize(n int64) string {
	for i := len(sizeUnits) - 1; i >= 0; i-- {
		if u := sizeUnits[i]; n != 0 && n%u.n == 0 {
			return strconv.FormatInt(n/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// maxHeaderBytes bounds header limits, which size a buffer per connection:
// more is surely a typo, and this fits an int everywhere.
const maxHeaderBytes = 1 << 30

// headerBytes says what is wrong with a header size limit.
func headerBytes(n int64) string {
	switch {
	case n < MinHeaderBytes:
		return fmt.Sprintf("want at least %d (4KiB)", MinHeaderBytes)
	case n > maxHeaderBytes:
		return "want at most 1GiB"
	}
	return ""
}

// positive says what is wrong with a duration that must be more than 0.
func positive(d time.Duration) string {
	if d <= 0 {
		return "must be more than 0"
	}
	return ""
}

// Kernel limits on TCP keepalive (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL,
// MAX_TCP_KEEPCNT) and on TCP_USER_TIMEOUT (a non-negative C int of ms).
const (
	maxKeepaliveTime  = 32767 * time.Second
	maxKeepaliveCount = 127
	maxUserTimeout    = math.MaxInt32 * time.Millisecond
)

// keepaliveTime says what is wrong with a keepalive idle time or interval.
func keepaliveTime(d time.Duration) string {
	switch {
	case d < 0:
		return "must not be negative"
	case d%time.Second != 0:
		return "want whole seconds, at least 1s (the kernel counts keepalive times in seconds)"
	case d > maxKeepaliveTime:
		return fmt.Sprintf("want at most %s (the kernel's limit)", maxKeepaliveTime)
	}
	return ""
}

// userTimeout says what is wrong with a TCP_USER_TIMEOUT.
func userTimeout(d time.Duration) string {
	switch {
	case d < 0:
		return "must not be negative"
	case d%time.Millisecond != 0:
		return "want whole milliseconds (the kernel counts TCP_USER_TIMEOUT in milliseconds)"
	case d > maxUserTimeout:
		return fmt.Sprintf("want at most %s (the kernel's limit for TCP_USER_TIMEOUT)", maxUserTimeout)
	}
	return ""
}

// checkKeepalive checks the keepalive settings under prefix p. With idle
// 0s keepalive is off, and interval and count need only be in range.
func checkKeepalive(ps *Problems, p string, k Keepalive, reported func(key string) bool) {
	check(ps, p+"idle", k.Idle, keepaliveTime)
	check(ps, p+"interval", k.Interval, keepaliveTime)
	on := k.Idle > 0 && !reported(p+"idle")
	if on && k.Interval == 0 {
		ps.add(p+"interval", "%q: must be more than 0 while keepalive is on (idle is not 0s)", fmt.Sprint(k.Interval))
	}
	switch n := strconv.Itoa(k.Count); {
	case k.Count < 0:
		ps.add(p+"count", "%q: must not be negative", n)
	case k.Count > maxKeepaliveCount:
		ps.add(p+"count", "%q: want at most %d (the kernel's limit for TCP_KEEPCNT)", n, maxKeepaliveCount)
	case on && k.Count < 1:
		ps.add(p+"count", "%q: want at least 1 while keepalive is on (idle is not 0s)", n)
	}
}

// check checks a range that is not the zero PortRange. The message is
// empty when r is good.
func (r PortRange) check() string {
	switch {
	case r.Lo == 0 || r.Hi == 0:
		return "port out of range (want 1-65535)"
	case r.Lo > r.Hi:
		return "the first port is more than the last"
	}
	return ""
}

// listenAddr is a parsed listener address.
type listenAddr struct {
	text string // as configured
	unix string // cleaned socket path, for unix:/path
	host string // lower case, without brackets
	port int
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
	switch w {
	case "", "::":
		return true
	case "0.0.0.0":
		ip := net.ParseIP(h)
		return ip != nil && ip.To4() != nil
	}
	return false
}

// parseListen parses a listener address, "host:port" or "unix:/path". The
// message is empty when s is good.
func parseListen(s string) (listenAddr, string) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return listenAddr{}, "empty unix socket path"
		}
		return listenAddr{text: s, unix: filepath.Clean(path)}, ""
	}
	host, port, msg := splitHostPort(s)
	if msg != "" {
		return listenAddr{}, msg
	}
	return listenAddr{text: s, host: strings.ToLower(host), port: port}, ""
}

// checkEndpoint checks an upstream "host:port". The message is empty when
// s is good.
func checkEndpoint(s string) string {
	if strings.HasPrefix(s, "unix:") {
		return "unix sockets are not supported for upstreams; want host:port"
	}
	host, port, msg := splitHostPort(s)
	switch {
	case msg != "":
		return msg
	case host == "":
		return "missing host"
	case port == 0:
		return "port out of range (want 1-65535)"
	}
	return ""
}

// splitHostPort splits "host:port" and checks both halves, with a short
// message for each way it can be wrong.
func splitHostPort(s string) (host string, port int, msg string) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			msg = strings.TrimSuffix(ae.Err, " in address")
			if msg == "too many colons" {
				msg += "; write an IPv6 address in brackets, as [::1]:8080"
			}
			return "", 0, msg
		}
		return "", 0, err.Error()
	}
	if strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }) {
		return "", 0, fmt.Sprintf("bad host %q", host)
	}
	if ps == "" {
		return "", 0, "missing port"
	}
	n, err := strconv.Atoi(ps)
	if err != nil {
		if strings.Trim(ps, "0123456789") == "" {
			return "", 0, "port out of range"
		}
		return "", 0, fmt.Sprintf("port %q is not a number", ps)
	}
	if n < 0 || n > 65535 {
		return "", 0, "port out of range"
	}
	return host, n, ""
}
