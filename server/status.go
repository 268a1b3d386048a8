package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
	"github.com/dtfc/dtfc/peer"
)

// Status is the body of GET /_status.
type Status = api.Status

// QueueStatus describes replication towards one peer.
type QueueStatus = api.QueueStatus

// UnconfirmedStore is implemented by a store that sets aside blob files
// whose state it does not know (*blobstore.Store): the status counts
// them.
type UnconfirmedStore interface {
	UnconfirmedCount() int64
}

func (s *Server) statusData() Status {
	blobs, bytes := s.stats()
	st := Status{
		Node:    s.cfg.Me,
		Role:    s.cfg.Role,
		Blobs:   blobs,
		Bytes:   bytes,
		Queues:  map[string]QueueStatus{},
		Uptime:  time.Since(s.started).Round(time.Second).String(),
		Started: s.started,
		// An empty list, not null: a JSON reader can range over it.
		RecentErrors: []LogEntry{},
	}
	if u, ok := s.store.(UnconfirmedStore); ok {
		st.Unconfirmed = u.UnconfirmedCount()
	}
	if d, ok := s.store.(DirStore); ok {
		if disk, ok := diskOf(d.Dir()); ok {
			st.Disk = &disk
		}
	}
	if s.cfg.RecentErrors != nil {
		if e := s.cfg.RecentErrors(); len(e) > 0 {
			st.RecentErrors = e
		}
	}
	if s.cfg.Cluster != nil {
		cs := s.cfg.Cluster.Status()
		st.Cluster = &cs
		for _, p := range cs.Peers {
			st.Queues[p.URL] = QueueStatus{Length: p.Queue}
		}
	}
	return st
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, s.statusData())
}

// replicas is how many replicas ?replicas=N can count on.
func (s *Server) replicas() int {
	if s.cfg.Cluster == nil {
		return 1
	}
	return s.cfg.Cluster.Replicas()
}

// waitReplicas holds an upload's answer until n replicas hold it. n was
// checked against s.replicas() before the upload; the list may have
// shrunk since.
func (s *Server) waitReplicas(r *http.Request, id dtfc.ID, seq uint64, n int) error {
	if s.cfg.Cluster == nil {
		return httpstatus.Errorf(http.StatusBadRequest, "replicas=%d: this node has no peers; only 1 replica exists; the file is stored", n)
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ReplicasTimeout)
	defer cancel()
	err := s.cfg.Cluster.WaitReplicas(ctx, id, seq, n)
	var de *blobstore.DeniedError
	switch {
	case errors.As(err, &de):
		// The upload was stored, then overtaken by a block: the peers
		// that knew of it dropped the upload, so N replicas will not
		// hold it. It is kept set aside on this node (if it is newer
		// than the block) and comes back with a lift.
		return blockedError(de.Deny, true, fmt.Sprintf("; replicas=%d: the file is stored, but was blocked while it waited for the replicas", n))
	case errors.Is(err, peer.ErrTooFewReplicas):
		return httpstatus.Errorf(http.StatusBadRequest, "replicas=%d: %v; the file is stored", n, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w (%d asked, %s)", httpstatus.ErrReplicasTimeout, n, s.cfg.ReplicasTimeout)
	}
	return err
}

func (s *Server) refreshPeers(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Cluster == nil {
		s.writeError(w, r, httpstatus.Errorf(http.StatusConflict, "%v", peer.ErrNoPeerList))
		return
	}
	peers, err := s.cfg.Cluster.Refresh(r.Context())
	if errors.Is(err, peer.ErrNoPeerList) {
		s.writeError(w, r, httpstatus.Errorf(http.StatusConflict, "%v", err))
		return
	}
	if err != nil {
		s.writeError(w, r, httpstatus.Errorf(http.StatusUnprocessableEntity, "%v; the previous peer list stays in force", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"peers": peers})
}
