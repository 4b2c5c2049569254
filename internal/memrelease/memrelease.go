// Package memrelease gives memory back to the operating system when the
// process goes idle.
//
// A burst (thousands of connections opening at once) leaves Go's heap and
// goroutine-stack spans large after it has passed. Go's background
// scavenger returns free pages slowly and only down to its heap goal, and
// dead goroutines' stacks are freed only at a GC, which an idle process
// runs every two minutes. For a sidecar sized by its idle footprint that
// is resident memory for nothing. When nothing has happened for a while,
// forced GCs and a scavenge (releaseAll) cost a few milliseconds of one
// core and nobody is waiting.
package memrelease

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"
)

// maxGap is the longest wait between two releases while idle: Go's own
// forced GC period, after which the runtime does the work anyway.
const maxGap = 2 * time.Minute

// Run releases memory (releaseAll, or release if not nil) when
// activity has not changed for after, and again after 2×, 4×, … that while
// it stays unchanged, until ctx ends. Activity resets the schedule. The
// first release also runs after start-up, once idle for after.
func Run(ctx context.Context, after time.Duration, activity func() uint64, release func()) {
	if after <= 0 {
		return
	}
	if release == nil {
		release = releaseAll
	}
	tick := time.NewTicker(max(after/4, time.Millisecond))
	defer tick.Stop()
	last := activity()
	idleSince := time.Now()
	next := after // idle time at which to release next
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if n := activity(); n != last {
				last, idleSince, next = n, now, after
				continue
			}
			if now.Sub(idleSince) < next {
				continue
			}
			release()
			next = min(next*2, next+maxGap)
		}
	}
}

// releaseAll returns to the OS what the process no longer uses. Two
// collections, not one: a sync.Pool keeps what it held at one GC (in its
// victim cache) until the next, and after a burst fasthttp's pools hold
// the request contexts and buffers of every connection released meanwhile.
// debug.FreeOSMemory's own GC then frees them and returns the pages.
func releaseAll() {
	runtime.GC()
	debug.FreeOSMemory()
}
