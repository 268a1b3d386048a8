package peer_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAntiEntropyRoundPullsAll: one round pulls every blob the peer has
// and this node lacks, bytes included, before it returns: the round's
// pulls outlive the comparisons that scheduled them (a bug of the first
// parallel comparison cancelled the pulls still running when the last
// range was compared).
func TestAntiEntropyRoundPullsAll(t *testing.T) {
	a := newNode(t, nodeOpts{})
	a.writePeers()
	a.start()
	const files = 500
	for i := range files {
		a.put(randomBytes(t, 2000+i))
	}
	joiner := newNode(t, nodeOpts{})
	joiner.writePeers() // no round at its start: the peer comes below
	joiner.start()
	joiner.writePeers(a)
	code, body := refresh(t, joiner)
	require.Equal(t, 200, code, body)

	require.Equal(t, 1, joiner.Cluster.AntiEntropy(context.Background()))
	blobs, _ := joiner.Store.Stats()
	require.Equal(t, int64(files), blobs, "one round pulled every blob")
}
