package blobstore_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// remoteState is the state a peer would send for data.
func remoteState(data []byte) dtfc.State {
	return dtfc.State{ID: dtfc.Sum(data), Clock: (&dtfc.Clock{}).Now(), Node: "peer", Size: int64(len(data))}
}

// TestResumableAcrossRestart: a transfer cut after a checkpoint and
// suspended continues, in a new process (the store reopened), from that
// checkpoint; the bytes written after the checkpoint are not trusted.
func TestResumableAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	data := content(7, 5<<20+123)
	st := remoteState(data)
	cut := int64(3 << 20)

	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	require.True(t, w.Resumable())
	boom := errors.New("connection reset")
	_, err = w.ReadFrom(io.MultiReader(bytes.NewReader(data[:cut]), iotest.ErrReader(boom)))
	require.ErrorIs(t, err, boom)
	assert.Equal(t, cut, w.Size(), "a source error keeps what came before it")
	require.NoError(t, w.Checkpoint())
	// Bytes after the checkpoint, then a crash (no Suspend, no Close):
	// the next transfer must cut them off.
	_, err = w.Write(bytes.Repeat([]byte{0xEE}, 1000))
	require.NoError(t, err)
	require.NoError(t, w.Suspend())
	require.NoError(t, w.Close())
	require.NoError(t, s.Close())

	s = openStore(t, dir, blobstore.Options{})
	n, size := s.PartialSize(st.ID)
	assert.Equal(t, cut+1000, n, "Suspend checkpoints all it has")
	assert.Equal(t, st.Size, size)
	var progress int64
	w, err = s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{Progress: func(n int64) { progress = n }})
	require.NoError(t, err)
	assert.Equal(t, cut+1000, w.Size())
	assert.Equal(t, cut+1000, progress, "readers of the transfer learn at once what is there")
	got := make([]byte, 100)
	_, err = w.ReadAt(got, 10)
	require.NoError(t, err)
	assert.Equal(t, data[10:110], got)
	// The 1000 wrong bytes were checkpointed: the end must not match.
	_, err = w.ReadFrom(bytes.NewReader(data[cut+1000:]))
	require.NoError(t, err)
	_, err = w.CommitState(st, true)
	assert.ErrorIs(t, err, blobstore.ErrDigestMismatch)
	require.NoError(t, w.Close())
	assert.Empty(t, filesUnder(t, filepath.Join(dir, "partial")), "a mismatch keeps nothing")
}

func TestResumableCompletes(t *testing.T) {
	s := newStore(t)
	data := content(8, 3<<20)
	st := remoteState(data)
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = w.ReadFrom(bytes.NewReader(data[:1<<20]))
	require.NoError(t, err)
	require.NoError(t, w.Suspend())
	require.NoError(t, w.Close())
	assert.Len(t, filesUnder(t, filepath.Join(s.Dir(), "partial")), 2)

	w, err = s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(1<<20), w.Size())
	// A second transfer of the same ID meanwhile gets a plain writer,
	// once it waited for the first to close.
	start := time.Now()
	w2, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	assert.False(t, w2.Resumable())
	assert.GreaterOrEqual(t, time.Since(start), blobstore.PartialWait)
	assert.Zero(t, w2.Size())
	require.NoError(t, w2.Close())

	_, err = w.ReadFrom(bytes.NewReader(data[1<<20:]))
	require.NoError(t, err)
	res, err := w.CommitState(st, true)
	require.NoError(t, err)
	assert.True(t, res.Created)
	require.NoError(t, w.Close())
	got, _ := readBlob(t, s, st.ID)
	assert.Equal(t, data, got)
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "partial")))
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")))
	assertMode(t, blobPath(s.Dir(), st.ID), 0o644)
}

