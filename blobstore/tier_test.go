package blobstore_test

import (
	"context"
	"io/fs"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestTierEvictKeepsRecords: a tier's eviction drops the bytes of the
// least recently read blobs and keeps their records: the state, the
// digests and the feed are unchanged, a peer's copy of the same upload
// is not asked for, the scrubber does not take the missing file for a
// loss, and the bytes come back (a read's fill) under the same record
// and feed entry. Byte counts are of the bytes held, across a restart.
func TestTierEvictKeepsRecords(t *testing.T) {
	const size = 1 << 10
	dir := t.TempDir()
	opts := blobstore.Options{TrackAccess: true, Tier: true}
	s, err := blobstore.Open(dir, opts)
	require.NoError(t, err)
	defer func() { s.Close() }()

	var ups []blobstore.Result
	for i := range 6 {
		ups = append(ups, put(t, s, content(300+i, size), blobstore.Upload{ContentType: "text/plain"}))
	}
	readBlob(t, s, ups[0].State.ID) // the oldest upload becomes the most recent
	digests, err := s.Digests()
	require.NoError(t, err)
	seq := s.LastSeq()

	// Only what the archive acknowledged goes: up to ups[3].
	evicted, err := s.Evict(2*size, 0, ups[3].Seq)
	require.NoError(t, err)
	var got []dtfc.ID
	for _, st := range evicted {
		got = append(got, st.ID)
	}
	assert.Equal(t, []dtfc.ID{ups[1].State.ID, ups[2].State.ID, ups[3].State.ID, ups[0].State.ID}, got, "least recently read first, never past acked")
	blobs, held := s.Stats()
	assert.EqualValues(t, 6, blobs, "records kept")
	assert.EqualValues(t, 2*size, held, "bytes held: ups[4] and ups[5], not acknowledged")
	assert.Equal(t, seq, s.LastSeq(), "an eviction is not a change")
	after, err := s.Digests()
	require.NoError(t, err)
	assert.Equal(t, digests, after, "digests unchanged: peers see the same states")

	ev := ups[2]
	st, err := s.Stat(ev.State.ID)
	require.NoError(t, err)
	assert.Equal(t, ev.State, st, "the state stays")
	assert.True(t, s.Evicted(ev.State.ID))
	_, err = os.Stat(s.Path(ev.State.ID))
	assert.ErrorIs(t, err, fs.ErrNotExist, "its file is gone")
	_, err = s.Open(ev.State.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "read: a miss, fetched back")
	_, _, _, err = s.ReadOrOpen(ev.State.ID, 1<<20)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	_, ok := s.Missing(ev.State.ID)
	assert.False(t, ok, "evicted is not missing")
	out, err := s.Apply(ev.State)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out, "a peer's offer of the same upload asks no bytes")

	// The scrubber passes over evicted blobs.
	var corrupt []dtfc.State
	require.NoError(t, s.Scrub(context.Background(), 0, func(st dtfc.State) { corrupt = append(corrupt, st) }))
	assert.Empty(t, corrupt)
	assert.True(t, s.Evicted(ev.State.ID), "still evicted, not quarantined")

	// A restart keeps it so, and the counts agree with the records.
	require.NoError(t, s.Close())
	s, err = blobstore.Open(dir, opts)
	require.NoError(t, err)
	blobs, held = s.Stats()
	assert.EqualValues(t, 6, blobs)
	assert.EqualValues(t, 2*size, held)
	assert.True(t, s.Evicted(ev.State.ID))

	// A fill brings the bytes back under the same record and feed entry.
	res, err := commitState(t, s, content(302, size), ev.State, true)
	require.NoError(t, err)
	assert.True(t, res.Applied)
	assert.True(t, res.Created)
	assert.Equal(t, ev.Seq, res.Seq, "the same feed entry: a refill is no news to the peers")
	assert.Equal(t, seq, s.LastSeq())
	assert.False(t, s.Evicted(ev.State.ID))
	data, st2 := readBlob(t, s, ev.State.ID)
	assert.Equal(t, content(302, size), data)
	assert.Equal(t, ev.State, st2)
	_, held = s.Stats()
	assert.EqualValues(t, 3*size, held)

	// A delete of an evicted blob: a tombstone, counts right.
	del, err := s.Delete(ups[1].State.ID, false)
	require.NoError(t, err)
	assert.True(t, del.Deleted)
	assert.False(t, s.Evicted(ups[1].State.ID))
	blobs, held = s.Stats()
	assert.EqualValues(t, 5, blobs)
	assert.EqualValues(t, 3*size, held)

	// A newer upload of evicted bytes is a new operation: its bytes come.
	newer := ups[3].State
	newer.Clock = s.Clock().Now()
	newer.Node = "other"
	out, err = s.Apply(newer)
	require.NoError(t, err)
	assert.Equal(t, blobstore.NeedBytes, out)

	require.NoError(t, s.Close())
	s, err = blobstore.Open(dir, opts)
	require.NoError(t, err)
	blobs, held = s.Stats()
	assert.EqualValues(t, 5, blobs)
	assert.EqualValues(t, 3*size, held)
}

