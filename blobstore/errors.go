package blobstore

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/dtfc/dtfc"
)

var (
	// ErrNotFound means the node holds no bytes for the ID (it may hold a
	// tombstone: see Store.Stat).
	ErrNotFound = errors.New("blobstore: not found")
	// ErrDigestMismatch means the bytes did not hash to the expected ID;
	// nothing was stored.
	ErrDigestMismatch = errors.New("blobstore: content does not match its SHA-512")
	// ErrTooLarge means the bytes exceeded the configured size limit;
	// nothing was stored.
	ErrTooLarge = errors.New("blobstore: too large")
	// ErrNoSpace means the disk is full; nothing was stored.
	ErrNoSpace = errors.New("blobstore: no space left on device")
	// ErrClosed means the Store was closed.
	ErrClosed = errors.New("blobstore: closed")
	// ErrDenyUnknown means the store takes no upload yet: its metadata
	// was rebuilt (or started afresh) and it has not yet learned the
	// blocks its peers hold (see Store.DenyKnown); nothing was stored.
	ErrDenyUnknown = errors.New("blobstore: this node's metadata was rebuilt and it has not yet learned its peers' blocks; retry in a few seconds")
	// ErrAheadPending means a change made here was refused, nothing
	// stored: a state of its ID from elsewhere is dated too far ahead of
	// this node's clock to wait for, and the change, dated before it,
	// would be undone by it (see Store.afterAhead).
	ErrAheadPending = errors.New("blobstore: refused for now")
	// ErrStale means a remote state lost to the local one under the
	// last-writer-wins rule and was not applied.
	ErrStale = errors.New("blobstore: state is older than the local one")
	// ErrModified means a conditional delete found the blob uploaded
	// again after the time it was given; nothing was deleted.
	ErrModified = errors.New("blobstore: uploaded again since")
)

// ErrClockAhead means a remote state (or deny entry) carries a clock
// further ahead of this node's wall clock than Options.MaxClockOffset
// allows: nothing of it was applied and the local clock did not move.
// Errors wrapping it are *ClockAheadError.
var ErrClockAhead = errors.New("blobstore: clock too far ahead")

// ClockAheadError tells how far ahead a refused clock was.
type ClockAheadError struct {
	Clock dtfc.Timestamp
	// Ahead is how far the clock is ahead of the wall clock; Max is the
	// offset allowed.
	Ahead, Max time.Duration
}

func (e *ClockAheadError) Error() string {
	return fmt.Sprintf("blobstore: clock %s is %s ahead of this node's wall clock (max_clock_offset %s)",
		e.Clock, e.Ahead.Round(time.Millisecond), e.Max)
}

// Is makes errors.Is(err, ErrClockAhead) true.
func (e *ClockAheadError) Is(target error) bool { return target == ErrClockAhead }

// MismatchError describes a digest mismatch. It matches ErrDigestMismatch
// with errors.Is.
type MismatchError struct {
	Want, Got dtfc.ID
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("blobstore: content hashes to %s, not %s", e.Got, e.Want)
}

// Is makes errors.Is(err, ErrDigestMismatch) true.
func (e *MismatchError) Is(target error) bool { return target == ErrDigestMismatch }

// diskErr classifies an I/O error: a full disk (or quota) becomes ErrNoSpace
// so callers can tell it from other failures.
func diskErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("blobstore: %s: %w: %w", op, ErrNoSpace, err)
	}
	return fmt.Errorf("blobstore: %s: %w", op, err)
}
