package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// ListenOptions are a listener's own socket options.
type ListenOptions struct {
	// ReusePort sets SO_REUSEPORT, so a second unstuck can bind the same
	// address and take over without refusing anyone.
	ReusePort bool
	// SocketMode is the file mode of a unix: listener's socket; 0 leaves
	// what the umask gives.
	SocketMode os.FileMode
}

// Listen opens a listener for "host:port" or "unix:/path/to.sock" with
// default options.
func Listen(addr string) (net.Listener, error) { return ListenWith(addr, ListenOptions{}) }

// ListenWith opens a listener for "host:port" or "unix:/path/to.sock".
// TCP listeners always set SO_REUSEADDR, so a restart binds at once even
// with thousands of old connections in TIME_WAIT on the port.
func ListenWith(addr string, o ListenOptions) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return listenUnix(path, o.SocketMode)
	}
	lc := net.ListenConfig{
		KeepAlive: -1, // accepted connections get the listener's keepalive (see Accept)
		Control: sockopt.Control(func(fd int) error {
			if err := sockopt.SetReuseAddr(fd); err != nil {
				return err
			}
			if o.ReusePort {
				return sockopt.SetReusePort(fd)
			}
			return nil
		}),
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// listenUnix binds a unix socket at path. A socket file left by a dead
// process is removed; one a live process still serves is not stolen.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen unix %s: the file exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("listen unix %s: a live process serves this socket", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("listen unix %s: cannot tell whether the socket is in use: %w", path, err)
		}
		if err := os.Remove(path); err != nil { // stale: its process is gone
			return nil, fmt.Errorf("listen unix %s: removing the stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if mode != 0 {
		if err := os.Chmod(path, mode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen unix %s: %w", path, err)
		}
	}
	return ln, nil
}

// appSockets is how a listener treats each app connection: the options set
// at accept and the close policy. A reload swaps it whole.
type appSockets struct {
	linger      sockopt.Linger
	keepalive   sockopt.Keepalive
	userTimeout time.Duration
	finTimeout  time.Duration // how long a graceful close waits for the app's FIN

	readHeaderTimeout time.Duration // from a request's first byte to its last header byte; 0: none
	sendTimeout       time.Duration // a write to the app that makes no progress this long fails; 0: none
}

// newAppSockets takes a listener's app-socket settings from cfg.
func newAppSockets(cfg Config) *appSockets {
	if cfg.AppFinTimeout <= 0 {
		cfg.AppFinTimeout = 5 * time.Second
	}
	return &appSockets{
		linger:            cfg.Linger,
		keepalive:         cfg.Keepalive,
		userTimeout:       cfg.UserTimeout,
		finTimeout:        cfg.AppFinTimeout,
		readHeaderTimeout: cfg.ReadHeaderTimeout,
		sendTimeout:       cfg.SendTimeout,
	}
}

// lingerListener applies appSockets to every accepted connection. It owns
// the goroutines that wait for the app's FIN after a graceful close, and
// the abort watch over its connections.
type lingerListener struct {
	net.Listener
	sockets *atomic.Pointer[appSockets] // the Server's; read at accept and close
	obs     Observer
	log     *zap.Logger
	parker  *parker     // releases idle connections
	watch   *abortWatch // notices apps that leave mid-request
	// slots caps the connections open at once (limits.max_conns): Accept
	// takes one, the connection's final close gives it back. nil: no cap.
	slots chan struct{}
	done  chan struct{} // closed by stop: a waiting Accept gives up
	open  atomic.Int64  // app connections accepted and not yet finally closed
	// maxHead is the request header limit, where the framing guard stops
	// following a head (fasthttp answers 431).
	maxHead int
	// stream: a tcp listener's. Its connections are neither parked nor
	// abort-watched (parker and watch are nil: the pair reads both sides
	// itself), and at max_conns a connection is accepted and reset.
	stream bool
	// capture: a capture listener's destinations (its server's); nil
	// for other listeners. Each connection's original destination is read
	// at accept; one that has none, or that loops, is reset.
	capture *atomic.Pointer[Destinations]

	mu       sync.Mutex
	waiting  map[*appConn]struct{} // closes waiting for the app's FIN
	stopping bool                  // Shutdown began: close at once, wait for nothing
	wg       sync.WaitGroup
}

