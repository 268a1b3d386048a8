// Package soak is dtfc's chaos soak: a seeded schedule of client
// operations and faults run against a cluster of real dtfc processes
// (package internal/cluster), followed by checks of the promises of
// API.md's "Consistency" section.
//
// The soak runs in rounds. In a round, a few workers upload, re-upload,
// delete, block (PUT /_deny/{id}, status 451), lift (DELETE /_deny/{id})
// and read files through random nodes, caches included, while the test
// goroutine kills (-9) and restarts nodes, stops them gracefully,
// partitions, isolates and cuts links, delays and throttles them,
// corrupts the bodies crossing them, puts one node onto a full disk (a
// small tmpfs; root only, else left out with a log line) for a while and
// joins a new node. Links are delayed and throttled in the harness's own
// proxy (cluster.Delay, cluster.Throttle) rather than with toxiproxy's
// toxics, whose removal can hang for good when a node behind the link
// restarts.
//
// The cluster runs with a tombstone retention of seconds (and an expiry a
// few times longer), a max_clock_offset of seconds, a scrub every few
// seconds, one or two caches with a small --max-bytes, and by default
// peer lists that name every node itself under a second URL and every
// peer twice (each name through its own proxy of the link, so faults
// still apply). Besides the random faults, every round plans (specials):
//
//   - two outages longer than the retention (an isolation of a cache
//     while the workers upload to it and a partition; a stop longer than
//     the expiry and a kill), so that deletes, blocks and lifts made
//     meanwhile age past the retention before the node returns;
//   - a skew of a replica's clock (Node.SetClock), beyond max_clock_offset
//     in even rounds, within it in odd ones, then back to 0 (skew.go:
//     while clocks may disagree the workers write through one node each,
//     and probes write through the skewed node);
//   - two bit flips in blob files on a node's disk (flip.go): a small
//     file, read back at once, and a larger one; the scrubber must repair
//     them before the round's check, and the node then serve right bytes.
//
// Unless Config.NoLeave, in one round (the last; the first of a run of
// one or two) a replica leaves the cluster, once a replica took its feed
// (the workers send it no writes meanwhile), and is
// added again (FaultLeave, FaultRejoin: PUT and DELETE /_members), from a
// stream of random numbers of its own, so that the other events of a seed
// are unchanged.
//
// With Config.Archive (scripts/soak.sh --archive; off by default, so
// that a seed's schedule without it is unchanged) a bucket of a
// versitygw S3 server is an archive peer of every node, the S3 server is
// stopped for a while in every round, and in one round a node whose only
// peer is the bucket is started (archive.go; from a stream of its own).
// Converged then also means so for two seconds, and queues the check finds
// not empty are waited for again (a few times): the relays keep reading
// the bucket, and may take back tombstones forgotten long ago.
//
// At the end of a round every fault is removed, every clock put back,
// every node started, and once the cluster has converged (every queue
// empty, no node resyncing, the replicas' digests equal, every flipped
// blob repaired) the invariants are checked on every node's disk,
// /_status, /_deny and /_internal/state:
//
//  1. every acknowledged upload not later deleted or blocked is on every
//     replica (caches need not hold anything), and every blob file's
//     bytes hash to its name;
//  2. no deleted or blocked file is anywhere, caches included (blobs/,
//     what nginx serves); a sample of deleted IDs answers 404 on every
//     node, every blocked ID answers 451 on every node and is on every
//     node's deny list; a lifted ID is on none, and is uploaded again
//     (which must be accepted);
//  3. no temp or stray file is left;
//  4. every replication queue is empty, no node is still resyncing, and
//     every replica holds the same IDs;
//  5. no read ever completed a 200 whose bytes do not hash to the ID
//     (checked on every read during the rounds; a read of a larger blob
//     from the node whose copy was flipped on disk, before the scrubber
//     repaired it, is excused: API.md promises right bytes from the
//     repair on), and after a repair the node serves right bytes;
//  6. the model check: every replica's state of every ID (GET
//     /_internal/state/{id}) is the one the ledger's model says wins, and
//     the replicas agree on (deleted, clock, node);
//  7. with Archive: the bucket's newest record of every ID agrees with
//     the model and with the replicas' state, and the bucket-only node
//     reaches the replicas' set of IDs and passes 1-4 against the model
//     (archive.go).
//
// And during the rounds: an upload with ?replicas=N acknowledged with 201
// must be on the disks of N replicas right after the answer (a node
// listed twice, or itself, is one node); a DELETE of an ID whose upload
// was acknowledged never answers 404; while a clock is skewed beyond
// max_clock_offset no other replica holds a state that far ahead of its
// own clock.
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
// round, which operation is in flight when a fault strikes, and which
// blob files exist for a bit flip to choose from. The event log (Log)
// records what actually happened, with times.
//
// # What each ID must look like: the model
//
// Each worker owns the files w, w+W, w+2W, ... and is the only one to
// upload, delete, block or lift them, one operation at a time, so the
// operations on an ID have a well-defined order: the worker's. The Ledger
// keeps every write in that order with what its answer says:
// acknowledged (upload 200/201, or 504 after ?replicas=N, which keeps the
// file; delete, block or lift 200), refused (the connection was refused,
// or a 4xx or 507 answer: certainly not applied), or maybe (a timeout, a
// reset, another 5xx: perhaps applied), and, for an acknowledged write,
// the state the node showed right after it (its clock and node), which
// the converged state may not be older than. Entry.Model folds them into
// a register: the state (present, absent, unknown) and the deny entry
// (not blocked, blocked, lifted, unknown). A block makes the ID absent; a
// lift leaves it absent until an upload; an upload acknowledged while the
// model says blocked leaves the state unknown (the node that took it had
// not heard of the block). A maybe after the last acknowledged write
// makes what it would change unknown: either is right, as long as every
// replica agrees and the bytes are right. Once a round's check has seen
// such an ID in one state everywhere, that state is what later rounds
// expect until the next write. A replica with no record of an ID is right
// for an ID never acknowledged and for one deleted (its tombstone
// forgotten).
//
// Two writes of one ID are at least some milliseconds apart (a worker
// pauses between operations and each takes a round trip). The hybrid
// logical clock orders writes sent to different nodes by the nodes' wall
// clocks (the same clock here, but for the skews), and no node carries
// the client's causality: within one millisecond, or while a clock is
// skewed, two such writes could be ordered either way, which the soak
// avoids (see skew.go) rather than tests.
//
// Reads are only held to invariant 5 during the rounds: under partitions
// a 404 is a right answer, and a transfer cut short is how a node refuses
// to complete wrong bytes.
//
// # Self-tests
//
// Config.Sabotage (scripts/soak.sh --sabotage) does, once the first round
// converged, what each check must catch: removes an acknowledged blob,
// puts a deleted file back, flips a byte of a blob, deletes, lifts and
// blocks IDs through the API behind the ledger's back; the soak reports
// which violation caught each, and fails the test for one not caught.
package soak
