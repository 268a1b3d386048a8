package blobstore_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestClockAheadRefused: a remote state, a pushed blob or a deny entry
// whose clock is further ahead of the wall clock than MaxClockOffset is
// refused, nothing of it is applied, and the local clock does not move
// (one such push once dragged every node's clock a year ahead).
func TestClockAheadRefused(t *testing.T) {
	wall := fixedWall()
	s := openStore(t, t.TempDir(), blobstore.Options{Wall: func() time.Time { return wall }, MaxClockOffset: time.Minute})
	data := content(1, 100)
	id := dtfc.Sum(data)
	ahead := dtfc.TimestampAt(wall.Add(time.Hour))
	within := dtfc.TimestampAt(wall.Add(30 * time.Second))
	before := s.Clock().Now()

	_, err := s.Apply(dtfc.State{ID: id, Deleted: true, Clock: ahead, Node: "far"})
	var cae *blobstore.ClockAheadError
	require.ErrorAs(t, err, &cae)
	assert.ErrorIs(t, err, blobstore.ErrClockAhead)
	assert.Equal(t, time.Hour, cae.Ahead)
	_, err = s.Stat(id)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "nothing recorded")

	_, err = commitState(t, s, data, dtfc.State{ID: id, Clock: dtfc.MaxTimestamp, Node: "far", Size: 100}, true)
	assert.ErrorIs(t, err, blobstore.ErrClockAhead)
	assert.NoFileExists(t, blobPath(s.Dir(), id))

	_, err = s.ApplyDeny(blobstore.Deny{ID: id, Status: 451, Clock: ahead, Node: "far"})
	assert.ErrorIs(t, err, blobstore.ErrClockAhead)
	_, denied := s.Denied(id)
	assert.False(t, denied)

	after := s.Clock().Now()
	assert.Less(t, after, within, "the clock did not move to the refused readings")
	assert.Greater(t, after, before)

	// Within the offset: accepted, and observed.
	res, err := commitState(t, s, data, dtfc.State{ID: id, Clock: within, Node: "near", Size: 100}, true)
	require.NoError(t, err)
	assert.True(t, res.Applied)
	assert.Greater(t, s.Clock().Now(), within)

	// Local operations are never refused, whatever the clock says.
	w2 := wall
	s2 := openStore(t, t.TempDir(), blobstore.Options{Wall: func() time.Time { return w2 }})
	s2.Clock().Observe(ahead)
	_, err = s2.SetDeny(id, 451, "", false)
	assert.NoError(t, err)
}

// TestDenyInFeed: blocks and lifts are changes of the feed, each ID's
// latest one only, and count for caches.
func TestDenyInFeed(t *testing.T) {
	s := newStore(t)
	a := put(t, s, content(1, 10), blobstore.Upload{})
	id := a.State.ID
	d, err := s.SetDeny(id, 451, "court order", false)
	require.NoError(t, err)
	changes, err := s.Changes(0, 100)
	require.NoError(t, err)
	require.Len(t, changes, 2, "the block and the delete it caused; the upload is superseded")
	var deny *blobstore.Deny
	var tomb dtfc.State
	for _, ch := range changes {
		if ch.Deny != nil {
			deny = ch.Deny
		} else {
			tomb = ch.State
		}
	}
	require.NotNil(t, deny)
	assert.Equal(t, d, *deny)
	assert.True(t, tomb.Deleted)
	n, err := s.CountChanges(0, true)
	require.NoError(t, err)
	assert.Equal(t, int64(2), n, "a cache is sent the delete and the block")

	lift, err := s.SetDeny(id, 0, "", true)
	require.NoError(t, err)
	changes, err = s.Changes(0, 100)
	require.NoError(t, err)
	require.Len(t, changes, 2)
	last := changes[len(changes)-1]
	require.NotNil(t, last.Deny)
	assert.Equal(t, lift, *last.Deny, "the lift replaced the block in the feed")

	// A reopened store keeps the entries in the feed.
	dir := s.Dir()
	require.NoError(t, s.Close())
	s = openStore(t, dir, blobstore.Options{})
	changes2, err := s.Changes(0, 100)
	require.NoError(t, err)
	assert.Equal(t, changes, changes2)
}

