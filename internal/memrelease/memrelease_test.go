package memrelease

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReleasesWhenIdleAndBacksOff checks the schedule: nothing while
// activity moves, a release once it stops for after, later ones further
// apart, and a fresh schedule after new activity.
func TestReleasesWhenIdleAndBacksOff(t *testing.T) {
	const after = 40 * time.Millisecond
	var activity atomic.Uint64
	released := make(chan time.Time, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, after, activity.Load, func() { released <- time.Now() })
	}()
	defer func() { cancel(); <-done }()

	// Busy for 5×after: no release.
	busyUntil := time.Now().Add(5 * after)
	for time.Now().Before(busyUntil) {
		activity.Add(1)
		select {
		case at := <-released:
			t.Fatalf("released at %v while busy", at)
		case <-time.After(after / 8):
		}
	}
	idle := time.Now()
	first := <-released
	if d := first.Sub(idle); d < after/2 || d > 10*after { // the last activity was up to after/8 before idle
		t.Fatalf("first release %v after going idle; want about %v", d, after)
	}
	second := <-released
	third := <-released
	if g1, g2 := second.Sub(first), third.Sub(second); g2 <= g1 {
		t.Fatalf("gaps %v then %v; want them growing", g1, g2)
	}

	// New activity starts the schedule over.
	activity.Add(1)
	restart := time.Now()
	for {
		at := <-released
		if at.After(restart) {
			if d := at.Sub(restart); d > 10*after {
				t.Fatalf("release %v after new activity went idle; want about %v", d, after)
			}
			break
		}
	}
}

func TestZeroNeverReleases(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(context.Background(), 0, func() uint64 { return 0 }, func() { t.Error("released") })
	}()
	select {
	case <-done: // returned at once
	case <-time.After(5 * time.Second):
		t.Fatal("Run(0) did not return")
	}
}

// pooledObjects puts n objects in a fresh sync.Pool, as fasthttp keeps
// released connections' request contexts, and counts their collection.
// (Under the race detector Put drops some at random; those are freed at the
// first GC.)
func pooledObjects(n int) (*sync.Pool, *atomic.Int32) {
	p := new(sync.Pool)
	var freed atomic.Int32
	for range n {
		obj := new([1 << 10]byte)
		runtime.SetFinalizer(obj, func(*[1 << 10]byte) { freed.Add(1) })
		p.Put(obj)
	}
	return p, &freed
}

// One release frees what sync.Pools held, which one GC alone does not: a
// pool keeps it in its victim cache until the next GC.
func TestReleaseAllFreesPooledObjects(t *testing.T) {
	const n = 20
	// Witness: after one GC (debug.FreeOSMemory) the pool still hands
	// out what it held (from its victim cache), so it is still in memory.
	p, _ := pooledObjects(n)
	debug.FreeOSMemory()
	if p.Get() == nil {
		t.Fatal("one GC emptied a sync.Pool; this test no longer shows anything")
	}

	p, freed := pooledObjects(n)
	releaseAll()
	deadline := time.Now().Add(5 * time.Second)
	for freed.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("releaseAll freed %d of %d pooled objects", freed.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
	runtime.KeepAlive(p)
}
