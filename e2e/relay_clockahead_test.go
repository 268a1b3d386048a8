package e2e_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/versitygw"
)

// TestRelayClockAheadHoldsOnlyItsWriter: a writer W whose clock was a
// year ahead deleted X (its record is in the bucket, a year ahead). D, a
// writer with a right clock, had uploaded X before (its log names X),
// and blocks Q, an unrelated file E uploaded. A fresh node F whose only
// peer is the bucket (the cluster rebuilt from it) must apply D's block
// of Q: only W's log may wait for W's clock. F read X's newest record
// for D's log entry (W's, a year ahead), refused it, and held D's whole
// log there: it never learned the block (for a year), took Q again and
// served it (found by a review helper). Now the ID is set aside and D's
// log goes on.
func TestRelayClockAheadHoldsOnlyItsWriter(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "ahead2")
	d := archiveNodes(t, b, "--archive-interval", "300ms")
	e := archiveNodes(t, b, "--archive-interval", "300ms")
	w := archiveNodes(t, b, "--archive-interval", "300ms")
	D, E, W := d.Nodes[0].URL, e.Nodes[0].URL, w.Nodes[0].URL
	hc := newClient(t)
	local := func(base, id string) int { return localStatus(t, hc, base, id) }
	// D uploads X; W (right clock still) takes it through the bucket.
	_, x := upload(t, hc, D, "x.bin", randomBytes(10<<10))
	eventually(t, 30*time.Second, "W holds X", func() bool { return local(W, x) == http.StatusOK })

	// W's clock jumps a year ahead; it deletes X; its record reaches the
	// bucket. Then W is gone (its clock fixed, or the site lost).
	clockAYearAhead(t, w, hc)
	deleteID(t, hc, W, x)
	eventually(t, 30*time.Second, "W's tombstone of X, a year ahead, in the bucket", func() bool {
		for _, st := range b.states(t, x) {
			if st.Deleted && time.UnixMilli(int64(st.Clock>>16)).After(time.Now().Add(300*24*time.Hour)) {
				return true
			}
		}
		return false
	})
	waitDrained(t, w, 0, b.URL(), 20*time.Second)
	w.Nodes[0].Stop()

	// E uploads Q; D takes it, then D blocks it.
	q := randomBytes(12 << 10)
	_, qid := upload(t, hc, E, "q.bin", q)
	eventually(t, 30*time.Second, "D holds Q", func() bool { return local(D, qid) == http.StatusOK })
	setDeny(t, hc, D, qid, `{"status": 451, "reason": "court order"}`)
	eventually(t, 30*time.Second, "E applied D's block of Q through the bucket", func() bool {
		return hasDenyEntry(t, hc, E, qid) && local(E, qid) == http.StatusUnavailableForLegalReasons
	})

	// The cluster is rebuilt from the bucket: a fresh node.
	f := archiveNodes(t, b, "--archive-interval", "300ms")
	F := f.Nodes[0].URL
	// A later upload through E: once F holds it, F has read every log.
	_, probe := upload(t, hc, E, "probe.bin", randomBytes(3<<10))
	eventually(t, 30*time.Second, "F took E's uploads, and Q's tombstone", func() bool {
		return local(F, probe) == http.StatusOK && local(F, qid) != http.StatusOK
	})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !hasDenyEntry(t, hc, F, qid) {
		time.Sleep(100 * time.Millisecond)
	}
	assert.True(t, hasDenyEntry(t, hc, F, qid), "F learned D's block of Q (only W's log may wait for W's clock)")
	status, _, err := tryUpload(t.Context(), hc, F, "q.bin", q)
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnavailableForLegalReasons, status, "F takes a re-upload of the blocked Q")
	res, body := get(t, hc, F+"/"+qid)
	assert.Equal(t, http.StatusUnavailableForLegalReasons, res.StatusCode, "F serves the blocked Q (%d bytes)", len(body))
}