// TestResumableWaitsForTheOpenOne: a transfer of an ID whose last
// transfer is still closing (suspended, its last reader letting go)
// waits for it and continues what it kept, instead of starting over.
func TestResumableWaitsForTheOpenOne(t *testing.T) {
	s := newStore(t)
	data := content(9, 3<<20)
	st := remoteState(data)
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = w.ReadFrom(bytes.NewReader(data[:1<<20]))
	require.NoError(t, err)
	require.NoError(t, w.Suspend())

	next := make(chan *blobstore.Writer, 1)
	go func() {
		w2, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
		assert.NoError(t, err)
		next <- w2
	}()
	select {
	case w2 := <-next:
		w2.Close()
		t.Fatal("a second writer of the ID opened while the first was open")
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, w.Close())
	var w2 *blobstore.Writer
	select {
	case w2 = <-next:
	case <-time.After(blobstore.PartialWait):
		t.Fatal("the waiting writer did not open once the first closed")
	}
	require.True(t, w2.Resumable())
	assert.Equal(t, int64(1<<20), w2.Size(), "it continues what the first kept")
	_, err = w2.ReadFrom(bytes.NewReader(data[1<<20:]))
	require.NoError(t, err)
	_, err = w2.CommitState(st, true)
	require.NoError(t, err)
	require.NoError(t, w2.Close())
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "partial")))
}

// TestResumableDamagedCheckpoint: a checkpoint that does not decode, or
// that names more bytes than the file holds, starts the transfer over.
func TestResumableDamagedCheckpoint(t *testing.T) {
	s := newStore(t)
	data := content(9, 2<<20)
	st := remoteState(data)
	suspend := func() {
		w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
		require.NoError(t, err)
		_, err = w.ReadFrom(bytes.NewReader(data[w.Size() : w.Size()+1<<19]))
		require.NoError(t, err)
		require.NoError(t, w.Suspend())
		require.NoError(t, w.Close())
	}
	resume := filepath.Join(s.Dir(), "partial", st.ID.String()+".resume")
	part := filepath.Join(s.Dir(), "partial", st.ID.String())

	suspend()
	b, err := os.ReadFile(resume)
	require.NoError(t, err)
	b[len(b)/2] ^= 1
	require.NoError(t, os.WriteFile(resume, b, 0o600))
	n, _ := s.PartialSize(st.ID)
	assert.Zero(t, n)

	suspend() // started over, at 0
	n, _ = s.PartialSize(st.ID)
	assert.Equal(t, int64(1<<19), n)
	require.NoError(t, os.Truncate(part, 1000))
	n, _ = s.PartialSize(st.ID)
	assert.Zero(t, n, "the file lost bytes the checkpoint names")
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	assert.Zero(t, w.Size())
	require.NoError(t, w.Close())
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "partial")), "closed without Suspend: nothing kept")
}

// TestPartialSweep: at start-up, what no transfer will resume goes; a
// usable partial transfer stays until it is PartialMaxAge old.
func TestPartialSweep(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	keep, old := content(10, 1<<20), content(11, 1<<20)
	for _, data := range [][]byte{keep, old} {
		st := remoteState(data)
		w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
		require.NoError(t, err)
		_, err = w.Write(data[:1000])
		require.NoError(t, err)
		require.NoError(t, w.Suspend())
		require.NoError(t, w.Close())
	}
	require.NoError(t, s.Close())
	pdir := filepath.Join(dir, "partial")
	lone := dtfc.Sum([]byte("no checkpoint")).String()
	require.NoError(t, os.WriteFile(filepath.Join(pdir, lone), []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(pdir, dtfc.Sum([]byte("no data")).String()+".resume"), []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(pdir, "junk"), []byte("x"), 0o600))
	long := time.Now().Add(-blobstore.PartialMaxAge - time.Hour)
	oldID := dtfc.Sum(old).String()
	require.NoError(t, os.Chtimes(filepath.Join(pdir, oldID), long, long))
	require.NoError(t, os.Chtimes(filepath.Join(pdir, oldID+".resume"), long, long))

	s = openStore(t, dir, blobstore.Options{})
	keepID := dtfc.Sum(keep).String()
	assert.ElementsMatch(t, []string{keepID, keepID + ".resume"}, filesUnder(t, pdir))
	n, size := s.PartialSize(dtfc.Sum(keep))
	assert.Equal(t, int64(1000), n)
	assert.Equal(t, int64(len(keep)), size)
}

