// Package epoll is an epoll set whose own descriptor is registered with
// Go's netpoller. The goroutine that drains it (Run) parks like any network
// read and wakes the moment a socket in the set reports an event: no
// timer, and no thread blocked in epoll_wait.
//
// The sockets in the set stay registered with the netpoller too (they are
// ordinary net.Conns); the set only adds a second, independent watch with
// its own event mask, which is what lets a pool watch idle upstream sockets
// for a FIN, or a listener watch idle app sockets for the next request,
// without a goroutine per socket.
package epoll

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Set is one epoll set. Add, Mod and Del may be called from any goroutine;
// Run from one.
type Set struct {
	fd     int
	file   *os.File // owns fd; closing it ends Run
	raw    syscall.RawConn
	events [256]unix.EpollEvent // Run's
	ready  [256]Event           // Run's
	wakes  atomic.Uint64
}

// Event is one socket's readiness: the id it was added with and the
// EPOLL* flags the kernel reported.
type Event struct {
	ID     uint64
	Events uint32
}

// New creates an empty set; name shows in /proc/PID/fd listings.
func New(name string) (*Set, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	// Non-blocking, so os.NewFile registers it with the netpoller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("epoll fd non-blocking: %w", err)
	}
	file := os.NewFile(uintptr(fd), name)
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("epoll fd: %w", err)
	}
	return &Set{fd: fd, file: file, raw: raw}, nil
}

func (s *Set) ctl(op, fd int, events uint32, id uint64) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	return unix.EpollCtl(s.fd, op, fd, &ev)
}

// Add watches fd for events, reporting id. Closing fd removes it (as long
// as no duplicate of it stays open).
func (s *Set) Add(fd int, events uint32, id uint64) error {
	return s.ctl(unix.EPOLL_CTL_ADD, fd, events, id)
}

// Mod changes what fd is watched for, and re-arms an EPOLLONESHOT watch.
func (s *Set) Mod(fd int, events uint32, id uint64) error {
	return s.ctl(unix.EPOLL_CTL_MOD, fd, events, id)
}

// Del stops watching fd.
func (s *Set) Del(fd int) error {
	return unix.EpollCtl(s.fd, unix.EPOLL_CTL_DEL, fd, nil)
}

// Run calls handle with each batch of events until Close. The slice is
// reused: handle must not keep it. Ids may be stale (the socket was taken
// out of use since the event fired); handle checks.
func (s *Set) Run(handle func([]Event)) {
	// The netpoller watches the epoll fd edge-triggered, so drain it until
	// epoll_wait finds nothing before parking again.
	_ = s.raw.Read(func(fd uintptr) bool {
		s.wakes.Add(1)
		for {
			n, err := unix.EpollWait(int(fd), s.events[:], 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return false // park until the epoll fd is readable again
			}
			for i := range s.events[:n] {
				ev := &s.events[i]
				s.ready[i] = Event{
					ID:     uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32,
					Events: ev.Events,
				}
			}
			handle(s.ready[:n])
		}
	})
}

// Wakes counts Run's wake-ups, the first being its start: tests use it to
// show what does not wake a set.
func (s *Set) Wakes() uint64 { return s.wakes.Load() }

// Close ends Run and releases the set.
func (s *Set) Close() error { return s.file.Close() }
