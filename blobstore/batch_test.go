package blobstore

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// batchWall is the fixed wall clock of the batch tests' stores, so that
// two stores given the same operations end with the same records and
// refuse the same clocks with the same words.
var batchWall = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

var batchEpoch = dtfc.TimestampAt(batchWall.Add(-time.Hour))

// syncModes are the two ways a batch makes its files durable: one
// syncfs (where the kernel offers one that reports errors) and the
// portable fsync of each file and directory.
func syncModes(t *testing.T) map[string]bool {
	modes := map[string]bool{"fsync": false}
	if canSyncFS() {
		modes["syncfs"] = true
	} else {
		t.Log("no syncfs here: only the portable mode is tested")
	}
	return modes
}

func openBatchStore(t *testing.T, syncfs bool) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), Options{Wall: func() time.Time { return batchWall }, MaxClockOffset: time.Minute})
	require.NoError(t, err)
	s.syncfs = syncfs
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// batchCase is one blob of a batch: the bytes sent and the state sent
// with them.
type batchCase struct {
	name string
	data []byte
	st   dtfc.State
}

// writers fills a Writer with each case's bytes.
func writers(t *testing.T, s *Store, cases []batchCase) []BatchItem {
	t.Helper()
	items := make([]BatchItem, len(cases))
	for i, c := range cases {
		w, err := s.NewWriter(WriterOptions{})
		require.NoError(t, err)
		t.Cleanup(func() { w.Close() })
		_, err = w.Write(c.data)
		require.NoError(t, err)
		items[i] = BatchItem{Writer: w, State: c.st}
	}
	return items
}

func closeAll(items []BatchItem) {
	for _, it := range items {
		it.Writer.Close()
	}
}

// remoteState is an upload of data by node "peer" at clock c.
func remoteState(data []byte, c dtfc.Timestamp) dtfc.State {
	return dtfc.State{ID: dtfc.Sum(data), Clock: c, Node: "peer", Size: int64(len(data)), ContentType: "application/octet-stream", Filename: "f.bin"}
}

// commitOne commits data under st with CommitState, as a single push
// does.
func commitOne(t *testing.T, s *Store, data []byte, st dtfc.State) {
	t.Helper()
	w, err := s.NewWriter(WriterOptions{})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	_, err = w.CommitState(st, true)
	require.NoError(t, err)
}

// batchScenario prepares s (identically on every store it is given) and
// returns a batch covering every outcome CommitState can have.
func batchScenario(t *testing.T, s *Store) []batchCase {
	t.Helper()
	var cases []batchCase
	add := func(name string, data []byte, st dtfc.State) {
		cases = append(cases, batchCase{name, data, st})
	}

	fresh := blobBytes(1, 1024)
	add("new blob", fresh, remoteState(fresh, batchEpoch+10))

	corrupt := blobBytes(2, 1024)
	bad := append([]byte(nil), corrupt...)
	bad[100] ^= 0xff
	add("bytes corrupted in transit", bad, remoteState(corrupt, batchEpoch+10))

	// Older than the tombstone recorded here.
	dead := blobBytes(3, 700)
	_, err := s.Apply(dtfc.State{ID: dtfc.Sum(dead), Deleted: true, Clock: batchEpoch + 20, Node: "peer"})
	require.NoError(t, err)
	add("older than a delete", dead, remoteState(dead, batchEpoch+10))

	// Older than the upload held here.
	held := blobBytes(4, 500)
	commitOne(t, s, held, remoteState(held, batchEpoch+20))
	add("older than the upload held", held, remoteState(held, batchEpoch+10))

	// Newer than the upload held here: the record changes, not the file.
	again := blobBytes(5, 900)
	commitOne(t, s, again, remoteState(again, batchEpoch+10))
	add("newer upload of bytes held", again, remoteState(again, batchEpoch+30))

	// The same upload as recorded, its file lost: placed again.
	lost := blobBytes(6, 800)
	commitOne(t, s, lost, remoteState(lost, batchEpoch+10))
	require.NoError(t, os.Remove(s.Path(dtfc.Sum(lost))))
	add("the record's lost file", lost, remoteState(lost, batchEpoch+10))

	ahead := blobBytes(7, 600)
	add("clock too far ahead", ahead, remoteState(ahead, dtfc.TimestampAt(batchWall.Add(time.Hour))))

	blocked := blobBytes(8, 400)
	_, err = s.ApplyDeny(Deny{ID: dtfc.Sum(blocked), Status: 451, Clock: batchEpoch + 5, Node: "peer"})
	require.NoError(t, err)
	add("blocked ID", blocked, remoteState(blocked, batchEpoch+10))

	short := blobBytes(9, 300)
	st := remoteState(short, batchEpoch+10)
	st.Size = 301
	add("size other than the state's", short, st)

	// Deleted, and the delete forgotten here lately.
	forgot := blobBytes(10, 200)
	require.NoError(t, s.update(func(t *txn) error { return t.remember('S', dtfc.Sum(forgot), batchEpoch+20, "peer") }))
	add("older than a forgotten delete", forgot, remoteState(forgot, batchEpoch+10))

	tomb := blobBytes(11, 100)
	add("a tombstone", tomb, dtfc.State{ID: dtfc.Sum(tomb), Deleted: true, Clock: batchEpoch + 10, Node: "peer"})

	// One ID twice: the second after the first, as two CommitStates.
	twice := blobBytes(12, 1000)
	add("an ID, first", twice, remoteState(twice, batchEpoch+10))
	add("the same ID, newer", twice, remoteState(twice, batchEpoch+40))
	add("the same ID, older", twice, remoteState(twice, batchEpoch+5))

	more := blobBytes(13, 64<<10)
	add("another new blob", more, remoteState(more, batchEpoch+10))
	return cases
}

