// Package config turns unstuck's configuration file, environment and flags
// into typed values. It is the only package that knows about viper;
// everything else takes a *Config or one of its parts.
//
// The structs below are the schema. Each field's tags say its key, its
// default (as written in the file) and a one-line doc; decoding, defaults,
// validation and the repository's config.yaml follow from them, and a test
// holds config.yaml and the README's reference to them. Adding a key is
// adding a field here and the code that uses it. The tags:
//
//	key      the key under its parent; no tag: not a key
//	default  the value when left out; no tag: none (Validate demands one)
//	doc      one line for config.yaml
//	example  the value config.yaml shows for a key without a default
//	kind     "size": an integer written as a size such as 64KiB
//	min/max  bounds, written as the value would be; kernel names the
//	         socket option whose limit max is
//	res      the resolution the kernel takes: a value that is not whole
//	         at it is refused, never rounded
//	oneof    the values allowed, case-insensitive
//	env      "empty": UNSTUCK_KEY= sets "" (other empty variables are ignored)
//
// A zero duration in a Listener or Upstream means "no limit" or "off" (see
// each field); Load never produces a negative one.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"time"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Config is the validated configuration of one unstuck process.
type Config struct {
	Log                    Log                 `key:"log"`
	Admin                  Admin               `key:"admin"`
	ShutdownTimeout        time.Duration       `key:"shutdown_timeout" default:"10s" min:"1ns" doc:"on SIGTERM or SIGINT, let in-flight requests finish for up to this long; more than 0"`
	ReleaseMemoryAfterIdle time.Duration       `key:"release_memory_after_idle" default:"2s" doc:"no request for this long: give memory Go has freed back to the OS, again after 2x, 4x... while idle; 0: leave it to Go's runtime"`
	Listeners              map[string]Listener `key:"listeners" example:"app" doc:"where unstuck accepts connections from the app, by name"`
	Upstreams              map[string]Upstream `key:"upstreams" example:"backend" doc:"the servers unstuck forwards to, by name"`
	Capture                Capture             `key:"capture" doc:"transparent capture: the rules unstuck capture installs, and the destinations of capture listeners"`

	// File is the YAML file this configuration was read from, for the
	// reload watcher; empty for the built-in default and dev mode.
	File string
}

// Log configures the process logger.
type Log struct {
	Level  string `key:"level" default:"info" oneof:"debug,info,warn,error" doc:"debug, info, warn or error"`
	Format string `key:"format" default:"console" oneof:"console,json" doc:"console for people; json for containers and log shippers"`
	Access bool   `key:"access" default:"false" doc:"one line per request: method, uri, status, response_flag, bytes each way, duration, upstream_time, endpoint, user_agent, x_request_id..."`
}

// Admin configures the admin listener (probes and metrics, fit for the
// pod IP) and the debug listener (pool internals and the profiler, on
// loopback only).
type Admin struct {
	Listen                string `key:"listen" default:"127.0.0.1:9901" env:"empty" doc:"host:port of the admin listener: /healthz, /readyz and /metrics; \"\" turns it off. Must differ from every listener's address"`
	DebugListen           string `key:"debug_listen" default:"127.0.0.1:9902" env:"empty" doc:"loopback host:port of the debug listener: /debug/pool, and /debug/pprof/ with pprof; \"\" turns it off. Must differ from admin.listen and every listener's address"`
	Pprof                 bool   `key:"pprof" default:"false" doc:"serve Go's profiler at /debug/pprof/ on debug_listen"`
	ReadyRequiresUpstream bool   `key:"ready_requires_upstream" default:"false" doc:"/readyz also wants every upstream reachable (an open connection, or an endpoint that accepts one); false: ready once the listeners are bound, whatever the upstreams"`
}

