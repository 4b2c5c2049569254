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
}

// lingerListener applies appSockets to every accepted connection. It owns
// the goroutines that wait for the app's FIN after a graceful close.
type lingerListener struct {
	net.Listener
	sockets *atomic.Pointer[appSockets] // the Server's; read at accept and close
	obs     Observer
	parker  *parker // releases idle connections

	mu       sync.Mutex
	waiting  map[*appConn]struct{} // closes waiting for the app's FIN
	stopping bool                  // Shutdown began: close at once, wait for nothing
	wg       sync.WaitGroup
}

func newLingerListener(ln net.Listener, sockets *atomic.Pointer[appSockets], obs Observer, p *parker) *lingerListener {
	return &lingerListener{Listener: ln, sockets: sockets, obs: obs, parker: p, waiting: make(map[*appConn]struct{})}
}

func (l *lingerListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &appConn{Conn: nc, l: l, fd: -1, clientIP: remoteIP(nc.RemoteAddr())}
	if _, ok := nc.(*net.TCPConn); ok {
		if fd, err := sockopt.FD(nc); err == nil {
			c.fd = fd
			set := l.sockets.Load()
			// Best effort: a connection without keepalive still works.
			_ = sockopt.SetKeepalive(fd, set.keepalive)
			if set.userTimeout > 0 {
				_ = sockopt.SetUserTimeout(fd, set.userTimeout)
			}
			l.parker.track(c)
		}
	}
	l.obs.AppConnOpened()
	return c, nil
}

// stop begins a shutdown: closes still waiting for an app's FIN are reset
// at once, and from now on Close waits for nothing (see closeAtShutdown). Shutdown
// calls it before fasthttp closes the idle connections, and wait after.
func (l *lingerListener) stop() {
	l.mu.Lock()
	l.stopping = true
	for c := range l.waiting {
		c.Conn.SetReadDeadline(time.Now()) // wakes awaitFIN, which resets
	}
	l.mu.Unlock()
}

// wait waits for the closes still in progress.
func (l *lingerListener) wait() { l.wg.Wait() }

// appConn is an app connection whose Close applies the listener's close
// policy. fasthttp's connection goroutine owns it, or the parker while it
// is released (see park.go); after a graceful close the listener owns the
// socket until the app's FIN or finTimeout.
type appConn struct {
	net.Conn
	l    *lingerListener
	fd   int // -1 for unix sockets: no TCP states to manage
	once sync.Once
	// clientIP is the app's address for X-Forwarded-For; invalid for
	// unix sockets.
	clientIP netip.Addr

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
	l.parker.forget(c)
	if c.fd < 0 {
		l.obs.AppConnClosed("graceful")
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
	case set.linger.Mode == sockopt.Reset && !unacknowledged(c.fd):
		return c.reset()
	}
	if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
		l.obs.AppConnClosed("graceful")
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
	if !unacknowledged(c.fd) {
		return c.reset()
	}
	c.l.obs.AppConnClosed("graceful")
	return c.Conn.Close()
}

// testHookHalfClosed runs between a graceful close's FIN and its joining
// the listener's waits, when set; tests start a Shutdown there.
var testHookHalfClosed atomic.Pointer[func()]

// awaitFIN runs after a half-close: it discards what the app still sends
// until its FIN (a clean end) or finTimeout (reset).
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
	_, err := io.Copy(io.Discard, c.Conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		_ = sockopt.ApplyLinger(c.fd, sockopt.Linger{Mode: sockopt.Reset})
		l.obs.AppConnClosed("escalated")
	} else {
		l.obs.AppConnClosed("graceful")
	}
	c.Conn.Close()
}

// unacknowledged reports bytes written to fd that the app has not
// acknowledged yet (or that it cannot tell).
func unacknowledged(fd int) bool {
	n, err := sockopt.UnsentBytes(fd)
	return err != nil || n > 0
}

// reset closes with an RST.
func (c *appConn) reset() error {
	_ = sockopt.ApplyLinger(c.fd, sockopt.Linger{Mode: sockopt.Reset})
	c.l.obs.AppConnClosed("reset")
	return c.Conn.Close()
}

// closeBounded closes with SO_LINGER N; close(2) blocks while the kernel
// flushes, so it runs on its own goroutine, which ends within N.
func (c *appConn) closeBounded(linger sockopt.Linger) error {
	_ = sockopt.ApplyLinger(c.fd, linger)
	c.l.obs.AppConnClosed("bounded")
	go c.Conn.Close()
	return nil
}
