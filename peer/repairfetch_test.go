package peer_test

import (
	"context"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// TestRepairPullSaysSo: anti-entropy's pull of a blob asks for its bytes
// as a repair (HeaderFetch), a client's miss does not.
func TestRepairPullSaysSo(t *testing.T) {
	var mu sync.Mutex
	why := map[string][]string{} // ID → HeaderFetch of each request for its bytes
	src := newNode(t, nodeOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if id, ok := strings.CutPrefix(r.URL.Path, peer.InternalPrefix+"/blobs/"); ok && r.Method == http.MethodGet {
				mu.Lock()
				why[id] = append(why[id], r.Header.Get(peer.HeaderFetch))
				mu.Unlock()
			}
			h.ServeHTTP(w, r)
		})
	}})
	src.writePeers()
	src.start()
	pulled := src.put(randomBytes(t, 3000))

	n := newNode(t, nodeOpts{})
	n.writePeers(src)
	n.start()
	require.Equal(t, 1, n.Cluster.AntiEntropy(context.Background()))
	require.True(t, n.holds(pulled))

	missed := src.put(randomBytes(t, 3000))
	res, body, err := get(n.URL + "/" + missed.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"repair"}, why[pulled.String()], "the pull")
	assert.Equal(t, []string{""}, why[missed.String()], "the miss")
}

// TestRepairFetchIsNoRead: a cache (or a tier) sending a blob to a peer
// that repairs counts no read of it in its eviction order; a peer's miss
// does count, as a client's read would.
func TestRepairFetchIsNoRead(t *testing.T) {
	const size = 1 << 10
	// The handler closes the blob (until then it is open, and eviction
	// passes it over) after the client has read the whole answer: each
	// fetch waits for the handler's return (1-4 runs in 300 under load
	// evicted the next blob instead).
	var sent, served atomic.Int64
	c := newNode(t, nodeOpts{role: peer.RoleCache, maxBytes: 1 << 30, wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r)
			if strings.HasPrefix(r.URL.Path, peer.InternalPrefix+"/blobs/") {
				served.Add(1)
			}
		})
	}})
	c.writePeers()
	c.start()
	var ids []dtfc.ID
	for range 4 {
		ids = append(ids, c.put(randomBytes(t, size)))
	}
	fetch := func(id dtfc.ID, repair bool) {
		req, err := http.NewRequest(http.MethodGet, c.URL+peer.InternalPrefix+"/blobs/"+id.String(), nil)
		require.NoError(t, err)
		if repair {
			req.Header.Set(peer.HeaderFetch, "repair")
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
		n := sent.Add(1)
		eventually(t, 10*time.Second, func() bool { return served.Load() == n }, "the blob's handler returned")
	}
	evictOne := func(keep int64) dtfc.ID {
		evicted, err := c.Store.Evict(keep*size, 0, math.MaxUint64)
		require.NoError(t, err)
		require.Len(t, evicted, 1)
		return evicted[0].ID
	}
	fetch(ids[0], true)
	assert.Equal(t, ids[0], evictOne(3), "sent for a repair, the oldest is still the first evicted")
	fetch(ids[1], false)
	assert.Equal(t, ids[2], evictOne(2), "sent for a miss, it is the most recently read")
}
