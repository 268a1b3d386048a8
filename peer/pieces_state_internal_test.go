package peer

import (
	"runtime"
	"testing"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestPiecesStateIsBounded: a transfer in pieces makes its pieces as
// the window moves; it made one for every 4 MiB of the blob up front
// (20 MB for 1 TiB: a review found it on 2026-12-07), though only
// pieceWindow (16) past the prefix can ever be in flight.
func TestPiecesStateIsBounded(t *testing.T) {
	store, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	w, err := store.NewWriter(blobstore.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	alloc := func(size int64) uint64 {
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		s := newPieces(dtfc.ID{}, w, size)
		runtime.ReadMemStats(&b)
		runtime.KeepAlive(s)
		return b.TotalAlloc - a.TotalAlloc
	}
	small, large := alloc(64<<20), alloc(1<<40)
	t.Logf("transfer state of a 64 MiB blob: %d bytes; of a 1 TiB blob: %d bytes", small, large)
	if large > 1<<20 {
		t.Errorf("the state of a transfer in pieces of a 1 TiB blob takes %d bytes (%d for 64 MiB): it grows with the blob", large, small)
	}
}
