package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// reserveListener keeps one file descriptor in reserve (an eventfd, which
// needs no file: the image's root may have no /dev/null)
// so that the admin port still answers when the process has run out: a
// liveness probe that timed out would restart a sidecar that is only busy.
// When Accept fails with EMFILE or ENFILE it closes the reserve, accepts
// with the descriptor that frees, and opens the reserve again once that
// connection closes. A connection served so says Connection: close after
// its response (see closeReserved), so the reserve is back at once.
type reserveListener struct {
	net.Listener
	log *zap.Logger

	mu      sync.Mutex
	reserve *os.File // nil while spent or not yet reopened
	inUse   bool     // a connection holds the reserve's descriptor
	closed  bool
}

func newReserveListener(ln net.Listener, log *zap.Logger) (*reserveListener, error) {
	f, err := openReserve()
	if err != nil {
		return nil, err
	}
	return &reserveListener{Listener: ln, log: log, reserve: f}, nil
}

// Accept is called by the serving goroutine only.
func (l *reserveListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil || !descriptorsExhausted(err) {
		return c, err
	}
	l.mu.Lock()
	if l.inUse || l.closed {
		l.mu.Unlock()
		return nil, err // http.Server backs off and tries again
	}
	if l.reserve == nil {
		l.reopenLocked() // a reopen after the last close failed
		if l.reserve == nil {
			l.mu.Unlock()
			return nil, err
		}
	}
	l.reserve.Close()
	l.reserve, l.inUse = nil, true
	l.mu.Unlock()

	c, err = l.Listener.Accept()
	if err != nil { // another goroutine took the descriptor first
		l.release()
		return nil, err
	}
	l.log.Warn("file descriptors exhausted: serving an admin connection from the reserve",
		zap.Stringer("remote", c.RemoteAddr()))
	return &reservedConn{Conn: c, l: l}, nil
}

// release puts the reserve back once its connection has closed.
func (l *reserveListener) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inUse = false
	if !l.closed {
		l.reopenLocked()
	}
}

// reopenLocked opens the reserve again; on failure Accept retries at the
// next exhaustion. l.mu must be held.
func (l *reserveListener) reopenLocked() {
	f, err := openReserve()
	if err != nil {
		return
	}
	l.reserve = f
}

// openReserve takes one descriptor that costs nothing else.
func openReserve() (*os.File, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("descriptor reserve: eventfd: %w", err)
	}
	return os.NewFile(uintptr(fd), "unstuck-fd-reserve"), nil
}

func (l *reserveListener) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		if l.reserve != nil {
			l.reserve.Close()
			l.reserve = nil
		}
	}
	l.mu.Unlock()
	return l.Listener.Close()
}

func descriptorsExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// reservedConn is a connection accepted with the reserve's descriptor.
type reservedConn struct {
	net.Conn
	l    *reserveListener
	once sync.Once
}

func (c *reservedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.l.release) // after the close: its descriptor is free again
	return err
}

type reservedKey struct{}

// markReserved is the server's ConnContext: it tells closeReserved which
// requests came on the reserve.
func markReserved(ctx context.Context, c net.Conn) context.Context {
	if _, ok := c.(*reservedConn); ok {
		return context.WithValue(ctx, reservedKey{}, true)
	}
	return ctx
}

// closeReserved ends a connection on the reserve after one response, so
// that an idle keep-alive connection does not hold the reserve.
func closeReserved(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Value(reservedKey{}) != nil {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}
