package e2e_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/versitygw"
)

// TestTierRebuiltKeepsEvictedRecords: a tier whose only peer is the
// archive evicts blobs the archive holds, then loses meta.db and is run
// through dtfc rebuild-meta. README ("rebuild-meta on a tier"): "the
// evicted files' records come back from the peers and the archive by
// anti-entropy and the relay". They did not: they were in the tier's own
// log only, which its relay skipped, so the tier forgot them, and moving
// it to another bucket as the README says lost them (found by a review
// helper). Then the tier is moved: every acknowledged upload must still
// read back.
func TestTierRebuiltKeepsEvictedRecords(t *testing.T) {
	const size, limit = 40 << 10, 100 << 10
	s := versitygw.ForTest(t)
	old := newBucket(t, s, "old")
	c := archiveNodes(t, old, "--archive-interval", "300ms", "--max-bytes", fmt.Sprint(limit))
	hc := newClient(t)
	x := c.Nodes[0]
	base := x.URL

	blobs := map[string][]byte{}
	for i := range 5 {
		data := randomBytes(size + i)
		_, id := upload(t, hc, base, fmt.Sprintf("t%d", i), data)
		blobs[id] = data
	}
	eventually(t, 30*time.Second, "the archive took every upload and the tier went under max_bytes", func() bool {
		n, ok := queueOf(t, c, 0, old.URL())
		return ok && n == 0 && heldBytes(c, 0) <= limit
	})
	files := c.BlobFiles(0)
	var evicted []string
	for id := range blobs {
		if _, held := files[id]; !held {
			evicted = append(evicted, id)
		}
	}
	require.NotEmpty(t, evicted)
	require.NotEmpty(t, files)

	rebuiltAfterMetaLoss(t, x)
	eventually(t, 30*time.Second, "the held files resolved, uploads taken", func() bool {
		st, err := c.Status(0)
		return err == nil && st.Unconfirmed == 0 && logHas(x, "taking uploads again")
	})
	// The relay had 10 s (some 30 rounds) to bring the evicted records back.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && status(t, c, 0).Blobs < int64(len(blobs)) {
		time.Sleep(200 * time.Millisecond)
	}
	assert.EqualValues(t, len(blobs), status(t, c, 0).Blobs, "the tier knows every live file again (evicted: %d)", len(evicted))

	// Moving the tier to another bucket, as README says.
	nb := newBucket(t, s, "new")
	require.NoError(t, os.WriteFile(x.PeerList, []byte(old.entry()+"\n"+nb.entry()), 0o644))
	code, body := refresh(t, hc, c)
	require.Equal(t, http.StatusOK, code, body)
	waitDrained(t, c, 0, nb.URL(), 30*time.Second)
	require.NoError(t, os.WriteFile(x.PeerList, []byte(nb.entry()), 0o644))
	code, body = refresh(t, hc, c)
	require.Equal(t, http.StatusOK, code, body)

	for _, id := range evicted {
		assert.True(t, nb.holds(id, blobs[id]), "the new bucket holds evicted %s", id[:12])
		res, got := get(t, hc, base+"/"+id)
		assert.Equal(t, http.StatusOK, res.StatusCode, "GET of acknowledged upload %s after the move", id[:12])
		assert.True(t, bytes.Equal(blobs[id], got), "its bytes")
	}
}
