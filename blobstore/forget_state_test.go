package blobstore_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
)

// TestResyncSparesUploadMadeDuringIt: a resync judges which states the
// cluster deleted and forgot while this node was away, asks its peers,
// then forgets them. The node takes uploads meanwhile, and an upload of
// the same bytes made in between was forgotten with the state judged:
// acknowledged, then dropped without a trace (soak seed 146, archive
// mode). ForgetState forgets only the state judged; the same for a deny
// entry and ForgetDenyEntry.
func TestResyncSparesUploadMadeDuringIt(t *testing.T) {
	s := openStore(t, t.TempDir(), blobstore.Options{})
	data := content(11, 3000)
	judged := put(t, s, data, blobstore.Upload{}).State
	again := put(t, s, data, blobstore.Upload{}).State // acknowledged during the resync
	require.Greater(t, again.Clock, judged.Clock)

	forgot, err := s.ForgetState(judged)
	require.NoError(t, err)
	assert.False(t, forgot, "forgot the upload made since")
	st, err := s.Stat(judged.ID)
	require.NoError(t, err)
	assert.Equal(t, again.Clock, st.Clock)
	got, _ := readBlob(t, s, judged.ID)
	assert.Equal(t, data, got)

	forgot, err = s.ForgetState(again)
	require.NoError(t, err)
	assert.True(t, forgot, "the state judged, still current, is forgotten")
	_, err = s.Stat(judged.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)

	// Deny entries: a lift made here since the block was judged stays.
	id := judged.ID
	block, err := s.SetDeny(id, 451, "r", false)
	require.NoError(t, err)
	lift, err := s.SetDeny(id, 0, "", true)
	require.NoError(t, err)
	forgot, err = s.ForgetDenyEntry(block)
	require.NoError(t, err)
	assert.False(t, forgot)
	d, ok, err := s.DenyEntry(id)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, lift.Clock, d.Clock)
	forgot, err = s.ForgetDenyEntry(lift)
	require.NoError(t, err)
	assert.True(t, forgot)
	_, ok, err = s.DenyEntry(id)
	require.NoError(t, err)
	assert.False(t, ok)
}
