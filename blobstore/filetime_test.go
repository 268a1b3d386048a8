package blobstore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// TestFileTime: a clock survives the trip through a real file's
// modification time exactly; a time no clock was written as gives its
// millisecond; clocks no file time can hold are not written.
func TestFileTime(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	defer s.Close()
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(path, []byte("x"), 0o644))

	var c dtfc.Clock
	for _, ts := range []dtfc.Timestamp{c.Now(), c.Now(), dtfc.TimestampAt(time.Now().Add(-400*24*time.Hour)) | 0xffff} {
		s.stampFile(path, ts)
		assert.Equal(t, ts, s.fileStateClock(path), "clock %s", ts)
	}

	// A time not written by stampFile: its millisecond.
	tm := time.Now().Add(-time.Hour).Truncate(time.Millisecond).Add(123456 * time.Nanosecond)
	require.NoError(t, os.Chtimes(path, time.Time{}, tm))
	assert.Equal(t, dtfc.TimestampAt(tm), s.fileStateClock(path))

	// A file dated a year ahead of this node's clock says nothing.
	s.stampFile(path, dtfc.TimestampAt(time.Now().AddDate(1, 0, 0)))
	assert.Zero(t, s.fileStateClock(path))

	// Clocks beyond what a file time holds leave the time as it was.
	require.NoError(t, os.Chtimes(path, time.Time{}, tm))
	for _, ts := range []dtfc.Timestamp{0, dtfc.MaxTimestamp, dtfc.TimestampAt(time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC))} {
		s.stampFile(path, ts)
		fi, err := os.Stat(path)
		require.NoError(t, err)
		assert.True(t, fi.ModTime().Equal(tm), "clock %s changed the file's time to %s", ts, fi.ModTime())
	}
	assert.Zero(t, s.fileStateClock(filepath.Join(t.TempDir(), "missing")))
}

// TestNewerUploadStampsHeldFile: a newer upload state from a peer that
// takes a file this node holds dates the file by its clock, as a local
// upload of held bytes does (the file's time is what a rebuild goes by).
func TestNewerUploadStampsHeldFile(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	defer s.Close()
	res := putBytes(t, s, []byte("held bytes"), Upload{})
	id := res.State.ID
	require.Equal(t, res.State.Clock, s.fileStateClock(s.Path(id)))

	newer := res.State
	newer.Clock = dtfc.TimestampAt(time.Now().Add(time.Second))
	newer.Node = "0123456789abcdef"
	out, err := s.Apply(newer)
	require.NoError(t, err)
	require.Equal(t, Applied, out)
	assert.Equal(t, newer.Clock, s.fileStateClock(s.Path(id)), "the file's time records the newer upload's clock")
}