// TestCommitBatchAsCommitState: for every outcome (new, corrupt, stale,
// held, repaired, clock ahead, blocked, wrong size, forgotten, a
// tombstone, one ID twice), CommitBatch gives each item what CommitState
// gives it, and leaves the store as calls of CommitState one after the
// other do: the same records, files, feed, digests and counts, and no
// temp file. Both ways of syncing.
func TestCommitBatchAsCommitState(t *testing.T) {
	for mode, syncfs := range syncModes(t) {
		t.Run(mode, func(t *testing.T) {
			one, batch := openBatchStore(t, true), openBatchStore(t, syncfs)
			cases := batchScenario(t, one)
			require.Equal(t, cases, batchScenario(t, batch), "the same scenario on both stores")
			seq1, seqB := one.LastSeq(), batch.LastSeq()

			want := make([]BatchResult, len(cases))
			for i, c := range cases {
				items := writers(t, one, cases[i:i+1])
				want[i].Result, want[i].Err = items[0].Writer.CommitState(c.st, true)
				closeAll(items)
			}
			items := writers(t, batch, cases)
			got := batch.CommitBatch(items)
			closeAll(items)

			require.Len(t, got, len(cases))
			for i, c := range cases {
				w, g := want[i], got[i]
				if w.Err != nil {
					if assert.Error(t, g.Err, c.name) {
						assert.Equal(t, w.Err.Error(), g.Err.Error(), c.name)
					}
				} else {
					assert.NoError(t, g.Err, c.name)
				}
				assert.Equal(t, w.State, g.State, c.name)
				assert.Equal(t, w.Applied, g.Applied, c.name)
				assert.Equal(t, w.Created, g.Created, c.name)
				assert.Equal(t, w.Seq != 0, g.Seq != 0, c.name)
			}
			assert.ErrorIs(t, got[1].Err, ErrDigestMismatch)
			assert.ErrorIs(t, got[6].Err, ErrClockAhead)
			var denied *DeniedError
			assert.ErrorAs(t, got[7].Err, &denied)

			for _, c := range cases {
				id := c.st.ID
				st1, err1 := one.Stat(id)
				stB, errB := batch.Stat(id)
				assert.Equal(t, err1, errB, c.name)
				assert.Equal(t, st1, stB, c.name)
				assert.Equal(t, one.fileExists(id), batch.fileExists(id), c.name)
				if batch.fileExists(id) {
					b, err := os.ReadFile(batch.Path(id))
					require.NoError(t, err)
					assert.Equal(t, id, dtfc.Sum(b), "%s: only verified bytes in blobs/", c.name)
					fi, err := os.Stat(batch.Path(id))
					require.NoError(t, err)
					assert.Equal(t, fs.FileMode(0o644), fi.Mode().Perm(), c.name)
				}
			}
			assert.Equal(t, feedIDs(t, one, seq1), feedIDs(t, batch, seqB), "the same changes in the feed")
			d1, err := one.Digests()
			require.NoError(t, err)
			dB, err := batch.Digests()
			require.NoError(t, err)
			assert.Equal(t, d1, dB)
			b1, n1 := one.Stats()
			bB, nB := batch.Stats()
			assert.Equal(t, [2]int64{b1, n1}, [2]int64{bB, nB})
			tmp, err := os.ReadDir(batch.tmpDir)
			require.NoError(t, err)
			assert.Empty(t, tmp, "no temp file left, committed or not")
		})
	}
}

