package peer_test

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/peer"
)

// TestCacheKeepsUploadsAnsweredCacheByAPeerListedAsReplica: the variant
// of TestCacheKeepsUploadsSkippedForAPromotedCache where the operator
// promotes the cache N in the natural order: first the peer list (N now
// a replica, the dead replica R taken out), then N's restart under
// --role replica. Between the two, C's pusher sees N listed as a replica
// (a new entry: its reported role is not known yet), goes back to before
// the uploads it skipped for N and clears its record of them (rewind),
// offers them, and N, still a cache, answers "cache": settle took that
// as accepted, the cursor passed them, and nothing recorded that N did
// not keep them; once N was a replica, C evicted them, and N never
// received them (found by a review helper). An upload answered "cache"
// now counts as skipped.
func TestCacheKeepsUploadsAnsweredCacheByAPeerListedAsReplica(t *testing.T) {
	_, n, c, datas := cacheWithUploads(t)
	last := c.Store.LastSeq()
	cursor := func() uint64 {
		v, err := c.Store.Value("cursor " + n.URL)
		require.NoError(t, err)
		u, _ := strconv.ParseUint(string(v), 10, 64)
		return u
	}
	skipped := func() string {
		v, err := c.Store.Value("skipped " + n.URL)
		require.NoError(t, err)
		return string(v)
	}
	eventually(t, 10*time.Second, func() bool { return cursor() >= last && skipped() != "" },
		"C's pusher to the cache N passed the uploads, recording that it skipped them")
	for id := range datas {
		require.True(t, fileHeld(c, id), "C keeps %s while no replica has it", id.String()[:8])
	}

	// The operator promotes N: the peer list first (N a replica, the
	// dead R out of it), then N's restart as a replica.
	require.NoError(t, os.WriteFile(c.peerFile, fmt.Appendf(nil, "[[peers]]\nurl = %q\nrole = \"replica\"\n", n.URL), 0o644))
	_, err := c.Cluster.Refresh(t.Context())
	require.NoError(t, err)
	// C's pusher to the new entry goes back, offers the uploads to N
	// (still a cache: it answers "cache") and passes them again.
	eventually(t, 10*time.Second, func() bool {
		if cursor() < last {
			return false
		}
		for _, p := range c.Cluster.Status().Peers {
			if p.URL == n.URL {
				return p.ReportedRole == peer.RoleCache && p.Pusher == "idle"
			}
		}
		return false
	}, "C's pusher offered the uploads to N, listed as a replica, still a cache")

	n.down()
	n.o.role = peer.RoleReplica
	n.start()
	// Any exchange tells C that N is a replica now: a delete made on C
	// is pushed to N (an anti-entropy round would do the same).
	require.Equal(t, http.StatusOK, del(t, c, c.put(randomBytes(t, 100))))
	eventually(t, 10*time.Second, func() bool {
		for _, p := range c.Cluster.Status().Peers {
			if p.URL == n.URL {
				return p.ReportedRole == peer.RoleReplica
			}
		}
		return false
	}, "C learned that N is a replica")

	// Every upload stays on C until N holds it, and reaches N.
	uploadsReach(t, c, n, datas, "acknowledged upload %s lost: N answered \"cache\" to its push while listed as a replica, C's cursor passed it with no record that N did not keep it, and C evicted it once N was a replica")
}
