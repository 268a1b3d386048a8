// Package dtfc holds the domain types shared by every layer of dtfc, a
// content-addressed (SHA-512) replicating file store and pull-through peer
// cache: the blob ID, the hybrid logical clock that orders operations, and
// the per-ID State whose latest version wins everywhere in the cluster.
//
// The packages below it own one noun each: blobstore (the local disk),
// peer (the other nodes), server (the HTTP API) and client (a Go client for
// applications). cmd/dtfc wires them together.
package dtfc
