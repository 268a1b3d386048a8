package blobstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// Crash recovery in time proportional to what was in flight, not to the
// collection. Every change to blobs/ that a crash can cut leaves a trace
// naming its ID before it starts, so that an unclean start checks those
// IDs only (reconcileIntents) instead of walking every file:
//
//   - A file leaving blobs/ (a delete, a block, an eviction, a forgotten
//     or set-aside blob) follows the commit that made its record a
//     tombstone or removed it. That commit also records an intent
//     (bucketIntents: ID → a sequence number), at no extra fsync.
//   - A file entering blobs/ precedes the commit of its record. An
//     upload's temp file is first renamed tmp/<id>.<name> and then linked
//     (not renamed) into blobs/, and is unlinked only after the commit:
//     tmp/ names every placement in flight. (A file system that kept the
//     link but lost the rename leaves a temp file with two links: it is
//     hashed to learn its ID.) An unconfirmed blob moved back into blobs/
//     keeps its unconfirmed entry until the commit: those entries name
//     the rest.
//
// Intents whose change is done are dropped in the background
// (sweepIntents) and all at a clean Close. The clean flag tells which
// start a store needs: "1" clean, "i" unclean with intents kept (this
// dtfc), anything else unclean from a dtfc that kept none (a full walk).

// bucketIntents maps the ID of a file about to leave blobs/ to the
// sequence number of that intent.
var bucketIntents = []byte("intents")

// The values of keyClean.
const (
	markClean   = "1"
	markIntents = "i"
)

// intend records, in the transaction that makes id's record dead, that
// its file (if any) leaves blobs/ after the commit.
func (t *txn) intend(id dtfc.ID) error {
	b := t.tx.Bucket(bucketIntents)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	return b.Put(id[:], u64(seq))
}

// placingName is the name in tmp/ of temp file tmp about to be linked
// into blobs/ as id.
func placingName(tmpDir string, id dtfc.ID, tmp string) string {
	return filepath.Join(tmpDir, id.String()+"."+filepath.Base(tmp))
}

// placingID returns the ID a temp file names, or that it holds if it has
// another link (see above).
func placingID(path string, d fs.DirEntry, buf []byte) (dtfc.ID, bool, error) {
	if i := strings.IndexByte(d.Name(), '.'); i > 0 {
		if id, err := dtfc.ParseID(d.Name()[:i]); err == nil {
			return id, true, nil
		}
	}
	fi, err := d.Info()
	if err != nil || !fi.Mode().IsRegular() || links(fi) < 2 {
		return dtfc.ID{}, false, nil
	}
	id, _, _, err := hashFile(path, buf)
	return id, err == nil, err
}

// inFlight returns the IDs an unclean stop may have left half-changed in
// blobs/: the intents, the unconfirmed entries, and the placements tmp/
// names. It runs before the temp files are swept.
func (s *Store) inFlight(buf []byte) (map[dtfc.ID]bool, error) {
	ids := map[dtfc.ID]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketIntents, bucketUnconfirmed} {
			err := tx.Bucket(b).ForEach(func(k, _ []byte) error {
				var id dtfc.ID
				if len(k) == len(id) {
					copy(id[:], k)
					ids[id] = true
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		id, ok, err := placingID(filepath.Join(s.tmpDir, e.Name()), e, buf)
		if err != nil {
			return nil, err
		}
		if ok {
			ids[id] = true
		}
	}
	return ids, nil
}

// reconcileIntents is reconcile for a store whose last process kept
// intents: only the IDs in flight are checked (each as reconcile would),
// and unconfirmed/ (which holds few files but after a rebuild) is
// walked. ids was gathered before the temp files were swept.
func (s *Store) reconcileIntents(ids map[dtfc.ID]bool) error {
	start := time.Now()
	r := &reconciler{s: s, buf: make([]byte, 1<<20)}
	for id := range ids {
		path := s.Path(id)
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("blobstore: reconcile after unclean shutdown: %w", err)
		}
		if err := r.blobFile(path, fs.FileInfoToDirEntry(fi)); err != nil {
			return fmt.Errorf("blobstore: reconcile after unclean shutdown: %w", err)
		}
	}
	if err := r.unconfirmedDir(); err != nil {
		return fmt.Errorf("blobstore: reconcile after unclean shutdown: %w", err)
	}
	if err := s.clearIntents(); err != nil {
		return err
	}
	s.log.Info("checked the blob files in flight at an unclean shutdown", "in_flight", len(ids), "removed", r.removed,
		"unconfirmed", r.setAside, "quarantined", r.quarantined, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// clearIntents drops every intent: none is in flight.
func (s *Store) clearIntents() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketIntents); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
		_, err := tx.CreateBucket(bucketIntents)
		return err
	})
	if err != nil {
		return fmt.Errorf("blobstore: clear intents: %w", err)
	}
	return nil
}

