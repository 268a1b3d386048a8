package blobstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// record reads the record of id in its own read transaction.
func (s *Store) record(id dtfc.ID) (rec record, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		rec, err = decodeRecord(id[:], v)
		return err
	})
	return rec, ok, err
}

// lookup reads id's record for a reader. A reader that finds no record
// while the blob's file exists has caught an upload between the rename
// that placed its file and the commit of its record (or an eviction
// between its commit and its unlink): it waits for that to finish (the
// ID's lock, which both hold throughout) and reads again, so a blob that
// a web server in front may already serve from blobs/ is not answered 404
// here a moment later.
func (s *Store) lookup(id dtfc.ID) (record, bool, error) {
	rec, ok, err := s.record(id)
	if err != nil || ok || !s.fileExists(id) {
		return rec, ok, err
	}
	s.locks.lock(id)()
	return s.record(id)
}

// Stat returns what the node knows of id: a present blob's state or a
// tombstone (State.Deleted). It returns ErrNotFound if the node has no
// record of id at all.
func (s *Store) Stat(id dtfc.ID) (dtfc.State, error) {
	rec, ok, err := s.lookup(id)
	if err != nil {
		return dtfc.State{}, err
	}
	if !ok {
		return dtfc.State{}, ErrNotFound
	}
	return rec.State, nil
}

// StateSeq returns id's state and the change-feed sequence number it
// entered the feed at (0 if it is not in the feed: a cache fill). It
// returns ErrNotFound if the node has no record of id.
func (s *Store) StateSeq(id dtfc.ID) (dtfc.State, uint64, error) {
	rec, ok, err := s.record(id)
	if err != nil {
		return dtfc.State{}, 0, err
	}
	if !ok {
		return dtfc.State{}, 0, ErrNotFound
	}
	return rec.State, rec.Seq, nil
}

// Evicted reports whether id is an upload whose bytes this tier evicted
// (Options.Tier): held by its archive, read back on demand.
func (s *Store) Evicted(id dtfc.ID) bool {
	rec, ok, err := s.record(id)
	return err == nil && ok && rec.Evicted
}

// Blob is an open, verified blob. Its State describes it; reading it reads
// the file (so http.ServeContent can use sendfile).
type Blob struct {
	*os.File
	State   dtfc.State
	release func()
}

// Close closes the file.
func (b *Blob) Close() error {
	err := b.File.Close()
	if b.release != nil {
		b.release()
		b.release = nil
	}
	return err
}

// Open opens the blob of id for reading. It returns ErrNotFound if the node
// holds no bytes for id (no record, or a tombstone).
func (s *Store) Open(id dtfc.ID) (*Blob, error) { return s.open(id, true) }

// OpenQuietly is Open for a read that is no use of the blob: its bytes
// sent to a peer or an archive by replication, or a check that they are
// held. While open the blob is kept from eviction like any open blob, but
// its place in a cache's or tier's least-recently-used order stays: the
// blobs replication touches (every upload pushed to each peer and
// archive, everything a returning peer catches up on) would otherwise
// pass for the ones clients read, and those be evicted first.
func (s *Store) OpenQuietly(id dtfc.ID) (*Blob, error) { return s.open(id, false) }

func (s *Store) open(id dtfc.ID, use bool) (*Blob, error) {
	rec, ok, err := s.lookup(id)
	if err != nil {
		return nil, err
	}
	if !ok || rec.Deleted || rec.Evicted {
		return nil, ErrNotFound
	}
	return s.openRecord(id, rec, use)
}