// newLingerListener wraps ln. A nil parker makes a tcp listener's (see
// lingerListener.stream).
func newLingerListener(ln net.Listener, sockets *atomic.Pointer[appSockets], obs Observer, p *parker, maxConns int, log *zap.Logger) (*lingerListener, error) {
	l := &lingerListener{
		Listener: ln, sockets: sockets, obs: obs, log: log, parker: p, stream: p == nil,
		done: make(chan struct{}), waiting: make(map[*appConn]struct{}),
	}
	if !l.stream {
		w, err := newAbortWatch(log)
		if err != nil {
			return nil, err
		}
		l.watch = w
	}
	if maxConns > 0 {
		l.slots = make(chan struct{}, maxConns)
	}
	return l, nil
}

func (l *lingerListener) Accept() (net.Conn, error) {
	if l.stream {
		return l.acceptOrReset()
	}
	for {
		if err := l.takeSlot(); err != nil {
			return nil, err
		}
		nc, err := l.Listener.Accept()
		if err != nil {
			l.giveSlot()
			return nil, err
		}
		if dst, ok := l.captured(nc); ok {
			return l.wrap(nc, dst), nil
		}
		l.giveSlot()
	}
}

// acceptOrReset is a tcp listener's Accept: at limits.max_conns a new
// connection is accepted and reset at once, and counted, so that the app's
// connect fails now instead of hanging in the backlog.
func (l *lingerListener) acceptOrReset() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		dst, ok := l.captured(nc)
		if !ok {
			continue
		}
		if l.slots == nil {
			return l.wrap(nc, dst), nil
		}
		select {
		case l.slots <- struct{}{}:
			return l.wrap(nc, dst), nil
		default:
		}
		resetAccepted(nc)
		l.obs.Refused(RefuseConnLimit)
		if ce := l.log.Check(zap.WarnLevel, "limits.max_conns reached: app connection reset"); ce != nil {
			ce.Write(zap.Int("max_conns", cap(l.slots)), zap.Stringer("app", nc.RemoteAddr()))
		}
	}
}

// captured returns a capture listener's accepted connection's original
// destination; a connection that has none is reset and counted (false).
// Other listeners' connections pass with none.
func (l *lingerListener) captured(nc net.Conn) (netip.AddrPort, bool) {
	if l.capture == nil {
		return netip.AddrPort{}, true
	}
	dst, err := originalDst(nc)
	if d := l.capture.Load(); err == nil && d != nil && d.cfg.CheckLoops {
		err = checkLoop(nc, dst)
	}
	if err == nil {
		return dst, true
	}
	resetAccepted(nc)
	if errors.Is(err, ErrCaptureLoop) {
		l.obs.Refused(RefuseCaptureLoop)
		l.log.Error("capture listener: unstuck's own connection was captured again; reset", zap.Stringer("destination", dst), zap.Error(err))
		return netip.AddrPort{}, false
	}
	l.obs.Refused(RefuseNotCaptured)
	if ce := l.log.Check(zap.WarnLevel, "capture listener: connection without an original destination reset"); ce != nil {
		ce.Write(zap.Stringer("app", nc.RemoteAddr()), zap.Error(err))
	}
	return netip.AddrPort{}, false
}

// resetAccepted closes a connection just accepted, and not served, with an
// RST: the app's connect fails now.
func resetAccepted(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	nc.Close()
}

// wrap applies the listener's socket options to an accepted connection,
// which holds a slot already (where there is a cap), and counts it. dst
// is a capture listener's original destination.
func (l *lingerListener) wrap(nc net.Conn, dst netip.AddrPort) *appConn {
	set := l.sockets.Load()
	c := &appConn{Conn: nc, l: l, clientIP: remoteIP(nc.RemoteAddr()), origDst: dst,
		headerTimeout: set.readHeaderTimeout, sendTimeout: set.sendTimeout}
	c.guard.maxHead = l.maxHead
	if tc, ok := nc.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			c.raw = raw
			c.control(func(fd int) {
				// Best effort: a connection without keepalive still works.
				_ = sockopt.SetKeepalive(fd, set.keepalive)
				if set.userTimeout > 0 {
					_ = sockopt.SetUserTimeout(fd, set.userTimeout)
				}
			})
			if !l.stream {
				l.parker.track(c)
			}
		}
		if !l.stream {
			l.watch.add(c)
		}
	}
	l.open.Add(1)
	l.obs.AppConnOpened()
	return c
}

