package blobstore

import (
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// accessLog keeps a cache's least-recently-used order. Reads are noted in
// memory and written to the database in batches (a read must not cost an
// fsync); the order itself lives in the database, so a restart neither
// forgets it nor has to scan the blobs to rebuild it.
type accessLog struct {
	mu      sync.Mutex
	next    uint64
	pending map[dtfc.ID]uint64 // reads not yet in the database
	open    map[dtfc.ID]int    // blobs being read right now: never evicted
}

// hold marks id open until the returned func runs and, with use, notes
// a read of it.
func (a *accessLog) hold(id dtfc.ID, track, use bool) func() {
	if !track {
		return func() {}
	}
	a.mu.Lock()
	if use {
		a.touchLocked(id)
	}
	if a.open == nil {
		a.open = make(map[dtfc.ID]int)
	}
	a.open[id]++
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		if a.open[id]--; a.open[id] <= 0 {
			delete(a.open, id)
		}
		a.mu.Unlock()
	}
}

func (a *accessLog) touchLocked(id dtfc.ID) {
	if a.pending == nil {
		a.pending = make(map[dtfc.ID]uint64)
	}
	a.next++
	a.pending[id] = a.next
}

func (a *accessLog) forget(id dtfc.ID) {
	a.mu.Lock()
	delete(a.pending, id)
	a.mu.Unlock()
}

func (a *accessLog) isOpen(id dtfc.ID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.open[id] > 0
}

// noteWrite counts a newly stored blob as just used.
func (s *Store) noteWrite(id dtfc.ID, _ int64) {
	if !s.opts.TrackAccess {
		return
	}
	s.access.mu.Lock()
	s.access.touchLocked(id)
	s.access.mu.Unlock()
}

// takePending hands over the reads noted since the last flush.
func (a *accessLog) takePending() (map[dtfc.ID]uint64, uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pending
	a.pending = nil
	return p, a.next
}

// writeAccess moves reads into the persistent order. Only IDs that still
// hold bytes are recorded.
func writeAccess(tx *bolt.Tx, pending map[dtfc.ID]uint64, next uint64) error {
	meta, atime, lru := tx.Bucket(bucketMeta), tx.Bucket(bucketATime), tx.Bucket(bucketLRU)
	for id, seq := range pending {
		v := meta.Get(id[:])
		if v == nil || v[1]&(flagDeleted|flagEvicted) != 0 { // gone, a tombstone, or evicted
			continue
		}
		if old := atime.Get(id[:]); old != nil {
			if err := lru.Delete(append(append([]byte(nil), old...), id[:]...)); err != nil {
				return err
			}
		}
		if err := atime.Put(id[:], u64(seq)); err != nil {
			return err
		}
		if err := lru.Put(append(u64(seq), id[:]...), nil); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketSys).Put(keyAccessNext, u64(next))
}

// dropAccess removes id from the persistent order.
func dropAccess(tx *bolt.Tx, id dtfc.ID) error {
	atime := tx.Bucket(bucketATime)
	old := atime.Get(id[:])
	if old == nil {
		return nil
	}
	if err := tx.Bucket(bucketLRU).Delete(append(append([]byte(nil), old...), id[:]...)); err != nil {
		return err
	}
	return atime.Delete(id[:])
}

// Cold puts id first in the read order, to be evicted before any other
// (a blob a tier read back only to send it to a peer: no read of it).
func (s *Store) Cold(id dtfc.ID) error {
	if !s.opts.TrackAccess {
		return nil
	}
	leave, err := s.enter()
	if err != nil {
		return err
	}
	defer leave()
	s.access.forget(id)
	return s.db.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(id[:])
		if v == nil || len(v) < 2 || v[1]&(flagDeleted|flagEvicted) != 0 {
			return nil
		}
		if err := dropAccess(tx, id); err != nil {
			return err
		}
		if err := tx.Bucket(bucketATime).Put(id[:], u64(0)); err != nil {
			return err
		}
		return tx.Bucket(bucketLRU).Put(append(u64(0), id[:]...), nil)
	})
}

// FlushAccess writes the reads noted in memory to the persistent
// least-recently-used order (a cache calls it now and then, so a crash
// forgets little of the order).
func (s *Store) FlushAccess() error {
	leave, err := s.enter()
	if err != nil {
		return err
	}
	defer leave()
	return s.flushAccess()
}

func (s *Store) flushAccess() error {
	if !s.opts.TrackAccess {
		return nil
	}
	p, next := s.access.takePending()
	if len(p) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error { return writeAccess(tx, p, next) })
}

