package blobstore_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestLocalChangeAfterStateAhead: a state refused as dated too far ahead
// (a node whose clock runs ahead made it) is offered again once real time
// catches up, and then wins over whatever is dated before it. A local
// change of the same ID made meanwhile, later in real time, must be dated
// after it: here a delete from a node 1.3 s ahead (offset 1 s), then an
// upload of the same bytes here, which without the wait is dated before
// the delete and lost when the delete is taken; and the converse, an
// upload dated ahead, then a delete here, which would be undone.
func TestLocalChangeAfterStateAhead(t *testing.T) {
	s := openStore(t, t.TempDir(), blobstore.Options{MaxClockOffset: time.Second})
	skew := 1300 * time.Millisecond

	data := content(1, 3000)
	id := dtfc.Sum(data)
	tomb := dtfc.State{ID: id, Deleted: true, Clock: dtfc.TimestampAt(time.Now().Add(skew)), Node: "ahead"}
	_, err := s.Apply(tomb)
	require.ErrorIs(t, err, blobstore.ErrClockAhead)

	begin := time.Now()
	res := put(t, s, data, blobstore.Upload{})
	assert.GreaterOrEqual(t, time.Since(begin), 200*time.Millisecond, "the upload did not wait for the delete dated ahead")
	assert.Greater(t, res.State.Clock, tomb.Clock, "the upload is dated before the delete it came after")
	out, err := s.Apply(tomb) // offered again, now within the offset
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out, "the delete dated ahead undid the upload made after it")
	got, _ := readBlob(t, s, id)
	assert.Equal(t, data, got)

	// The converse: an upload dated ahead, refused; a delete here.
	data2 := content(2, 3000)
	up := dtfc.State{ID: dtfc.Sum(data2), Clock: dtfc.TimestampAt(time.Now().Add(skew)), Node: "ahead", Size: 3000}
	_, err = commitState(t, s, data2, up, true)
	require.ErrorIs(t, err, blobstore.ErrClockAhead)
	del, err := s.Delete(up.ID, true)
	require.NoError(t, err)
	assert.Greater(t, del.Clock, up.Clock, "the delete is dated before the upload it came after")
	res2, err := commitState(t, s, data2, up, true)
	require.NoError(t, err)
	assert.False(t, res2.Applied, "the upload dated ahead undid the delete made after it")

	// A state a year ahead, too far to wait for: a change of its ID is
	// refused at once, nothing stored (dated before it, it would be
	// undone by it: if this node's clock is the one behind, at the next
	// exchange; TestClockBehindNodeRefusesUpload). The refusal holds
	// until the clocks agree; other IDs are not held back.
	data3 := content(3, 100)
	far := dtfc.State{ID: dtfc.Sum(data3), Deleted: true, Clock: dtfc.TimestampAt(time.Now().Add(365 * 24 * time.Hour)), Node: "ahead"}
	_, err = s.Apply(far)
	require.ErrorIs(t, err, blobstore.ErrClockAhead)
	for range 2 {
		begin = time.Now()
		w, err := s.NewWriter(blobstore.WriterOptions{})
		require.NoError(t, err)
		_, err = w.Write(data3)
		require.NoError(t, err)
		_, err = w.Commit(blobstore.Upload{})
		w.Close()
		assert.ErrorIs(t, err, blobstore.ErrAheadPending)
		assert.Less(t, time.Since(begin), 5*time.Second, "waited for a state too far ahead to wait for (the bound is 10 s)")
	}
	_, err = s.Stat(far.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "nothing recorded")
	_, err = s.Delete(far.ID, true)
	assert.ErrorIs(t, err, blobstore.ErrAheadPending)
	_, err = s.SetDeny(far.ID, 451, "", false)
	assert.ErrorIs(t, err, blobstore.ErrAheadPending)
	put(t, s, content(5, 100), blobstore.Upload{})
}

