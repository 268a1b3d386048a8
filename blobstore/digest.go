package blobstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// Digest summarises the records of a range of IDs: the XOR of a hash of
// each record's (ID, deleted, clock, node), and their count. Two nodes
// whose ranges hold the same winning states have equal digests.
type Digest struct {
	Sum   [32]byte `json:"sum"`
	Count uint64   `json:"count"`
}

// Digests returns the digests of the 256 ranges of IDs by first byte. They
// are maintained on every change, so this reads 256 small values.
func (s *Store) Digests() ([256]Digest, error) {
	var out [256]Digest
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDigest).ForEach(func(k, v []byte) error {
			if len(k) == 1 && len(v) == 40 {
				copy(out[k[0]].Sum[:], v[:32])
				out[k[0]].Count = binary.BigEndian.Uint64(v[32:])
			}
			return nil
		})
	})
	return out, err
}

// SubDigests returns the digests of the 256 ranges of IDs that begin with
// the byte first, by second byte. They are computed by reading that range's
// records (about 1/256 of the store).
func (s *Store) SubDigests(first byte) ([256]Digest, error) {
	var out [256]Digest
	err := s.forEach([]byte{first}, func(st *dtfc.State) error {
		d := &out[st.ID[1]]
		c := digestOf(st)
		for i := range d.Sum {
			d.Sum[i] ^= c[i]
		}
		d.Count++
		return nil
	})
	return out, err
}

// States calls fn with the state of every ID whose first bytes are prefix
// (an empty prefix means every ID), in ID order. fn must not call back into
// the Store's write methods: it runs inside a read transaction.
func (s *Store) States(prefix []byte, fn func(dtfc.State) error) error {
	return s.forEach(prefix, func(st *dtfc.State) error { return fn(*st) })
}

func (s *Store) forEach(prefix []byte, fn func(*dtfc.State) error) error {
	return s.forEachRecord(prefix, func(rec *record) error { return fn(&rec.State) })
}

// forEachRecord calls fn with the record of every ID whose first bytes
// are prefix, in ID order, inside a read transaction.
func (s *Store) forEachRecord(prefix []byte, fn func(*record) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMeta).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			rec, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			if err := fn(&rec); err != nil {
				return err
			}
		}
		return nil
	})
}

// PurgeTombstones forgets tombstones whose clock is before the horizon
// (the tombstone retention) and that forget allows, given each one's feed
// sequence number and clock, oldest first; it returns how many it forgot.
// The caller holds back a tombstone that some peer has not accepted yet:
// forgetting it would let that peer's copy of the file come back. forget
// runs outside any transaction and may write (mark a peer expired) before
// it allows a tombstone to go.
func (s *Store) PurgeTombstones(before dtfc.Timestamp, forget func(seq uint64, clock dtfc.Timestamp) bool) (int, error) {
	leave, err := s.enter()
	if err != nil {
		return 0, err
	}
	defer leave()
	total := 0
	var after []byte
	for {
		var ids []dtfc.ID
		err := s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketTombs).Cursor()
			k, _ := c.First()
			if after != nil {
				if k, _ = c.Seek(after); k != nil && bytes.Equal(k, after) {
					k, _ = c.Next()
				}
			}
			for ; k != nil && len(ids) < 256; k, _ = c.Next() {
				if dtfc.Timestamp(binary.BigEndian.Uint64(k)) >= before {
					break
				}
				var id dtfc.ID
				copy(id[:], k[8:])
				ids = append(ids, id)
				after = append(after[:0], k...)
			}
			return nil
		})
		if err != nil || len(ids) == 0 {
			return total, err
		}
		for _, id := range ids {
			unlock := s.locks.lock(id)
			rec, ok, err := s.record(id)
			if err == nil && ok && rec.Deleted && rec.Clock < before && forget(rec.Seq, rec.Clock) {
				err = s.update(func(t *txn) error {
					cur, ok, err := t.get(id)
					if err != nil || !ok {
						return err
					}
					if err := t.remove(&cur); err != nil {
						return err
					}
					return t.remember('S', id, cur.Clock, cur.Node)
				})
				total++
			}
			unlock()
			if err != nil {
				return total, err
			}
		}
	}
}

// ForgetState removes the record and file of judged's ID without a
// trace (no tombstone, no feed entry), if judged, the state a caller
// found to forget earlier, is still the ID's state: under the ID's lock.
// It is for a node that learns it holds a state the cluster has long
// since deleted and forgotten (see package peer's resync); a change made
// here since (an upload of the same bytes, a delete) is newer news and
// stays (TestResyncSparesUploadMadeDuringIt). It reports whether it
// forgot.
func (s *Store) ForgetState(judged dtfc.State) (bool, error) {
	leave, err := s.enter()
	if err != nil {
		return false, err
	}
	defer leave()
	defer s.locks.lock(judged.ID)()
	rec, ok, err := s.record(judged.ID)
	if err != nil || !ok {
		return false, err
	}
	if rec.Clock != judged.Clock || rec.Node != judged.Node {
		return false, nil
	}
	return true, s.forget(judged.ID)
}

// Forgettable calls fn with the feed sequence number and clock of every
// tombstone and lifted deny entry whose clock is before the horizon,
// tombstones oldest first: what PurgeTombstones and PurgeLifts would
// offer to forget. The peer layer reads it first to mark, durably, the
// peers that never acknowledged what it is about to forget. fn runs
// inside a read transaction and must not call the Store's write methods.
func (s *Store) Forgettable(before dtfc.Timestamp, fn func(seq uint64, clock dtfc.Timestamp)) error {
	return s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		c := tx.Bucket(bucketTombs).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			clock := dtfc.Timestamp(binary.BigEndian.Uint64(k))
			if clock >= before {
				break
			}
			rec, err := decodeRecord(k[8:], meta.Get(k[8:]))
			if err != nil {
				return err
			}
			fn(rec.Seq, clock)
		}
		return tx.Bucket(bucketDeny).ForEach(func(k, v []byte) error {
			var d denyRecord
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			if d.Lifted && d.Clock < before {
				fn(d.Seq, d.Clock)
			}
			return nil
		})
	})
}
