package e2e_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// TestRebuiltNodeRereadsItsOwnLog: node A, whose only peer is the
// bucket, blocks X (the block's record is in the bucket, named in A's
// log). A loses meta.db, is run through dtfc rebuild-meta, and starts
// with the same peer list. The relay skipped A's own log ("what this
// node wrote, it has"), and the deny list counted as learned at once
// ("no replica peer"): A took X again and served it, though the bucket
// says it is blocked (found by a review helper). Now a rebuilt node
// reads its own log once, and takes uploads only after it has read
// every log in its archives.
func TestRebuiltNodeRereadsItsOwnLog(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "rebuilt")
	a := archiveNodes(t, b, "--archive-interval", "300ms")
	bb := archiveNodes(t, b, "--archive-interval", "300ms")
	A, B := a.Nodes[0].URL, bb.Nodes[0].URL
	hc := newClient(t)

	data := randomBytes(20 << 10)
	_, id := upload(t, hc, A, "x.bin", data)
	keep := randomBytes(5 << 10) // a file A keeps: its meta.db loss needs rebuild-meta
	_, keepID := upload(t, hc, A, "keep.bin", keep)
	eventually(t, 30*time.Second, "B holds both through the bucket", func() bool {
		return localStatus(t, hc, B, id) == http.StatusOK && localStatus(t, hc, B, keepID) == http.StatusOK
	})
	setDeny(t, hc, A, id, `{"status": 451, "reason": "court order"}`)
	eventually(t, 20*time.Second, "the block's record in the bucket, named in A's log, B applied it", func() bool {
		return slices.Equal(b.denyRecords(t, id), []string{"block"}) && slices.Contains(b.logged(t, a), "deny "+id) &&
			hasDenyEntry(t, hc, B, id)
	})
	waitDrained(t, a, 0, b.URL(), 20*time.Second)
	// B, the other site, goes away for the rest of the test: A's only
	// source is the bucket.
	bb.Nodes[0].Stop()

	x := a.Nodes[0]
	rebuiltAfterMetaLoss(t, x)
	eventually(t, 30*time.Second, "A adopted its kept file and takes uploads again", func() bool {
		return localStatus(t, hc, A, keepID) == http.StatusOK && logHas(x, "taking uploads again")
	})
	// A fresh node reading the bucket learns the block: the bucket holds it.
	c := archiveNodes(t, b, "--archive-interval", "300ms")
	C := c.Nodes[0].URL
	eventually(t, 30*time.Second, "a fresh node applied the block from the bucket", func() bool {
		return hasDenyEntry(t, hc, C, id) && localStatus(t, hc, C, keepID) == http.StatusOK
	})
	// A new upload through C, relayed to A: a relay round ran since its
	// restart.
	_, probe := upload(t, hc, C, "probe.bin", randomBytes(3<<10))
	eventually(t, 30*time.Second, "A relayed C's upload (a relay round ran)", func() bool {
		return localStatus(t, hc, A, probe) == http.StatusOK
	})
	// Several more rounds.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && !hasDenyEntry(t, hc, A, id) {
		time.Sleep(100 * time.Millisecond)
	}
	assert.True(t, hasDenyEntry(t, hc, A, id), "A relearned its own block from the bucket")

	status, _, err := tryUpload(t.Context(), hc, A, "x.bin", data)
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnavailableForLegalReasons, status, "A takes a re-upload of the blocked file")
	res, body := get(t, hc, A+"/"+id)
	assert.Equal(t, http.StatusUnavailableForLegalReasons, res.StatusCode, "A serves the blocked file (%d bytes)", len(body))
}

// TestRebuiltNodeTakesUploadsPastAFutureRecord: with archives but no
// replica peer, a rebuilt node takes uploads once its relay has read
// every log in them. A log held at a record dated a year ahead (a writer
// whose clock was wrong) counts as read: nothing could apply that record
// before the clock has caught up, and the node would refuse every
// upload for a year.
func TestRebuiltNodeTakesUploadsPastAFutureRecord(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "future")
	a := archiveNodes(t, b, "--archive-interval", "300ms")
	w := archiveNodes(t, b, "--archive-interval", "300ms")
	A, W := a.Nodes[0].URL, w.Nodes[0].URL
	hc := newClient(t)
	_, x := upload(t, hc, A, "x.bin", randomBytes(10<<10))
	eventually(t, 30*time.Second, "W holds X", func() bool { return localStatus(t, hc, W, x) == http.StatusOK })

	// W's clock jumps a year ahead; its delete of X is dated so.
	clockAYearAhead(t, w, hc)
	deleteID(t, hc, W, x)
	waitDrained(t, w, 0, b.URL(), 30*time.Second)
	w.Nodes[0].Stop()

	n := a.Nodes[0]
	rebuiltAfterMetaLoss(t, n)
	eventually(t, 30*time.Second, "the rebuilt node takes uploads again", func() bool {
		status, _, err := tryUpload(t.Context(), hc, A, "after.bin", randomBytes(1000))
		return err == nil && status == http.StatusCreated
	})
	assert.True(t, logHas(n, "refused a state from an archive: its clock is too far ahead"), "W's log was held at its record")
}

// rebuiltAfterMetaLoss stops node n, removes its meta.db, runs dtfc
// rebuild-meta and starts it again (README, "When the metadata is
// damaged").
func rebuiltAfterMetaLoss(t *testing.T, n *cluster.Node) {
	t.Helper()
	n.Stop()
	require.NoError(t, cluster.DamageMeta(n.MetaPath(), cluster.MetaRemoved))
	n.RebuildMeta()
	n.Start()
}

// clockAYearAhead sets the clock of c's node 0 a year ahead and waits
// until an upload to it is dated so.
func clockAYearAhead(t *testing.T, c *cluster.Cluster, hc *http.Client) {
	t.Helper()
	c.Nodes[0].SetClock(365 * 24 * time.Hour)
	eventually(t, 10*time.Second, "an upload to the node is dated a year ahead", func() bool {
		_, pid := upload(t, hc, c.Nodes[0].URL, "probe", randomBytes(100))
		_, st := stateOf(t, c, hc, 0, pid)
		return st.Clock >= clockAt(time.Now().Add(300*24*time.Hour))
	})
}
