package blobstore

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dtfc/dtfc"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBlockSetsAsideNewerUpload: a block older than the upload it
// reaches (taken by a node that did not know of it; the block may have
// been lifted meanwhile elsewhere, and this may be the only copy) takes
// the bytes out of blobs/ but sets them aside: the record becomes the
// block's tombstone (as on every node, so that their digests agree; a
// live record without its bytes made the soak's replicas disagree for
// good, seeds 14 and 18 with --leave), nothing is served, and the lift
// puts them back as the upload they were (clock, node, filename), also
// after a reopen. A later delete removes them. A block newer than the
// upload deletes it as before. The long soak lost such an upload (seed
// 20261203, round 2).
func TestBlockSetsAsideNewerUpload(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer func() { s.Close() }()
	data := []byte("uploaded where the block was not known")
	st := putBytes(t, s, data, Upload{Filename: "kept.txt", ContentType: "text/plain"}).State
	// The block, made elsewhere before the upload.
	block := Deny{ID: st.ID, Status: 451, Reason: "test", Clock: st.Clock - 1, Node: "peer"}
	applied, err := s.ApplyDeny(block)
	require.NoError(t, err)
	require.True(t, applied)
	assert.False(t, s.fileExists(st.ID), "the bytes left blobs/")
	_, err = os.Stat(s.UnconfirmedPath(st.ID))
	assert.NoError(t, err, "set aside in unconfirmed/")
	assert.EqualValues(t, 1, s.UnconfirmedCount())
	tomb := dtfc.State{ID: st.ID, Deleted: true, Clock: block.Clock, Node: block.Node}
	got, err := s.Stat(st.ID)
	require.NoError(t, err)
	assert.Equal(t, tomb, got, "the record is the block's tombstone")
	blobs, _ := s.Stats()
	assert.Zero(t, blobs, "nothing counted live")
	_, err = s.Open(st.ID)
	assert.Error(t, err, "nothing is served while blocked")
	out, err := s.ResolveUnconfirmed(st.ID, nil)
	require.NoError(t, err)
	assert.Equal(t, UnconfirmedBlocked, out)
	// The scrubber finds no file for the record, and leaves it: blocked.
	require.NoError(t, s.Scrub(t.Context(), 0, nil))
	assert.Zero(t, s.ScrubProgress().Corrupt)
	got, err = s.Stat(st.ID)
	require.NoError(t, err)
	assert.Equal(t, tomb, got, "the scrubber kept the record")
	_, err = os.Stat(s.UnconfirmedPath(st.ID))
	assert.NoError(t, err, "and the copy")

	require.NoError(t, s.Close())
	s, err = Open(dir, Options{})
	require.NoError(t, err)
	lift := block
	lift.Lifted, lift.Clock = true, s.Clock().Now()
	_, err = s.ApplyDeny(lift)
	require.NoError(t, err)
	b, err := s.Open(st.ID)
	require.NoError(t, err, "back with the lift")
	back, err := io.ReadAll(b)
	b.Close()
	require.NoError(t, err)
	assert.Equal(t, data, back)
	assert.Zero(t, s.UnconfirmedCount())
	got, err = s.Stat(st.ID)
	require.NoError(t, err)
	assert.Equal(t, st, got, "back as the upload it was")

	// Set aside again, then deleted: the copy goes with the delete.
	afterMillisecond(t, lift.Clock)
	st2 := putBytes(t, s, data, Upload{}).State
	block.Clock = st2.Clock - 1
	_, err = s.ApplyDeny(block)
	require.NoError(t, err)
	require.EqualValues(t, 1, s.UnconfirmedCount())
	_, err = s.Delete(st.ID, false)
	require.NoError(t, err)
	assert.Zero(t, s.UnconfirmedCount())
	_, err = os.Stat(s.UnconfirmedPath(st.ID))
	assert.ErrorIs(t, err, os.ErrNotExist, "the set-aside copy went with the delete")

	// A block newer than the upload deletes it, nothing set aside.
	other := putBytes(t, s, []byte("uploaded before the block"), Upload{}).State
	_, err = s.ApplyDeny(Deny{ID: other.ID, Status: 451, Clock: s.Clock().Now(), Node: "peer"})
	require.NoError(t, err)
	assert.Zero(t, s.UnconfirmedCount())
	assert.False(t, s.fileExists(other.ID))
	got, err = s.Stat(other.ID)
	require.NoError(t, err)
	assert.True(t, got.Deleted, "the block's delete")
}

// afterMillisecond waits until the wall clock is past c's millisecond, so
// that the next clock reading is more than one tick past c: a block dated
// just before an upload made then is still newer than c (a lift). Made
// in c's millisecond, the upload could be c+1, its block c itself, and
// stale (33 runs in 300 failed so).
func afterMillisecond(t *testing.T, c dtfc.Timestamp) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for time.Now().UnixMilli() <= c.Time().UnixMilli() {
		require.True(t, time.Now().Before(deadline), "the wall clock does not pass %v", c.Time())
		time.Sleep(time.Millisecond)
	}
}

