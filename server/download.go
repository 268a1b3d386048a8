package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
	"github.com/dtfc/dtfc/peer"
)

var (
	cacheControl = []string{"public, max-age=31536000, immutable"}
	acceptRanges = []string{"bytes"}
	nosniff      = []string{"nosniff"}
	sourceLocal  = []string{"local"}
	sourcePeer   = []string{"peer"}
	// sandbox makes a blob a document of its own unique origin in which
	// nothing runs: an uploaded HTML page or SVG image opened from a
	// node cannot run scripts as the node's origin (SECURITY.md).
	sandbox = []string{"sandbox"}
)

// download serves GET and HEAD of /{id} and /{id}/nopeerload.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	front := r.Header.Get(HeaderFront)
	if front == frontAskState {
		s.frontState(w, r)
		return
	}
	id, ok := s.readableID(w, r)
	if !ok {
		return
	}
	prefix := r.Header.Get(HeaderAccel)
	fronted := prefix != "" || front == frontAskHit
	if fronted {
		// A large hit is sent by the front from the file; a small one is
		// answered whole (below).
		if st, err := s.store.Stat(id); err == nil && !st.Deleted && st.Size > frontCacheMax && s.largeFrontHit(w, r, front, prefix, st) {
			return
		}
	}
	ctx := r.Context()
	b, err := s.open(ctx, id, peer.OpenOptions{Small: smallBlob, LocalOnly: localOnly(r), StateOnly: r.Method == http.MethodHead})
	if err != nil {
		s.writeError(w, r, s.openError(w, r, err))
		return
	}
	defer b.Close()
	if fronted {
		if b.Local() && b.State().Size <= frontCacheMax {
			// A small hit: the front may keep this answer until the
			// end of this second (frontCacheUntil).
			keptThisSecond(w.Header())
		} else {
			// A miss streams from a peer, verified as it arrives: the
			// front passes it on as it comes, never buffered or kept.
			w.Header()["X-Accel-Buffering"] = accelNoBuffering
		}
	}
	if !b.Local() && r.Header.Get("Range") != "" {
		// A range of a transfer waits for the whole blob to be verified
		// first: a client could not tell a partial answer of wrong bytes
		// from a right one.
		if err := b.Wait(ctx); err != nil {
			s.writeError(w, r, transferError(b.Source(), err))
			return
		}
	}
	s.serveBlob(w, r, b)
	if sw, ok := w.(*statusWriter); ok && sw.status == http.StatusNotModified {
		// No body: nothing to wait for (waiting held the 304 back until
		// the whole transfer was done: TestNotModifiedMissWaitsForWholeTransfer).
		return
	}
	// The client has every byte once they were verified; the handler
	// returns only once a transfer is stored, so the next request on this
	// connection finds it local. Waited for before the failure is looked
	// at: an empty answer has no last byte to hold back until the bytes
	// are verified, so it may be written before the transfer failed
	// (TestMissOfAnEmptyLie).
	b.Wait(ctx)
	if b.Failed() != nil {
		// ServeContent stopped short of the announced length (the bytes
		// from the peer did not match the ID); make sure the client sees
		// a broken transfer, not a short success.
		panic(http.ErrAbortHandler)
	}
}

// idParam parses the {id} of the route. A segment beginning with "_" is
// no ID but a route of the API this node does not have (README: unknown
// routes answer 404), not a malformed ID (400).
func idParam(r *http.Request) (dtfc.ID, error) {
	p := chi.URLParam(r, "id")
	if strings.HasPrefix(p, "_") {
		return dtfc.ID{}, httpstatus.Errorf(http.StatusNotFound, "no such route: %s %s", r.Method, r.URL.Path)
	}
	return dtfc.ParseID(p)
}

// readableID parses the {id} of a read and checks that it is not
// blocked; on false the error was answered.
func (s *Server) readableID(w http.ResponseWriter, r *http.Request) (dtfc.ID, bool) {
	id, err := idParam(r)
	if err == nil {
		err = s.checkDenied(id, false)
	}
	if err != nil {
		s.writeError(w, r, err)
		return dtfc.ID{}, false
	}
	return id, true
}

