package blobstore

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/dtfc/dtfc"
)

// Many small blobs from peers, committed together (CommitBatch).
//
// place makes one blob durable with an fdatasync of its file, an fsync
// of its shard directory (on a young store also of a new directory's
// parent) and its share of a metadata commit: a replica catching up on
// small files is bound by those syncs, not by its disk's bandwidth
// (BenchmarkCatchUp in package peer: 550-1,010 files/s of 1 KiB). A
// batch keeps place's order of durable steps, but takes each step for
// all of its blobs at once:
//
//  1. each blob's bytes are checked against its ID (a mismatch fails
//     that blob only) and, under the locks of all the IDs, what each
//     state means for its ID's record is decided;
//  2. each blob to place is named by its intent, tmp/<id>.<name>
//     (intent.go), then one sync makes all of their bytes and names
//     durable;
//  3. each is linked into blobs/ (new shard directories made), then one
//     sync makes the links and directories durable;
//  4. one metadata transaction records all of their states;
//  5. the intents are removed, and the caller answers.
//
// The bytes are durable before any link to them exists (step 2 before
// 3): ext4 without a journal orders nothing, and a directory entry
// written back before the data it names would leave an incomplete file
// in blobs/ after a crash. A crash before step 4 leaves files in blobs/
// that no record accounts for, each named by its intent in tmp/: the
// next Open sets them aside as unconfirmed, as it does place's. A record
// is committed only once its file is durable in blobs/, and the answer
// (on which a pusher moves its cursor) comes only after the commit.
//
// A sync is one syncfs(2) of the store's file system where it reports
// errors (canSyncFS); the write-back error of each blob's own bytes,
// which the kernel may have tried to write earlier, is then read from its
// file (writebackErr), so that a lost write fails that blob. Elsewhere it
// is what place does, each directory once: an fdatasync of each file
// (step 2), an fsync of each new shard directory's parent and of each
// shard directory linked into (step 3).
//
// A syncfs also waits for whatever else is dirty on that file system:
// another upload's bytes not yet fsync'd (a large upload starts their
// write-back every 8 MiB, so they stay few), and any other program's
// writes there. A batch on a disk shared with a busy writer takes that
// writer's time; the basedir is best on a file system of its own.

// BatchItem is one blob of CommitBatch: a Writer holding its bytes, not
// committed, and the state a peer sent with them.
type BatchItem struct {
	Writer *Writer
	State  dtfc.State
}

// BatchResult is what CommitBatch did with one item: what
// item.Writer.CommitState(item.State, true) would have returned.
type BatchResult struct {
	Result
	Err error
}

// CommitBatch commits each item's bytes under its state, as
// Writer.CommitState(item.State, true) would, with the syncs shared (see
// above). Each item has its own result: a failed one (bytes that do not
// hash to the ID, a clock too far ahead, a blocked ID, a failed link)
// stores nothing, and the others are committed all the same. The caller
// closes each Writer afterwards, which removes a temp file not
// committed.
func (s *Store) CommitBatch(items []BatchItem) []BatchResult {
	res := make([]BatchResult, len(items))
	// An ID twice in the batch: the later items are committed after the
	// earlier ones, as calls of CommitState one after the other would be
	// (and each ID's lock is taken once).
	var first, again []int
	seen := make(map[dtfc.ID]bool, len(items))
	for i, it := range items {
		if seen[it.State.ID] {
			again = append(again, i)
			continue
		}
		seen[it.State.ID] = true
		first = append(first, i)
	}
	s.commitBatch(items, first, res)
	if len(again) > 0 {
		rest := make([]BatchItem, len(again))
		for j, i := range again {
			rest[j] = items[i]
		}
		for j, r := range s.CommitBatch(rest) {
			res[again[j]] = r
		}
	}
	return res
}

// batchPlacement is one item of a batch on its way to the commit.
type batchPlacement struct {
	i      int // the item's index in the batch
	w      *Writer
	decide decideFunc
	d      decision
	dst    string // the blob's path in blobs/
	nr     record // its committed record
	err    error  // the first failure; the placement then goes no further
}

