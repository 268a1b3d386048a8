package e2e_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/internal/cluster"
)

// Membership without editing files (API.md): nodes join through a member
// (--join), leave (DELETE /_members), and the records survive restarts.

// membersOf returns node i's membership records by URL.
func membersOf(t *testing.T, c *cluster.Cluster, i int) map[string]api.Member {
	t.Helper()
	st, err := c.Status(i)
	if err != nil || st.Cluster == nil {
		return nil
	}
	out := map[string]api.Member{}
	for _, m := range st.Cluster.Members {
		out[m.URL] = m
	}
	return out
}

// peersOf returns the URLs of node i's peers.
func peersOf(t *testing.T, c *cluster.Cluster, i int) []string {
	t.Helper()
	st, err := c.Status(i)
	if err != nil || st.Cluster == nil {
		return nil
	}
	var out []string
	for _, p := range st.Cluster.Peers {
		out = append(out, p.URL)
	}
	slices.Sort(out)
	return out
}

// othersOf returns the URLs of the nodes other than i among nodes.
func othersOf(c *cluster.Cluster, i int, nodes ...int) []string {
	var out []string
	for _, j := range nodes {
		if j != i {
			out = append(out, c.Nodes[j].URL)
		}
	}
	slices.Sort(out)
	return out
}

// waitMembers waits until each of nodes works with exactly the others.
func waitMembers(t *testing.T, c *cluster.Cluster, d time.Duration, nodes ...int) {
	t.Helper()
	for _, i := range nodes {
		waitPeers(t, c, d, i, nodes...)
	}
}

// waitPeers waits until node i works with exactly the others of nodes.
func waitPeers(t *testing.T, c *cluster.Cluster, d time.Duration, i int, nodes ...int) {
	t.Helper()
	{
		want := othersOf(c, i, nodes...)
		var got []string
		deadline := time.Now().Add(d)
		for {
			if got = peersOf(t, c, i); slices.Equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not within %v: node %d (%s) has peers [%s], want [%s]; its members: %+v", d, i, c.Nodes[i].URL, join(got), join(want), membersOf(t, c, i))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

// removeMember removes node through the member via, with the Go client
// (as dtfc leave does), and checks the record it answers.
func removeMember(t *testing.T, hc *http.Client, via, node string) {
	t.Helper()
	cl, err := client.New([]string{via}, client.Options{HTTPClient: hc})
	require.NoError(t, err)
	m, err := cl.RemoveMember(t.Context(), node, false)
	require.NoError(t, err)
	require.True(t, m.Removed && m.URL == node, "%+v", m)
	members, err := cl.Members(t.Context())
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(members, func(m api.Member) bool { return m.URL == node && m.Removed }), "%+v", members)
}

// addMember sends PUT /_members {"url": node} to the member via and
// returns the status.
func addMember(t *testing.T, hc *http.Client, via, node string) int {
	t.Helper()
	status, _ := membersRequest(t, hc, http.MethodPut, via, node, false)
	return status
}

// membersRequest sends PUT /_members {"url": node}, or DELETE /_members?url=node
// (&force=1 with force), to the member via; it returns the status and
// the body.
func membersRequest(t *testing.T, hc *http.Client, method, via, node string, force bool) (int, string) {
	t.Helper()
	target, body := via+"/_members", io.Reader(strings.NewReader(`{"url":"`+node+`"}`))
	if method == http.MethodDelete {
		target, body = via+"/_members?url="+url.QueryEscape(node), nil
		if force {
			target += "&force=1"
		}
	}
	req, err := http.NewRequestWithContext(t.Context(), method, target, body)
	require.NoError(t, err)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestJoinUnderLoad: a third node joins while uploads go on; every member
// learns of it, nothing acknowledged is lost, and it fills itself.
func TestJoinUnderLoad(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Join: true})
	hc := newClient(t)
	waitMembers(t, c, 20*time.Second, 0, 1)

	ctx, stop := context.WithCancel(t.Context())
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	// The URLs now: AddNode appends to c.Nodes while the workers run.
	urls := []string{c.Nodes[0].URL, c.Nodes[1].URL}
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				data := randomBytes(1 << 10)
				status, id, err := tryUpload(ctx, hc, urls[w], "f", data)
				if err == nil && (status == http.StatusOK || status == http.StatusCreated) {
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}
		}()
	}
	eventually(t, 20*time.Second, "some uploads", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 50 })
	c.AddNode(cluster.RoleReplica)
	waitMembers(t, c, 60*time.Second, 0, 1, 2)
	eventually(t, 20*time.Second, "uploads after the join", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 200 })
	stop()
	wg.Wait()

	c.WaitConverged(t, 3*time.Minute)
	for _, id := range acked {
		assertEveryReplica(t, c, id, 1<<10)
	}
	t.Logf("%d uploads acknowledged around the join; all on the three nodes", len(acked))
}

