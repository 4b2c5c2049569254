package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/internal/sockdiag"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// A capture listener (Config.Capture) serves the app connections that the
// capture rules (package capture) redirected to it: each goes where the
// app was connecting, its original destination, read at accept
// (SO_ORIGINAL_DST), through that destination's own upstream and pool.
// Everything else is a listener's as usual: a tcp listener pairs each
// connection, an http listener forwards its requests.

var (
	// ErrTooManyDestinations means every one of the capture listener's
	// max_destinations destinations has a connection open, so a
	// connection to one more cannot get a pool. Raise
	// capture.max_destinations, or capture fewer destinations.
	ErrTooManyDestinations = errors.New("capture: max_destinations destinations in use")
	// ErrNotCaptured means an app connection reached a capture listener
	// without being redirected to it, so it has no destination other than
	// the listener itself. Connect to the real destination instead.
	ErrNotCaptured = errors.New("capture: the connection was made to the capture listener itself, not redirected to it")
)

// DestinationsConfig is what Destinations needs. Zero values are the
// documented defaults.
type DestinationsConfig struct {
	Max         int           // destinations with a pool at once (capture.max_destinations); default 64
	IdleTimeout time.Duration // a destination unused this long is closed (capture.idle_timeout); default 60s
	// New makes the upstream of a destination at its first use: its pool
	// (with the destination as its one endpoint) and settings. Its Name is
	// the destination's label in logs and metrics.
	New func(dst netip.AddrPort) (Upstream, error)
	// Closed, if set, is told of each destination whose pool Destinations
	// has closed (idle, evicted, or at Close), after the close.
	Closed func(dst netip.AddrPort, up *Upstream)
	// CheckLoops refuses, at accept, a connection whose app socket is
	// this process's UID's: unstuck's own connection to a destination,
	// captured again because the rules do not exclude it (else each pair
	// would dial one more, without end). Not for rules that exclude
	// unstuck by a mark, where an app may share its UID.
	CheckLoops bool
	Logger     *zap.Logger
}

// Destinations are a capture listener's upstreams, one per original
// destination: made at first use, closed once unused for IdleTimeout, at
// most Max at once. Its methods may be called from any goroutine.
type Destinations struct {
	cfg  DestinationsConfig
	log  *zap.Logger
	done chan struct{} // closed by Close: the reaper exits

	mu      sync.Mutex
	closed  bool                            // guarded by mu
	dests   map[netip.AddrPort]*destination // guarded by mu
	reaping bool                            // the reaper runs; guarded by mu
	reaper  sync.WaitGroup                  // Add under mu while !closed
}

// destination is one original destination's upstream. up is read-only
// once made; users and idleSince are guarded by Destinations.mu.
type destination struct {
	up        Upstream
	users     int       // pairs and exchanges using up now
	idleSince time.Time // when users last fell to 0
}

// NewDestinations returns an empty set of destinations for cfg.
func NewDestinations(cfg DestinationsConfig) *Destinations {
	if cfg.Max <= 0 {
		cfg.Max = 64
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Destinations{
		cfg:   cfg,
		log:   cfg.Logger.Named("capture"),
		done:  make(chan struct{}),
		dests: map[netip.AddrPort]*destination{},
	}
}

// Open returns the upstream of dst, made now if dst has none, and leave,
// which the caller calls exactly once when it no longer uses the upstream
// (its pair has ended and given its connection back, its exchange has
// finished). Until then the upstream's pool stays open, unless Close
// closes it. At Max destinations, the one unused longest is closed to
// make room; with every one in use, Open fails with
// ErrTooManyDestinations. After Close it fails with pool.ErrClosed.
func (d *Destinations) Open(dst netip.AddrPort) (up *Upstream, leave func(), err error) {
	var evicted *destination
	var evictedAt netip.AddrPort
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, nil, pool.ErrClosed
	}
	dest := d.dests[dst]
	if dest == nil {
		if len(d.dests) >= d.cfg.Max {
			if evictedAt, evicted = d.idlestLocked(); evicted == nil {
				d.mu.Unlock()
				return nil, nil, ErrTooManyDestinations
			}
		}
		u, err := d.cfg.New(dst)
		if err != nil {
			d.mu.Unlock()
			return nil, nil, err // nothing evicted for a destination that could not be made
		}
		if evicted != nil {
			delete(d.dests, evictedAt)
		}
		dest = &destination{up: u}
		d.dests[dst] = dest
		d.startReaperLocked()
	}
	dest.users++
	d.mu.Unlock()
	d.close(evictedAt, evicted)

	var once sync.Once
	return &dest.up, func() { once.Do(func() { d.leave(dest) }) }, nil
}

// leave ends one use of dest.
func (d *Destinations) leave(dest *destination) {
	d.mu.Lock()
	if dest.users--; dest.users == 0 {
		dest.idleSince = time.Now()
	}
	d.mu.Unlock()
}

