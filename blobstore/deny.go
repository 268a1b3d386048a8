package blobstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// ErrDenied means the ID is on the deny list: its bytes are neither stored
// nor served. Errors wrapping it are *DeniedError, which carries the
// status and reason.
var ErrDenied = errors.New("blobstore: denied")

// DeniedError tells why an ID is refused.
type DeniedError struct{ Deny Deny }

func (e *DeniedError) Error() string {
	return fmt.Sprintf("blobstore: %s is blocked (%d): %s", e.Deny.ID, e.Deny.Status, e.Deny.Reason)
}

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

// Deny is an entry of the deny list: a block on an ID, or the lifting of
// one. Entries are ordered per ID by (Clock, Node) like states, but kept
// apart from them: a block must not be undone by an upload that merely
// has a newer clock (one made on a node that had not heard of the block
// yet), only by an explicit lift.
type Deny struct {
	ID     dtfc.ID        `json:"sha512"`
	Status int            `json:"status,omitempty"` // 403, 404 or 451 while blocked
	Reason string         `json:"reason,omitempty"`
	Lifted bool           `json:"lifted,omitempty"`
	Clock  dtfc.Timestamp `json:"clock"`
	Node   string         `json:"node"`
}

// Active reports whether the entry blocks its ID.
func (d Deny) Active() bool { return !d.Lifted }

// Newer orders two entries of one ID (last writer wins).
func (d Deny) Newer(o Deny) bool {
	return dtfc.State{Clock: d.Clock, Node: d.Node}.Newer(dtfc.State{Clock: o.Clock, Node: o.Node})
}

var bucketDeny = []byte("deny") // id -> JSON denyRecord

// denyRecord is the stored form of a deny entry: the entry and its place
// in the change feed. Deny entries travel in the feed with the states, so
// every peer's cursor says which of them it has accepted, and a lift is
// forgotten only once every peer has it (see PurgeLifts).
type denyRecord struct {
	Deny
	// Seq is the entry's change-feed sequence number.
	Seq uint64 `json:"seq,omitempty"`
}

// denyFeedKey is what the feed holds for a deny entry: 'D' and the ID (a
// state's feed entry is the bare 64-byte ID).
func denyFeedKey(id dtfc.ID) []byte { return append([]byte{'D'}, id[:]...) }

// denyCache mirrors the active blocks in memory: every read and upload
// checks it, and the list is small. It is replaced whole (copy on write)
// after each committed change.
type denyCache struct {
	m  atomic.Pointer[map[dtfc.ID]Deny]
	mu sync.Mutex // serialises writers of m
}

func (c *denyCache) get(id dtfc.ID) (Deny, bool) {
	m := c.m.Load()
	if m == nil {
		return Deny{}, false
	}
	d, ok := (*m)[id]
	return d, ok
}

// set records d's effect on the active blocks.
func (c *denyCache) set(d Deny) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var m map[dtfc.ID]Deny
	if old := c.m.Load(); old != nil {
		m = maps.Clone(*old)
	} else {
		m = map[dtfc.ID]Deny{}
	}
	if d.Active() {
		m[d.ID] = d
	} else {
		delete(m, d.ID)
	}
	c.m.Store(&m)
}

// loadDeny reads the active blocks at open. Entries written before deny
// entries entered the feed get a feed entry now, so they are offered to
// every peer once.
func (s *Store) loadDeny(tx *bolt.Tx) error {
	m := map[dtfc.ID]Deny{}
	b, feed := tx.Bucket(bucketDeny), tx.Bucket(bucketFeed)
	var migrate []denyRecord
	err := b.ForEach(func(k, v []byte) error {
		var d denyRecord
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("deny entry %x: %w", k, err)
		}
		if d.Active() {
			m[d.ID] = d.Deny
		}
		if d.Seq == 0 {
			migrate = append(migrate, d)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range migrate {
		seq, err := feed.NextSequence()
		if err != nil {
			return err
		}
		d.Seq = seq
		if err := feed.Put(u64(seq), denyFeedKey(d.ID)); err != nil {
			return err
		}
		v, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if err := b.Put(d.ID[:], v); err != nil {
			return err
		}
	}
	s.denied.m.Store(&m)
	return nil
}

// Denied returns the active block on id, if any.
func (s *Store) Denied(id dtfc.ID) (Deny, bool) { return s.denied.get(id) }

// checkDenied returns a *DeniedError if id is blocked.
func (s *Store) checkDenied(id dtfc.ID) error {
	if d, ok := s.denied.get(id); ok {
		return &DeniedError{Deny: d}
	}
	return nil
}

// DenyEntry returns the deny entry held for id, active or lifted.
func (s *Store) DenyEntry(id dtfc.ID) (Deny, bool, error) {
	d, ok, err := s.denyEntry(id)
	return d.Deny, ok, err
}

// denyEntry reads id's deny entry in its own read transaction.
func (s *Store) denyEntry(id dtfc.ID) (d denyRecord, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		d, ok, err = getDeny(tx.Bucket(bucketDeny), id)
		return err
	})
	return d, ok, err
}

