package blobstore

import (
	"bytes"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// ListSkipBudget bounds how many records that are not listed (tombstones,
// blocked IDs) one call of List reads past: a page of a store whose IDs
// are mostly tombstones ends early, possibly empty, with a Next to go on
// from, so that no single call reads a share of the whole store.
const ListSkipBudget = 4096

// List returns the states of up to limit live blobs whose ID sorts after
// after (the zero ID: from the first), in ID order, and the ID to pass as
// after for the next page: the zero ID once the store's last record has
// been read. Live means a record of an upload, not a tombstone, whose ID
// is not blocked; such a record stays listed while its file is missing (a
// lost or quarantined file is fetched again at the next read). A file
// without a record (unconfirmed/) is not listed: its state is unknown.
//
// A page may hold fewer than limit states, even none, while Next is
// set: when it read ListSkipBudget records it did not list. Callers go on
// until Next is zero.
//
// The cost of a call is that of its page: a cursor seeks to after and
// reads at most limit+ListSkipBudget records. The page is returned as a
// slice, not passed to a callback, so that no read transaction stays open
// while the caller writes it to a slow client (a long read transaction
// holds back bbolt's remapping of a growing file).
//
// A cache lists what it holds: its own uploads and its fills; an evicted
// blob's record goes with its bytes.
func (s *Store) List(after dtfc.ID, limit int) (page []dtfc.State, next dtfc.ID, err error) {
	if limit <= 0 {
		return nil, dtfc.ID{}, nil
	}
	page = make([]dtfc.State, 0, min(limit, 1024))
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMeta).Cursor()
		var k, v []byte
		if after.IsZero() {
			k, v = c.First()
		} else if k, v = c.Seek(after[:]); k != nil && bytes.Equal(k, after[:]) {
			k, v = c.Next()
		}
		skipped := 0
		for ; k != nil; k, v = c.Next() {
			if len(page) == limit || skipped == ListSkipBudget {
				// More records follow: go on from the last one read.
				return nil
			}
			rec, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			copy(next[:], k)
			if _, blocked := s.denied.get(rec.ID); rec.Deleted || blocked {
				skipped++
				continue
			}
			page = append(page, rec.State)
		}
		next = dtfc.ID{} // the last record was read
		return nil
	})
	if err != nil {
		return nil, dtfc.ID{}, err
	}
	return page, next, nil
}
