package server

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/go-chi/chi/v5"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
)

// tokens are the bearer tokens in force. They are swapped whole (SetTokens)
// so a rotation never leaves a moment with neither the old nor the new one.
type tokens struct {
	write [][]byte
	read  [][]byte
}

func toBytes(ss []string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		if s != "" {
			out = append(out, []byte(s))
		}
	}
	return out
}

// SetTokens replaces the write and read tokens (a rotation: list the old
// and the new token until every client uses the new one). Empty write
// tokens leave writes open; empty read tokens leave reads open.
func (s *Server) SetTokens(write, read []string) {
	s.tokens.Store(&tokens{write: toBytes(write), read: toBytes(read)})
}

// tokensSet reports whether a write or read token is in force.
func (s *Server) tokensSet() bool {
	t := s.tokens.Load()
	return t != nil && (len(t.write) > 0 || len(t.read) > 0)
}

// bearer extracts the token of an "Authorization: Bearer <token>" header.
func bearer(r *http.Request) ([]byte, bool) {
	const prefix = "Bearer "
	h := r.Header.Get("Authorization")
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return nil, false
	}
	return []byte(strings.TrimSpace(h[len(prefix):])), true
}

// matchAny compares got with every token in constant time (and always with
// all of them), so timing reveals neither a token nor which one matched.
func matchAny(got []byte, sets ...[][]byte) bool {
	ok := 0
	for _, set := range sets {
		for _, t := range set {
			ok |= subtle.ConstantTimeCompare(got, t)
		}
	}
	return ok == 1
}

var errNeedToken = httpstatus.Errorf(http.StatusUnauthorized, "this node requires a token: Authorization: Bearer <token>")

// requireWrite guards writes (uploads, deletes) when write tokens are set
// or CouchDB sessions authorize writers (Config.CouchDBAuth): either
// credential may write.
func (s *Server) requireWrite(next http.Handler) http.Handler {
	return s.requireWriter(next, false)
}

// requireOperator guards the operator's routes (the deny list, the blob
// listing, membership, peer list reloads) like requireWrite, except that
// a CouchDB user needs CouchDB's _admin role: couchdb_roles lets an
// application's users upload, not run the cluster.
func (s *Server) requireOperator(next http.Handler) http.Handler {
	return s.requireWriter(next, true)
}

