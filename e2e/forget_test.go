package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/cluster"
)

// The tests of this file are the findings of a review with real
// processes (issue "Never lose, undo or corrupt"): each failed on the code
// before the fix. The paths that forget (a tombstone, a lifted block, a
// cache's eviction, the end of a resync) must wait for every peer's
// acknowledgement; clocks and identities are inputs from the network.

// retention is a tombstone retention of seconds: the nodes purge every second
// (a tenth of the retention, at least a second).
const retention = "2s"

// wait sleeps d: only where the test is about time passing (a retention,
// an expiry), never to wait for a condition.
func wait(d time.Duration) { time.Sleep(d) }

// TestPartitionLongerThanRetention: four nodes split {0,1} | {2,3} for
// longer than the tombstone retention; a delete on each side answers
// 200; after the heal both files stay deleted everywhere. The deletes'
// tombstones are kept as long as a peer has not acknowledged them (they
// were purged by age alone, and each half kept "contact" with itself).
// Then the variant where one node alone is cut off and deletes: its own
// tombstone, never delivered, must not be purged either. About 20 s.
func TestPartitionLongerThanRetention(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 4, Args: []string{"--tombstone-retention", retention}})
	hc := newClient(t)
	x, y, z := randomBytes(20<<10), randomBytes(30<<10), randomBytes(40<<10)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", x)
	_, yID := upload(t, hc, c.Nodes[2].URL, "y", y)
	_, zID := upload(t, hc, c.Nodes[1].URL, "z", z)
	c.WaitConverged(t, converge)

	splitHalves(c)
	deleteID(t, hc, c.Nodes[0].URL, xID)
	deleteID(t, hc, c.Nodes[2].URL, yID)
	wait(3 * time.Second) // longer than the retention: purges have run
	for i := range c.Nodes {
		_, st := stateOf(t, c, hc, i, xID)
		if i < 2 {
			assert.True(t, st.Deleted, "node %d forgot the delete of x while nodes 2 and 3 had not acknowledged it", i)
		}
	}
	c.HealAll()
	c.WaitConverged(t, converge)
	assertNowhere(t, c, xID)
	assertNowhere(t, c, yID)
	for i := range c.Nodes {
		res, _ := get(t, hc, c.Nodes[i].URL+"/"+xID)
		assert.Equal(t, http.StatusNotFound, res.StatusCode, "node %d serves the deleted x", i)
		res, _ = get(t, hc, c.Nodes[i].URL+"/"+yID)
		assert.Equal(t, http.StatusNotFound, res.StatusCode, "node %d serves the deleted y", i)
	}

	// Node 2 alone, cut off, deletes z.
	c.Isolate(2)
	deleteID(t, hc, c.Nodes[2].URL, zID)
	wait(3 * time.Second)
	assert.Positive(t, queueLength(t, c, 2, 0), "node 2's queue towards node 0 holds its undelivered delete")
	c.HealAll()
	c.WaitConverged(t, converge)
	assertNowhere(t, c, zID)
	// Acknowledged everywhere, the tombstones go after the retention.
	eventually(t, converge, "every node forgets the acknowledged tombstones", func() bool {
		for i := range c.Nodes {
			for _, id := range []string{xID, yID, zID} {
				if s, _ := stateOf(t, c, hc, i, id); s != http.StatusNotFound {
					return false
				}
			}
		}
		return true
	})
}

// TestCacheKeepsUnpushedUploads: a cache with max_bytes whose replica is
// down takes three uploads (201 each); it must not evict them before the
// replica has them (it evicted two, lost for good). Once the replica is
// back, all three reach it, and then the cache may evict. About 15 s.
func TestCacheKeepsUnpushedUploads(t *testing.T) {
	const size = 200 << 10
	c := cluster.Start(t, cluster.Options{Nodes: 2, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleCache},
		NodeArgs: map[int][]string{1: {"--max-bytes", fmt.Sprint(size + size/2)}}})
	hc := newClient(t)
	c.Nodes[0].Stop()
	var ids []string
	for i := range 3 {
		status, id := upload(t, hc, c.Nodes[1].URL, fmt.Sprintf("u%d", i), randomBytes(size))
		require.Equal(t, http.StatusCreated, status)
		ids = append(ids, id)
	}
	// The cache's maintenance evicts every few seconds: give it two turns.
	wait(11 * time.Second)
	files := c.BlobFiles(1)
	for _, id := range ids {
		assert.Contains(t, files, id, "the cache evicted an upload no replica holds")
	}
	c.Nodes[0].Start()
	eventually(t, converge, "the replica gets every upload the cache took", func() bool {
		files := c.BlobFiles(0)
		for _, id := range ids {
			if _, ok := files[id]; !ok {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		assertHeld(t, c, 0, id, size)
	}
	eventually(t, converge, "the cache, its uploads pushed, goes back under max_bytes", func() bool {
		var n int64
		for _, sz := range c.BlobFiles(1) {
			n += sz
		}
		return n <= size+size/2
	})
}

// TestLiftedBlockStaysLifted: block X, lift it and upload X again while
// node 2 is down for longer than the retention; node 2 returns with its
// stale block, which must not come back (it did: X answered 451
// everywhere). The lift is kept until node 2 acknowledged it. About 15 s.
func TestLiftedBlockStaysLifted(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", retention}})
	hc := newClient(t)
	x := randomBytes(10 << 10)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", x)
	setDeny(t, hc, c.Nodes[0].URL, xID, `{"status": 451, "reason": "test"}`)
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		res, _ := get(t, hc, c.Nodes[i].URL+"/"+xID)
		require.Equal(t, http.StatusUnavailableForLegalReasons, res.StatusCode, "node %d", i)
	}
	c.Nodes[2].Stop()
	liftDeny(t, hc, c.Nodes[0].URL, xID)
	upload(t, hc, c.Nodes[0].URL, "x", x)
	wait(4 * time.Second)
	c.Nodes[2].Start()
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		res, body := get(t, hc, c.Nodes[i].URL+"/"+xID)
		assert.Equal(t, http.StatusOK, res.StatusCode, "node %d: the lifted block came back: %s", i, body)
	}
	assertEveryReplica(t, c, xID, int64(len(x)))
}

