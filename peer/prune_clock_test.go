package peer_test

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// TestPruneWaitsForAPeerClock: README, "What is forgotten when": the
// memory of forgotten deletes is "not pruned while ... this node's clock
// runs ahead of every peer's (everything would look old)". The guard was
// only set by a purge that had heard a peer's Date header, and Run
// pruned the memory before anything was heard: a node started with its
// wall clock a year ahead (a bad RTC at boot) pruned the whole memory and
// set the horizon before which a delete is "old news" a year ahead. Every
// delete a peer then pushed of an ID it had no record of was
// acknowledged and dropped, and an older upload of that ID arriving
// afterwards from another peer was taken and served (found by a review
// helper). Now the prune waits for a peer's clock.
//
// Sequence: b and d hold x; a is down. d stops; x is deleted on b (200).
// a starts with its clock a year ahead; b pushes the delete to a, a
// acknowledges it (b's queue to a empties) but records nothing. b stops,
// d comes back and pushes its (older) upload of x to a: a stores and
// serves the deleted file.
//
// Control: the same with a's clock right: a records the delete and
// refuses d's older upload.
func TestPruneWaitsForAPeerClock(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ahead time.Duration
	}{{"Control", 0}, {"ClockAYearAhead", 365 * 24 * time.Hour}} {
		t.Run(tc.name, func(t *testing.T) { testPruneWaitsForAPeerClock(t, tc.ahead) })
	}
}

func testPruneWaitsForAPeerClock(t *testing.T, ahead time.Duration) {
	po := func(o *peer.Options) { o.AntiEntropyInterval = time.Hour }
	a := newNode(t, running(nodeOpts{peer: func(o *peer.Options) {
		po(o)
		o.Wall = func() time.Time { return time.Now().Add(ahead) }
	}}))
	b := newNode(t, running(nodeOpts{peer: po}))
	d := newNode(t, running(nodeOpts{peer: po}))
	a.writePeers(b, d)
	b.writePeers(a, d)
	d.writePeers(a, b)
	b.start()
	d.start()

	x := b.put(randomBytes(t, 4000))
	d.eventuallyHolds(x, true)
	d.down()
	require.Equal(t, http.StatusOK, del(t, b, x), "the delete is acknowledged")

	a.start()
	eventually(t, converge, func() bool {
		q, ok := b.status().Queues[a.URL]
		return ok && q.Length == 0
	}, "a accepts b's feed (the delete of x)")
	_, err := a.Store.Stat(x)
	recorded := err == nil
	t.Logf("a's record of x after accepting the delete: %v (err %v)", recorded, err)

	b.down()
	d.start()
	eventually(t, converge, func() bool {
		q, ok := d.status().Queues[a.URL]
		return ok && q.Length == 0
	}, "a accepts d's feed (its older upload of x)")
	st, err := a.Store.Stat(x)
	if err == nil && !st.Deleted {
		resp, body, gerr := get(a.URL + "/" + x.String() + "?nopeerload=1")
		require.NoError(t, gerr)
		t.Fatalf("a acknowledged b's delete of x (recorded: %v) and then took d's older upload: state %+v, GET answers %d (%d bytes)",
			recorded, st, resp.StatusCode, len(body))
	}
	require.True(t, err == nil || errors.Is(err, blobstore.ErrNotFound), "%v", err)
	require.False(t, a.holds(x), "a holds the deleted x")
}

// TestClockAheadAtStartKeepsForgottenMemory: the same start with the
// clock a year ahead wiped the memory of the deletes the node forgot
// lately (kept one tombstone_expiry), and it stayed wiped once the clock
// was set right. That memory is what tells a peer whose metadata was
// rebuilt that a blob it still has a file of was deleted (README, "When
// the metadata is damaged"; e2e/TestMetaDamagedCluster plants such a
// file the same way). Without it every peer answered "unknown", and the
// rebuilt node adopted the deleted file and replicated it (found by a
// review helper).
//
// Control: the same with a's clock right throughout: r drops y.
func TestClockAheadAtStartKeepsForgottenMemory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ahead time.Duration
	}{{"Control", 0}, {"ClockAYearAheadAtStart", 365 * 24 * time.Hour}} {
		t.Run(tc.name, func(t *testing.T) { testClockAheadAtStartKeepsForgottenMemory(t, tc.ahead) })
	}
}