// feedIDs returns the IDs of the feed's changes after seq, whatever
// their order.
func feedIDs(t *testing.T, s *Store, seq uint64) map[dtfc.ID]dtfc.State {
	t.Helper()
	changes, err := s.Changes(seq, 1000)
	require.NoError(t, err)
	m := map[dtfc.ID]dtfc.State{}
	for _, ch := range changes {
		m[ch.State.ID] = ch.State
	}
	return m
}

// TestCommitBatchLands: a batch of new blobs, one corrupted, lands all
// but the corrupted one, each readable, counted and in the feed, in
// shard directories made for them; the corrupted one leaves no file.
func TestCommitBatchLands(t *testing.T) {
	for mode, syncfs := range syncModes(t) {
		t.Run(mode, func(t *testing.T) {
			s := openBatchStore(t, syncfs)
			var cases []batchCase
			for i := range 40 {
				data := blobBytes(100+i, 4+i*97)
				cases = append(cases, batchCase{data: data, st: remoteState(data, batchEpoch+dtfc.Timestamp(i))})
			}
			cases[17].data = append([]byte(nil), cases[17].data...)
			cases[17].data[0] ^= 1
			items := writers(t, s, cases)
			res := s.CommitBatch(items)
			closeAll(items)
			var size int64
			for i, c := range cases {
				if i == 17 {
					assert.ErrorIs(t, res[i].Err, ErrDigestMismatch)
					assert.False(t, s.fileExists(c.st.ID), "a corrupted blob is never stored")
					_, err := s.Stat(c.st.ID)
					assert.ErrorIs(t, err, ErrNotFound)
					continue
				}
				require.NoError(t, res[i].Err)
				assert.True(t, res[i].Applied && res[i].Created)
				assert.NotZero(t, res[i].Seq)
				b, err := s.Open(c.st.ID)
				require.NoError(t, err)
				got, err := io.ReadAll(b)
				b.Close()
				require.NoError(t, err)
				assert.Equal(t, c.data, got)
				size += c.st.Size
			}
			blobs, bytes := s.Stats()
			assert.Equal(t, int64(39), blobs)
			assert.Equal(t, size, bytes)
			assert.Len(t, feedIDs(t, s, 0), 39)
			tmp, err := os.ReadDir(s.tmpDir)
			require.NoError(t, err)
			assert.Empty(t, tmp)
		})
	}
}

// TestCommitBatchClosed: a batch on a closed store stores nothing and
// says so for each item.
func TestCommitBatchClosed(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	data := blobBytes(1, 100)
	items := writers(t, s, []batchCase{{data: data, st: remoteState(data, dtfc.TimestampAt(time.Now()))}})
	require.NoError(t, s.Close())
	res := s.CommitBatch(items)
	closeAll(items)
	assert.ErrorIs(t, res[0].Err, ErrClosed)
	assert.False(t, s.fileExists(dtfc.Sum(data)))
}

// TestCommitBatchCrashBeforeCommit: a kill -9 after a batch linked its
// files into blobs/ and before their records were committed (the
// committer held up) leaves a store whose next start finds them through
// their intents in tmp/, as it finds place's, and sets them aside as
// unconfirmed: none stays in blobs/ without a record, and tmp/ is
// emptied. The batch itself, let go, commits them all.
func TestCommitBatchCrashBeforeCommit(t *testing.T) {
	for mode, syncfs := range syncModes(t) {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{})
			require.NoError(t, err)
			s.syncfs = syncfs
			defer s.Close()
			var cases []batchCase
			for i := range 8 {
				data := blobBytes(200+i, 2000)
				cases = append(cases, batchCase{data: data, st: remoteState(data, dtfc.TimestampAt(time.Now()))})
			}

			// The committer runs a transaction that waits: whatever is
			// queued meanwhile is not committed.
			entered, release := make(chan struct{}), make(chan struct{})
			held := make(chan error, 1)
			go func() {
				held <- s.update(func(*txn) error {
					close(entered)
					<-release
					return nil
				})
			}()
			<-entered
			items := writers(t, s, cases)
			done := make(chan []BatchResult, 1)
			go func() { done <- s.CommitBatch(items) }()
			linked := func() bool {
				for _, c := range cases {
					if !s.fileExists(c.st.ID) {
						return false
					}
				}
				return true
			}
			deadline := time.Now().Add(10 * time.Second)
			for !linked() {
				require.True(t, time.Now().Before(deadline), "the batch never linked its files")
				time.Sleep(time.Millisecond)
			}
			// What a kill -9 now leaves on disk.
			crashed := filepath.Join(t.TempDir(), "crashed")
			copyTree(t, dir, crashed)
			close(release)
			require.NoError(t, <-held)
			res := <-done
			closeAll(items)
			for i, c := range cases {
				require.NoError(t, res[i].Err, c.name)
				assert.True(t, res[i].Applied)
			}

			s2, err := Open(crashed, Options{})
			require.NoError(t, err)
			defer s2.Close()
			for _, c := range cases {
				id := c.st.ID
				assert.False(t, s2.fileExists(id), "an unrecorded blob left blobs/")
				_, err := s2.Stat(id)
				assert.ErrorIs(t, err, ErrNotFound, "never committed")
				_, ok, err := s2.unconfirmedEntry(id)
				require.NoError(t, err)
				assert.True(t, ok, "set aside as unconfirmed, as a cut placement is")
			}
			tmp, err := os.ReadDir(s2.tmpDir)
			require.NoError(t, err)
			assert.Empty(t, tmp, "tmp/ swept")
		})
	}
}