// TestExpiredNodeDropsForgottenLift: a block lifted and forgotten while
// a node was away longer than the expiry is dropped by that node's
// resync, on its peers' word that they lifted it (forgotten_lifts in
// GET /_internal/deny): the bytes uploaded again reach it. A block
// nobody lifted stays everywhere. About 15 s.
func TestExpiredNodeDropsForgottenLift(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "3s"}})
	hc := newClient(t)
	x, y := randomBytes(10<<10), randomBytes(11<<10)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", x)
	_, yID := upload(t, hc, c.Nodes[0].URL, "y", y)
	setDeny(t, hc, c.Nodes[0].URL, xID, `{"status": 451, "reason": "test"}`)
	setDeny(t, hc, c.Nodes[0].URL, yID, `{"status": 451, "reason": "test"}`)
	c.WaitConverged(t, converge)
	require.True(t, hasDenyEntry(t, hc, c.Nodes[2].URL, xID))

	c.Nodes[2].Stop()
	liftDeny(t, hc, c.Nodes[0].URL, xID)
	eventually(t, converge, "nodes 0 and 1 forget the lift and mark node 2 expired", func() bool {
		for _, i := range []int{0, 1} {
			if hasDenyEntry(t, hc, c.Nodes[i].URL, xID) || !peerStatus(t, c, i, 2).Expired {
				return false
			}
		}
		return true
	})
	c.Nodes[2].Start()
	eventually(t, 2*converge, "node 2 finishes its resync", func() bool { return logHas(c.Nodes[2], "resync finished") })
	assert.Equal(t, 1, logCount(c.Nodes[2], "resync dropped a deny entry the cluster forgot"), "node 2 dropped the lifted block, and only it")
	upload(t, hc, c.Nodes[0].URL, "x", x)
	c.WaitConverged(t, converge)
	assertEveryReplica(t, c, xID, int64(len(x)))
	for i := range c.Nodes {
		assert.True(t, hasDenyEntry(t, hc, c.Nodes[i].URL, yID), "node %d: the block nobody lifted", i)
		res, _ := get(t, hc, c.Nodes[i].URL+"/"+yID)
		assert.Equal(t, http.StatusUnavailableForLegalReasons, res.StatusCode, "node %d", i)
	}
}

// hasDenyEntry reports whether the node at base has an active block of
// id (GET /_internal/deny).
func hasDenyEntry(t *testing.T, hc *http.Client, base, id string) bool {
	t.Helper()
	res, body := get(t, hc, base+"/_internal/deny")
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)
	var list struct {
		Entries []struct {
			ID     string `json:"sha512"`
			Lifted bool   `json:"lifted"`
		} `json:"entries"`
	}
	require.NoError(t, json.Unmarshal(body, &list))
	for _, e := range list.Entries {
		if e.ID == id && !e.Lifted {
			return true
		}
	}
	return false
}

// TestExpiredNodeResyncs: a node away longer than tombstone_expiry no
// longer holds its peers' deletes back: they forget them and mark it
// expired. On its return it learns so, resyncs (drops the files the
// cluster deleted and forgot, keeps what it took while away) and the
// marks are lifted: it never stays resyncing. About 25 s per case.
//
//   - Stopped: the node was down.
//   - Isolated: the node ran cut off and took an upload meanwhile, which
//     must survive its resync and reach the others.
//   - SlowReturn: its requests to its peers are slow (500 ms each way).
//   - CutOffWhileReceiving: it got the file by a push while its own
//     requests failed, then went down; on its return the others cannot
//     reach it until it has resynced (it learns from its own pushes).
func TestExpiredNodeResyncs(t *testing.T) {
	for _, tc := range []string{"Stopped", "Isolated", "SlowReturn", "CutOffWhileReceiving"} {
		t.Run(tc, func(t *testing.T) { testExpiredNodeResyncs(t, tc) })
	}
}

func testExpiredNodeResyncs(t *testing.T, tc string) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "3s"}})
	hc := newClient(t)
	x, y, z := randomBytes(50<<10), randomBytes(60<<10), randomBytes(70<<10)
	_, yID := upload(t, hc, c.Nodes[0].URL, "y", y)
	c.WaitConverged(t, converge)
	if tc == "CutOffWhileReceiving" {
		c.Cut(2, 0)
		c.Cut(2, 1)
		for _, j := range []int{0, 1} {
			eventually(t, converge, fmt.Sprintf("node 2 finds node %d unreachable", j), func() bool {
				up := peerStatus(t, c, 2, j).Up
				return !up
			})
		}
	}
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", x)
	c.WaitConverged(t, converge)
	require.Contains(t, c.BlobFiles(2), xID)

	var zID string
	if tc == "Isolated" {
		c.Isolate(2)
		_, zID = upload(t, hc, c.Nodes[2].URL, "z", z)
	} else {
		c.Nodes[2].Stop()
		c.HealAll()
	}
	deleteID(t, hc, c.Nodes[0].URL, xID)
	waitForgotWithout2(t, c, hc, xID)

	switch tc {
	case "SlowReturn":
		c.Delay(2, 0, 500*time.Millisecond)
		c.Delay(2, 1, 500*time.Millisecond)
	case "CutOffWhileReceiving":
		c.Cut(0, 2)
		c.Cut(1, 2)
	}
	if tc == "Isolated" {
		c.HealAll()
	} else {
		c.Nodes[2].Start()
	}
	eventually(t, 2*converge, "node 2 finishes its resync", func() bool { return logHas(c.Nodes[2], "resync finished") })
	status, st := stateOf(t, c, hc, 2, xID)
	assert.Equal(t, http.StatusNotFound, status, "node 2 kept x through its resync: %+v", st)
	c.HealAll()
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		status, st := stateOf(t, c, hc, i, xID)
		assert.Equal(t, http.StatusNotFound, status, "node %d has a record of x, deleted and forgotten: %+v", i, st)
	}
	assertNowhere(t, c, xID)
	assertEveryReplica(t, c, yID, int64(len(y)))
	if zID != "" {
		assertEveryReplica(t, c, zID, int64(len(z)))
	}
	eventually(t, converge, "no node resyncing, no peer marked expired", func() bool {
		for i := range c.Nodes {
			st, err := c.Status(i)
			require.NoError(t, err)
			if st.Cluster != nil && st.Cluster.Resyncing {
				return false
			}
			for j := range c.Nodes {
				if j == i {
					continue
				}
				if peerStatus(t, c, i, j).Expired {
					return false
				}
			}
		}
		return true
	})
	c.CheckNoTemp(t)
}

