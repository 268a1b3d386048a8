package e2e_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// TestLWWOrderings: per ID, the latest operation wins everywhere,
// whatever order the nodes learn of the operations in (Consistency 2).
func TestLWWOrderings(t *testing.T) {
	// A delete on node 1 racing the replication of its own upload from
	// node 0: node 1 does not hold the file yet, but node 0 knows it, so
	// the delete succeeds, and wins over the upload arriving after it.
	t.Run("DeleteRacesUpload", func(t *testing.T) {
		c := cluster.Start(t, cluster.Options{Nodes: 3})
		hc := newClient(t)
		c.Latency(0, 1, 300*time.Millisecond)
		c.Latency(0, 2, 300*time.Millisecond)
		data := randomBytes(40 << 10)
		_, id := upload(t, hc, c.Nodes[0].URL, "racing.bin", data)
		status, _ := stateOf(t, c, hc, 1, id)
		t.Logf("node 1's record of the file just before the delete: %d (404: none yet)", status)
		deleteID(t, hc, c.Nodes[1].URL, id)
		c.WaitConverged(t, converge)
		assertNowhere(t, c, id)
		for i := range c.Nodes {
			status, st := stateOf(t, c, hc, i, id)
			if assert.Equal(t, http.StatusOK, status, "node %d: record of the deleted ID", i) {
				assert.True(t, st.Deleted, "node %d: the delete lost to the older upload: %+v", i, st)
			}
		}
		c.HealAll()
		c.CheckNoTemp(t)
	})

	// An upload after a delete stores the file again, everywhere.
	t.Run("UploadAfterDelete", func(t *testing.T) {
		c := cluster.Start(t, cluster.Options{Nodes: 3})
		hc := newClient(t)
		data := randomBytes(30 << 10)
		_, id := upload(t, hc, c.Nodes[0].URL, "again.bin", data)
		c.WaitConverged(t, converge)
		deleteID(t, hc, c.Nodes[1].URL, id)
		c.WaitConverged(t, converge)
		assertNowhere(t, c, id)
		status, _ := upload(t, hc, c.Nodes[2].URL, "again.bin", data)
		assert.Equal(t, http.StatusCreated, status, "node 2 did not hold the file")
		c.WaitConverged(t, converge)
		assertEveryReplica(t, c, id, int64(len(data)))
	})

	// An old upload arriving after a newer delete is accepted ("ok") and
	// changes nothing: the file stays deleted, also after the next
	// anti-entropy rounds.
	t.Run("OldUploadAfterDelete", func(t *testing.T) {
		c := cluster.Start(t, cluster.Options{Nodes: 3})
		hc := newClient(t)
		data := randomBytes(12 << 10)
		_, id := upload(t, hc, c.Nodes[0].URL, "old.bin", data)
		c.WaitConverged(t, converge)
		_, uploaded := stateOf(t, c, hc, 0, id)
		deleteID(t, hc, c.Nodes[0].URL, id)
		c.WaitConverged(t, converge)
		assertNowhere(t, c, id)

		old := wireState{
			ID:    id,
			Clock: clockAt(time.Now().Add(-time.Hour)),
			Node:  uploaded.Node,
			Size:  int64(len(data)),
		}
		body, err := json.Marshal(map[string]any{"changes": []wireState{old}})
		require.NoError(t, err)
		posted := time.Now()
		res, err := hc.Post(c.Nodes[1].URL+"/_internal/changes", "application/json", bytes.NewReader(body))
		require.NoError(t, err)
		answer, _ := io.ReadAll(res.Body)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode, "POST /_internal/changes: %s", answer)
		assert.JSONEq(t, `{"results":["ok"]}`, string(answer))

		c.WaitConverged(t, converge)
		assertNowhere(t, c, id)
		// Node 1 goes through another anti-entropy round with both its
		// peers, then the cluster converges again: still deleted.
		eventually(t, converge, "node 1 contacts both peers again", func() bool {
			for _, j := range []int{0, 2} {
				ts, _ := peerStatus(t, c, 1, j)["last_contact"].(string)
				last, err := time.Parse(time.RFC3339Nano, ts)
				if err != nil || !last.After(posted.Add(2*time.Second)) {
					return false
				}
			}
			return true
		})
		c.WaitConverged(t, converge)
		assertNowhere(t, c, id)
		for i := range c.Nodes {
			status, st := stateOf(t, c, hc, i, id)
			if assert.Equal(t, http.StatusOK, status, "node %d: record of the deleted ID", i) {
				assert.True(t, st.Deleted, "node %d: an old upload resurrected the file: %+v", i, st)
			}
		}
	})
}

