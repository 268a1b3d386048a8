package server

import (
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

var (
	cacheControl = []string{"public, max-age=31536000, immutable"}
	acceptRanges = []string{"bytes"}
	nosniff      = []string{"nosniff"}
	sourceLocal  = []string{"local"}
	sourcePeer   = []string{"peer"}
)

// download serves GET and HEAD of /{id} and /{id}/nopeerload.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	id, err := dtfc.ParseID(chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err := s.store.Open(id)
	if err == nil {
		defer b.Close()
		s.serveBlob(w, r, b, b.State, sourceLocal)
		return
	}
	if err != blobstore.ErrNotFound {
		s.writeError(w, r, err)
		return
	}
	s.writeError(w, r, ErrNotFound)
}

// localOnly reports whether the request asks not to involve peers.
func localOnly(r *http.Request) bool {
	if strings.HasSuffix(r.URL.Path, "/nopeerload") {
		return true
	}
	v, ok := r.URL.Query()["nopeerload"]
	return ok && (len(v) == 0 || (v[0] != "0" && v[0] != "false"))
}

// serveBlob answers with the blob's headers and, through
// http.ServeContent, its bytes (sendfile for files), ranges and 304s.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, content interface {
	Read([]byte) (int, error)
	Seek(int64, int) (int64, error)
}, st dtfc.State, source []string) {
	h := w.Header()
	hexID := st.ID.String()
	ct := st.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	h["Content-Type"] = []string{ct}
	h["Etag"] = []string{`"` + hexID + `"`}
	h["X-Content-Sha512"] = []string{hexID}
	h["Cache-Control"] = cacheControl
	h["Accept-Ranges"] = acceptRanges
	h["X-Content-Type-Options"] = nosniff
	h["X-Dtfc-Source"] = source
	var before int64
	sw, _ := w.(*statusWriter)
	if sw != nil {
		before = sw.n
	}
	http.ServeContent(w, r, "", time.Time{}, content)
	if sw != nil {
		if &source[0] == &sourceLocal[0] {
			s.metrics.outLocal.Add(float64(sw.n - before))
		} else {
			s.metrics.outRemote.Add(float64(sw.n - before))
		}
	}
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	id, err := dtfc.ParseID(chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.store.Delete(id, false)
	if err == blobstore.ErrNotFound {
		err = ErrNotFound
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"sha512": st.ID.String(), "deleted": true})
}
