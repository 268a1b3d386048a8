// Package sleep waits for a while, or until a context ends: the timer and
// select every background loop writes, written once.
package sleep

import (
	"context"
	"time"
)

// For waits for d, or until ctx ends: then it returns ctx.Err() (which is
// also what it returns, at random, when both happen at once, as with a d
// of 0 and an ended ctx). It returns nil after the full wait.
func For(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
