package server

import (
	"net/http"

	"github.com/dtfc/dtfc/internal/httpstatus"
)

// listBlobs answers GET /_blobs: the IDs this node holds, paged, sorted.
// (Stub: to be written.)
func (s *Server) listBlobs(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, httpstatus.Errorf(http.StatusNotImplemented, "not implemented yet"))
}