// takeSlot waits, at limits.max_conns, until a connection closes. The
// wait is counted and logged; the app's connect waits in the kernel's
// backlog meanwhile, as at HAProxy's maxconn.
func (l *lingerListener) takeSlot() error {
	if l.slots == nil {
		return nil
	}
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
	}
	l.obs.Refused(RefuseConnLimit)
	l.log.Warn("limits.max_conns reached: not accepting until an app connection closes",
		zap.Int("max_conns", cap(l.slots)))
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-l.done:
		return net.ErrClosed
	}
}

func (l *lingerListener) giveSlot() {
	if l.slots != nil {
		<-l.slots
	}
}

// stop begins a shutdown: closes still waiting for an app's FIN are reset
// at once, and from now on Close waits for nothing (see closeAtShutdown). Shutdown
// calls it before fasthttp closes the idle connections, and wait after.
func (l *lingerListener) stop() {
	l.mu.Lock()
	if !l.stopping {
		close(l.done)
	}
	l.stopping = true
	for c := range l.waiting {
		c.Conn.SetReadDeadline(time.Now()) // wakes awaitFIN, which resets
	}
	l.mu.Unlock()
}

// wait waits for the closes still in progress, then ends the abort watch.
func (l *lingerListener) wait() {
	l.wg.Wait()
	if !l.stream {
		l.watch.close()
	}
}

// untrack takes c out of the parker and the abort watch, before its close.
func (l *lingerListener) untrack(c *appConn) {
	if !l.stream {
		l.parker.forget(c)
		l.watch.forget(c)
	}
}

// appConn is an app connection whose Close applies the listener's close
// policy. fasthttp's connection goroutine owns it, or the parker while it
// is released (see park.go); after a graceful close the listener owns the
// socket until the app's FIN or finTimeout.
type appConn struct {
	net.Conn
	l *lingerListener
	// raw reaches the TCP socket's descriptor (see control); nil for unix
	// sockets: no TCP states to manage.
	raw  syscall.RawConn
	once sync.Once
	// clientIP is the app's address for X-Forwarded-For; invalid for
	// unix sockets.
	clientIP netip.Addr
	// origDst is where the app was connecting, for a capture listener's
	// connection (set at accept); invalid otherwise.
	origDst netip.AddrPort

	// Idle release (park.go). parkable and id are set at accept; deadline
	// belongs to the serving goroutine; registered and expiry to the
	// parker, under its lock.
	parkable   bool
	id         uint64
	state      atomic.Int32 // connBusy, connWaiting or connKicked; changed under pmu
	deadline   time.Time    // the read deadline fasthttp last set
	registered bool         // in the parker's epoll set
	expiry     *time.Timer  // while parked: idle_timeout

	pmu      sync.Mutex
	since    time.Time // when it began waiting at a request boundary
	parkNext bool      // the serve loop ends to release it: Close parks it
	closed   bool      // closed for good (or closing)

	// Timeouts, set at accept. hdrDeadline and readDeadlineSet belong to
	// the serving goroutine.
	headerTimeout   time.Duration // read_header_timeout
	sendTimeout     time.Duration // send_timeout
	hdrDeadline     time.Time     // while the headers of a request are read; zero otherwise
	readDeadlineSet bool          // a header or body deadline to clear at the request's end

	// The response phase of the added latency (added.go): whether one
	// runs, and if so, on the goroutine that writes to the app, the
	// response's last byte read from the upstream and the end of the last
	// write since. respPending is atomic because fasthttp reports a
	// connection's close (StateClosed) after handing it to the parker,
	// which may be serving it again on another goroutine.
	respPending         atomic.Bool
	respRead, respWrote time.Time

	// The framing guard over every byte read (framing.go), on the serving
	// goroutine.
	guard    framingGuard
	guardErr error

	// The abort watch (appwatch.go). watchID is set at accept; the rest is
	// guarded by xmu.
	watchID  uint64
	xmu      sync.Mutex
	upstream net.Conn    // the upstream socket of the exchange in flight
	ended    bool        // the app's FIN or RST arrived
	gone     bool        // and the app has closed its socket (not just half-closed it)
	aborted  atomic.Bool // the exchange in flight was aborted for it; set under xmu, read without

	// hijack is set by an exchange that asked fasthttp to hijack the
	// connection (an upgrade's pair, an HTTP/1.0 raw stream), for
	// fasthttp's next step: its hijack or, failing that, its close
	// (connStateChanged) takes it, with a Swap, and owns it.
	hijack atomic.Pointer[pendingHijack]
}

