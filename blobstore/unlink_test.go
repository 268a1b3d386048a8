//go:build linux

package blobstore

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dtfc/dtfc"
)

// setImmutable sets or clears the immutable attribute of path (chattr
// +i): while it is set, an unlink of path fails (EPERM), even for root.
// It stands for a transient fault of the unlink (an I/O error, say).
func setImmutable(t *testing.T, path string, on bool) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Skipf("cannot read the file's attributes: %v", err)
	}
	const immutable = 0x10 // FS_IMMUTABLE_FL
	if on {
		flags |= immutable
	} else {
		flags &^= immutable
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags); err != nil {
		t.Skipf("cannot set the immutable attribute (needs root and a file system that has it): %v", err)
	}
}

// TestFailedUnlinkOfAppliedDelete: a delete received from a peer
// whose unlink fails once (a transient fault) leaves the blob's file in
// blobs/ under a tombstone. The peer's retry of the push is Stale (the
// tombstone is recorded), so nothing retried the unlink; the intent that
// named the file was dropped by the next clean Close, so no start looked
// at it again. The file stayed in blobs/ for good, and every later
// upload of the same bytes (local, or pushed by a peer: its pusher's
// cursor then cannot pass it) failed, because placing it links into
// blobs/ where a file already is (found by a review helper). Now the
// sweep of intents, or Close, finishes the removal; and one that still
// fails at Close keeps its intent for the next start, which finishes it.
func TestFailedUnlinkOfAppliedDelete(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make an unlink fail (chattr +i)")
	}
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	data := blobBytes(4141, 3000)
	up := putBytes(t, s, data, Upload{}).State
	path := s.Path(up.ID)

	setImmutable(t, path, true)
	t.Cleanup(func() {
		if _, err := os.Lstat(path); err == nil {
			setImmutable(t, path, false)
		}
	})
	tomb := dtfc.State{ID: up.ID, Deleted: true, Clock: s.Clock().Now(), Node: "a-peer"}
	_, err = s.Apply(tomb)
	require.Error(t, err, "the unlink fails while the file is immutable")
	t.Logf("first push of the delete: %v", err)
	setImmutable(t, path, false) // the fault is over

	// The peer pushes the delete again: this node says it has it.
	out, err := s.Apply(tomb)
	require.NoError(t, err)
	t.Logf("second push of the delete: %v", out)
	st, err := s.Stat(up.ID)
	require.NoError(t, err)
	require.True(t, st.Deleted, "the delete is recorded (and acknowledged to the peer)")

	// A clean restart.
	require.NoError(t, s.Close())
	s, err = Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()

	_, statErr := os.Lstat(path)
	assert.ErrorIs(t, statErr, os.ErrNotExist, "a deleted blob's file is still in blobs/ after the delete was acknowledged and the node restarted cleanly")

	// The same bytes uploaded again, after the delete: a new upload that
	// must be taken.
	w, err := s.NewWriter(WriterOptions{})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	res, err := w.Commit(Upload{})
	require.NoError(t, err, "an upload of bytes deleted earlier is refused: the deleted file still sits in blobs/")
	assert.False(t, res.State.Deleted)
	b, err := s.Open(up.ID)
	require.NoError(t, err)
	b.Close()
}

// TestUnlinkFailingAtCloseFinishedAtStart: a dead blob's file that cannot
// be removed even at Close keeps its intent and an unclean mark; the next
// start, the fault over, removes it.
func TestUnlinkFailingAtCloseFinishedAtStart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make an unlink fail (chattr +i)")
	}
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	up := putBytes(t, s, blobBytes(4242, 3000), Upload{}).State
	path := s.Path(up.ID)
	setImmutable(t, path, true)
	t.Cleanup(func() {
		if _, err := os.Lstat(path); err == nil {
			setImmutable(t, path, false)
		}
	})
	_, err = s.Apply(dtfc.State{ID: up.ID, Deleted: true, Clock: s.Clock().Now(), Node: "a-peer"})
	require.Error(t, err, "the unlink fails while the file is immutable")
	require.NoError(t, s.Close())
	require.FileExists(t, path, "still immutable at Close")

	setImmutable(t, path, false)
	s, err = Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	_, statErr := os.Lstat(path)
	assert.ErrorIs(t, statErr, os.ErrNotExist, "the next start finished the removal")
}
