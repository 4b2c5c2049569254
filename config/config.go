// Package config turns unstuck's configuration file, environment and flags
// into typed values. It is the only package besides cmd/unstuck that knows
// about viper; everything else takes a *Config or one of its parts.
//
// A zero duration in a Listener or Upstream means "no limit" (see each
// field); Load never produces a negative one.
package config

import (
	"time"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Config is the validated configuration of one unstuck process.
type Config struct {
	Log       Log
	Listeners map[string]Listener // by name; Listener.Name is the key
	Upstreams map[string]Upstream // by name; Upstream.Name is the key
}

// Log configures the process logger.
type Log struct {
	Level  string // debug, info, warn or error
	Format string // console or json
	Access bool   // reserved for an access log; no effect yet
}

// Listener is where unstuck accepts connections from the app.
type Listener struct {
	Name        string         // the key under listeners
	Listen      string         // "host:port" or "unix:/path"
	Protocol    string         // only "http" for now
	Upstream    string         // the name of an entry in Config.Upstreams
	IdleTimeout time.Duration  // close an idle app connection after this; 0: never
	Linger      sockopt.Linger // how unstuck closes app connections
}

// Upstream is a set of backend servers and how unstuck talks to them.
type Upstream struct {
	Name       string
	Endpoints  []string       // "host:port" each, at least one
	Linger     sockopt.Linger // how unstuck closes upstream connections
	Retries    int            // times a failed request is tried again; 0: never
	HostHeader string         // empty: keep the client's Host; else the Host sent upstream
	Pool       PoolLimits
	Dial       Dial
	Timeouts   Timeouts
}

// PoolLimits bounds the connections kept to one upstream.
type PoolLimits struct {
	MaxConns       int           // connections open at once, busy or idle; at least 1
	MaxIdle        int           // idle connections kept for reuse; at most MaxConns (Load: 128, or MaxConns if less, when left out)
	IdleTimeout    time.Duration // close a connection idle this long; 0: no limit
	MaxLifetime    time.Duration // close a connection this old; 0: no limit
	MaxRequests    int           // close a connection after this many requests; 0: no limit
	AcquireTimeout time.Duration // wait this long for a free connection; 0: no limit
}

// Dial configures new upstream connections.
type Dial struct {
	Timeout time.Duration // give up connecting after this long; 0: no limit
}

// Timeouts bounds the phases of an upstream exchange.
type Timeouts struct {
	ResponseHeader time.Duration // wait this long for the response headers; 0: no limit
}

// kind is the type of a configuration key's value.
type kind uint8

const (
	kString kind = iota
	kInt
	kBool
	kDuration
	kLinger
	kList
)

// want describes what a value of kind k looks like, for messages.
func (k kind) want() string {
	switch k {
	case kInt:
		return "an integer"
	case kBool:
		return "true or false"
	case kDuration:
		return "a duration such as 2s"
	case kLinger:
		return "graceful, reset or a duration such as 2s"
	case kList:
		return `a list such as ["127.0.0.1:9000"]`
	default:
		return "a string"
	}
}

// field is one key of the log section, a listener or an upstream.
type field struct {
	key   string // relative to the section or entry; "." separates levels
	kind  kind
	def   string // the default, written as in the file
	noDef bool   // the key has no default: Load or Validate fills or demands it
}

// The schema. Its defaults are the values in the repository's config.yaml;
// TestEmbeddedDefaultMatchesSchema keeps the two in step.
var (
	logFields = []field{
		{key: "level", kind: kString, def: "info"},
		{key: "format", kind: kString, def: "console"},
		{key: "access", kind: kBool, def: "false"},
	}
	listenerFields = []field{
		{key: "listen", kind: kString, noDef: true},
		{key: "protocol", kind: kString, def: "http"},
		{key: "upstream", kind: kString, noDef: true}, // the only upstream, if there is one
		{key: "idle_timeout", kind: kDuration, def: "0s"},
		{key: "linger", kind: kLinger, def: "reset"},
	}
	upstreamFields = []field{
		{key: "endpoints", kind: kList, noDef: true},
		{key: "linger", kind: kLinger, def: "graceful"},
		{key: "retries", kind: kInt, def: "2"},
		{key: "host_header", kind: kString, def: ""},
		{key: "pool.max_conns", kind: kInt, def: "512"},
		{key: "pool.max_idle", kind: kInt, def: "128"},
		{key: "pool.idle_timeout", kind: kDuration, def: "90s"},
		{key: "pool.max_lifetime", kind: kDuration, def: "0s"},
		{key: "pool.max_requests", kind: kInt, def: "0"},
		{key: "pool.acquire_timeout", kind: kDuration, def: "1s"},
		{key: "dial.timeout", kind: kDuration, def: "2s"},
		{key: "timeouts.response_header", kind: kDuration, def: "30s"},
	}
)

// DefaultListener returns a listener with every default filled in and no
// Name, Listen or Upstream.
func DefaultListener() Listener {
	d := defaultsDecoder("listeners.x.", listenerFields)
	l := d.listener("x")
	l.Name = ""
	return l
}

// DefaultUpstream returns an upstream with every default filled in and no
// Name or Endpoints.
func DefaultUpstream() Upstream {
	d := defaultsDecoder("upstreams.x.", upstreamFields)
	u := d.upstream("x")
	u.Name = ""
	return u
}

// defaultsDecoder decodes nothing but the defaults of fields under prefix.
func defaultsDecoder(prefix string, fields []field) *decoder {
	defs := make(map[string]string, len(fields))
	for _, f := range fields {
		if !f.noDef {
			defs[prefix+f.key] = f.def
		}
	}
	return &decoder{
		get:  func(key string) any { return defs[key] },
		defs: defs,
		bad:  map[string]bool{},
	}
}
