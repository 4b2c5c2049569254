package proxy

import (
	"net"
	"strings"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Listen opens a listener for "host:port" or "unix:/path/to.sock".
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", addr)
}

// lingerListener closes every accepted app connection with the listener's
// linger.
type lingerListener struct {
	net.Listener
	linger sockopt.Linger
	obs    Observer
}

func (l *lingerListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	obs := l.obs
	if obs == nil {
		obs = nopObserver{}
	}
	obs.AppConnOpened()
	return &appConn{Conn: nc, linger: l.linger, obs: obs}, nil
}

// appConn is an app connection whose Close applies the listener's linger.
// fasthttp's connection goroutine owns it and calls Close once.
type appConn struct {
	net.Conn
	linger sockopt.Linger
	obs    Observer
}

// Close resets the connection when the linger says so, but never at the
// cost of response bytes the app has not received: if any byte written is
// still unacknowledged, the close is a graceful FIN after that byte. An RST
// otherwise tells a legacy app that ignores FIN that the connection is
// gone, and leaves its socket out of CLOSE_WAIT.
func (c *appConn) Close() error {
	l := c.linger
	if l.Mode == sockopt.Graceful {
		c.obs.AppConnClosed(l.Kind())
		return c.Conn.Close()
	}
	if fd, err := sockopt.FD(c.Conn); err == nil {
		if l.Mode == sockopt.Reset {
			if n, err := sockopt.UnsentBytes(fd); err != nil || n > 0 {
				l = sockopt.Linger{}
			}
		}
		if l.Mode != sockopt.Graceful {
			_ = sockopt.ApplyLinger(fd, l)
		}
	}
	c.obs.AppConnClosed(l.Kind())
	if l.Blocks() {
		go c.Conn.Close() // close(2) blocks while the kernel flushes
		return nil
	}
	return c.Conn.Close()
}
