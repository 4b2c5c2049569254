// Package demo is `unstuck demo`: it shows, on loopback and in about 20
// seconds, a legacy app piling up sockets in CLOSE_WAIT against an upstream
// that closes idle connections, and the same app through unstuck keeping
// none.
//
// Run plays two phases with the same workload. A legacy app (app.go: never
// closes a socket; replaces a failed connection with a new one and leaves
// the old one open) sends one request per connection every 1.5 upstream
// idle timeouts, so between waves every connection sits idle past the
// upstream's timeout and gets a FIN (upstream.go):
//
//   - direct: the app talks to the upstream itself;
//   - through unstuck: the app talks to an embedded unstuck, started as
//     the sidecar is (a config.Config into sidecar.New) with the default
//     configuration, in front of a fresh upstream.
//
// Every SampleEvery it counts the sockets in CLOSE_WAIT on the app's side
// and, through unstuck, on unstuck's upstream side.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/sidecar"
)

// Defaults of Options, and of the flags of `unstuck demo`.
const (
	DefaultConns        = 100
	DefaultDuration     = 9 * time.Second
	DefaultUpstreamIdle = time.Second
)

// SampleEvery is how often a phase counts sockets.
const SampleEvery = 500 * time.Millisecond

// waveOffset is when, into a phase, the first wave of requests starts. Half
// a sample period keeps the samples (at multiples of SampleEvery) off the
// waves and off the bursts of FINs that follow them by UpstreamIdle, at
// least with the default timings: a count taken during a burst catches
// sockets in the few milliseconds between a FIN's arrival and its close.
const waveOffset = SampleEvery / 2

// Phase names, as printed.
const (
	PhaseDirect  = "direct"
	PhaseUnstuck = "through unstuck"
)

const (
	// requestTimeout bounds each request of the legacy client.
	requestTimeout = 2 * time.Second
	// shutdownTimeout bounds the embedded unstuck's Shutdown.
	shutdownTimeout = 5 * time.Second
	// settleTimeout bounds the wait, after cleanup, for the kernel to show
	// every demo socket without a file descriptor.
	settleTimeout = 2 * time.Second
)

// Options configure Run. Zero values mean the defaults above.
type Options struct {
	Conns        int           // connections the legacy app keeps
	Duration     time.Duration // length of each phase
	UpstreamIdle time.Duration // the upstream closes connections idle this long
	Out          io.Writer     // progress, table and summary; nil: discarded
	Terminal     bool          // Out is a terminal: rewrite the progress line in place
}

