package peer_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// TestCacheKeepsUploadsSkippedBeforeUpgrade: the skipped floor
// (pusher.skipped, key "skipped <url>") only exists in stores written by
// the fixed pusher. A cache whose pusher passed uploads to another cache
// under the previous binary has a cursor past them and no skipped key.
// After the upgrade, the peer was promoted to replica: no rewind
// happened, cursorOf counted the promoted peer as holding the uploads, the
// cache evicted them, and the promoted replica never got them (found by a
// review helper). Now a store without the key gets the floor at the start
// for a peer that is a cache.
//
// Same order as TestCacheKeepsUploadsSkippedForAPromotedCache, with C
// restarted (its store stripped of the keys the previous binary did not
// write) between the skip and the promotion.
func TestCacheKeepsUploadsSkippedBeforeUpgrade(t *testing.T) {
	_, n, c, datas := cacheWithUploads(t)
	passedToCache(t, c, n)

	// C stops; its store is made as the previous binary left it: the
	// cursor towards N, no skipped floor, no cursor node. C starts again
	// (the upgrade).
	c.down()
	st, err := blobstore.Open(c.Dir, blobstore.Options{TrackAccess: true})
	require.NoError(t, err)
	require.NoError(t, st.SetValue("skipped "+n.URL, nil))
	require.NoError(t, st.SetValue("cursor node "+n.URL, nil))
	require.NoError(t, st.Close())
	c.start()
	for id := range datas {
		require.True(t, fileHeld(c, id), "C keeps %s while no replica has it", id.String()[:8])
	}

	// N promoted, R taken out of C's list.
	n.down()
	n.o.role = peer.RoleReplica
	n.start()
	c.writePeers(n)
	_, err = c.Cluster.Refresh(t.Context())
	require.NoError(t, err)

	uploadsReach(t, c, n, datas, "acknowledged upload %s lost: C (upgraded) evicted it and the promoted replica N never received it (no skipped floor for uploads passed before the upgrade)")
}
