package e2e_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
)

// Large transfers between nodes (issue 14): a transfer that is cut keeps
// what it received and goes on from there. Every test runs two replicas
// holding a large blob and a cache (node 2) that misses it, so that the
// cache's links to the holders (2 -> 0, 2 -> 1) carry the transfer.

// holdersAndCache starts the cluster, the cache with cacheArgs, uploads
// size random bytes to node 0 and waits until both replicas hold them.
func holdersAndCache(t *testing.T, size int, cacheArgs ...string) (*cluster.Cluster, *http.Client, []byte, string) {
	t.Helper()
	c := cluster.Start(t, cluster.Options{Nodes: 3, Roles: []dtfc.Role{dtfc.RoleReplica, dtfc.RoleReplica, dtfc.RoleCache},
		NodeArgs: map[int][]string{2: cacheArgs}})
	hc := newClient(t)
	data := randomBytes(size)
	_, id := upload(t, hc, c.Nodes[0].URL, "large.bin", data)
	eventually(t, converge, "node 1 gets the large blob", func() bool {
		return c.BlobFiles(1)[id] == int64(size)
	})
	return c, hc, data, id
}

// carried is what the cache's links to the holders carried to it.
func carried(c *cluster.Cluster) int64 { return c.Carried(2, 0) + c.Carried(2, 1) }

// metricValue reads one unlabelled metric of a node.
func metricValue(t *testing.T, hc *http.Client, base, name string) float64 {
	t.Helper()
	line := metrics(t, hc, base, name+" ")
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, name)), 64)
	require.NoError(t, err, "metric %s: %q", name, line)
	return v
}

// oneSource makes the cache fetch from one holder at a time: the path of
// a blob only one peer holds (pieces_test.go covers several at once).
var oneSource = []string{"--peer-fetch-sources", "1"}

// TestMissResumesAfterCut: a miss whose transfer is cut at 90% goes on
// from there (from the other holder, or the same), and the client gets
// one unbroken 200 of the right bytes; in all, the links carry at most
// 15% more than the blob.
func TestMissResumesAfterCut(t *testing.T) {
	const size = 40 << 20
	c, hc, data, id := holdersAndCache(t, size, oneSource...)
	before := carried(c)
	for _, j := range []int{0, 1} {
		c.CutAfter(2, j, size*9/10)
	}
	res, body := get(t, hc, c.Nodes[2].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body[:min(len(body), 200)])
	require.True(t, bytes.Equal(data, body), "the client got other bytes (%d of %d)", len(body), size)
	moved := carried(c) - before
	t.Logf("the links carried %d bytes for a %d-byte blob (%.3f×)", moved, size, float64(moved)/size)
	assert.LessOrEqual(t, moved, int64(size*115/100), "the cut transfer started over")
	assert.GreaterOrEqual(t, metricValue(t, hc, c.Nodes[2].URL, "dtfc_peer_fetch_resumes_total"), 1.0)
	eventually(t, converge, "the cache holds the blob", func() bool { return c.BlobFiles(2)[id] == size })
	// The checkpoint goes when the writer closes, after the commit.
	eventually(t, 10*time.Second, "a finished transfer keeps nothing in partial/", func() bool { return len(partialFiles(t, c.Nodes[2])) == 0 })
	c.CheckNoTemp(t)
}

// TestMissResumesAfterKill: the cache is killed (-9) in the middle of a
// slowed transfer; restarted, a new miss of the blob continues from the
// last checkpoint instead of byte 0.
func TestMissResumesAfterKill(t *testing.T) {
	const size = 96 << 20
	c, hc, data, id := holdersAndCache(t, size)
	for _, j := range []int{0, 1} {
		c.Throttle(2, j, 16_000) // 16 MB/s: six seconds for the blob
	}
	before := carried(c)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Nodes[2].URL+"/"+id, nil)
		if err != nil {
			return
		}
		if res, err := hc.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
	resume := filepath.Join(c.Nodes[2].Basedir, "partial", id+".resume")
	eventually(t, converge, "the first checkpoint", func() bool {
		_, err := os.Stat(resume)
		return err == nil
	})
	c.Nodes[2].Kill()
	cancel()
	<-done
	atKill := carried(c) - before
	t.Logf("killed after the links carried %d bytes", atKill)
	require.Less(t, atKill, int64(size*3/4), "the transfer was nearly done before the kill: nothing to resume")

	c.Nodes[2].Start()
	for _, j := range []int{0, 1} {
		c.Throttle(2, j, 0)
	}
	res, body := get(t, hc, c.Nodes[2].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body[:min(len(body), 200)])
	require.True(t, bytes.Equal(data, body), "the client got other bytes (%d of %d)", len(body), size)
	assert.True(t, logHas(c.Nodes[2], "resuming a partial transfer"), "the restarted cache did not resume")
	moved := carried(c) - before
	t.Logf("the links carried %d bytes in all for a %d-byte blob (%.3f×)", moved, size, float64(moved)/size)
	assert.LessOrEqual(t, moved, int64(size*115/100), "the transfer after the restart started over")
	eventually(t, converge, "the partial transfer is cleaned up", func() bool { return len(partialFiles(t, c.Nodes[2])) == 0 })
}