func (o *Options) applyDefaults() {
	if o.Conns <= 0 {
		o.Conns = DefaultConns
	}
	if o.Duration <= 0 {
		o.Duration = DefaultDuration
	}
	if o.UpstreamIdle <= 0 {
		o.UpstreamIdle = DefaultUpstreamIdle
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// WaveEvery is how often the app sends one request on each of its
// connections: long enough for every connection to go idle past the
// upstream's timeout in between.
func (o Options) WaveEvery() time.Duration { return o.UpstreamIdle * 3 / 2 }

// Result is what Run measured.
type Result struct {
	Direct, Unstuck Phase
	// Interrupted means ctx ended before both phases completed; the phases
	// hold what was measured until then.
	Interrupted bool
	// OpenSockets counts the demo's sockets still held by a file
	// descriptor after cleanup: 0 unless something leaked, -1 if the
	// socket tables could not be read.
	OpenSockets int
}

// Phase is what one phase measured.
type Phase struct {
	Name    string   // PhaseDirect or PhaseUnstuck
	Addr    string   // where the app sent its requests
	Samples []Sample // at 0, SampleEvery, ... up to Duration; none if the phase never ran

	OK, Failed int    // the app's requests
	Dials      int    // connections the app opened, its first Conns included
	Reconnects int    // Dials beyond the first Conns
	FirstError string // the first failed request; "" if none

	MaxAppCloseWait      int
	MaxUpstreamCloseWait int // unstuck's upstream side; 0 in the direct phase

	UpstreamConns int             // connections the upstream accepted
	UpstreamFins  int             // idle connections the upstream ended with a FIN
	FinToClose    []time.Duration // for each FIN the other end answered with a close, how long it took
}

// Sample is one count of sockets during a phase.
type Sample struct {
	At                time.Duration // since the phase started (scheduled time)
	AppCloseWait      int           // the app's sockets in CLOSE_WAIT
	UpstreamCloseWait int           // unstuck's upstream sockets in CLOSE_WAIT; 0 in the direct phase
	OK, Failed, Dials int           // the app's totals so far
}

// Run plays the direct phase, then the through-unstuck phase, writes the
// progress, table and summary to opts.Out and returns what it measured.
// Every server, client and socket it opened is closed when it returns.
//
// When ctx ends, Run stops early and cleanly: it reports what it measured
// so far, with Result.Interrupted set, and a nil error. An error means the
// demo could not run (a socket could not be opened, /proc/net/tcp could not
// be read).
func Run(ctx context.Context, opts Options) (Result, error) {
	opts.applyDefaults()
	r := &runner{opts: opts, rep: newReporter(opts)}
	r.rep.intro()

	var res Result
	var err error
	res.Direct, err = r.direct(ctx)
	if err == nil && ctx.Err() == nil {
		res.Unstuck, err = r.throughUnstuck(ctx)
	}
	res.Interrupted = ctx.Err() != nil
	res.OpenSockets = r.openSockets()
	if err != nil {
		return res, err
	}
	r.rep.report(res)
	return res, nil
}

// runner holds what Run shares between the phases.
type runner struct {
	opts Options
	rep  *reporter
	// addrs are every address the demo listened on, for openSockets.
	addrs []netip.AddrPort
}

// listening records addr for openSockets.
func (r *runner) listening(addr string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil { // the listeners are all 127.0.0.1:port
		panic(fmt.Sprintf("demo: listener address %q: %v", addr, err))
	}
	r.addrs = append(r.addrs, ap)
	return ap
}

// direct runs the app against the upstream itself.
func (r *runner) direct(ctx context.Context) (Phase, error) {
	up, err := newUpstream(r.opts.UpstreamIdle)
	if err != nil {
		return Phase{Name: PhaseDirect}, fmt.Errorf("demo: upstream: %w", err)
	}
	defer up.close()
	r.listening(up.addr())
	r.rep.phaseStart(PhaseDirect, "app -> upstream "+up.addr())
	return r.drive(ctx, PhaseDirect, up.addr(), up, netip.AddrPort{})
}

// throughUnstuck runs the app against an embedded unstuck, started as the
// sidecar starts (sidecarConfig into sidecar.New), in front of a fresh
// upstream.
func (r *runner) throughUnstuck(ctx context.Context) (Phase, error) {
	ph := Phase{Name: PhaseUnstuck}
	up, err := newUpstream(r.opts.UpstreamIdle)
	if err != nil {
		return ph, fmt.Errorf("demo: upstream: %w", err)
	}
	defer up.close() // last: after unstuck closed its connections to it
	upAddr := r.listening(up.addr())

	cfg, err := sidecarConfig(up.addr())
	if err != nil {
		return ph, fmt.Errorf("demo: unstuck: %w", err)
	}
	sc, err := sidecar.New(cfg, zap.NewNop(), zap.NewAtomicLevel())
	if err != nil {
		return ph, fmt.Errorf("demo: unstuck: %w", err)
	}
	// The app's connections are closed by then (drive closes the app), so
	// Shutdown closes the listener, then the pool's connections.
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		_ = sc.Shutdown(sctx) // a timeout leaves sockets open; openSockets reports them
	}()
	addr := r.listening(sc.ListenerAddr(listenerName).String()).String()

	r.rep.phaseStart(PhaseUnstuck, "app -> unstuck "+addr+" -> upstream "+up.addr())
	return r.drive(ctx, PhaseUnstuck, addr, up, upAddr)
}

// listenerName is the listener of unstuck's dev mode, which sidecarConfig
// uses.
const listenerName = "app"

// sidecarConfig loads what `unstuck --listen 127.0.0.1:0 --upstream
// upAddr` runs: every default, one listener on a free loopback port
// forwarding to upAddr. The user's UNSTUCK_* environment is not read, and
// the admin and debug listeners are off (their default ports may be taken).
func sidecarConfig(upAddr string) (*config.Config, error) {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	config.AddFlags(fs)
	if err := fs.Parse([]string{"--" + config.FlagListen, "127.0.0.1:0", "--" + config.FlagUpstream, upAddr}); err != nil {
		return nil, err
	}
	return config.Load(config.LoadOptions{Flags: fs, Environ: []string{config.EnvName("admin.listen") + "=", config.EnvName("admin.debug_listen") + "="}})
}

// drive runs one phase: a legacy app on addr sends waves of requests,
// from waveOffset on, while the calling goroutine samples socket states,
// until opts.Duration or ctx ends. up is the upstream behind addr. A valid
// upAddr counts unstuck's upstream-side sockets too (those whose peer is
// upAddr; the app never talks to it in that phase).
//
// The app is drive's own: it closes it, and every socket it opened,
// before returning.
func (r *runner) drive(ctx context.Context, name, addr string, up *upstream, upAddr netip.AddrPort) (Phase, error) {
	ph := Phase{Name: name, Addr: addr}
	a, err := newApp(addr, r.opts.Conns, requestTimeout)
	if err != nil {
		return ph, fmt.Errorf("demo: %s: %w", name, err)
	}
	defer a.close()

	start := time.Now()
	stop := make(chan struct{})
	wavesDone := make(chan struct{})
	go func() {
		defer close(wavesDone)
		sendWaves(a, r.opts.Conns, start.Add(waveOffset), start.Add(r.opts.Duration), r.opts.WaveEvery(), stop)
	}()

	err = r.sample(ctx, a, start, upAddr, &ph)
	close(stop)
	if err != nil || ctx.Err() != nil {
		a.close() // interrupts the wave in flight
	}
	select {
	case <-wavesDone: // the last wave completes: its requests count
	case <-ctx.Done():
		a.close()
		<-wavesDone
	}
	r.rep.phaseEnd()

	st := a.stats()
	ph.OK, ph.Failed = st.ok, st.failed
	if st.firstErr != nil {
		ph.FirstError = st.firstErr.Error()
	}
	ph.Dials = st.dials
	ph.Reconnects = st.dials - r.opts.Conns
	// Before a.close: the app's own closes come later.
	ph.UpstreamConns, ph.UpstreamFins, ph.FinToClose = up.stats()
	return ph, err
}

// sample counts sockets every SampleEvery, from start to start+Duration,
// into ph, and reports each count. It returns early when ctx ends.
func (r *runner) sample(ctx context.Context, a *app, start time.Time, upAddr netip.AddrPort, ph *Phase) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for i := 0; ; i++ {
		at := time.Duration(i) * SampleEvery
		at = min(at, r.opts.Duration)
		t.Reset(time.Until(start.Add(at)))
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s, err := count(a, upAddr)
		if err != nil {
			return err
		}
		s.At = at
		ph.Samples = append(ph.Samples, s)
		ph.MaxAppCloseWait = max(ph.MaxAppCloseWait, s.AppCloseWait)
		ph.MaxUpstreamCloseWait = max(ph.MaxUpstreamCloseWait, s.UpstreamCloseWait)
		last := at >= r.opts.Duration
		r.rep.progress(ph.Name, s, i, last)
		if last {
			return nil
		}
	}
}