// TestRestoredFromOldCopy: a node whose basedir is restored from a copy
// taken before some deletes does not bring the deleted files back
// (Consistency 1 and 2). About 1 s.
func TestRestoredFromOldCopy(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := newClient(t)
	blobs := map[string][]byte{"A": randomBytes(10 << 10), "B": randomBytes(200 << 10), "C": randomBytes(30 << 10)}
	ids := map[string]string{}
	for name, data := range blobs {
		_, ids[name] = upload(t, hc, c.Nodes[0].URL, name, data)
	}
	c.WaitConverged(t, converge)

	n := c.Nodes[2]
	n.Stop()
	snapshot := filepath.Join(t.TempDir(), "node-2-backup")
	require.NoError(t, cluster.CopyDir(n.Basedir, snapshot))
	n.Start()

	deleteID(t, hc, c.Nodes[0].URL, ids["A"])
	deleteID(t, hc, c.Nodes[0].URL, ids["B"])
	c.WaitConverged(t, converge)
	assertNowhere(t, c, ids["A"])
	assertNowhere(t, c, ids["B"])

	n.Stop()
	require.NoError(t, os.RemoveAll(n.Basedir))
	require.NoError(t, cluster.CopyDir(snapshot, n.Basedir))
	require.Contains(t, c.BlobFiles(2), ids["A"], "the restored copy holds A")
	n.Start()
	c.WaitConverged(t, converge)
	assertNowhere(t, c, ids["A"])
	assertNowhere(t, c, ids["B"])
	assertEveryReplica(t, c, ids["C"], int64(len(blobs["C"])))
	c.CheckNoTemp(t)
}

// TestTombstoneRetentionResync: a node away for longer than the tombstone
// retention, while a file it holds was deleted and the delete forgotten,
// resyncs on its return: it drops the file rather than offer it back
// (Consistency 1 and 2). 5 to 15 s per case.
//
//   - Plain: as the story goes.
//   - SlowReturn: the returning node's own requests to its peers are slow
//     (500 ms each way), so its resync takes a few seconds, during which
//     the others run their anti-entropy rounds against it.
//   - CutOffWhileReceiving: the node got the file by a push while its
//     own requests to the cluster failed (links out of it cut), then went
//     away; on its return, the others cannot reach it until it has
//     resynced.
//
// Found failing (dtfc bugs, not the test's): SlowReturn every time and
// Plain about one run in ten, because a resyncing node still serves its
// digests, states and blobs, and its peers' anti-entropy pulls the
// forgotten file from it before it has dropped it (peer.syncWith pulls
// every newer state whether or not the peer says it is synced);
// CutOffWhileReceiving every time, because the resync drops only states
// older than the node's last outgoing exchange, and a state it received
// by a push after that is taken for one made locally.
func TestTombstoneRetentionResync(t *testing.T) {
	for _, tc := range []struct {
		name          string
		slowReturn    time.Duration
		cutWhileGetsX bool
	}{
		{name: "Plain"},
		{name: "SlowReturn", slowReturn: 500 * time.Millisecond},
		{name: "CutOffWhileReceiving", cutWhileGetsX: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testTombstoneRetentionResync(t, tc.slowReturn, tc.cutWhileGetsX)
		})
	}
}