// TestCacheBackAfterRetention: a cache cut off for longer than the
// retention takes an upload and misses a delete of a file it holds; after
// the heal it is not left resyncing (it was, forever), its upload reaches
// the replicas and it stops serving the deleted file. About 15 s.
func TestCacheBackAfterRetention(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleReplica, cluster.RoleCache},
		Args: []string{"--tombstone-retention", retention}})
	hc := newClient(t)
	cache := c.Nodes[2].URL
	x := randomBytes(30 << 10)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", x)
	c.WaitConverged(t, converge)
	res, _ := get(t, hc, cache+"/"+xID)
	require.Equal(t, http.StatusOK, res.StatusCode)
	c.Isolate(2)
	_, uID := upload(t, hc, cache, "u", randomBytes(20<<10))
	deleteID(t, hc, c.Nodes[0].URL, xID)
	wait(4 * time.Second)
	c.HealAll()
	c.WaitConverged(t, converge)
	assertEveryReplica(t, c, uID, 20<<10)
	eventually(t, converge, "the cache stops serving the deleted file", func() bool {
		res, _ := get(t, hc, cache+"/"+xID)
		return res.StatusCode == http.StatusNotFound
	})
	st, err := c.Status(2)
	require.NoError(t, err)
	require.NotNil(t, st.Cluster)
	assert.False(t, st.Cluster.Resyncing, "the cache is left resyncing")
}

// TestReplicaWithOnlyCaches: a replica whose only peers are caches, quiet
// for longer than the retention, still serves their misses (it became
// "stale" and refused them).
func TestReplicaWithOnlyCaches(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleCache, cluster.RoleCache},
		Args: []string{"--tombstone-retention", retention}})
	hc := newClient(t)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", randomBytes(40<<10))
	wait(4 * time.Second)
	// The next change wakes the replica's pushers after the quiet spell.
	_, yID := upload(t, hc, c.Nodes[0].URL, "y", randomBytes(50<<10))
	eventually(t, converge, "the replica's queues towards the caches drain", func() bool {
		return queueLength(t, c, 0, 1) == 0 && queueLength(t, c, 0, 2) == 0
	})
	for _, id := range []string{xID, yID} {
		for _, i := range []int{1, 2} {
			res, body := get(t, hc, c.Nodes[i].URL+"/"+id)
			require.Equal(t, http.StatusOK, res.StatusCode, "a miss through cache %d: %s", i, body)
			assert.Equal(t, id, idOf(body))
		}
	}
}

// TestRepairedBlobServedRight: a small blob whose file goes bad on disk is
// never served wrong: the read that finds the bad bytes quarantines them
// and fetches the blob again from a peer; it used to keep them in memory
// and serve them with immutable caching headers even after the scrubber
// repaired the file.
func TestRepairedBlobServedRight(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{"--scrub-interval", "1s"}})
	hc := newClient(t)
	data := randomBytes(3000)
	_, id := upload(t, hc, c.Nodes[0].URL, "s", data)
	c.WaitConverged(t, converge)
	p := blobPath(c.Nodes[1], id)
	bad := append([]byte(nil), data...)
	bad[1000] ^= 0xff
	require.NoError(t, os.WriteFile(p, bad, 0o644))
	for range 5 {
		res, body := get(t, hc, c.Nodes[1].URL+"/"+id)
		if res.StatusCode == http.StatusOK {
			require.Equal(t, id, idOf(body), "node 1 served a 200 of wrong bytes")
		}
	}
	eventually(t, converge, "node 1 holds the right bytes again", func() bool {
		h, err := cluster.HashFile(p)
		return err == nil && h == id
	})
	for range 5 {
		res, body := get(t, hc, c.Nodes[1].URL+"/"+id)
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Equal(t, id, idOf(body), "node 1 served wrong bytes after the repair")
	}
}

// TestClockAheadRefused: a state dated a year ahead, or at the greatest
// clock, pushed to a node is refused ("ahead") and moves no clock; the
// node's next upload replicates normally (it carried clock 0 after a
// state at 2^64-1, refused by every peer forever).
func TestClockAheadRefused(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{"--max-clock-offset", "2s"}})
	hc := newClient(t)
	for _, clock := range []uint64{clockAt(time.Now().AddDate(1, 0, 0)), ^uint64(0)} {
		id := idOf(randomBytes(100))
		body := fmt.Sprintf(`{"changes":[{"sha512":%q,"deleted":true,"clock":%d,"node":"intruder"}]}`, id, clock)
		res, ans := post(t, hc, c.Nodes[0].URL+"/_internal/changes", body)
		require.Equal(t, http.StatusOK, res.StatusCode, "%s", ans)
		assert.JSONEq(t, `{"results":["ahead"]}`, string(ans))
		s, _ := stateOf(t, c, hc, 0, id)
		assert.Equal(t, http.StatusNotFound, s, "nothing recorded")
	}
	before := time.Now()
	data := randomBytes(1000)
	_, id := upload(t, hc, c.Nodes[0].URL, "after", data)
	_, st := stateOf(t, c, hc, 0, id)
	assert.InDelta(t, before.UnixMilli(), int64(st.Clock>>16), 5000, "the node's clock stayed near its wall clock")
	c.WaitConverged(t, converge)
	assertEveryReplica(t, c, id, 1000)
	assert.Contains(t, metrics(t, hc, c.Nodes[0].URL, "dtfc_clock_refused_total"), "dtfc_clock_refused_total 2")
}

