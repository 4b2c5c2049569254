// Package config turns unstuck's configuration file, environment and flags
// into typed values. It is the only package besides cmd/unstuck that knows
// about viper; everything else takes a *Config or one of its parts.
//
// A zero duration in a Listener or Upstream means "no limit" or "off" (see
// each field); Load never produces a negative one.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Config is the validated configuration of one unstuck process.
type Config struct {
	Log             Log
	Admin           Admin
	ShutdownTimeout time.Duration // on SIGTERM, let in-flight requests finish for this long; more than 0

	// ReleaseMemoryAfterIdle: when no request has come for this long,
	// return the memory Go has freed to the OS, again at doubling
	// intervals while idle; 0: leave it to Go's runtime.
	ReleaseMemoryAfterIdle time.Duration
	Listeners              map[string]Listener // by name; Listener.Name is the key
	Upstreams              map[string]Upstream // by name; Upstream.Name is the key

	// File is the YAML file this configuration was read from, for the
	// reload watcher; empty for the built-in default and dev mode.
	File string
}

// Log configures the process logger.
type Log struct {
	Level  string // debug, info, warn or error
	Format string // console or json
	Access bool   // one line per request (method, path, status, bytes, duration, endpoint, reused, retries)
}

// Admin configures the admin listener.
type Admin struct {
	Listen string // "host:port"; empty: no admin listener
}

// Listener is where unstuck accepts connections from the app.
type Listener struct {
	Name        string        // the key under listeners
	Listen      string        // "host:port" or "unix:/path"
	Protocol    string        // only "http" for now
	Upstream    string        // the name of an entry in Config.Upstreams
	IdleTimeout time.Duration // close an idle app connection after this; 0: never

	// IdleReleaseAfter: an app connection that has waited this long for
	// its next request gives up its goroutine and buffers until the app
	// sends again; 0: never.
	IdleReleaseAfter time.Duration
	Linger           sockopt.Linger // how unstuck closes app connections

	// AppFinTimeout is how long unstuck waits for the app's FIN after
	// half-closing an app connection, before resetting it; more than 0.
	AppFinTimeout time.Duration
	ReusePort     bool          // set SO_REUSEPORT, so that another process can bind the same address
	SocketMode    os.FileMode   // permission bits (0 to 0777) of a unix: listener's socket file; unused for host:port
	Keepalive     Keepalive     // TCP keepalive on app connections
	UserTimeout   time.Duration // TCP_USER_TIMEOUT on app connections, whole milliseconds; 0: the kernel's default

	// ReadHeaderTimeout bounds a request from its first byte to the end of
	// its headers; 0: none. A connection idle between requests is not
	// affected.
	ReadHeaderTimeout time.Duration
	BodyReadTimeout   time.Duration // longest wait between reads of a request body; 0: none
	SendTimeout       time.Duration // a write to the app that makes no progress this long ends the connection; 0: none
	Limits            ListenerLimits
}

// ListenerLimits bounds what a listener takes from the app.
type ListenerLimits struct {
	RequestHeaderBytes int   // request line and headers; at least MinHeaderBytes
	RequestBodyBytes   int64 // a request body; 0: no limit
	MaxConns           int   // app connections open at once; 0: no limit
}

// MinHeaderBytes is the least a header limit may be: below it, ordinary
// requests and responses would be refused.
const MinHeaderBytes = 4096

// Keepalive configures TCP keepalive on a connection.
type Keepalive struct {
	Idle     time.Duration // TCP_KEEPIDLE, whole seconds; 0: keepalive off (SO_KEEPALIVE unset)
	Interval time.Duration // TCP_KEEPINTVL, whole seconds; more than 0 when Idle is
	Count    int           // TCP_KEEPCNT, 1 to 127 when Idle is more than 0
}

// PortRange is an inclusive range of ports. The zero PortRange means not
// set; any other has 1 <= Lo <= Hi.
type PortRange struct{ Lo, Hi uint16 }

