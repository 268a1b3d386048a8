package dtfc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Timestamp is a hybrid logical clock reading: the upper 48 bits are Unix
// milliseconds, the lower 16 bits a logical counter that orders events
// within one millisecond or after the wall clock stepped back. Timestamps
// from different nodes compare meaningfully as long as the nodes' wall
// clocks are roughly synchronised, and a node never issues a Timestamp lower
// than one it has seen.
type Timestamp uint64

const logicalBits = 16

// Time returns the wall-clock part of t.
func (t Timestamp) Time() time.Time { return time.UnixMilli(int64(t >> logicalBits)) }

// String formats t as "<RFC 3339 time>+<logical counter>".
func (t Timestamp) String() string {
	return fmt.Sprintf("%s+%d", t.Time().UTC().Format(time.RFC3339Nano), uint64(t)&(1<<logicalBits-1))
}

// MaxTimestamp is the greatest Timestamp. A clock that reaches it stays
// there: it saturates rather than wrap to zero.
const MaxTimestamp Timestamp = math.MaxUint64

// TimestampAt returns the smallest Timestamp of wall-clock time tm. Times
// before 1970 give 0; times beyond what 48 bits of milliseconds hold
// (the year 10889) give MaxTimestamp.
func TimestampAt(tm time.Time) Timestamp {
	ms := tm.UnixMilli()
	switch {
	case ms <= 0:
		return 0
	case ms >= 1<<(64-logicalBits):
		return MaxTimestamp
	}
	return Timestamp(uint64(ms) << logicalBits)
}

// Clock is a hybrid logical clock. Its zero value is ready to use and reads
// the system wall clock.
type Clock struct {
	// Wall returns the current time. If nil, it defaults to time.Now.
	Wall func() time.Time

	mu   sync.Mutex
	last Timestamp
}

func (c *Clock) wall() Timestamp {
	if c.Wall != nil {
		return TimestampAt(c.Wall())
	}
	return TimestampAt(time.Now())
}

// Now returns a Timestamp greater than every Timestamp this clock has
// returned or observed, or, once the clock has reached MaxTimestamp,
// MaxTimestamp again: it never wraps and never goes backwards.
func (c *Clock) Now() Timestamp {
	w := c.wall()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case w > c.last:
		c.last = w
	case c.last < MaxTimestamp:
		c.last++
	}
	return c.last
}

// WallNow returns the current reading of the clock's wall clock, without
// moving the clock.
func (c *Clock) WallNow() Timestamp { return c.wall() }

// Ahead reports by how much t is ahead of the wall clock (zero or
// negative if it is not).
func (c *Clock) Ahead(t Timestamp) time.Duration {
	return t.Time().Sub(c.wall().Time())
}

// ErrFarAhead is AwaitWithin's answer for a Timestamp too far ahead to
// wait for.
var ErrFarAhead = errors.New("dtfc: timestamp too far ahead to wait for")

// AwaitWithin waits until t is at most offset ahead of the wall clock,
// then observes it, so that the next readings of this clock are greater
// than t. It is how a change made here after seeing a record dated ahead
// (by a node whose clock runs ahead, refused for now) is dated after that
// record rather than before it. It waits for at most max: a t further
// ahead answers ErrFarAhead at once, and a wall clock that does not catch
// up within max answers it then. ctx ends the wait early.
func (c *Clock) AwaitWithin(ctx context.Context, t Timestamp, offset, max time.Duration) error {
	deadline := time.Now().Add(max)
	for {
		wait := c.Ahead(t) - offset
		if wait <= 0 {
			c.Observe(t)
			return nil
		}
		left := time.Until(deadline)
		if wait > max || left <= 0 {
			return ErrFarAhead
		}
		timer := time.NewTimer(min(wait, left) + time.Millisecond)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
}

// Observe records a Timestamp seen on another node, so that later readings
// of this clock are greater than it.
func (c *Clock) Observe(t Timestamp) {
	c.mu.Lock()
	if t > c.last {
		c.last = t
	}
	c.mu.Unlock()
}

// Last returns the greatest Timestamp issued or observed so far.
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