func testClockAheadAtStartKeepsForgottenMemory(t *testing.T, ahead time.Duration) {
	var offset atomic.Int64
	po := func(o *peer.Options) {
		o.AntiEntropyInterval = 300 * time.Millisecond
		o.TombstoneRetention = time.Second
	}
	a := newNode(t, nodeOpts{run: true, peer: func(o *peer.Options) {
		po(o)
		o.Wall = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	}})
	r := newNode(t, nodeOpts{run: true, peer: po})
	a.writePeers(r)
	r.writePeers(a)
	a.start()
	r.start()

	data := randomBytes(t, 5000)
	y := a.put(data)
	r.eventuallyHolds(y, true)
	up, err := a.Store.Stat(y)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, del(t, a, y))
	eventually(t, converge, func() bool {
		for _, n := range []*node{a, r} {
			if _, err := n.Store.Stat(y); !errors.Is(err, blobstore.ErrNotFound) {
				return false
			}
			if _, ok := n.Store.Forgotten(y); !ok {
				return false
			}
		}
		return true
	}, "both nodes forget the delete of y, and remember they did")

	// a restarts with its clock a year ahead; then it is set right.
	a.down()
	offset.Store(int64(ahead))
	a.start()
	eventually(t, converge, func() bool { return a.Cluster.Status().Synced }, "a's first anti-entropy round")
	_, remembered := a.Store.Forgotten(y)
	t.Logf("a remembers the forgotten delete of y after its start: %v", remembered)
	offset.Store(0)

	// r's meta.db is damaged, and it still has a file of y (as
	// e2e/TestMetaDamagedCluster plants one, dated by y's upload).
	r.down()
	p := r.Store.Path(y)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, data, 0o644))
	tm := time.UnixMilli(int64(up.Clock >> 16)).Add(time.Duration(up.Clock & 0xffff))
	require.NoError(t, os.Chtimes(p, time.Time{}, tm))
	meta := filepath.Join(r.Dir, "meta.db")
	fi, err := os.Stat(meta)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(meta, fi.Size()/2))
	_, err = blobstore.Rebuild(r.Dir, blobstore.RebuildOptions{})
	require.NoError(t, err)
	r.start()
	eventually(t, converge, func() bool {
		return r.Store.UnconfirmedCount() == 0 && r.Cluster.Status().UnconfirmedPending == 0
	}, "r decides its unconfirmed blobs")
	eventually(t, converge, queuesEmpty(r), "r's pusher passed on what it adopted")
	require.False(t, r.holds(y), "r adopted y, deleted (acknowledged) and forgotten lately; a remembered the delete: %v", remembered)
	require.False(t, a.holds(y), "a took y back from r; a remembered the delete: %v", remembered)
}

// TestHorizonFollowsAClockSetBack: a node with no peer to check its
// clock against prunes by its own; with a clock a year ahead the horizon
// of old news was a year ahead too, and stayed there after the clock was
// set right until the next purge (a tenth of the retention, up to an
// hour): every delete pushed of an ID the node had no record of was old
// news meanwhile. It now follows the clock back within a maintenance
// tick (5 s).
func TestHorizonFollowsAClockSetBack(t *testing.T) {
	var offset atomic.Int64
	offset.Store(int64(365 * 24 * time.Hour))
	expiry := 48 * time.Hour
	a := newNode(t, nodeOpts{run: true, peer: func(o *peer.Options) {
		o.TombstoneRetention = time.Hour // purges 6 minutes apart
		o.TombstoneExpiry = expiry
		o.Wall = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	}})
	a.writePeers()
	a.start()
	// The first purge runs at the first tick, and sweeps partial/ right
	// after: a stray file there is gone once it has run.
	stray := filepath.Join(a.Dir, "partial", "stray")
	require.NoError(t, os.WriteFile(stray, []byte("x"), 0o644))
	eventually(t, converge, func() bool {
		_, err := os.Stat(stray)
		return errors.Is(err, os.ErrNotExist)
	}, "the first purge ran")
	require.True(t, a.Store.PastForgetting().After(time.Now().Add(300*24*time.Hour)),
		"alone, the node pruned by its own clock, a year ahead: %v", a.Store.PastForgetting())
	offset.Store(0)
	eventually(t, converge, func() bool {
		return !a.Store.PastForgetting().After(time.Now().Add(-expiry))
	}, "the horizon followed the clock back")
}
