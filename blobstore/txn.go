package blobstore

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// op is one metadata change waiting for the committer.
type op struct {
	fn   func(*txn) error
	done chan error
}

// maxBatch bounds how many operations share one transaction.
const maxBatch = 512

// update runs fn in a read-write transaction shared with the other
// operations waiting at that moment (group commit): while one transaction
// commits and fsyncs, the next batch gathers, so concurrent small uploads
// pay for one fsync together and a lone upload waits for no timer.
//
// fn may run more than once (if another operation in its batch fails, each
// is retried in a transaction of its own), so it must derive everything
// from the transaction it is given.
func (s *Store) update(fn func(*txn) error) error {
	return s.updateThen(fn, nil)
}

// updateThen is update, calling queued (if not nil) once the operation
// is queued for the committer.
func (s *Store) updateThen(fn func(*txn) error, queued func()) error {
	o := &op{fn: fn, done: make(chan error, 1)}
	select {
	case s.ops <- o:
	case <-s.stop:
		return ErrClosed
	}
	if queued != nil {
		queued()
	}
	return <-o.done
}

// placings counts the placements on their way to the committer: blob
// files linked into blobs/ whose directory is being fsynced, whose
// records will be committed in a moment (Writer.place).
type placings struct {
	n       atomic.Int64
	arrived chan struct{} // signalled (never blocking) at each arrival
}

func (p *placings) start() { p.n.Add(1) }

func (p *placings) arrive() {
	p.n.Add(-1)
	select {
	case p.arrived <- struct{}{}:
	default:
	}
}

// placingGather is how long a commit waits for the placements on their
// way: about one directory fsync. Concurrent small uploads each fsync
// their file and their directory and would otherwise each pay a
// metadata commit of their own, one after the other; waiting a little
// lets them share one (scripts/bench.sh, 4 KiB uploads).
const placingGather = 2 * time.Millisecond

// gatherPlacings adds to batch the operations that arrive while the
// placements on their way when it is called arrive, for at most
// placingGather. Placements that start meanwhile are not waited for: the
// next commit takes them.
func (s *Store) gatherPlacings(batch []*op) []*op {
	want := s.placing.n.Load()
	if want <= 0 {
		return batch
	}
	t := time.NewTimer(placingGather)
	defer t.Stop()
	for got := int64(0); got < want && s.placing.n.Load() > 0 && len(batch) < maxBatch; {
		select {
		case o := <-s.ops:
			batch = append(batch, o)
			got++
		case <-s.placing.arrived:
		case <-t.C:
			return batch
		case <-s.stop:
			return batch
		}
	}
	return batch
}

func (s *Store) commitLoop() {
	defer close(s.stopped)
	batch := make([]*op, 0, maxBatch)
	for {
		var first *op
		select {
		case first = <-s.ops:
		case <-s.stop:
			// Writers hold closeMu shared while they submit, and Close
			// takes it exclusively before closing stop, so nothing more
			// can arrive; finish what did.
			for {
				select {
				case o := <-s.ops:
					s.runBatch([]*op{o})
				default:
					return
				}
			}
		}
		batch = s.gatherPlacings(append(batch[:0], first))
	gather:
		for len(batch) < maxBatch {
			select {
			case o := <-s.ops:
				batch = append(batch, o)
			default:
				break gather
			}
		}
		s.runBatch(batch)
	}
}

func (s *Store) runBatch(batch []*op) {
	err := s.runTx(batch)
	if err == nil || len(batch) == 1 {
		for _, o := range batch {
			o.done <- err
		}
		return
	}
	// One operation failed and rolled back the others: run each alone so
	// only the failing one sees its error.
	for _, o := range batch {
		o.done <- s.runTx([]*op{o})
	}
}

func (s *Store) runTx(batch []*op) error {
	t := &txn{s: s}
	err := s.db.Update(func(tx *bolt.Tx) error {
		t.bind(tx)
		for _, o := range batch {
			if err := o.fn(t); err != nil {
				return err
			}
		}
		return t.finish()
	})
	if err != nil {
		return diskErr("commit metadata", err)
	}
	s.blobs.Add(t.dBlobs)
	s.bytes.Add(t.dBytes)
	for _, id := range t.unconfirmedGone {
		s.unconfirmed.Add(-1)
		if err := removeDurably(s.UnconfirmedPath(id)); err != nil {
			s.log.Error("removing a deleted blob's unconfirmed copy (the next start does)", "id", id.String(), "err", err)
		}
	}
	if t.lastSeq != 0 {
		s.lastSeq.Store(t.lastSeq)
	}
	if t.feedChanged {
		s.feed.Notify()
	}
	return nil
}

