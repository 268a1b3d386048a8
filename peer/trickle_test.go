package peer_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dtfc/dtfc/peer"
)

// trickle sends the first n bytes of every blob body it serves to
// peers at once, then one byte a second: a holder that never stops
// answering for stallTimeout (15 s), yet moves nothing. Closing stop
// aborts its answers.
func trickle(n int64, stop chan struct{}) func(http.Handler) http.Handler {
	return blobAnswersAfter(n, func(w http.ResponseWriter, r *http.Request, p []byte) (int, error) {
		for i := range p {
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return i, r.Context().Err()
			case <-stop:
				panic(http.ErrAbortHandler)
			}
			if _, err := w.Write(p[i : i+1]); err != nil {
				return i, err
			}
			if err := http.NewResponseController(w).Flush(); err != nil {
				return i, err
			}
		}
		return len(p), nil
	})
}

// TestTricklingHolderLosesItsPiece: a 20 MiB miss goes in pieces from a
// fast holder and one that trickles a byte a second after its first MiB,
// which its stall watch never cuts (a byte comes well within
// stallTimeout). The fast holder, done with every other piece and left
// waiting for stallTimeout, ends the trickler's worker (at its rate the
// piece would take far longer than twice stallTimeout) and finishes its
// piece from where it was. A review found on 2026-12-07 that nothing did:
// the prefix, the readers, the slot and the transfer waited for good.
func TestTricklingHolderLosesItsPiece(t *testing.T) {
	t.Cleanup(peer.SetStallTimeout(2 * time.Second))
	stop := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(stop) }) }
	t.Cleanup(release)
	_, slow, reader := missFromTwoHolders(t, nil, trickle(1<<20, stop))
	// Dropped from this transfer, not marked down: slow is no fault
	// (TestEquallySlowHoldersStayUp).
	for _, p := range reader.status().Cluster.Peers {
		if p.URL == slow.URL {
			assert.True(t, p.Up, "the trickler is marked down: %q", p.LastError)
		}
	}
}