// String returns r as written in the configuration, such as "20000-29999",
// or "" for the zero PortRange.
func (r PortRange) String() string {
	if r == (PortRange{}) {
		return ""
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
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
	Limits     UpstreamLimits
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
	Timeout     time.Duration // give up connecting after this long; 0: no limit
	Source      netip.Addr    // local IP to bind (with IP_BIND_ADDRESS_NO_PORT); the zero Addr: the kernel picks
	SourcePorts PortRange     // local ports to use, with Source only; zero: the kernel picks
	Keepalive   Keepalive     // TCP keepalive on upstream connections
	UserTimeout time.Duration // TCP_USER_TIMEOUT on upstream connections, whole milliseconds; 0: the kernel's default
}

// Timeouts bounds the phases of an upstream exchange.
type Timeouts struct {
	ResponseHeader time.Duration // wait this long for the response headers; 0: no limit
	ResponseIdle   time.Duration // longest wait between reads of a response body; 0: no limit
	Write          time.Duration // a write of the request that makes no progress this long fails; 0: no limit
}

// UpstreamLimits bounds what unstuck takes from an upstream.
type UpstreamLimits struct {
	ResponseHeaderBytes int // status line and headers; at least MinHeaderBytes
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
	kMode
	kIP
	kPorts
	kSize
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
	case kMode:
		return `an octal file mode such as "0660"`
	case kIP:
		return "an IP address such as 10.0.0.5"
	case kPorts:
		return "a port range such as 20000-29999"
	case kSize:
		return "a size such as 64KiB"
	default:
		return "a string"
	}
}

// field is one key of the top level (outside listeners and upstreams), a
// listener or an upstream.
type field struct {
	key   string // relative to the top level or entry; "." separates levels
	kind  kind
	def   string // the default, written as in the file
	noDef bool   // the key has no default: Load or Validate fills or demands it
	// emptyEnv: an empty environment variable sets the key to "" instead
	// of being ignored, for keys where "" means off and is not the default.
	emptyEnv bool
}

// The schema. Its defaults are the values in the repository's config.yaml;
// TestEmbeddedDefaultMatchesSchema keeps the two in step.
var (
	topFields = []field{
		{key: "log.level", kind: kString, def: "info"},
		{key: "log.format", kind: kString, def: "console"},
		{key: "log.access", kind: kBool, def: "false"},
		{key: "admin.listen", kind: kString, def: "127.0.0.1:9901", emptyEnv: true},
		{key: "shutdown_timeout", kind: kDuration, def: "10s"},
		{key: "release_memory_after_idle", kind: kDuration, def: "2s"},
	}
	listenerFields = []field{
		{key: "listen", kind: kString, noDef: true},
		{key: "protocol", kind: kString, def: "http"},
		{key: "upstream", kind: kString, noDef: true}, // the only upstream, if there is one
		{key: "idle_timeout", kind: kDuration, def: "0s"},
		{key: "idle_release_after", kind: kDuration, def: "1s"},
		{key: "linger", kind: kLinger, def: "reset"},
		{key: "app_fin_timeout", kind: kDuration, def: "5s"},
		{key: "reuse_port", kind: kBool, def: "false"},
		{key: "socket_mode", kind: kMode, def: "0660"},
		{key: "keepalive.idle", kind: kDuration, def: "30s"},
		{key: "keepalive.interval", kind: kDuration, def: "10s"},
		{key: "keepalive.count", kind: kInt, def: "3"},
		{key: "user_timeout", kind: kDuration, def: "0s"},
		{key: "read_header_timeout", kind: kDuration, def: "10s"},
		{key: "body_read_timeout", kind: kDuration, def: "60s"},
		{key: "send_timeout", kind: kDuration, def: "60s"},
		{key: "limits.request_header_bytes", kind: kSize, def: "64KiB"},
		{key: "limits.request_body_bytes", kind: kSize, def: "0"},
		{key: "limits.max_conns", kind: kInt, def: "0"},
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
		{key: "dial.source", kind: kIP, def: ""},
		{key: "dial.source_ports", kind: kPorts, def: ""},
		{key: "dial.keepalive.idle", kind: kDuration, def: "30s"},
		{key: "dial.keepalive.interval", kind: kDuration, def: "10s"},
		{key: "dial.keepalive.count", kind: kInt, def: "3"},
		{key: "dial.user_timeout", kind: kDuration, def: "0s"},
		{key: "timeouts.response_header", kind: kDuration, def: "30s"},
		{key: "timeouts.response_idle", kind: kDuration, def: "60s"},
		{key: "timeouts.write", kind: kDuration, def: "60s"},
		{key: "limits.response_header_bytes", kind: kSize, def: "64KiB"},
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