// openRecord opens the file of id, whose live record rec was just read;
// with use, the read counts in the least-recently-used order.
func (s *Store) openRecord(id dtfc.ID, rec record, use bool) (*Blob, error) {
	release := s.access.hold(id, s.opts.TrackAccess, use)
	f, err := s.openBlob(id)
	if err != nil {
		release()
		if errors.Is(err, os.ErrNotExist) {
			// A delete won the race since the record was read.
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("blobstore: open %s: %w", id, err)
	}
	// A file whose size is not the recorded one was cut short or grown on
	// disk: its bytes cannot hash to its name, and served they would look
	// like a whole answer of the wrong length. Quarantined, like a small
	// blob that fails its hash (readSmall), so the node fetches it again.
	fi, err := f.Stat()
	if err == nil && fi.Size() == rec.Size {
		return &Blob{File: f, State: rec.State, release: release}, nil
	}
	f.Close()
	release()
	if err != nil {
		return nil, fmt.Errorf("blobstore: stat %s: %w", id, err)
	}
	if err := s.quarantine(rec.State, fi, "open: size "+strconv.FormatInt(fi.Size(), 10)+", recorded "+strconv.FormatInt(rec.Size, 10), nil); err != nil {
		return nil, err
	}
	return nil, ErrNotFound
}

// Delete records a delete of id performed on this node (a tombstone with a
// fresh clock reading) and removes the blob's file. Unless force is set it
// fails with ErrNotFound when the node has no record of id; force records
// the tombstone anyway (the ID is known elsewhere in the cluster).
func (s *Store) Delete(id dtfc.ID, force bool) (dtfc.State, error) {
	return s.deleteIf(id, func(_ record, ok bool) error {
		if !ok && !force {
			return ErrNotFound
		}
		return nil
	})
}

// DeleteUnmodifiedSince is Delete of a blob this node holds, on the
// condition that its upload (the wall-clock part of its record's clock,
// in whole seconds, as HTTP dates go) is not after since: otherwise it
// fails with ErrModified and changes nothing. The condition is checked
// under the ID's lock, with the delete: an upload of the same bytes
// between a caller's look at the blob and its delete (which renews the
// upload) keeps it. ErrNotFound if the node holds no live record of id.
func (s *Store) DeleteUnmodifiedSince(id dtfc.ID, since time.Time) (dtfc.State, error) {
	return s.deleteIf(id, func(rec record, ok bool) error {
		if !ok || rec.Deleted {
			return ErrNotFound
		}
		if rec.Clock.Time().Truncate(time.Second).After(since) {
			return ErrModified
		}
		return nil
	})
}

// deleteIf records a delete of id made here if cond, given id's record
// (and whether there is one), allows it under the ID's lock.
func (s *Store) deleteIf(id dtfc.ID, cond func(rec record, ok bool) error) (dtfc.State, error) {
	if err := s.afterAhead(id); err != nil {
		return dtfc.State{}, err
	}
	leave, err := s.enter()
	if err != nil {
		return dtfc.State{}, err
	}
	defer leave()
	defer s.locks.lock(id)()
	rec, ok, err := s.record(id)
	if err != nil {
		return dtfc.State{}, err
	}
	if err := cond(rec, ok); err != nil {
		return dtfc.State{}, err
	}
	st := dtfc.State{ID: id, Deleted: true, Clock: s.clock.Now(), Node: s.node}
	if err := s.setState(st, true); err != nil {
		return dtfc.State{}, err
	}
	return st, s.removeFile(id)
}

// Outcome is what Apply did with a remote state.
type Outcome int

const (
	// Stale: the local state wins; nothing changed.
	Stale Outcome = iota
	// Applied: the state was recorded.
	Applied
	// NeedBytes: the state wins but is an upload whose bytes this node
	// does not hold; send them with a Writer and CommitState.
	NeedBytes
)

func (o Outcome) String() string {
	return [...]string{"stale", "applied", "need-bytes"}[o]
}

// Apply applies a state received from another node, under the
// last-writer-wins rule: a tombstone removes the blob; an upload of bytes
// already held updates the record. An upload of bytes not held is not
// applied and answers NeedBytes — also when the state equals the local
// record but the record's file is missing (lost, or quarantined by the
// scrubber), so that the bytes come back. Tombstones are recorded even
// for IDs this node never held, so that an older copy arriving later
// stays dead. A state whose clock is too far ahead of this node's wall
// clock is refused with a *ClockAheadError and changes nothing.
func (s *Store) Apply(st dtfc.State) (Outcome, error) { return s.apply(st, false) }

// ApplyKept is Apply for a state a bucket keeps (the archive relay): a
// delete that is old news (see PruneForgotten) enters the memory of
// forgotten deletes rather than being ignored, so that no older upload
// of the ID is taken where the bucket is the only source of that
// delete.
func (s *Store) ApplyKept(st dtfc.State) (Outcome, error) { return s.apply(st, true) }

func (s *Store) apply(st dtfc.State, kept bool) (Outcome, error) {
	if st.ID.IsZero() {
		return Stale, errors.New("blobstore: Apply of a state without an ID")
	}
	if err := s.checkClock(st.Clock); err != nil {
		return Stale, s.noteAhead(st.ID, err)
	}
	leave, err := s.enter()
	if err != nil {
		return Stale, err
	}
	defer leave()
	s.clock.Observe(st.Clock)
	defer s.locks.lock(st.ID)()
	if !st.Deleted && s.checkDenied(st.ID) != nil {
		// Blocked: acknowledged and ignored, so the sender stops offering
		// it; the block's own delete replicates and wins.
		return Stale, nil
	}
	old, ok, err := s.record(st.ID)
	if err != nil {
		return Stale, err
	}
	if ok && !st.Newer(old.State) {
		if sameUpload(st, old.State) && !old.Evicted && !s.fileExists(st.ID) {
			return NeedBytes, nil
		}
		return Stale, nil // (an evicted upload's bytes come back when read)
	}
	if !ok && st.Clock <= s.forgottenClock('S', st.ID) {
		return Stale, nil // its delete was forgotten here lately
	}
	if !ok && st.Deleted && s.pastForgettingFor(st.ID, st.Clock) {
		// A delete older than the memory of forgotten ones (see
		// PruneForgotten): from a peer, ignored; from a bucket, entered
		// in that memory, as if recorded and forgotten now.
		if !kept {
			return Stale, nil
		}
		return Stale, s.rememberOld('S', st.ID, st.Clock, st.Node)
	}
	if !st.Deleted && ok && !old.Deleted && st.Size != old.Size {
		// The same ID names the same bytes, so the same size: a state that
		// says otherwise is wrong (a peer's bug), and recorded it would
		// make the blob's good file look damaged (openRecord, readSmall).
		s.log.Warn("ignored a remote state whose size is not the blob's", "id", st.ID.String(),
			"size", st.Size, "recorded", old.Size, "from", st.Node)
		return Stale, nil
	}
	if !st.Deleted && (!ok || old.Deleted || !s.fileExists(st.ID)) {
		return NeedBytes, nil
	}
	if err := s.setState(st, true); err != nil {
		return Stale, err
	}
	if st.Deleted {
		return Applied, s.removeFile(st.ID)
	}
	// A newer upload takes the file held: its time records that clock
	// (README, "When the metadata is damaged"), as Writer.fulfilled does.
	s.stampFile(s.Path(st.ID), st.Clock)
	return Applied, nil
}

// sameUpload reports whether st is the very upload o records (the same
// operation: same clock and node).
func sameUpload(st, o dtfc.State) bool {
	return !st.Deleted && !o.Deleted && st.Clock == o.Clock && st.Node == o.Node
}

// setState commits st over whatever record id has. The caller holds the
// ID's lock.
func (s *Store) setState(st dtfc.State, toFeed bool) error {
	return s.update(func(t *txn) error {
		_, err := t.replace(st, toFeed)
		return err
	})
}

// forget removes id's record without a trace (no tombstone, no feed entry)
// and its file. The caller holds the ID's lock.
func (s *Store) forget(id dtfc.ID) error {
	err := s.update(func(t *txn) error {
		cur, ok, err := t.get(id)
		if err != nil || !ok {
			return err
		}
		return t.remove(&cur)
	})
	if err != nil {
		return err
	}
	return s.removeFile(id)
}

// removeFile unlinks a blob's file and makes the unlink durable.
func (s *Store) removeFile(id dtfc.ID) error {
	s.small.drop(id)
	p := s.Path(id)
	err := os.Remove(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return diskErr("remove blob", err)
	}
	s.access.forget(id)
	return diskErr("fsync blob directory", syncDir(filepath.Dir(p)))
}

// Change is one entry of the change feed: the current state of an ID that
// changed after the reader's cursor, or its current deny entry.
type Change struct {
	Seq   uint64
	State dtfc.State
	// Deny, if not nil, makes this a change of the deny list (State is
	// then zero).
	Deny *Deny
}

// Changes returns up to limit changes with a sequence number greater than
// since, in order. The feed holds only the latest change of each ID (and
// of each ID's deny entry): a reader that resumes from its cursor sees
// every ID whose state changed since, with its current state, and never a
// superseded one.
func (s *Store) Changes(since uint64, limit int) ([]Change, error) {
	var out []Change
	err := s.db.View(func(tx *bolt.Tx) error {
		meta, deny := tx.Bucket(bucketMeta), tx.Bucket(bucketDeny)
		c := tx.Bucket(bucketFeed).Cursor()
		for k, v := c.Seek(u64(since + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			ch, err := feedChange(meta, deny, k, v)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	return out, err
}

// feedChange decodes the feed entry k -> v.
func feedChange(meta, deny *bolt.Bucket, k, v []byte) (Change, error) {
	ch := Change{Seq: decU64(k)}
	if len(v) == 1+dtfc.IDLen && v[0] == 'D' {
		var id dtfc.ID
		copy(id[:], v[1:])
		d, ok, err := getDeny(deny, id)
		if err != nil {
			return ch, err
		}
		if !ok {
			return ch, fmt.Errorf("%w: feed entry %d names a missing deny entry", errBadRecord, ch.Seq)
		}
		ch.Deny = &d.Deny
		return ch, nil
	}
	rec, err := decodeRecord(v, meta.Get(v))
	ch.State = rec.State
	return ch, err
}

// Value returns a value stored with SetValue, or nil.
func (s *Store) Value(key string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketValues).Get([]byte(key)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// SetValue durably stores a small value for other layers (replication
// cursors, peer bookkeeping), in the same database as the records.
func (s *Store) SetValue(key string, v []byte) error {
	leave, err := s.enter()
	if err != nil {
		return err
	}
	defer leave()
	return s.update(func(t *txn) error { return t.vals.Put([]byte(key), v) })
}

// CountChanges counts the feed entries after since (with deletesOnly,
// only tombstones and deny entries: what a cache is sent): what a peer at
// that cursor has yet to accept.
func (s *Store) CountChanges(since uint64, deletesOnly bool) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		c := tx.Bucket(bucketFeed).Cursor()
		for k, v := c.Seek(u64(since + 1)); k != nil; k, v = c.Next() {
			if deletesOnly && len(v) == dtfc.IDLen {
				// The deleted flag of the record, without decoding it all.
				if r := meta.Get(v); len(r) < 2 || r[1]&flagDeleted == 0 {
					continue
				}
			}
			n++
		}
		return nil
	})
	return n, err
}

// Missing returns id's state when the node records it as held but its
// file is not there (lost, quarantined, or removed by a block since
// lifted): the caller fetches the bytes again from a peer. A tier's
// evicted blob is not missing.
func (s *Store) Missing(id dtfc.ID) (dtfc.State, bool) {
	rec, ok, err := s.record(id)
	if err != nil || !ok || rec.Deleted || rec.Evicted || s.fileExists(id) {
		return dtfc.State{}, false
	}
	if _, blocked := s.denied.get(id); blocked {
		return dtfc.State{}, false
	}
	return rec.State, true
}