// TestClockSkewedNode: a node whose wall clock jumps 10 s ahead (max
// offset 2 s) takes an upload; its peers refuse the push, which it shows
// and counts; its clock back, the queue drains once real time passes the
// skew: no queue stays wedged. About 20 s.
func TestClockSkewedNode(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{"--max-clock-offset", "2s"}})
	hc := newClient(t)
	c.Nodes[1].SetClock(10 * time.Second)
	// The node re-reads its clock file every 20 ms: upload until an
	// upload is dated ahead.
	var id string
	eventually(t, converge, "an upload to node 1 is dated ahead", func() bool {
		_, id = upload(t, hc, c.Nodes[1].URL, "skewed", randomBytes(5000))
		_, st := stateOf(t, c, hc, 1, id)
		return st.Clock >= clockAt(time.Now().Add(9*time.Second))
	})
	eventually(t, converge, "node 1 shows node 0 refusing its push", func() bool {
		n := peerStatus(t, c, 1, 0).ClockRefused
		return n > 0
	})
	assert.Contains(t, metrics(t, hc, c.Nodes[1].URL, "dtfc_replication_clock_refused_total"), "dtfc_replication_clock_refused_total")
	_, st0 := stateOf(t, c, hc, 0, id)
	assert.Empty(t, st0.Node, "node 0 took the skewed state")
	c.Nodes[1].SetClock(0)
	c.WaitConverged(t, converge)
	assertEveryReplica(t, c, id, 5000)
}

// TestUploadAfterSkewedDelete: node 1's clock runs 6 s ahead (offset 2 s)
// and it deletes a file; node 0 refuses the delete, dated too far ahead,
// and its pusher offers it again. A moment later the same file is
// uploaded again through node 0: that upload, later in real time, must
// win on every node once the delete is taken. Dated by node 0's clock it
// was before the delete, and the delete undid it: an acknowledged upload
// lost. Node 0 now waits until the delete is within the offset and dates
// the upload after it. About 15 s.
func TestUploadAfterSkewedDelete(t *testing.T) {
	const skew = 6 * time.Second
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{"--max-clock-offset", "2s"}})
	hc := newClient(t)
	data := randomBytes(4000)
	_, id := upload(t, hc, c.Nodes[0].URL, "doc", data)
	c.WaitConverged(t, converge)

	// The node re-reads its clock file every 20 ms: upload probes until
	// one is dated ahead.
	c.Nodes[1].SetClock(skew)
	eventually(t, converge, "an upload to node 1 is dated ahead", func() bool {
		_, pid := upload(t, hc, c.Nodes[1].URL, "probe", randomBytes(100))
		_, st := stateOf(t, c, hc, 1, pid)
		return st.Clock >= clockAt(time.Now().Add(skew-time.Second))
	})
	deleteID(t, hc, c.Nodes[1].URL, id)
	_, tomb := stateOf(t, c, hc, 1, id)
	require.True(t, tomb.Deleted)
	require.Greater(t, tomb.Clock, clockAt(time.Now().Add(skew-time.Second)), "the delete is dated ahead")
	// Node 1 offers its queue again and again; node 0 logs each refusal,
	// naming the ID.
	eventually(t, converge, "node 0 refuses node 1's delete", func() bool { return logHas(c.Nodes[0], "sha512 "+id+": blobstore: clock") })
	_, st := stateOf(t, c, hc, 0, id)
	require.False(t, st.Deleted, "node 0 took the delete dated ahead")

	begin := time.Now()
	_, again := upload(t, hc, c.Nodes[0].URL, "doc again", data)
	require.Equal(t, id, again)
	t.Logf("uploaded again through node 0 in %v", time.Since(begin).Round(time.Millisecond))
	_, up := stateOf(t, c, hc, 0, id)
	require.False(t, up.Deleted)
	assert.Greater(t, up.Clock, tomb.Clock, "the upload is dated before the delete it came after")

	c.Nodes[1].SetClock(0)
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		_, st := stateOf(t, c, hc, i, id)
		assert.False(t, st.Deleted, "node %d: the delete dated ahead undid the upload made after it", i)
	}
	assertEveryReplica(t, c, id, int64(len(data)))
}

// TestListedUnderTwoURLs: a node whose peer list names itself under
// another URL (localhost for 127.0.0.1) must not count itself in
// ?replicas=N (it answered 201 with its only real peer down); one peer
// listed under two URLs counts once. About 10 s.
func TestListedUnderTwoURLs(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, ListSelf: true, ListTwice: true,
		Args: []string{"--replicas-timeout", "2s"}})
	hc := newClient(t)
	// Identities are learned from the first exchanges.
	upload(t, hc, c.Nodes[0].URL, "warm", randomBytes(100))
	c.WaitConverged(t, converge)
	eventually(t, converge, "node 0 finds the entry that is itself", func() bool {
		st, err := c.Status(0)
		require.NoError(t, err)
		if st.Cluster == nil {
			return false
		}
		for _, p := range st.Cluster.Peers {
			if p.Self {
				return true
			}
		}
		return false
	})
	res, body := putQuery(t, hc, c.Nodes[0].URL+"/r3?replicas=3", randomBytes(100))
	assert.Equal(t, http.StatusBadRequest, res.StatusCode, "two distinct nodes cannot hold 3 replicas: %s", body)
	c.Nodes[1].Stop()
	res, body = putQuery(t, hc, c.Nodes[0].URL+"/r2?replicas=2", randomBytes(100))
	assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode, "with its only real peer down, 2 replicas cannot be confirmed: %s", body)
}

