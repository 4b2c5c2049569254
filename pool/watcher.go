package pool

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/epoll"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// watcher watches every pooled connection for a peer's FIN or RST. It is
// one epoll set holding the pool's sockets (internal/epoll); the epoll
// descriptor itself is registered with Go's netpoller, so the goroutine that
// drains it parks like any network read and wakes the moment a watched
// socket is hung up. No timer, no thread blocked in epoll_wait.
//
// Every open connection's socket is in the set from dial to close with the
// same mask (see watchEvents), busy or idle: the request path makes no
// epoll_ctl at all. Bytes arriving do not wake the watcher, so unsolicited
// bytes on an idle connection are found by the peek before reuse instead.
type watcher struct {
	set   *epoll.Set
	ready [256]readable // used only by run
}

// readable is one watched socket whose peer ended it (a hung-up socket
// reads EOF or an error), and how, as the event flags tell: a read hang-up
// alone is a FIN; an error or hang-up is an RST, or a timeout, which only
// the socket's error tells (causeOfError, read when it is closed). No flag
// ever says bytes arrived: watchEvents has no EPOLLIN.
type readable struct {
	id    uint64
	cause Cause
}

func causeOfEvent(events uint32) Cause {
	if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		return CauseRST
	}
	return CauseFIN
}

// causeOfError refines an error or hang-up (CauseRST from causeOfEvent) by
// the socket's pending error: keepalive or TCP_USER_TIMEOUT ends a
// blackholed connection with ETIMEDOUT, which is no reset. Reading it
// clears it, so only the pool's own closes call this, never while a
// holder may still read the error.
func causeOfError(c *Conn) Cause {
	var errno unix.Errno
	var err error
	if cerr := c.control(func(fd int) { errno, err = sockopt.SocketError(fd) }); cerr != nil {
		return CauseRST
	}
	if err == nil && sockopt.IsTimeout(errno) {
		return CauseTimeout
	}
	return CauseRST
}

func newWatcher() (*watcher, error) {
	set, err := epoll.New("unstuck-pool-watch")
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	return &watcher{set: set}, nil
}

// wakes counts the watcher's wake-ups (the first is its start): tests read
// it to show that traffic on a busy connection never wakes the watcher.
func (w *watcher) wakes() uint64 { return w.set.Wakes() }

// watchEvents is every socket's mask, set once at register and never
// changed. EPOLLERR and EPOLLHUP (an RST) the kernel reports whatever the
// mask says. No EPOLLIN: a data arrival wakes the socket's wait queue with
// the key EPOLLIN|EPOLLRDNORM|..., which ep_poll_callback drops as not in
// the mask, so a response arriving on a busy connection never wakes the
// watcher (TestBusyConnectionDoesNotWakeWatcher). A FIN (tcp_fin →
// sk_state_change, a wake-up with no key, polled and masked to
// EPOLLRDHUP) or an RST does, busy or idle; the pool sorts them out.
//
// Edge-triggered: each FIN or RST is reported once, at arrival. One that
// arrives while the connection is busy is therefore never reported again
// once it is idle; the pool notes it (Conn.missed) and Release peeks.
const watchEvents = unix.EPOLLRDHUP | unix.EPOLLET

// register adds a new connection's socket, for its whole life: closing the
// socket removes it. Call it inside the socket's RawConn.Control, and only
// while the set is open (Pool.Close waits for the dials in flight).
func (w *watcher) register(fd int, id uint64) error {
	return w.set.Add(fd, watchEvents, id)
}

// run drains events and calls onReadable with the id of each socket whose
// peer ended it, until close is called. The connection may be busy, or
// already closed (the event fired before the close): onReadable checks.
func (w *watcher) run(onReadable func(events []readable, woke time.Time)) {
	w.set.Run(func(events []epoll.Event) {
		woke := time.Now()
		for i, ev := range events {
			w.ready[i] = readable{id: ev.ID, cause: causeOfEvent(ev.Events)}
		}
		onReadable(w.ready[:len(events)], woke)
	})
}

// close stops run. Call it once, after the pool stopped adding sockets.
func (w *watcher) close() error { return w.set.Close() }