// TestPurgeHeldBack: tombstones and lifts old enough are forgotten only
// when the caller allows it, given their feed position; a held-back one
// stays and is offered again at the next purge.
func TestPurgeHeldBack(t *testing.T) {
	wall := fixedWall()
	s := openStore(t, t.TempDir(), blobstore.Options{Wall: func() time.Time { return wall }})
	var seqs []uint64
	for i := range 4 {
		r := put(t, s, content(i, 10), blobstore.Upload{})
		st, err := s.Delete(r.State.ID, false)
		require.NoError(t, err)
		got, err := s.Changes(0, 100)
		require.NoError(t, err)
		for _, ch := range got {
			if ch.State.ID == st.ID {
				seqs = append(seqs, ch.Seq)
			}
		}
	}
	idLift := dtfc.Sum(content(99, 1))
	_, err := s.SetDeny(idLift, 403, "", false)
	require.NoError(t, err)
	_, err = s.SetDeny(idLift, 0, "", true)
	require.NoError(t, err)
	horizon := s.Clock().Now()

	acked := seqs[1] // a peer accepted the first two tombstones only
	var offered []uint64
	n, err := s.PurgeTombstones(horizon, func(seq uint64, _ dtfc.Timestamp) bool {
		offered = append(offered, seq)
		return seq <= acked
	})
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.ElementsMatch(t, seqs, offered)
	n, err = s.PurgeLifts(horizon, func(uint64, dtfc.Timestamp) bool { return false })
	require.NoError(t, err)
	assert.Equal(t, 0, n)
	list, err := s.DenyList()
	require.NoError(t, err)
	assert.Len(t, list, 1, "the lift is kept while held back")

	changes, err := s.Changes(0, 100)
	require.NoError(t, err)
	assert.Len(t, changes, 3, "two tombstones and the lift left in the feed")
	n, err = s.PurgeTombstones(horizon, forgetAll)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	n, err = s.PurgeLifts(horizon, forgetAll)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	changes, err = s.Changes(0, 100)
	require.NoError(t, err)
	assert.Empty(t, changes)
	list, err = s.DenyList()
	require.NoError(t, err)
	assert.Empty(t, list)
}

// TestEvictKeepsUnacknowledged: a cache's own uploads are not evicted
// before a replica accepted them (acked passes their feed position), even
// above the size limit; fills go as usual.
func TestEvictKeepsUnacknowledged(t *testing.T) {
	s := openStore(t, t.TempDir(), blobstore.Options{TrackAccess: true})
	const size = 1000
	var uploads []blobstore.Result
	for i := range 3 {
		uploads = append(uploads, put(t, s, content(i, size), blobstore.Upload{}))
	}
	fill := content(10, size)
	fillID := dtfc.Sum(fill)
	_, err := commitState(t, s, fill, dtfc.State{ID: fillID, Clock: s.Clock().Now(), Node: "other", Size: size}, false)
	require.NoError(t, err)
	require.NoError(t, s.FlushAccess())

	evicted, err := s.Evict(size, 0, 0)
	require.NoError(t, err)
	require.Len(t, evicted, 1, "only the fill")
	assert.Equal(t, fillID, evicted[0].ID)
	_, bytes := s.Stats()
	assert.Equal(t, int64(3*size), bytes, "above the limit: the uploads are not acknowledged yet")

	evicted, err = s.Evict(size, 0, uploads[1].Seq)
	require.NoError(t, err)
	assert.Len(t, evicted, 2, "the two acknowledged uploads")
	_, err = s.Stat(uploads[2].State.ID)
	assert.NoError(t, err, "the unacknowledged one stays")
}

// TestRecordWithoutFileRepaired: a record whose file is gone is repaired
// by the same state from a peer (Apply asks for the bytes, CommitState
// places them), where it used to be refused as not newer until the next
// scrub.
func TestRecordWithoutFileRepaired(t *testing.T) {
	s := newStore(t)
	data := content(3, 500)
	r := put(t, s, data, blobstore.Upload{Filename: "a.txt"})
	require.NoError(t, os.Remove(blobPath(s.Dir(), r.State.ID)))

	out, err := s.Apply(r.State)
	require.NoError(t, err)
	assert.Equal(t, blobstore.NeedBytes, out)
	res, err := commitState(t, s, data, r.State, true)
	require.NoError(t, err)
	assert.True(t, res.Applied)
	assert.True(t, res.Created)
	got, st := readBlob(t, s, r.State.ID)
	assert.Equal(t, data, got)
	assert.Equal(t, r.State, st)

	out, err = s.Apply(r.State)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out, "held again: nothing to do")
}

