package peer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

const converge = 20 * time.Second

func running(o nodeOpts) nodeOpts {
	o.run = true
	inner := o.peer
	o.peer = func(p *peer.Options) {
		p.AntiEntropyInterval = 200 * time.Millisecond
		if inner != nil {
			inner(p)
		}
	}
	return o
}

// upload PUTs data to the node over HTTP and returns the answer.
func upload(t testing.TB, n *node, name string, data []byte, query string) (int, string) {
	req, err := http.NewRequest(http.MethodPut, n.URL+"/"+name+query, bytes.NewReader(data))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func del(t testing.TB, n *node, id dtfc.ID) int {
	req, _ := http.NewRequest(http.MethodDelete, n.URL+"/"+id.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// allHold reports whether every node holds id (want) or none does, file
// included: a delete commits its tombstone just before it unlinks.
func allHold(nodes []*node, id dtfc.ID, want bool) func() bool {
	return func() bool {
		for _, n := range nodes {
			_, err := os.Stat(n.Store.Path(id))
			if n.holds(id) != want || (err == nil) != want {
				return false
			}
		}
		return true
	}
}

func queuesEmpty(nodes ...*node) func() bool {
	return func() bool {
		for _, n := range nodes {
			for _, q := range n.status().Queues {
				if q.Length != 0 {
					return false
				}
			}
		}
		return true
	}
}

// TestPushReplicates: an upload on one node reaches every replica, and a
// delete on another removes it everywhere; queues drain to zero.
func TestPushReplicates(t *testing.T) {
	nodes := startCluster(t, running(nodeOpts{}), running(nodeOpts{}), running(nodeOpts{}))
	a, b := nodes[0], nodes[1]
	data := randomBytes(t, 100<<10)
	code, _ := upload(t, a, "f.bin", data, "")
	require.Equal(t, http.StatusCreated, code)
	id := dtfc.Sum(data)
	eventually(t, converge, allHold(nodes, id, true), "every replica holds the upload")
	require.Equal(t, http.StatusOK, del(t, b, id))
	eventually(t, converge, allHold(nodes, id, false), "every replica dropped the delete")
	for _, n := range nodes {
		st, err := n.Store.Stat(id)
		require.NoError(t, err)
		assert.True(t, st.Deleted)
		_, err = os.Stat(n.Store.Path(id))
		assert.True(t, os.IsNotExist(err), "file removed from blobs/")
	}
	eventually(t, converge, queuesEmpty(nodes...), "queues drain")
}

// TestReplicasParam: ?replicas=N answers once N replicas hold the file,
// 400 (nothing stored) when the cluster cannot have that many, 504 when
// they do not come.
func TestReplicasParam(t *testing.T) {
	// Long enough for 1 MiB to reach two replicas on a loaded machine
	// under -race (500 ms was tight), short enough for the 504 case.
	short := func(c *server.Config) { c.ReplicasTimeout = 3 * time.Second }
	nodes := startCluster(t, running(nodeOpts{server: short}), running(nodeOpts{}), running(nodeOpts{}))
	a, b, c := nodes[0], nodes[1], nodes[2]
	data := randomBytes(t, 1<<20)
	code, body := upload(t, a, "three.bin", data, "?replicas=3")
	require.Equal(t, http.StatusCreated, code, body)
	id := dtfc.Sum(data)
	assert.True(t, b.holds(id) && c.holds(id), "both peers hold it when the answer comes")

	data4 := randomBytes(t, 1000)
	code, body = upload(t, a, "four.bin", data4, "?replicas=4")
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, body, "the cluster has 3")
	assert.False(t, a.holds(dtfc.Sum(data4)), "refused before the body was read: nothing stored")

	c.down()
	data2 := randomBytes(t, 1000)
	code, body = upload(t, a, "late.bin", data2, "?replicas=3")
	assert.Equal(t, http.StatusGatewayTimeout, code, body)
	assert.Contains(t, body, "still replicating")
	assert.True(t, a.holds(dtfc.Sum(data2)), "the file is kept")
	q := a.status().Queues[c.URL]
	assert.GreaterOrEqual(t, q.Length, int64(1), "the down peer's queue shows the pending upload")

	c.start()
	eventually(t, converge, func() bool { return c.holds(dtfc.Sum(data2)) }, "the returning node catches up")
	eventually(t, converge, queuesEmpty(a, b, c), "queues drain")
}

// TestCacheGetsDeletesOnly: a cache listed as such is never pushed
// uploads, but gets deletes of what it holds.
func TestCacheGetsDeletesOnly(t *testing.T) {
	nodes := startCluster(t, running(nodeOpts{}), running(nodeOpts{role: peer.RoleCache}))
	replica, cache := nodes[0], nodes[1]
	data := randomBytes(t, 10<<10)
	code, _ := upload(t, replica, "c.bin", data, "")
	require.Equal(t, http.StatusCreated, code)
	id := dtfc.Sum(data)
	eventually(t, converge, queuesEmpty(replica), "pushed what caches get")
	assert.False(t, cache.holds(id), "no upload pushed to a cache")

	resp, _, err := get(cache.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	cache.eventuallyHolds(id, true)

	require.Equal(t, http.StatusOK, del(t, replica, id))
	eventually(t, converge, func() bool { return !cache.holds(id) }, "the delete reaches the cache")
	resp, _, err = get(cache.URL + "/" + id.String())
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// postChanges offers states to a node as a peer would.
func postChanges(t testing.TB, n *node, states ...dtfc.State) []string {
	b, _ := json.Marshal(map[string]any{"changes": states})
	resp, err := http.Post(n.URL+"/_internal/changes", "application/json", bytes.NewReader(b))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var ans struct {
		Results []string `json:"results"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ans))
	return ans.Results
}

// TestLastWriterWins covers the orderings of API.md's Consistency 2.
func TestLastWriterWins(t *testing.T) {
	t.Run("old upload after newer delete", func(t *testing.T) {
		nodes := startCluster(t, running(nodeOpts{}), running(nodeOpts{}))
		a, b := nodes[0], nodes[1]
		data := []byte("resurrect me if you can")
		id := dtfc.Sum(data)
		old := dtfc.State{ID: id, Clock: dtfc.TimestampAt(time.Now().Add(-time.Hour)), Node: "old", Size: int64(len(data))}
		newer := dtfc.State{ID: id, Deleted: true, Clock: dtfc.TimestampAt(time.Now().Add(-time.Minute)), Node: "deleter"}
		assert.Equal(t, []string{"ok"}, postChanges(t, a, newer))
		assert.Equal(t, []string{"ok"}, postChanges(t, a, old), "an older upload is acknowledged and ignored")
		st, err := a.Store.Stat(id)
		require.NoError(t, err)
		assert.True(t, st.Deleted)
		eventually(t, converge, func() bool {
			st, err := b.Store.Stat(id)
			return err == nil && st.Deleted
		}, "the tombstone flows on to b")
		assert.False(t, a.holds(id) || b.holds(id))
	})
	t.Run("upload after delete", func(t *testing.T) {
		nodes := startCluster(t, running(nodeOpts{}), running(nodeOpts{}), running(nodeOpts{}))
		a, b, c := nodes[0], nodes[1], nodes[2]
		data := []byte("deleted, then uploaded again")
		id := dtfc.Sum(data)
		code, _ := upload(t, a, "x", data, "")
		require.Equal(t, http.StatusCreated, code)
		eventually(t, converge, allHold(nodes, id, true), "replicated")
		require.Equal(t, http.StatusOK, del(t, b, id))
		eventually(t, converge, allHold(nodes, id, false), "deleted everywhere")
		code, _ = upload(t, c, "x", data, "")
		require.Equal(t, http.StatusCreated, code, "stored again")
		eventually(t, converge, allHold(nodes, id, true), "the newer upload wins everywhere")
	})
	t.Run("delete racing its upload's replication", func(t *testing.T) {
		nodes := startCluster(t, running(nodeOpts{}), running(nodeOpts{}), running(nodeOpts{}))
		a, b := nodes[0], nodes[1]
		for i := range 20 {
			data := randomBytes(t, 64<<10+i)
			id := dtfc.Sum(data)
			done := make(chan int)
			go func() { code, _ := upload(t, a, "race.bin", data, ""); done <- code }()
			// Delete on b as soon as anyone knows the ID (b may not yet).
			eventually(t, converge, func() bool { return a.holds(id) || b.holds(id) }, "upload landed")
			code := del(t, b, id)
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, http.StatusCreated, <-done)
			eventually(t, converge, allHold(nodes, id, false), "the delete, newer, wins everywhere (file %d)", i)
		}
		eventually(t, converge, queuesEmpty(nodes...), "queues drain")
	})
	t.Run("equal clocks tie-break by node", func(t *testing.T) {
		nodes := startCluster(t, nodeOpts{})
		a := nodes[0]
		id := dtfc.Sum([]byte("tie"))
		clock := dtfc.TimestampAt(time.Now())
		del := dtfc.State{ID: id, Deleted: true, Clock: clock, Node: "zzz"}
		up := dtfc.State{ID: id, Clock: clock, Node: "aaa", Size: 3}
		assert.Equal(t, []string{"ok"}, postChanges(t, a, del))
		assert.Equal(t, []string{"ok"}, postChanges(t, a, up), "node aaa < zzz: the delete wins")
		st, _ := a.Store.Stat(id)
		assert.True(t, st.Deleted)
	})
}

// TestAntiEntropyJoin: a new, empty replica that lists the cluster (which
// does not list it, so nothing is pushed to it) gets the whole collection
// by anti-entropy alone.
func TestAntiEntropyJoin(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{})
	a, b := nodes[0], nodes[1]
	var ids []dtfc.ID
	for i := range 2000 {
		n := []*node{a, b}[i%2]
		data := randomBytes(t, 100+i)
		id := n.put(data)
		ids = append(ids, id)
		if i%10 == 0 {
			// Some files on both, some deleted: states of every kind.
			[]*node{b, a}[i%2].put(data)
		}
	}
	deleted := map[dtfc.ID]bool{}
	for i := 0; i < 2000; i += 7 {
		_, err := a.Store.Delete(ids[i], true)
		require.NoError(t, err)
		deleted[ids[i]] = true
	}
	joiner := newNode(t, running(nodeOpts{}))
	joiner.writePeers(a, b)
	start := time.Now()
	joiner.start()
	eventually(t, 60*time.Second, func() bool {
		blobs, _ := joiner.Store.Stats()
		return blobs == int64(2000-len(deleted))
	}, "the joiner holds every live file")
	t.Logf("joined: %d files in %s", 2000-len(deleted), time.Since(start))
	for _, id := range ids {
		if deleted[id] {
			st, err := joiner.Store.Stat(id)
			require.NoError(t, err)
			assert.True(t, st.Deleted, "tombstones came too")
		} else {
			assert.True(t, joiner.holds(id))
		}
	}
	// In sync now: another round moves no state.
	before := joiner.metric("dtfc_antientropy_repairs_total", "upload")
	require.Equal(t, 2, joiner.Cluster.AntiEntropy(context.Background()))
	assert.Equal(t, before, joiner.metric("dtfc_antientropy_repairs_total", "upload"))
}

// TestScrubRepairs: flipped bits in a stored blob are found by the
// scrubber, quarantined and fetched again from a peer.
func TestScrubRepairs(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{})
	a, b := nodes[0], nodes[1]
	data := randomBytes(t, 200<<10)
	id := a.put(data)
	b.put(data)
	path := a.Store.Path(id)
	require.NoError(t, os.Chmod(path, 0o644))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{^data[1000]}, 1000)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	require.NoError(t, a.Cluster.Scrub(context.Background()))
	assert.Equal(t, 1.0, a.metric("dtfc_scrub_corrupt_total", ""))
	assert.Equal(t, 1.0, a.metric("dtfc_scrub_repaired_total", ""))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got), "repaired from the peer")
	q, err := os.ReadDir(a.Dir + "/quarantine")
	require.NoError(t, err)
	assert.Len(t, q, 1, "the corrupt copy is kept for inspection")
}

// TestClusterSecret: with a cluster secret, every node-to-node route
// refuses requests without it (or with a wrong one) and applies nothing;
// replication with it works.
func TestClusterSecret(t *testing.T) {
	secret := func(p *peer.Options) { p.Secret = "s3cret-between-nodes" }
	nodes := startCluster(t, running(nodeOpts{peer: secret}), running(nodeOpts{peer: secret}))
	a, b := nodes[0], nodes[1]
	id := dtfc.Sum([]byte("x"))
	routes := []struct{ method, path, body string }{
		{"GET", "/_internal/blobs/" + id.String(), ""},
		{"HEAD", "/_internal/blobs/" + id.String(), ""},
		{"PUT", "/_internal/blobs/" + id.String(), "x"},
		{"GET", "/_internal/state/" + id.String(), ""},
		{"POST", "/_internal/changes", `{"changes":[{"sha512":"` + id.String() + `","deleted":true,"clock":99999999999999,"node":"evil"}]}`},
		{"GET", "/_internal/digests", ""},
		{"GET", "/_internal/digests/00", ""},
		{"GET", "/_internal/states?prefix=00", ""},
		{"POST", "/_internal/lookup", `{"ids":[]}`},
		{"GET", "/_internal/nosuch", ""},
	}
	for _, rt := range routes {
		for _, sec := range []string{"", "wrong"} {
			req, _ := http.NewRequest(rt.method, a.URL+rt.path, strings.NewReader(rt.body))
			if sec != "" {
				req.Header.Set(peer.HeaderSecret, sec)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s secret=%q", rt.method, rt.path, sec)
		}
	}
	_, err := a.Store.Stat(id)
	assert.Error(t, err, "nothing applied")

	data := randomBytes(t, 5000)
	code, _ := upload(t, a, "s.bin", data, "")
	require.Equal(t, http.StatusCreated, code)
	eventually(t, converge, func() bool { return b.holds(dtfc.Sum(data)) }, "replication carries the secret")
}

// TestPeerDownCatchesUp: operations made while a peer is down reach it
// soon after it returns (the pusher is woken, not left in backoff).
func TestPeerDownCatchesUp(t *testing.T) {
	nodes := startCluster(t, running(nodeOpts{}), running(nodeOpts{}))
	a, b := nodes[0], nodes[1]
	b.down()
	var ids []dtfc.ID
	for range 50 {
		data := randomBytes(t, 1000)
		code, _ := upload(t, a, "d.bin", data, "")
		require.Equal(t, http.StatusCreated, code)
		ids = append(ids, dtfc.Sum(data))
	}
	require.Equal(t, http.StatusOK, del(t, a, ids[0]))
	assert.Equal(t, int64(50), a.status().Queues[b.URL].Length, "50 changes wait (the deleted upload counts once)")
	// Let the pusher fail a few times so it is deep in backoff.
	eventually(t, converge, func() bool {
		for _, p := range a.status().Cluster.Peers {
			if p.URL == b.URL && p.Failures >= 4 {
				return true
			}
		}
		return false
	}, "a's pusher backs off")
	back := time.Now()
	b.start()
	eventually(t, 30*time.Second, func() bool {
		blobs, _ := b.Store.Stats()
		return blobs == 49
	}, "b catches up")
	t.Logf("caught up %s after the return", time.Since(back))
	st, err := b.Store.Stat(ids[0])
	require.NoError(t, err)
	assert.True(t, st.Deleted)
}

// TestClusterSecretRotation: during a rotation a node accepts the old and
// the new secret (sending the first), so nodes mid-roll keep replicating.
func TestClusterSecretRotation(t *testing.T) {
	rolled := func(p *peer.Options) { p.Secret, p.AcceptSecrets = "new", []string{"new", "old"} }
	notYet := func(p *peer.Options) { p.Secret = "old" }
	nodes := startCluster(t, running(nodeOpts{peer: rolled}), running(nodeOpts{peer: notYet}))
	a, b := nodes[0], nodes[1]
	data := randomBytes(t, 3000)
	code, _ := upload(t, b, "from-old.bin", data, "")
	require.Equal(t, http.StatusCreated, code)
	eventually(t, converge, func() bool { return a.holds(dtfc.Sum(data)) }, "the rolled node accepts the old secret")
	for _, sec := range []string{"old", "new"} {
		req, _ := http.NewRequest(http.MethodGet, a.URL+"/_internal/digests", nil)
		req.Header.Set(peer.HeaderSecret, sec)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, sec)
	}
}
