package e2e_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
)

// TestMissFromPeerRealProcesses: a cache holds nothing until a read
// through it misses; the miss is served from a replica and stored, the
// next read is local (issue 3).
func TestMissFromPeerRealProcesses(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleReplica, cluster.RoleCache}})
	hc := newClient(t)
	cache := c.Nodes[2].URL

	data := randomBytes(300 << 10) // past the 16 KiB served from memory
	_, id := upload(t, hc, c.Nodes[0].URL, "miss.bin", data)

	res, _ := get(t, hc, cache+"/"+id+"/nopeerload")
	assert.Equal(t, http.StatusNotFound, res.StatusCode, "GET /<id>/nopeerload on the cache before any read")

	res, body := get(t, hc, cache+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "GET /<id> on the cache: %s", body)
	assert.Equal(t, "peer", res.Header.Get("X-Dtfc-Source"))
	assert.Equal(t, id, idOf(body), "the cache answered other bytes")
	assert.Len(t, body, len(data))

	res, body = get(t, hc, cache+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "second GET /<id> on the cache: %s", body)
	assert.Equal(t, "local", res.Header.Get("X-Dtfc-Source"), "the first read stored the blob in the cache")
	assert.Equal(t, id, idOf(body), "the cache answered other bytes")
	assert.Contains(t, c.BlobFiles(2), id, "the cache's blob file")

	unknown := idOf(randomBytes(100))
	res, body = get(t, hc, cache+"/"+unknown)
	assert.Equal(t, http.StatusNotFound, res.StatusCode, "GET of an ID no node holds: %s", body)
	// The upload's push to node 1 may still be on its way (its temp file
	// there): once it is taken, nothing is left behind.
	c.WaitConverged(t, time.Minute)
	c.CheckNoTemp(t)
}

// TestNodeDownCatchesUp: a node down while the others take uploads and
// deletes for over 10 s (its peers' pushers back off several times) gets
// every missed operation soon after it returns (Consistency 1 and 3).
// About 15 s.
func TestNodeDownCatchesUp(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := newClient(t)

	c.Nodes[2].Kill()
	down := time.Now()
	var ids []string
	sizes := map[string]int64{}
	// 50 uploads spread over 10 s, alternating between nodes 0 and 1.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := range 50 {
		data := randomBytes(1 + i*997)
		_, id := upload(t, hc, c.Nodes[i%2].URL, fmt.Sprintf("f%02d", i), data)
		ids = append(ids, id)
		sizes[id] = int64(len(data))
		<-tick.C
	}
	var deleted []string
	for k, i := range []int{3, 14, 25, 36, 47} {
		deleteID(t, hc, c.Nodes[k%2].URL, ids[i])
		deleted = append(deleted, ids[i])
	}
	// The pushers towards node 2 have failed and backed off a few times
	// (0.5 s, 1 s, 2 s, 4 s...).
	for _, i := range []int{0, 1} {
		eventually(t, 20*time.Second, fmt.Sprintf("node %d's pusher towards node 2 fails 4 times", i), func() bool {
			f := peerStatus(t, c, i, 2).Failures
			return f >= 4
		})
	}
	eventually(t, 20*time.Second, "10 s with node 2 down", func() bool { return time.Since(down) > 10*time.Second })
	assert.GreaterOrEqual(t, queueLength(t, c, 0, 2), int64(1), "node 0's queue towards node 2")

	c.Nodes[2].Start()
	back := time.Now()
	c.WaitConverged(t, converge)
	t.Logf("node 2 caught up %v after it was healthy again (down %v)", time.Since(back).Round(time.Millisecond), back.Sub(down).Round(time.Millisecond))

	want := c.BlobFiles(0)
	assert.Len(t, want, 45)
	assert.Equal(t, want, c.BlobFiles(2), "node 2's blob files")
	assert.Equal(t, want, c.BlobFiles(1), "node 1's blob files")
	for _, id := range deleted {
		assertNowhere(t, c, id)
	}
	for _, id := range ids {
		if want[id] != 0 {
			assert.Equal(t, sizes[id], want[id])
		}
	}
	_, bad := wrongBlobs(c.Nodes[2])
	assert.Empty(t, bad)
	c.CheckNoTemp(t)
}