// TestTwoJoinAtOnce: two nodes join through the same member at the same
// time; all three learn of each other.
func TestTwoJoinAtOnce(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true})
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	hc := newClient(t)
	_, id := upload(t, hc, c.Nodes[2].URL, "x", []byte("joined at once"))
	c.WaitConverged(t, time.Minute)
	assertEveryReplica(t, c, id, int64(len("joined at once")))
}

// TestJoinThroughNodeThatDies: a node joins through node 0 while node 1
// is down, then node 0 is killed and node 1 comes back: node 1 knew only
// nodes 0 and itself, and learns of the new node from the new node
// itself; they replicate.
func TestJoinThroughNodeThatDies(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Join: true})
	waitMembers(t, c, 20*time.Second, 0, 1)
	c.Nodes[1].Stop()
	n := c.AddNode(cluster.RoleReplica)
	eventually(t, 20*time.Second, "node 0 records the new node", func() bool {
		_, ok := membersOf(t, c, 0)[n.URL]
		return ok
	})
	c.Nodes[0].Kill()
	c.Nodes[1].Start()
	// Node 0 is down, not removed: both still count it.
	waitPeers(t, c, 30*time.Second, 1, 0, 1, 2)
	waitPeers(t, c, 30*time.Second, 2, 0, 1, 2)
	hc := newClient(t)
	data := []byte("while the member it joined through is down")
	_, id := upload(t, hc, c.Nodes[1].URL, "y", data)
	eventually(t, 20*time.Second, "the new node holds an upload to node 1", func() bool {
		return assertHeldQuiet(c, 2, id)
	})
}

// assertHeldQuiet reports whether node i holds id's file.
func assertHeldQuiet(c *cluster.Cluster, i int, id string) bool {
	return !gone(c.Nodes[i], id)
}

// TestLeaveWhileDown: a node is removed while it is down. Its members stop
// counting it (their queues to it go), uploads go on without it, and when
// it comes back it learns it was removed: it does not add itself back,
// gets nothing, and says why.
func TestLeaveWhileDown(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true})
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	hc := newClient(t)
	c.Nodes[2].Stop()
	removeMember(t, hc, c.Nodes[0].URL, c.Nodes[2].URL)
	waitMembers(t, c, 30*time.Second, 0, 1)
	data := []byte("after the leave")
	_, id := upload(t, hc, c.Nodes[0].URL, "z", data)
	eventually(t, 20*time.Second, "node 1 holds it", func() bool { return assertHeldQuiet(c, 1, id) })

	c.Nodes[2].Start()
	eventually(t, 30*time.Second, "the removed node learns it was removed", func() bool {
		m, ok := membersOf(t, c, 2)[c.Nodes[2].URL]
		return ok && m.Removed && len(peersOf(t, c, 2)) == 0
	})
	// Its --join does not bring it back, on any member.
	for _, i := range []int{0, 1} {
		m := membersOf(t, c, i)[c.Nodes[2].URL]
		require.True(t, m.Removed, "node %d: %+v", i, m)
		require.NotContains(t, peersOf(t, c, i), c.Nodes[2].URL)
	}
	require.True(t, gone(c.Nodes[2], id), "the removed node got an upload made after it left")
	// Said however it learned it: from the --join exchange, or from a
	// peer's 403 (the exchange won the race in 2 runs of 30 before the
	// log said it on every way in).
	eventually(t, 10*time.Second, "the removed node says why", func() bool { return logHas(c.Nodes[2], "this node was removed from the cluster") })
	// It takes no writes (they would reach nobody): 503, try another node.
	status, _, err := tryUpload(t.Context(), hc, c.Nodes[2].URL, "w", []byte("to a removed node"))
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, status)
	status, err = tryDelete(t.Context(), hc, c.Nodes[2].URL, id)
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, status)

	// Added again by an operator, it is a member again and fills.
	require.Equal(t, http.StatusOK, addMember(t, hc, c.Nodes[1].URL, c.Nodes[2].URL))
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	eventually(t, time.Minute, "the node added again fills itself", func() bool { return assertHeldQuiet(c, 2, id) })
}