// Listener is where unstuck accepts connections from the app.
type Listener struct {
	Name             string         // the key under listeners
	Listen           string         `key:"listen" example:"127.0.0.1:8080" doc:"host:port, or unix:/path/to.sock"`
	Protocol         string         `key:"protocol" default:"http" oneof:"http,tcp" doc:"http: HTTP/1.x requests over pooled upstream connections; tcp: each app connection paired with its own upstream connection, bytes passed as they are"`
	Upstream         string         `key:"upstream" example:"backend" doc:"the upstream to forward to; may be left out when there is only one"`
	IdleTimeout      time.Duration  `key:"idle_timeout" default:"0s" doc:"close an app connection idle this long (tcp: no byte either way); 0: keep it as long as the app wants"`
	IdleReleaseAfter time.Duration  `key:"idle_release_after" default:"1s" doc:"an app connection waiting this long for its next request gives up its goroutine and buffers until the app sends again; 0: never"`
	Linger           sockopt.Linger `key:"linger" default:"reset" res:"1s" kernel:"SO_LINGER" doc:"how unstuck closes app connections: graceful (FIN), reset (RST at once) or whole seconds such as 2s (flush unsent data for up to that long, then RST)"`
	AppFinTimeout    time.Duration  `key:"app_fin_timeout" default:"5s" min:"1ns" doc:"after unstuck half-closes an app connection, wait this long for the app's FIN, then RST; more than 0"`
	ReusePort        bool           `key:"reuse_port" default:"false" doc:"SO_REUSEPORT: another unstuck may bind the same address, for a zero-downtime replacement"`
	SocketMode       os.FileMode    `key:"socket_mode" default:"0660" doc:"octal permissions of a unix: listener's socket file, 0 to 0777; unused for host:port"`
	Keepalive        Keepalive      `key:"keepalive" doc:"TCP keepalive on app connections"`
	UserTimeout      time.Duration  `key:"user_timeout" default:"0s" res:"1ms" max:"2147483647ms" kernel:"TCP_USER_TIMEOUT" doc:"TCP_USER_TIMEOUT: drop the connection when sent data stays unacknowledged this long, in whole milliseconds; 0: the kernel's default"`

	ReadHeaderTimeout time.Duration  `key:"read_header_timeout" default:"10s" doc:"from a request's first byte to the end of its headers (else 408); 0: none. A connection idle between requests is not affected"`
	BodyReadTimeout   time.Duration  `key:"body_read_timeout" default:"60s" doc:"longest wait between reads of a request body (else 408); 0: none"`
	SendTimeout       time.Duration  `key:"send_timeout" default:"60s" doc:"a write to the app that makes no progress this long ends the connection; 0: none"`
	Limits            ListenerLimits `key:"limits"`

	HalfClose        string        `key:"half_close" default:"propagate" oneof:"propagate,close" doc:"tcp listeners and upgraded connections: when one side sends FIN, propagate (FIN the other side, let the other direction finish) or close (close both at once, each with its linger)"`
	HalfCloseTimeout time.Duration `key:"half_close_timeout" default:"5s" min:"1ns" doc:"with half_close propagate: after one side's FIN, close both (RST) if the other direction has not ended within this long; more than 0"`
	Upgrade          bool          `key:"upgrade" default:"true" doc:"http: forward Connection: Upgrade requests (WebSocket) on a fresh upstream connection and, on 101, pass bytes both ways as in tcp mode; false: answer them 501"`

	Capture bool `key:"capture" default:"false" doc:"forward each app connection to the address it was made to before unstuck capture's rules redirected it (SO_ORIGINAL_DST), with a pool per destination; takes no upstream"`
}

// ListenerLimits bounds what a listener takes from the app.
type ListenerLimits struct {
	RequestHeaderBytes int   `key:"request_header_bytes" kind:"size" default:"64KiB" min:"4KiB" max:"1GiB" doc:"request line and headers; larger (a long URI included) gets 431. 4KiB to 1GiB"`
	RequestBodyBytes   int64 `key:"request_body_bytes" kind:"size" default:"0" doc:"a request body; larger gets 413; 0: no limit"`
	MaxConns           int   `key:"max_conns" default:"0" doc:"app connections open at once; at the cap an http listener stops accepting until one closes, a tcp listener accepts and resets; 0: no limit"`
}

