package e2e_test

import (
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// conflictWindow is how long a node goes on seeing a conflict after the
// copy stopped (peer.minConflictWindow, the anti-entropy interval of 2 s
// being shorter), with room for the exchanges that show it is over.
const conflictWindow = 40*time.Second + converge

// TestCopiedBasedir: node 3 starts on a copy of node 0's basedir (its
// node-id and meta.db with it), as an operator seeding a new node might.
// Two running nodes then have one identity. Before, each took the other
// for itself and never replicated to it, and the other nodes took either
// one's word for both. Now both refuse uploads and deletes (503, saying
// why), the other nodes exchange nothing with either and say so in their
// status, and the rest of the cluster goes on. Once the copy is given an
// identity of its own (node-id and meta.db removed, dtfc rebuild-meta),
// the conflict ends by itself and all four nodes converge, the copy
// keeping the blobs it was seeded with.
func TestCopiedBasedir(t *testing.T) { testCopiedBasedir(t, false) }

// TestCopiedBasedirJoined: the same in a cluster of --join, where the
// copy also brings the source's membership records.
func TestCopiedBasedirJoined(t *testing.T) { testCopiedBasedir(t, true) }

func testCopiedBasedir(t *testing.T, join bool) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Join: join, CopiesNodes: true})
	hc := newClient(t)
	seed := randomBytes(20 << 10)
	_, seedID := upload(t, hc, c.Nodes[0].URL, "seed", seed)
	c.WaitConverged(t, converge)
	copyNode := c.AddNode("")
	c.WaitConverged(t, converge)
	copyNode.Stop()
	if join {
		// Node 3 was a slot for the copy: its own identity goes with
		// its basedir, so it leaves first, as an operator would remove
		// a member whose disk they wipe.
		req, err := http.NewRequest(http.MethodDelete, c.Nodes[1].URL+"/_members?force=1&url="+url.QueryEscape(copyNode.URL), nil)
		require.NoError(t, err)
		res, body := do(t, hc, req)
		require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)
	}
	c.Nodes[0].Stop()
	out, err := exec.Command("sh", "-c", `rm -rf "$2" && cp -a "$1" "$2"`, "sh", c.Nodes[0].Basedir, copyNode.Basedir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	c.Nodes[0].Start()
	copyNode.Start()

	refused := func(base string) bool {
		res, body := putQuery(t, hc, base+"/probe", randomBytes(100))
		return res.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), "identity")
	}
	eventually(t, converge, "node 0 and its copy refuse uploads", func() bool {
		return refused(c.Nodes[0].URL) && refused(copyNode.URL)
	})
	res, body := putQuery(t, hc, copyNode.URL+"/probe", randomBytes(100))
	assert.Contains(t, string(body), "copy of the other's basedir", "the answer says what happened: %d %s", res.StatusCode, body)
	for _, i := range []int{0, 3} {
		st, err := c.Status(i)
		require.NoError(t, err)
		assert.NotEmpty(t, st.Cluster.IdentityConflict, "node %d's status says why it takes no uploads", i)
		for _, p := range st.Cluster.Peers {
			assert.False(t, p.Self, "node %d: %s is not itself", i, p.URL)
		}
	}
	eventually(t, converge, "nodes 1 and 2 see the conflict", func() bool {
		if join {
			// Which URL each lists for the identity depends on the
			// records' order.
			return logHas(c.Nodes[1], "two running nodes have one identity") &&
				logHas(c.Nodes[2], "two running nodes have one identity")
		}
		for _, i := range []int{1, 2} {
			for _, j := range []int{0, 3} {
				if !strings.Contains(peerStatus(t, c, i, j).LastError, "two running nodes") {
					return false
				}
			}
		}
		return true
	})
	// The rest of the cluster goes on.
	data := randomBytes(10 << 10)
	_, during := upload(t, hc, c.Nodes[1].URL, "during", data)
	eventually(t, converge, "node 2 holds an upload to node 1", func() bool {
		_, ok := c.BlobFiles(2)[during]
		return ok
	})
	assert.True(t, logHas(c.Nodes[1], "two running nodes have one identity"), "node 1 logged the conflict")
	assert.True(t, logHas(copyNode, "another running node has this node's identity"), "the copy logged it")

	// The copy gets an identity of its own.
	copyNode.Stop()
	for _, f := range []string{"node-id", "meta.db"} {
		require.NoError(t, os.Remove(filepath.Join(copyNode.Basedir, f)))
	}
	copyNode.RebuildMeta()
	copyNode.Start()
	eventually(t, conflictWindow, "node 0 takes uploads again", func() bool {
		res, _ := putQuery(t, hc, c.Nodes[0].URL+"/probe", randomBytes(100))
		return res.StatusCode == http.StatusOK || res.StatusCode == http.StatusCreated
	})
	_, after := upload(t, hc, copyNode.URL, "after", randomBytes(10<<10))
	c.WaitConverged(t, conflictWindow)
	for i := range c.Nodes {
		assertHeld(t, c, i, seedID, int64(len(seed)))
		assertHeld(t, c, i, during, int64(len(data)))
		assertHeld(t, c, i, after, 10<<10)
		st, err := c.Status(i)
		require.NoError(t, err)
		assert.Empty(t, st.Cluster.IdentityConflict, "node %d", i)
	}
	assert.False(t, peerStatus(t, c, 0, 3).Self, "the copy is another node now")
	if join {
		// The copy's records named the source's identity at the copy's
		// URL for a while: the source's own record wins back.
		eventually(t, converge, "every node lists node 0 and the copy as members of their own", func() bool {
			for i := range c.Nodes {
				st, err := c.Status(i)
				require.NoError(t, err)
				urls := map[string]string{}
				for _, m := range st.Cluster.Members {
					if !m.Removed {
						urls[m.Node] = m.URL
					}
				}
				if len(urls) != 4 || urls[nodeID(t, c, 0)] != c.Nodes[0].URL || urls[nodeID(t, c, 3)] != copyNode.URL {
					return false
				}
			}
			return true
		})
	}
}

// nodeID returns node i's identity, from its basedir.
func nodeID(t *testing.T, c *cluster.Cluster, i int) string {
	b, err := os.ReadFile(filepath.Join(c.Nodes[i].Basedir, "node-id"))
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}
