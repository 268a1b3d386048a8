package peer_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// TestReplacedAtSameURLComesBack: A and B list each other in
// their peer list files, membership is on (B added as a member). B dies
// and is removed (DELETE /_members). The operator replaces it at the
// same URL with a fresh node: an emptied basedir, a new identity (the
// README: "One identity replaced by another at a URL (a node's basedir
// replaced)"; "empty its basedir and let it join as a new node"). The new
// node is no removed member. But A's entry for that URL has no remote
// (it was left out), so it goes by the identity its stored cursor was
// kept for, the removed B's, and was left out "until it answers
// otherwise", which it never could: nothing asked it. A never had it as
// a peer again and pushed it nothing (found by a review helper, in a
// fix of that day). Such an entry is a peer again now; a leave still
// counts nothing a removed member accepted.
func TestReplacedAtSameURLComesBack(t *testing.T) {
	nodes := startCluster(t, nodeOpts{run: true}, nodeOpts{run: true})
	a, b := nodes[0], nodes[1]
	_, err := a.Cluster.AddMember(t.Context(), b.URL, "")
	require.NoError(t, err)
	eventually(t, 15*time.Second, func() bool { return len(b.Cluster.Members()) == 2 }, "B knows both members")
	first := a.put(randomBytes(t, 4<<10))
	b.eventuallyHolds(first, true)
	eventually(t, 15*time.Second, func() bool { return a.status().Cluster.Peers[0].Queue == 0 }, "A's queue to B empty")
	oldID := b.Store.NodeID()

	b.down()
	_, err = a.Cluster.RemoveMember(t.Context(), b.URL, false)
	require.NoError(t, err)
	eventually(t, 15*time.Second, func() bool { return len(a.Cluster.Peers()) == 0 }, "A leaves the removed B's entry out")

	// B is replaced at its URL: a fresh basedir, a new identity, the same
	// peer list file (A).
	b.Dir = t.TempDir()
	b.start()
	require.NotEqual(t, oldID, b.Store.NodeID())
	_, err = a.Cluster.Refresh(t.Context()) // the operator re-reads A's peer list, for good measure
	require.NoError(t, err)

	data := randomBytes(t, 4<<10)
	code, body := upload(t, a, "after-replace", data, "")
	require.Equal(t, http.StatusCreated, code, body)
	id := dtfc.Sum(data)

	deadline := time.Now().Add(40 * time.Second) // 4 membership exchanges
	for time.Now().Before(deadline) {
		if slices.ContainsFunc(a.Cluster.Peers(), func(p peer.Peer) bool { return p.URL == b.URL }) && b.holds(id) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("40 s after B's URL got a new node (identity %s, not a removed member), A's peers are %v (the entry stays out, judged by the cursor kept for the removed %s) and the new node holds A's upload: %v",
		b.Store.NodeID(), a.Cluster.Peers(), oldID, b.holds(id))
}

// memberRemoved reports whether n holds a record of node saying it is
// removed (ok false: no record).
func memberRemoved(n *node, nodeID string) (removed, ok bool) {
	for _, m := range n.Cluster.Members() {
		if m.Node == nodeID {
			return m.Removed, true
		}
	}
	return false, false
}
