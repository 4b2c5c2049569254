// Package sockstate counts TCP sockets by state, as the kernel reports them
// in /proc/net/tcp and /proc/net/tcp6 of the current network namespace.
//
// Tests use it to prove that a socket reached (or left) CLOSE_WAIT; the
// metrics endpoint uses it at scrape time, so a read streams the files and
// allocates per read, not per socket.
//
// A read is not a snapshot: the kernel fills the file a page at a time, so a
// socket that changes hash bucket while it is being read may be missed or
// seen twice. Callers that wait for a state poll (see WaitFor).
package sockstate

import "strconv"

// State is a TCP state in the kernel's numbering (include/net/tcp_states.h).
type State uint8

// The kernel's TCP states. The zero State is not a valid state.
const (
	Established State = iota + 1
	SynSent
	SynRecv
	FinWait1
	FinWait2
	TimeWait
	Close
	CloseWait
	LastAck
	Listen
	Closing
	NewSynRecv
)

// NumStates is one more than the largest valid State, so an array indexed by
// State can hold a count for each.
const NumStates = int(NewSynRecv) + 1

var stateNames = [NumStates]string{
	Established: "ESTABLISHED",
	SynSent:     "SYN_SENT",
	SynRecv:     "SYN_RECV",
	FinWait1:    "FIN_WAIT1",
	FinWait2:    "FIN_WAIT2",
	TimeWait:    "TIME_WAIT",
	Close:       "CLOSE",
	CloseWait:   "CLOSE_WAIT",
	LastAck:     "LAST_ACK",
	Listen:      "LISTEN",
	Closing:     "CLOSING",
	NewSynRecv:  "NEW_SYN_RECV",
}

// String returns the kernel's name of s, such as "CLOSE_WAIT", or
// "State(N)" for a number the kernel does not use.
func (s State) String() string {
	if int(s) < NumStates && s != 0 {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Valid reports whether s is one of the kernel's TCP states.
func (s State) Valid() bool { return s != 0 && int(s) < NumStates }

// States returns every valid State in kernel order, for a caller (such as a
// metrics collector) that reports a zero for states that have no socket.
func States() []State {
	out := make([]State, 0, NumStates-1)
	for s := Established; s.Valid(); s++ {
		out = append(out, s)
	}
	return out
}