// TestRecordWithoutFile: a node whose blob file went missing (its record
// kept) serves the blob again at the next read, fetched from a peer; it
// refused the peer's equal state until the next scrub.
func TestRecordWithoutFile(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := newClient(t)
	data := randomBytes(100 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "f", data)
	c.WaitConverged(t, converge)
	require.NoError(t, os.Remove(blobPath(c.Nodes[1], id)))
	res, body := get(t, hc, c.Nodes[1].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)
	assert.Equal(t, id, idOf(body))
	eventually(t, converge, "node 1 holds the file again", func() bool {
		_, ok := c.BlobFiles(1)[id]
		return ok
	})
	assertHeld(t, c, 1, id, int64(len(data)))
}

// TestDeleteWhilePeerDown: DELETE on node 1 of an ID only node 0 holds,
// while node 0 is down, records the delete (200): node 1 could not ask
// node 0. It answered 404 and recorded nothing, and the file came back
// on both when node 0 returned (cockatiel's issue 9).
func TestDeleteWhilePeerDown(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := newClient(t)
	c.Partition(0, 1)
	_, id := upload(t, hc, c.Nodes[0].URL, "only0", randomBytes(10<<10))
	c.Nodes[0].Stop()
	c.HealAll()
	deleteID(t, hc, c.Nodes[1].URL, id)
	c.Nodes[0].Start()
	c.WaitConverged(t, converge)
	assertNowhere(t, c, id)
	// With every peer up and none knowing it, DELETE is a 404.
	status, err := tryDelete(t.Context(), hc, c.Nodes[1].URL, idOf(randomBytes(10)))
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, status)
}

// TestSilentPeer: a peer that stops answering without closing (its link
// holds every exchange) is given up on after the stall timeout, so once
// it answers again replication resumes within seconds, not minutes (the
// 2-minute header timeout held it). About 25 s.
func TestSilentPeer(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{"--anti-entropy-interval", "1h"}})
	hc := newClient(t)
	c.Delay(0, 1, time.Hour)
	_, id := upload(t, hc, c.Nodes[0].URL, "held", randomBytes(10<<10))
	eventually(t, converge, "node 0's push is in flight", func() bool { return queueLength(t, c, 0, 1) > 0 })
	wait(time.Second)
	c.Delay(0, 1, 0)
	healed := time.Now()
	eventually(t, 40*time.Second, "node 0's queue towards node 1 drains", func() bool { return queueLength(t, c, 0, 1) == 0 })
	t.Logf("queue drained %v after the peer answered again", time.Since(healed).Round(100*time.Millisecond))
	assertHeld(t, c, 1, id, 10<<10)
}

// post sends a node-to-node POST (no secret in these clusters).
func post(t *testing.T, hc *http.Client, url, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	return do(t, hc, req)
}

func putQuery(t *testing.T, hc *http.Client, url string, data []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, url, bytes.NewReader(data))
	require.NoError(t, err)
	return do(t, hc, req)
}

func do(t *testing.T, hc *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	res, err := hc.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, b
}

// denyEntryOf returns the node at base's deny entry of id (GET
// /_internal/deny), failing t if it has none.
func denyEntryOf(t *testing.T, hc *http.Client, base, id string) blobstore.Deny {
	t.Helper()
	res, body := get(t, hc, base+"/_internal/deny")
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)
	var list struct {
		Entries []blobstore.Deny `json:"entries"`
	}
	require.NoError(t, json.Unmarshal(body, &list))
	for _, d := range list.Entries {
		if d.ID.String() == id {
			return d
		}
	}
	t.Fatalf("%s has no deny entry of %s", base, id)
	return blobstore.Deny{}
}

func setDeny(t *testing.T, hc *http.Client, base, id, body string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, base+"/_deny/"+id, strings.NewReader(body))
	require.NoError(t, err)
	res, ans := do(t, hc, req)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", ans)
	var d map[string]any
	require.NoError(t, json.Unmarshal(ans, &d))
}

func liftDeny(t *testing.T, hc *http.Client, base, id string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodDelete, base+"/_deny/"+id, nil)
	require.NoError(t, err)
	res, ans := do(t, hc, req)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", ans)
}

// TestCacheListedAsReplica: a node whose peer list calls a cache a
// replica learns the cache's real role from its answers, does not count
// it in ?replicas=N (it answered 201, and the cache then evicted the
// upload: one copy, unnoticed), and does not push it uploads: the cache
// answers them "cache". About 5 s.
func TestCacheListedAsReplica(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleCache},
		Args: []string{"--replicas-timeout", "2s"}})
	hc := newClient(t)
	list := fmt.Sprintf("[[peers]]\nurl = %q\nrole = \"replica\"\n", c.PeerURL(0, 1))
	require.NoError(t, os.WriteFile(c.Nodes[0].PeerList, []byte(list), 0o644))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, c.Nodes[0].URL+"/refreshpeers", nil)
	require.NoError(t, err)
	res, body := do(t, hc, req)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)
	// Any exchange tells node 0 what node 1 is.
	_, warm := upload(t, hc, c.Nodes[0].URL, "warm", randomBytes(1000))
	eventually(t, converge, "node 0 learns node 1 is a cache", func() bool {
		return peerStatus(t, c, 0, 1).ReportedRole == dtfc.RoleCache
	})
	res, body = putQuery(t, hc, c.Nodes[0].URL+"/r2?replicas=2", randomBytes(5000))
	assert.Equal(t, http.StatusBadRequest, res.StatusCode, "a cache is no replica: %s", body)
	eventually(t, converge, "node 0's queue towards the cache drains", func() bool { return queueLength(t, c, 0, 1) == 0 })
	assert.NotContains(t, c.BlobFiles(1), warm, "the cache was pushed an upload")
	assert.True(t, logHas(c.Nodes[0], "role differs from the peer list"), "node 0 logs the mismatch")
}

