package peer

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// TestPushLooksAheadInOrder: with a full round on its way, the next one
// is offered before the first is answered; but the cursor moves in
// order: when a change of the first round is refused, it stops before
// that change, whatever the peer took of the next round, which is
// offered again (and then the cursor passes all of it).
func TestPushLooksAheadInOrder(t *testing.T) {
	c, store := newLoneCluster(t)
	// Deletes: states without bytes, so that the peer is only offered.
	n := 2*pushBatch + 10
	clock := dtfc.TimestampAt(time.Now().Add(-time.Minute))
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := dtfc.Sum([]byte{byte(i), byte(i >> 8), 'x'})
			_, err := store.Apply(dtfc.State{ID: id, Deleted: true, Clock: clock + dtfc.Timestamp(i), Node: "peer"})
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	changes, err := store.Changes(0, n+1)
	require.NoError(t, err)
	require.Len(t, changes, n)
	refused := changes[100].State.ID // in the first round

	var mu sync.Mutex
	offers := 0
	refuse := true
	second := make(chan struct{}) // closed when a second offer came
	fake := &fakeNode{t: t,
		OfferFunc: func(ctx context.Context, req changesRequest) (changesAnswer, error) {
			mu.Lock()
			offers++
			first := offers == 1
			if offers == 2 {
				close(second)
			}
			mu.Unlock()
			if first {
				// The first round is answered only once the next one
				// was offered: the look-ahead.
				select {
				case <-second:
				case <-time.After(10 * time.Second):
					t.Error("the next round was not offered while the first was on its way")
				}
			}
			ans := changesAnswer{Results: make([]string, len(req.Changes))}
			for i, st := range req.Changes {
				ans.Results[i] = resultOK
				mu.Lock()
				if st.ID == refused && refuse {
					ans.Results[i] = resultAhead
				}
				mu.Unlock()
			}
			return ans, nil
		},
	}
	r := newRemoteNode(Peer{URL: "http://fake.invalid", Role: RoleReplica}, fake, store.NodeID(), nil)
	p := newPusher(c, r, nil)
	p.load()
	defer p.drain()

	wait := p.step(t.Context())
	require.NotNil(t, wait, "the refusal fails the push (and backs off)")
	assert.Equal(t, 1, p.failures)
	assert.Nil(t, p.inflight, "the round after the refusal was waited for and dropped")
	assert.Equal(t, changes[99].Seq, p.next, "the cursor stops before the refused change")
	assert.Equal(t, changes[99].Seq, c.storedCursor(r.URL))

	mu.Lock()
	refuse = false
	mu.Unlock()
	for range 10 {
		if p.next == changes[n-1].Seq {
			break
		}
		p.step(t.Context())
	}
	assert.Equal(t, changes[n-1].Seq, p.next, "then the cursor passes everything")
	assert.Equal(t, changes[n-1].Seq, c.storedCursor(r.URL))
	assert.Zero(t, p.failures)
}