// idlestLocked returns the unused destination idle longest, if any.
func (d *Destinations) idlestLocked() (netip.AddrPort, *destination) {
	var at netip.AddrPort
	var idlest *destination
	for dst, dest := range d.dests {
		if dest.users == 0 && (idlest == nil || dest.idleSince.Before(idlest.idleSince)) {
			at, idlest = dst, dest
		}
	}
	return at, idlest
}

// close closes a destination taken out of the map (nil: none): its pool's
// idle connections close now, busy ones when given back.
func (d *Destinations) close(dst netip.AddrPort, dest *destination) {
	if dest == nil {
		return
	}
	dest.up.Pool.Close()
	if d.cfg.Closed != nil {
		d.cfg.Closed(dst, &dest.up)
	}
	if ce := d.log.Check(zap.DebugLevel, "destination closed"); ce != nil {
		ce.Write(zap.Stringer("destination", dst))
	}
}

// startReaperLocked starts the reaper unless it runs: it runs while there
// are destinations.
func (d *Destinations) startReaperLocked() {
	if d.reaping || d.closed {
		return
	}
	d.reaping = true
	d.reaper.Add(1)
	go d.reap()
}

// reap closes the destinations unused for IdleTimeout, checking every
// half of it, and returns once there are none left (or at Close).
func (d *Destinations) reap() {
	defer d.reaper.Done()
	t := time.NewTicker(max(d.cfg.IdleTimeout/2, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-d.done:
			return
		case now := <-t.C:
			type gone struct {
				dst  netip.AddrPort
				dest *destination
			}
			var idle []gone
			d.mu.Lock()
			for dst, dest := range d.dests {
				if dest.users == 0 && now.Sub(dest.idleSince) >= d.cfg.IdleTimeout {
					delete(d.dests, dst)
					idle = append(idle, gone{dst, dest})
				}
			}
			empty := len(d.dests) == 0
			if empty {
				d.reaping = false
			}
			d.mu.Unlock()
			for _, g := range idle {
				d.close(g.dst, g.dest)
			}
			if empty {
				return
			}
		}
	}
}

// Close closes every destination's pool (busy connections close when
// given back) and stops the reaper. Open fails from now on.
func (d *Destinations) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	dests := d.dests
	d.dests = map[netip.AddrPort]*destination{}
	d.mu.Unlock()
	close(d.done)
	d.reaper.Wait()
	for dst, dest := range dests {
		d.close(dst, dest)
	}
}

// Len returns the destinations with a pool now.
func (d *Destinations) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.dests)
}

// openDestination opens dst in the listener's current destinations. A
// reload may close those it loaded (pool.ErrClosed) just before: then it
// tries the current ones once more. leave is nil on error.
func openDestination(cur interface{ Load() *Destinations }, dst netip.AddrPort) (*Destinations, *Upstream, func(), error) {
	d := cur.Load()
	if d == nil {
		return nil, nil, nil, pool.ErrClosed // a server Update left without destinations (tests)
	}
	up, leave, err := d.Open(dst)
	if errors.Is(err, pool.ErrClosed) {
		if next := cur.Load(); next != nil && next != d {
			d = next
			up, leave, err = d.Open(dst)
		}
	}
	return d, up, leave, err
}

// ErrCaptureLoop means a capture listener's connection was unstuck's own,
// captured again. List unstuck's UID in capture.exclude_uids.
var ErrCaptureLoop = errors.New("capture: unstuck's own connection was captured again; list its UID in capture.exclude_uids")

// selfUID is this process's UID, for CheckLoops.
var selfUID = uint32(os.Getuid())

// checkLoop returns ErrCaptureLoop if nc, a capture listener's connection
// to dst, was made by a socket of this process's UID. The app's socket is
// on this host (the rules capture this namespace's own connections), and
// NAT left it connected to dst as far as it knows.
func checkLoop(nc net.Conn, dst netip.AddrPort) error {
	from, ok := nc.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return nil
	}
	s, err := sockdiag.Lookup(from.AddrPort(), dst)
	if err == nil && s.UID == selfUID {
		return ErrCaptureLoop
	}
	return nil // not found, or another's: not ours
}

// originalDst returns where an app connection accepted by a capture
// listener was going before the capture rules redirected it. A connection
// made to the listener itself is not captured (ErrNotCaptured): forwarding
// it would only connect to the listener again.
func originalDst(nc net.Conn) (netip.AddrPort, error) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, ErrNotCaptured
	}
	local := tc.LocalAddr().(*net.TCPAddr).AddrPort()
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var dst netip.AddrPort
	var derr error
	ipv6 := !local.Addr().Unmap().Is4() // an IPv4 connection on a dual-stack socket is IPv4's
	if err := raw.Control(func(fd uintptr) { dst, derr = sockopt.OriginalDst(int(fd), ipv6) }); err != nil {
		return netip.AddrPort{}, err
	}
	if derr != nil {
		return netip.AddrPort{}, derr
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if dst == netip.AddrPortFrom(local.Addr().Unmap(), local.Port()) {
		return netip.AddrPort{}, ErrNotCaptured
	}
	return dst, nil
}
