// Package peer owns what a node knows of the other nodes: the peer list
// and membership, the consistent-hash ring that picks which peer to ask
// first, fetching a missing blob from peers (one transfer per ID however
// many clients wait, streamed to all of them while it is verified),
// pushing the local change feed to every peer with a durable cursor,
// anti-entropy, tombstone retention, and repairs of what the scrubber
// finds corrupt.
//
// Its shape:
//
//   - Cluster ties the rest together: New reads the peer list and the
//     durable state, Run runs the background work, Open is the one read
//     path (a Blob: a local file, bytes in memory, or a transfer from a
//     peer, with its state and source), Lookup asks for a state alone.
//   - The blob store is a Store: the sum of what each part declares in
//     its own file and reaches through its own view (feedStore for the
//     pushers, syncStore for anti-entropy, resyncStore, servedStore for
//     answering peers, denyStore, ledgerStore for expiries, upkeepStore,
//     unconfirmedStore, fetchStore), so a part's use of the store reads
//     at the top of its file and the compiler holds it to that.
//   - remote is one peer and this node's experience of it (health,
//     identity, role, expiry mark); its Node is how the work talks to it.
//     Each consumer declares the few methods it needs (stater,
//     blobSource, pushTarget, replicaSource, resyncTarget); Node is their
//     sum. Tests put a fake built from function fields in its place. A
//     pusher sends small blobs in batches to a Node that is also a
//     batchTarget (checked by a type assertion, as net/http checks its
//     optional interfaces), one by one to any other.
//   - wire.go is the whole node-to-node protocol: routes, headers,
//     request and answer types, limits, and httpNode, its client. The
//     server side is Cluster.InternalHandler (internal.go; the deny list's
//     handler in deny.go), mounted under InternalPrefix, using the same
//     types. A peer answering a peer only ever serves its own disk and
//     never forwards, so two nodes that disagree about ownership cannot
//     wait on each other.
//   - fetcher (fetch.go) runs the transfers from peers, at most one per
//     ID, under its own lock; it never reads the disk under that lock
//     (Open looks locally at a generation of the fetcher instead). It
//     holds what it uses (fetchStore, the candidates, eviction), not the
//     Cluster. A transfer's context is its own, detached from the clients
//     that wait for it; stop cancels every one, and any started later.
//   - pusher (push.go) sends the feed to one peer: a short run loop over
//     step, which says how to wait before the next one. The pushers
//     (pushers.go) have their own lock and follow the peer list in a
//     loop of Run's, as the repairs do: no run context is kept in a
//     struct.
//   - resync (resync.go) is the state machine of "this node must resync",
//     with its own lock; expiries and feedClock (acks.go) decide what may
//     be forgotten.
//   - members (members.go) are the membership records (--join,
//     /_members), with their own lock, exchanged with every peer by a
//     loop of Run's; applyPeers makes the peers from the peer list
//     file's entries and the members.
package peer
