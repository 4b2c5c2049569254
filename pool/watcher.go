package pool

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watcher watches every idle connection of a pool for a peer's FIN, RST or
// unsolicited bytes. It is one epoll set holding the idle sockets; the epoll
// descriptor itself is registered with Go's netpoller, so the goroutine that
// drains it parks like any network read and wakes the moment a watched
// socket becomes readable. No timer, no thread blocked in epoll_wait, and
// taking a socket out of the set is a single epoll_ctl.
//
// Every open connection's socket is in the set; it is armed only while the
// connection is idle (see arm).
type watcher struct {
	epfd   int      // for epoll_ctl and epoll_wait
	file   *os.File // owns epfd; closing it stops run
	raw    syscall.RawConn
	events [256]unix.EpollEvent // used only by run
	ready  [256]readable        // used only by run
}

// readable is one watched socket that became readable, and what ended it
// as the event flags tell: an error or hang-up is an RST, a read hang-up a
// FIN, and anything else bytes nobody asked for.
type readable struct {
	id    uint64
	cause Cause
}

func causeOfEvent(events uint32) Cause {
	switch {
	case events&(unix.EPOLLERR|unix.EPOLLHUP) != 0:
		return CauseRST
	case events&unix.EPOLLRDHUP != 0:
		return CauseFIN
	default:
		return CauseUnsolicited
	}
}

func newWatcher() (*watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("pool: epoll_create1: %w", err)
	}
	// Non-blocking, so os.NewFile registers it with the netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("pool: epoll fd non-blocking: %w", err)
	}
	file := os.NewFile(uintptr(epfd), "unstuck-idle-watch")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("pool: epoll fd: %w", err)
	}
	return &watcher{epfd: epfd, file: file, raw: raw}, nil
}

// Each connection is registered once, at dial, and then armed while idle
// and disarmed while in use: EPOLL_CTL_MOD costs less than adding and
// removing it every time. Armed events are edge-triggered: each arrival (a
// FIN, an RST, a byte) is reported once, so a socket in transit (handed
// out, not yet disarmed) never makes the watcher spin. A FIN already queued
// when a socket is armed is reported at once all the same: epoll polls the
// socket on MOD. Disarmed, only EPOLLERR and EPOLLHUP can be reported (the
// kernel always reports those); the pool ignores them for a busy
// connection, whose own read sees the error.
const (
	armedEvents    = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET
	disarmedEvents = unix.EPOLLET
)

func (w *watcher) ctl(op, fd int, events uint32, id uint64) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	return unix.EpollCtl(w.epfd, op, fd, &ev)
}

// register adds a new connection's socket, disarmed. Closing the socket
// removes it.
func (w *watcher) register(fd int, id uint64) error {
	return w.ctl(unix.EPOLL_CTL_ADD, fd, disarmedEvents, id)
}

// arm starts watching an idle connection.
func (w *watcher) arm(fd int, id uint64) error {
	return w.ctl(unix.EPOLL_CTL_MOD, fd, armedEvents, id)
}

// disarm stops watching a connection about to serve a request.
func (w *watcher) disarm(fd int, id uint64) error {
	return w.ctl(unix.EPOLL_CTL_MOD, fd, disarmedEvents, id)
}

// run drains readiness events and calls onReadable with the id of each
// socket that became readable, until close is called. The ids may be stale
// (the connection was handed out after the event fired): onReadable checks.
func (w *watcher) run(onReadable func(events []readable, woke time.Time)) {
	// The netpoller watches epfd edge-triggered, so drain it until
	// epoll_wait finds nothing before parking again.
	_ = w.raw.Read(func(fd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(fd), w.events[:], 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return false // park until epfd is readable again
			}
			woke := time.Now()
			for i := range w.events[:n] {
				ev := &w.events[i]
				w.ready[i] = readable{
					id:    uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32,
					cause: causeOfEvent(ev.Events),
				}
			}
			onReadable(w.ready[:n], woke)
		}
	})
}

// close stops run. Call it once, after the pool stopped adding sockets.
func (w *watcher) close() error { return w.file.Close() }
