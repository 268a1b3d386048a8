package peer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// testInstances returns an instances whose clock is *now.
func testInstances(now *time.Time) *instances {
	in := newInstances(time.Minute)
	in.now = func() time.Time { return *now }
	return in
}

// seeEverySecond advances *now by a second, times times, each time
// seeing every token of identity n; it reports whether any sighting was
// a conflict.
func seeEverySecond(in *instances, now *time.Time, times int, tokens ...string) bool {
	conflict := false
	for range times {
		*now = now.Add(time.Second)
		for _, tok := range tokens {
			conflict = in.saw("n", tok, *now) || conflict
		}
	}
	return conflict
}

// TestInstancesRestartIsNoConflict: a node that restarts sends a new
// token from then on; its old process's last request, under way when
// the new one answered, is no second process.
func TestInstancesRestartIsNoConflict(t *testing.T) {
	now := time.Unix(1000, 0)
	in := testInstances(&now)
	at := func(d time.Duration) time.Time { return now.Add(d) }
	for i := range 20 {
		assert.False(t, in.saw("n", "old", at(time.Duration(i)*time.Second)))
	}
	now = now.Add(20 * time.Second)
	assert.False(t, in.saw("n", "new", now))
	assert.False(t, in.saw("n", "old", now.Add(time.Second)), "a last answer of the old process, sent before the restart")
	for range 5 {
		assert.False(t, in.saw("n", "old", now.Add(10*time.Second)), "the old process's requests, held up on a stalled link, arrive together")
	}
	assert.False(t, seeEverySecond(in, &now, 20, "new"))
	assert.False(t, in.conflict("n"))
}

// TestInstancesTwoProcesses: two tokens seen in turn are two processes;
// the conflict ends a window after the last sighting of one of them.
func TestInstancesTwoProcesses(t *testing.T) {
	now := time.Unix(1000, 0)
	in := testInstances(&now)
	in.saw("n", "a", now)
	conflict := seeEverySecond(in, &now, 10, "b", "a")
	assert.True(t, conflict)
	assert.True(t, in.conflict("n"))
	assert.False(t, in.conflict("m"), "another identity is not concerned")

	// Under load: each token many times a millisecond.
	busy := testInstances(&now)
	start := now
	busy.saw("n", "a", now)
	conflict = false
	for i := range 5000 {
		at := start.Add(time.Duration(i) * time.Millisecond)
		conflict = busy.saw("n", "b", at) || conflict
		conflict = busy.saw("n", "a", at) || conflict
	}
	assert.True(t, conflict, "two busy processes")
	seeEverySecond(in, &now, 50, "a")
	assert.True(t, in.conflict("n"), "b was seen within the window")
	now = now.Add(15 * time.Second)
	in.saw("n", "a", now)
	assert.False(t, in.conflict("n"), "b was not seen for a window")
	now = now.Add(time.Hour)
	in.saw("n", "a", now)
	assert.False(t, in.conflict("n"))
	now = now.Add(time.Second)
	assert.True(t, in.saw("n", "b", now), "b, cut off for an hour, is known again at once")

	// b restarts, cut off again: two processes once they interleave.
	now = now.Add(2 * time.Minute)
	in.saw("n", "a", now)
	assert.False(t, in.saw("n", "c", now))
	seeEverySecond(in, &now, 5, "a", "c")
	assert.True(t, in.conflict("n"), "c and a in turn: two processes")

	// Once the copy is gone, a's restarts are no conflict.
	now = now.Add(2 * time.Minute)
	in.saw("n", "a", now)
	assert.False(t, in.conflict("n"), "b and c not seen for a window")
	now = now.Add(time.Second)
	assert.False(t, in.saw("n", "a2", now), "a restarted")
	assert.False(t, seeEverySecond(in, &now, 10, "a2"))
}

// TestInstancesOldNodes: answers without a token (a dtfc from before
// them) or without an identity are never a conflict.
func TestInstancesOldNodes(t *testing.T) {
	now := time.Unix(1000, 0)
	in := testInstances(&now)
	for range 10 {
		now = now.Add(time.Second)
		assert.False(t, in.saw("n", "", now))
		assert.False(t, in.saw("", "a", now))
		assert.False(t, in.saw("", "b", now))
	}
}

// TestInstancesOwnTaken: this node's identity is taken while any source
// showed it within the window; a peer's later answer from another
// identity (or this process) ends what that peer showed.
func TestInstancesOwnTaken(t *testing.T) {
	now := time.Unix(1000, 0)
	in := testInstances(&now)
	assert.Empty(t, in.ownTaken())
	in.takenBy("http://a", "a says so")
	now = now.Add(time.Second)
	in.takenBy("", "a request")
	assert.Equal(t, "a request", in.ownTaken(), "the latest")
	in.answered("http://a")
	assert.Equal(t, "a request", in.ownTaken())
	now = now.Add(2 * time.Minute)
	assert.Empty(t, in.ownTaken(), "over a window ago")
	in.takenBy("http://a", "a says so")
	assert.Equal(t, "a says so", in.ownTaken())
	in.answered("http://a")
	assert.Empty(t, in.ownTaken())
}