// open reads id: through the cluster, or from the store alone for a node
// without one. A HEAD of a local miss asks the peers for the state only;
// a GET streams the transfer as it arrives.
func (s *Server) open(ctx context.Context, id dtfc.ID, opts peer.OpenOptions) (*peer.Blob, error) {
	if s.cfg.Cluster == nil {
		opts.LocalOnly = true
		return peer.OpenLocal(s.store, id, opts)
	}
	return s.cfg.Cluster.Open(ctx, id, opts)
}

// openError is the answer to a blob that could not be opened.
func (s *Server) openError(w http.ResponseWriter, r *http.Request, err error) error {
	switch {
	case errors.Is(err, blobstore.ErrNotFound):
		return httpstatus.ErrNotFound
	case errors.Is(err, peer.ErrEvictedUnreachable):
		w.Header().Set("Retry-After", "5")
		return httpstatus.Errorf(http.StatusServiceUnavailable, "%v", err)
	case r.Method == http.MethodHead && errors.Is(err, peer.ErrNotFound):
		return httpstatus.ErrNotFound
	case errors.Is(err, peer.ErrNotFound):
		return fmt.Errorf("%w: %w", httpstatus.ErrNotFound, err)
	case errors.Is(err, peer.ErrBusy):
		w.Header().Set("Retry-After", "1")
		return httpstatus.Errorf(http.StatusServiceUnavailable, "%v", err)
	}
	return err
}

// transferError is the answer to a ranged GET whose pull from a peer
// failed before it could be served: the peer's fault (bytes that do not
// hash to the ID, a connection cut short) is a 502; this node's full disk
// stays a 507 and a client that went away a 503.
func transferError(source string, err error) error {
	if errors.Is(err, blobstore.ErrNoSpace) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("fetching from peer %s: %w", source, err)
	}
	return httpstatus.Errorf(http.StatusBadGateway, "fetching from peer %s: %v", source, err)
}

// smallBlob is the size up to which a blob is served from memory
// (Store.ReadOrOpen) and written with its headers in one write, rather than
// opened, then headers, then sendfile: for small files the syscalls, not
// the bytes, are the cost.
const smallBlob = 16 << 10

// HeaderAccel, sent by a front web server (see deploy/nginx.conf), asks
// dtfc to answer a local hit with its headers and an X-Accel-Redirect to
// the blob under the given internal location, so the front server sends
// the bytes straight from <basedir>/blobs (sendfile, ranges) with dtfc's
// headers. Misses are still served by dtfc itself.
const HeaderAccel = "X-Dtfc-Accel-Redirect"

// frontCacheMax is the size up to which a hit asked for by a front server
// is answered whole rather than sent by the front from the file: nginx
// keeps such answers for less than a second (deploy/nginx.conf's
// micro-cache), so that a hot small blob costs it no round trip to dtfc,
// while larger blobs go straight from disk (sendfile) and are never
// copied into its cache. Where the two ways cross depends on the
// machine: on 2026-12-06, pinned, with the front's "state" answers kept
// (HeaderFront), nginx sent a 16 KiB hit 5% faster from its cache than
// from the file, a 32 KiB one 10% faster from the file and a 64 KiB one
// 34% faster from the file (README, Performance). Until then (with an
// accel redirect, a round trip to dtfc, for every hit from the file) it
// was 128 KiB.
const frontCacheMax = 16 << 10

// frontCacheUntil is the X-Accel-Expires of an answer a front may keep:
// "@<unix seconds>", the second that has begun. nginx keeps an answer
// while its clock's whole second is not past that one, so a blob deleted
// or blocked at time t is served by the front until the next whole second
// at the latest: less than one second after t (README, "nginx in front").
func frontCacheUntil(now time.Time) string {
	return "@" + strconv.FormatInt(now.Unix(), 10)
}

// keptThisSecond marks an answer to a front as one it may keep until the
// second that has begun is over (frontCacheUntil).
func keptThisSecond(h http.Header) {
	h["X-Accel-Expires"] = []string{frontCacheUntil(time.Now())}
}

// blobFile is the path of a blob's file under blobs/ (API.md's layout),
// as the front finds it: "/ab/cd/<id>".
func blobFile(hexID string) string {
	return "/" + hexID[0:2] + "/" + hexID[2:4] + "/" + hexID
}

var accelNoBuffering = []string{"no"}

