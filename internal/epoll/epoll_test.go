package epoll

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

// Run reports a watched socket's readiness with its id, once per arming
// with EPOLLONESHOT, and returns when the set is closed.
func TestRunReportsEventsAndEndsOnClose(t *testing.T) {
	s, err := New("test")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan Event, 8)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(func(evs []Event) {
			for _, ev := range evs {
				got <- ev
			}
		})
	}()
	client, server := testpeer.TCPPair(t)
	fd, err := sockopt.FD(server)
	if err != nil {
		t.Fatal(err)
	}
	const id = 1<<40 + 7 // both halves of the id survive
	events := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT)
	if err := s.Add(fd, events, id); err != nil {
		t.Fatal(err)
	}
	client.Write([]byte("x"))
	select {
	case ev := <-got:
		if ev.ID != id || ev.Events&unix.EPOLLIN == 0 {
			t.Fatalf("event %+v; want id %d with EPOLLIN", ev, uint64(id))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for a readable socket")
	}
	// One-shot: the byte is still unread but nothing more is reported
	// until Mod re-arms; re-armed level-triggered, it fires at once.
	if err := s.Mod(fd, events, id); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		if ev.ID != id {
			t.Fatalf("event %+v after re-arming", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event after re-arming a readable socket")
	}
	client.Close()
	if err := s.Del(fd); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		t.Fatalf("event %+v for a socket no longer in the set", ev)
	default:
	}
	s.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}