// intentsEvery is how often sweepIntents runs.
const intentsEvery = 2 * time.Second

// intentsLoop drops fulfilled intents until the store closes.
func (s *Store) intentsLoop() {
	defer close(s.intentsDone)
	t := time.NewTicker(intentsEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if err := s.sweepIntents(); err != nil && !errors.Is(err, ErrClosed) {
				s.log.Warn("dropping fulfilled intents (retried)", "err", err)
			}
		}
	}
}

// sweepIntents drops the intents whose change is done: checked under the
// ID's lock, the record is live or no file is left in blobs/. A file
// still there under a dead record (its removal failed after the commit:
// a transient fault) is removed now. Left there, nothing else removed
// it: a delete pushed again is stale, a clean Close dropped the intent,
// and every later placement of the same bytes failed to link into its
// path (TestFailedUnlinkOfAppliedDelete). One whose removal fails again
// stays, for the next sweep or the next start. An intent recorded again
// meanwhile (a new sequence number) is kept.
func (s *Store) sweepIntents() error {
	leave, err := s.enter()
	if err != nil {
		return err
	}
	defer leave()
	type intent struct {
		id  dtfc.ID
		seq uint64
	}
	var todo []intent
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketIntents).Cursor()
		for k, v := c.First(); k != nil && len(todo) < 4096; k, v = c.Next() {
			var it intent
			if len(k) != len(it.id) || len(v) != 8 {
				continue
			}
			copy(it.id[:], k)
			it.seq = decU64(v)
			todo = append(todo, it)
		}
		return nil
	})
	if err != nil || len(todo) == 0 {
		return err
	}
	done := todo[:0]
	r := &reconciler{s: s}
	defer func() {
		if r.setAside > 0 {
			s.unconfirmedNews.Notify() // for the cluster to decide
		}
	}()
	for _, it := range todo {
		unlock := s.locks.lock(it.id)
		rec, ok, err := s.record(it.id)
		live := ok && !rec.Deleted && !rec.Evicted
		if err == nil && !live {
			if ferr := r.finish(it.id); ferr != nil {
				s.log.Warn("a dead blob's file is still in blobs/; finishing its removal failed again", "id", it.id.String(), "err", ferr)
			}
		}
		settled := err == nil && (live || !s.fileExists(it.id))
		unlock()
		if settled {
			done = append(done, it)
		}
	}
	if len(done) == 0 {
		return nil // no commit (and its fsync) for nothing
	}
	return s.update(func(t *txn) error {
		b := t.tx.Bucket(bucketIntents)
		for _, it := range done {
			if v := b.Get(it.id[:]); len(v) == 8 && decU64(v) == it.seq {
				if err := b.Delete(it.id[:]); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// finish does what an unclean start does with id's file, if one is in
// blobs/ (reconciler.blobFile): under a dead record, removed, or moved to
// unconfirmed/ where a block's set-aside says it belongs; without a
// record, verified and set aside, never deleted. The caller holds id's
// lock, or nothing is in flight.
func (r *reconciler) finish(id dtfc.ID) error {
	path := r.s.Path(id)
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if r.buf == nil {
		r.buf = make([]byte, 1<<20)
	}
	return r.blobFile(path, fs.FileInfoToDirEntry(fi))
}

// unfinishedIntents, for Close (nothing in flight, no lock needed),
// finishes the change of each intent whose record is dead and whose file
// is still in blobs/ (reconciler.finish), and returns the IDs whose file
// is still there after that: their intents must outlive the close.
func (s *Store) unfinishedIntents() ([]dtfc.ID, error) {
	var ids []dtfc.ID
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIntents).ForEach(func(k, _ []byte) error {
			var id dtfc.ID
			if len(k) == len(id) {
				copy(id[:], k)
				ids = append(ids, id)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	var keep []dtfc.ID
	r := &reconciler{s: s}
	for _, id := range ids {
		rec, ok, err := s.record(id)
		if err != nil {
			return nil, err
		}
		if (ok && !rec.Deleted && !rec.Evicted) || !s.fileExists(id) {
			continue
		}
		if err := r.finish(id); err != nil || s.fileExists(id) {
			s.log.Warn("a dead blob's file is still in blobs/; finishing its removal failed again, left for the next start", "id", id.String(), "err", err)
			keep = append(keep, id)
		}
	}
	return keep, nil
}