// HeaderFront is how the front web server of deploy/nginx.conf asks
// about a hit (GET or HEAD of /<id>, without conditions, ranges or a
// token), in one of two ways. nginx sets it itself on those requests and
// clears it on every other, so a client cannot.
//
// "hit": answer as to HeaderAccel (a small hit whole, kept by the front
// until the second is over; a miss streamed, marked not to be kept), but
// a local hit larger than frontCacheMax with StatusFrontFile and no body,
// kept by the front as well: the front then sends the file itself, after
// asking "state".
//
// "state": whether the front may send a blob's file itself. A local hit
// is answered 200 with the blob's Content-Type and X-Content-SHA512 (the
// front adds the headers that are the same on every hit), the file's
// path under blobs/ in X-Dtfc-File, X-Accel-Expires to the second that
// has begun, and no body; anything else (a miss, a deleted or blocked
// blob, one a tier evicted, a file not of its recorded size, which is
// quarantined, an ID that is not one) 403 with no body, which tells the
// front to ask dtfc the request itself, as it also does when the file is
// not there (deleted or evicted since).
//
// So a hot blob costs dtfc at most two requests a second, whatever the
// rate of reads, and a large hit goes from the file with sendfile.
const HeaderFront = "X-Dtfc-Front"

const (
	frontAskHit   = "hit"
	frontAskState = "state"
)

// StatusFrontFile answers a front's "hit" question about a large local
// hit: a status no client ever sees, which the front turns into sending
// the file (deploy/nginx.conf: error_page 399). StatusFrontFileCORS is
// the same for an answer that carries CORS headers (cors_origins), which
// the front then copies from the "state" answer: copying costs it at
// every hit, so it does so only there.
const (
	StatusFrontFile     = 399
	StatusFrontFileCORS = 398
)

// largeFrontHit answers a front about a local hit larger than
// frontCacheMax (st): StatusFrontFile for a "hit" question, or an accel
// redirect under prefix. False if it answered nothing.
func (s *Server) largeFrontHit(w http.ResponseWriter, r *http.Request, front, prefix string, st dtfc.State) bool {
	if front == frontAskHit {
		h := w.Header()
		code := StatusFrontFile
		if len(s.cfg.CORSOrigins) > 0 {
			// s.cors has set Vary: Origin at least, on every answer.
			code = StatusFrontFileCORS
		}
		keptThisSecond(h)
		h["Content-Length"] = []string{"0"}
		w.WriteHeader(code)
		return true
	}
	// As for the front's "state" question (frontState): the file is
	// checked and the read noted.
	b, err := s.store.Open(st.ID)
	if err != nil {
		return false
	}
	st = b.State
	b.Close()
	return s.accelRedirect(w, r, prefix, st)
}

// frontState answers a front's "state" question (see HeaderFront).
func (s *Server) frontState(w http.ResponseWriter, r *http.Request) {
	id, err := idParam(r)
	if err == nil {
		err = s.checkDenied(id, false)
	}
	// Open, not Stat: the file must be here and of its recorded size (a
	// file cut short or grown is quarantined, and the front asks dtfc
	// itself, which fetches it again), and a cache's least-recently-used
	// order must see the reads the front serves: at least one a second
	// for a blob it keeps sending.
	var b *blobstore.Blob
	if err == nil {
		b, err = s.store.Open(id)
	}
	if err != nil {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	st := b.State
	b.Close()
	// Only what varies from blob to blob: the front adds the headers
	// setBlobHeaders sets alike on every local hit (deploy/nginx.conf),
	// and each header here costs it a little at every hit.
	h := w.Header()
	hexID := st.ID.String()
	h["Content-Type"] = []string{blobContentType(st)}
	h["X-Content-Sha512"] = []string{hexID}
	h["X-Dtfc-File"] = []string{blobFile(hexID)}
	keptThisSecond(h)
	h["Content-Length"] = []string{"0"}
	h["Date"] = nil
	w.WriteHeader(http.StatusOK)
}

func (s *Server) accelRedirect(w http.ResponseWriter, r *http.Request, prefix string, st dtfc.State) bool {
	if !strings.HasPrefix(prefix, "/") || strings.ContainsAny(prefix, "\r\n?#") {
		return false
	}
	h := w.Header()
	hexID := setBlobHeaders(h, st, sourceLocal)
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatches(inm, hexID) {
		w.WriteHeader(http.StatusNotModified)
		return true
	}
	h["X-Accel-Redirect"] = []string{strings.TrimRight(prefix, "/") + blobFile(hexID)}
	h["Content-Length"] = []string{"0"}
	w.WriteHeader(http.StatusOK)
	return true
}

// etagMatches implements If-None-Match's weak comparison for one ETag.
func etagMatches(header, hexID string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == `"`+hexID+`"` {
			return true
		}
	}
	return false
}

