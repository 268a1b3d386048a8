package peer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// TestFeedClockCountsOnlyRunningTime: the expiry counts the time this
// node was running. Dated every purge period, the feed ages with the
// wall clock; after a stop (or a clock jump) longer than the expiry, the
// entries of before it are as old as the time the node ran since, not
// older, so nothing is past the expiry and no peer is marked expired for
// the node's own absence. The feed's dates survive a restart.
func TestFeedClockCountsOnlyRunningTime(t *testing.T) {
	_, store := newLoneCluster(t)
	opts := Options{Me: "http://me.invalid", TombstoneRetention: 10 * time.Second, TombstoneExpiry: time.Minute}
	c, err := New(store, opts)
	require.NoError(t, err)
	require.Equal(t, time.Second, c.purgeEvery())
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	putBytes(t, store, []byte("first"))
	first := store.LastSeq()
	assert.Zero(t, c.tickFeedClock(at(0)))
	// Running, dated every second: after the expiry, the first entry is
	// past it.
	var seq uint64
	for s := 1; s <= 61; s++ {
		seq = c.tickFeedClock(at(time.Duration(s) * time.Second))
	}
	assert.Equal(t, first, seq, "running for longer than the expiry: the first entry is past it")
	putBytes(t, store, []byte("second"))
	second := store.LastSeq()
	assert.Equal(t, first, c.tickFeedClock(at(62*time.Second)))

	// Stopped for ten minutes, then started again (a new Cluster on the
	// same store): the entry made just before the stop is not past the
	// expiry however long the stop was, until the node has run for it.
	c, err = New(store, opts)
	require.NoError(t, err)
	restart := at(10 * time.Minute)
	for s := 0; s < 55; s++ {
		seq = c.tickFeedClock(restart.Add(time.Duration(s) * time.Second))
		require.Less(t, seq, second, "%d s after the restart: the entry of before the stop is past the expiry", s)
	}
	for s := 55; s <= 65; s++ {
		seq = c.tickFeedClock(restart.Add(time.Duration(s) * time.Second))
	}
	assert.Equal(t, second, seq, "a minute of running after the restart")

	// A clock that jumps a year ahead while the node runs is a gap too.
	putBytes(t, store, []byte("third"))
	third := store.LastSeq()
	c.tickFeedClock(restart.Add(66 * time.Second))
	assert.Less(t, c.tickFeedClock(restart.AddDate(1, 0, 0)), third, "a year's jump of the clock")
}

// TestMarkNotRenewedRightAfterLift: a peer marked expired that resynced
// has its mark lifted; its cursor here has not caught up yet, and it used
// to be marked again within a second, and resync again, over and over
// (the full-length archive soak, seed 84, showed it flap for 40 s). It is
// given one expiry before it may be marked again.
func TestMarkNotRenewedRightAfterLift(t *testing.T) {
	_, store := newLoneCluster(t)
	now := time.Now()
	c, err := New(store, Options{Me: "http://me.invalid", TombstoneRetention: time.Second, TombstoneExpiry: time.Minute,
		Wall: func() time.Time { return now }})
	require.NoError(t, err)
	id := putBytes(t, store, []byte("gone"))
	_, err = store.Delete(id, false)
	require.NoError(t, err)
	horizon := dtfc.TimestampAt(now.Add(time.Hour))

	r := c.newRemote(Peer{URL: "http://127.0.0.1:9", Role: RoleReplica})
	r.mu.Lock()
	r.nodeID = "5eed"
	r.mu.Unlock()
	late := []peerAck{{r, 0}}
	require.NoError(t, c.markLate(horizon, store.LastSeq(), late))
	_, marked := c.markOf(r)
	require.True(t, marked, "a peer that never acknowledged the delete is marked")

	require.True(t, c.clearExpired("5eed", horizon))
	_, marked = c.markOf(r)
	require.False(t, marked)
	now = now.Add(30 * time.Second)
	require.NoError(t, c.markLate(horizon, store.LastSeq(), late))
	_, marked = c.markOf(r)
	assert.False(t, marked, "marked again within the expiry after its mark was lifted")

	now = now.Add(31 * time.Second)
	require.NoError(t, c.markLate(horizon, store.LastSeq(), late))
	_, marked = c.markOf(r)
	assert.True(t, marked, "still behind an expiry after the lift: marked again")
}

// TestLearnedKeepsGreatestHorizon: a node listed under two URLs, marked
// under each before its identity was known (with different horizons:
// each URL's pusher had its own cursor), keeps the greater horizon once
// both marks move under its identity. A resync against the lesser
// horizon must not lift the mark.
func TestLearnedKeepsGreatestHorizon(t *testing.T) {
	_, store := newLoneCluster(t)
	c, err := New(store, Options{Me: "http://me.invalid", TombstoneRetention: time.Second, TombstoneExpiry: time.Minute})
	require.NoError(t, err)
	now := time.Now()
	high, low := dtfc.TimestampAt(now), dtfc.TimestampAt(now.Add(-time.Hour))
	for _, order := range [][2]dtfc.Timestamp{{high, low}, {low, high}} {
		r1 := c.newRemote(Peer{URL: "http://127.0.0.1:9", Role: RoleReplica})
		r2 := c.newRemote(Peer{URL: "http://127.0.0.2:9", Role: RoleReplica})
		require.NoError(t, c.markExpired(r1, order[0]))
		require.NoError(t, c.markExpired(r2, order[1]))
		for _, r := range []*remote{r1, r2} {
			r.mu.Lock()
			r.nodeID = "5eed"
			r.mu.Unlock()
			c.learned(r)
		}
		m, ok := c.markOfNode("5eed")
		require.True(t, ok)
		assert.Equal(t, high, m.Horizon, "the mark moved under the identity keeps the greater horizon")
		c.loadExpiries()
		m, ok = c.markOfNode("5eed")
		require.True(t, ok)
		assert.Equal(t, high, m.Horizon, "as persisted")
		assert.Len(t, c.expired.marks, 1, "one mark for the node, none left under a URL")
		assert.False(t, c.clearExpired("5eed", low), "a resync against the lesser horizon must not lift the mark")
		require.True(t, c.clearExpired("5eed", high))
	}
}