// TestPartialSweepSparesOpen: the upkeep's sweep leaves a transfer in
// progress alone, even before its first checkpoint.
func TestPartialSweepSparesOpen(t *testing.T) {
	s := newStore(t)
	data := content(12, 1<<20)
	st := remoteState(data)
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = w.Write(data[:1000])
	require.NoError(t, err)
	require.NoError(t, s.SweepPartials())
	_, err = w.Write(data[1000:])
	require.NoError(t, err)
	_, err = w.CommitState(st, true)
	require.NoError(t, err, "the sweep took the open transfer's file")
	require.NoError(t, w.Close())
	// A transfer cut before its first checkpoint, closed: nothing kept.
	other := content(13, 1<<20)
	w, err = s.NewResumableWriter(dtfc.Sum(other), int64(len(other)), blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = w.Write(other[:1000])
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, s.SweepPartials())
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "partial")))
}

// TestCheckpointSoon: a background checkpoint is taken in by the next
// step of the writer, and a Close without Suspend waits for it and keeps
// nothing.
func TestCheckpointSoon(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	data := content(14, 4<<20)
	st := remoteState(data)
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = w.ReadFrom(bytes.NewReader(data[:1<<20]))
	require.NoError(t, err)
	w.CheckpointSoon()
	_, err = w.ReadFrom(bytes.NewReader(data[1<<20 : 2<<20]))
	require.NoError(t, err)
	w.CheckpointSoon() // skipped if the first is still running, else a second
	require.NoError(t, w.Close())
	assert.Empty(t, filesUnder(t, filepath.Join(dir, "partial")), "closed without Suspend: nothing kept")

	// Killed after a background checkpoint: the next process resumes
	// from it (simulated: the store closed without the writer's Close).
	w, err = s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = w.ReadFrom(bytes.NewReader(data[:3<<20]))
	require.NoError(t, err)
	w.CheckpointSoon()
	_, err = w.CommitState(st, true) // waits for the checkpoint; fails: 3 of 4 MiB
	require.Error(t, err)
	n, _ := s.PartialSize(st.ID)
	assert.Equal(t, int64(3<<20), n, "the background checkpoint is on disk once the writer's next step returned")
	require.NoError(t, s.Close())
}

// TestResumeFromDamagedPartialFile: README ("Resumed transfers"):
// "The resumed bytes are hashed to the ID at the end like any others: a
// damaged checkpoint or partial file can only make the transfer fail
// (and be started over), never serve wrong bytes." Here the partial data
// file is damaged inside the range its checkpoint covers (a bit flipped
// on disk while the transfer waited to be resumed). The resumed transfer
// takes the SHA-512 state from the checkpoint and never re-reads those
// bytes, so the commit succeeds and blobs/ holds bytes that do not hash
// to their ID; Open (the size is right) serves them.
func TestResumeFromDamagedPartialFile(t *testing.T) {
	s := newStore(t)
	data := content(41, 5<<20)
	st := remoteState(data)
	cut := int64(2 << 20)

	// A transfer cut after 2 MiB, kept for a later one.
	w, err := s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = w.ReadFrom(onlyReader{bytes.NewReader(data[:cut])})
	require.NoError(t, err)
	require.NoError(t, w.Suspend())
	require.NoError(t, w.Close())

	// One byte of the kept bytes damaged on disk.
	part := filepath.Join(s.Dir(), "partial", st.ID.String())
	f, err := os.OpenFile(part, os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, 1000)
	require.NoError(t, err)
	b[0] ^= 0x01
	_, err = f.WriteAt(b, 1000)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	// The next transfer of the ID: it resumes from the checkpoint (2 MiB)
	// and receives the rest.
	w, err = s.NewResumableWriter(st.ID, st.Size, blobstore.WriterOptions{})
	require.NoError(t, err)
	// (Resumed at the checkpoint, or started over: either is the
	// README's; what matters is what gets stored.)
	_, err = w.ReadFrom(onlyReader{bytes.NewReader(data[w.Size():])})
	require.NoError(t, err)
	_, cerr := w.CommitState(st, true)
	require.NoError(t, w.Close())

	if cerr != nil {
		// What the README promises: the transfer fails (and starts over).
		assert.ErrorIs(t, cerr, blobstore.ErrDigestMismatch)
		return
	}
	got, _ := readBlob(t, s, st.ID)
	assert.Equal(t, len(data), len(got))
	if sum := dtfc.Sum(got); sum != st.ID {
		t.Errorf("the resumed transfer committed, and Open serves %d bytes that hash to %.16s..., not to their ID %.16s... (byte 1000: %#x, want %#x)",
			len(got), sum.String(), st.ID.String(), got[1000], data[1000])
	}
}