// pendingHijack is a hijack asked of fasthttp and not yet begun. fasthttp
// either runs the hijack or, when a write before it fails (flushing an
// earlier pipelined response to an app that left), closes the connection
// without it; then abandon ends what the hijack would have owned.
type pendingHijack struct{ abandon func() }

// requestStarted runs at a request's first byte (fasthttp's StateActive):
// its headers have read_header_timeout to arrive. A connection waiting
// between requests has no such deadline: it may idle as long as the app
// wants (idle_timeout aside).
func (c *appConn) requestStarted() {
	if c.headerTimeout <= 0 {
		return
	}
	c.hdrDeadline = time.Now().Add(c.headerTimeout)
	c.readDeadlineSet = true
	_ = c.SetReadDeadline(c.hdrDeadline)
}

// requestHandled runs when the handler starts: the headers are in.
func (c *appConn) requestHandled() {
	if c != nil {
		c.hdrDeadline = time.Time{}
	}
}

// bodyDeadline sets the deadline for the next read of a request body: d
// from now, or none.
func (c *appConn) bodyDeadline(d time.Duration) {
	if c == nil {
		return
	}
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	c.readDeadlineSet = true
	_ = c.SetReadDeadline(t)
}

// requestDone runs at the request boundary (fasthttp's StateIdle): the
// wait for the next request has no deadline of ours. fasthttp sets its own
// (idle_timeout) next.
func (c *appConn) requestDone() {
	c.hdrDeadline = time.Time{}
	if c.readDeadlineSet {
		c.readDeadlineSet = false
		_ = c.SetReadDeadline(time.Time{})
	}
}

// Write is every write to the app. With send_timeout, a write that makes
// no progress that long fails, and the connection ends: an app that stops
// reading must not hold a response, and its upstream connection, forever.
// While a response phase runs (added.go), its end moves to each write's.
func (c *appConn) Write(b []byte) (int, error) {
	if c.sendTimeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.sendTimeout))
	}
	n, err := c.Conn.Write(b)
	if c.respPending.Load() {
		c.wrote(err)
	}
	return n, err
}

// Close ends an app connection, making sure the app cannot be left in
// CLOSE_WAIT and never at the cost of a response it has not received:
//
//   - reset, with every byte written acknowledged: RST at once.
//   - bounded: SO_LINGER N; close(2) flushes for up to N, on its own
//     goroutine.
//   - graceful, or reset with bytes still unacknowledged: half-close (FIN
//     after the last byte), keep the socket, and wait up to finTimeout for
//     the app's FIN. An app that never answers, its socket in CLOSE_WAIT and
//     ours in FIN_WAIT2, gets an RST: that takes its socket out of
//     CLOSE_WAIT and frees its port although it never calls close().
//
// During a shutdown fasthttp closes idle connections from its own
// goroutine while the connection's goroutine is still blocked reading, so
// a half-close would leave that reader waiting: then the close does not
// wait for the app.
func (c *appConn) Close() error {
	if c.handOver() {
		return nil // released to the parker, not closed
	}
	err := net.ErrClosed
	c.once.Do(func() { err = c.close() })
	return err
}

func (c *appConn) close() error {
	l := c.l
	l.untrack(c)
	if c.raw == nil {
		l.connClosed("graceful")
		return c.Conn.Close()
	}
	set := l.sockets.Load()
	l.mu.Lock()
	stopping := l.stopping
	l.mu.Unlock()
	switch {
	case set.linger.Mode == sockopt.Bounded:
		return c.closeBounded(set.linger)
	case stopping:
		return c.closeAtShutdown()
	case set.linger.Mode == sockopt.Reset && !c.unacknowledged():
		return c.reset()
	}
	if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
		l.connClosed("graceful")
		return c.Conn.Close() // already gone
	}
	if hook := testHookHalfClosed.Load(); hook != nil {
		(*hook)()
	}
	l.mu.Lock()
	if l.stopping {
		// Shutdown began since the check above, and its wait for
		// l.wg may be running: a wait must not gain members.
		l.mu.Unlock()
		return c.closeAtShutdown()
	}
	l.waiting[c] = struct{}{}
	l.wg.Add(1)
	l.mu.Unlock()
	go c.awaitFIN(set.finTimeout)
	return nil
}

