package e2e_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
)

// TestLeaveRacesAnUploadInFlight: a node leaves (DELETE /_members?url=
// itself, no force) while an upload to it is in flight: the upload passed
// the "removed?" check when it began, its body is still arriving. The
// leave finds every replica caught up (the upload is not in the feed
// yet) and removes the node; the upload then commits and is answered
// 201. An acknowledged upload must reach the cluster, or not be
// acknowledged: it was held by the removed node alone, which has no peers
// and is refused by every member (found by a review helper). Now the
// commit and the leave exclude each other (Cluster.Admit).
func TestLeaveRacesAnUploadInFlight(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: true})
	waitMembers(t, c, converge, 0, 1, 2)
	hc := newClient(t)
	self := c.Nodes[1].URL

	// An upload whose body waits until we send it: Expect: 100-continue,
	// and the server sends its 100 once the handler (past the
	// middleware that refuses uploads on a removed node) reads the body.
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		ExpectContinueTimeout: time.Minute,
	}
	t.Cleanup(tr.CloseIdleConnections)
	data := randomBytes(64 << 10)
	pr, pw := io.Pipe()
	got100 := make(chan struct{})
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got100Continue: func() { close(got100) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, self+"/in-flight", pr)
	require.NoError(t, err)
	req.ContentLength = int64(len(data))
	req.Header.Set("Expect", "100-continue")
	type answer struct {
		status int
		body   string
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		res, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		answered <- answer{status: res.StatusCode, body: string(b)}
	}()
	select {
	case <-got100:
	case a := <-answered:
		t.Fatalf("the upload was answered before its body was sent: %+v", a)
	case <-time.After(30 * time.Second):
		t.Fatal("no 100 Continue within 30 s")
	}

	// The node leaves while the upload's body is on its way.
	status, body := membersRequest(t, hc, http.MethodDelete, self, self, false)
	require.Equal(t, http.StatusOK, status, "%s", body)
	t.Logf("node 1 left while an upload to it was in flight: %s", strings.TrimSpace(body))

	// The rest of the upload arrives.
	go func() {
		_, err := pw.Write(data)
		pw.CloseWithError(err)
	}()
	var a answer
	select {
	case a = <-answered:
	case <-time.After(30 * time.Second):
		t.Fatal("the upload was not answered within 30 s")
	}
	require.NoError(t, a.err)
	t.Logf("the upload in flight was answered %d: %s", a.status, strings.TrimSpace(a.body))
	if a.status != http.StatusOK && a.status != http.StatusCreated {
		return // not acknowledged: nothing promised
	}
	var up struct {
		SHA512 string `json:"sha512"`
	}
	require.NoError(t, json.Unmarshal([]byte(a.body), &up))
	id := up.SHA512
	require.Equal(t, idOf(data), id)

	// Acknowledged: some member must come to hold it.
	waitMembers(t, c, converge, 0, 2)
	deadline := time.Now().Add(converge)
	for !assertHeldQuiet(c, 0, id) && !assertHeldQuiet(c, 2, id) {
		if time.Now().After(deadline) {
			t.Fatalf("an upload acknowledged (%d) by node 1 after its leave was accepted is held by no member within %v: only by the removed node (held there: %v; its own record: %+v), which no member takes anything from",
				a.status, converge, assertHeldQuiet(c, 1, id), membersOf(t, c, 1)[self])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestLeaveAfterReplacementAtSameURL: a replica's disk is lost; the
// operator removes it, empties its basedir and lets it join again as a
// new node (README: "empty its basedir and let it join as a new node"),
// at its old URL. The other replica then leaves (no force). Its leave was
// accepted at once: its pusher's cursor was kept by URL alone, so the new
// node counted as having accepted everything the old one at that URL had
// (queue 0), although it held nothing, and the upload only the leaving
// node still held was stranded on it (found by a review helper). Now the
// cursor starts over when another node answers at its URL. (The
// harness's anti-entropy interval is set to the default, 1 min: the
// leave comes before the new node's first round.)
func TestLeaveAfterReplacementAtSameURL(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Join: true,
		Args: []string{"--anti-entropy-interval", "1m"}})
	waitMembers(t, c, converge, 0, 1)
	hc := newClient(t)
	data := randomBytes(20 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "u", data)
	eventually(t, converge, "node 1 holds the upload", func() bool { return assertHeldQuiet(c, 1, id) })
	eventually(t, converge, "node 0's queue to node 1 is empty", func() bool { return queueLength(t, c, 0, 1) == 0 })

	// Node 1's disk is lost: removed, emptied, joins again as a new node.
	c.Nodes[1].Stop()
	removeMember(t, hc, c.Nodes[0].URL, c.Nodes[1].URL)
	require.NoError(t, os.RemoveAll(c.Nodes[1].Basedir))
	c.Nodes[1].Start()
	waitMembers(t, c, converge, 0, 1)
	// (The new node may hold the upload already: node 0's pusher starts
	// over for it as soon as it answers under its new identity.)
	ps := peerStatus(t, c, 0, 1)
	t.Logf("node 0's view of the new node 1: queue %d, pusher %s", ps.Queue, ps.Pusher)

	// Node 0 leaves. Either it is refused until the new node holds what
	// only node 0 has, or the new node gets it.
	status, body := membersRequest(t, hc, http.MethodDelete, c.Nodes[0].URL, c.Nodes[0].URL, false)
	t.Logf("node 0 leaves: %d %s", status, strings.TrimSpace(body))
	if status != http.StatusOK {
		return
	}
	deadline := time.Now().Add(converge)
	for !assertHeldQuiet(c, 1, id) {
		if time.Now().After(deadline) {
			t.Fatalf("node 0's leave was accepted while the only other member (a new node at its removed predecessor's URL) never held the upload, within %v after: it is stranded on the removed node 0 (held there: %v)",
				converge, assertHeldQuiet(c, 0, id))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestLastReplicaLeaveRefused: a replica whose only peer is a cache
// leaves (no force). No replica peer has accepted its feed (it has
// none), yet the leave was accepted: the drain check took the least
// queue over the replica peers, and with none it found nothing pending;
// the upload it alone held was stranded (found by a review helper).
func TestLastReplicaLeaveRefused(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Join: true, Roles: []dtfc.Role{1: dtfc.RoleCache}})
	waitMembers(t, c, converge, 0, 1)
	hc := newClient(t)
	upload(t, hc, c.Nodes[0].URL, "only-replica", randomBytes(10<<10))
	status, body := membersRequest(t, hc, http.MethodDelete, c.Nodes[0].URL, c.Nodes[0].URL, false)
	require.Equal(t, http.StatusConflict, status, "the only replica left with an upload no other replica accepted: %s", strings.TrimSpace(body))
}

// TestBlockOnRemovedNodeRefused: a node that left takes no block or lift
// any more, as it takes no upload or delete: it sends nothing to the
// members, so a block acknowledged there would never reach them, and
// the bytes it was meant to stop would go on being served. It answers
// 503 and records nothing; the block, made on a member, still holds.
func TestBlockOnRemovedNodeRefused(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Join: true})
	waitMembers(t, c, converge, 0, 1)
	hc := newClient(t)
	data := randomBytes(4 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "b", data)
	eventually(t, converge, "node 1 holds the upload", func() bool { return assertHeldQuiet(c, 1, id) })
	eventually(t, converge, "node 0's queue to node 1 is empty", func() bool { return queueLength(t, c, 0, 1) == 0 })
	eventually(t, converge, "node 1's queue to node 0 is empty", func() bool { return queueLength(t, c, 1, 0) == 0 })

	self := c.Nodes[1].URL
	status, body := membersRequest(t, hc, http.MethodDelete, self, self, false)
	require.Equal(t, http.StatusOK, status, "%s", body)

	deny := func(method string) (int, string) {
		var r io.Reader
		if method == http.MethodPut {
			r = strings.NewReader(`{"status": 451, "reason": "court order"}`)
		}
		req, err := http.NewRequestWithContext(t.Context(), method, self+"/_deny/"+id, r)
		require.NoError(t, err)
		res, ans := do(t, hc, req)
		return res.StatusCode, string(ans)
	}
	status, body = deny(http.MethodPut)
	require.Equal(t, http.StatusServiceUnavailable, status, "a block on the removed node: %s", body)
	require.Contains(t, body, "removed from the cluster")
	require.False(t, hasDenyEntry(t, hc, self, id), "the removed node recorded the block it refused")

	// Blocked on a member, which the removed node does not hear of:
	// its lift is refused the same way.
	setDeny(t, hc, c.Nodes[0].URL, id, `{"status": 451}`)
	status, body = deny(http.MethodDelete)
	require.Contains(t, []int{http.StatusServiceUnavailable, http.StatusNotFound}, status, "a lift on the removed node: %s", body)
	require.True(t, hasDenyEntry(t, hc, c.Nodes[0].URL, id))
}
