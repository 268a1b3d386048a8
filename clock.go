package dtfc

import (
	"fmt"
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

// TimestampAt returns the smallest Timestamp of wall-clock time tm.
func TimestampAt(tm time.Time) Timestamp { return Timestamp(uint64(tm.UnixMilli()) << logicalBits) }

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
// returned or observed.
func (c *Clock) Now() Timestamp {
	w := c.wall()
	c.mu.Lock()
	defer c.mu.Unlock()
	if w > c.last {
		c.last = w
	} else {
		c.last++
	}
	return c.last
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