// TestReadSmallVerifies: bytes of a small blob read from disk into the
// small-blob cache (ReadOrOpen) are hashed first; a corrupt file is
// quarantined and answered as missing, and after a repair only the right
// bytes are served.
func TestReadSmallVerifies(t *testing.T) {
	s := newStore(t)
	data := content(4, 2000)
	r := put(t, s, data, blobstore.Upload{})
	id := r.State.ID
	p := blobPath(s.Dir(), id)
	bad := append([]byte(nil), data...)
	bad[100] ^= 0xff
	require.NoError(t, os.WriteFile(p, bad, 0o644))

	_, _, _, err := s.ReadOrOpen(id, 1<<20)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "corrupt bytes are not served")
	assert.NoFileExists(t, p)
	q, err := os.ReadDir(filepath.Join(s.Dir(), "quarantine"))
	require.NoError(t, err)
	assert.Len(t, q, 1)
	_, err = s.Stat(id)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "record forgotten: a read fetches it again")

	_, err = commitState(t, s, data, r.State, true)
	require.NoError(t, err)
	_, got, _, err := s.ReadOrOpen(id, 1<<20)
	require.NoError(t, err)
	assert.Equal(t, data, got)
}

// TestReadOrOpen: a blob up to the limit comes back as its bytes, a
// larger one as its open file (with the same state as Open's), a deleted
// one as ErrNotFound; corrupt small bytes are quarantined.
func TestReadOrOpen(t *testing.T) {
	s := newStore(t)
	small := put(t, s, content(6, 1000), blobstore.Upload{ContentType: "text/plain"}).State
	large := put(t, s, content(7, 5000), blobstore.Upload{ContentType: "image/png"}).State

	st, b, f, err := s.ReadOrOpen(small.ID, 4096)
	require.NoError(t, err)
	assert.Nil(t, f)
	assert.Equal(t, content(6, 1000), b)
	assert.Equal(t, small, st)

	st, b, f, err = s.ReadOrOpen(large.ID, 4096)
	require.NoError(t, err)
	assert.Nil(t, b)
	require.NotNil(t, f)
	got, err := io.ReadAll(f)
	require.NoError(t, f.Close())
	require.NoError(t, err)
	assert.Equal(t, content(7, 5000), got)
	assert.Equal(t, large, st)
	assert.Equal(t, large, f.State)

	_, err = s.Delete(large.ID, false)
	require.NoError(t, err)
	_, _, _, err = s.ReadOrOpen(large.ID, 4096)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)

	// A small blob not read yet (not in memory), its file gone bad.
	unread := put(t, s, content(8, 1000), blobstore.Upload{}).State
	bad := content(8, 1000)
	bad[10] ^= 1
	require.NoError(t, os.WriteFile(blobPath(s.Dir(), unread.ID), bad, 0o644))
	_, _, _, err = s.ReadOrOpen(unread.ID, 4096)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "corrupt bytes are not served")
	assert.NoFileExists(t, blobPath(s.Dir(), unread.ID))
}

// TestOpenRefusesAFileOfAnotherSize: a blob's file cut short or grown
// on disk is never opened for serving: its bytes cannot hash to its
// name. It is quarantined (kept under quarantine/) and its record
// forgotten, as for a small blob that fails its hash, so the node can
// fetch it again; Open and ReadOrOpen both say not found.
func TestOpenRefusesAFileOfAnotherSize(t *testing.T) {
	s := newStore(t)
	short := put(t, s, content(11, 50000), blobstore.Upload{}).State
	long := put(t, s, content(12, 50000), blobstore.Upload{}).State
	require.NoError(t, os.Truncate(blobPath(s.Dir(), short.ID), 49999))
	require.NoError(t, os.WriteFile(blobPath(s.Dir(), long.ID), append(content(12, 50000), 0), 0o644))

	_, err := s.Open(short.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "a file cut short is not served")
	_, _, _, err = s.ReadOrOpen(long.ID, 4096)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "a file grown is not served")
	for _, st := range []dtfc.State{short, long} {
		assert.NoFileExists(t, blobPath(s.Dir(), st.ID))
		_, err := s.Stat(st.ID)
		assert.ErrorIs(t, err, blobstore.ErrNotFound, "the record is forgotten, so the blob is fetched again")
	}
	q, err := os.ReadDir(filepath.Join(s.Dir(), "quarantine"))
	require.NoError(t, err)
	assert.Len(t, q, 2, "both files are kept in quarantine")
}

