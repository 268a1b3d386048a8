package server

import (
	"context"
	"net/http"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// Cluster is the rest of the cluster as the server uses it
// (*peer.Cluster). A nil Cluster means a node alone.
type Cluster interface {
	// Open reads id: from this node, or on a local miss (unless opts
	// say otherwise) from a peer, streamed while it is verified.
	Open(ctx context.Context, id dtfc.ID, opts peer.OpenOptions) (*peer.Blob, error)
	// Lookup asks peers for id's state without moving bytes; held
	// requires a peer that holds the bytes.
	Lookup(ctx context.Context, id dtfc.ID, held bool) (dtfc.State, error)
	// Lifted is told of a block lifted here, as of one received: what it
	// kept out is taken again (peer.Cluster.denyApplied).
	Lifted(d blobstore.Deny)
	// Admit is held around the commit of an upload or delete made here;
	// peer.ErrRemoved once this node has removed itself.
	Admit() (func(), error)
	// WaitReplicas waits until n replicas hold the change seq of id;
	// a *blobstore.DeniedError if id is blocked meanwhile.
	WaitReplicas(ctx context.Context, id dtfc.ID, seq uint64, n int) error
	// Replicas is how many replicas there are, this node counted.
	Replicas() int
	// Refresh re-reads the peer list (a new or changed archive entry is
	// checked first).
	Refresh(ctx context.Context) ([]peer.Peer, error)
	// Members returns the membership records; AddMember adds the node
	// reached at a URL, RemoveMember removes one.
	Members() []peer.Member
	AddMember(ctx context.Context, url string, role dtfc.Role) (peer.Member, error)
	RemoveMember(ctx context.Context, url string, force bool) (peer.Member, error)
	// Removed reports whether this node was removed from the cluster,
	// and when: it then takes no uploads or deletes.
	Removed() (time.Time, bool)
	// IdentityConflict says why this node takes no uploads or deletes
	// for a copy of it running elsewhere, "" if none.
	IdentityConflict() string
	// Status describes the peers and replication.
	Status() peer.Status
	// InternalHandler serves the node-to-node routes under /_internal.
	InternalHandler() http.Handler
}

var _ Cluster = (*peer.Cluster)(nil)
