// Package couchdb moves CouchDB attachments into dtfc and leaves
// references in their documents, so that a CouchDB database stops growing
// with the files it holds.
//
// It holds a small CouchDB HTTP client for exactly what that needs (the
// change feed, documents with attachment stubs, streamed attachments,
// _local documents) and the Migrator, which follows the change feed of one
// database and, for each document with attachments:
//
//  1. streams each attachment from CouchDB into dtfc, checking its length
//     (and MD5) against the stub while the client checks the SHA-512 dtfc
//     answers against the bytes read;
//  2. records doc.dtfc[name] = {"sha512", "content_type", "length"} and,
//     with RemoveAttachments, drops the attachment, in one update naming
//     the revision read: CouchDB refuses it (409) if the document changed
//     meanwhile, and the migrator reads the newer revision and applies
//     the change to it, so no one else's edit is ever overwritten;
//  3. as pages of the feed complete (in order), records the sequence
//     reached in a _local document of the database, so that a run killed
//     at any moment resumes there.
//
// The dtfc field is the record of what was moved: an attachment recorded
// with its length and digest, and present in dtfc, is never uploaded
// again. A kill between an upload and the document update that records it
// re-uploads, on the next run, the attachments of the documents that were
// in flight (at most Options.Concurrency documents): the same bytes under
// the same ID, which dtfc answers 200 (already held) and stores once.
//
// Orphans lists the dtfc IDs no document references.
package couchdb