// TestPartitionLongerThanExpiry: four nodes split {0,1} | {2,3} for longer
// than tombstone_expiry; each side deletes a file and takes an upload,
// forgets its delete and marks the other side expired. After the heal
// every node resyncs against the other side: both deletes hold, both
// uploads reach every node, and no mark or resync is left. (A resync that
// took a node of its own side, expired by the other, as a witness that a
// file was still live kept the other side's deleted file.) About 30 s.
func TestPartitionLongerThanExpiry(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 4, Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "3s"}})
	hc := newClient(t)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", randomBytes(20<<10))
	_, yID := upload(t, hc, c.Nodes[2].URL, "y", randomBytes(30<<10))
	c.WaitConverged(t, converge)
	splitHalves(c)
	deleteID(t, hc, c.Nodes[0].URL, xID)
	deleteID(t, hc, c.Nodes[2].URL, yID)
	_, uID := upload(t, hc, c.Nodes[1].URL, "u", randomBytes(40<<10))
	_, vID := upload(t, hc, c.Nodes[3].URL, "v", randomBytes(50<<10))
	eventually(t, 2*converge, "each side forgets its delete and marks the other side expired", func() bool {
		for i := range c.Nodes {
			id := xID
			if i >= 2 {
				id = yID
			}
			if s, _ := stateOf(t, c, hc, i, id); s != http.StatusNotFound {
				return false
			}
			for j := range c.Nodes {
				if (i < 2) != (j < 2) {
					if !peerStatus(t, c, i, j).Expired {
						return false
					}
				}
			}
		}
		return true
	})
	c.HealAll()
	c.WaitConverged(t, 2*converge)
	assertNowhere(t, c, xID)
	assertNowhere(t, c, yID)
	assertEveryReplica(t, c, uID, 40<<10)
	assertEveryReplica(t, c, vID, 50<<10)
	eventually(t, converge, "no node resyncing, no peer marked expired", func() bool {
		for i := range c.Nodes {
			st, err := c.Status(i)
			require.NoError(t, err)
			if st.Cluster != nil && st.Cluster.Resyncing {
				return false
			}
			for j := range c.Nodes {
				if j != i {
					if peerStatus(t, c, i, j).Expired {
						return false
					}
				}
			}
		}
		return true
	})
}

// TestClockAheadExpiresNobody: a node whose wall clock jumps a year
// ahead sees every tombstone as older than the expiry; it must not mark
// the peers that have not acknowledged them expired (and forget them)
// while its clock is ahead of every peer's. About 10 s.
func TestClockAheadExpiresNobody(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "1h"}})
	hc := newClient(t)
	_, xID := upload(t, hc, c.Nodes[2].URL, "x", randomBytes(10<<10))
	c.WaitConverged(t, converge)
	c.Nodes[1].Stop()
	deleteID(t, hc, c.Nodes[2].URL, xID)
	eventually(t, converge, "node 0 has the delete", func() bool {
		_, st := stateOf(t, c, hc, 0, xID)
		return st.Deleted
	})
	c.Nodes[0].SetClock(365 * 24 * time.Hour)
	eventually(t, converge, "node 0 sees its clock ahead of its peers'", func() bool {
		return logHas(c.Nodes[0], "clock is ahead of every peer")
	})
	wait(3 * time.Second) // purges run every second
	exp := peerStatus(t, c, 0, 1).Expired
	assert.False(t, exp, "node 0 marked node 1 expired on the strength of a clock a year ahead")
	_, st := stateOf(t, c, hc, 0, xID)
	assert.True(t, st.Deleted, "node 0 forgot the delete node 1 has not acknowledged")
	c.Nodes[0].SetClock(0)
	c.Nodes[1].Start()
	c.WaitConverged(t, converge)
	assertNowhere(t, c, xID)
}

// TestLateDeleteGivesFullExpiry: a delete that reaches a node late, with
// an old clock, gives that node's peers the whole expiry to acknowledge
// it from when it arrived: node 0 (expiry 5 s) learns it more than 6 s
// after it was made and must not mark node 1, cut off from it for 2 s
// more, expired. (The expiry counted from the delete's clock: node 0
// marked node 1 a second after it learned of the delete.) Nodes 1 and 2
// have an expiry of a minute, so node 2 waits for node 0 however long
// the delete takes to cross the healed link: with one expiry for all,
// node 0 had to learn within the second between the heal and node 2
// marking it, and under load it did not (CI, 2026-12-06). About 17 s.
func TestLateDeleteGivesFullExpiry(t *testing.T) {
	long := []string{"--tombstone-expiry", "60s"}
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "5s"},
		NodeArgs: map[int][]string{1: long, 2: long}})
	hc := newClient(t)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", randomBytes(10<<10))
	c.WaitConverged(t, converge)
	c.Partition(0, 1)
	c.Partition(0, 2)
	deleteID(t, hc, c.Nodes[2].URL, xID)
	wait(6 * time.Second) // longer than node 0's expiry
	c.Heal(0, 2)
	eventually(t, converge, "node 0 learns of the delete, and keeps it for node 1", func() bool {
		_, st := stateOf(t, c, hc, 0, xID)
		return st.Deleted
	})
	wait(2 * time.Second) // purges run every second
	exp := peerStatus(t, c, 0, 1).Expired
	assert.False(t, exp, "node 0 marked node 1 expired a moment after it learned of an old delete")
	assert.False(t, peerStatus(t, c, 2, 0).Expired, "node 2 marked node 0 expired: the test did not run as meant")
	c.HealAll()
	c.WaitConverged(t, converge)
	assertNowhere(t, c, xID)
}

