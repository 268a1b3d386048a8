package peer_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// offerAs posts an offer of n tombstones to n's changes route as the
// pusher of the node identity from: a full round (256) says it has more
// to send. The tombstones are of IDs no test uses.
func offerAs(t *testing.T, to *node, from string, n int) {
	t.Helper()
	clock := dtfc.TimestampAt(time.Now())
	states := make([]dtfc.State, n)
	for i := range states {
		states[i] = dtfc.State{ID: dtfc.Sum([]byte("offered " + strconv.Itoa(i))), Deleted: true, Clock: clock, Node: "test"}
	}
	body, err := json.Marshal(map[string]any{"changes": states})
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, to.URL+peer.InternalPrefix+"/changes", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set(peer.HeaderFrom, from)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// catchingUpPair returns a node holding one blob x and no peer (it runs
// nothing: x reaches the other by anti-entropy alone), and a running
// node (anti-entropy every 200 ms) to which the first's pusher seems to
// be catching up: it was offered a full round in the first's name
// before it learned of the first.
func catchingUpPair(t *testing.T) (a, c *node, x dtfc.ID) {
	a = newNode(t, nodeOpts{})
	a.writePeers()
	a.start()
	x = a.put(randomBytes(t, 3000))
	c = newNode(t, running(nodeOpts{}))
	c.writePeers()
	c.start()
	offerAs(t, c, a.Store.NodeID(), 256)
	c.writePeers(a)
	code, body := refresh(t, c)
	require.Equal(t, 200, code, body)
	return a, c, x
}

// TestAntiEntropyDefersToCatchUp: while a peer's offers are full rounds
// (it is catching this node up by pushes), anti-entropy pulls nothing
// from it, round after round; once an offer is not full (its feed ran
// dry), the next round pulls what the pushes did not bring.
func TestAntiEntropyDefersToCatchUp(t *testing.T) {
	t.Cleanup(peer.SetCatchUpTimes(time.Hour, time.Hour))
	a, c, x := catchingUpPair(t)
	eventually(t, 10*time.Second, func() bool {
		return c.metric("dtfc_antientropy_deferred_total", a.URL) >= 3
	}, "three rounds deferred")
	require.False(t, c.holds(x), "nothing pulled from a peer catching this node up")
	require.Zero(t, c.metric("dtfc_antientropy_repairs_total", "upload"))

	offerAs(t, c, a.Store.NodeID(), 1) // the last round: the feed ran dry
	c.eventuallyHolds(x, true)
	// Counted once the pull returned, a moment after the blob is held.
	eventually(t, 10*time.Second, func() bool {
		return c.metric("dtfc_antientropy_repairs_total", "upload") == 1
	}, "one pull counted")
}

// TestAntiEntropyDeferralIsBounded: a peer whose offers stay full rounds
// (its feed never runs dry) is still compared once it has been deferred
// for the bound in a row, and what only anti-entropy brings comes.
func TestAntiEntropyDeferralIsBounded(t *testing.T) {
	const bound = time.Second // above two intervals of 200 ms
	t.Cleanup(peer.SetCatchUpTimes(time.Hour, bound))
	start := time.Now()
	a, c, x := catchingUpPair(t)
	c.eventuallyHolds(x, true)
	require.GreaterOrEqual(t, time.Since(start), bound, "deferred for the bound first")
	require.GreaterOrEqual(t, c.metric("dtfc_antientropy_deferred_total", a.URL), 2.0)
}