// Keepalive configures TCP keepalive on a connection. The kernel's limits
// are MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL and MAX_TCP_KEEPCNT.
type Keepalive struct {
	Idle     time.Duration `key:"idle" default:"30s" res:"1s" max:"32767s" kernel:"TCP_KEEPIDLE" doc:"first probe after this long idle, in whole seconds; 0s turns keepalive off"`
	Interval time.Duration `key:"interval" default:"10s" res:"1s" max:"32767s" kernel:"TCP_KEEPINTVL" doc:"between probes, in whole seconds; more than 0 while keepalive is on"`
	Count    int           `key:"count" default:"3" max:"127" kernel:"TCP_KEEPCNT" doc:"unanswered probes before the kernel drops the connection; 1 to 127"`
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

// Percent is a whole percentage, written with its sign: 20%.
type Percent int

// String returns p as written in the configuration, such as "20%".
func (p Percent) String() string { return fmt.Sprintf("%d%%", int(p)) }

// Upstream is a set of backend servers and how unstuck talks to them.
type Upstream struct {
	Name       string
	Endpoints  []string       `key:"endpoints" example:"127.0.0.1:9000" item:"host:port" doc:"host:port of each server; at least one"`
	HostHeader string         `key:"host_header" default:"" doc:"empty: keep the client's Host; else the Host sent upstream"`
	Linger     sockopt.Linger `key:"linger" default:"graceful" res:"1s" kernel:"SO_LINGER" doc:"how unstuck closes upstream connections: graceful, reset or a duration, as for listeners"`
	Retries    int            `key:"retries" default:"2" doc:"times a failed request is tried again; 0: never"`
	Pool       PoolLimits     `key:"pool" doc:"the connections kept open to this upstream"`
	Dial       Dial           `key:"dial"`
	Timeouts   Timeouts       `key:"timeouts"`
	Limits     UpstreamLimits `key:"limits"`
	TLS        TLS            `key:"tls" doc:"TLS to the endpoints"`

	Balance    string        `key:"balance" default:"p2c" oneof:"p2c,least_conn,round_robin" doc:"how a request picks an endpoint: p2c (the less busy of two chosen at random), least_conn (the least busy) or round_robin"`
	DNSRefresh time.Duration `key:"dns_refresh" default:"5s" doc:"an endpoint given by name is resolved again this often, and every address it has is an endpoint; 0: resolve once, at start"`
	Health     Health        `key:"health" doc:"active health checks, on connections of their own"`
	Outlier    Outlier       `key:"outlier" doc:"passive health: endpoints that keep failing requests are ejected for a while"`
}

// Health configures active health checks of an upstream's endpoints.
type Health struct {
	Interval  time.Duration `key:"interval" default:"0s" doc:"check each endpoint this often; 0: no active checks"`
	Path      string        `key:"path" default:"" doc:"GET this path and want a 2xx; empty, and for tcp upstreams: a TCP connect (and TLS handshake) is the check"`
	Timeout   time.Duration `key:"timeout" default:"1s" min:"1ns" doc:"a check that takes longer fails; more than 0"`
	Healthy   int           `key:"healthy" default:"2" min:"1" doc:"passes in a row that bring an ejected endpoint back"`
	Unhealthy int           `key:"unhealthy" default:"3" min:"1" doc:"failures in a row that eject an endpoint"`
}

// Outlier configures passive outlier ejection.
type Outlier struct {
	ConsecutiveFailures int           `key:"consecutive_failures" default:"5" doc:"failed dials, resets and 5xx answers in a row that eject an endpoint; 0: never"`
	BaseEjection        time.Duration `key:"base_ejection" default:"30s" min:"1ns" doc:"the first ejection lasts this long, each next one of the same endpoint longer (2x, 3x...); more than 0"`
	MaxEjectionPercent  int           `key:"max_ejection_percent" default:"50" max:"100" doc:"at most this share of the endpoints is ejected by outlier detection at once; 0 to 100"`
}

// TLS configures TLS to an upstream's endpoints.
type TLS struct {
	Enabled            bool     `key:"enabled" default:"false" doc:"connect to the endpoints with TLS; the other tls keys need it"`
	ServerName         string   `key:"server_name" default:"" doc:"the name sent as SNI and verified in the certificate; empty: each endpoint's host"`
	CAFile             string   `key:"ca_file" default:"" doc:"PEM file of the CAs to trust; empty: the system's roots"`
	CertFile           string   `key:"cert_file" default:"" doc:"PEM client certificate for servers that ask for one (mTLS), with key_file; re-read when the file changes"`
	KeyFile            string   `key:"key_file" default:"" doc:"PEM private key of cert_file"`
	MinVersion         string   `key:"min_version" default:"1.2" oneof:"1.2,1.3" doc:"the oldest TLS version accepted: 1.2 or 1.3"`
	InsecureSkipVerify bool     `key:"insecure_skip_verify" default:"false" doc:"accept any certificate (no verification; logged as a warning at every start and reload): for tests only"`
	ALPN               []string `key:"alpn" default:"" item:"a protocol name such as http/1.1" want:"a list such as [\"http/1.1\"]" doc:"protocols offered in ALPN; empty: http/1.1 for the upstreams of http listeners, none for tcp"`
}

// PoolLimits bounds the connections kept to one upstream.
type PoolLimits struct {
	MaxConns int `key:"max_conns" default:"512" min:"1" doc:"connections open at once to each endpoint, busy or idle; at least 1"`
	// MaxIdle left out is its default or MaxConns, whichever is less, so
	// that setting max_conns alone stays valid.
	MaxIdle        int           `key:"max_idle" default:"128" doc:"idle connections kept for reuse; at most max_conns (left out: this, or max_conns if less)"`
	MinIdle        int           `key:"min_idle" default:"0" doc:"connections kept dialed and ready across the endpoints (a warm pool), replaced in the background as they close; at most max_idle"`
	IdleTimeout    time.Duration `key:"idle_timeout" default:"90s" doc:"close a connection idle this long; 0: no limit"`
	MaxLifetime    time.Duration `key:"max_lifetime" default:"0s" doc:"close a connection this old; 0: no limit"`
	MaxRequests    int           `key:"max_requests" default:"0" doc:"close a connection after this many requests; 0: no limit"`
	AcquireTimeout time.Duration `key:"acquire_timeout" default:"1s" doc:"wait this long for a free connection when max_conns are busy; 0: no limit"`
	// Retiring connections before the server closes them (pool/retire.go).
	LearnIdleTimeout bool    `key:"learn_idle_timeout" default:"true" doc:"learn each endpoint's idle timeout from the idle connections it closes, and retire idle connections before it; a Keep-Alive: timeout=N the server sends counts either way"`
	RetireMargin     Percent `key:"retire_margin" default:"20%" min:"1%" max:"90%" doc:"retire (close) an idle connection once idle for 100% minus this of its server's idle timeout, declared or learned; 1% to 90%"`
}

// Dial configures new upstream connections.
type Dial struct {
	Timeout     time.Duration `key:"timeout" default:"2s" doc:"give up connecting to an endpoint after this long; 0: no limit"`
	Source      netip.Addr    `key:"source" default:"" doc:"local IP address for connections to the endpoints, bound with IP_BIND_ADDRESS_NO_PORT; empty: the kernel picks"`
	SourcePorts PortRange     `key:"source_ports" default:"" doc:"local port range such as 20000-29999, with source only; empty: the kernel picks"`
	Keepalive   Keepalive     `key:"keepalive" doc:"TCP keepalive on upstream connections, as for listeners"`
	UserTimeout time.Duration `key:"user_timeout" default:"0s" res:"1ms" max:"2147483647ms" kernel:"TCP_USER_TIMEOUT" doc:"TCP_USER_TIMEOUT on upstream connections; 0: the kernel's default"`

	TLSHandshakeTimeout time.Duration `key:"tls_handshake_timeout" default:"5s" min:"1ns" doc:"with tls.enabled, give up a TLS handshake after this long; more than 0"`
}

// Timeouts bounds the phases of an upstream exchange.
type Timeouts struct {
	ResponseHeader time.Duration `key:"response_header" default:"30s" doc:"wait this long for the response headers (else 504); 0: no limit"`
	ResponseIdle   time.Duration `key:"response_idle" default:"60s" doc:"longest wait between reads of a response body; 0: no limit"`
	Write          time.Duration `key:"write" default:"60s" doc:"a write of the request that makes no progress this long fails; 0: no limit"`
}

// UpstreamLimits bounds what unstuck takes from an upstream.
type UpstreamLimits struct {
	ResponseHeaderBytes int `key:"response_header_bytes" kind:"size" default:"64KiB" min:"4KiB" max:"1GiB" doc:"a response's status line and headers; larger gets 502. 4KiB to 1GiB"`
}

// DefaultListener returns a listener with every default filled in and no
// Name, Listen or Upstream.
func DefaultListener() Listener { return defaults[Listener](listenerFields) }

// DefaultUpstream returns an upstream with every default filled in and no
// Name or Endpoints.
func DefaultUpstream() Upstream { return defaults[Upstream](upstreamFields) }

// DefaultCapture returns the capture section with every default filled in:
// no listener, so no rules.
func DefaultCapture() Capture { return defaults[Config](topFields).Capture }

// defaults returns a T with every key of fields set to its default.
func defaults[T any](fields []field) (v T) {
	fill(reflect.ValueOf(&v).Elem(), fields)
	return v
}
