// Package wait is the tests' one poll with a deadline: for a state that
// another goroutine, process or the kernel reaches on its own (a socket
// leaving CLOSE_WAIT, a metric counting a close), where there is no event
// to wait on.
package wait

import (
	"testing"
	"time"
)

// Interval is how often Until and UntilNil check.
const Interval = 5 * time.Millisecond

// Until checks cond every Interval until it holds, and fails the test
// (t.Fatalf, naming what) if it does not within the bound. cond runs on
// the test's goroutine.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	UntilNil(t, within, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

// UntilNil is Until for a check that says what is still wrong: it fails
// the test with the last error the check returned.
func UntilNil(t testing.TB, within time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-deadline.C:
			if err == errNotYet {
				t.Fatalf("not within %v: %s", within, what)
			}
			t.Fatalf("not within %v: %s: %v", within, what, err)
		case <-tick.C:
		}
	}
}

type notYet struct{}

func (notYet) Error() string { return "not yet" }

var errNotYet error = notYet{}
