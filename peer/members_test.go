package peer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

// TestLookupWhileMembersApply: a lookup that could not ask a member is
// no proof that nobody knows the ID. Between taking a membership change
// (a node just added again learns it) and making peers of it, the node
// has records of members but no remote for them: a DELETE there must be
// recorded, not answered 404 (soak seed 42: a DELETE on a node added
// again answered 404 for an acknowledged upload). So must a node started
// to join that has not joined yet.
func TestLookupWhileMembersApply(t *testing.T) {
	id := dtfc.ID{1, 2, 3}
	c, _ := newLoneCluster(t)
	_, err := c.Lookup(t.Context(), id, false)
	assert.ErrorIs(t, err, ErrNotFound)
	assert.NotErrorIs(t, err, ErrPeersUnreachable, "alone, with no member: every peer (none) answered")

	now := dtfc.TimestampAt(time.Now())
	assert.True(t, c.members.merge([]Member{
		{Node: c.store.NodeID(), URL: c.opts.Me, Role: RoleReplica, Clock: now},
		{Node: "other", URL: "http://other.invalid:1", Role: RoleReplica, Clock: now},
	}, nil, 0))
	_, err = c.Lookup(t.Context(), id, false)
	assert.ErrorIs(t, err, ErrPeersUnreachable, "a member with no remote yet")

	// Once removed, that member is no longer one to ask.
	assert.True(t, c.members.merge([]Member{
		{Node: "other", URL: "http://other.invalid:1", Role: RoleReplica, Clock: now + 1, Removed: true},
	}, nil, 0))
	_, err = c.Lookup(t.Context(), id, false)
	assert.NotErrorIs(t, err, ErrPeersUnreachable)

	// Started to join, not joined yet: nobody was asked.
	j, _ := newLoneCluster(t)
	j.opts.Join = []string{"http://member.invalid:1"}
	j.joined.Store(false)
	_, err = j.Lookup(t.Context(), id, false)
	assert.ErrorIs(t, err, ErrPeersUnreachable, "not joined yet")
}

// TestMemberChangeAfterHeldRecord: a membership change made here is
// dated after the record of its member held here, whatever the wall
// clock says: here a record dated ahead (within max_clock_offset) and
// loaded at start, which the clock never observed.
func TestMemberChangeAfterHeldRecord(t *testing.T) {
	c, _ := newLoneCluster(t)
	held := Member{Node: "a", URL: "http://a.invalid:1", Role: RoleReplica, Clock: dtfc.TimestampAt(time.Now().Add(30 * time.Second))}
	require.True(t, c.members.merge([]Member{held}, nil, 0))
	removal := held
	removal.Removed = true
	require.NoError(t, c.setMember(removal))
	got, _ := c.members.get("a")
	assert.True(t, got.Removed)
	assert.Greater(t, got.Clock, held.Clock)
}

// TestMemberChangeWaitsForRecordAhead: a record of a member received
// dated beyond max_clock_offset is refused but kept aside; a change of
// that member made here waits until it is within the offset, takes it,
// and is dated after it (soak seed 79: a node 6 s ahead left, was added
// again through another a moment later, and its removal, dated ahead,
// won over the acknowledged addition). One too far ahead to wait for
// refuses the change, unless a removal is forced.
func TestMemberChangeWaitsForRecordAhead(t *testing.T) {
	c, _ := newLoneCluster(t)
	c.opts.MaxClockOffset = time.Second
	now := time.Now()
	at := func(d time.Duration) dtfc.Timestamp { return dtfc.TimestampAt(now.Add(d)) }
	node := func(name string) func(Member) bool { return func(m Member) bool { return m.Node == name } }

	ahead := Member{Node: "b", URL: "http://b.invalid:1", Role: RoleReplica, Removed: true, Clock: at(time.Second + 300*time.Millisecond)}
	assert.False(t, c.mergeMembers([]Member{ahead}))
	_, ok := c.members.get("b")
	assert.False(t, ok, "taken beyond the offset")
	begin := time.Now()
	require.NoError(t, c.awaitAhead(t.Context(), node("b")))
	assert.GreaterOrEqual(t, time.Since(begin), 200*time.Millisecond, "did not wait")
	got, _ := c.members.get("b")
	assert.Equal(t, ahead, got, "taken once within the offset")
	readd := ahead
	readd.Removed = false
	require.NoError(t, c.setMember(readd))
	got, _ = c.members.get("b")
	assert.False(t, got.Removed)
	assert.Greater(t, got.Clock, ahead.Clock)
	assert.Empty(t, c.members.pendingAhead(node("b")), "an older record kept aside is forgotten")

	// One too far ahead to wait for refuses the change at once.
	far := Member{Node: "b", URL: "http://b.invalid:1", Role: RoleReplica, Removed: true, Clock: at(time.Hour)}
	assert.False(t, c.mergeMembers([]Member{far}))
	begin = time.Now()
	assert.ErrorIs(t, c.awaitAhead(t.Context(), node("b")), ErrMemberAhead)
	assert.Less(t, time.Since(begin), time.Second)
	assert.NoError(t, c.awaitAhead(t.Context(), node("a")), "another member's record does not hold this one")
	// (AddMember goes ahead in that case: every node with a right clock
	// refuses that record; TestReaddAfterSkewedLeave adds through HTTP.)

	// A removal refuses too, unless forced: a node whose clock ran a
	// year ahead must still be removable.
	_, err := c.RemoveMember(t.Context(), "http://b.invalid:1", false)
	assert.ErrorIs(t, err, ErrMemberAhead)
	got, _ = c.members.get("b")
	assert.False(t, got.Removed)
	m, err := c.RemoveMember(t.Context(), "http://b.invalid:1", true)
	require.NoError(t, err)
	assert.True(t, m.Removed)
}

