package blobstore

import (
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBlockSetsAsideNewerUpload: a block older than the upload it
// reaches (taken by a node that did not know of it; the block may have
// been lifted meanwhile elsewhere, and this may be the only copy) takes
// the bytes out of blobs/ but sets them aside: the state stays present,
// nothing is served, and the lift puts them back, also after a reopen. A
// later delete removes them. A block newer than the upload deletes it as
// before. The long soak lost such an upload (seed 20261203, round 2).
func TestBlockSetsAsideNewerUpload(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer func() { s.Close() }()
	data := []byte("uploaded where the block was not known")
	st := putBytes(t, s, data, Upload{}).State
	// The block, made elsewhere before the upload.
	block := Deny{ID: st.ID, Status: 451, Reason: "test", Clock: st.Clock - 1, Node: "peer"}
	applied, err := s.ApplyDeny(block)
	require.NoError(t, err)
	require.True(t, applied)
	assert.False(t, s.fileExists(st.ID), "the bytes left blobs/")
	_, err = os.Stat(s.UnconfirmedPath(st.ID))
	assert.NoError(t, err, "set aside in unconfirmed/")
	assert.EqualValues(t, 1, s.UnconfirmedCount())
	got, err := s.Stat(st.ID)
	require.NoError(t, err)
	assert.Equal(t, st, got, "the state stays the upload's")
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
	assert.Equal(t, st, got, "the scrubber kept the record")

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

	// Set aside again, then deleted: the copy goes with the delete.
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
