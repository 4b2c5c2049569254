package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A pair is one app connection and the upstream connection that it alone
// uses, in tcp mode and after an HTTP Upgrade. Bytes move both ways with
// io.Copy between the sockets themselves, which on Linux is splice(2): the
// kernel moves them, no user-space copy (TestPairSplices). The pair ends as
// its policy says; run returns how, and the owner closes each side.

// Why a pair ended: metric label values, keep them stable.
const (
	PairAppFIN           = "app_fin"            // the app half-closed first
	PairUpstreamFIN      = "upstream_fin"       // the upstream half-closed first
	PairAppRST           = "app_rst"            // the app reset its connection
	PairUpstreamRST      = "upstream_rst"       // the upstream reset its connection
	PairHalfCloseTimeout = "half_close_timeout" // after a FIN, the other direction did not end in time
	PairIdleTimeout      = "idle_timeout"       // no byte either way for idle_timeout
	PairDialError        = "dial_error"         // no upstream connection: dial failed or the pool was exhausted
	PairShutdown         = "shutdown"           // unstuck stopped it
)

// pairPolicy is how a pair ends (listeners.<name>.half_close and the
// timeouts).
type pairPolicy struct {
	// propagate: a FIN from one side is passed to the other (shutdown of
	// writing), and the other direction may go on for up to
	// halfCloseTimeout. Otherwise a FIN ends the pair at once.
	propagate        bool
	halfCloseTimeout time.Duration
	idleTimeout      time.Duration // 0: none
}

// pairEnd is how a pair ended: why, how each side must be closed, and the
// bytes moved.
type pairEnd struct {
	cause             string
	resetApp, resetUp bool // close that side with an RST
	upstreamFIN       bool // the upstream's FIN arrived: its side is done
	toUpstream, toApp int64
}

type pair struct {
	app    net.Conn // the app's socket itself (*net.TCPConn or *net.UnixConn), not its appConn
	up     net.Conn // the upstream's: *net.TCPConn (spliced), or *tls.Conn (copied through TLS)
	policy pairPolicy

	// lastActive is when a copy last reported bytes moved (unix ns); the
	// idle timeout counts from it.
	lastActive atomic.Int64
	// sentToUpstream counts the app's bytes passed on so far, as copies
	// report them.
	sentToUpstream atomic.Int64
	// halfClosedBy is the deadline for the direction still open after a
	// FIN was propagated (unix ns); 0: none yet.
	halfClosedBy atomic.Int64
	// ending is set when the owner ends both directions (the policy or
	// Shutdown): a copy that wakes returns.
	ending atomic.Bool
	// gen changes whenever halfClosedBy or ending does, so that a copy
	// that armed its deadlines meanwhile arms them again.
	gen atomic.Uint32

	// Bytes read off one side before the pair began, which must reach the
	// other before anything the splice moves (preload); each belongs to
	// its direction's goroutine once run starts.
	firstToUp, firstToApp []byte
}

// pairSet is a server's running pairs, so that its Shutdown can end
// them, and the WaitGroup of the goroutines that own them.
type pairSet struct {
	wg    sync.WaitGroup // the owners; Add before the pair is made
	mu    sync.Mutex
	shut  bool // ending: no pair is added
	pairs map[*pair]struct{}
}

// add records p, unless the set is ending: then it stops p, whose run
// returns at once.
func (ps *pairSet) add(p *pair) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.shut {
		p.stop()
		return
	}
	if ps.pairs == nil {
		ps.pairs = map[*pair]struct{}{}
	}
	ps.pairs[p] = struct{}{}
}

func (ps *pairSet) remove(p *pair) {
	ps.mu.Lock()
	delete(ps.pairs, p)
	ps.mu.Unlock()
}

// end lets the pairs run until ctx ends, then runs before (if not nil),
// stops the pairs still running and waits for their owners. It reports
// whether it stopped any.
func (ps *pairSet) end(ctx context.Context, before func()) bool {
	waitCtx(ctx, ps.wg.Wait)
	if before != nil {
		before()
	}
	ps.mu.Lock()
	ps.shut = true
	stopped := len(ps.pairs) > 0
	for p := range ps.pairs {
		p.stop()
	}
	ps.mu.Unlock()
	ps.wg.Wait()
	return stopped
}

// copied is one direction's end.
type copied struct {
	fromApp bool
	n       int64
	err     error // nil: the source's FIN
}

// Errors a copy ends with when the pair's own clock ends it.
var (
	errPairIdle      = errors.New("pair: idle timeout")
	errHalfCloseOver = errors.New("pair: half-close timeout")
	errPairEnding    = errors.New("pair: ended by its owner")
)

