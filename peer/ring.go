package peer

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/golang/groupcache/consistenthash"

	"github.com/dtfc/dtfc"
)

// VirtualNodes is the number of points each peer has on the ring. With
// fewer, keys spread unevenly (256 points leave about ±6% between peers);
// this many keeps five peers' shares within about 2% of each other, and a
// lookup is still a binary search over a few thousand integers.
const VirtualNodes = 2048

// ringHash spreads keys well and is the same on every node and every run
// (groupcache's default crc32 spreads about ±15% unevenly; hash/maphash is
// seeded per process, so nodes would disagree).
func ringHash(data []byte) uint32 {
	s := sha256.Sum256(data)
	return binary.BigEndian.Uint32(s[:4])
}

// Ring orders the peers to ask for an ID: its owner on a consistent-hash
// ring first, then the others. A Ring is immutable; a new peer list builds
// a new one (groupcache's Map has no Remove and is not safe for concurrent
// writes, so it is built once and swapped in whole).
type Ring struct {
	m        *consistenthash.Map
	replicas []string // ring members, sorted
	caches   []string
}

// NewRing builds the ring of the replica peers; caches are asked last.
func NewRing(peers []Peer) *Ring {
	r := &Ring{m: consistenthash.New(VirtualNodes, ringHash)}
	for _, p := range peers {
		if p.IsCache() {
			r.caches = append(r.caches, p.URL)
		} else {
			r.replicas = append(r.replicas, p.URL)
		}
	}
	slices.Sort(r.replicas)
	slices.Sort(r.caches)
	r.m.Add(r.replicas...)
	return r
}

// Owner returns the replica peer that owns id, or "" if there is none.
func (r *Ring) Owner(id dtfc.ID) string {
	if r.m.IsEmpty() {
		return ""
	}
	return r.m.Get(string(id[:]))
}

// Candidates returns every peer in the order to ask for id: the owner,
// the other replicas in an order particular to id (so the load of a
// failed owner spreads over the others), then the caches.
func (r *Ring) Candidates(id dtfc.ID) []string {
	out := make([]string, 0, len(r.replicas)+len(r.caches))
	owner := r.Owner(id)
	if owner != "" {
		out = append(out, owner)
	}
	rest := make([]string, 0, len(r.replicas))
	for _, p := range r.replicas {
		if p != owner {
			rest = append(rest, p)
		}
	}
	slices.SortFunc(rest, func(a, b string) int {
		return int64Cmp(rendezvous(a, id), rendezvous(b, id))
	})
	out = append(out, rest...)
	return append(out, r.caches...)
}

func rendezvous(peer string, id dtfc.ID) uint64 {
	h := sha256.New()
	h.Write([]byte(peer))
	h.Write(id[:])
	var s [32]byte
	return binary.BigEndian.Uint64(h.Sum(s[:0]))
}

func int64Cmp(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
