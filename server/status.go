package server

import (
	"net/http"
	"time"
)

// Status is the body of GET /_status.
type Status struct {
	Node    string                 `json:"node"`
	Role    string                 `json:"role"`
	Blobs   int64                  `json:"blobs"`
	Bytes   int64                  `json:"bytes"`
	Queues  map[string]QueueStatus `json:"queues"`
	Uptime  string                 `json:"uptime"`
	Started time.Time              `json:"started"`
}

// QueueStatus describes replication towards one peer.
type QueueStatus struct {
	// Length counts operations not yet accepted by the peer.
	Length int64 `json:"length"`
}

func (s *Server) statusData() Status {
	blobs, bytes := s.stats()
	return Status{
		Node:    s.cfg.Me,
		Role:    s.cfg.Role,
		Blobs:   blobs,
		Bytes:   bytes,
		Queues:  map[string]QueueStatus{},
		Uptime:  time.Since(s.started).Round(time.Second).String(),
		Started: s.started,
	}
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, s.statusData())
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("dtfc: PUT /<filename> to store a file, GET /<sha512> to read one; status: /_status\n"))
}

func (s *Server) waitReplicas(r *http.Request, _ any, n int) error {
	if n > 1 {
		return errorf(http.StatusBadRequest, "replicas=%d: this node has no peers", n)
	}
	return nil
}

func (s *Server) refreshPeers(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, errorf(http.StatusNotFound, "this node has no peer list (start it with --peerlist)"))
}
