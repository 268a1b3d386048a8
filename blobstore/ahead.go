package blobstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
)

// A state refused because its clock is too far ahead (checkClock: a node
// whose clock runs ahead made it) is not forgotten at once: its sender
// offers it again until it is within MaxClockOffset and taken, and then
// it wins over every change dated before it. A change made here to the
// same ID in the meantime, after that state in real time (a delete by a
// node 6 s ahead, then an upload here a moment later), would be dated by
// this node's clock, before it, and be undone by it once taken: an
// acknowledged upload lost, or a delete undone. So the store keeps the
// clock of each such state, and a local change of that ID waits until
// the clock is within MaxClockOffset, observes it, and is dated after it
// (afterAhead). The same rule holds for membership changes
// (peer/members.go).

// aheadWait bounds how long a local change waits for a state dated ahead.
// A change of an ID with a state further ahead than MaxClockOffset plus
// this is refused (ErrAheadPending): dated before that state, it would be
// undone once the state is taken, when real time reaches it if the
// sender's clock is wrong, at the next exchange if this node's clock is
// behind.
const aheadWait = 10 * time.Second

// maxAhead bounds how many refused clocks are kept; a refused state is
// offered again, so one dropped is noted again at its next offer.
const maxAhead = 4096

// aheadClocks is, per ID, the newest clock of a state refused as too far
// ahead. Memory only: after a restart the senders offer them again.
type aheadClocks struct {
	mu sync.Mutex
	m  map[dtfc.ID]dtfc.Timestamp
}

// note keeps c for id if it is newer than the one kept.
func (a *aheadClocks) note(id dtfc.ID, c dtfc.Timestamp, within func(dtfc.Timestamp) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[dtfc.ID]dtfc.Timestamp{}
	}
	if old, ok := a.m[id]; ok && old >= c {
		return
	}
	if len(a.m) >= maxAhead {
		// Those within the offset now need no wait: drop them; if none
		// is, drop one at random (map order).
		for k, v := range a.m {
			if within(v) {
				delete(a.m, k)
			}
		}
		for k := range a.m {
			if len(a.m) < maxAhead {
				break
			}
			delete(a.m, k)
		}
	}
	a.m[id] = c
}

// get returns the clock kept for id.
func (a *aheadClocks) get(id dtfc.ID) (dtfc.Timestamp, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.m[id]
	return c, ok
}

// drop forgets the clock kept for id if it is still c (observed: the
// clock reads after it now).
func (a *aheadClocks) drop(id dtfc.ID, c dtfc.Timestamp) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m[id] <= c {
		delete(a.m, id)
	}
}

// noteAhead keeps the clock of a state of id that err refused as too far
// ahead (a *ClockAheadError), if it is one, and returns err naming id.
func (s *Store) noteAhead(id dtfc.ID, err error) error {
	return s.noteAheadIn(&s.ahead, id, err)
}

// noteAheadIn is noteAhead into a (states' or deny entries' clocks).
func (s *Store) noteAheadIn(a *aheadClocks, id dtfc.ID, err error) error {
	var ca *ClockAheadError
	if errors.As(err, &ca) {
		a.note(id, ca.Clock, func(c dtfc.Timestamp) bool { return s.clock.Ahead(c) <= s.opts.MaxClockOffset })
	}
	return fmt.Errorf("sha512 %s: %w", id, err)
}

// CheckClock refuses a state of id from elsewhere whose clock is further
// ahead of the wall clock than MaxClockOffset, as Apply would, and keeps
// that clock so that a change of id made here waits for it (afterAhead):
// for a layer that checks a state before it has what Apply needs (the
// archive relay, before it fetches the blob).
func (s *Store) CheckClock(id dtfc.ID, c dtfc.Timestamp) error {
	if err := s.checkClock(c); err != nil {
		return s.noteAhead(id, err)
	}
	return nil
}

// SeenRemote is told of a state of id a peer holds that this node acts
// on without taking it (a DELETE of an ID only a peer knows: the delete
// is recorded here): its clock is observed, as taking it would, so that
// the change made next is dated after it; one too far ahead is kept as a
// refused one is, for afterAhead to wait for. Without it, a node whose
// clock ran behind the uploader's dated the delete before the upload it
// had seen, and the upload, arriving later, undid the acknowledged delete
// (TestDeleteOfUploadSeenOnlyAtAPeer).
func (s *Store) SeenRemote(id dtfc.ID, c dtfc.Timestamp) {
	if err := s.checkClock(c); err != nil {
		_ = s.noteAhead(id, err)
		return
	}
	s.clock.Observe(c)
}

// afterAhead makes a change of id about to be made here (an upload, a
// delete, a block or a lift) dated after a state or deny entry of id
// refused as too far ahead: it waits until that clock is within
// MaxClockOffset (for at most aheadWait), and observes it, so that the
// change's clock, read after, is greater. Both kinds count for every
// change: a block dated ahead and taken after an upload made here
// meanwhile would delete that upload rather than set it aside for its
// lift (TestUploadAfterSkewedBlock). Called before the ID's lock is
// taken: the wait holds nothing.
//
// A clock too far ahead to wait for refuses the change (ErrAheadPending),
// and stays kept: dated before that state, the change would be
// acknowledged and then undone by it. If this node's clock is the wrong
// one (behind), at once: a delete or upload made here after one made
// elsewhere was lost to it (TestClockBehindNodeRefusesChanges; *changed
// on 2026-12-07*: the change went ahead).
func (s *Store) afterAhead(id dtfc.ID) error {
	c, ok := s.ahead.get(id)
	if d, dok := s.aheadDeny.get(id); dok && (!ok || d > c) {
		c, ok = d, true
	}
	if !ok {
		return nil
	}
	err := s.clock.AwaitWithin(context.Background(), c, s.opts.MaxClockOffset, aheadWait)
	if err != nil {
		ahead := s.clock.Ahead(c).Round(time.Millisecond)
		s.log.Warn("refused a change: a state of the same ID is dated too far ahead of this node's clock to wait for",
			"id", id.String(), "clock", c.Time().UTC().Format(time.RFC3339Nano), "ahead", ahead)
		return fmt.Errorf("%w: a state of %s made elsewhere is dated %s ahead of this node's clock (max_clock_offset %s); a change made here now would be dated before it and undone by it. Set the clocks right (this node's, or the other node's), or make the change on the node that holds that state",
			ErrAheadPending, id, ahead, s.opts.MaxClockOffset)
	}
	s.ahead.drop(id, c)
	s.aheadDeny.drop(id, c)
	return nil
}