// aLongTimeAgo is a deadline in the past: it wakes a blocked copy at once.
var aLongTimeAgo = time.Unix(1, 0)

// newPairPolicy is a listener's pair policy.
func newPairPolicy(cfg Config) *pairPolicy {
	hc := cfg.HalfCloseTimeout
	if hc <= 0 {
		hc = DefaultHalfCloseTimeout
	}
	return &pairPolicy{propagate: !cfg.CloseOnHalfClose, halfCloseTimeout: hc, idleTimeout: cfg.IdleTimeout}
}

func newPair(app, up net.Conn, policy pairPolicy) *pair {
	p := &pair{app: app, up: up, policy: policy}
	p.lastActive.Store(time.Now().UnixNano())
	return p
}

// preload gives the pair bytes already read off one side, to be written
// to the other first: after an Upgrade, what the app sent behind its
// request (toUp), and the 101's head with what the upstream sent behind it
// (toApp). They are counted as moved. Call it before run.
func (p *pair) preload(toUp, toApp []byte) {
	p.firstToUp, p.firstToApp = toUp, toApp
}

// run moves bytes both ways until the pair ends, and returns how. It
// closes nothing; a half-close it propagates is a shutdown of writing.
func (p *pair) run() pairEnd {
	results := make(chan copied, 2)
	go p.appToUpstream(results)
	go p.upstreamToApp(results)
	first := <-results
	end := pairEnd{}
	p.count(&end, first)
	end.cause = p.causeOf(first)

	finFirst := first.err == nil
	// An upstream that closes before the app sent anything (a server
	// refusing the connection) has nothing to wait for: it ends the pair.
	refused := finFirst && !first.fromApp && !p.appSentAnything()
	if finFirst && p.policy.propagate && !refused {
		// Pass the FIN on and let the other direction finish.
		closeWrite(p.destOf(first))
		p.halfClosedBy.Store(time.Now().Add(p.policy.halfCloseTimeout).UnixNano())
		p.rearm()
	} else {
		p.stop()
	}
	second := <-results
	p.count(&end, second)
	if finFirst && p.policy.propagate && !refused && second.err == nil {
		// The other direction ended with a FIN too: pass it on, so that
		// its peer reads the end of stream (EOF), not the close that
		// follows.
		closeWrite(p.destOf(second))
	}

	switch {
	case !finFirst:
		// An RST, an error or a timeout ended the first direction: the
		// cause is set, and the side that did not reset gets an RST too,
		// so that an error never looks like a clean end of stream.
		end.resetApp = end.cause == PairUpstreamRST
		end.resetUp = end.cause == PairAppRST
	case second.err == nil || errors.Is(second.err, errPairEnding):
		// Both directions ended cleanly, or the policy ended the second.
	case errors.Is(second.err, errHalfCloseOver):
		end.cause = PairHalfCloseTimeout
		end.resetApp, end.resetUp = true, true // a peer that never closes must not keep either side
	default:
		// The second direction failed after the first ended cleanly.
		if c := p.causeOf(second); c == PairAppRST || c == PairUpstreamRST {
			end.cause = c
			end.resetApp, end.resetUp = c == PairUpstreamRST, c == PairAppRST
		}
	}
	return end
}

// appSentAnything reports whether the app has sent a byte: the kernel's
// count on its socket (a copy reports only when it returns), or, for a
// unix socket, the copies' count.
func (p *pair) appSentAnything() bool {
	if info := tcpInfo(p.app); info != nil {
		return info.Bytes_received > 0
	}
	return p.sentToUpstream.Load() > 0
}

// destOf is the connection a direction writes to.
func (p *pair) destOf(c copied) net.Conn {
	if c.fromApp {
		return p.up
	}
	return p.app
}

func (p *pair) count(end *pairEnd, c copied) {
	if c.fromApp {
		end.toUpstream += c.n
	} else {
		end.toApp += c.n
		end.upstreamFIN = c.err == nil
	}
}

// appToUpstream and upstreamToApp are the two copy directions, each on
// its own goroutine, named so that a goroutine dump says which is which.
func (p *pair) appToUpstream(results chan<- copied) {
	n, err := p.copyOneWay(p.up, p.app, p.firstToUp, &p.sentToUpstream)
	results <- copied{fromApp: true, n: n, err: err}
}

func (p *pair) upstreamToApp(results chan<- copied) {
	n, err := p.copyOneWay(p.app, p.up, p.firstToApp, nil)
	results <- copied{fromApp: false, n: n, err: err}
}

