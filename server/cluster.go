package server

import "net/http"

// Cluster is the rest of the cluster as the server uses it.
type Cluster interface {
	// InternalHandler serves the node-to-node routes, mounted under
	// /_internal.
	InternalHandler() http.Handler
}