// TestTierEvictsUntracked: a replica's store turned tier holds blobs no
// read was ever recorded for; they are evicted too (before any read
// one), so that the first eviction gets under the limit.
func TestTierEvictsUntracked(t *testing.T) {
	const size = 1 << 10
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	var ids []dtfc.ID
	for i := range 5 {
		ids = append(ids, put(t, s, content(400+i, size), blobstore.Upload{}).State.ID)
	}
	require.NoError(t, s.Close())

	s = openStore(t, dir, blobstore.Options{TrackAccess: true, Tier: true})
	readBlob(t, s, ids[0])
	require.NoError(t, s.FlushAccess())
	evicted, err := s.Evict(2*size, 0, allAcked)
	require.NoError(t, err)
	assert.Len(t, evicted, 3)
	_, held := s.Stats()
	assert.LessOrEqual(t, held, int64(2*size))
	assert.False(t, s.Evicted(ids[0]), "the one read stays")
	for _, id := range ids {
		_, err := s.Stat(id)
		assert.NoError(t, err, "every record stays")
	}
}

// TestTierColdFirst: a blob marked cold (read back only to be sent to a
// peer) is the first evicted, before blobs read longer ago.
func TestTierColdFirst(t *testing.T) {
	const size = 1 << 10
	s := openStore(t, t.TempDir(), blobstore.Options{TrackAccess: true, Tier: true})
	var ids []dtfc.ID
	for i := range 4 {
		ids = append(ids, put(t, s, content(500+i, size), blobstore.Upload{}).State.ID)
	}
	readBlob(t, s, ids[3]) // the most recently read
	require.NoError(t, s.Cold(ids[3]))
	evicted, err := s.Evict(3*size, 0, allAcked)
	require.NoError(t, err)
	require.Len(t, evicted, 1)
	assert.Equal(t, ids[3], evicted[0].ID, "the cold blob goes first")
	require.NoError(t, s.Cold(ids[3]), "cold of an evicted blob: nothing to do")
}

// TestQuietOpenKeepsTheOrder: a blob opened quietly (sent to a peer or an
// archive, or checked) keeps its place in the eviction order, and is
// still never evicted while open; a blob opened to be read moves to the
// end.
func TestQuietOpenKeepsTheOrder(t *testing.T) {
	const size = 1 << 10
	for _, tier := range []bool{false, true} {
		s := openStore(t, t.TempDir(), blobstore.Options{TrackAccess: true, Tier: tier})
		var ids []dtfc.ID
		for i := range 5 {
			ids = append(ids, put(t, s, content(600+i, size), blobstore.Upload{}).State.ID)
		}
		b, err := s.OpenQuietly(ids[0])
		require.NoError(t, err)
		require.NoError(t, b.Close())
		readBlob(t, s, ids[1]) // a use: now the most recent
		evicted, err := s.Evict(4*size, 0, allAcked)
		require.NoError(t, err)
		require.Len(t, evicted, 1)
		assert.Equal(t, ids[0], evicted[0].ID, "tier %v: the blob only sent is still the least recently used", tier)

		// Open, quietly or not, it is never evicted: blob 2 is the least
		// recently used now.
		b, err = s.OpenQuietly(ids[2])
		require.NoError(t, err)
		evicted, err = s.Evict(3*size, 0, allAcked)
		require.NoError(t, err)
		require.Len(t, evicted, 1)
		assert.Equal(t, ids[3], evicted[0].ID, "tier %v: the open blob was kept, the next in order went", tier)
		require.NoError(t, b.Close())
		evicted, err = s.Evict(2*size, 0, allAcked)
		require.NoError(t, err)
		require.Len(t, evicted, 1)
		assert.Equal(t, ids[2], evicted[0].ID, "tier %v: closed, it goes first", tier)
	}
}