// txn wraps a read-write transaction with the store's invariants: every
// record change updates the feed, the digests, the tombstone index and the
// counters together.
type txn struct {
	s                                    *Store
	tx                                   *bolt.Tx
	meta, feed, tombs, digest, sys, vals *bolt.Bucket
	deny                                 *bolt.Bucket
	dBlobs, dBytes                       int64
	lastSeq                              uint64
	feedChanged                          bool
	maxClock                             dtfc.Timestamp
	// unconfirmedGone are unconfirmed blobs a tombstone settled: their
	// entries go with the commit, their files right after it.
	unconfirmedGone []dtfc.ID
}

func (t *txn) bind(tx *bolt.Tx) {
	t.tx = tx
	t.meta = tx.Bucket(bucketMeta)
	t.feed = tx.Bucket(bucketFeed)
	t.tombs = tx.Bucket(bucketTombs)
	t.digest = tx.Bucket(bucketDigest)
	t.sys = tx.Bucket(bucketSys)
	t.vals = tx.Bucket(bucketValues)
	t.deny = tx.Bucket(bucketDeny)
}

func (t *txn) finish() error {
	if err := t.sys.Put(keyBlobs, u64(uint64(t.s.blobs.Load()+t.dBlobs))); err != nil {
		return err
	}
	if err := t.sys.Put(keyBytes, u64(uint64(t.s.bytes.Load()+t.dBytes))); err != nil {
		return err
	}
	if t.maxClock > dtfc.Timestamp(getU64(t.sys, keyClock)) {
		return t.sys.Put(keyClock, u64(uint64(t.maxClock)))
	}
	return nil
}

// get returns the record of id, if any.
func (t *txn) get(id dtfc.ID) (record, bool, error) {
	v := t.meta.Get(id[:])
	if v == nil {
		return record{}, false, nil
	}
	r, err := decodeRecord(id[:], v)
	if err != nil {
		return r, false, fmt.Errorf("%w: %s", err, id)
	}
	return r, true, nil
}

// set replaces the record of st.ID (old, if any) with st. With toFeed, the
// change gets a new feed sequence number; otherwise it is invisible to
// replication (a cache fill).
func (t *txn) set(old *record, st dtfc.State, toFeed bool) (record, error) {
	nr := record{State: st}
	if old != nil {
		if err := t.unindex(old); err != nil {
			return nr, err
		}
	}
	if toFeed {
		seq, err := t.feed.NextSequence()
		if err != nil {
			return nr, err
		}
		nr.Seq = seq
		if err := t.feed.Put(u64(seq), st.ID[:]); err != nil {
			return nr, err
		}
		t.lastSeq = seq
		t.feedChanged = true
	}
	if err := t.meta.Put(st.ID[:], nr.encode()); err != nil {
		return nr, err
	}
	if st.Deleted {
		if err := t.tombs.Put(tombKey(st.Clock, st.ID), nil); err != nil {
			return nr, err
		}
		if old == nil || !old.Deleted {
			// Its file (if any) leaves blobs/ after the commit.
			if err := t.intend(st.ID); err != nil {
				return nr, err
			}
		}
		// A copy of it set aside as unconfirmed goes with the delete: left
		// there, it would outlive the tombstone and be taken, once the
		// tombstone is forgotten everywhere, for an upload nobody knew.
		// Unless it is an upload a block set aside that is newer than
		// this delete (see recordDeny): the upload is the last writer. A
		// copy with no such state (metadata rebuilt) is dated by its
		// file (FileState): one newer than the delete is left for the
		// resolver, which weighs it as at start-up
		// (TestRebuiltNodeAdoptsNoBlockedUpload).
		if t.tx.Bucket(bucketUnconfirmed).Get(st.ID[:]) != nil {
			aside, ok, err := t.aside(st.ID)
			if err != nil {
				return nr, err
			}
			newer := ok && aside.Newer(st)
			if !ok {
				newer = t.s.fileStateClock(t.s.UnconfirmedPath(st.ID)) > st.Clock
			}
			if !newer {
				if err := t.dropUnconfirmed(st.ID); err != nil {
					return nr, err
				}
				t.unconfirmedGone = append(t.unconfirmedGone, st.ID)
			}
		}
		if err := dropAccess(t.tx, st.ID); err != nil {
			return nr, err
		}
	} else {
		t.dBlobs++
		t.dBytes += st.Size
	}
	if st.Clock > t.maxClock {
		t.maxClock = st.Clock
	}
	return nr, t.xorDigest(&st, +1)
}