// closeAtShutdown closes at once, whatever the linger. Graceful closes
// like reset: unstuck is about to exit and cannot escalate later, and a
// FIN alone would leave a never-closing app in CLOSE_WAIT for good. Bytes
// still unacknowledged get a plain close instead: the kernel delivers
// them.
func (c *appConn) closeAtShutdown() error {
	if !c.unacknowledged() {
		return c.reset()
	}
	c.l.connClosed("graceful")
	return c.Conn.Close()
}

// testHookHalfClosed runs between a graceful close's FIN and its joining
// the listener's waits, when set; tests start a Shutdown there.
var testHookHalfClosed atomic.Pointer[func()]

// awaitFIN runs after a half-close: it discards what the app still sends
// until its FIN (a clean end) or finTimeout (reset). On a tcp listener a
// byte the app sends is reset at once: its pair is over, and only an
// error tells a streaming app that what it sends goes nowhere.
func (c *appConn) awaitFIN(finTimeout time.Duration) {
	l := c.l
	defer l.wg.Done()
	defer func() {
		l.mu.Lock()
		delete(l.waiting, c)
		l.mu.Unlock()
	}()
	l.mu.Lock()
	if !l.stopping {
		c.Conn.SetReadDeadline(time.Now().Add(finTimeout))
	}
	l.mu.Unlock()
	var err error
	if l.stream {
		var b [1]byte
		if n, rerr := c.Conn.Read(b[:]); n > 0 {
			err = os.ErrDeadlineExceeded // escalate: the app is still sending
		} else if rerr != io.EOF {
			err = rerr
		}
	} else {
		_, err = io.Copy(io.Discard, c.Conn)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.linger(sockopt.Linger{Mode: sockopt.Reset})
		l.connClosed("escalated")
	} else {
		l.connClosed("graceful")
	}
	c.Conn.Close()
}

// control runs f on c's descriptor while the socket holds it open, so
// that f never acts on a number a closed socket left for another; false
// for a unix socket (no TCP state) or a socket already closed.
func (c *appConn) control(f func(fd int)) bool {
	if c.raw == nil {
		return false
	}
	return c.raw.Control(func(fd uintptr) { f(int(fd)) }) == nil
}

// unacknowledged reports bytes written that the app has not acknowledged
// yet (or that it cannot tell).
func (c *appConn) unacknowledged() bool {
	n, err := 0, error(nil)
	if !c.control(func(fd int) { n, err = sockopt.UnsentBytes(fd) }) {
		return true
	}
	return err != nil || n > 0
}

// linger sets SO_LINGER for the close that follows; best effort: without
// it the close is a plain FIN close.
func (c *appConn) linger(l sockopt.Linger) {
	c.control(func(fd int) { _ = sockopt.ApplyLinger(fd, l) })
}

// abort ends c with an RST, at once and for good, so that the app cannot
// take what it received for complete: for an HTTP/1.0 app, whose body ends
// at the close, a FIN would say the body is whole. fasthttp's later Close
// then does nothing.
func (c *appConn) abort() error {
	err := net.ErrClosed
	c.once.Do(func() {
		c.l.untrack(c)
		err = c.reset()
	})
	return err
}

// reset closes with an RST.
func (c *appConn) reset() error {
	c.linger(sockopt.Linger{Mode: sockopt.Reset})
	c.l.connClosed("reset")
	return c.Conn.Close()
}

// closeBounded closes with SO_LINGER N; close(2) blocks while the kernel
// flushes, so it runs on its own goroutine, which ends within N.
func (c *appConn) closeBounded(linger sockopt.Linger) error {
	c.linger(linger)
	c.l.connClosed("bounded")
	go c.Conn.Close()
	return nil
}

// openConns is how many app connections l has open (accepted and not
// finally closed); 0 for a listener not made yet (nil).
func (l *lingerListener) openConns() int {
	if l == nil {
		return 0
	}
	return int(l.open.Load())
}

// connClosed counts an app connection's final close, and frees its slot
// under limits.max_conns.
func (l *lingerListener) connClosed(how string) {
	l.open.Add(-1)
	l.obs.AppConnClosed(how)
	l.giveSlot()
}
