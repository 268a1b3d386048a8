package e2e_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// A node whose wall clock is far behind refuses every state the others
// make (max_clock_offset), and keeps their clocks (blobstore/ahead.go). A
// client change of the same ID made on it afterwards, later in real
// time, used to go ahead, dated by its clock before the state it came
// after: acknowledged, then undone everywhere once its clock was set
// right (found by a review helper). It is now refused (503, nothing
// recorded) until the clocks agree.

const yearSkew = 365 * 24 * time.Hour

// setBehind sets node i's clock a year behind and returns once it has
// refused a state of node 0 as dated ahead.
func setBehind(t *testing.T, c *cluster.Cluster, hc *http.Client, i int) {
	t.Helper()
	c.Nodes[i].SetClock(-yearSkew)
	eventually(t, converge, "the node refuses a state of node 0 as dated ahead", func() bool {
		upload(t, hc, c.Nodes[0].URL, "probe", randomBytes(100))
		return peerStatus(t, c, 0, i).ClockRefused > 0
	})
}

// refusedForNow sends req and checks it is refused for the clock: 503,
// Retry-After, a message saying why.
func refusedForNow(t *testing.T, hc *http.Client, req *http.Request, what string) {
	t.Helper()
	res, body := do(t, hc, req)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "%s on the node a year behind: %s", what, body)
	assert.NotEmpty(t, res.Header.Get("Retry-After"), what)
	assert.Contains(t, string(body), "dated", what)
}

// TestClockBehindNodeRefusesDelete: x is uploaded through node 0 (node 2,
// a year behind, refuses it); a client then deletes x through node 2. It
// has no record, asks its peers, learns of the upload, and answered 200:
// the delete, dated before the upload, was undone on every node once
// node 2's clock was set right. A block of x there is refused too.
func TestClockBehindNodeRefusesDelete(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--max-clock-offset", "2s"}})
	hc := newClient(t)
	setBehind(t, c, hc, 2)
	data := randomBytes(3000)
	_, id := upload(t, hc, c.Nodes[0].URL, "doc", data)
	eventually(t, converge, "node 2 refuses x", func() bool {
		return logHas(c.Nodes[2], "sha512 "+id+": blobstore: clock")
	})

	req, err := http.NewRequestWithContext(t.Context(), http.MethodDelete, c.Nodes[2].URL+"/"+id, nil)
	require.NoError(t, err)
	refusedForNow(t, hc, req, "DELETE")
	req, err = http.NewRequestWithContext(t.Context(), http.MethodPut, c.Nodes[2].URL+"/_deny/"+id, strings.NewReader(`{"status": 451}`))
	require.NoError(t, err)
	refusedForNow(t, hc, req, "a block")
	assert.False(t, hasDenyEntry(t, hc, c.Nodes[2].URL, id))

	// Once the clock is right, node 2 takes the upload like the others.
	c.Nodes[2].SetClock(0)
	c.WaitConverged(t, converge)
	assertEveryReplica(t, c, id, int64(len(data)))
}

// TestClockBehindNodeRefusesUpload: x is on every node; node 2's clock
// goes a year behind; x is deleted through node 0 (node 2 refuses the
// delete); a client then uploads x again through node 2. It answered
// 201, dated before the delete it came after, and the delete won on
// every node once node 2's clock was set right: the acknowledged upload
// was lost. It is refused now, and the delete holds.
func TestClockBehindNodeRefusesUpload(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--max-clock-offset", "2s"}})
	hc := newClient(t)
	data := randomBytes(3000)
	_, id := upload(t, hc, c.Nodes[0].URL, "doc", data)
	c.WaitConverged(t, converge)
	setBehind(t, c, hc, 2)
	deleteID(t, hc, c.Nodes[0].URL, id)
	eventually(t, converge, "node 2 refuses the delete of x", func() bool {
		return logHas(c.Nodes[2], "sha512 "+id+": blobstore: clock")
	})

	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, c.Nodes[2].URL+"/doc-again", strings.NewReader(string(data)))
	require.NoError(t, err)
	refusedForNow(t, hc, req, "the upload of x again")

	c.Nodes[2].SetClock(0)
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		_, st := stateOf(t, c, hc, i, id)
		assert.True(t, st.Deleted, "node %d: state %+v", i, st)
	}
	assertNowhere(t, c, id)
}