// TestApplyRefusesAnotherSize: a newer remote upload of a blob held
// here whose state gives another size is wrong (the same ID is the same
// bytes) and is not recorded: recorded, it would make the good file
// look damaged at its next read.
func TestApplyRefusesAnotherSize(t *testing.T) {
	s := newStore(t)
	data := content(13, 50000)
	st := put(t, s, data, blobstore.Upload{}).State
	bad := st
	bad.Clock, bad.Node, bad.Size = st.Clock+1, "peer", st.Size-1
	out, err := s.Apply(bad)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out)
	got, err := s.Stat(st.ID)
	require.NoError(t, err)
	assert.Equal(t, st, got)
	b, err := s.Open(st.ID)
	require.NoError(t, err, "the file is still served")
	b.Close()

	good := st
	good.Clock, good.Node = st.Clock+2, "peer"
	out, err = s.Apply(good)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Applied, out, "a newer state of the right size is taken")
}

// TestSmallCacheDroppedOnRepair: the scrubber quarantines a blob whose
// good bytes are in the small-blob cache and whose file went bad; the
// cache entry goes with it, and the repaired blob is served right.
func TestSmallCacheDroppedOnRepair(t *testing.T) {
	s := newStore(t)
	data := content(5, 3000)
	r := put(t, s, data, blobstore.Upload{})
	id := r.State.ID
	_, got, _, err := s.ReadOrOpen(id, 1<<20)
	require.NoError(t, err)
	require.Equal(t, data, got)

	bad := append([]byte(nil), data...)
	bad[0] ^= 1
	require.NoError(t, os.WriteFile(blobPath(s.Dir(), id), bad, 0o644))
	var corrupt []dtfc.ID
	require.NoError(t, s.Scrub(t.Context(), 0, func(st dtfc.State) { corrupt = append(corrupt, st.ID) }))
	assert.Equal(t, []dtfc.ID{id}, corrupt)
	_, _, _, err = s.ReadOrOpen(id, 1<<20)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)

	// Repaired with the same bytes (but a file written anew).
	_, err = commitState(t, s, data, r.State, true)
	require.NoError(t, err)
	_, got, _, err = s.ReadOrOpen(id, 1<<20)
	require.NoError(t, err)
	assert.Equal(t, data, got)
}

// TestScrubSkipsUnreadable: a blob that cannot be opened for a reason
// that says nothing of its bytes (here: permission, for a non-root user)
// is skipped and counted, not quarantined.
func TestScrubSkipsUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file: the permission error cannot be made here")
	}
	s := newStore(t)
	r := put(t, s, content(6, 100), blobstore.Upload{})
	p := blobPath(s.Dir(), r.State.ID)
	require.NoError(t, os.Chmod(p, 0))
	t.Cleanup(func() { os.Chmod(p, 0o644) })
	require.NoError(t, s.Scrub(t.Context(), 0, func(dtfc.State) { t.Error("quarantined") }))
	assert.Equal(t, int64(1), s.ScrubProgress().Unreadable)
	assert.FileExists(t, p)
}

// TestScrubNotAPlainFile: a directory where a blob should be is as bad as
// wrong bytes.
func TestScrubNotAPlainFile(t *testing.T) {
	s := newStore(t)
	r := put(t, s, content(7, 100), blobstore.Upload{})
	p := blobPath(s.Dir(), r.State.ID)
	require.NoError(t, os.Remove(p))
	require.NoError(t, os.Mkdir(p, 0o755))
	var corrupt int
	require.NoError(t, s.Scrub(t.Context(), 0, func(dtfc.State) { corrupt++ }))
	assert.Equal(t, 1, corrupt)
}

// TestNoMissWhileFileVisible: whenever a blob's file is visible under
// blobs/ (where a web server in front may serve it), the store answers
// for it — reads wait for the commit that follows the rename.
func TestNoMissWhileFileVisible(t *testing.T) {
	s := newStore(t)
	const n = 300
	blobs := make([][]byte, n)
	for i := range blobs {
		blobs[i] = content(1000+i, 64)
	}
	var done atomic.Bool
	var wg sync.WaitGroup
	var misses atomic.Int64
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := r; !done.Load(); k = (k + 1) % n {
				id := dtfc.Sum(blobs[k])
				if _, err := os.Lstat(blobPath(s.Dir(), id)); err != nil {
					continue
				}
				if _, err := s.Stat(id); errors.Is(err, blobstore.ErrNotFound) {
					misses.Add(1)
				}
			}
		}()
	}
	var pw sync.WaitGroup
	for w := range 4 {
		pw.Add(1)
		go func() {
			defer pw.Done()
			for i := w; i < n; i += 4 {
				put(t, s, blobs[i], blobstore.Upload{})
			}
		}()
	}
	pw.Wait()
	done.Store(true)
	wg.Wait()
	assert.Zero(t, misses.Load(), "a file visible in blobs/ was answered as missing")
}

