package peer_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/peer"
)

// TestRelayUploadWhileBlockedAfterLift: three nodes whose only
// common peer is the bucket. Y uploads a file, X and Z relay it. X blocks
// it; Z relays the block (its copy goes, the block's tombstone is its
// record). Y, which has not read the bucket since, uploads the file again:
// a newer operation than the block, the bucket's newest state. Z relays
// Y's log entry while the block holds there: refused (blocked), and Z's
// cursor moves past it. X lifts the block; Z relays the lift. The bucket's
// newest state of the ID is Y's upload, which nothing blocks any more, and
// Y holds it; Z kept the block's tombstone for good (no later log entry
// names the ID, and Z has no anti-entropy with the bucket), while a new
// node reading the same bucket took the file: the replicas never
// converged (found by a review helper). Now a lift has every archive's
// newest state of the ID applied again (relayAgain).
func TestRelayUploadWhileBlockedAfterLift(t *testing.T) {
	fb := newFakeBucket(t)
	fast := func(o *peer.Options) { o.ArchiveInterval = 100 * time.Millisecond }
	slow := func(o *peer.Options) { o.ArchiveInterval = time.Hour } // reads the bucket at start only
	x := newNode(t, nodeOpts{run: true, peer: fast})
	y := newNode(t, nodeOpts{run: true, peer: slow})
	z := newNode(t, nodeOpts{run: true, peer: fast})
	for _, n := range []*node{x, y, z} {
		n.writePeers()
		fb.addTo(t, n)
		n.start()
	}

	data := randomBytes(t, 20<<10)
	id := y.put(data)
	x.eventuallyHolds(id, true)
	z.eventuallyHolds(id, true)

	_, err := x.Store.SetDeny(id, http.StatusUnavailableForLegalReasons, "court order", false)
	require.NoError(t, err)
	eventually(t, 10*time.Second, func() bool {
		_, ok := z.Store.Denied(id)
		return ok && !z.holds(id)
	}, "Z relayed the block")

	logNext := func() uint64 {
		v, err := y.Store.Value("archive log s3://b/p")
		if err != nil || v == nil {
			return 0
		}
		n, _ := strconv.ParseUint(string(v), 10, 64)
		return n
	}
	before := logNext()
	require.NotZero(t, before)
	// Y has not heard of the block: it takes the file again.
	id2 := y.put(data)
	require.Equal(t, id, id2)
	up, err := y.Store.Stat(id)
	require.NoError(t, err)
	require.False(t, up.Deleted)
	eventually(t, 10*time.Second, func() bool {
		st, err := fb.a.NewestState(t.Context(), id)
		return err == nil && st == up
	}, "Y's new upload is the bucket's newest state")
	// Z read Y's log past that entry (while blocked there).
	eventually(t, 10*time.Second, func() bool {
		n := logNext()
		if n <= before {
			return false
		}
		cur, err := z.Store.Value("archive relay s3://b/p " + y.Store.NodeID())
		if err != nil || cur == nil {
			return false
		}
		c, _ := strconv.ParseUint(string(cur), 10, 64)
		return c+1 >= n
	}, "Z's cursor past Y's last log entry")

	_, err = x.Store.SetDeny(id, 0, "", true)
	require.NoError(t, err)
	eventually(t, 10*time.Second, func() bool {
		d, ok, err := z.Store.DenyEntry(id)
		return err == nil && ok && d.Lifted
	}, "Z relayed the lift")

	// A node that reads the bucket from the start takes the file.
	w := newNode(t, nodeOpts{run: true, peer: fast})
	w.writePeers()
	fb.addTo(t, w)
	w.start()
	w.eventuallyHolds(id, true)
	require.True(t, y.holds(id), "Y holds its upload")

	zst, _ := z.Store.Stat(id)
	req, err := http.NewRequest(http.MethodHead, z.URL+"/"+id.String(), nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	t.Logf("Z: record deleted=%v clock %s node %s, HEAD %d; bucket's newest state %s from %s (live)", zst.Deleted, zst.Clock, zst.Node, resp.StatusCode, up.Clock, up.Node)
	eventually(t, 10*time.Second, func() bool { return z.holds(id) },
		"Z holds the upload the bucket's newest state names (it keeps the block's tombstone; HEAD answered %d)", resp.StatusCode)
}
