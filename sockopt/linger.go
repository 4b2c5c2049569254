// Package sockopt holds every socket option unstuck sets, in one place, so a
// reader can see what the kernel is asked to do with each connection.
package sockopt

import (
	"fmt"
	"strings"
	"time"
)

// LingerMode says how a connection is closed.
type LingerMode uint8

const (
	// Graceful is a plain close: the kernel sends FIN and flushes unsent
	// data in the background. The side that closes first keeps TIME_WAIT.
	Graceful LingerMode = iota
	// Reset is SO_LINGER with a zero timeout: close sends RST, discards
	// unsent data and leaves nothing in TIME_WAIT or CLOSE_WAIT.
	Reset
	// Bounded is SO_LINGER with a timeout: close flushes unsent data for up
	// to Linger.Timeout, then resets. close(2) blocks while it flushes, so
	// callers run such closes off the request path.
	Bounded
)

// Linger is the parsed value of a `linger` config key. The zero value is
// Graceful.
type Linger struct {
	Mode    LingerMode
	Timeout time.Duration // only for Bounded; whole seconds, at least 1s
}

// ParseLinger parses "graceful", "reset" or a duration such as "2s".
func ParseLinger(s string) (Linger, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "graceful":
		return Linger{Mode: Graceful}, nil
	case "reset":
		return Linger{Mode: Reset}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return Linger{}, fmt.Errorf("linger %q: want graceful, reset or a duration such as 2s", s)
	}
	if d <= 0 {
		return Linger{}, fmt.Errorf("linger %q: a duration must be positive (use reset for an immediate RST)", s)
	}
	// SO_LINGER takes whole seconds; round up so "500ms" still flushes.
	secs := (d + time.Second - 1) / time.Second
	return Linger{Mode: Bounded, Timeout: secs * time.Second}, nil
}

// String returns the config spelling of l.
func (l Linger) String() string {
	switch l.Mode {
	case Reset:
		return "reset"
	case Bounded:
		return l.Timeout.String()
	default:
		return "graceful"
	}
}

// Blocks reports whether close(2) may block while the kernel flushes.
func (l Linger) Blocks() bool { return l.Mode == Bounded }

// Kind names the close l makes: "graceful", "reset" or "bounded" (a metric
// label value).
func (l Linger) Kind() string {
	switch l.Mode {
	case Reset:
		return "reset"
	case Bounded:
		return "bounded"
	default:
		return "graceful"
	}
}