func (s *Server) requireWriter(next http.Handler, operator bool) http.Handler {
	couch := s.couch
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tk := s.tokens.Load()
		if len(tk.write) == 0 && couch == nil {
			// Open like writes; but an operator's read (the listing of
			// IDs and filenames, of blocks, of members) is a read: with
			// read tokens set it needs one (TestOperatorReadsNeedReadToken).
			if operator && len(tk.read) > 0 && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
				if got, ok := bearer(r); !ok || !matchAny(got, tk.read) {
					s.writeError(w, r, errNeedToken)
					return
				}
			}
			next.ServeHTTP(w, r)
			return
		}
		if got, ok := bearer(r); ok && len(tk.write) > 0 && matchAny(got, tk.write) {
			next.ServeHTTP(w, r)
			return
		}
		if couch == nil {
			s.writeError(w, r, httpstatus.Errorf(http.StatusUnauthorized, "this node requires a write token: Authorization: Bearer <token>"))
			return
		}
		if err := s.authorizeCouch(r, couch, len(tk.write) > 0, operator); err != nil {
			if httpstatus.Of(err) == http.StatusServiceUnavailable {
				w.Header().Set("Retry-After", couchRetryAfter)
			}
			s.writeError(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireRead guards blob reads when read tokens are set (a write token
// reads too).
func (s *Server) requireRead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tk := s.tokens.Load()
		if len(tk.read) > 0 {
			got, ok := bearer(r)
			if !ok || !matchAny(got, tk.read, tk.write) {
				s.writeError(w, r, errNeedToken)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// requireStatus guards /, /_status and /metrics when Config.PrivateStatus
// is set: any read or write token opens them.
func (s *Server) requireStatus(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.PrivateStatus {
			tk := s.tokens.Load()
			got, ok := bearer(r)
			if !ok || !matchAny(got, tk.read, tk.write) {
				s.writeError(w, r, errNeedToken)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// clientLimiter counts uploads in flight per client address.
type clientLimiter struct {
	mu  sync.Mutex
	max int
	n   map[string]int
}

func (l *clientLimiter) acquire(addr string) bool {
	if l.max <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[addr] >= l.max {
		return false
	}
	l.n[addr]++
	return true
}

func (l *clientLimiter) release(addr string) {
	if l.max <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[addr]--; l.n[addr] <= 0 {
		delete(l.n, addr)
	}
}

// limitUploads answers 429 to a client with too many uploads in flight.
func (s *Server) limitUploads(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := s.clientAddr(r)
		if !s.uploads.acquire(addr) {
			w.Header().Set("Retry-After", "1")
			s.writeError(w, r, httpstatus.Errorf(http.StatusTooManyRequests,
				"too many uploads in flight from %s (at most %d at once); retry when one has finished", addr, s.uploads.max))
			return
		}
		defer s.uploads.release(addr)
		next.ServeHTTP(w, r)
	})
}

// clientAddr is the address a request comes from: the connection's peer,
// or, when that is a trusted proxy, the nearest untrusted address in
// X-Forwarded-For (walking from the right: the left part is whatever the
// client chose to send).
func (s *Server) clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if len(s.cfg.TrustedProxies) == 0 || !s.trusted(host) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h := strings.TrimSpace(hops[i])
		if h == "" {
			continue
		}
		if !s.trusted(h) {
			return h
		}
		host = h
	}
	return host
}

func (s *Server) trusted(host string) bool {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// Denier is implemented by a store with a deny list (*blobstore.Store).
type Denier interface {
	Denied(id dtfc.ID) (blobstore.Deny, bool)
	SetDeny(id dtfc.ID, status int, reason string, lifted bool) (blobstore.Deny, error)
	DenyList() ([]blobstore.Deny, error)
}

// checkDenied answers a blocked ID's status: for a read, the one chosen
// when it was blocked; for an upload, 451 if that was 451, else 403.
func (s *Server) checkDenied(id dtfc.ID, upload bool) error {
	if s.denier == nil {
		return nil
	}
	d, ok := s.denier.Denied(id)
	if !ok {
		return nil
	}
	return deniedError(d, upload)
}

func deniedError(d blobstore.Deny, upload bool) error {
	if upload {
		return blockedError(d, true, "; nothing was stored")
	}
	return blockedError(d, false, "")
}

// blockedError is the answer of a blocked ID, its message ending in
// suffix: an upload's is 451 or 403.
func blockedError(d blobstore.Deny, upload bool, suffix string) *httpstatus.Error {
	status := d.Status
	if upload && status != http.StatusUnavailableForLegalReasons {
		status = http.StatusForbidden
	}
	msg := "this content is blocked"
	if d.Reason != "" {
		msg += ": " + d.Reason
	}
	return &httpstatus.Error{Status: status, Msg: msg + suffix}
}

// maxReason bounds a deny entry's reason.
const maxReason = 1000

// DenyRequest is the body of PUT /_deny/{id}.
type DenyRequest struct {
	Status int    `json:"status"`
	Reason string `json:"reason"`
}

func (s *Server) putDeny(w http.ResponseWriter, r *http.Request) {
	id, err := dtfc.ParseID(chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req DenyRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, `body: want {"status": 403|404|451, "reason": "..."}: %v`, err))
		return
	}
	if req.Status == 0 {
		req.Status = http.StatusForbidden
	}
	if req.Status != 403 && req.Status != 404 && req.Status != 451 {
		s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, "status %d: want 403, 404 or 451", req.Status))
		return
	}
	if len(req.Reason) > maxReason {
		s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, "reason longer than %d bytes", maxReason))
		return
	}
	release, err := s.admit()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.denier.SetDeny(id, req.Status, req.Reason, false)
	release()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("blocked", "id", id.String(), "status", d.Status, "reason", d.Reason, "by", s.clientAddr(r))
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) liftDeny(w http.ResponseWriter, r *http.Request) {
	id, err := dtfc.ParseID(chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, ok := s.denier.Denied(id); !ok {
		s.writeError(w, r, httpstatus.Errorf(http.StatusNotFound, "%s is not on the deny list", id))
		return
	}
	release, err := s.admit()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.denier.SetDeny(id, 0, "", true)
	release()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.cfg.Cluster != nil {
		s.cfg.Cluster.Lifted(d)
	}
	s.log.Info("block lifted", "id", id.String(), "by", s.clientAddr(r))
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) listDeny(w http.ResponseWriter, r *http.Request) {
	list, err := s.denier.DenyList()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	active := []blobstore.Deny{}
	for _, d := range list {
		if d.Active() {
			active = append(active, d)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": active})
}

// errorsAsDenied maps a store's refusal of a blocked ID.
func errorsAsDenied(err error, upload bool) error {
	var de *blobstore.DeniedError
	if errors.As(err, &de) {
		return deniedError(de.Deny, upload)
	}
	return err
}

// cookieOrigin reports whether a page of origin may write with a session
// cookie: this node's own origin, or one listed by name in cors_origins
// ("*" does not count: it allows reading, never credentials).
func (s *Server) cookieOrigin(origin string) bool {
	n, ok := normalizeOrigin(origin)
	if !ok {
		return false
	}
	if me, ok := normalizeOrigin(s.cfg.Me); ok && me == n {
		return true
	}
	return newCORSPolicy(s.cfg.CORSOrigins).origins[n]
}

// authorizeCouch checks r's CouchDB credentials with couch: nil if they
// name a user who may write (with operator, a CouchDB _admin), else the
// error to answer (401, 403, or 503 with Retry-After when CouchDB cannot
// be asked). withToken says a write token would do too, for the message.
//
// A session cookie rides along with any request a browser sends to this
// node, whichever page made it: one from a page of another origin is
// refused unless that origin is listed by name in cors_origins (a
// cross-site request forgery would otherwise write as the user).
func (s *Server) authorizeCouch(r *http.Request, couch *couchAuth, withToken, operator bool) error {
	cred, ok := couchCredentialOf(r)
	if !ok {
		msg := "this node requires a CouchDB session (the AuthSession cookie) or a CouchDB user's Basic credentials"
		if withToken {
			msg += ", or a write token: Authorization: Bearer <token>"
		}
		return httpstatus.Errorf(http.StatusUnauthorized, "%s", msg)
	}
	if origin := r.Header.Get("Origin"); cred.cookie != "" && origin != "" && !s.cookieOrigin(origin) {
		return httpstatus.Errorf(http.StatusForbidden,
			"a CouchDB session cookie sent by a page of %s is refused: list that origin by name in cors_origins", origin)
	}
	err := couch.authorize(r.Context(), cred, operator)
	if errIsCouch(err) {
		// Never a 401: the credentials may be fine. The detail names
		// CouchDB's address and the cause, never the credentials.
		s.log.Warn("cannot ask CouchDB whether a writer may write", "method", r.Method, "path", r.URL.Path, "err", err)
		return errCouchUnavailable
	}
	return err
}
