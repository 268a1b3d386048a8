package peer

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
)

func TestHeardMarks(t *testing.T) {
	var h heardMarks
	all := func(string) bool { return true }
	h.heard("a", "x, y")
	by, ok := h.markedBy("x", all)
	assert.True(t, ok)
	assert.Equal(t, "a", by)
	_, ok = h.markedBy("z", all)
	assert.False(t, ok, "a marks no z")
	_, ok = h.markedBy("x", func(src string) bool { return src != "a" })
	assert.False(t, ok, "a source no longer listed is not heeded")

	h.heard("x", "x")
	h.heard("a", "y")
	_, ok = h.markedBy("x", all)
	assert.False(t, ok, "a's mark of x was lifted; x's word about itself counts for nothing")

	h.heard("a", "")
	_, ok = h.markedBy("y", all)
	assert.False(t, ok, "an empty header: a marks no one now")
	assert.NotContains(t, h.by, "a")

	h.heard("", "y")
	_, ok = h.markedBy("y", all)
	assert.False(t, ok, "no sender, nothing heard")

	many := make([]string, 2*maxHeardMarks)
	for i := range many {
		many[i] = fmt.Sprint("n", i)
	}
	h.heard("b", strings.Join(many, ","))
	assert.Len(t, h.by["b"], maxHeardMarks)
	for i := range maxHeardSources + 10 {
		h.heard(fmt.Sprint("s", i), "q")
	}
	assert.Len(t, h.by, maxHeardSources)
}

// TestHeardMarksCluster: a Cluster heeds the marks a listed peer tells
// of, not those of this node itself listed under another URL (soak seed
// 75: its own word from before a lift outlived the lift), and after a
// restart still heeds those it heard, before that peer answers again.
func TestHeardMarksCluster(t *testing.T) {
	dir := t.TempDir()
	open := func() (*Cluster, *blobstore.Store) {
		store, err := blobstore.Open(dir, blobstore.Options{})
		require.NoError(t, err)
		c, err := New(store, Options{Me: "http://me.invalid"})
		require.NoError(t, err)
		c.setPeers([]Peer{{URL: "http://self.invalid", Role: RoleReplica}, {URL: "http://b.invalid", Role: RoleReplica}})
		return c, store
	}
	c, store := open()
	answer := func(url, node, marks string) {
		c.mem.Load().byURL[url].ok(http.Header{HeaderNode: {node}, HeaderMarks: {marks}})
	}
	answer("http://self.invalid", store.NodeID(), "x,y")
	answer("http://b.invalid", "b", "x")
	by, ok := c.markedElsewhere("x")
	assert.True(t, ok)
	assert.Equal(t, "b", by)
	_, ok = c.markedElsewhere("y")
	assert.False(t, ok, "only this node itself said y")
	require.NoError(t, store.Close())

	c, store = open()
	by, ok = c.markedElsewhere("x")
	assert.True(t, ok, "heard before the restart, b not answered since")
	assert.Equal(t, "b", by)
	answer("http://b.invalid", "b", "")
	_, ok = c.markedElsewhere("x")
	assert.False(t, ok, "b lifted its mark")
	require.NoError(t, store.Close())

	c, store = open()
	defer store.Close()
	_, ok = c.markedElsewhere("x")
	assert.False(t, ok, "the lift was kept")
}
