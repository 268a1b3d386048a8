package blobstore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"

	"github.com/golang/groupcache/lru"

	"github.com/dtfc/dtfc"
)

// smallCache keeps the bytes of small, recently read blobs in memory. A
// cache of bytes is a cache of trust: an entry is added only after its
// bytes hashed to the ID (a blob corrupted on disk must never be served
// from memory after the scrubber repaired its file), and every path that
// removes, quarantines or replaces a blob's file drops it. Whether the
// blob is still present is decided by its record on every read.
type smallCache struct {
	mu    sync.Mutex
	lru   *lru.Cache // not safe for concurrent use: guarded by mu
	bytes int64
	max   int64
}

func newSmallCache(max int64) *smallCache {
	c := &smallCache{lru: lru.New(0), max: max}
	c.lru.OnEvicted = func(_ lru.Key, v any) { c.bytes -= int64(len(v.([]byte))) }
	return c
}

func (c *smallCache) get(id dtfc.ID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.lru.Get(id)
	if !ok {
		return nil, false
	}
	return v.([]byte), true
}

func (c *smallCache) add(id dtfc.ID, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.lru.Get(id); ok {
		return
	}
	c.lru.Add(id, b)
	c.bytes += int64(len(b))
	for c.bytes > c.max {
		c.lru.RemoveOldest()
	}
}

func (c *smallCache) drop(id dtfc.ID) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.lru.Remove(id)
	c.mu.Unlock()
}

// ReadOrOpen returns the state of id and either its bytes, if the blob
// is at most limit bytes (from memory when recently read; callers must
// not modify them), or else its file, opened as Open would: a hit reads
// the blob's record once, whatever its size. It returns ErrNotFound like
// Open. Bytes read from disk are hashed first: a blob whose file does not
// hash to its ID is quarantined (as the scrubber would) and answered
// ErrNotFound, so the caller fetches it again from a peer rather than
// serve it.
func (s *Store) ReadOrOpen(id dtfc.ID, limit int64) (dtfc.State, []byte, *Blob, error) {
	rec, ok, err := s.lookup(id)
	if err != nil {
		return dtfc.State{}, nil, nil, err
	}
	if !ok || rec.Deleted || rec.Evicted {
		return dtfc.State{}, nil, nil, ErrNotFound
	}
	if rec.Size > limit || s.small == nil {
		b, err := s.openRecord(id, rec, true)
		if err != nil {
			return dtfc.State{}, nil, nil, err
		}
		return rec.State, nil, b, nil
	}
	b, err := s.readSmall(id, rec)
	if err != nil {
		return dtfc.State{}, nil, nil, err
	}
	return rec.State, b, nil, nil
}

// readSmall returns the bytes of id, whose live record rec was just read
// and says it is small.
func (s *Store) readSmall(id dtfc.ID, rec record) ([]byte, error) {
	if s.opts.TrackAccess {
		s.access.hold(id, true, true)()
	}
	if b, ok := s.small.get(id); ok && int64(len(b)) == rec.Size {
		return b, nil
	}
	f, err := s.openBlob(id)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("blobstore: open %s: %w", id, err)
	}
	defer f.Close()
	b := make([]byte, rec.Size+1)
	n, err := io.ReadFull(f, b)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("blobstore: read %s: %w", id, err)
	}
	b = b[:n]
	if int64(n) != rec.Size || dtfc.Sum(b) != id {
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("blobstore: stat %s: %w", id, err)
		}
		if err := s.quarantine(rec.State, fi, "read", nil); err != nil {
			return nil, err
		}
		return nil, ErrNotFound
	}
	s.small.add(id, b)
	return b, nil
}