// TestMembershipSurvivesRestart: every node stopped and started again
// keeps its members, the node 0 that never had --join included.
func TestMembershipSurvivesRestart(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true})
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	for _, n := range c.Nodes {
		n.Stop()
	}
	// Node 0 alone first: it knows its members without anyone joining.
	c.Nodes[0].Start()
	eventually(t, 10*time.Second, "node 0 lists its members after a restart", func() bool {
		return slices.Equal(peersOf(t, c, 0), othersOf(c, 0, 0, 1, 2))
	})
	c.Nodes[1].Start()
	c.Nodes[2].Start()
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
}

// TestLeaveWaitsForQueues: a node that removes itself while no replica
// has accepted all of its feed is refused (409): an upload only it holds
// would be stranded. It leaves once one replica caught up (that one
// passes it on to the others), or with force.
func TestLeaveWaitsForQueues(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true})
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	hc := newClient(t)
	c.Nodes[1].Stop()
	c.Nodes[2].Stop()
	body := []byte("not yet on node 1 nor node 2")
	_, id := upload(t, hc, c.Nodes[0].URL, "only-here", body)
	leave := func() int {
		status, _ := membersRequest(t, hc, http.MethodDelete, c.Nodes[0].URL, c.Nodes[0].URL, false)
		return status
	}
	require.Equal(t, http.StatusConflict, leave(), "leaving with an upload no other replica has accepted")
	c.Nodes[2].Start()
	eventually(t, 30*time.Second, "node 0 leaves once node 2 caught up", func() bool { return leave() == http.StatusOK })
	// Node 1 comes back after node 0 left: node 2 passes the upload on.
	c.Nodes[0].Stop()
	c.Nodes[1].Start()
	waitMembers(t, c, 30*time.Second, 1, 2)
	eventually(t, 30*time.Second, "node 1 gets the upload from node 2", func() bool {
		resp, err := hc.Get(c.Nodes[1].URL + "/" + id + "?nopeerload=1")
		if err != nil {
			return false
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && bytes.Equal(got, body)
	})

	// Node 2 leaves with a queue, forced.
	c.Nodes[1].Stop()
	upload(t, hc, c.Nodes[2].URL, "forced", []byte("left behind on purpose"))
	status, body2 := membersRequest(t, hc, http.MethodDelete, c.Nodes[2].URL, c.Nodes[2].URL, true)
	require.Equal(t, http.StatusOK, status, "%s", body2)
}

