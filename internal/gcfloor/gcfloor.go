// Package gcfloor keeps the garbage collector's heap goal at or above a
// floor while the live heap is small.
//
// Go sets the next collection at GOGC percent above the live heap, and
// at no less than 4 MiB. A node serving small files keeps little alive
// (about 1 MiB) and allocates a few KiB per request, so at GOGC=100 it
// collected some 40 times a second under load, 5-6% of its CPU
// (GODEBUG=gctrace=1, 2026-12-05). Raising GOGC for a small live heap
// makes that rare at the cost of a bounded, fixed amount of memory (the
// floor); as the live heap grows the percent comes back down to the
// base, so a large heap grows by no more than GOGC would let it.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// runtimeMinimum is the runtime's least heap goal at GOGC=100, which it
// scales with the percent: at percent p the goal is never below
// runtimeMinimum × p/100.
const runtimeMinimum = 4 << 20

// Floor is a running floor (Start); Stop ends it.
type Floor struct {
	floor, base uint64
	mu          sync.Mutex // held while the percent is set
	stopped     bool
	sample      []metrics.Sample
}

// Start keeps the heap goal at least floor bytes from the next collection
// on, with base (GOGC's percent, e.g. 100) as the percent for a live heap
// at or above the floor. The percent is set anew after every collection.
func Start(floor uint64, base int) *Floor {
	if base <= 0 {
		base = 100
	}
	f := &Floor{floor: floor, base: uint64(base),
		sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	f.adjust()
	f.arm()
	return f
}

// Stop ends the floor and sets the percent back to the base.
func (f *Floor) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	debug.SetGCPercent(int(f.base))
}

// sentinel is garbage at birth: its finalizer runs after the next
// collection, adjusts, and arms a new one. It holds a pointer so that it
// is never one of the tiny allocations a block shares (whose finalizers
// may wait for the whole block).
type sentinel struct{ f *Floor }

func (f *Floor) arm() {
	s := &sentinel{f: f}
	runtime.SetFinalizer(s, func(*sentinel) {
		if f.adjust() {
			f.arm()
		}
	})
}

// adjust sets the percent that puts the goal at the floor for the live
// heap of the last collection, unless the floor was stopped (false).
func (f *Floor) adjust() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	metrics.Read(f.sample)
	var live uint64
	if f.sample[0].Value.Kind() == metrics.KindUint64 {
		live = f.sample[0].Value.Uint64()
	}
	debug.SetGCPercent(int(Percent(live, f.floor, f.base)))
	return true
}

// Percent is the GOGC percent that puts the heap goal at about floor for
// a live heap of live bytes (0: none measured yet), and never below
// base. The goal is the greater of live × (1 + percent/100) and the
// runtime's minimum scaled by the percent, so the percent is the least
// of the two that reach the floor.
func Percent(live, floor, base uint64) uint64 {
	p := floor * 100 / runtimeMinimum
	if live > 0 && live < floor {
		p = min(p, (floor-live)*100/live)
	} else if live >= floor {
		p = base
	}
	return max(p, base)
}