// TestMissResumesAfterStall: a holder that stops sending in the middle
// of a transfer, without closing, is cut off after the idle time and the
// transfer goes on from the other holder; the client's stream pauses,
// never breaks.
func TestMissResumesAfterStall(t *testing.T) {
	const size = 24 << 20
	c, hc, data, id := holdersAndCache(t, size, oneSource...)
	before := carried(c)
	for _, j := range []int{0, 1} {
		c.StallAfter(2, j, size/2)
	}
	start := time.Now()
	res, body := get(t, hc, c.Nodes[2].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body[:min(len(body), 200)])
	require.True(t, bytes.Equal(data, body), "the client got other bytes (%d of %d)", len(body), size)
	t.Logf("the stalled transfer took %v", time.Since(start).Round(time.Millisecond))
	moved := carried(c) - before
	assert.LessOrEqual(t, moved, int64(size*115/100), "the stalled transfer started over")
	assert.True(t, logHas(c.Nodes[2], "no progress"), "the stall was not what cut the transfer")
	c.HealAll() // ends the stalled body
}

func partialFiles(t *testing.T, n *cluster.Node) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.Basedir, "partial"))
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestPullAndMissShareOneTransfer: a client's miss of a blob that
// anti-entropy is pulling already joins that transfer instead of
// starting a second one (issue 14: one transfer per blob per node,
// whichever mechanism asked for it).
func TestPullAndMissShareOneTransfer(t *testing.T) {
	const size = 32 << 20
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := newClient(t)
	c.Cut(0, 1)             // no push: node 1 gets the blob by anti-entropy
	c.Throttle(1, 0, 8_000) // 8 MB/s: four seconds for the blob
	before := c.Carried(1, 0)
	data := randomBytes(size)
	_, id := upload(t, hc, c.Nodes[0].URL, "large.bin", data)
	part := filepath.Join(c.Nodes[1].Basedir, "partial", id)
	eventually(t, converge, "node 1's anti-entropy starts pulling the blob", func() bool {
		_, err := os.Stat(part)
		return err == nil
	})
	res, body := get(t, hc, c.Nodes[1].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body[:min(len(body), 200)])
	require.True(t, bytes.Equal(data, body), "the client got other bytes (%d of %d)", len(body), size)
	moved := c.Carried(1, 0) - before
	t.Logf("the link carried %d bytes for a %d-byte blob (%.3f×)", moved, size, float64(moved)/size)
	assert.LessOrEqual(t, moved, int64(size*115/100), "the miss moved the blob a second time")
	c.Throttle(1, 0, 0)
	c.Heal(0, 1)
}

// TestMissJoinsPushInFlight: a client's miss of a blob that is being
// pushed to the node joins that push instead of fetching the blob a
// second time.
func TestMissJoinsPushInFlight(t *testing.T) {
	const size = 32 << 20
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := newClient(t)
	c.Throttle(0, 1, 8_000) // the push (0 -> 1) at 8 MB/s: four seconds
	before := c.Carried(1, 0)
	data := randomBytes(size)
	_, id := upload(t, hc, c.Nodes[0].URL, "large.bin", data)
	// A pushed blob this large is written where a cut push is resumed
	// from (partial/), a smaller one to tmp/.
	part := filepath.Join(c.Nodes[1].Basedir, "partial", id)
	eventually(t, converge, "the push to node 1 starts", func() bool {
		fi, err := os.Stat(part)
		return err == nil && fi.Size() > 0
	})
	res, body := get(t, hc, c.Nodes[1].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body[:min(len(body), 200)])
	require.True(t, bytes.Equal(data, body), "the client got other bytes (%d of %d)", len(body), size)
	moved := c.Carried(1, 0) - before
	t.Logf("node 1 fetched %d bytes from node 0 for a %d-byte blob being pushed to it", moved, size)
	assert.Less(t, moved, int64(size/10), "the miss fetched the blob beside the push")
	c.Throttle(0, 1, 0)
	eventually(t, converge, "node 1 holds the blob", func() bool { return c.BlobFiles(1)[id] == size })
}