// TestLiftAfterSkewedBlock: the same for deny entries. A file is blocked
// everywhere; node 1, its clock 6 s ahead (max_clock_offset 2 s), blocks
// it again (another reason); node 0 refuses that entry. An operator
// lifts the block through node 0: the lift must be dated after node 1's
// entry, or once node 0 takes it (node 1's clock back right, it offers
// it again) the block wins and the acknowledged lift is undone on every
// node.
func TestLiftAfterSkewedBlock(t *testing.T) {
	const skew = 6 * time.Second
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{"--max-clock-offset", "2s"}})
	hc := newClient(t)
	data := randomBytes(4000)
	_, id := upload(t, hc, c.Nodes[0].URL, "doc", data)
	setDeny(t, hc, c.Nodes[0].URL, id, `{"status": 451, "reason": "court order"}`)
	c.WaitConverged(t, converge)
	require.True(t, hasDenyEntry(t, hc, c.Nodes[1].URL, id))

	c.Nodes[1].SetClock(skew)
	eventually(t, converge, "an upload to node 1 is dated ahead", func() bool {
		_, pid := upload(t, hc, c.Nodes[1].URL, "probe", randomBytes(100))
		_, st := stateOf(t, c, hc, 1, pid)
		return st.Clock >= clockAt(time.Now().Add(skew-time.Second))
	})
	setDeny(t, hc, c.Nodes[1].URL, id, `{"status": 403, "reason": "blocked again"}`)
	block := denyEntryOf(t, hc, c.Nodes[1].URL, id)
	require.Equal(t, "blocked again", block.Reason)
	// Node 1 offers its queue again and again; node 0 logs each refusal
	// with the entry's clock.
	eventually(t, converge, "node 0 refuses node 1's block", func() bool { return logHas(c.Nodes[0], "clock "+block.Clock.String()+" is") })

	begin := time.Now()
	liftDeny(t, hc, c.Nodes[0].URL, id)
	t.Logf("lifted through node 0 in %v", time.Since(begin).Round(time.Millisecond))

	c.Nodes[1].SetClock(0)
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		assert.False(t, hasDenyEntry(t, hc, c.Nodes[i].URL, id), "node %d: the block dated ahead undid the lift made after it", i)
	}
	// Lifted: the file can be uploaded again.
	status, _ := upload(t, hc, c.Nodes[1].URL, "doc", data)
	assert.Contains(t, []int{http.StatusOK, http.StatusCreated}, status)
}

// TestExpiredNodeMeetsANewNode: node 2 is down while x is deleted and
// the delete forgotten (nodes 0 and 1 mark it expired); then node 3
// joins, with no record of x and no mark of node 2, and node 2 comes
// back still holding x. Node 3 must not take x from node 2 (by a push
// or by anti-entropy) and hand it on to nodes 0 and 1, which forgot the
// delete: x stays deleted everywhere. About 12 s per case.
//
//   - Heard: node 3 heard nodes 0 and 1 say they marked node 2.
//   - Restarted: node 3 restarts just before node 2 returns, and cannot
//     reach nodes 0 and 1 (nor they it) until node 2 resynced: it must
//     remember what it heard before.
func TestExpiredNodeMeetsANewNode(t *testing.T) {
	for _, tc := range []string{"Heard", "Restarted"} {
		t.Run(tc, func(t *testing.T) { testExpiredNodeMeetsANewNode(t, tc) })
	}
}

func testExpiredNodeMeetsANewNode(t *testing.T, tc string) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "3s"}})
	hc := newClient(t)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", randomBytes(50<<10))
	_, yID := upload(t, hc, c.Nodes[0].URL, "y", randomBytes(60<<10))
	c.WaitConverged(t, converge)
	c.Nodes[2].Stop()
	deleteID(t, hc, c.Nodes[0].URL, xID)
	waitForgotWithout2(t, c, hc, xID)
	c.AddNode(cluster.RoleReplica)
	eventually(t, converge, "node 3 gets y", func() bool { _, ok := c.BlobFiles(3)[yID]; return ok })
	if tc == "Restarted" {
		for _, j := range []int{0, 1} {
			c.Partition(3, j)
		}
		c.Nodes[3].Stop()
		c.Nodes[3].Start()
	}

	c.Nodes[2].Start()
	eventually(t, 2*converge, "node 2 finishes its resync", func() bool { return logHas(c.Nodes[2], "resync finished") })
	if tc == "Restarted" {
		// Until it hears from nodes 0 and 1 again, node 3 heeds their
		// marks as it last heard them (though they are lifted by now).
		eventually(t, converge, "node 3 knows node 2, and that another peer marked it", func() bool {
			return peerStatus(t, c, 3, 2).ExpiredBy != ""
		})
		status, st := stateOf(t, c, hc, 3, xID)
		assert.Equal(t, http.StatusNotFound, status, "node 3 took x from node 2 while cut off from its markers: %+v", st)
		assert.Positive(t, queueLength(t, c, 2, 3), "node 3 refuses node 2's pushes")
		c.HealAll()
	}
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		status, st := stateOf(t, c, hc, i, xID)
		assert.Equal(t, http.StatusNotFound, status, "node %d has a record of x, deleted and forgotten: %+v", i, st)
	}
	assertNowhere(t, c, xID)
	assertEveryReplica(t, c, yID, 60<<10)
}

// waitForgotWithout2 waits until nodes 0 and 1 forgot the delete of id
// and marked node 2 (down or cut off) expired, and checks that node 2
// still holds id.
func waitForgotWithout2(t *testing.T, c *cluster.Cluster, hc *http.Client, id string) {
	t.Helper()
	eventually(t, converge, "nodes 0 and 1 forget the delete and mark node 2 expired", func() bool {
		for _, i := range []int{0, 1} {
			if s, _ := stateOf(t, c, hc, i, id); s != http.StatusNotFound {
				return false
			}
			if !peerStatus(t, c, i, 2).Expired {
				return false
			}
		}
		return true
	})
	require.Contains(t, c.BlobFiles(2), id, "node 2 still holds the deleted file")
}