// TestLateBlockSparesNewerUpload: a block arriving after its lift and a
// new upload (its lift not here yet) takes the bytes out of blobs/ while
// it is in force, and records its tombstone (every node derives the same
// one, at the block's clock), but sets the newer upload's bytes and state
// aside, so they come back once the lift arrives
// (TestBlockSetsAsideNewerUpload has the details).
func TestLateBlockSparesNewerUpload(t *testing.T) {
	wall := fixedWall()
	s := openStore(t, t.TempDir(), blobstore.Options{Wall: func() time.Time { return wall }})
	data := content(8, 500)
	id := dtfc.Sum(data)
	block := blobstore.Deny{ID: id, Status: 451, Clock: epoch + 10, Node: "a"}
	lift := blobstore.Deny{ID: id, Lifted: true, Clock: epoch + 20, Node: "a"}
	newer := dtfc.State{ID: id, Clock: epoch + 30, Node: "b", Size: 500}
	_, err := commitState(t, s, data, newer, true)
	require.NoError(t, err)

	ok, err := s.ApplyDeny(block)
	require.NoError(t, err)
	require.True(t, ok)
	st, err := s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, dtfc.State{ID: id, Deleted: true, Clock: block.Clock, Node: block.Node}, st,
		"the block's tombstone, as on every node, while the block is in force")
	assert.NoFileExists(t, blobPath(s.Dir(), id), "the bytes go while the block is in force")
	_, missing := s.Missing(id)
	assert.False(t, missing, "blocked: nothing to fetch back")

	ok, err = s.ApplyDeny(lift)
	require.NoError(t, err)
	require.True(t, ok)
	_, missing = s.Missing(id)
	assert.False(t, missing, "back from where the block set them aside")
	assert.FileExists(t, blobPath(s.Dir(), id))
	st, err = s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, newer, st)

	// An older upload is deleted, at the block's clock, on every node
	// alike.
	s2 := openStore(t, t.TempDir(), blobstore.Options{Wall: func() time.Time { return wall }})
	_, err = commitState(t, s2, data, dtfc.State{ID: id, Clock: epoch + 5, Node: "b", Size: 500}, true)
	require.NoError(t, err)
	_, err = s2.ApplyDeny(block)
	require.NoError(t, err)
	st, err = s2.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, dtfc.State{ID: id, Deleted: true, Clock: block.Clock, Node: block.Node}, st)
}

// TestForgottenNotImportedAgain: a tombstone (or lift) forgotten here is
// not recorded again when a peer that still holds it offers it, nor is
// an older upload of its ID taken, until the memory is pruned (a bounce
// between two nodes forgetting out of step).
func TestForgottenNotImportedAgain(t *testing.T) {
	wall := fixedWall()
	s := openStore(t, t.TempDir(), blobstore.Options{Wall: func() time.Time { return wall }})
	data := content(9, 100)
	id := dtfc.Sum(data)
	up := dtfc.State{ID: id, Clock: epoch + 1, Node: "a", Size: 100}
	tomb := dtfc.State{ID: id, Deleted: true, Clock: epoch + 2, Node: "a"}
	_, err := commitState(t, s, data, up, true)
	require.NoError(t, err)
	_, err = s.Apply(tomb)
	require.NoError(t, err)
	lift := blobstore.Deny{ID: id, Lifted: true, Clock: epoch + 3, Node: "a"}
	_, err = s.ApplyDeny(lift)
	require.NoError(t, err)
	horizon := s.Clock().Now()
	n, err := s.PurgeTombstones(horizon, forgetAll)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = s.PurgeLifts(horizon, forgetAll)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	out, err := s.Apply(tomb)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out, "the forgotten tombstone offered again")
	out, err = s.Apply(up)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out, "the deleted upload offered again")
	res, err := commitState(t, s, data, up, true)
	require.NoError(t, err)
	assert.False(t, res.Applied)
	ok, err := s.ApplyDeny(lift)
	require.NoError(t, err)
	assert.False(t, ok, "the forgotten lift offered again")
	_, err = s.Stat(id)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	changes, err := s.Changes(0, 100)
	require.NoError(t, err)
	assert.Empty(t, changes)

	// A newer upload is news.
	newer := dtfc.State{ID: id, Clock: epoch + 10, Node: "b", Size: 100}
	res, err = commitState(t, s, data, newer, true)
	require.NoError(t, err)
	assert.True(t, res.Applied)

	// Once pruned, the memory is gone.
	_, err = s.Delete(id, false)
	require.NoError(t, err)
	n, err = s.PruneForgotten(wall.Add(time.Hour))
	require.NoError(t, err)
	assert.Equal(t, 2, n)
}

