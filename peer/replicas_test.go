package peer

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestWaitReplicasCountsOnlyReplicasByTheirWord: ?replicas=N counts a
// peer whose cursor passed the change only once the peer said it is a
// replica. A peer listed as a replica that has not answered (a cache
// listed so, whose cursor passes uploads without a word from it) does
// not count; nor does one that said it is a cache.
func TestWaitReplicasCountsOnlyReplicasByTheirWord(t *testing.T) {
	c, store := newLoneCluster(t)
	urls := []string{"http://a.invalid", "http://b.invalid"}
	c.setPeers([]Peer{{URL: urls[0], Role: RoleReplica}, {URL: urls[1], Role: RoleReplica}})
	const seq = 7
	id := dtfc.Sum([]byte("waited for"))
	for _, u := range urls {
		require.NoError(t, store.SetValue(cursorKey(u), []byte(strconv.FormatUint(seq, 10))))
		require.NoError(t, store.SetValue(keySkippedPrefix+u, []byte(noSkipValue)))
	}
	wait := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		return c.WaitReplicas(ctx, id, seq, 2)
	}
	assert.ErrorIs(t, wait(), context.DeadlineExceeded, "peers that never answered were counted")

	answer := func(u string, role dtfc.Role, node string) {
		c.mem.Load().byURL[u].ok(http.Header{HeaderRole: {string(role)}, HeaderNode: {node}})
	}
	answer(urls[0], RoleCache, "nodea")
	assert.ErrorIs(t, wait(), context.DeadlineExceeded, "a peer that said it is a cache was counted")
	answer(urls[1], RoleReplica, "nodeb")
	assert.NoError(t, wait(), "a replica by its word, its cursor past the change, counts")

	// Blocked meanwhile: a peer that knew of the block acknowledged the
	// upload without keeping it, so the count does not hold.
	_, err := store.SetDeny(id, http.StatusUnavailableForLegalReasons, "test", false)
	require.NoError(t, err)
	assert.ErrorIs(t, wait(), blobstore.ErrDenied, "an upload blocked while it waited was answered as held by 2 replicas")
}
