package peer_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// Membership mixed with a peer list file (README: "Both may be mixed").
// B, listed in A's file, is a member; it holds A's upload (A's cursor for
// it is caught up). B dies (or hangs) and is removed (DELETE
// /_members?url=B on A). "A removal wins over the peer list files too":
// A leaves B's entry out, and A, now without any replica peer, refuses
// to leave (no replica to pass its upload on to). Leaving the entry out
// drops its remote, the only place its identity was known; at the next
// recomputation of A's peers (a restart, PUT /refreshpeers, any change of
// the membership records) the entry has no identity until B answers,
// which it never does, so it is a replica peer again, with the cursor
// the removed B had reached. A's leave was then accepted, counting the
// removed B's acknowledgement: the upload only A held (among the
// members) was stranded on a removed node (found by a review helper).
// Now an entry without an identity goes by the one its cursor was kept
// for, and no leave counts a removed member's cursor.

// removedFileEntry starts A and B, gets A's upload to B, removes the
// dead B through A, and checks that A's leave is refused then.
func removedFileEntry(t *testing.T) (a *node, id string) {
	nodes := startCluster(t, nodeOpts{run: true}, nodeOpts{run: true})
	a, b := nodes[0], nodes[1]

	// Membership on: B is added as a member through A.
	_, err := a.Cluster.AddMember(t.Context(), b.URL, "")
	require.NoError(t, err)
	eventually(t, 15*time.Second, func() bool { return len(b.Cluster.Members()) == 2 }, "B knows both members")

	// An upload to A, accepted by B.
	data := randomBytes(t, 8<<10)
	code, body := upload(t, a, "only-here", data, "")
	require.Equal(t, http.StatusCreated, code, body)
	id = dtfc.Sum(data).String()
	queueTo := func(n *node, url string) int64 {
		for _, p := range n.status().Cluster.Peers {
			if p.URL == url {
				return p.Queue
			}
		}
		return -1
	}
	eventually(t, 15*time.Second, func() bool { return queueTo(a, b.URL) == 0 }, "A's queue to B is empty")

	// B dies; the operator removes it through A.
	b.down()
	_, err = a.Cluster.RemoveMember(t.Context(), b.URL, false)
	require.NoError(t, err)
	eventually(t, 15*time.Second, func() bool { return len(a.Cluster.Peers()) == 0 }, "A leaves the removed B's file entry out")

	// Without a replica peer, A refuses to leave: its upload would be
	// stranded (TestLastReplicaLeaveRefused).
	_, err = a.Cluster.RemoveMember(t.Context(), a.URL, false)
	require.True(t, errors.Is(err, peer.ErrNotDrained), "right after the removal, A's leave: %v", err)
	return a, id
}

// leaveRefused checks that A, whose only other copy is on the removed B,
// still may not leave.
func leaveRefused(t *testing.T, a *node, id, after string) {
	peers := a.Cluster.Peers()
	_, err := a.Cluster.RemoveMember(t.Context(), a.URL, false)
	require.True(t, errors.Is(err, peer.ErrNotDrained),
		"after %s, A's leave was accepted (err %v) while no member but A holds upload %s: its peer list entry for the removed B, answering nothing, was a replica peer again (A's peers then: %v), counted with the removed node's cursor",
		after, err, id[:8], peers)
}

func TestLeaveCountsNoRemovedEntryAfterRestart(t *testing.T) {
	a, id := removedFileEntry(t)
	a.down()
	a.start()
	leaveRefused(t, a, id, "a restart")
}

func TestLeaveCountsNoRemovedEntryAfterRefresh(t *testing.T) {
	a, id := removedFileEntry(t)
	_, err := a.Cluster.Refresh(t.Context()) // the same file
	require.NoError(t, err)
	leaveRefused(t, a, id, "PUT /refreshpeers of the unchanged peer list")
}
