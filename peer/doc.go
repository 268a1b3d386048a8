// Package peer owns what a node knows of the other nodes: the peer list,
// the consistent-hash ring that picks which peer to ask first, fetching a
// missing blob from peers (one transfer per ID however many clients wait,
// streamed to all of them while it is verified), pushing the local change
// feed to every peer with a durable cursor, anti-entropy, tombstone
// retention, and repairs of what the scrubber finds corrupt.
//
// The node-to-node HTTP routes live here too (Cluster.InternalHandler,
// mounted under /_internal); a peer answering a peer only ever serves its
// own disk and never forwards, so two nodes that disagree about ownership
// cannot wait on each other.
package peer
