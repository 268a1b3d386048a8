package peer

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

func fivePeers() []Peer {
	var ps []Peer
	for i := 1; i <= 5; i++ {
		ps = append(ps, Peer{URL: fmt.Sprintf("http://10.0.0.%d:8080", i), Role: RoleReplica})
	}
	return ps
}

func randomID(t testing.TB) dtfc.ID {
	var id dtfc.ID
	_, err := rand.Read(id[:])
	require.NoError(t, err)
	return id
}

// TestRingSpread checks that five peers' shares of random keys are within
// 5% of each other (max/min), the bound the issue sets.
func TestRingSpread(t *testing.T) {
	r := NewRing(fivePeers())
	counts := map[string]int{}
	const n = 500_000
	for range n {
		counts[r.Owner(randomID(t))]++
	}
	require.Len(t, counts, 5)
	lo, hi := n, 0
	for _, c := range counts {
		lo, hi = min(lo, c), max(hi, c)
	}
	ratio := float64(hi) / float64(lo)
	t.Logf("shares over %d keys: %v; max/min = %.4f", n, counts, ratio)
	assert.Less(t, ratio, 1.05)
}

func TestRingCandidates(t *testing.T) {
	peers := append(fivePeers(), Peer{URL: "http://cache:8080", Role: RoleCache})
	r := NewRing(peers)
	id := randomID(t)
	c := r.Candidates(id)
	require.Len(t, c, 6)
	assert.Equal(t, r.Owner(id), c[0], "owner first")
	assert.Equal(t, "http://cache:8080", c[5], "caches last")
	seen := map[string]bool{}
	for _, p := range c {
		assert.False(t, seen[p], "no duplicates")
		seen[p] = true
	}
	// Deterministic: another ring from the same list (in another order)
	// gives the same answer, as it would on another node.
	rev := make([]Peer, len(peers))
	for i, p := range peers {
		rev[len(peers)-1-i] = p
	}
	assert.Equal(t, c, NewRing(rev).Candidates(id))
	assert.Empty(t, NewRing(nil).Candidates(id))
	assert.Equal(t, []string{"http://cache:8080"}, NewRing(peers[5:]).Candidates(id))
}

// TestRingStability: removing one peer moves only the keys it owned.
func TestRingStability(t *testing.T) {
	all := fivePeers()
	r5, r4 := NewRing(all), NewRing(all[:4])
	moved := 0
	const n = 20_000
	for range n {
		id := randomID(t)
		a, b := r5.Owner(id), r4.Owner(id)
		if a != b {
			moved++
			assert.Equal(t, all[4].URL, a, "only keys of the removed peer move")
		}
	}
	assert.InDelta(t, n/5, moved, n/20)
}

func BenchmarkRingOwner(b *testing.B) {
	r := NewRing(fivePeers())
	id := randomID(b)
	for b.Loop() {
		r.Owner(id)
	}
}

func BenchmarkRingCandidates(b *testing.B) {
	r := NewRing(fivePeers())
	id := randomID(b)
	for b.Loop() {
		r.Candidates(id)
	}
}