// localOnly reports whether the request asks not to involve peers.
func localOnly(r *http.Request) bool {
	if strings.HasSuffix(r.URL.Path, "/nopeerload") {
		return true
	}
	v, ok := r.URL.Query()["nopeerload"]
	return ok && (len(v) == 0 || (v[0] != "0" && v[0] != "false"))
}

// setBlobHeaders sets the headers every answer with a blob carries (the
// same whether dtfc or a front server sends the bytes) and returns the hex
// ID. Header keys are written in canonical form directly: this is the hot
// path of every read.
func setBlobHeaders(h http.Header, st dtfc.State, source []string) string {
	hexID := st.ID.String()
	h["Content-Type"] = []string{blobContentType(st)}
	h["Etag"] = []string{`"` + hexID + `"`}
	h["X-Content-Sha512"] = []string{hexID}
	h["Cache-Control"] = cacheControl
	h["Accept-Ranges"] = acceptRanges
	h["X-Content-Type-Options"] = nosniff
	h["Content-Security-Policy"] = sandbox
	h["X-Dtfc-Source"] = source
	return hexID
}

// blobContentType is the Content-Type a blob is served with.
func blobContentType(st dtfc.State) string {
	if st.ContentType == "" || len(st.ContentType) > maxContentType {
		// A longer type was recorded before uploads were bounded, or
		// came from a peer that does not bound them: never sent on.
		return "application/octet-stream"
	}
	return st.ContentType
}

// serveBlob answers with the blob's headers and, through
// http.ServeContent, its bytes (sendfile for files), ranges and 304s.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, b *peer.Blob) {
	st := b.State()
	source := sourcePeer
	if b.Local() {
		source = sourceLocal
	}
	h := w.Header()
	setBlobHeaders(h, st, source)
	if unsatisfiableSuffix(r.Header.Get("Range")) {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", st.Size))
		s.writeError(w, r, httpstatus.Errorf(http.StatusRequestedRangeNotSatisfiable, "invalid range: a suffix of zero bytes selects nothing"))
		return
	}
	var before int64
	sw, _ := w.(*statusWriter)
	if sw != nil {
		before = sw.n
	}
	jw := &jsonErrorWriter{ResponseWriter: w}
	if b.InMemory() {
		// Through Write, not ReadFrom: net/http's ReadFrom flushes the
		// headers on their own first, one more syscall for nothing.
		jw.noReadFrom = true
	}
	http.ServeContent(jw, r, "", time.Time{}, b)
	jw.finish()
	if sw != nil {
		if b.Local() {
			s.metrics.outLocal.Add(float64(sw.n - before))
		} else {
			s.metrics.outRemote.Add(float64(sw.n - before))
		}
	}
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	id, err := idParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if v := r.Header.Get("If-Unmodified-Since"); v != "" {
		s.deleteUnmodifiedSince(w, r, id, v)
		return
	}
	st, err := s.deleteHere(id, false)
	if err == blobstore.ErrNotFound && s.cfg.Cluster != nil {
		// Unknown here but perhaps known to a peer (a delete racing its
		// upload's replication, or a file only a peer that is down
		// holds): record the tombstone here, and it replicates like any
		// delete. Only when every peer answered that it does not know the
		// ID is the answer 404 (API.md, Consistency 9).
		seen, lerr := s.cfg.Cluster.Lookup(r.Context(), id, false)
		if lerr == nil {
			// The delete is made after the state seen: dated after it.
			s.store.SeenRemote(id, seen.Clock)
		}
		if lerr == nil || errors.Is(lerr, peer.ErrPeersUnreachable) {
			st, err = s.deleteHere(id, true)
		}
	}
	if err == blobstore.ErrNotFound {
		err = httpstatus.ErrNotFound
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"sha512": st.ID.String(), "deleted": true})
}

