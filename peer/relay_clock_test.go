package peer_test

import (
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// relayMarker writes a block of a fresh ID, by writer w, named in w's
// log at seq, and returns its ID: once a reader holds it, it has read
// w's log that far.
func relayMarker(t *testing.T, fb *fakeBucket, w string, seq uint64) dtfc.ID {
	t.Helper()
	d := blobstore.Deny{ID: dtfc.Sum(randomBytes(t, 64)), Status: 403, Reason: "marker",
		Clock: dtfc.TimestampAt(time.Now().Add(-time.Hour)), Node: w}
	require.NoError(t, fb.a.PutDeny(t.Context(), d))
	require.NoError(t, fb.a.AppendLog(t.Context(), w, seq, []archive.LogEntry{{ID: d.ID, Clock: d.Clock, Node: d.Node, Deny: true}}))
	return d.ID
}

func relayDenied(n *node, id dtfc.ID) bool { _, ok := n.Store.Denied(id); return ok }

// TestRelayParksDenyDatedAhead: a deny record dated too far ahead of
// the reader's clock, named in the log of a writer other than the node
// that made it, was skipped, "relying on its own writer's log". But that
// node need not have a log in the bucket: P (clock minutes ahead) blocks
// Q; its peer W pushes the block to the bucket (the record's node is P;
// W's log names it); P has no archive. F, whose only peer is the bucket
// and whose clock lags, refused the record and skipped it, and once its
// clock had caught up nothing named Q again: it never applied the block,
// took Q and served it (found by a review helper). Now the ID is set
// aside and tried again with a backoff, P's own log naming it or not.
func TestRelayParksDenyDatedAhead(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pLogNames bool // P's own log in the bucket names its record (control)
	}{{"ControlMakersLogNamesIt", true}, {"OnlyAnotherWritersLogNamesIt", false}} {
		t.Run(tc.name, func(t *testing.T) {
			fb := newFakeBucket(t)
			q := randomBytes(t, 3000)
			qid := dtfc.Sum(q)
			// F's clock lags 5 minutes (equivalently: P's ran 5 minutes
			// ahead); its relay reads the bucket every 100 ms.
			var offset atomic.Int64
			offset.Store(int64(-5 * time.Minute))
			block := blobstore.Deny{ID: qid, Status: http.StatusUnavailableForLegalReasons, Reason: "court order",
				Clock: dtfc.TimestampAt(time.Now()), Node: "p0"}
			require.NoError(t, fb.a.PutDeny(t.Context(), block))
			entry := []archive.LogEntry{{ID: qid, Clock: block.Clock, Node: block.Node, Deny: true}}
			require.NoError(t, fb.a.AppendLog(t.Context(), "w0", 1, entry))
			if tc.pLogNames {
				require.NoError(t, fb.a.AppendLog(t.Context(), "p0", 1, entry))
			}
			m1 := relayMarker(t, fb, "w0", 2)

			f := newNode(t, nodeOpts{run: true, wall: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) },
				peer: func(o *peer.Options) { o.ArchiveInterval = 100 * time.Millisecond }})
			f.writePeers()
			fb.addTo(t, f)
			f.start()
			eventually(t, converge, func() bool { return relayDenied(f, m1) }, "F read W's log past Q's entry")
			require.False(t, relayDenied(f, qid), "F applied a block dated 5 minutes ahead of its clock")

			// Time passes: F's clock catches up with P's record, and
			// the ID set aside is tried again (10 s after).
			offset.Store(0)
			eventually(t, converge, func() bool { return relayDenied(f, qid) },
				"F applied P's block of Q (in the bucket, named in W's log) once its clock caught up")
			code, body := upload(t, f, "q.bin", q, "")
			require.NotEqual(t, http.StatusCreated, code, "F took a blocked upload: %s", body)
		})
	}
}

// heldLogBucket fills a bucket: W, whose clock ran a year ahead,
// deleted X (its record, a year ahead, at seq 1 of its log); W then
// pushed P's block of Q (P's clock is right; P itself has no archive):
// the record dated now, named at seq 2 of W's log. ahead=false: the
// same without X (control).
func heldLogBucket(t *testing.T, fb *fakeBucket, qid dtfc.ID, ahead bool) {
	if ahead {
		x := dtfc.Sum(randomBytes(t, 100))
		tomb := dtfc.State{ID: x, Deleted: true, Clock: dtfc.TimestampAt(time.Now().Add(365 * 24 * time.Hour)), Node: "w0"}
		require.NoError(t, fb.a.PutState(t.Context(), tomb))
		require.NoError(t, fb.a.AppendLog(t.Context(), "w0", 1, []archive.LogEntry{{ID: x, Clock: tomb.Clock, Node: "w0", Deleted: true}}))
	}
	block := blobstore.Deny{ID: qid, Status: http.StatusUnavailableForLegalReasons, Reason: "court order",
		Clock: dtfc.TimestampAt(time.Now().Add(-time.Minute)), Node: "p0"}
	require.NoError(t, fb.a.PutDeny(t.Context(), block))
	require.NoError(t, fb.a.AppendLog(t.Context(), "w0", 2, []archive.LogEntry{{ID: qid, Clock: block.Clock, Node: "p0", Deny: true}}))
}