// replace sets st over whatever record its ID has (see set).
func (t *txn) replace(st dtfc.State, toFeed bool) (record, error) {
	cur, ok, err := t.get(st.ID)
	if err != nil {
		return record{}, err
	}
	var curp *record
	if ok {
		curp = &cur
	}
	return t.set(curp, st, toFeed)
}

// commit records what a placement decided (see Store.decide): st over
// the record, or, for the bytes of an upload a tier evicted, the same
// record marked held again: no new operation, no new feed entry (peers
// have it; a refill is a read, not news).
func (t *txn) commit(d decision) (record, error) {
	if d.refill {
		cur, ok, err := t.get(d.st.ID)
		if err != nil {
			return cur, err
		}
		if ok && cur.Evicted && sameUpload(d.st, cur.State) {
			return t.setEvicted(cur, false)
		}
	}
	return t.replace(d.st, d.toFeed)
}

// remove forgets a record entirely: no tombstone, no feed entry. Used for
// evictions, purged tombstones and blobs dropped as corrupt, none of which
// is an operation to replicate.
func (t *txn) remove(old *record) error {
	if err := t.unindex(old); err != nil {
		return err
	}
	if !old.Deleted {
		// Its file (if any) leaves blobs/ after the commit.
		if err := t.intend(old.ID); err != nil {
			return err
		}
	}
	if err := dropAccess(t.tx, old.ID); err != nil {
		return err
	}
	return t.meta.Delete(old.ID[:])
}

// unindex takes a record out of the feed, tombstone index, counters and
// digest, ahead of its replacement or removal.
func (t *txn) unindex(old *record) error {
	if err := t.unfeed(old.Seq); err != nil {
		return err
	}
	if old.Deleted {
		if err := t.tombs.Delete(tombKey(old.Clock, old.ID)); err != nil {
			return err
		}
	} else {
		t.dBlobs--
		if !old.Evicted {
			t.dBytes -= old.Size
		}
	}
	return t.xorDigest(&old.State, -1)
}

// setEvicted marks the upload record rec as evicted (true) or held
// again (false), keeping its state and its place in the feed: the store's
// byte count is of the bytes held. Evicting also drops rec from the
// read order and records that its file leaves blobs/ after the commit.
func (t *txn) setEvicted(rec record, evicted bool) (record, error) {
	if rec.Deleted || rec.Evicted == evicted {
		return rec, nil
	}
	rec.Evicted = evicted
	if evicted {
		t.dBytes -= rec.Size
		if err := t.intend(rec.ID); err != nil {
			return rec, err
		}
		if err := dropAccess(t.tx, rec.ID); err != nil {
			return rec, err
		}
	} else {
		t.dBytes += rec.Size
	}
	return rec, t.meta.Put(rec.ID[:], rec.encode())
}

// unfeed removes the feed entry seq (0: none), superseded or forgotten.
func (t *txn) unfeed(seq uint64) error {
	if seq == 0 {
		return nil
	}
	t.feedChanged = true
	return t.feed.Delete(u64(seq))
}

func (t *txn) xorDigest(st *dtfc.State, delta int64) error {
	key := st.ID[:1]
	var d Digest
	if v := t.digest.Get(key); len(v) == 40 {
		copy(d.Sum[:], v[:32])
		d.Count = binary.BigEndian.Uint64(v[32:])
	}
	c := digestOf(st)
	for i := range d.Sum {
		d.Sum[i] ^= c[i]
	}
	d.Count = uint64(int64(d.Count) + delta)
	v := make([]byte, 0, 40)
	v = append(v, d.Sum[:]...)
	v = binary.BigEndian.AppendUint64(v, d.Count)
	return t.digest.Put(key, v)
}

func tombKey(c dtfc.Timestamp, id dtfc.ID) []byte {
	k := make([]byte, 0, 8+dtfc.IDLen)
	k = binary.BigEndian.AppendUint64(k, uint64(c))
	return append(k, id[:]...)
}