// count reads the socket tables once and counts a's sockets in
// CLOSE_WAIT and, if upAddr is valid, the other sockets connected to
// upAddr in CLOSE_WAIT.
func count(a *app, upAddr netip.AddrPort) (Sample, error) {
	var s Sample
	socks, err := sockstate.List()
	if err != nil {
		return s, fmt.Errorf("demo: counting sockets: %w", err)
	}
	ours := a.match()
	for _, so := range socks {
		if so.State != sockstate.CloseWait {
			continue
		}
		switch {
		case ours(so):
			s.AppCloseWait++
		case upAddr.IsValid() && so.Remote == upAddr:
			s.UpstreamCloseWait++
		}
	}
	st := a.stats()
	s.OK, s.Failed, s.Dials = st.ok, st.failed, st.dials
	return s, nil
}

// sendWaves sends, at start and every `every` after it until end, one
// request on each of a's conns connections at once, and waits for them.
// It returns at end, or when stop is closed between waves.
func sendWaves(a *app, conns int, start, end time.Time, every time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(0)
	defer t.Stop()
	for at := start; at.Before(end); at = at.Add(every) {
		t.Reset(time.Until(at))
		select {
		case <-stop:
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for slot := 1; slot <= conns; slot++ {
			wg.Go(func() { a.get(slot) })
		}
		wg.Wait()
	}
}

// openSockets returns how many sockets to or from the demo's addresses
// still have a file descriptor, waiting up to settleTimeout for the count
// to reach 0. Sockets the kernel finishes on its own (TIME_WAIT, FIN_WAIT2,
// LAST_ACK after close) have none and do not count.
func (r *runner) openSockets() int {
	ours := func(s sockstate.Socket) bool {
		if s.Inode == 0 {
			return false
		}
		for _, a := range r.addrs {
			if s.Local == a || s.Remote == a {
				return true
			}
		}
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	counts, err := sockstate.WaitFor(ctx, ours, func(m map[sockstate.State]int) bool { return len(m) == 0 })
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return -1 // the tables could not be read; Run reports that error already
	}
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}
