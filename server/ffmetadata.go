package server

import (
	"net/http"

	"github.com/dtfc/dtfc/internal/httpstatus"
)

// ffmetadata answers GET /{id}/ffmetadata: the blob's media metadata as
// ffprobe reports it. (Stub: to be written.)
func (s *Server) ffmetadata(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, httpstatus.Errorf(http.StatusNotImplemented, "not implemented yet"))
}