func testTombstoneRetentionResync(t *testing.T, slowReturn time.Duration, cutWhileGetsX bool) {
	const retention = 4 * time.Second
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", retention.String()}})
	hc := newClient(t)
	x, y := randomBytes(50<<10), randomBytes(60<<10)
	_, yID := upload(t, hc, c.Nodes[0].URL, "y.bin", y)
	c.WaitConverged(t, converge)
	if cutWhileGetsX {
		c.Cut(2, 0)
		c.Cut(2, 1)
		// Once node 2 has failed to reach both peers, it is sure to have
		// no exchange in flight that started before the cut.
		for _, j := range []int{0, 1} {
			eventually(t, converge, "node 2 finds node "+strconv.Itoa(j)+" unreachable", func() bool {
				up, _ := peerStatus(t, c, 2, j)["up"].(bool)
				return !up
			})
		}
	}
	_, xID := upload(t, hc, c.Nodes[0].URL, "x.bin", x)
	c.WaitConverged(t, converge)
	require.Contains(t, c.BlobFiles(2), xID)
	_, xState := stateOf(t, c, hc, 0, xID)

	c.Nodes[2].Stop()
	stopped := time.Now()
	c.HealAll()
	deleteID(t, hc, c.Nodes[0].URL, xID)
	c.WaitConverged(t, converge)
	assertNowhere(t, c, xID)
	// The tombstone expires after the retention, and is purged at most
	// a second later.
	eventually(t, converge, "nodes 0 and 1 forget X's tombstone", func() bool {
		s0, _ := stateOf(t, c, hc, 0, xID)
		s1, _ := stateOf(t, c, hc, 1, xID)
		return s0 == http.StatusNotFound && s1 == http.StatusNotFound
	})
	eventually(t, converge, "node 2 away for longer than the retention", func() bool {
		return time.Since(stopped) > retention+500*time.Millisecond
	})
	require.Contains(t, c.BlobFiles(2), xID, "node 2 still holds X on disk")

	if slowReturn > 0 {
		c.Latency(2, 0, slowReturn)
		c.Latency(2, 1, slowReturn)
	}
	if cutWhileGetsX {
		// Nodes 0 and 1 cannot reach node 2 during its resync: what it
		// keeps is its own decision.
		c.Cut(0, 2)
		c.Cut(1, 2)
	}
	c.Nodes[2].Start()
	if slowReturn > 0 || cutWhileGetsX {
		eventually(t, converge, "node 2 finishes its resync", func() bool { return logHas(c.Nodes[2], "resync finished") })
	}
	if cutWhileGetsX {
		status, st := stateOf(t, c, hc, 2, xID)
		assert.Equal(t, http.StatusNotFound, status, "node 2 kept its record of X through its resync: %+v", st)
	}
	c.HealAll()
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		status, st := stateOf(t, c, hc, i, xID)
		assert.Equal(t, http.StatusNotFound, status, "node %d has a record of X, deleted and forgotten: %+v", i, st)
	}
	assertNowhere(t, c, xID)
	assertEveryReplica(t, c, yID, int64(len(y)))
	assert.True(t, logHas(c.Nodes[2], "resync"), "node 2's log does not mention a resync")
	c.CheckNoTemp(t)
	if t.Failed() {
		t.Logf("X was uploaded at %s (its clock); node 2 stopped at %s", time.UnixMilli(int64(xState.Clock>>16)).UTC().Format("15:04:05.000"), stopped.UTC().Format("15:04:05.000"))
		for i, n := range c.Nodes {
			t.Logf("node %d: %s", i, metrics(t, hc, n.URL, "dtfc_antientropy_repairs_total", "dtfc_replication_applied_total", "dtfc_resync_dropped_total", "dtfc_replication_pushed_total"))
		}
	}
}
