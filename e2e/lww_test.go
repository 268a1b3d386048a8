package e2e_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
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
		assertDeletedEverywhere(t, c, hc, id, "the delete lost to the older upload")
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
				last := peerStatus(t, c, 1, j).LastContact
				if !last.After(posted.Add(2 * time.Second)) {
					return false
				}
			}
			return true
		})
		assertDeletedEverywhere(t, c, hc, id, "an old upload resurrected the file")
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

// assertDeletedEverywhere waits for the cluster to converge, then checks
// that no node holds id and every node holds its tombstone; why says what
// a live record would mean.
func assertDeletedEverywhere(t *testing.T, c *cluster.Cluster, hc *http.Client, id, why string) {
	t.Helper()
	c.WaitConverged(t, converge)
	assertNowhere(t, c, id)
	for i := range c.Nodes {
		status, st := stateOf(t, c, hc, i, id)
		if assert.Equal(t, http.StatusOK, status, "node %d: record of the deleted ID", i) {
			assert.True(t, st.Deleted, "node %d: %s: %+v", i, why, st)
		}
	}
}
