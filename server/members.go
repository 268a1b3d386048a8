package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/httpstatus"
	"github.com/dtfc/dtfc/peer"
)

// Membership routes (API.md, "Membership without editing files"): GET
// lists the records, PUT adds the node reached at a URL, DELETE removes
// one. All need the write token when auth_token is set.

func (s *Server) listMembers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"members": s.cfg.Cluster.Members()})
}

// admit is held around the commit of an upload, delete, block or lift: a
// 503 if this node removed itself (for an upload or delete, since the
// request passed notRemoved: its leave was taken while the body arrived).
// Nothing committed on a removed node would reach the members.
func (s *Server) admit() (func(), error) {
	if s.cfg.Cluster == nil {
		return func() {}, nil
	}
	release, err := s.cfg.Cluster.Admit()
	if err != nil {
		err = httpstatus.Errorf(http.StatusServiceUnavailable,
			"%v: it takes no uploads, deletes or blocks, and stored nothing of this one; use another node", err)
		return nil, retryAfter{err, "60"} // its clock set right, or added again
	}
	return release, nil
}

// retryAfter is an error answered with a Retry-After header (writeError).
type retryAfter struct {
	error
	after string
}

func (e retryAfter) Unwrap() error { return e.error }

// notRemoved refuses uploads and deletes on a node removed from the
// cluster, or while another running node has its identity (503, so that
// clients try another node): nothing it took would reach the others, and
// a delete of an ID it does not hold could only be answered 404.
func (s *Server) notRemoved(next http.Handler) http.Handler {
	if s.cfg.Cluster == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if at, removed := s.cfg.Cluster.Removed(); removed {
			s.writeError(w, r, httpstatus.Errorf(http.StatusServiceUnavailable,
				"this node was removed from the cluster at %s: it takes no uploads or deletes; use another node, or add it again (PUT /_members on a member)",
				at.UTC().Format(time.RFC3339)))
			return
		}
		if why := s.cfg.Cluster.IdentityConflict(); why != "" {
			s.writeError(w, r, httpstatus.Errorf(http.StatusServiceUnavailable,
				"%s: this node takes no uploads or deletes until the copy has an identity of its own (README, \"Adding and removing nodes\"); use another node", why))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// memberRequest is PUT /_members' body.
type memberRequest struct {
	URL  string    `json:"url"`
	Role dtfc.Role `json:"role"`
}

func (s *Server) addMember(w http.ResponseWriter, r *http.Request) {
	var req memberRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, `body: want {"url": "http://host:port", "role": "replica"|"cache"}: %v`, err))
		return
	}
	if err := checkNodeURL(req.URL); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Role != "" {
		if role, err := dtfc.ParseRole(string(req.Role)); err != nil || !role.IsNode() {
			s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, "role %q: want \"replica\" or \"cache\"", req.Role))
			return
		}
	}
	m, err := s.cfg.Cluster.AddMember(r.Context(), req.URL, req.Role)
	switch {
	case errors.Is(err, peer.ErrMemberRole), errors.Is(err, peer.ErrRemovedTooLong):
		s.writeError(w, r, httpstatus.Errorf(http.StatusConflict, "%v", err))
		return
	case errors.Is(err, peer.ErrMemberAhead), errors.Is(err, peer.ErrClockBehind):
		w.Header().Set("Retry-After", "5")
		s.writeError(w, r, httpstatus.Errorf(http.StatusServiceUnavailable, "%v", err))
		return
	case err != nil:
		s.writeError(w, r, httpstatus.Errorf(http.StatusBadGateway, "%v (the node must run, be reachable from this one and share its cluster_secret)", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"member": m})
}

func (s *Server) removeMember(w http.ResponseWriter, r *http.Request) {
	u := r.URL.Query().Get("url")
	if err := checkNodeURL(u); err != nil {
		s.writeError(w, r, err)
		return
	}
	force := r.URL.Query().Get("force")
	m, err := s.cfg.Cluster.RemoveMember(r.Context(), u, force == "1" || force == "true")
	switch {
	case errors.Is(err, peer.ErrNotMember):
		s.writeError(w, r, httpstatus.Errorf(http.StatusNotFound, "%s: %v", u, err))
		return
	case errors.Is(err, peer.ErrMemberAhead), errors.Is(err, peer.ErrClockBehind):
		// A newer record of the member is dated too far ahead
		// (peer.ErrMemberAhead): retried as real time catches up.
		w.Header().Set("Retry-After", "5")
		s.writeError(w, r, httpstatus.Errorf(http.StatusServiceUnavailable, "%v (?force=1 removes it anyway, and that record wins once real time reaches it)", err))
		return
	case errors.Is(err, peer.ErrNotDrained):
		w.Header().Set("Retry-After", "5")
		s.writeError(w, r, httpstatus.Errorf(http.StatusConflict, "%v (?force=1 removes it anyway: what only it holds stays on its disk, out of the cluster)", err))
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"member": m})
}

// checkNodeURL checks a node's URL given to a membership route.
func checkNodeURL(s string) error {
	u, err := url.Parse(s)
	if s == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return httpstatus.Errorf(http.StatusBadRequest, "url %q: want a node's URL, like http://host:port", s)
	}
	return nil
}
