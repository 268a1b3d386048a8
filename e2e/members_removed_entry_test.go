package e2e_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
)

// TestLeaveCountsNoRemovedEntry: peer list files with
// membership turned on (README: "Both may be mixed"). Node 0 (replica)
// takes an upload; node 1 (replica) accepts it; node 2 is a cache (it
// is pushed no uploads). Node 1 then stops answering node 0 without
// closing connections, and the operator removes it (DELETE /_members on
// node 0). "A removal wins over the peer list files too: an entry that
// answers with a removed member's identity is left out until the member
// is added again." Node 0 leaves the entry out once, and with it the
// remote that knew the entry's identity; at the next recomputation of
// its peers (here PUT /refreshpeers of the unchanged file; any change of
// the membership records or a restart does the same) the entry has no
// identity (node 1 answers nothing) and is a replica peer again, with
// the cursor the removed node reached, and node 0's leave was accepted
// (found by a review helper). It must be refused (no member but node 0
// holds the upload), as it is right after the removal.
func TestLeaveCountsNoRemovedEntry(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Roles: []dtfc.Role{2: dtfc.RoleCache}})
	hc := newClient(t)

	// Membership on: node 0 adds node 1 (it records itself too).
	require.Equal(t, http.StatusOK, addMember(t, hc, c.Nodes[0].URL, c.Nodes[1].URL))
	eventually(t, converge, "node 1 knows it is a member", func() bool { return len(membersOf(t, c, 1)) >= 2 })

	data := randomBytes(16 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "only-on-0", data)
	eventually(t, converge, "node 1 holds the upload", func() bool { return assertHeldQuiet(c, 1, id) })
	eventually(t, converge, "node 0's queue to node 1 is empty", func() bool { return queueLength(t, c, 0, 1) == 0 })

	// Node 1 stops answering node 0 (the link holds every request), and
	// is removed through node 0.
	c.Delay(0, 1, time.Hour)
	removeMember(t, hc, c.Nodes[0].URL, c.Nodes[1].URL)
	// The operator re-reads node 0's peer list, unchanged (PUT
	// /refreshpeers; a restart does the same).
	req, err := http.NewRequest(http.MethodPut, c.Nodes[0].URL+"/refreshpeers", nil)
	require.NoError(t, err)
	res, err := hc.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	t.Logf("after PUT /refreshpeers, node 0's peers: %v (node 1 is %s to it)", peersOf(t, c, 0), c.PeerURL(0, 1))

	status, body := membersRequest(t, hc, http.MethodDelete, c.Nodes[0].URL, c.Nodes[0].URL, false)
	held := []bool{assertHeldQuiet(c, 0, id), assertHeldQuiet(c, 1, id), assertHeldQuiet(c, 2, id)}
	require.NotEqual(t, http.StatusOK, status,
		"node 0's leave was accepted (%s) while no member but node 0 held upload %s (held by nodes 0, 1 (removed), 2 (cache): %v): its peer list entry for the removed node 1, which answers nothing, is a replica peer again, counted with the removed node's cursor",
		strings.TrimSpace(body), short(id), held)
}