// TestLookupCountsTheLocalState: a peer's state equal to this node's
// counts. A DELETE (or HEAD) that found no record here asks the peers; if
// the upload's replication lands here meanwhile, every peer's state
// equals the local one, and not counting them answered 404 for a file
// this node held (CI, TestLastWriterWins/delete_racing_its_upload's_
// replication). A state older than the local one still does not count.
func TestLookupCountsTheLocalState(t *testing.T) {
	c, store := newLoneCluster(t)
	id := putBytes(t, store, []byte("landed while the peers were asked"))
	up, err := store.Stat(id)
	require.NoError(t, err)
	c.setPeers([]Peer{{URL: "http://fake.invalid", Role: RoleReplica}})
	c.mem.Load().byURL["http://fake.invalid"].node = &fakeNode{t: t,
		StatFunc: func(context.Context, dtfc.ID) (NodeState, error) { return NodeState{State: up, Held: true}, nil },
	}
	for _, held := range []bool{false, true} {
		st, err := c.Lookup(t.Context(), id, held)
		require.NoError(t, err, "held %v", held)
		assert.Equal(t, up, st)
	}

	_, err = store.Delete(id, false)
	require.NoError(t, err)
	for _, held := range []bool{false, true} {
		_, err := c.Lookup(t.Context(), id, held)
		assert.ErrorIs(t, err, ErrNotFound, "held %v: the upload a newer local delete removed", held)
	}
}

// TestLookupSettlesWhomToAskFirst: a peer left out of a lookup counts as
// one that could not be asked even if, by the time the others answered,
// the reason it was left out is gone (the soak, seed 77 in CI: a node
// back from a stop longer than the expiry took an upload while marked
// expired; a DELETE on another node left it out, the mark was lifted
// while the other peers said "not found", and the DELETE answered 404
// for the acknowledged upload). So is a member with no remote when the
// lookup began, given one meanwhile.
func TestLookupSettlesWhomToAskFirst(t *testing.T) {
	id := dtfc.ID{7, 7}
	notFound := func(context.Context, dtfc.ID) (NodeState, error) {
		return NodeState{}, fmt.Errorf("peer: %w", errPeerNotFound)
	}

	t.Run("a mark lifted meanwhile", func(t *testing.T) {
		c, _ := newLoneCluster(t)
		c.setPeers([]Peer{{URL: "http://marked.invalid", Role: RoleReplica}, {URL: "http://other.invalid", Role: RoleReplica}})
		marked := c.mem.Load().byURL["http://marked.invalid"]
		marked.setExpired(expiryMark{URL: marked.URL, Horizon: dtfc.TimestampAt(time.Now())})
		marked.node = &fakeNode{t: t} // never asked while marked
		c.mem.Load().byURL["http://other.invalid"].node = &fakeNode{t: t,
			StatFunc: func(ctx context.Context, id dtfc.ID) (NodeState, error) {
				marked.setExpired(expiryMark{}) // it resynced, and said so
				return notFound(ctx, id)
			},
		}
		_, err := c.Lookup(t.Context(), id, false)
		assert.ErrorIs(t, err, ErrPeersUnreachable, "the marked peer was never asked")
		// Asked again, with the mark gone, it is asked.
		marked.node = &fakeNode{t: t, StatFunc: notFound}
		_, err = c.Lookup(t.Context(), id, false)
		assert.ErrorIs(t, err, ErrNotFound)
		assert.NotErrorIs(t, err, ErrPeersUnreachable, "every peer answered")
	})

	t.Run("a member's remote made meanwhile", func(t *testing.T) {
		c, _ := newLoneCluster(t)
		now := dtfc.TimestampAt(time.Now())
		require.True(t, c.members.merge([]Member{
			{Node: c.store.NodeID(), URL: c.opts.Me, Role: RoleReplica, Clock: now},
			{Node: "late", URL: "http://late.invalid", Role: RoleReplica, Clock: now},
		}, nil, 0))
		c.setPeers([]Peer{{URL: "http://other.invalid", Role: RoleReplica}})
		other := &fakeNode{t: t,
			StatFunc: func(ctx context.Context, id dtfc.ID) (NodeState, error) {
				// The member's remote is made while this peer answers.
				c.setPeers([]Peer{{URL: "http://other.invalid", Role: RoleReplica}, {URL: "http://late.invalid", Role: RoleReplica}})
				c.mem.Load().byURL["http://late.invalid"].node = &fakeNode{t: t}
				return notFound(ctx, id)
			},
		}
		c.mem.Load().byURL["http://other.invalid"].node = other
		_, err := c.Lookup(t.Context(), id, false)
		assert.ErrorIs(t, err, ErrPeersUnreachable, "the member was never asked")
	})
}