// TestReaddedNodeResyncs: a node removed while down misses a delete that
// the others then forget. Added again (within tombstone_expiry), it is
// marked expired: its offers are refused until it resyncs, and the file
// it still holds is not brought back.
func TestReaddedNodeResyncs(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true,
		Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "30s"}})
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	hc := newClient(t)
	x := randomBytes(40 << 10)
	_, xID := upload(t, hc, c.Nodes[0].URL, "x", x)
	eventually(t, 30*time.Second, "node 2 holds x", func() bool { return assertHeldQuiet(c, 2, xID) })

	c.Nodes[2].Stop()
	removeMember(t, hc, c.Nodes[0].URL, c.Nodes[2].URL)
	deleteID(t, hc, c.Nodes[0].URL, xID)
	eventually(t, 30*time.Second, "nodes 0 and 1 forget x's delete", func() bool {
		for _, i := range []int{0, 1} {
			if s, _ := stateOf(t, c, hc, i, xID); s != http.StatusNotFound {
				return false
			}
		}
		return true
	})
	require.False(t, gone(c.Nodes[2], xID), "node 2 still holds x")

	c.Nodes[2].Start()
	require.Equal(t, http.StatusOK, addMember(t, hc, c.Nodes[1].URL, c.Nodes[2].URL))
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	eventually(t, time.Minute, "node 2 drops x (it resynced) and nobody took it back", func() bool {
		return gone(c.Nodes[0], xID) && gone(c.Nodes[1], xID) && gone(c.Nodes[2], xID)
	})
	// Still gone once everything settled.
	c.WaitConverged(t, time.Minute)
	for i := range c.Nodes {
		require.True(t, gone(c.Nodes[i], xID), "node %d holds x again", i)
	}
}

// TestReaddAfterExpiryRefused: a node removed longer than tombstone_expiry
// ago cannot be added again (409): deletes it never saw may be forgotten
// and gone from memory; it must join again as a new node.
func TestReaddAfterExpiryRefused(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true,
		Args: []string{"--tombstone-retention", "1s", "--tombstone-expiry", "3s"}})
	waitMembers(t, c, 30*time.Second, 0, 1, 2)
	hc := newClient(t)
	c.Nodes[2].Stop()
	removeMember(t, hc, c.Nodes[0].URL, c.Nodes[2].URL)
	c.Nodes[2].Start()
	// Node 1's clock a minute ahead: the removal is older than the expiry
	// there. (Restarted, so that it reads the clock from its start.)
	c.Nodes[1].Stop()
	c.Nodes[1].SetClock(time.Minute)
	c.Nodes[1].Start()
	status, body := membersRequest(t, hc, http.MethodPut, c.Nodes[1].URL, c.Nodes[2].URL, false)
	require.Equal(t, http.StatusConflict, status, "%s", body)
	require.Contains(t, body, "join it as a new node")
	m := membersOf(t, c, 1)[c.Nodes[2].URL]
	require.True(t, m.Removed)
}

// TestDeleteOnReaddedNode: a node removed from the cluster and added
// again (peer lists, as the soak's leave does) is sent a DELETE of an
// upload it never saw, held only by a cache cut off from every replica.
// Some peer could not be asked, so the delete is recorded (200), never a
// 404 (API.md, Consistency 9); once the cache is back, the delete wins
// everywhere.
func TestDeleteOnReaddedNode(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 4, Roles: []dtfc.Role{3: dtfc.RoleCache}})
	hc := newClient(t)
	self := c.Nodes[2].URL
	require.Equal(t, http.StatusOK, addMember(t, hc, self, self))
	eventually(t, 30*time.Second, "node 2 leaves", func() bool {
		status, _ := membersRequest(t, hc, http.MethodDelete, self, self, false)
		return status == http.StatusOK
	})
	for _, i := range []int{0, 1, 2} {
		c.Partition(3, i)
	}
	data := randomBytes(10 << 10)
	_, id := upload(t, hc, c.Nodes[3].URL, "only-on-the-cache", data)

	require.Equal(t, http.StatusOK, addMember(t, hc, c.Nodes[0].URL, self))
	status, err := tryDelete(t.Context(), hc, self, id)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, "a DELETE of an acknowledged upload on the node just added again")

	c.HealAll()
	eventually(t, time.Minute, "the delete wins on every node", func() bool {
		for i := range c.Nodes {
			if !gone(c.Nodes[i], id) {
				return false
			}
		}
		return true
	})
}