// copyOneWay writes first to dst, then moves bytes from src to dst until
// src's FIN (nil), an error, or the pair's own clock ends it (errPairIdle,
// errHalfCloseOver, errPairEnding). Each write of first and each io.Copy
// runs until it is done or a deadline wakes it; deadlines are armed only
// when there is a clock (an idle timeout, a half-close in progress), and a
// wake-up that finds the pair still live goes on.
func (p *pair) copyOneWay(dst, src net.Conn, first []byte, sent *atomic.Int64) (int64, error) {
	var total int64
	for {
		gen := p.gen.Load()
		deadline := p.deadline(time.Now())
		_ = src.SetReadDeadline(deadline)
		_ = dst.SetWriteDeadline(deadline)
		if p.gen.Load() != gen {
			continue // the owner changed the clock meanwhile: arm again
		}
		var n int64
		var err error
		writingFirst := len(first) > 0
		if writingFirst {
			var m int
			m, err = dst.Write(first)
			n, first = int64(m), first[m:]
		} else {
			n, err = io.Copy(dst, src)
		}
		total += n
		now := time.Now()
		if n > 0 {
			p.lastActive.Store(now.UnixNano())
			if sent != nil {
				sent.Add(n)
			}
		}
		if writingFirst && err == nil {
			continue // first is out: the splice follows
		}
		if err == nil || !isTimeout(err) {
			return total, err
		}
		switch hc := p.halfClosedBy.Load(); {
		case p.ending.Load():
			return total, errPairEnding
		case hc != 0 && now.UnixNano() >= hc:
			return total, errHalfCloseOver
		case p.policy.idleTimeout > 0 && now.UnixNano()-p.lastActive.Load() >= int64(p.policy.idleTimeout):
			return total, errPairIdle
		}
	}
}

// deadline is when a copy armed now must wake: the idle check (every half
// idle timeout, so that a pair idle for idle_timeout ends within half as
// much again), the half-close deadline, or at once if the pair is ending;
// zero: none.
func (p *pair) deadline(now time.Time) time.Time {
	if p.ending.Load() {
		return aLongTimeAgo
	}
	var d time.Time
	if idle := p.policy.idleTimeout; idle > 0 {
		d = now.Add(max(idle/2, time.Millisecond))
	}
	if hc := p.halfClosedBy.Load(); hc != 0 {
		if t := time.Unix(0, hc); d.IsZero() || t.Before(d) {
			d = t
		}
	}
	return d
}

// stop ends both directions now: they wake and return errPairEnding.
func (p *pair) stop() {
	p.ending.Store(true)
	p.rearm()
}

// rearm makes both copies take the current clock: the generation changes
// before the deadlines are set, so a copy arming at the same moment arms
// again (copyOneWay), and whichever sets last sets the right deadline.
func (p *pair) rearm() {
	p.gen.Add(1)
	d := p.deadline(time.Now())
	for _, c := range []net.Conn{p.app, p.up} {
		_ = c.SetReadDeadline(d)
		_ = c.SetWriteDeadline(d)
	}
}

// causeOf names the end of one direction.
func (p *pair) causeOf(c copied) string {
	switch {
	case c.err == nil && c.fromApp:
		return PairAppFIN
	case c.err == nil:
		return PairUpstreamFIN
	case errors.Is(c.err, errPairIdle):
		return PairIdleTimeout
	case errors.Is(c.err, errHalfCloseOver):
		return PairHalfCloseTimeout
	case errors.Is(c.err, errPairEnding):
		return PairShutdown
	case isClosedByPeer(tcpOf(p.up)):
		return PairUpstreamRST
	case isClosedByPeer(p.app):
		return PairAppRST
	case c.fromApp: // an error we cannot place: blame the side this copy read
		return PairAppRST
	}
	return PairUpstreamRST
}

// isClosedByPeer reports whether c's TCP state is CLOSE: after an error on
// a copy between two sockets, the one that was reset is in CLOSE, the
// other still established (or half-closed). A copy's error does not say
// which side it read or wrote.
func isClosedByPeer(c net.Conn) bool {
	info := tcpInfo(c)
	return info != nil && info.State == tcpClose
}

// tcpInfo returns c's TCP_INFO, or nil if c is no open TCP socket.
func tcpInfo(c net.Conn) *unix.TCPInfo {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var info *unix.TCPInfo
	_ = raw.Control(func(fd uintptr) {
		info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	return info
}

// tcpClose is TCP_CLOSE in the kernel's tcp_states.h.
const tcpClose = 7

// closeWrite shuts down writing on c (a FIN), where c can. On TLS that
// is close_notify and then the TCP socket's FIN: crypto/tls's CloseWrite
// sends only the former.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	if tc, ok := c.(*tls.Conn); ok {
		closeWrite(tc.NetConn())
	}
}

// tcpOf returns the TCP socket under c: c itself, or a TLS connection's.
func tcpOf(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
