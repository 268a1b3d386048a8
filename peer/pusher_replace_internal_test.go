package peer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// TestReplacedPusherWaitsForTheOld: follow cancelled the pusher of a
// replaced remote and started the new one at once; a round of the old
// one ending late (its context cancelled, its await going on) wrote the
// cursor past the new one's rewind, with the floor already cleared, and
// the uploads skipped for a promoted cache counted as held (found by a
// review helper, driving the two pushers' steps by hand). Now the new
// pusher of a URL reads its cursor only once the old one's run returned.
func TestReplacedPusherWaitsForTheOld(t *testing.T) {
	c, _ := newLoneCluster(t)
	const url = "http://n.invalid"
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var started []*pusher
	start := func(ctx context.Context, r *remote, cancel context.CancelFunc, after <-chan struct{}) *pusher {
		p := newPusher(c, r, cancel)
		p.after = after
		started = append(started, p)
		return p
	}
	c.setPeers([]Peer{{URL: url, Role: RoleCache}})
	c.pushers.follow(ctx, c.mem.Load(), start)
	c.setPeers([]Peer{{URL: url, Role: RoleReplica}})
	c.pushers.follow(ctx, c.mem.Load(), start)
	require.Len(t, started, 2)
	old, np := started[0], started[1]
	require.True(t, np.after == (<-chan struct{})(old.done), "the new pusher waits for the old one")

	// Stopped while the old one still runs: it never read the cursor.
	over, stop := context.WithCancel(ctx)
	stop()
	np.run(over)
	assert.False(t, np.loaded.Load(), "the cursor was read before the old pusher's run returned")

	// Once the old run returned, a new pusher reads it at once.
	np2 := newPusher(c, np.r, nil)
	np2.after = old.done
	close(old.done)
	ran := make(chan struct{})
	go func() { np2.run(ctx); close(ran) }()
	require.Eventually(t, np2.loaded.Load, 5*time.Second, time.Millisecond)
	cancel()
	<-ran
}

// TestCursorOfUsesTheListInForce: between setPeers (a cache
// promoted to replica in the list: a new remote) and pusherLoop's
// follow, pushers.get(url) returns the old pusher, whose remote still
// says cache. cursorOf then does not clamp at the skipped floor, while
// replicaPeers already lists the URL as a replica: replicaAcked counts
// the promoted node as holding the uploads skipped for it, and a cache
// evicting in that window dropped them (found by a review helper).
func TestCursorOfUsesTheListInForce(t *testing.T) {
	c, store := newLoneCluster(t)
	const url = "http://n.invalid"
	var ids []dtfc.ID
	for i := range 3 {
		ids = append(ids, putBytes(t, store, fmt.Appendf(nil, "upload %d", i)))
	}
	c.setPeers([]Peer{{URL: url, Role: RoleCache}})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var p1 *pusher
	c.pushers.follow(ctx, c.mem.Load(), func(ctx context.Context, r *remote, cancel context.CancelFunc, _ <-chan struct{}) *pusher {
		p1 = newPusher(c, r, cancel)
		p1.load()
		return p1
	})
	require.NotNil(t, p1)
	require.Nil(t, p1.step(ctx), "the three uploads passed (N is a cache): no request")
	require.Equal(t, uint64(0), p1.skipped.Load())
	require.Equal(t, uint64(0), c.replicaAcked(), "no replica")

	// The operator promotes N: the list names it a replica. setPeers
	// makes a new remote; follow has not run yet.
	c.setPeers([]Peer{{URL: url, Role: RoleReplica}})
	require.Len(t, c.replicaPeers(), 1, "N counts as a replica at once")
	assert.Equal(t, uint64(0), c.replicaAcked(),
		"replicaAcked counts the promoted N as holding the %d uploads skipped for it (cursorOf read the old pusher's remote role: cache)", len(ids))
	cancel()
	c.pushers.follow(ctx, &membership{}, nil)
}
