package blobstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

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

var bucketDeny = []byte("deny") // id -> JSON Deny

// denyCache mirrors the active blocks in memory: every read and upload
// checks it, and the list is small. Its version counts changes to the
// list, for the pushers.
type denyCache struct {
	m       atomic.Pointer[map[dtfc.ID]Deny]
	version atomic.Uint64
	mu      sync.Mutex
	ch      chan struct{}
}

// changed returns a channel closed at the next change of the list.
func (c *denyCache) changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

func (c *denyCache) bump() {
	c.version.Add(1)
	c.mu.Lock()
	if c.ch != nil {
		close(c.ch)
	}
	c.ch = make(chan struct{})
	c.mu.Unlock()
}

// DenyVersion counts changes to the deny list since the store opened (1
// at open if the list is not empty, so that it is offered to peers once).
func (s *Store) DenyVersion() uint64 { return s.denied.version.Load() }

// DenyChanged returns a channel closed at the next change of the deny
// list. Take it before reading DenyVersion.
func (s *Store) DenyChanged() <-chan struct{} { return s.denied.changed() }

func (c *denyCache) get(id dtfc.ID) (Deny, bool) {
	m := c.m.Load()
	if m == nil {
		return Deny{}, false
	}
	d, ok := (*m)[id]
	return d, ok
}

func (s *Store) loadDeny(tx *bolt.Tx) error {
	m := map[dtfc.ID]Deny{}
	empty := true
	err := tx.Bucket(bucketDeny).ForEach(func(k, v []byte) error {
		empty = false
		var d Deny
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("deny entry %x: %w", k, err)
		}
		if d.Active() {
			m[d.ID] = d
		}
		return nil
	})
	s.denied.m.Store(&m)
	if !empty && s.denied.version.Load() == 0 {
		s.denied.version.Store(1)
	}
	return err
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

// DenyList returns every entry, lifts included (they are kept for the
// tombstone retention, like deletes), in ID order.
func (s *Store) DenyList() ([]Deny, error) {
	var out []Deny
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDeny).ForEach(func(_, v []byte) error {
			var d Deny
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out = append(out, d)
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
// this node, with a fresh clock reading.
func (s *Store) SetDeny(id dtfc.ID, status int, reason string, lifted bool) (Deny, error) {
	d := Deny{ID: id, Status: status, Reason: reason, Lifted: lifted, Clock: s.clock.Now(), Node: s.node}
	if lifted {
		d.Status, d.Reason = 0, ""
	}
	_, err := s.ApplyDeny(d)
	return d, err
}

// ApplyDeny records an entry if it is newer than the one held for its ID
// and reports whether it was. Applying an active block removes the blob's
// bytes: a delete with a fresh clock, newer than any upload this node has
// seen, which replicates like any delete.
func (s *Store) ApplyDeny(d Deny) (bool, error) {
	if d.ID.IsZero() {
		return false, errors.New("blobstore: deny entry without an ID")
	}
	leave, err := s.enter()
	if err != nil {
		return false, err
	}
	defer leave()
	s.clock.Observe(d.Clock)
	defer s.locks.lock(d.ID)()
	var applied bool
	err = s.update(func(t *txn) error {
		b := t.tx.Bucket(bucketDeny)
		applied = false
		if v := b.Get(d.ID[:]); v != nil {
			var cur Deny
			if err := json.Unmarshal(v, &cur); err != nil {
				return err
			}
			if !d.Newer(cur) {
				return nil
			}
		}
		v, err := json.Marshal(d)
		if err != nil {
			return err
		}
		applied = true
		return b.Put(d.ID[:], v)
	})
	if err != nil || !applied {
		return applied, err
	}
	if err := s.db.View(s.loadDeny); err != nil {
		return true, err
	}
	s.denied.bump()
	if d.Active() {
		rec, ok, err := s.record(d.ID)
		if err != nil {
			return true, err
		}
		if ok && !rec.Deleted {
			st := dtfc.State{ID: d.ID, Deleted: true, Clock: s.clock.Now(), Node: s.node}
			if err := s.setState(st, true); err != nil {
				return true, err
			}
		}
		if err := s.removeFile(d.ID); err != nil {
			return true, err
		}
		s.small.drop(d.ID)
	}
	return true, nil
}

// PurgeLifts forgets lifted entries older than the horizon (the tombstone
// retention), as deletes are forgotten.
func (s *Store) PurgeLifts(before dtfc.Timestamp) (int, error) {
	list, err := s.DenyList()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range list {
		if !d.Lifted || d.Clock >= before {
			continue
		}
		err := s.update(func(t *txn) error { return t.tx.Bucket(bucketDeny).Delete(d.ID[:]) })
		if err != nil {
			return n, err
		}
		n++
	}
	if n > 0 {
		s.denied.bump()
	}
	return n, nil
}
