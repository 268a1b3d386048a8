package blobstore_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
)

// TestPiecesOutOfOrder: pieces written out of order, from several
// goroutines, are taken in as the prefix fills; Size and Progress follow
// the prefix only, a checkpoint covers the prefix, and the blob commits.
func TestPiecesOutOfOrder(t *testing.T) {
	s := newStore(t)
	const piece = 1 << 20
	data := content(9, 6*piece+777)
	st := remoteState(data)
	var progress []int64
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{Progress: func(n int64) { progress = append(progress, n) }})
	require.NoError(t, err)
	defer w.Close()
	at := func(i int) (int64, int64) { return int64(i) * piece, min(int64(i+1)*piece, st.Size) }

	// Pieces 1..6 at once, from six goroutines: nothing taken in yet.
	var wg sync.WaitGroup
	for i := 1; i <= 6; i++ {
		wg.Go(func() {
			a, b := at(i)
			_, err := w.WriteAt(data[a:b], a)
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	assert.Zero(t, w.Size(), "no piece counts before the first")
	assert.Empty(t, progress)

	a, b := at(0)
	_, err = w.WriteAt(data[a:b], a)
	require.NoError(t, err)
	require.NoError(t, w.HashTo(3*piece))
	assert.EqualValues(t, 3*piece, w.Size())
	assert.EqualValues(t, 3*piece, progress[len(progress)-1])
	_, err = w.WriteAt([]byte("late"), 2*piece)
	assert.Error(t, err, "a piece inside the prefix taken in is refused")
	require.NoError(t, w.Checkpoint())
	n, _ := s.PartialSize(st.ID)
	assert.EqualValues(t, 3*piece, n, "the checkpoint covers the prefix, not the pieces past it")

	require.NoError(t, w.HashTo(st.Size))
	assert.Equal(t, st.ID, w.Sum())
	res, err := w.CommitState(st, true)
	require.NoError(t, err)
	assert.True(t, res.Applied)
	got, _ := readBlob(t, s, st.ID)
	assert.Equal(t, data, got)
}
