package metrics

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

// ResolveTimeout bounds SetSockets' name lookups when its ctx has no
// deadline.
const ResolveTimeout = 5 * time.Second

// SetSockets replaces, all at once, what the socket gauges watch:
//
//   - listeners maps each listener's name to its TCP port. A socket whose
//     local port is one of them counts as side="listener" (the listening
//     socket and every app connection). Leave out unix-socket listeners.
//   - endpoints maps each upstream's name to its endpoints, "host:port" as
//     configured. A socket whose remote address and port is one of them
//     counts in unstuck_upstream_local_ports, whoever holds it, and as
//     side="upstream" if it is unstuck's own: one of this process's file
//     descriptors refers to it (its inode). The app's own connections to
//     the same endpoints are not unstuck's, nor are sockets already closed
//     (TIME_WAIT, and FIN_WAIT2 or LAST_ACK after the close), which the
//     kernel ties to no process.
//
// Hosts are resolved here, once, within ctx (ResolveTimeout if ctx has no
// deadline); a later DNS change is seen at the next SetSockets. A host
// that does not resolve still gets its unstuck_upstream_local_ports series,
// at 0, and its error is among those returned (errors.Join); everything
// else is watched either way. Serve calls it at start and after a reload.
func (m *Metrics) SetSockets(ctx context.Context, listeners map[string]uint16, endpoints map[string][]string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ResolveTimeout)
		defer cancel()
	}
	w := &socketWatch{
		listenerPorts: make(map[uint16]bool, len(listeners)),
		byRemote:      make(map[netip.AddrPort][]int),
	}
	for _, port := range listeners {
		if port != 0 {
			w.listenerPorts[port] = true
		}
	}
	for upstream, eps := range endpoints {
		for _, ep := range eps {
			w.endpoints = append(w.endpoints, watchedEndpoint{upstream, ep})
		}
	}
	slices.SortFunc(w.endpoints, func(a, b watchedEndpoint) int {
		return cmp.Or(cmp.Compare(a.upstream, b.upstream), cmp.Compare(a.endpoint, b.endpoint))
	})
	w.endpoints = slices.Compact(w.endpoints)

	var errs []error
	for i, we := range w.endpoints {
		addrs, err := resolve(ctx, we.endpoint)
		if err != nil {
			errs = append(errs, fmt.Errorf("metrics: endpoint %q of upstream %s: %w", we.endpoint, we.upstream, err))
			continue
		}
		for _, ap := range addrs {
			if !slices.Contains(w.byRemote[ap], i) {
				w.byRemote[ap] = append(w.byRemote[ap], i)
			}
		}
	}

	c := m.sockets
	c.mu.Lock()
	c.watch = w
	c.mu.Unlock()
	return errors.Join(errs...)
}

// resolve returns the addresses a dial to endpoint ("host:port") may reach,
// unmapped and without zone, as sockstate reports remote addresses. An
// empty or unspecified host is the local system: the loopback addresses.
func resolve(ctx context.Context, endpoint string) ([]netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(endpoint)
	if err != nil {
		return nil, err
	}
	port, err := net.DefaultResolver.LookupPort(ctx, "tcp", portStr)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if host != "" {
		if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
	}
	out := make([]netip.AddrPort, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		if a.IsUnspecified() {
			continue
		}
		out = append(out, netip.AddrPortFrom(a, uint16(port)))
	}
	if len(out) == 0 { // "", 0.0.0.0 or [::]: Dial connects to this host
		out = append(out,
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)),
			netip.AddrPortFrom(netip.IPv6Loopback(), uint16(port)))
	}
	return out, nil
}

// socketWatch is what SetSockets installed; never changed after.
type socketWatch struct {
	listenerPorts map[uint16]bool
	endpoints     []watchedEndpoint        // sorted, unique
	byRemote      map[netip.AddrPort][]int // remote → indexes into endpoints
}

type watchedEndpoint struct{ upstream, endpoint string }

// socketCollector reads the kernel's socket tables once per scrape.
type socketCollector struct {
	dir                                string                          // sockstate.DefaultDir; tests use fixtures
	inodes                             func() (map[uint64]bool, error) // ownInodes; tests use fixtures
	sockets, hostCloseWait, localPorts *prometheus.Desc

	mu    sync.Mutex
	watch *socketWatch // guarded by mu
}

func newSocketCollector() *socketCollector {
	return &socketCollector{
		dir:    sockstate.DefaultDir,
		inodes: ownInodes,
		sockets: prometheus.NewDesc("unstuck_tcp_sockets",
			"unstuck's own TCP sockets by kernel state at scrape time; side=listener: local port is a listener's, side=upstream: an open socket of this process whose remote is an upstream endpoint.",
			[]string{"state", "side"}, nil),
		hostCloseWait: prometheus.NewDesc("unstuck_host_close_wait_sockets",
			"TCP sockets in CLOSE_WAIT in the whole network namespace, the app's own connections included.",
			nil, nil),
		localPorts: prometheus.NewDesc("unstuck_upstream_local_ports",
			"Local ports in use towards the upstream endpoint: sockets to it in any state, TIME_WAIT included.",
			[]string{"upstream", "endpoint"}, nil),
		watch: &socketWatch{},
	}
}

func (c *socketCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sockets
	ch <- c.hostCloseWait
	ch <- c.localPorts
}

func (c *socketCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	w := c.watch
	c.mu.Unlock()

	// Descriptors first: a socket opened between the two reads is missed
	// this time, not counted as another process's.
	own, err := c.inodes()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.sockets, err)
		return
	}
	socks, err := sockstate.ReadFrom(c.dir)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.sockets, err)
		return
	}
	var listener, upstream [256]int // by sockstate.State
	closeWait := 0
	ports := make([]int, len(w.endpoints))
	for i := range socks {
		s := &socks[i]
		if s.State == sockstate.CloseWait {
			closeWait++
		}
		if w.listenerPorts[s.Local.Port()] {
			listener[s.State]++
		}
		if idx, ok := w.byRemote[s.Remote]; ok {
			if s.Inode != 0 && own[s.Inode] {
				upstream[s.State]++
			}
			if s.State != sockstate.Listen {
				for _, i := range idx {
					ports[i]++
				}
			}
		}
	}

	// Every kernel state, zero or not; anything else only when seen.
	for st := range listener {
		s := sockstate.State(st)
		for _, side := range [...]struct {
			name   string
			counts *[256]int
		}{{"listener", &listener}, {"upstream", &upstream}} {
			n := side.counts[st]
			if n == 0 && !s.Valid() {
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.sockets, prometheus.GaugeValue, float64(n), s.String(), side.name)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.hostCloseWait, prometheus.GaugeValue, float64(closeWait))
	for i, we := range w.endpoints {
		ch <- prometheus.MustNewConstMetric(c.localPorts, prometheus.GaugeValue, float64(ports[i]), we.upstream, we.endpoint)
	}
}

// ownInodes returns the inodes of the sockets this process's file
// descriptors refer to (/proc/self/fd links read "socket:[INODE]"). A
// descriptor closed while it is read is skipped.
func ownInodes() (map[uint64]bool, error) {
	const dir = "/proc/self/fd"
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	f.Close() // read-only: nothing to lose
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool, len(names))
	for _, name := range names {
		link, err := os.Readlink(dir + "/" + name)
		if err != nil {
			continue
		}
		if n, ok := strings.CutPrefix(link, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(n, "]"), 10, 64); err == nil {
				out[ino] = true
			}
		}
	}
	return out, nil
}