// TestOldDeleteOfUnknownIDStale: once the memory of forgotten deletes
// was pruned up to a time, a delete or lift dated before it, of an ID
// without a record here, is old news: every peer has had it for longer
// than the expiry. From a peer it is ignored. From a bucket (ApplyKept:
// the relay) it is recorded, so that no older upload is taken where the
// bucket is the only source of the delete, but kept out of the change
// feed, and forgotten at the next purge with no acknowledgement to wait
// for. A bucket keeps such entries for ever; pushed on by every node
// that read them late, they came back to nodes that had forgotten them,
// and so on (the full archive soak's queues never emptied). A newer one
// is news, as is any delete of an ID with a record or with an
// unconfirmed copy, and any block.
func TestOldDeleteOfUnknownIDStale(t *testing.T) {
	wall := fixedWall().Add(time.Hour)
	dir := t.TempDir()
	s := openStore(t, dir, blobstore.Options{Wall: func() time.Time { return wall }})
	_, err := s.PruneForgotten(wall.Add(-time.Minute))
	require.NoError(t, err)
	old := dtfc.TimestampAt(wall.Add(-2 * time.Minute))
	recent := dtfc.TimestampAt(wall.Add(-30 * time.Second))

	unknown := dtfc.Sum([]byte("never held here"))
	tomb := dtfc.State{ID: unknown, Deleted: true, Clock: old, Node: "a"}
	lift := blobstore.Deny{ID: unknown, Lifted: true, Clock: old, Node: "a"}
	out, err := s.Apply(tomb)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out, "a peer's old delete of an unknown ID")
	_, err = s.Stat(unknown)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	ok, err := s.ApplyDeny(lift)
	require.NoError(t, err)
	assert.False(t, ok, "a peer's old lift of an ID with no deny entry")

	// From a bucket: remembered as forgotten now, so that an older
	// upload or block of the ID is not taken; in neither feed nor digests.
	out, err = s.ApplyKept(tomb)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out)
	_, err = s.Stat(unknown)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "a bucket's old delete was recorded")
	f, remembered := s.Forgotten(unknown)
	assert.True(t, remembered, "a bucket's old delete of an unknown ID is not remembered")
	assert.Equal(t, tomb, f)
	data := content(13, 200)
	older := dtfc.State{ID: unknown, Clock: old - 5, Node: "b", Size: 200}
	out, err = s.Apply(older)
	require.NoError(t, err)
	assert.Equal(t, blobstore.Stale, out, "an upload older than the bucket's delete")
	ok, err = s.ApplyDenyKept(lift)
	require.NoError(t, err)
	assert.False(t, ok)
	lifts, err := s.ForgottenLifts()
	require.NoError(t, err)
	assert.Len(t, lifts, 1, "a bucket's old lift of an ID with no deny entry is not remembered")
	ok, err = s.ApplyDeny(blobstore.Deny{ID: unknown, Status: 451, Clock: old - 5, Node: "b"})
	require.NoError(t, err)
	assert.False(t, ok, "a block older than the bucket's lift")
	res, err := commitState(t, s, data, dtfc.State{ID: dtfc.Sum(data), Clock: old - 5, Node: "b", Size: 200}, true)
	require.NoError(t, err)
	require.True(t, res.Applied)
	changes, err := s.Changes(0, 100)
	require.NoError(t, err)
	require.Len(t, changes, 1, "an old delete or lift entered the feed")
	assert.Equal(t, dtfc.Sum(data), changes[0].State.ID)
	digests, err := s.Digests()
	require.NoError(t, err)
	var entries uint64
	for _, d := range digests {
		entries += d.Count
	}
	assert.EqualValues(t, 1, entries, "an old delete counted in the digests")

	fresh := dtfc.Sum([]byte("deleted lately"))
	assert.Equal(t, 2, appliedFeedLen(t, s, dtfc.State{ID: fresh, Deleted: true, Clock: recent, Node: "a"}), "a delete within the expiry is news, pushed on")
	blocked := dtfc.Sum([]byte("blocked long ago"))
	ok, err = s.ApplyDeny(blobstore.Deny{ID: blocked, Status: 451, Clock: old, Node: "a"})
	require.NoError(t, err)
	assert.True(t, ok)
	changes, err = s.Changes(0, 100)
	require.NoError(t, err)
	assert.Len(t, changes, 3, "a block is never forgotten, however old: pushed on")

	data = content(11, 300)
	held := dtfc.Sum(data)
	_, err = commitState(t, s, data, dtfc.State{ID: held, Clock: old - 10, Node: "a", Size: 300}, true)
	require.NoError(t, err)
	assert.Equal(t, 4, appliedFeedLen(t, s, dtfc.State{ID: held, Deleted: true, Clock: old, Node: "a"}), "an old delete of an ID recorded here is pushed on")

	// The memory pruned with the clock back: the horizon follows it down.
	_, err = s.PruneForgotten(wall.Add(-5 * time.Minute))
	require.NoError(t, err)
	other := dtfc.Sum([]byte("another"))
	assert.Equal(t, 5, appliedFeedLen(t, s, dtfc.State{ID: other, Deleted: true, Clock: old, Node: "a"}), "the horizon stayed where a clock ahead had set it")
}