// commitBatch commits items[i] for each i of idx (whose IDs differ),
// writing what it did to res[i].
func (s *Store) commitBatch(items []BatchItem, idx []int, res []BatchResult) {
	fast := s.syncfs
	var ps []*batchPlacement
	for _, i := range idx {
		it := items[i]
		decide, err := it.Writer.sealState(it.State, true)
		if err != nil {
			res[i].Err = err
			continue
		}
		ps = append(ps, &batchPlacement{i: i, w: it.Writer, decide: decide})
	}
	if len(ps) == 0 {
		return
	}
	leave, err := s.enter()
	if err != nil {
		for _, p := range ps {
			res[p.i].Err = err
		}
		return
	}
	defer leave()
	// The IDs' locks, held until the records are committed (as place
	// holds its one), taken in the order of the IDs: every other holder
	// of an ID's lock takes no other, and batches take theirs in the same
	// order, so none waits for another in a circle. Sorted, the blobs of
	// one shard directory are also next to each other (step 3).
	slices.SortFunc(ps, func(a, b *batchPlacement) int { return bytes.Compare(a.w.sum[:], b.w.sum[:]) })
	for _, p := range ps {
		defer s.locks.lock(p.w.sum)()
	}

	// 1. What each state means for its ID's record.
	var todo []*batchPlacement
	for _, p := range ps {
		d, err := s.decide(p.w.sum, p.decide)
		switch {
		case err != nil:
			res[p.i].Err = err
		case !d.apply:
			res[p.i].Result = Result{State: d.st}
		default:
			p.d, p.dst = d, s.Path(p.w.sum)
			todo = append(todo, p)
		}
	}

	// 2. The blobs not held yet named by their intents; their bytes and
	// names durable (without syncfs, each file's fsync'd first, as place
	// does).
	var toLink, toReplace []*batchPlacement
	for _, p := range todo {
		if p.d.held {
			toReplace = append(toReplace, p)
		} else {
			toLink = append(toLink, p)
		}
	}
	// Held already: the verified bytes replace the file, as in place.
	each(toReplace, func(p *batchPlacement) {
		if p.err = p.w.sync(); p.err == nil {
			p.err = p.w.replace(p.dst)
		}
	})
	each(toLink, func(p *batchPlacement) {
		if !fast {
			if p.err = p.w.sync(); p.err != nil {
				return
			}
		}
		p.err = p.w.nameIntent(p.d.st.Clock)
	})
	toLink = going(toLink)
	if fast && len(toLink) > 0 {
		if err := syncFS(s.blobDir); err != nil {
			// Fatal for these writes, never retried (see finish).
			failAll(toLink, diskErr("sync temp files", err))
		}
		for _, p := range going(toLink) {
			if err := writebackErr(p.w.f); err != nil {
				p.err = diskErr("sync temp file", err)
			}
		}
		toLink = going(toLink)
	}

	// 3. Linked into blobs/; the links and new directories durable.
	each(toLink, func(p *batchPlacement) {
		if p.err = s.makeShard(p.w.sum, !fast); p.err == nil {
			p.err = p.w.link(p.dst)
		}
	})
	linked := going(toLink)
	if fast && len(linked) > 0 {
		if err := syncFS(s.blobDir); err != nil {
			// The links may not be durable: take the files back out so
			// nothing unrecorded stays visible.
			unlinkAll(linked, diskErr("sync blob directories", err))
		}
	}
	if !fast {
		// Each shard directory once (linked is in the order of the IDs).
		for len(linked) > 0 {
			dir := filepath.Dir(linked[0].dst)
			n := 1
			for n < len(linked) && filepath.Dir(linked[n].dst) == dir {
				n++
			}
			if err := syncDir(dir); err != nil {
				unlinkAll(linked[:n], diskErr("fsync blob directory", err))
			}
			linked = linked[n:]
		}
	}

	// 4. The records, in one transaction.
	var commit []*batchPlacement
	for _, p := range todo {
		if p.err == nil {
			commit = append(commit, p)
		}
	}
	s.commitRecords(commit)

	// 5. The intents fulfilled.
	each(todo, func(p *batchPlacement) {
		if p.err != nil {
			res[p.i].Err = p.err
			return
		}
		res[p.i].Result = p.w.fulfilled(p.d, p.nr)
	})
}

// batchWorkers is how many goroutines each runs on: a blob's steps are
// file system calls (a rename, a mkdir, a link, an unlink: tens of
// microseconds each, longer when the disk is busy), and a batch's run
// one after the other would make it wait for each in turn.
const batchWorkers = 8

// each calls fn for every placement of ps, on up to batchWorkers
// goroutines, and returns when all calls have. fn may change only its
// placement (and what is safe for concurrent use).
func each(ps []*batchPlacement, fn func(p *batchPlacement)) {
	n := min(batchWorkers, len(ps))
	if n <= 1 {
		for _, p := range ps {
			fn(p)
		}
		return
	}
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() {
			for i := w; i < len(ps); i += n {
				fn(ps[i])
			}
		})
	}
	wg.Wait()
}

// going returns the placements of ps that have not failed.
func going(ps []*batchPlacement) []*batchPlacement {
	var ok []*batchPlacement
	for _, p := range ps {
		if p.err == nil {
			ok = append(ok, p)
		}
	}
	return ok
}

// commitRecords records the state of each placement (whose file, if it
// was not held, is durable in blobs/) in one transaction. If that fails,
// each is committed alone, so that only a record that fails fails its
// placement (as runBatch does for operations sharing a transaction); the
// file of a placement that failed leaves blobs/.
func (s *Store) commitRecords(ps []*batchPlacement) {
	if len(ps) == 0 {
		return
	}
	replace := func(t *txn, p *batchPlacement) error {
		var err error
		p.nr, err = t.commit(p.d)
		return err
	}
	err := s.update(func(t *txn) error {
		for _, p := range ps {
			if err := replace(t, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		return
	}
	for _, p := range ps {
		if len(ps) == 1 {
			p.err = err
		} else {
			p.err = s.update(func(t *txn) error { return replace(t, p) })
		}
		if p.err != nil && !p.d.held {
			os.Remove(p.dst)
		}
	}
}

// failAll fails every placement of ps with err.
func failAll(ps []*batchPlacement, err error) {
	for _, p := range ps {
		p.err = err
	}
}

// unlinkAll takes the files of ps back out of blobs/ and fails them with
// err.
func unlinkAll(ps []*batchPlacement, err error) {
	for _, p := range ps {
		os.Remove(p.dst)
		p.err = err
	}
}
