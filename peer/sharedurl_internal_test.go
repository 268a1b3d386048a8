package peer

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestSharedURL: an entry whose URL answers as one node, then another,
// is a node replaced (nothing shown); once it answers again as the first,
// it reaches both by turns, and /_status lists both.
func TestSharedURL(t *testing.T) {
	r := newRemoteNode(Peer{URL: "http://lb.example", Role: RoleReplica}, nil, "self", nil)
	as := func(node string) { r.ok(http.Header{HeaderNode: {node}}) }

	as("a")
	as("a")
	assert.Nil(t, r.status().Nodes, "one identity")
	as("b")
	as("b")
	assert.Equal(t, "b", r.status().Node)
	assert.Nil(t, r.status().Nodes, "a node replaced by another at its URL is no shared URL")
	as("a")
	assert.Equal(t, []string{"a", "b"}, r.status().Nodes, "back to an identity it had: the URL reaches both")
	as("c")
	assert.Equal(t, []string{"a", "b", "c"}, r.status().Nodes)
}