// TestLocalDenyAfterDenyAhead: the same rule for deny entries, which are
// ordered apart from states: a block from a node 1.3 s ahead (offset
// 1 s) is refused; a lift made here a moment later must be dated after
// it, or the block, taken once within the offset, undoes the lift.
func TestLocalDenyAfterDenyAhead(t *testing.T) {
	s := openStore(t, t.TempDir(), blobstore.Options{MaxClockOffset: time.Second})
	id := dtfc.Sum(content(4, 100))
	block := blobstore.Deny{ID: id, Status: 451, Reason: "r", Clock: dtfc.TimestampAt(time.Now().Add(1300 * time.Millisecond)), Node: "ahead"}
	_, err := s.ApplyDeny(block)
	require.ErrorIs(t, err, blobstore.ErrClockAhead)

	begin := time.Now()
	lift, err := s.SetDeny(id, 0, "", true)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(begin), 200*time.Millisecond, "the lift did not wait for the block dated ahead")
	assert.Greater(t, lift.Clock, block.Clock, "the lift is dated before the block it came after")
	applied, err := s.ApplyDeny(block) // offered again, now within the offset
	require.NoError(t, err)
	assert.False(t, applied, "the block dated ahead undid the lift made after it")
	_, blocked := s.Denied(id)
	assert.False(t, blocked)
}

// TestUploadAfterSkewedBlock: a block from a node whose clock runs 1.3 s
// ahead (offset 1 s) of an ID that node does not hold (a block by hash:
// only the deny entry travels, no tombstone state) is refused here, and
// an upload of the same bytes is taken here a moment later, after the
// block in real time. With right clocks that upload is newer than the
// block: when the block arrives it is set aside in unconfirmed/ and the
// lift puts it back (README, "A block that arrives after a newer
// upload"; TestBlockSetsAsideNewerUpload). Here the upload does not wait
// for the refused deny entry (only a block or a lift made here does,
// TestLocalDenyAfterDenyAhead; an upload waits only for refused states,
// TestLocalChangeAfterStateAhead), so it is dated before the block: the
// block, taken once within the offset, deletes it for good, and the lift
// brings nothing back. An acknowledged upload is lost.
func TestUploadAfterSkewedBlock(t *testing.T) {
	s := openStore(t, t.TempDir(), blobstore.Options{MaxClockOffset: time.Second})
	data := content(7, 3000)
	id := dtfc.Sum(data)
	block := blobstore.Deny{ID: id, Status: 451, Reason: "takedown", Clock: dtfc.TimestampAt(time.Now().Add(1300 * time.Millisecond)), Node: "ahead"}
	_, err := s.ApplyDeny(block)
	require.ErrorIs(t, err, blobstore.ErrClockAhead)

	// The upload, after the block in real time: acknowledged.
	up := put(t, s, data, blobstore.Upload{Filename: "x.bin"}).State

	// The block is offered again until it is within the offset.
	deadline := time.Now().Add(10 * time.Second)
	for {
		applied, err := s.ApplyDeny(block)
		if err == nil {
			require.True(t, applied)
			break
		}
		require.ErrorIs(t, err, blobstore.ErrClockAhead)
		require.True(t, time.Now().Before(deadline), "the block never came within the offset")
		time.Sleep(20 * time.Millisecond)
	}

	// The operator lifts the block: the upload made after it is back.
	_, err = s.SetDeny(id, 0, "", true)
	require.NoError(t, err)
	b, err := s.Open(id)
	if errors.Is(err, blobstore.ErrNotFound) {
		st, _ := s.Stat(id)
		t.Fatalf("the upload taken after the block (clock %v, block %v) is gone after the lift: record %+v, unconfirmed %d",
			up.Clock, block.Clock, st, s.UnconfirmedCount())
	}
	require.NoError(t, err)
	got, err := io.ReadAll(b)
	b.Close()
	require.NoError(t, err)
	assert.Equal(t, data, got)
}
