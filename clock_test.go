package dtfc_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

// TestAwaitWithin: a timestamp within the offset is observed at once; one
// a little further ahead is waited for, then observed; one further ahead
// than the wait allowed answers ErrFarAhead at once; the context ends a
// wait.
func TestAwaitWithin(t *testing.T) {
	var c dtfc.Clock
	const offset = time.Second
	near := dtfc.TimestampAt(time.Now().Add(offset / 2))
	require.NoError(t, c.AwaitWithin(t.Context(), near, offset, time.Second))
	assert.Greater(t, c.Now(), near)

	ahead := dtfc.TimestampAt(time.Now().Add(offset + 200*time.Millisecond))
	require.NoError(t, c.AwaitWithin(t.Context(), ahead, offset, time.Second))
	assert.LessOrEqual(t, c.Ahead(ahead), offset, "observed before it came within the offset")
	assert.Greater(t, c.Now(), ahead)

	far := dtfc.TimestampAt(time.Now().Add(time.Hour))
	begin := time.Now()
	assert.ErrorIs(t, c.AwaitWithin(t.Context(), far, offset, time.Second), dtfc.ErrFarAhead)
	assert.Less(t, time.Since(begin), 900*time.Millisecond, "waited for a timestamp beyond the bound")
	assert.Less(t, c.Now(), far, "a timestamp not waited for moved the clock")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	assert.ErrorIs(t, c.AwaitWithin(ctx, dtfc.TimestampAt(time.Now().Add(offset+500*time.Millisecond)), offset, time.Second), context.Canceled)
}
