// Package archive keeps a collection's blobs, and the operations on them,
// in a bucket of an S3-compatible object store (AWS S3, Ceph RGW,
// SeaweedFS, Garage, MinIO, versitygw), through aws-sdk-go-v2.
//
// Everything lives under one key prefix, and no object is ever
// overwritten or deleted:
//
//	<prefix>/blobs/<h[0:2]>/<h[2:4]>/<h>             blob h's bytes
//	<prefix>/states/<h[0:2]>/<h[2:4]>/<h>/<clock>-<node>  one operation on h (JSON dtfc.State)
//	<prefix>/deny/<h[0:2]>/<h[2:4]>/<h>/<clock>-<node>    a block on h, or its lift (JSON blobstore.Deny)
//	<prefix>/log/<node>/<seq>                        a writer's change log (JSON list of LogEntry)
//
// <clock> and <seq> are 16 lower-case hex digits, so keys sort in their
// order. Every object is created with If-None-Match: * (write once); a
// blob carries S3's SHA-512 checksum taken from its ID, so the server
// refuses bytes that do not hash to it. An ID's state is its newest
// record (greatest clock, ties by node identity), and its deny entry its
// newest deny record, ordered the same way, whatever the logs say:
// the logs only tell a reader which IDs changed, so that it need not list
// the whole collection.
//
// Nothing read from the bucket is trusted: the caller verifies a blob's
// bytes against its ID before it uses them.
package archive