// Evict removes least-recently-used blobs until the store holds at most
// maxBytes-reserve bytes, never one that is being read, and never a state
// in the change feed after acked: a cache's own upload (or any change it
// has to pass on) stays until a replica has accepted it (acked is the
// furthest cursor of the cache's replica peers), so an acknowledged upload
// is never lost to an eviction. Fills, which are not in the feed, go in
// read order. Until the pinned states are accepted the store may stay
// above maxBytes. It is for caches and tiers (Options.TrackAccess): a
// cache forgets what it evicts, a tier (Options.Tier) keeps the record and
// drops the bytes, and acked is then what every archive accepted. An eviction is not an operation on the ID and is not
// replicated. Concurrent calls run one at a time. It returns the evicted
// states.
func (s *Store) Evict(maxBytes, reserve int64, acked uint64) ([]dtfc.State, error) {
	if !s.opts.TrackAccess || maxBytes <= 0 || s.bytes.Load()+reserve <= maxBytes {
		return nil, nil
	}
	leave, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	p, next := s.access.takePending()
	if len(p) > 0 {
		if err := s.update(func(t *txn) error { return writeAccess(t.tx, p, next) }); err != nil {
			return nil, err
		}
	}
	var evicted []dtfc.State
	var after, untrackedAfter []byte
	lruDone := false
	// The fallback walks every record: once in a while, not at every
	// call of a store that cannot get under maxBytes (pinned states).
	mayWalk := s.untrackedScan.IsZero() || time.Since(s.untrackedScan) >= untrackedEvery
	for s.bytes.Load()+reserve > maxBytes {
		var batch []dtfc.ID
		err := s.db.View(func(tx *bolt.Tx) error {
			if lruDone {
				batch = untracked(tx, &untrackedAfter, 64)
				return nil
			}
			c := tx.Bucket(bucketLRU).Cursor()
			k, _ := c.First()
			if after != nil {
				k, _ = c.Seek(after)
				if k != nil && string(k) == string(after) {
					k, _ = c.Next()
				}
			}
			for ; k != nil && len(batch) < 64; k, _ = c.Next() {
				var id dtfc.ID
				copy(id[:], k[8:])
				batch = append(batch, id)
				after = append(after[:0], k...)
			}
			return nil
		})
		if err != nil {
			return evicted, err
		}
		if len(batch) == 0 && !lruDone && mayWalk {
			lruDone = true
			s.untrackedScan = time.Now()
			continue
		}
		if len(batch) == 0 {
			break // everything left is open, recently read or pinned
		}
		for _, id := range batch {
			if s.bytes.Load()+reserve <= maxBytes {
				break
			}
			st, ok, err := s.evictOne(id, acked)
			if err != nil {
				return evicted, err
			}
			if ok {
				evicted = append(evicted, st)
			}
		}
	}
	return evicted, nil
}

// trackAll, at open with TrackAccess, puts every blob held that the read
// order lacks at its start (as the least recently used), once: the store
// of a replica turned tier never recorded a read. Opened without
// TrackAccess, the store clears the mark, since what it stores then is
// not recorded. (Reads a crash kept from the database are found by
// Evict when the order is exhausted: see untracked.)
func (s *Store) trackAll() error {
	var marked bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		marked = tx.Bucket(bucketSys).Get(keyAccessAll) != nil
		return nil
	}); err != nil {
		return err
	}
	if !s.opts.TrackAccess || marked {
		if !s.opts.TrackAccess && marked {
			return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketSys).Delete(keyAccessAll) })
		}
		return nil
	}
	var after []byte
	for done := false; !done; {
		err := s.db.Update(func(tx *bolt.Tx) error {
			batch := untracked(tx, &after, 10000)
			if len(batch) < 10000 {
				done = true
			}
			atime, lru := tx.Bucket(bucketATime), tx.Bucket(bucketLRU)
			for _, id := range batch {
				if err := atime.Put(id[:], u64(0)); err != nil {
					return err
				}
				if err := lru.Put(append(u64(0), id[:]...), nil); err != nil {
					return err
				}
			}
			if done {
				return tx.Bucket(bucketSys).Put(keyAccessAll, []byte("1"))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// untrackedEvery is how often Evict may walk the records for blobs
// missing from the read order (see untracked).
const untrackedEvery = 10 * time.Minute

// untracked returns up to n blobs held that are not in the read order,
// after the key *after (moved on): those no read was recorded for (a
// replica turned tier, or reads that a crash kept from the database),
// which are then the least recently used.
func untracked(tx *bolt.Tx, after *[]byte, n int) []dtfc.ID {
	atime := tx.Bucket(bucketATime)
	c := tx.Bucket(bucketMeta).Cursor()
	k, v := c.First()
	if *after != nil {
		if k, v = c.Seek(*after); k != nil && string(k) == string(*after) {
			k, v = c.Next()
		}
	}
	var out []dtfc.ID
	for ; k != nil && len(out) < n; k, v = c.Next() {
		*after = append((*after)[:0], k...)
		if len(k) != dtfc.IDLen || len(v) < 2 || v[1]&(flagDeleted|flagEvicted) != 0 || atime.Get(k) != nil {
			continue
		}
		var id dtfc.ID
		copy(id[:], k)
		out = append(out, id)
	}
	return out
}

func (s *Store) evictOne(id dtfc.ID, acked uint64) (dtfc.State, bool, error) {
	defer s.locks.lock(id)()
	if s.access.isOpen(id) {
		return dtfc.State{}, false, nil
	}
	s.access.mu.Lock()
	_, recent := s.access.pending[id]
	s.access.mu.Unlock()
	if recent {
		return dtfc.State{}, false, nil
	}
	rec, ok, err := s.record(id)
	if err != nil || !ok || rec.Deleted || rec.Evicted || rec.Seq > acked {
		return dtfc.State{}, false, err
	}
	if s.opts.Tier {
		// The record stays, marked; only the bytes go.
		err := s.update(func(t *txn) error {
			_, err := t.setEvicted(rec, true)
			return err
		})
		if err == nil {
			err = s.removeFile(id)
		}
		return rec.State, err == nil, err
	}
	if err := s.forget(id); err != nil && !errors.Is(err, ErrNotFound) {
		return dtfc.State{}, false, err
	}
	return rec.State, true, nil
}
