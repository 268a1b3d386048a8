package blobstore

import (
	"sync"

	"github.com/dtfc/dtfc"
)

// keyLock serialises operations on one ID while letting different IDs
// proceed in parallel. Striped locks would make unrelated uploads wait for
// each other's metadata commits and so defeat commit batching.
type keyLock struct {
	mu sync.Mutex
	m  map[dtfc.ID]*keyLockEntry
}

type keyLockEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyLock) lock(id dtfc.ID) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[dtfc.ID]*keyLockEntry)
	}
	e := k.m[id]
	if e == nil {
		e = &keyLockEntry{}
		k.m[id] = e
	}
	e.refs++
	k.mu.Unlock()

	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.m, id)
		}
		k.mu.Unlock()
	}
}
