package blobstore

import (
	"encoding/binary"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// A tombstone (or lift) forgotten here may still be held by a peer that
// waits for an acknowledgement of its own; anti-entropy would import it
// again, the node forget it again at its next purge, the peer import it
// back from this node after forgetting its own: a bounce that can last as
// long as the nodes' purges keep out of step. So for a while (the
// expiry, by when every peer has forgotten it too or been marked expired)
// a node remembers what it forgot, outside the records, the feed and the
// digests: the ID, the clock and node forgotten, and when. A state or
// deny entry no newer than that, for an ID the node has no record of, is
// stale: nothing it says is news, and it is not imported again. It also
// keeps a late copy of the deleted upload out, and tells a peer that lost
// its metadata that the blob was deleted (Forgotten).

var bucketForgotten = []byte("forgotten") // 'S'|id or 'D'|id -> clock(8) | forgotten at, unix ms(8) | node

func forgottenKey(kind byte, id dtfc.ID) []byte { return append([]byte{kind}, id[:]...) }

// remember records that the tombstone or lift of id with clock, made by
// node, was forgotten now.
func (t *txn) remember(kind byte, id dtfc.ID, clock dtfc.Timestamp, node string) error {
	v := binary.BigEndian.AppendUint64(nil, uint64(clock))
	v = binary.BigEndian.AppendUint64(v, uint64(t.s.clock.WallNow().Time().UnixMilli()))
	v = append(v, node...)
	return t.tx.Bucket(bucketForgotten).Put(forgottenKey(kind, id), v)
}

// forgottenClock returns the clock of the tombstone ('S') or lift ('D')
// of id this node forgot lately, 0 if none.
func (s *Store) forgottenClock(kind byte, id dtfc.ID) dtfc.Timestamp {
	st, ok := s.forgotten(kind, id)
	if !ok {
		return 0
	}
	return st.Clock
}

func (s *Store) forgotten(kind byte, id dtfc.ID) (st dtfc.State, ok bool) {
	_ = s.db.View(func(tx *bolt.Tx) error {
		var clock dtfc.Timestamp
		var node string
		if clock, node, ok = decodeForgotten(tx.Bucket(bucketForgotten).Get(forgottenKey(kind, id))); ok {
			st = dtfc.State{ID: id, Deleted: true, Clock: clock, Node: node}
		}
		return nil
	})
	return st, ok
}

// decodeForgotten reads a value of bucketForgotten: the clock and node
// of what was forgotten; false if v is not such a value.
func decodeForgotten(v []byte) (dtfc.Timestamp, string, bool) {
	if len(v) < 16 {
		return 0, "", false
	}
	return dtfc.Timestamp(binary.BigEndian.Uint64(v)), string(v[16:]), true
}

// rememberOld enters in the memory of what was forgotten the delete
// ('S') or lift ('D') of id dated c, made by node, unless it holds a
// newer one: old news a bucket brought (see PruneForgotten).
func (s *Store) rememberOld(kind byte, id dtfc.ID, c dtfc.Timestamp, node string) error {
	return s.update(func(t *txn) error {
		if had, _, ok := decodeForgotten(t.tx.Bucket(bucketForgotten).Get(forgottenKey(kind, id))); ok && had >= c {
			return nil
		}
		return t.remember(kind, id, c, node)
	})
}

// pastForgettingFor reports whether a delete or lift of id dated c is
// old news because the memory of such old ones is gone (see
// PruneForgotten); the caller found no record (or deny entry) of id.
func (s *Store) pastForgettingFor(id dtfc.ID, c dtfc.Timestamp) bool {
	if uint64(c) >= s.pastForgetting.Load() {
		return false
	}
	// An unconfirmed copy (after a metadata rebuild) goes with a delete:
	// never left to be taken for an upload nobody knew.
	_, held, err := s.unconfirmedEntry(id)
	return err == nil && !held
}

// Forgotten returns the tombstone of id this node forgot lately (every
// peer had acknowledged it), if it still remembers it: a peer asking
// about a blob whose state it lost learns that the blob was deleted.
func (s *Store) Forgotten(id dtfc.ID) (dtfc.State, bool) { return s.forgotten('S', id) }

// DenyKnown reports whether the store's deny list holds every block it
// was told of: false after its metadata was rebuilt (or started afresh
// under its old identity) until MarkDenyKnown. Until then it takes no
// upload (ErrDenyUnknown): it could take blocked bytes, acknowledge them,
// and then lose them to the block its peers teach it (a block removes
// the bytes it covers).
func (s *Store) DenyKnown() bool { return !s.denyUnknown.Load() }

// RecordsLost reports whether this metadata was rebuilt, or started
// afresh under an identity that had metadata before: the records this
// node wrote to a bucket under that identity may hold what it no longer
// knows (its blocks, its deletes, the uploads a tier evicted), so its
// own log there is to be read like another writer's, once (package
// peer). It stays true for the life of this metadata.
func (s *Store) RecordsLost() bool { return s.recordsLost }

// MarkDenyKnown records that the deny list is complete again: it was
// compared with a peer's (package peer), or the node has no peer.
func (s *Store) MarkDenyKnown() error {
	if !s.denyUnknown.Load() {
		return nil
	}
	leave, err := s.enter()
	if err != nil {
		return err
	}
	defer leave()
	if err := s.update(func(t *txn) error { return t.sys.Delete(keyDenyUnknown) }); err != nil {
		return err
	}
	s.denyUnknown.Store(false)
	s.unconfirmedNews.Notify() // the unconfirmed blobs held back for it
	return nil
}

// ForgottenLifts returns the lifts this node forgot lately (every peer
// had them), if it still remembers them: a peer that expired and must
// drop the blocks the cluster lifted while it was away learns which.
func (s *Store) ForgottenLifts() ([]Deny, error) {
	var out []Deny
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketForgotten).Cursor()
		for k, v := c.Seek([]byte{'D'}); len(k) == 1+dtfc.IDLen && k[0] == 'D'; k, v = c.Next() {
			clock, node, ok := decodeForgotten(v)
			if !ok {
				continue
			}
			d := Deny{Lifted: true, Clock: clock, Node: node}
			copy(d.ID[:], k[1:])
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// PastForgetting returns the time set by the last PruneForgotten: a
// delete or lift dated before it, of an ID this node has no record of,
// is old news. Zero before the first.
func (s *Store) PastForgetting() time.Time {
	return dtfc.Timestamp(s.pastForgetting.Load()).Time()
}

// PruneForgotten drops the memory of what was forgotten before the given
// time (the caller passes now minus the expiry: by then every peer has
// forgotten it too, or been marked expired).
//
// From then on a delete or a lift dated before that time, of an ID this
// node has no record (nor unconfirmed copy) of, is old news: every peer
// has had it for longer than the expiry, or was marked expired and
// adopts the cluster's view on its return. From a peer it is ignored.
// From a bucket (ApplyKept, ApplyDenyKept), which may be the node's only
// source of it, it enters this memory, as if recorded and forgotten now:
// no older upload or block of the ID is taken for one expiry, and it is
// neither in the feed (never pushed on) nor in the digests. Recorded and
// pushed on, such an entry that a bucket keeps (its logs are never
// forgotten) came back to every node that read it late (back from a
// stop, done resyncing, new), which pushed it to peers whose memory of
// it had lapsed; they wrote it to the bucket again, and so on: the full
// archive soak's queues never emptied.
func (s *Store) PruneForgotten(before time.Time) (int, error) {
	leave, err := s.enter()
	if err != nil {
		return 0, err
	}
	defer leave()
	// The latest, not the greatest: a wall clock that jumped ahead and
	// came back does not leave the horizon in the future.
	s.pastForgetting.Store(uint64(dtfc.TimestampAt(before)))
	var keys [][]byte
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketForgotten).ForEach(func(k, v []byte) error {
			if len(v) < 16 || int64(binary.BigEndian.Uint64(v[8:16])) < before.UnixMilli() {
				keys = append(keys, append([]byte(nil), k...))
			}
			return nil
		})
	})
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	err = s.update(func(t *txn) error {
		b := t.tx.Bucket(bucketForgotten)
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	return len(keys), err
}