// TestLinkCutForwards: with the link between nodes 0 and 2 cut both ways,
// an upload and a delete made on node 0 reach node 2 through node 1
// (Consistency 4).
func TestLinkCutForwards(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := newClient(t)
	old := randomBytes(5000)
	_, oldID := upload(t, hc, c.Nodes[0].URL, "old.txt", old)
	c.WaitConverged(t, converge)
	require.Contains(t, c.BlobFiles(2), oldID)

	c.Partition(0, 2)
	fresh := randomBytes(70 << 10)
	_, freshID := upload(t, hc, c.Nodes[0].URL, "fresh.bin", fresh)
	deleteID(t, hc, c.Nodes[0].URL, oldID)
	// Queues over the cut link do not count: convergence means node 1
	// passed both on to node 2.
	c.WaitConverged(t, converge)
	files := c.BlobFiles(2)
	assert.Equal(t, int64(len(fresh)), files[freshID], "node 2 got the upload through node 1")
	assert.True(t, gone(c.Nodes[2], oldID), "node 2 got the delete through node 1")
	assertHeld(t, c, 2, freshID, int64(len(fresh)))
	assert.Positive(t, queueLength(t, c, 0, 2), "node 0 could not push to node 2 itself")

	c.HealAll()
	c.WaitConverged(t, converge)
	assertEveryReplica(t, c, freshID, int64(len(fresh)))
	assertNowhere(t, c, oldID)
	c.CheckNoTemp(t)
}

// TestJoinEmptyNode: a new, empty replica joined to a cluster holding
// 2,000 files gets all of them by itself (Consistency 7). About 25 s,
// most of it the 2,000 uploads (each one fsync'd on three nodes).
func TestJoinEmptyNode(t *testing.T) {
	const files, workers = 2000, 8
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := newClient(t)

	start := time.Now()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []string
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := c.Nodes[w%len(c.Nodes)].URL
			for i := w; i < files; i += workers {
				// Sizes 0 to 4 KiB, the empty file once: distinct IDs.
				n := 1 + (i*7919)%4096
				if i == 0 {
					n = 0
				}
				status, _, err := tryUpload(t.Context(), hc, base, fmt.Sprintf("small-%04d", i), randomBytes(n))
				if err != nil || (status != http.StatusCreated && status != http.StatusOK) {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("upload %d to %s: status %d, %v", i, base, status, err))
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	require.Empty(t, errs)
	t.Logf("%d uploads took %v", files, time.Since(start).Round(time.Millisecond))
	c.WaitConverged(t, converge)
	t.Logf("the 3 nodes converged %v after the first upload", time.Since(start).Round(time.Millisecond))
	require.Len(t, c.BlobFiles(0), files)

	start = time.Now()
	n := c.AddNode(cluster.RoleReplica)
	c.WaitConverged(t, 60*time.Second)
	t.Logf("node %d joined and got %d files in %v", n.Index, files, time.Since(start).Round(time.Millisecond))
	want := c.BlobFiles(0)
	got := c.BlobFiles(n.Index)
	assert.Len(t, got, files)
	assert.Equal(t, want, got, "the new node's blob files")
	_, bad := wrongBlobs(n)
	assert.Empty(t, bad)
	c.CheckNoTemp(t)
}

// TestPushResumesAfterRefusals: a peer that refuses pushes (here: every
// body node 0 sends it arrives corrupt, so it answers 400) while it
// answers everything else never looks down, so its return would not wake
// node 0's pusher from a backoff that has grown to 30 s. Successful
// exchanges with it must: once the link is clean, node 0's queue towards
// it drains within pushWake (5 s) and an anti-entropy round (2 s), not
// at the next retry up to 30 s later. About 35 s.
func TestPushResumesAfterRefusals(t *testing.T) {
	// --verbose: every failed push is logged (the first one is a warning,
	// the others debug lines), so the test can count them.
	c := cluster.Start(t, cluster.Options{Nodes: 2, NodeArgs: map[int][]string{0: {"--verbose"}}})
	hc := newClient(t)
	c.Corrupt(0, 1, true)
	_, id := upload(t, hc, c.Nodes[0].URL, "refused.bin", randomBytes(100<<10))
	// Backing off alone, pushes fail at about 0, 0.5, 1.5, 3.5, 7.5, 15.5
	// and 31.5 s; after the seventh, the pusher's backoff is 30 s.
	// (Node 0's successful exchanges with node 1 wake it every 5 s or so,
	// which brings the seventh failure forward to about 25 s.)
	eventually(t, 2*converge, "node 0's push to node 1 fails seven times", func() bool {
		return logCount(c.Nodes[0], "push to peer failed") >= 7
	})
	require.Positive(t, queueLength(t, c, 0, 1), "node 0's queue towards node 1 while its pushes are refused")
	c.Corrupt(0, 1, false)
	healed := time.Now()
	eventually(t, 15*time.Second, "node 0's queue towards node 1 drains after the heal", func() bool {
		return queueLength(t, c, 0, 1) == 0
	})
	t.Logf("queue drained %v after the heal", time.Since(healed).Round(10*time.Millisecond))
	assertEveryReplica(t, c, id, 100<<10)
}
