package blobstore

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// crash stops s as a kill -9 would leave it: no clean mark, no intents
// dropped, nothing flushed.
func crash(s *Store) {
	close(s.stop)
	<-s.stopped
	<-s.intentsDone
	s.opener.close()
	s.db.Close()
	s.unlock()
}

// TestUncleanStartChecksInFlight: after a crash, a store that kept
// intents checks only the IDs in flight: a file whose tombstone committed
// before its unlink is removed, a placement linked into blobs/ before its
// record committed is set aside as unconfirmed, a placement whose record
// did commit stays, and a file no change was making (a foreign copy,
// placed by hand) is left for the full walk, which an older dtfc's
// unclean mark still gets.
func TestUncleanStartChecksInFlight(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	live := putBytes(t, s, blobBytes(1, 300), Upload{}).State
	lostUnlink := putBytes(t, s, blobBytes(2, 300), Upload{}).State

	// A delete whose unlink a crash cut: its tombstone (and intent)
	// committed, its file still there.
	tomb := dtfc.State{ID: lostUnlink.ID, Deleted: true, Clock: s.Clock().Now(), Node: s.NodeID()}
	require.NoError(t, s.update(func(t *txn) error {
		_, err := t.replace(tomb, true)
		return err
	}))
	// A placement cut before its commit: named in tmp/, linked into blobs/.
	cut := blobBytes(3, 300)
	cutID := dtfc.Sum(cut)
	named := placingName(s.tmpDir, cutID, filepath.Join(s.tmpDir, "blob-123"))
	require.NoError(t, os.WriteFile(named, cut, 0o644))
	require.NoError(t, s.ensureShard(cutID))
	require.NoError(t, os.Link(named, s.Path(cutID)))
	// A placement whose record committed, its temp file not yet unlinked.
	done := putBytes(t, s, blobBytes(4, 300), Upload{}).State
	require.NoError(t, os.Link(s.Path(done.ID), placingName(s.tmpDir, done.ID, "blob-456")))
	// A foreign copy no change was making.
	foreign := blobBytes(5, 300)
	foreignID := dtfc.Sum(foreign)
	require.NoError(t, s.ensureShard(foreignID))
	require.NoError(t, os.WriteFile(s.Path(foreignID), foreign, 0o644))
	crash(s)

	s, err = Open(dir, Options{})
	require.NoError(t, err)
	assert.True(t, s.fileExists(live.ID))
	assert.True(t, s.fileExists(done.ID), "a committed placement stays")
	assert.False(t, s.fileExists(lostUnlink.ID), "the lost unlink is done")
	assert.False(t, s.fileExists(cutID), "the cut placement left blobs/")
	_, ok, err := s.unconfirmedEntry(cutID)
	require.NoError(t, err)
	assert.True(t, ok, "and is set aside as unconfirmed")
	assert.True(t, s.fileExists(foreignID), "not in flight: not looked at")
	entries, err := os.ReadDir(s.tmpDir)
	require.NoError(t, err)
	assert.Empty(t, entries, "tmp/ swept")
	var left int
	require.NoError(t, s.db.View(func(tx *bolt.Tx) error {
		left = tx.Bucket(bucketIntents).Stats().KeyN
		return nil
	}))
	assert.Zero(t, left, "the intents are cleared")
	crash(s)

	// An unclean mark from a dtfc that kept no intents: the full walk.
	markUnclean(t, dir)
	s, err = Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	assert.False(t, s.fileExists(foreignID), "the full walk sets the foreign copy aside")
}

// TestIntentsSwept: the intents of changes that are done are dropped
// while the store runs; one whose file is still there is finished (the
// file removed) and dropped; a clean Close drops the rest.
func TestIntentsSwept(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	count := func() (n int) {
		require.NoError(t, s.db.View(func(tx *bolt.Tx) error {
			n = tx.Bucket(bucketIntents).Stats().KeyN
			return nil
		}))
		return n
	}
	for i := range 5 {
		st := putBytes(t, s, blobBytes(10+i, 100), Upload{}).State
		_, err := s.Delete(st.ID, false)
		require.NoError(t, err)
	}
	assert.Equal(t, 5, count(), "a delete records an intent")
	require.NoError(t, s.sweepIntents())
	assert.Zero(t, count(), "done: dropped")

	// One whose unlink did not happen (the file put back) is finished.
	st := putBytes(t, s, blobBytes(20, 100), Upload{}).State
	data, err := os.ReadFile(s.Path(st.ID))
	require.NoError(t, err)
	_, err = s.Delete(st.ID, false)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(s.Path(st.ID), data, 0o644))
	require.NoError(t, s.sweepIntents())
	assert.Zero(t, count(), "finished: dropped")
	assert.False(t, s.fileExists(st.ID), "the dead blob's file removed")
	for i := range 3 {
		st := putBytes(t, s, blobBytes(30+i, 100), Upload{}).State
		_, err := s.Delete(st.ID, false)
		require.NoError(t, err)
	}
	require.NoError(t, s.Close())
	s, err = Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	assert.Zero(t, count(), "a clean Close drops them")
}

// TestUncleanStartFinishesEviction: a tier's eviction whose unlink a
// crash cut (its record marked evicted, its intent committed, its file
// still in blobs/) is finished at the next start, and the byte count
// stays that of the bytes held.
func TestUncleanStartFinishesEviction(t *testing.T) {
	dir := t.TempDir()
	opts := Options{TrackAccess: true, Tier: true}
	s, err := Open(dir, opts)
	require.NoError(t, err)
	kept := putBytes(t, s, blobBytes(1, 300), Upload{}).State
	ev := putBytes(t, s, blobBytes(2, 300), Upload{}).State
	require.NoError(t, s.update(func(t *txn) error {
		rec, _, err := t.get(ev.ID)
		if err != nil {
			return err
		}
		_, err = t.setEvicted(rec, true)
		return err
	}))
	crash(s)

	s, err = Open(dir, opts)
	require.NoError(t, err)
	defer s.Close()
	assert.True(t, s.fileExists(kept.ID))
	assert.False(t, s.fileExists(ev.ID), "the cut eviction's unlink is done")
	assert.True(t, s.Evicted(ev.ID))
	_, held := s.Stats()
	assert.EqualValues(t, 300, held)
}
