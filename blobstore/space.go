package blobstore

import (
	"fmt"

	"github.com/dtfc/dtfc/internal/diskspace"
)

// spareBytes is kept free beyond an incoming blob: metadata commits need
// room too.
const spareBytes = 256 << 10

// Free returns the bytes available to this process on the store's
// filesystem, and its total size.
func (s *Store) Free() (avail, total uint64, err error) { return diskspace.Of(s.tmpDir) }

// checkSpace refuses a blob of known size that cannot fit, before a byte
// is written: a node whose disk is full must not fill it again with every
// retry of a transfer that can never succeed.
func (s *Store) checkSpace(size int64) error {
	if size <= 0 {
		return nil
	}
	avail, _, err := s.Free()
	if err != nil {
		return nil // cannot tell: let the write find out
	}
	if uint64(size)+spareBytes > avail {
		return fmt.Errorf("%w: %d bytes do not fit in the %d available", ErrNoSpace, size, avail)
	}
	return nil
}