// TestExchangesWarnOfNoRole: the remotes a node makes only to exchange
// members (a member its peer list reaches under another URL, a node
// being added) take the member's role, or none: a cache was warned of
// as "a peer's role differs from the peer list's" at every exchange
// (every 10 s in the soak's logs) by remotes made as replicas'.
func TestExchangesWarnOfNoRole(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Roles: []dtfc.Role{2: dtfc.RoleCache}})
	hc := newClient(t)
	for _, i := range []int{0, 1, 2} {
		require.Equal(t, http.StatusOK, addMember(t, hc, c.Nodes[0].URL, c.Nodes[i].URL))
	}
	eventually(t, 30*time.Second, "every node has every member's record", func() bool {
		for i := range c.Nodes {
			if len(membersOf(t, c, i)) != 3 {
				return false
			}
		}
		return true
	})
	// The additions were exchanged with every member before they were
	// answered; once more, now that every node has every record.
	require.Equal(t, http.StatusOK, addMember(t, hc, c.Nodes[1].URL, c.Nodes[2].URL))
	for i := range c.Nodes {
		require.False(t, logHas(c.Nodes[i], "role differs"), "node %d warned of a role", i)
	}
}

// TestReaddAfterSkewedLeave: a node whose clock runs 6 s ahead (max
// offset 2 s) leaves, and is added again through another member a
// moment later (soak seed 79). Its removal is dated 6 s ahead, so the
// others refuse it at first; the addition, made after it in real time,
// must still be dated after it, or the removal wins once the others
// take it and undoes the acknowledged addition. Once the records
// agree, the node is a member on every node, takes uploads and
// replicates both ways. About 25 s.
func TestReaddAfterSkewedLeave(t *testing.T) {
	const skew = 6 * time.Second
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true, Args: []string{"--max-clock-offset", "2s"}})
	waitMembers(t, c, converge, 0, 1, 2)
	hc := newClient(t)
	self := c.Nodes[1].URL

	// The node reads its clock file within 20 ms: upload probes until
	// one is dated ahead.
	c.Nodes[1].SetClock(skew)
	var probes []string
	eventually(t, converge, "an upload to node 1 is dated ahead", func() bool {
		_, id := upload(t, hc, self, "probe", randomBytes(1000))
		probes = append(probes, id)
		_, st := stateOf(t, c, hc, 1, id)
		return st.Clock >= clockAt(time.Now().Add(skew-time.Second))
	})

	// It leaves (force: its probes are still refused by the others,
	// dated too far ahead) and is added again at once, through node 0.
	status, body := membersRequest(t, hc, http.MethodDelete, self, self, true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	removal := membersOf(t, c, 1)[self]
	require.True(t, removal.Removed)
	require.Greater(t, uint64(removal.Clock), clockAt(time.Now().Add(skew-time.Second)), "the removal is dated ahead")
	begin := time.Now()
	status, body = membersRequest(t, hc, http.MethodPut, c.Nodes[0].URL, self, false)
	require.Equal(t, http.StatusOK, status, "%s", body)
	t.Logf("added again through node 0 in %v: %s", time.Since(begin).Round(time.Millisecond), strings.TrimSpace(body))

	// Every node ends with one record of node 1, and it is a member.
	var agreed api.Member
	eventually(t, time.Minute, "every node has the same record of node 1", func() bool {
		var recs []api.Member
		for i := range c.Nodes {
			m, ok := membersOf(t, c, i)[self]
			if !ok {
				return false
			}
			recs = append(recs, m)
		}
		agreed = recs[0]
		return !slices.ContainsFunc(recs, func(m api.Member) bool { return m.Clock != agreed.Clock || m.Removed != agreed.Removed })
	})
	require.False(t, agreed.Removed, "the acknowledged addition was undone by the removal dated ahead: %+v", agreed)
	require.Greater(t, agreed.Clock, removal.Clock)
	waitMembers(t, c, converge, 0, 1, 2)

	// Its clock right again, it takes uploads and replicates both ways
	// (its own are refused until real time passes the skew).
	c.Nodes[1].SetClock(0)
	x, y := randomBytes(20<<10), randomBytes(20<<10)
	_, xID := upload(t, hc, self, "x", x)
	_, yID := upload(t, hc, c.Nodes[0].URL, "y", y)
	c.WaitConverged(t, time.Minute)
	assertEveryReplica(t, c, xID, int64(len(x)))
	assertEveryReplica(t, c, yID, int64(len(y)))
	for _, id := range probes {
		assertEveryReplica(t, c, id, 1000)
	}
}
