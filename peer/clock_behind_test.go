package peer_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClockBehindNodeRefusesEveryChange: a node whose clock is a year
// behind every peer's it heard from refuses every change made on it
// (503), of any ID: not only those whose refused state its store kept
// (4,096 at most, in memory: one dropped, or forgotten at a restart, let
// an upload dated a year before the delete it came after be acknowledged
// and then undone; found by a review helper). Once its clock is right it
// takes changes again.
func TestClockBehindNodeRefusesEveryChange(t *testing.T) {
	var offset atomic.Int64
	offset.Store(int64(-365 * 24 * time.Hour))
	wall := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	nodes := startCluster(t, nodeOpts{run: true, wall: wall}, nodeOpts{run: true})
	a, b := nodes[0], nodes[1]

	// A hears B's clock: B's push of an upload (refused, dated ahead).
	b.put(randomBytes(t, 100))
	var code int
	var body string
	eventually(t, converge, func() bool {
		code, body = upload(t, a, "new.bin", randomBytes(t, 1000), "")
		return code == http.StatusServiceUnavailable
	}, "A refuses an upload of a new ID")
	assert.Contains(t, body, "behind every peer")
	id := b.put(randomBytes(t, 200))
	assert.Equal(t, http.StatusServiceUnavailable, del(t, a, id), "a delete on A")
	req, err := http.NewRequest(http.MethodPut, a.URL+"/_deny/"+id.String(), strings.NewReader(`{"status": 451}`))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "a block on A")
	_, err = a.Cluster.AddMember(t.Context(), b.URL, "")
	assert.Error(t, err, "a member added through A")

	offset.Store(0)
	eventually(t, converge, func() bool {
		code, body = upload(t, a, "new.bin", randomBytes(t, 1000), "")
		return code == http.StatusCreated
	}, "A takes uploads once its clock is right")
}

// TestMemberAddOnNodeBehindRefused: the membership twin of
// TestClockBehindNodeRefusesUpload. A's clock goes a year behind; B is
// removed through C (A refuses C's record, dated a year ahead of A's
// clock, and keeps it). The operator then adds B back through A (PUT
// /_members): AddMember goes ahead of the record "too far ahead to wait
// for" ("every node with a right clock refuses that record anyway") and
// answered success, dated a year before the removal it came after. But
// here A's clock is the wrong one: C and B hold the removal, newer, and
// the acknowledged addition was lost everywhere, on A too once its clock
// was right (found by a review helper). It is refused now.
func TestMemberAddOnNodeBehindRefused(t *testing.T) {
	var offset atomic.Int64
	wallA := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	nodes := startCluster(t, nodeOpts{run: true, wall: wallA}, nodeOpts{run: true}, nodeOpts{run: true})
	a, b, c := nodes[0], nodes[1], nodes[2]
	_, err := a.Cluster.AddMember(t.Context(), b.URL, "")
	require.NoError(t, err)
	_, err = a.Cluster.AddMember(t.Context(), c.URL, "")
	require.NoError(t, err)
	for _, n := range nodes {
		eventually(t, 20*time.Second, func() bool { return len(n.Cluster.Members()) == 3 }, "%s knows the 3 members", n.URL)
	}
	bID := b.Store.NodeID()

	offset.Store(int64(-365 * 24 * time.Hour)) // A's clock a year behind
	_, err = c.Cluster.RemoveMember(t.Context(), b.URL, false)
	require.NoError(t, err)
	if r, _ := memberRemoved(a, bID); r {
		t.Skip("A took the removal dated a year ahead of its clock")
	}

	// Later in real time, the operator adds B back through A: refused
	// (A has heard its peers' clocks, a year ahead of its own; and it
	// kept the removal's record, too far ahead to wait for).
	_, err = a.Cluster.AddMember(t.Context(), b.URL, "")
	require.Error(t, err, "A (a year behind) took the addition of B after C's removal of it")
}