// pushedTo is what node 1 was sent of blob bytes by node 0: the bodies
// of node 0's pushes, and answers to node 1's own requests (its
// anti-entropy pulls, cut off in these tests).
func pushedTo(c *cluster.Cluster) int64 { return c.CarriedRequests(0, 1) + c.Carried(1, 0) }

// TestPushResumesAfterCut: a push of a large blob cut at 90% of its body
// goes on from where it stopped: node 1 keeps what came, and the next
// push sends only the rest. In all, the link carries less than starting
// over would.
func TestPushResumesAfterCut(t *testing.T) {
	const size = 64 << 20
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := newClient(t)
	c.Cut(1, 0) // node 1 gets the blob by the push alone, not by a pull
	before := pushedTo(c)
	c.CutRequestAfter(0, 1, size*9/10)
	data := randomBytes(size)
	_, id := upload(t, hc, c.Nodes[0].URL, "large.bin", data)
	eventually(t, converge, "node 1 gets the pushed blob", func() bool { return c.BlobFiles(1)[id] == size })
	require.True(t, logHas(c.Nodes[1], "push cut; keeping what came"), "the push was not cut")
	moved := pushedTo(c) - before
	t.Logf("the link carried %d bytes for a %d-byte blob (%.3f×)", moved, size, float64(moved)/size)
	// Starting over carries 1.9× the blob. On an idle machine the resume
	// sends only the last 10% (1.0×; README, Performance); under -race
	// and a loaded CI, one run in several resumed from further back
	// (1.4×), which is slower, not wrong.
	assert.Less(t, moved, int64(size*9/10+size), "the cut push started over")
	assert.GreaterOrEqual(t, metricValue(t, hc, c.Nodes[1].URL, "dtfc_peer_push_resumes_total"), 1.0)
	eventually(t, 10*time.Second, "a finished push keeps nothing in partial/", func() bool { return len(partialFiles(t, c.Nodes[1])) == 0 })
	res, body := get(t, hc, c.Nodes[1].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.True(t, bytes.Equal(data, body), "node 1 serves other bytes")
	c.Heal(1, 0)
}

// TestPushResumesAfterKill: the node a large blob is pushed to is killed
// (-9) in the middle of the push, after a checkpoint; restarted, it gets
// the rest of the blob from the checkpoint on, not the whole blob again.
func TestPushResumesAfterKill(t *testing.T) {
	const (
		size       = 96 << 20
		checkpoint = 32 << 20 // peer.checkpointEvery
	)
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := newClient(t)
	c.Cut(1, 0)              // node 1 gets the blob by the push alone, not by a pull
	c.Throttle(0, 1, 16_000) // the push at 16 MB/s: six seconds for the blob
	before := pushedTo(c)
	data := randomBytes(size)
	_, id := upload(t, hc, c.Nodes[0].URL, "large.bin", data)
	resume := filepath.Join(c.Nodes[1].Basedir, "partial", id+".resume")
	eventually(t, converge, "the push's first checkpoint", func() bool {
		_, err := os.Stat(resume)
		return err == nil
	})
	c.Nodes[1].Kill()
	atKill := pushedTo(c) - before
	t.Logf("killed after the link carried %d bytes", atKill)
	require.Less(t, atKill, int64(size*3/4), "the push was nearly done before the kill: nothing to resume")

	c.Nodes[1].Start()
	c.Throttle(0, 1, 0)
	eventually(t, converge, "node 1 gets the pushed blob", func() bool { return c.BlobFiles(1)[id] == size })
	assert.True(t, logHas(c.Nodes[1], "resuming a partial transfer"), "the restarted node did not resume")
	moved := pushedTo(c) - before
	after := moved - atKill
	t.Logf("the link carried %d bytes in all for a %d-byte blob (%.3f×), %d after the restart", moved, size, float64(moved)/size, after)
	// Beside the blob's bytes the link carries the pusher's offers (JSON,
	// a few hundred bytes each).
	assert.LessOrEqual(t, after, int64(size-checkpoint+64<<10), "the push after the restart sent bytes node 1 had checkpointed")
	assert.LessOrEqual(t, moved, int64(size*115/100+checkpoint), "the push after the restart started over")
	assert.GreaterOrEqual(t, metricValue(t, hc, c.Nodes[1].URL, "dtfc_peer_push_resumes_total"), 1.0)
	res, body := get(t, hc, c.Nodes[1].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.True(t, bytes.Equal(data, body), "node 1 serves other bytes")
	eventually(t, converge, "the partial transfer is cleaned up", func() bool { return len(partialFiles(t, c.Nodes[1])) == 0 })
	c.Heal(1, 0)
}
