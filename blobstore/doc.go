// Package blobstore owns a node's local disk: verified, atomically placed,
// sharded blob files, and the metadata of every ID the node knows (present
// or deleted, its clock, size and type), the local change feed that
// replication reads, the digests anti-entropy compares, and scrubbing.
//
// Layout under the base directory:
//
//	blobs/ab/cd/<id>        complete, verified blobs (0644; directories 0755)
//	tmp/                    temp files of uploads in progress (same filesystem)
//	quarantine/             corrupt blobs and foreign files, kept for inspection
//	unconfirmed/ab/cd/<id>  verified blobs whose state is unknown (unconfirmed.go)
//	meta.db                 bbolt: records, change feed, digests, cursors
//	node-id                 the node's identity, kept beside meta.db
//
// meta.db is checked before it is opened (check.go); a damaged or lost one
// is rebuilt from the blob files by Rebuild, never by deleting them.
//
// A blob file exists under blobs/ only once its bytes were hashed, matched
// their name and were fsync'd; the rename that places it is fsync'd in its
// directory before the metadata commit, and the metadata commit comes
// before the answer to the client. A blob is never written in place. A
// batch of blobs from peers (CommitBatch, batch.go) takes the same steps
// in the same order for all its blobs at once, one sync of the file
// system standing for each step's fsyncs.
//
// blobstore knows nothing of HTTP or peers.
package blobstore
