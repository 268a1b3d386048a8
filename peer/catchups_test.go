package peer

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestCatchUps: a full offer starts a catch-up, bytes pushed keep it, a
// short offer or the window's end ends it; a peer is deferred for at
// most the bound in a row; senders that are neither catching up nor
// deferred are forgotten past maxCatchUps.
func TestCatchUps(t *testing.T) {
	now := time.Unix(1000, 0)
	cs := newCatchUps(time.Minute)
	cs.now = func() time.Time { return now }
	cs.window, cs.bound = 5*time.Second, 2*time.Minute

	assert.False(t, cs.catchingUp("p"), "no offer yet")
	cs.offered("p", pushBatch-1)
	assert.Empty(t, cs.peers, "a short offer from a stranger is not remembered")
	cs.offered("p", pushBatch)
	assert.True(t, cs.catchingUp("p"))
	now = now.Add(4 * time.Second)
	cs.pushed("p")
	now = now.Add(4 * time.Second)
	assert.True(t, cs.catchingUp("p"), "bytes pushed keep it")
	now = now.Add(5 * time.Second)
	assert.False(t, cs.catchingUp("p"), "past the window")
	cs.pushed("p")
	assert.False(t, cs.catchingUp("p"), "bytes alone start nothing")
	cs.offered("p", pushBatch)
	cs.offered("p", 3)
	assert.False(t, cs.catchingUp("p"), "the feed ran dry")

	assert.True(t, cs.mayDefer("p"))
	assert.True(t, cs.deferred("p"), "the first deferral of a run")
	now = now.Add(time.Minute)
	assert.False(t, cs.deferred("p"))
	assert.True(t, cs.mayDefer("p"))
	now = now.Add(time.Minute)
	assert.False(t, cs.mayDefer("p"), "deferred for the bound")
	cs.compared("p")
	assert.True(t, cs.mayDefer("p"))
	assert.True(t, cs.deferred("p"), "a new run")

	for i := range maxCatchUps {
		cs.offered(strconv.Itoa(i), pushBatch)
	}
	now = now.Add(time.Hour)
	cs.offered("new", pushBatch)
	assert.Len(t, cs.peers, 2, "the stale strangers forgotten, the deferred peer kept")
	assert.True(t, cs.catchingUp("new"))
}