func getDeny(b *bolt.Bucket, id dtfc.ID) (denyRecord, bool, error) {
	v := b.Get(id[:])
	if v == nil {
		return denyRecord{}, false, nil
	}
	var d denyRecord
	if err := json.Unmarshal(v, &d); err != nil {
		return d, false, fmt.Errorf("deny entry %s: %w", id, err)
	}
	return d, true, nil
}

// DenyList returns every entry, lifts included (kept until every peer has
// them, like tombstones), in ID order.
func (s *Store) DenyList() ([]Deny, error) {
	var out []Deny
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDeny).ForEach(func(_, v []byte) error {
			var d denyRecord
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out = append(out, d.Deny)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return string(out[i].ID[:]) < string(out[j].ID[:]) })
	return out, err
}

// DenyDigest summarises the deny list (entries and their clocks), so two
// nodes can tell in one comparison whether their lists agree.
func (s *Store) DenyDigest() (string, error) {
	list, err := s.DenyList()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, d := range list {
		h.Write(d.ID[:])
		var b [9]byte
		binary.BigEndian.PutUint64(b[:8], uint64(d.Clock))
		if d.Lifted {
			b[8] = 1
		}
		h.Write(b[:])
		h.Write([]byte(d.Node))
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// SetDeny records a block (or, with lifted, the lifting of one) decided on
// this node, with a fresh clock reading: after that of any state or deny
// entry of id refused as dated too far ahead (see ahead.go), which it may
// wait for.
func (s *Store) SetDeny(id dtfc.ID, status int, reason string, lifted bool) (Deny, error) {
	if err := s.afterAhead(id); err != nil {
		return Deny{}, err
	}
	d := Deny{ID: id, Status: status, Reason: reason, Lifted: lifted, Clock: s.clock.Now(), Node: s.node}
	if lifted {
		d.Status, d.Reason = 0, ""
	}
	_, err := s.applyDeny(d, false)
	return d, err
}

// ApplyDeny records an entry received from another node if it is newer
// than the one held for its ID, and reports whether it was. Applying an
// active block removes the blob's bytes: a delete with a fresh clock,
// newer than any upload this node has seen, which replicates like any
// delete. An entry whose clock is too far ahead is refused with a
// *ClockAheadError.
func (s *Store) ApplyDeny(d Deny) (bool, error) { return s.applyDenyFrom(d, false) }

// applyDenyFrom is ApplyDeny, or ApplyDenyKept with kept.
func (s *Store) applyDenyFrom(d Deny, kept bool) (bool, error) {
	if d.ID.IsZero() {
		return false, errors.New("blobstore: deny entry without an ID")
	}
	if err := s.checkClock(d.Clock); err != nil {
		return false, s.noteAheadIn(&s.aheadDeny, d.ID, err)
	}
	return s.applyDeny(d, kept)
}

// ApplyDenyKept is ApplyDeny for an entry a bucket keeps (the archive
// relay): a lift that is old news (see PruneForgotten) enters the memory
// of forgotten lifts rather than being ignored.
func (s *Store) ApplyDenyKept(d Deny) (bool, error) { return s.applyDenyFrom(d, true) }

func (s *Store) applyDeny(d Deny, kept bool) (bool, error) {
	leave, err := s.enter()
	if err != nil {
		return false, err
	}
	defer leave()
	s.clock.Observe(d.Clock)
	defer s.locks.lock(d.ID)()
	fx, aside, err := s.recordDeny(d, kept)
	if err != nil || fx == denyIgnored {
		return false, err
	}
	s.denied.set(d)
	return true, s.denyBytes(d, fx, aside)
}

// denyEffect is what recording a deny entry leaves to do with the bytes.
type denyEffect int

const (
	denyIgnored      denyEffect = iota // not newer than what is known
	denyRecorded                       // recorded; nothing for the bytes (a lift brings set-aside bytes back)
	denyRemoves                        // a block: the bytes go
	denySetsAside                      // a block older than the upload: the bytes join the copy already in unconfirmed/
	denySetsAsideNew                   // the same, into a new unconfirmed entry
)

// recordDeny records d if it is newer than the entry held, with what a
// block does to the record in the same transaction, and says what is left
// to do with the bytes. The caller holds d.ID's lock.
func (s *Store) recordDeny(d Deny, kept bool) (fx denyEffect, aside dtfc.State, err error) {
	forgotten := s.forgottenClock('D', d.ID)
	stale := d.Lifted && s.pastForgettingFor(d.ID, d.Clock)
	held := s.fileExists(d.ID)
	err = s.update(func(t *txn) error {
		fx = denyIgnored
		cur, ok, err := getDeny(t.deny, d.ID)
		if err != nil {
			return err
		}
		if ok && !d.Newer(cur.Deny) {
			return nil
		}
		if !ok && d.Clock <= forgotten {
			return nil // forgotten lately: nothing new
		}
		if !ok && stale {
			// A lift older than the memory of forgotten ones (see
			// PruneForgotten): from a peer, ignored; from a bucket,
			// entered in that memory, as if recorded and forgotten now.
			if kept {
				return t.remember('D', d.ID, d.Clock, d.Node)
			}
			return nil
		}
		var curp *denyRecord
		if ok {
			curp = &cur
		}
		if err := t.setDeny(curp, d); err != nil {
			return err
		}
		fx = denyRecorded
		if !d.Active() {
			return nil
		}
		// The block's delete commits with the block: no moment where the
		// block is recorded and the blob still live. It carries the
		// block's own clock and node, so every node derives the same
		// one, and it undoes only uploads older than the block.
		fx = denyRemoves
		rec, ok, err := t.get(d.ID)
		if err != nil || !ok || rec.Deleted {
			return err
		}
		// The block's tombstone replaces the record, even an upload newer
		// than the block (taken by a node that did not know of it): while
		// blocked, no node holds a live record of the ID, so that every
		// node derives the same state (the block's own clock and node)
		// and the replicas' digests agree.
		tomb := dtfc.State{ID: d.ID, Deleted: true, Clock: d.Clock, Node: d.Node}
		newer := !tomb.Newer(rec.State)
		if _, err := t.set(&rec, tomb, true); err != nil {
			return err
		}
		if !newer || !held {
			return nil
		}
		// That newer upload may be the only copy (the peers that knew
		// of the block refused it), and the block may have been lifted
		// meanwhile where this node has not heard yet. Its bytes leave
		// blobs/ (never served, pushed or offered while blocked) but are
		// set aside in unconfirmed/, dated by the upload's clock, and
		// come back with the lift (liftSetAside); a later delete removes
		// them.
		fx, aside = denySetsAside, rec.State
		if err := t.putAside(rec.State); err != nil {
			return err
		}
		ub := t.tx.Bucket(bucketUnconfirmed)
		if ub.Get(d.ID[:]) != nil {
			return nil // a copy set aside before, newer than the block: set kept it
		}
		fx = denySetsAsideNew
		return ub.Put(d.ID[:], encodeUnconfirmed(UnconfirmedBlob{
			ID: d.ID, Size: rec.Size, ContentType: rec.ContentType, Since: time.Now()}))
	})
	return fx, aside, err
}

// denyBytes does with d.ID's bytes what recording d left to do; aside is
// the upload whose bytes a block sets aside.
func (s *Store) denyBytes(d Deny, fx denyEffect, aside dtfc.State) error {
	switch {
	case fx == denyRemoves:
		return s.removeFile(d.ID)
	case fx == denySetsAside || fx == denySetsAsideNew:
		if fx == denySetsAsideNew {
			s.unconfirmed.Add(1)
			s.small.drop(d.ID)
			if err := s.moveAside(s.Path(d.ID), d.ID); err != nil {
				return err
			}
			s.access.forget(d.ID)
		} else if err := s.removeFile(d.ID); err != nil {
			return err // the same bytes are aside already
		}
		if s.fileStateClock(s.UnconfirmedPath(d.ID)) < aside.Clock {
			s.stampFile(s.UnconfirmedPath(d.ID), aside.Clock)
		}
		s.log.Warn("blocked an upload newer than the block (taken where the block was not known): its bytes are set aside in unconfirmed/ until a lift or a delete",
			"id", d.ID.String(), "block_clock", d.Clock.String(), "upload_clock", aside.Clock.String())
	case !d.Active():
		return s.liftSetAside(d.ID)
	}
	return nil
}

// liftSetAside puts back into blobs/ the bytes a block set aside (see
// recordDeny), once the block is lifted, as the upload they were, unless
// a delete newer than that upload came meanwhile (settleByRecord). The
// caller holds the ID's lock.
func (s *Store) liftSetAside(id dtfc.ID) error {
	_, ok, err := s.unconfirmedEntry(id)
	if err != nil || !ok {
		return err
	}
	rec, ok, err := s.record(id)
	if err != nil {
		return err
	}
	if !ok {
		// No record (the block's tombstone forgotten while the block
		// held): the unconfirmed pass, woken now, asks the peers, and
		// adopts the copy as the upload it was if none knows better.
		s.unconfirmedNews.Notify()
		return nil
	}
	_, err = s.settleByRecord(id, rec)
	return err
}

// PurgeLifts forgets lifted entries whose clock is before the horizon (the
// tombstone retention) and that forget allows, given their feed sequence
// number and clock: the caller holds back a lift that some peer has not
// accepted yet (a node that missed a lift and then met no trace of it would
// impose its stale block again). It returns how many it forgot.
func (s *Store) PurgeLifts(before dtfc.Timestamp, forget func(seq uint64, clock dtfc.Timestamp) bool) (int, error) {
	leave, err := s.enter()
	if err != nil {
		return 0, err
	}
	defer leave()
	list, err := s.DenyList()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range list {
		if !d.Lifted || d.Clock >= before {
			continue
		}
		// forget is asked outside any transaction (it may take the
		// caller's locks, and write): under the ID's lock, the entry read
		// now is the one the transaction removes.
		unlock := s.locks.lock(d.ID)
		var purged bool
		cur, ok, err := s.denyEntry(d.ID)
		if err == nil && ok && cur.Lifted && cur.Clock < before && forget(cur.Seq, cur.Clock) {
			purged = true
			err = s.update(func(t *txn) error {
				if err := t.removeDeny(&cur); err != nil {
					return err
				}
				return t.remember('D', cur.ID, cur.Clock, cur.Node)
			})
		}
		unlock()
		if err != nil {
			return n, err
		}
		if purged {
			n++
		}
	}
	return n, nil
}

// setDeny replaces the deny entry of d.ID (old, if any) with d, with a new
// feed sequence number.
func (t *txn) setDeny(old *denyRecord, d Deny) error {
	if old != nil {
		if err := t.unfeed(old.Seq); err != nil {
			return err
		}
	}
	seq, err := t.feed.NextSequence()
	if err != nil {
		return err
	}
	if err := t.feed.Put(u64(seq), denyFeedKey(d.ID)); err != nil {
		return err
	}
	t.lastSeq, t.feedChanged = seq, true
	if d.Clock > t.maxClock {
		t.maxClock = d.Clock
	}
	v, err := json.Marshal(denyRecord{Deny: d, Seq: seq})
	if err != nil {
		return err
	}
	return t.deny.Put(d.ID[:], v)
}

// removeDeny forgets a deny entry and its feed entry.
func (t *txn) removeDeny(old *denyRecord) error {
	if err := t.unfeed(old.Seq); err != nil {
		return err
	}
	return t.deny.Delete(old.ID[:])
}

// ForgetDenyEntry removes judged's deny entry without a trace (no lift
// is recorded, nothing replicates), if it is still the ID's entry: a
// block or lift made here since stays. It is for a node that learns it
// holds an entry the cluster lifted and forgot while it was away
// (package peer's resync). It reports whether it forgot.
func (s *Store) ForgetDenyEntry(judged Deny) (bool, error) {
	id := judged.ID
	leave, err := s.enter()
	if err != nil {
		return false, err
	}
	defer leave()
	defer s.locks.lock(id)()
	forgot := false
	err = s.update(func(t *txn) error {
		cur, ok, err := getDeny(t.deny, id)
		if err != nil || !ok {
			return err
		}
		if cur.Clock != judged.Clock || cur.Node != judged.Node {
			return nil
		}
		forgot = true
		return t.removeDeny(&cur)
	})
	if err != nil || !forgot {
		return false, err
	}
	s.denied.set(Deny{ID: id, Lifted: true})
	// The block may have set an upload aside: the lift it missed decides
	// it as a recorded lift would.
	return true, s.liftSetAside(id)
}