// appliedFeedLen applies st, which must be applied, and returns the
// length of the change feed then.
func appliedFeedLen(t *testing.T, s *blobstore.Store, st dtfc.State) int {
	t.Helper()
	out, err := s.Apply(st)
	require.NoError(t, err)
	require.Equal(t, blobstore.Applied, out)
	changes, err := s.Changes(0, 100)
	require.NoError(t, err)
	return len(changes)
}

// TestOldDeleteTakesUnconfirmedCopy: the stale rule above never leaves
// an unconfirmed copy (a metadata rebuild's) of a deleted ID behind, to
// be taken later for an upload nobody knew.
func TestOldDeleteTakesUnconfirmedCopy(t *testing.T) {
	wall := fixedWall().Add(time.Hour)
	dir := t.TempDir()
	data := content(12, 400)
	id := dtfc.Sum(data)
	h := id.String()
	p := filepath.Join(dir, "blobs", h[:2], h[2:4], h)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, data, 0o644))
	_, err := blobstore.Rebuild(dir, blobstore.RebuildOptions{})
	require.NoError(t, err)
	s := openStore(t, dir, blobstore.Options{Wall: func() time.Time { return wall }})
	require.Equal(t, int64(1), s.UnconfirmedCount())
	_, err = s.PruneForgotten(wall.Add(-time.Minute))
	require.NoError(t, err)

	out, err := s.Apply(dtfc.State{ID: id, Deleted: true, Clock: dtfc.TimestampAt(wall.Add(-2 * time.Minute)), Node: "a"})
	require.NoError(t, err)
	assert.Equal(t, blobstore.Applied, out)
	assert.Zero(t, s.UnconfirmedCount(), "the unconfirmed copy outlived the delete")
}