// TestExpiredBeforeIdentified: node 0 marks node 1 expired before it
// knows node 1's identity (node 1 was down from before node 0 last
// started), so the mark is under node 1's URL alone. Node 1 returns
// holding a file node 0 deleted and forgot, which node 0 had read from
// it (node 1's pusher never delivered it). Node 1 must learn that it is
// expired (node 0 asks it who it is: nothing else would tell it) and
// drop the file in its resync, though its pusher never delivered it:
// node 0 says it forgot a delete of it. About 10 s.
func TestExpiredBeforeIdentified(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "3s"}})
	hc := newClient(t)
	_, yID := upload(t, hc, c.Nodes[0].URL, "y", randomBytes(60<<10))
	c.WaitConverged(t, converge)

	// x is uploaded on node 1, which cannot push it to node 0; node 0
	// gets it by a read (pulled from node 1).
	c.Cut(1, 0)
	_, xID := upload(t, hc, c.Nodes[1].URL, "x", randomBytes(50<<10))
	res, _ := get(t, hc, c.Nodes[0].URL+"/"+xID)
	require.Equal(t, http.StatusOK, res.StatusCode)
	eventually(t, converge, "node 0 holds x", func() bool { s, _ := stateOf(t, c, hc, 0, xID); return s == http.StatusOK })
	require.Positive(t, queueLength(t, c, 1, 0), "node 1 still has x to push to node 0")
	c.Nodes[1].Stop()

	// Node 0 restarts (it forgets node 1's identity), deletes x and
	// forgets the delete without node 1's acknowledgement.
	c.Nodes[0].Stop()
	c.Nodes[0].Start()
	deleteID(t, hc, c.Nodes[0].URL, xID)
	eventually(t, converge, "node 0 forgets the delete of x and marks node 1 expired", func() bool {
		s, _ := stateOf(t, c, hc, 0, xID)
		return s == http.StatusNotFound && peerStatus(t, c, 0, 1).Expired
	})
	require.Empty(t, peerStatus(t, c, 0, 1).Node, "node 0 knows node 1's identity: the mark is not the URL-only kind this test is about")

	// Node 1 returns, reached by node 0 but not reaching it (its pusher
	// cannot offer x again, which would move its cursor past x). Node 0
	// asks it who it is; from then on it refuses node 1's offers as
	// expired, and every answer tells node 1 so.
	c.Nodes[1].Start()
	eventually(t, converge, "node 0 learns node 1's identity", func() bool { return peerStatus(t, c, 0, 1).Node != "" })
	assert.True(t, peerStatus(t, c, 0, 1).Expired)

	// Node 1's resync drops x: node 0 says it forgot a delete of x.
	c.HealAll()
	eventually(t, converge, "node 1 finishes its resync", func() bool { return logHas(c.Nodes[1], "resync finished") })
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		status, st := stateOf(t, c, hc, i, xID)
		assert.Equal(t, http.StatusNotFound, status, "node %d has a record of x, deleted and forgotten: %+v", i, st)
	}
	assertNowhere(t, c, xID)
	assertEveryReplica(t, c, yID, 60<<10)
}

// TestDeleteOfUploadSeenOnlyAtAPeer: node 0's clock runs 5 s ahead, well
// within max_clock_offset (30 s). A file is uploaded through node 0 while
// node 0 cannot push to node 1 (the link 0->1 cut: the upload "still in
// flight", API.md's DELETE). A client then deletes it through node 1:
// node 1 has no record, asks node 0 (link 1->0 is up), learns of the
// upload and records a tombstone (200). That delete was made after the
// upload, and node 1 saw the upload's state before it made it, yet it is
// was dated by node 1's own clock, before the upload's, and once the link
// healed the upload won everywhere: the acknowledged delete undone (found
// by a review helper). Node 1 now observes the clock of the state it saw.
func TestDeleteOfUploadSeenOnlyAtAPeer(t *testing.T) {
	const skew = 5 * time.Second
	c := cluster.Start(t, cluster.Options{Nodes: 2, Args: []string{
		"--max-clock-offset", "30s",
		// No anti-entropy round pulls the upload into node 1 meanwhile
		// (the start-up round is over once the nodes answer).
		"--anti-entropy-interval", "1h",
	}})
	hc := newClient(t)
	upload(t, hc, c.Nodes[0].URL, "warm", randomBytes(100))
	c.WaitConverged(t, converge)

	c.Cut(0, 1)
	c.Nodes[0].SetClock(skew)
	eventually(t, converge, "an upload to node 0 is dated ahead", func() bool {
		_, pid := upload(t, hc, c.Nodes[0].URL, "probe", randomBytes(100))
		_, st := stateOf(t, c, hc, 0, pid)
		return st.Clock >= clockAt(time.Now().Add(skew-time.Second))
	})

	data := randomBytes(3000)
	_, id := upload(t, hc, c.Nodes[0].URL, "doc", data)
	_, up := stateOf(t, c, hc, 0, id)
	s, _ := stateOf(t, c, hc, 1, id)
	require.Equal(t, http.StatusNotFound, s, "node 1 got the upload before the delete")

	deleteID(t, hc, c.Nodes[1].URL, id) // 200: node 0 knows the ID
	_, tomb := stateOf(t, c, hc, 1, id)
	require.True(t, tomb.Deleted)
	t.Logf("upload on node 0 dated %v; the delete made after it on node 1 dated %v",
		time.UnixMilli(int64(up.Clock>>16)).Format(time.StampMilli), time.UnixMilli(int64(tomb.Clock>>16)).Format(time.StampMilli))
	assert.Greater(t, tomb.Clock, up.Clock, "the delete, made after node 1 saw the upload's state, is dated before it")

	c.Heal(0, 1)
	c.WaitConverged(t, converge)
	for i := range c.Nodes {
		_, st := stateOf(t, c, hc, i, id)
		assert.True(t, st.Deleted, "node %d: the acknowledged delete was undone by the upload it came after", i)
	}
	assertNowhere(t, c, id)
}