// heldLogCases runs fn on a bucket filled by heldLogBucket, with W's
// record a year ahead and without it (the control), Q being the file P
// blocked.
func heldLogCases(t *testing.T, fn func(t *testing.T, fb *fakeBucket, q []byte, qid dtfc.ID)) {
	for _, tc := range []struct {
		name  string
		ahead bool
	}{{"ControlNoRecordAhead", false}, {"WsRecordAYearAhead", true}} {
		t.Run(tc.name, func(t *testing.T) {
			fb := newFakeBucket(t)
			q := randomBytes(t, 3000)
			qid := dtfc.Sum(q)
			heldLogBucket(t, fb, qid, tc.ahead)
			fn(t, fb, q, qid)
		})
	}
}

// TestRelayClockAheadHoldsNoLog: a record dated too far ahead held the
// log of the writer that made it; but a writer's log names other nodes'
// records too (what it pushed from its peers): P's block of Q, dated
// now, behind W's record dated a year ahead, was applied by no reader of
// the bucket for a year, and a fresh node F whose only peer is the
// bucket took Q and served it (found by a review helper). Now no log
// waits for a clock: the ID is set aside.
func TestRelayClockAheadHoldsNoLog(t *testing.T) {
	heldLogCases(t, func(t *testing.T, fb *fakeBucket, q []byte, qid dtfc.ID) {
		f := newNode(t, nodeOpts{run: true, peer: func(o *peer.Options) { o.ArchiveInterval = 100 * time.Millisecond }})
		f.writePeers()
		fb.addTo(t, f)
		f.start()
		// Rounds pass (another writer's entries are relayed).
		m1 := relayMarker(t, fb, "m0", 1)
		eventually(t, converge, func() bool { return relayDenied(f, m1) }, "F relayed a round")
		m2 := relayMarker(t, fb, "m0", 2)
		eventually(t, converge, func() bool { return relayDenied(f, m2) }, "F relayed another round")
		eventually(t, converge, func() bool { return relayDenied(f, qid) },
			"F applied P's block of Q (dated now, in the bucket), behind W's record a year ahead in W's log")
		code, body := upload(t, f, "q.bin", q, "")
		require.NotEqual(t, http.StatusCreated, code, "F took a blocked upload: %s", body)
	})
}

// TestRebuiltRefusesBlockedUploadPastFutureRecord: a rebuilt node with
// archives and no replica peer takes uploads once every log is read. A
// log held at a record dated too far ahead counted as read for a while
// (so that the node would not refuse uploads for a year), and what lay
// behind that record was unread: P's block of Q. A (its metadata started
// afresh under its identity, the bucket its only peer) answered 201 to
// an upload of Q and served it (found by a review helper). No log is
// held for a clock now.
func TestRebuiltRefusesBlockedUploadPastFutureRecord(t *testing.T) {
	heldLogCases(t, func(t *testing.T, fb *fakeBucket, q []byte, qid dtfc.ID) {
		a := newNode(t, nodeOpts{run: true, peer: func(o *peer.Options) { o.ArchiveInterval = 100 * time.Millisecond }})
		a.writePeers()
		a.start()
		a.down()
		require.NoError(t, os.Remove(filepath.Join(a.Dir, "meta.db"))) // started afresh under its identity
		fb.addTo(t, a)
		a.start()
		require.False(t, a.Store.DenyKnown(), "a store started afresh under its old identity")
		m1 := relayMarker(t, fb, "m0", 1)
		eventually(t, converge, func() bool { return relayDenied(a, m1) }, "A relayed a round")
		// Upload Q as a client would, retrying the 503 of the gate.
		var code int
		var body string
		eventually(t, converge, func() bool {
			code, body = upload(t, a, "q.bin", q, "")
			return code != http.StatusServiceUnavailable
		}, "A takes uploads again")
		if code == http.StatusCreated {
			resp, got, err := get(a.URL + "/" + qid.String())
			require.NoError(t, err)
			t.Fatalf("rebuilt A acknowledged an upload of Q, blocked by P in the bucket (block known: %v); GET answers %d with %d bytes",
				relayDenied(a, qid), resp.StatusCode, len(got))
		}
		require.Equal(t, http.StatusUnavailableForLegalReasons, code, "%s", body)
	})
}
