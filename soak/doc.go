// Package soak is dtfc's chaos soak: a seeded schedule of client
// operations and faults run against a cluster of real dtfc processes
// (package internal/cluster), followed by checks of the promises of
// API.md's "Consistency" section.
//
// The soak runs in rounds. In a round, a few workers upload, re-upload,
// delete and read files through random nodes while the test goroutine
// kills (-9) and restarts nodes, stops them gracefully, partitions,
// isolates and cuts links, delays and throttles them, corrupts the bodies
// crossing them, puts one node onto a full disk (a small tmpfs; root
// only, else left out with a log line) for a while and joins a new node.
// Links are delayed and throttled in the harness's own proxy
// (cluster.Delay, cluster.Throttle) rather than with toxiproxy's toxics,
// whose removal can hang for good when a node behind the link restarts.
// At the end of a round every fault is removed, every node started, and
// once the cluster has converged the invariants are checked on every
// node's disk and /_status:
//
//  1. every acknowledged upload not later deleted is on every node, and
//     every blob file's bytes hash to its name;
//  2. no deleted file is anywhere (blobs/ included, what nginx serves);
//  3. no temp or stray file is left;
//  4. every replication queue is empty and every node holds the same IDs;
//  5. no read ever completed a 200 whose bytes do not hash to the ID
//     (checked on every read during the rounds).
//
// # The schedule and replay
//
// Everything planned is a function of the seed and the configuration:
// the faults of every round (Plan, from PCG streams of the seed), each
// worker's stream of operations (Stream) and every file's size and bytes
// (Content, generated on demand from the seed and the file's index, never
// held whole). Running again with the same seed and configuration replays
// the same schedule. What the machine's timing decides is not replayed
// exactly: how many operations of its stream a worker gets through in a
// round, and which operation is in flight when a fault strikes. The event
// log (Log) records what actually happened, with times.
//
// # What each ID must look like
//
// Each worker owns the files w, w+W, w+2W, ... and is the only one to
// upload or delete them, one operation at a time, so the operations on
// an ID have a well-defined order: the worker's. The Ledger keeps every
// write in that order with what its answer says: acknowledged (upload
// 200/201, or 504 after ?replicas=N, which keeps the file; delete 200),
// refused (the connection was refused, or a 4xx or 507 answer: certainly
// not applied), or maybe (a timeout, a reset, another 5xx: perhaps
// applied). An ID whose last acknowledged write is an upload must be on
// every node; one whose last acknowledged write is a delete, or that was
// never acknowledged at all, must be on none; but a maybe after the last
// acknowledged write makes the ID unknown: either state is right, as
// long as every node agrees and the bytes are right. Once a round's check
// has seen such an ID in one state everywhere, that state is what later
// rounds expect until the next write.
//
// Two writes of one ID are at least some milliseconds apart (a worker
// pauses between operations and each takes a round trip). The hybrid
// logical clock orders writes sent to different nodes by the nodes' wall
// clocks (the same clock here), and no node carries the client's
// causality: within one millisecond two such writes could be ordered
// either way, which the soak does not test.
//
// Reads are only held to invariant 5: under partitions a 404 is a right
// answer, and a transfer cut short is how a node refuses to complete
// wrong bytes.
package soak
