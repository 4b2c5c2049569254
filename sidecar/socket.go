package sidecar

import (
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// sharedSocket owns one listening socket and its accept loop. Servers take
// connections through views, so a reload can hand the socket from an old
// server to a new one without closing it: the port never stops accepting
// and nothing queued in its backlog is lost.
type sharedSocket struct {
	ln    net.Listener
	log   *zap.Logger
	conns chan net.Conn // unbuffered: a connection waits here for a view
	done  chan struct{} // closed by close
	once  sync.Once
	wg    sync.WaitGroup
}

func newSharedSocket(ln net.Listener, log *zap.Logger) *sharedSocket {
	s := &sharedSocket{ln: ln, log: log, conns: make(chan net.Conn), done: make(chan struct{})}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// acceptLoop accepts until close. A failed Accept (out of file descriptors,
// say) is retried after a pause that doubles up to a second, so it neither
// spins nor gives up on a listener that can recover.
func (s *sharedSocket) acceptLoop() {
	defer s.wg.Done()
	var pause time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", zap.Stringer("addr", s.ln.Addr()), zap.Duration("in", pause), zap.Error(err))
			select {
			case <-time.After(pause):
			case <-s.done:
				return
			}
			continue
		}
		pause = 0
		select {
		case s.conns <- c:
		case <-s.done:
			c.Close()
			return
		}
	}
}

// view returns a new net.Listener over the socket for one server.
func (s *sharedSocket) view() *socketView {
	return &socketView{s: s, closed: make(chan struct{})}
}

// close closes the socket and waits for the accept loop.
func (s *sharedSocket) close() {
	s.once.Do(func() {
		close(s.done)
		s.ln.Close()
	})
	s.wg.Wait()
}

// socketView is one server's listener over a shared socket. Closing it
// stops that server accepting; the socket stays open for the next view.
type socketView struct {
	s      *sharedSocket
	closed chan struct{}
	once   sync.Once
}

func (v *socketView) Accept() (net.Conn, error) {
	select {
	case c := <-v.s.conns:
		return c, nil
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.s.done:
		return nil, net.ErrClosed
	}
}

func (v *socketView) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *socketView) Addr() net.Addr { return v.s.ln.Addr() }