// deleteHere records a delete made on this node, admitted (Server.admit):
// not once the node removed itself. The peers are asked (Lookup) outside
// of it: a leave waits for no network round.
func (s *Server) deleteHere(id dtfc.ID, force bool) (dtfc.State, error) {
	release, err := s.admit()
	if err != nil {
		return dtfc.State{}, err
	}
	defer release()
	return s.store.Delete(id, force)
}

// deleteUnmodifiedSince is a DELETE with If-Unmodified-Since: a delete
// of a blob this node holds, only if it was not uploaded (again) after
// that date, checked with the delete under the ID's lock; 412 otherwise,
// nothing deleted. For a caller that judged the blob by its upload time
// (dtfc couchdb orphans --purge): an upload of the same bytes since, which
// renews that time, keeps it. The condition is this node's to check, so
// an ID it holds no live record of answers 404, without asking its peers.
// A date that does not parse answers 400: ignored, as RFC 9110 would
// have it, the delete would be unconditional.
func (s *Server) deleteUnmodifiedSince(w http.ResponseWriter, r *http.Request, id dtfc.ID, v string) {
	since, err := http.ParseTime(v)
	if err != nil {
		s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, "If-Unmodified-Since: not an HTTP date: %q", v))
		return
	}
	release, err := s.admit()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.store.DeleteUnmodifiedSince(id, since)
	release()
	switch {
	case errors.Is(err, blobstore.ErrNotFound):
		err = httpstatus.Errorf(http.StatusNotFound, "not held on this node (a conditional delete asks no peer)")
	case errors.Is(err, blobstore.ErrModified):
		err = httpstatus.Errorf(http.StatusPreconditionFailed, "uploaded again after If-Unmodified-Since (%s); nothing deleted", since.UTC().Format(http.TimeFormat))
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"sha512": st.ID.String(), "deleted": true})
}

// unsatisfiableSuffix reports a Range with a suffix of zero bytes
// ("bytes=-0"), which RFC 9110 calls unsatisfiable but net/http answers
// with an empty 206.
func unsatisfiableSuffix(rng string) bool {
	spec, ok := strings.CutPrefix(rng, "bytes=")
	if !ok {
		return false
	}
	for _, part := range strings.Split(spec, ",") {
		// Trimmed and parsed as net/http does ("- 0", "-+0", "--0" and
		// "-000" are all a suffix of zero bytes to it).
		part = textproto.TrimString(part)
		if n, ok := strings.CutPrefix(part, "-"); ok {
			if i, err := strconv.ParseInt(textproto.TrimString(n), 10, 64); err == nil && i == 0 {
				return true
			}
		}
	}
	return false
}

// jsonErrorWriter turns the plain-text errors of http.ServeContent (416,
// and the like) into dtfc's JSON errors, keeping their message; success
// passes straight through, ReadFrom included (sendfile).
type jsonErrorWriter struct {
	http.ResponseWriter
	code       int
	msg        []byte
	noReadFrom bool
}

func (j *jsonErrorWriter) WriteHeader(code int) {
	if code >= 400 {
		j.code = code
		return
	}
	j.ResponseWriter.WriteHeader(code)
}

func (j *jsonErrorWriter) Write(p []byte) (int, error) {
	if j.code != 0 {
		j.msg = append(j.msg, p...)
		return len(p), nil
	}
	return j.ResponseWriter.Write(p)
}

func (j *jsonErrorWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := j.ResponseWriter.(io.ReaderFrom); ok && j.code == 0 && !j.noReadFrom {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{j}, r)
}

type writerOnly struct{ io.Writer }

func (j *jsonErrorWriter) finish() {
	if j.code == 0 {
		return
	}
	h := j.Header()
	for _, k := range []string{"Etag", "X-Content-Sha512", "Cache-Control", "X-Dtfc-Source"} {
		h.Del(k)
	}
	msg := strings.TrimSpace(string(j.msg))
	if msg == "" {
		// http.ServeContent's 412 has no text.
		msg = strings.ToLower(http.StatusText(j.code))
		if j.code == http.StatusPreconditionFailed {
			msg += ": If-Match does not name this blob's ETag"
		}
	}
	writeJSON(j.ResponseWriter, j.code, map[string]string{"error": msg})
}
