package peer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dtfc/dtfc"
)

func TestMembersMerge(t *testing.T) {
	now := time.Now()
	clock := &dtfc.Clock{Wall: func() time.Time { return now }}
	at := func(d time.Duration) dtfc.Timestamp { return dtfc.TimestampAt(now.Add(d)) }
	ms := members{byNode: map[string]Member{}}

	a := Member{Node: "a", URL: "http://a:1/", Role: RoleReplica, Clock: at(-time.Minute)}
	assert.True(t, ms.merge([]Member{a}, clock, time.Minute))
	got, _ := ms.get("a")
	assert.Equal(t, "http://a:1", got.URL, "URLs are normalized")

	// An older record, or the same one, changes nothing.
	older := a
	older.URL, older.Clock = "http://a:2", at(-2*time.Minute)
	assert.False(t, ms.merge([]Member{older, a}, clock, time.Minute))

	// A newer URL of the same node replaces the old one.
	moved := a
	moved.URL, moved.Clock = "http://a:3", at(-30*time.Second)
	assert.True(t, ms.merge([]Member{moved}, clock, time.Minute))
	_, ok := ms.byURL("http://a:1")
	assert.False(t, ok)
	_, ok = ms.byURL("http://a:3/")
	assert.True(t, ok)

	// At the same clock a removal wins, whichever arrives first.
	removed := moved
	removed.Removed = true
	assert.True(t, ms.merge([]Member{removed}, clock, time.Minute))
	assert.False(t, ms.merge([]Member{moved}, clock, time.Minute))
	got, _ = ms.get("a")
	assert.True(t, got.Removed)

	// A record dated further ahead than the offset is refused: a node
	// whose clock runs a year ahead cannot make itself unremovable.
	future := Member{Node: "a", URL: "http://a:3", Role: RoleReplica, Clock: at(365 * 24 * time.Hour)}
	assert.False(t, ms.merge([]Member{future}, clock, time.Minute))
	got, _ = ms.get("a")
	assert.True(t, got.Removed)

	// One within the offset is taken and observed: a change made here
	// afterwards is dated after it.
	ahead := Member{Node: "b", URL: "http://b:1", Role: RoleCache, Clock: at(30 * time.Second)}
	assert.True(t, ms.merge([]Member{ahead}, clock, time.Minute))
	assert.Greater(t, clock.Now(), ahead.Clock)

	// Records without a node or a URL are ignored.
	assert.False(t, ms.merge([]Member{{URL: "http://x:1"}, {Node: "x"}}, clock, time.Minute))
	assert.Len(t, ms.list(), 2)
}
