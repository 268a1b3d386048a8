package peer_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// TestCacheKeepsUploadsSkippedForAPromotedCache: a cache's
// pusher passes its own uploads without sending them to a peer that is a
// cache (they are "not offered": the cursor moves past them, without a
// request when the batch holds only uploads). When that peer is later a
// replica (a cache promoted to replace a dead replica, the dead one taken
// out of the list), the cursor it kept says it holds those uploads:
// replicaAcked counted them as held by every replica, the cache evicted
// them, and the promoted replica never received them: the acknowledged
// uploads were on no node (found by a review helper). Now the pusher
// keeps where it first skipped one, counts no further for the peer once
// it is not a cache, and goes back there to send them.
//
// Order: R (replica), N (cache), C (cache, max_bytes two files) all list
// each other; R stops; three uploads to C (201), pinned by R's cursor;
// C's pusher to N passes them (N is a cache); N restarts as a replica
// and C's list is refreshed to name N (replica) alone. C must not lose
// any of the three: either it still holds it, or N does.
func TestCacheKeepsUploadsSkippedForAPromotedCache(t *testing.T) {
	_, n, c, datas := cacheWithUploads(t)
	// C's pusher towards N (a cache) passes the three uploads without
	// sending anything (N's queue counts only deletes: a delete made
	// after them tells when the cursor passed them); with R down, C
	// keeps them (R's cursor pins them).
	passedToCache(t, c, n)
	for id := range datas {
		require.True(t, fileHeld(c, id), "C keeps %s while no replica has it", id.String()[:8])
	}

	// The operator promotes N to replica and takes the dead R out of C's
	// list.
	n.down()
	n.o.role = peer.RoleReplica
	n.start()
	c.writePeers(n)
	_, err := c.Cluster.Refresh(t.Context())
	require.NoError(t, err)

	// Every upload stays on C until N holds it, and reaches N.
	uploadsReach(t, c, n, datas, "acknowledged upload %s lost: C evicted it (its cursor for N passed it while N was a cache) and N, now C's only replica, never received it")
	for id, d := range datas {
		resp, body, err := get(n.URL + "/" + id.String() + "?nopeerload=1")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.True(t, bytes.Equal(d, body))
	}
}

// fileHeld reports whether the node's blobs/ holds id's file (looked at
// without opening it: an open would count as a read in a cache's order).
func fileHeld(n *node, id dtfc.ID) bool {
	_, err := os.Stat(n.Store.Path(id))
	return err == nil
}

// cacheWithUploads starts R (replica), N (cache) and C (cache, room for
// two of the uploads), stops R, and uploads three files to C; it returns
// the nodes and the uploads' bytes by ID.
func cacheWithUploads(t *testing.T) (r, n, c *node, datas map[dtfc.ID][]byte) {
	t.Helper()
	const size = 64 << 10
	nodes := startCluster(t,
		nodeOpts{run: true},
		nodeOpts{role: peer.RoleCache, run: true},
		nodeOpts{role: peer.RoleCache, run: true, maxBytes: 2 * size},
	)
	r, n, c = nodes[0], nodes[1], nodes[2]
	r.down() // the only replica dies
	datas = map[dtfc.ID][]byte{}
	for i := range 3 {
		d := randomBytes(t, size)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, fmt.Sprintf("%s/u%d.bin", c.URL, i), bytes.NewReader(d))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode, "the cache acknowledges the upload")
		datas[dtfc.Sum(d)] = d
	}
	return r, n, c, datas
}

// uploadsReach waits until n holds every upload of datas, failing with
// lost (given the ID's first 8 digits) as soon as one is on neither c
// nor n.
func uploadsReach(t *testing.T, c, n *node, datas map[dtfc.ID][]byte, lost string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		onN := 0
		for id := range datas {
			heldC, heldN := fileHeld(c, id), fileHeld(n, id)
			if heldN {
				onN++
			}
			require.True(t, heldC || heldN, lost, id.String()[:8])
		}
		if onN == len(datas) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s the promoted replica N holds %d of the %d uploads C took", onN, len(datas))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// passedToCache waits until c's pusher to the cache n has passed the
// uploads (a delete made after them, which a cache is sent, leaves n's
// queue empty only once the cursor passed them).
func passedToCache(t *testing.T, c, n *node) {
	t.Helper()
	require.Equal(t, http.StatusOK, del(t, c, c.put(randomBytes(t, 100))))
	eventually(t, 10*time.Second, func() bool {
		for _, p := range c.Cluster.Status().Peers {
			if p.URL == n.URL {
				return p.Queue == 0
			}
		}
		return false
	}, "C's pusher to the cache N passed the uploads and the delete")
}
