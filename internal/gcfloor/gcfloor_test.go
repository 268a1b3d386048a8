package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mi = 1 << 20
	for _, c := range []struct {
		live, floor, base, want uint64
	}{
		{0, 32 * mi, 100, 800},       // nothing measured: the runtime's minimum, scaled to the floor
		{1 * mi, 32 * mi, 100, 800},  // the minimum reaches the floor first
		{8 * mi, 32 * mi, 100, 300},  // 8 MiB × 4
		{20 * mi, 32 * mi, 100, 100}, // 60% would do; never below the base
		{32 * mi, 32 * mi, 100, 100},
		{500 * mi, 32 * mi, 100, 100},
		{500 * mi, 32 * mi, 50, 50},
		{1 * mi, 2 * mi, 100, 100}, // a floor under the runtime's own minimum
	} {
		if got := Percent(c.live, c.floor, c.base); got != c.want {
			t.Errorf("Percent(%d MiB live, %d MiB floor, base %d) = %d, want %d",
				c.live/mi, c.floor/mi, c.base, got, c.want)
		}
	}
}

// gcState reads the runtime's current percent and heap goal.
func gcState() (percent, goal uint64) {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/heap/goal:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// collectUntil runs collections until ok holds for the runtime's state
// (the floor adjusts in a finalizer, shortly after a collection), or
// fails after a deadline.
func collectUntil(t *testing.T, what string, ok func(percent, goal uint64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		p, g := gcState()
		if ok(p, g) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: percent %d, goal %d MiB", what, p, g>>20)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var keep []byte

// TestFloorFollowsLiveHeap checks the floor against the real runtime: a
// small live heap gets a goal near the floor, a large one the base
// percent (its goal not raised), and Stop gives the base back for good.
func TestFloorFollowsLiveHeap(t *testing.T) {
	const floor = 64 << 20
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	f := Start(floor, 100)
	defer f.Stop()

	collectUntil(t, "small live heap", func(p, g uint64) bool { return p > 100 && g >= floor*9/10 })

	keep = make([]byte, 256<<20)
	collectUntil(t, "256 MiB live", func(p, g uint64) bool { return p == 100 && g >= 2*uint64(len(keep)) })

	keep = nil
	collectUntil(t, "live heap released", func(p, g uint64) bool { return p > 100 && g >= floor*9/10 && g < 2*floor })

	f.Stop()
	if p, _ := gcState(); p != 100 {
		t.Fatalf("after Stop: percent %d, want 100", p)
	}
	// Collections after Stop, and a finalizer of their own that ran (the
	// one goroutine that runs finalizers got past what they queued).
	ran := make(chan struct{})
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) { close(ran) })
	deadline := time.Now().Add(10 * time.Second)
	for done := false; !done; {
		runtime.GC()
		select {
		case <-ran:
			done = true
		case <-time.After(5 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no finalizer ran after 10 s of collections")
			}
		}
	}
	if p, _ := gcState(); p != 100 {
		t.Fatalf("after Stop and collections: percent %d, want 100", p)
	}
}