// copyTree copies the files and directories under src to dst (hard
// links become copies, as on another disk).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(to, fi.Mode().Perm())
		}
		if !d.Type().IsRegular() {
			return errors.New("unexpected file type at " + path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, fi.Mode().Perm())
	})
	require.NoError(t, err)
}

// BenchmarkCommitBatch compares the two ways a replica takes 256 small
// blobs (1 KiB) pushed to it: one CommitState each, 16 at once (single
// PUTs), and CommitBatch, four batches of 64 at once (a pusher's
// batches). Each iteration writes 256 new blobs; blobs/s is the figure.
// Every store is removed only at the end: on ext4 without a journal,
// creating a file right after many were removed (within 60-360 s) costs
// up to 20 times more (the inode allocator skips the recently freed
// inodes one by one), which would make each run pay for the last.
func BenchmarkCommitBatch(b *testing.B) {
	const n, size = 256, 1 << 10
	root := b.TempDir()
	for _, way := range []struct {
		name   string
		atOnce int
		commit func(b *testing.B, s *Store, items []BatchItem)
	}{
		{"CommitState", 16, func(b *testing.B, s *Store, items []BatchItem) {
			for _, it := range items {
				if _, err := it.Writer.CommitState(it.State, true); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"CommitBatch", 4, func(b *testing.B, s *Store, items []BatchItem) {
			for _, r := range s.CommitBatch(items) {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		}},
	} {
		b.Run(way.name, func(b *testing.B) {
			dir, err := os.MkdirTemp(root, "store-")
			require.NoError(b, err)
			s, err := Open(dir, Options{})
			require.NoError(b, err)
			defer s.Close()
			seed := 0
			now := dtfc.TimestampAt(time.Now())
			start := time.Now()
			for b.Loop() {
				var wg sync.WaitGroup
				per := n / way.atOnce
				for range way.atOnce {
					items := make([]BatchItem, per)
					for j := range items {
						seed++
						data := blobBytes(seed, size)
						w, err := s.NewWriter(WriterOptions{})
						require.NoError(b, err)
						_, err = w.Write(data)
						require.NoError(b, err)
						items[j] = BatchItem{Writer: w, State: remoteState(data, now)}
					}
					wg.Go(func() {
						way.commit(b, s, items)
						closeAll(items)
					})
				}
				wg.Wait()
			}
			b.ReportMetric(float64(seed)/time.Since(start).Seconds(), "blobs/s")
		})
	}
}

// TestCommitBatchReplacesCorruptHeldFile: a newer state of bytes held
// already, committed in a batch (pushed), replaces a held file rotted on
// disk with the verified bytes, as place does
// (TestReuploadReplacesCorruptHeldFile).
func TestCommitBatchReplacesCorruptHeldFile(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	defer s.Close()
	data := blobBytes(3, 100<<10)
	id := putBytes(t, s, data, Upload{}).State.ID
	rotten := bytes.Clone(data)
	rotten[len(rotten)/2] ^= 0xff
	require.NoError(t, os.Chmod(s.Path(id), 0o644))
	require.NoError(t, os.WriteFile(s.Path(id), rotten, 0o644))

	items := writers(t, s, []batchCase{{data: data, st: remoteState(data, dtfc.TimestampAt(time.Now().Add(time.Second)))}})
	res := s.CommitBatch(items)
	closeAll(items)
	require.NoError(t, res[0].Err)
	got, err := os.ReadFile(s.Path(id))
	require.NoError(t, err)
	assert.Equal(t, id, dtfc.Sum(got), "the held file after the batch")
}
