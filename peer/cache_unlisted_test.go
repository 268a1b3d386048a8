package peer_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// unlistedCacheFill starts a replica R that lists nobody and a cache C
// that lists R, both with the options opt, uploads a file to R and reads
// it through C, which then holds it.
func unlistedCacheFill(t *testing.T, opt func(*peer.Options)) (r, c *node, id dtfc.ID) {
	t.Helper()
	r = newNode(t, running(nodeOpts{peer: opt}))
	c = newNode(t, running(nodeOpts{role: peer.RoleCache, maxBytes: 1 << 30, peer: opt}))
	c.writePeers(r) // R lists nobody
	r.start()
	c.start()
	data := randomBytes(t, 10<<10)
	code, _ := upload(t, r, "x.bin", data, "")
	require.Equal(t, http.StatusCreated, code)
	id = dtfc.Sum(data)
	resp, _, err := get(c.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	c.eventuallyHolds(id, true)
	return r, c, id
}

// TestUnlistedCacheLearnsForgottenDelete: README (peer list) says
// "a cache that nobody lists still learns of deletes of what it holds,
// at its next anti-entropy round". The cache's round (cacheSync) asks
// its replica peers with POST /_internal/lookup, which answered only the
// records they hold (Store.Stat), never a delete they forgot lately
// (Store.Forgotten, which GET /_internal/state does answer). A cache down
// for longer than the replicas' tombstone_retention (a replica that does
// not list it does not wait for it) comes back to a replica that
// forgot the tombstone but still remembers the delete, learned nothing,
// and served the deleted blob for good (found by a review helper). The
// lookup now answers such a delete too.
//
// Sequence: upload X to replica R (R's list: empty; C lists R); read X
// through cache C (a fill); stop C; DELETE X on R; R forgets the
// tombstone after its retention (remembering the delete); start C: its
// anti-entropy rounds complete with R; GET X on C.
func TestUnlistedCacheLearnsForgottenDelete(t *testing.T) {
	short := func(o *peer.Options) {
		o.TombstoneRetention = time.Second
		o.TombstoneExpiry = time.Hour
	}
	r, c, id := unlistedCacheFill(t, short)
	c.down()
	require.Equal(t, http.StatusOK, del(t, r, id))
	eventually(t, converge, func() bool {
		_, err := r.Store.Stat(id)
		return err == blobstore.ErrNotFound
	}, "R forgets the tombstone after its retention")
	f, ok := r.Store.Forgotten(id)
	require.True(t, ok && f.Deleted, "R still remembers the delete it forgot")

	c.start()
	eventually(t, converge, func() bool { return c.Cluster.Status().Synced }, "C completes an anti-entropy round with R")
	require.Equal(t, 1, c.Cluster.AntiEntropy(t.Context()), "another round with R")

	resp, _, err := get(c.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, resp.StatusCode,
		"the cache serves a blob deleted on the replica after its anti-entropy rounds: its lookup learns no delete the replica forgot (and still remembers)")
}

// TestRebuiltUnlistedCacheAdoptsNoDeletedCopy: the same unlisted cache,
// down until the replica forgot the delete and its memory of it (one
// tombstone_expiry later), has its meta.db damaged and rebuilt. Its
// unconfirmed pass asks R, which knows nothing of X, and adopts the
// fill "no peer knows" as an upload of its own ("no delete of it can
// have been forgotten without this node's acknowledgement"): false for
// a cache no replica lists. The adopted record entered the cache's feed
// and was pushed to R: the acknowledged delete was undone on the replica
// (found by a review helper). A cache now leaves such a file unconfirmed
// when it is older than tombstone_retention + tombstone_expiry.
func TestRebuiltUnlistedCacheAdoptsNoDeletedCopy(t *testing.T) {
	short := func(o *peer.Options) {
		o.TombstoneRetention = time.Second
		o.TombstoneExpiry = 2 * time.Second
	}
	r, c, id := unlistedCacheFill(t, short)
	c.down()
	require.Equal(t, http.StatusOK, del(t, r, id))
	eventually(t, converge, func() bool {
		_, err := r.Store.Stat(id)
		_, remembered := r.Store.Forgotten(id)
		return err == blobstore.ErrNotFound && !remembered
	}, "R forgets the tombstone, then its memory of the delete")

	meta := filepath.Join(c.Dir, "meta.db")
	fi, err := os.Stat(meta)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(meta, fi.Size()/2))
	_, err = blobstore.Rebuild(c.Dir, blobstore.RebuildOptions{})
	require.NoError(t, err)
	c.start()

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if r.holds(id) {
			t.Fatalf("the delete acknowledged by R is undone: the rebuilt cache adopted its fill of %s as an upload no peer knows and pushed it to R", id.String()[:8])
		}
		if c.Store.UnconfirmedCount() == 0 && queuesEmpty(c)() && c.Cluster.Status().Synced {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.False(t, r.holds(id), "R holds the deleted blob again")
}
