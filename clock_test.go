package dtfc_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dtfc/dtfc"
)

// TestClockSaturates: a clock that observed the greatest timestamp keeps
// answering it instead of wrapping to zero (a state stamped 2^64-1 once
// made the next local upload carry clock 0, which every peer refused).
func TestClockSaturates(t *testing.T) {
	c := &dtfc.Clock{}
	c.Observe(dtfc.MaxTimestamp - 1)
	assert.Equal(t, dtfc.MaxTimestamp, c.Now())
	assert.Equal(t, dtfc.MaxTimestamp, c.Now(), "saturates")
	assert.Equal(t, dtfc.MaxTimestamp, c.Now())
}

// TestClockMonotonic: readings never go backwards when the wall clock
// steps back, and follow it again once it is ahead.
func TestClockMonotonic(t *testing.T) {
	wall := time.UnixMilli(1_800_000_000_000)
	c := &dtfc.Clock{Wall: func() time.Time { return wall }}
	a := c.Now()
	wall = wall.Add(-time.Hour)
	b := c.Now()
	assert.Greater(t, b, a)
	wall = wall.Add(2 * time.Hour)
	d := c.Now()
	assert.Equal(t, dtfc.TimestampAt(wall), d)
}

func TestTimestampAtBounds(t *testing.T) {
	assert.Equal(t, dtfc.Timestamp(0), dtfc.TimestampAt(time.Unix(-5, 0)))
	assert.Equal(t, dtfc.MaxTimestamp, dtfc.TimestampAt(time.Unix(1<<50, 0)))
	now := time.Now()
	assert.Equal(t, now.UnixMilli(), dtfc.TimestampAt(now).Time().UnixMilli())
}

func TestClockAhead(t *testing.T) {
	wall := time.UnixMilli(1_800_000_000_000)
	c := &dtfc.Clock{Wall: func() time.Time { return wall }}
	assert.Equal(t, time.Minute, c.Ahead(dtfc.TimestampAt(wall.Add(time.Minute))))
	assert.Less(t, c.Ahead(dtfc.TimestampAt(wall.Add(-time.Minute))), time.Duration(0))
}
