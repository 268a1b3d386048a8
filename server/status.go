package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
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
	writeJSON(w, http.StatusOK, s.statusFor(r))
}

// statusFor is the status as r may see it: blob IDs in its warnings and
// errors are cut to their first 16 digits unless r carries a read or
// write token. Without read_token an ID is a read capability; with it,
// the IDs a node holds are not for anonymous clients either
// (TestStatusHidesIDsFromAnonymous).
func (s *Server) statusFor(r *http.Request) Status {
	st := s.statusData()
	tk := s.tokens.Load()
	if got, ok := bearer(r); ok && matchAny(got, tk.read, tk.write) {
		return st
	}
	st.RecentErrors = slices.Clone(st.RecentErrors)
	for i := range st.RecentErrors {
		e := &st.RecentErrors[i]
		e.Message, e.Attrs = shortIDs(e.Message), shortIDs(e.Attrs)
	}
	if c := st.Cluster; c != nil {
		c.Resync.LastError = shortIDs(c.Resync.LastError)
		c.Peers = slices.Clone(c.Peers)
		for i := range c.Peers {
			p := &c.Peers[i]
			p.LastError, p.PushError = shortIDs(p.LastError), shortIDs(p.PushError)
		}
	}
	return st
}

// idRun is a blob ID in a text, or what is left of one where the text
// was cut (recent.go cuts long warnings): any run of more hex digits than
// an ID is shown with (a node's identity has 16).
var idRun = regexp.MustCompile(`[0-9a-fA-F]{17,}`)

// shortIDs cuts every ID in s to its first 16 digits and "…"
// (TestStatusHidesIDsFromAnonymous, TestStatusHidesCutIDs).
func shortIDs(s string) string {
	if len(s) <= 16 {
		return s
	}
	return idRun.ReplaceAllStringFunc(s, func(id string) string { return id[:16] + "…" })
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