// TestSetAsideOutlivesOlderDelete: a copy a block set aside is the last
// writer against a delete older than its upload (the delete leaves it,
// and the lift brings the upload back), also once the block's tombstone
// is forgotten; and a crash between the set-aside's commit and the move
// of its file leaves the file where the next start finds it aside.
func TestSetAsideOutlivesOlderDelete(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer func() { s.Close() }()
	data := []byte("set aside, then an older delete")
	st := putBytes(t, s, data, Upload{Filename: "a.txt"}).State
	block := Deny{ID: st.ID, Status: 451, Clock: st.Clock - 10, Node: "peer"}
	_, err = s.ApplyDeny(block)
	require.NoError(t, err)
	_, err = s.Apply(dtfc.State{ID: st.ID, Deleted: true, Clock: st.Clock - 5, Node: "peer"})
	require.NoError(t, err)
	assert.EqualValues(t, 1, s.UnconfirmedCount(), "a delete older than the upload leaves the copy")
	out, err := s.ResolveUnconfirmed(st.ID, nil)
	require.NoError(t, err)
	assert.Equal(t, UnconfirmedBlocked, out, "blocked: it stays aside")

	// The block's (and the delete's) tombstone forgotten, then the lift.
	tomb, err := s.Stat(st.ID)
	require.NoError(t, err)
	forgot, err := s.ForgetState(tomb)
	require.NoError(t, err)
	require.True(t, forgot)
	lift := block
	lift.Lifted, lift.Clock = true, s.Clock().Now()
	_, err = s.ApplyDeny(lift)
	require.NoError(t, err)
	out, err = s.AdoptUnconfirmed(st.ID)
	require.NoError(t, err)
	assert.Equal(t, UnconfirmedAdopted, out)
	got, err := s.Stat(st.ID)
	require.NoError(t, err)
	assert.Equal(t, st, got, "back as the upload it was")
	assert.True(t, s.fileExists(st.ID))

	// Blocked again (a new upload first), the file moved back by hand as
	// a crash between commit and move leaves it, the store left unclean.
	afterMillisecond(t, lift.Clock)
	st2 := putBytes(t, s, data, Upload{}).State
	block.Clock = st2.Clock - 1
	_, err = s.ApplyDeny(block)
	require.NoError(t, err)
	require.NoError(t, os.Rename(s.UnconfirmedPath(st.ID), s.Path(st.ID)))
	require.NoError(t, s.Close())
	markUnclean(t, dir)
	s, err = Open(dir, Options{})
	require.NoError(t, err)
	assert.False(t, s.fileExists(st.ID), "not in blobs/ while blocked")
	_, err = os.Stat(s.UnconfirmedPath(st.ID))
	assert.NoError(t, err, "aside, not removed as a lost unlink")
	assert.EqualValues(t, 1, s.UnconfirmedCount())
}

// TestQuarantineSparesFileBackSince: the scrubber judges a blob by its
// file, then quarantines it under the ID's lock if its record is still
// the one judged. A file put back in between under that same record
// (here the upload a block set aside, adopted at the lift under its own
// clock; a tier's read-back is another) is not the file judged, and may
// be the only good copy: it stays, with its record. The interleaving is
// made by calling quarantine as the scrubber would have after each
// verdict: "missing", and "corrupt" for a file since replaced.
func TestQuarantineSparesFileBackSince(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	defer func() { s.Close() }()
	data := []byte("the only copy, set aside by a block and back with its lift")
	st := putBytes(t, s, data, Upload{Filename: "only.txt"}).State

	// The block (older than the upload) sets the bytes aside: the
	// scrubber, had it opened the file now, would have found none.
	_, err = s.ApplyDeny(Deny{ID: st.ID, Status: 451, Clock: st.Clock - 1, Node: "peer"})
	require.NoError(t, err)
	require.False(t, s.fileExists(st.ID))
	_, err = s.SetDeny(st.ID, 0, "", true)
	require.NoError(t, err)
	got, err := s.Stat(st.ID)
	require.NoError(t, err)
	require.Equal(t, st, got, "the lift put the upload back under its own state")

	require.NoError(t, s.quarantine(st, nil, "scrub", nil)) // judged missing
	// Judged corrupt: another file than the one there now.
	other := filepath.Join(t.TempDir(), "judged")
	require.NoError(t, os.WriteFile(other, []byte("damaged"), 0o644))
	judged, err := os.Lstat(other)
	require.NoError(t, err)
	require.NoError(t, s.quarantine(st, judged, "scrub", nil))
	got, err = s.Stat(st.ID)
	require.NoError(t, err, "the record stays")
	assert.Equal(t, st, got)
	held, _ := readHeld(t, s, st.ID)
	assert.Equal(t, data, held, "the file put back is served")
	assert.Zero(t, s.ScrubProgress().Corrupt)

	// The file judged, still there: quarantined as before.
	now, err := os.Lstat(s.Path(st.ID))
	require.NoError(t, err)
	require.NoError(t, s.quarantine(st, now, "scrub", nil))
	_, err = s.Stat(st.ID)
	assert.ErrorIs(t, err, ErrNotFound)
	assert.EqualValues(t, 1, s.ScrubProgress().Corrupt)
}