// TestLateCopyWhileTombstoneForgotten: an older copy of a deleted
// upload (a push or a pull of it, whose bytes arrived) is committed while
// the ID's tombstone is being forgotten. The memory of forgotten deletes
// is to keep such a late copy out (forgotten.go: "It also keeps a late
// copy of the deleted upload out"; TestForgottenNotImportedAgain), and
// Apply reads it under the ID's lock. sealState (writer.go) reads it
// before the lock is taken: the commit of a batch of pushed blobs reads
// it for every item first, then takes the items' locks in ID order. If
// the tombstone is forgotten in between (here: the batch waits for the
// lock of another of its IDs, which a purge holds), the commit finds no
// record and a forgotten clock of 0, and records the deleted upload
// again: a resurrected delete, in the change feed, pushed on.
func TestLateCopyWhileTombstoneForgotten(t *testing.T) {
	wall := fixedWall()
	s := openStore(t, t.TempDir(), blobstore.Options{Wall: func() time.Time { return wall }})

	// Two blobs, A before X in ID order (a batch locks them so).
	var a, x []byte
	for seed := 100; ; seed += 2 {
		a, x = content(seed, 1000), content(seed+1, 1000)
		ida, idx := dtfc.Sum(a), dtfc.Sum(x)
		if bytes.Compare(ida[:], idx[:]) < 0 {
			break
		}
	}
	idA, idX := dtfc.Sum(a), dtfc.Sum(x)
	upA := dtfc.State{ID: idA, Clock: epoch + 1, Node: "a", Size: int64(len(a))}
	upX := dtfc.State{ID: idX, Clock: epoch + 1, Node: "a", Size: int64(len(x))}
	tombX := dtfc.State{ID: idX, Deleted: true, Clock: epoch + 2, Node: "a"}
	tombA := dtfc.State{ID: idA, Deleted: true, Clock: epoch + 3, Node: "a"}
	for _, c := range []struct {
		data []byte
		up   dtfc.State
		tomb dtfc.State
	}{{a, upA, tombA}, {x, upX, tombX}} {
		_, err := commitState(t, s, c.data, c.up, true)
		require.NoError(t, err)
		out, err := s.Apply(c.tomb)
		require.NoError(t, err)
		require.Equal(t, blobstore.Applied, out)
	}
	horizon := s.Clock().Now()

	// A purge that holds A's lock (its forget decides slowly: in dtfc it
	// may write, to mark a peer expired) and keeps both tombstones.
	holdingA, releaseA := make(chan struct{}), make(chan struct{})
	purge1 := make(chan error, 1)
	go func() {
		_, err := s.PurgeTombstones(horizon, func(_ uint64, c dtfc.Timestamp) bool {
			if c == tombA.Clock {
				close(holdingA)
				<-releaseA
			}
			return false
		})
		purge1 <- err
	}()
	waitClosed(t, holdingA, "the purge holding A's lock")

	// A batch of late copies arrives: X's old upload, and A's.
	items := make([]blobstore.BatchItem, 0, 2)
	for _, c := range []struct {
		data []byte
		st   dtfc.State
	}{{x, upX}, {a, upA}} {
		w, err := s.NewWriter(blobstore.WriterOptions{})
		require.NoError(t, err)
		defer w.Close()
		_, err = w.Write(c.data)
		require.NoError(t, err)
		items = append(items, blobstore.BatchItem{Writer: w, State: c.st})
	}
	batch := make(chan []blobstore.BatchResult, 1)
	go func() { batch <- s.CommitBatch(items) }()
	// Both items sealed (each temp file made 0644 by its seal; X's, with
	// its read of the forgotten clock, comes first): the batch now waits
	// for A's lock.
	tmp := filepath.Join(s.Dir(), "tmp")
	require.Eventually(t, func() bool {
		files := filesUnder(t, tmp)
		if len(files) != 2 {
			return false
		}
		for _, f := range files {
			fi, err := os.Stat(filepath.Join(tmp, f))
			if err != nil || fi.Mode().Perm() != 0o644 {
				return false
			}
		}
		return true
	}, deadline, time.Millisecond)

	// Meanwhile X's tombstone, acknowledged by every peer, is forgotten.
	purge2 := make(chan error, 1)
	go func() {
		_, err := s.PurgeTombstones(horizon, func(_ uint64, c dtfc.Timestamp) bool { return c == tombX.Clock })
		purge2 <- err
	}()
	require.Eventually(t, func() bool {
		_, ok := s.Forgotten(idX)
		return ok
	}, deadline, time.Millisecond)
	close(releaseA)

	var res []blobstore.BatchResult
	select {
	case res = <-batch:
	case <-time.After(deadline):
		t.Fatal("the batch did not end")
	}
	require.NoError(t, <-purge1)
	require.NoError(t, <-purge2)
	require.NoError(t, res[0].Err)
	assert.False(t, res[0].Applied, "the deleted upload of X, older than its forgotten delete, was recorded again")
	st, err := s.Stat(idX)
	if err == nil {
		t.Errorf("X, deleted (clock %s) and its delete forgotten, is live again under its older upload (clock %s, deleted %v)",
			tombX.Clock, st.Clock, st.Deleted)
	} else {
		assert.ErrorIs(t, err, blobstore.ErrNotFound)
	}
}
