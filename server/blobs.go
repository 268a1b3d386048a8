package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
)

// Lister is implemented by a store that lists its live blobs in ID order,
// a page at a time (*blobstore.Store): next is the ID to continue after,
// the zero ID once the listing is complete. A page may be short, even
// empty, while next is set.
type Lister interface {
	List(after dtfc.ID, limit int) (page []dtfc.State, next dtfc.ID, err error)
}

var _ Lister = (*blobstore.Store)(nil)

// Limits of GET /_blobs.
const (
	// DefaultListLimit is the page size of GET /_blobs without ?limit.
	DefaultListLimit = 1000
	// MaxListLimit is the largest ?limit GET /_blobs takes.
	MaxListLimit = 10000
)

// listedBlob is one blob of GET /_blobs.
type listedBlob struct {
	ID          dtfc.ID `json:"sha512"`
	Size        int64   `json:"size"`
	ContentType string  `json:"content_type,omitempty"`
	Filename    string  `json:"filename,omitempty"`
	// Uploaded is the wall-clock part of the state's clock: when the
	// upload that holds the ID was made (an upload of bytes already held
	// is a new upload).
	Uploaded   string `json:"uploaded"`
	UploadedMS int64  `json:"uploaded_ms"`
}

// listBlobs answers GET /_blobs?after=<id>&limit=N: the live blobs this
// node holds records of, in ID order, a page at a time, with "next", the
// ID to pass as after for the next page ("" once the listing is
// complete). Tombstones and blocked IDs are not listed; a cache lists
// only what it holds. It sits behind the write token: a list of IDs hands
// out every blob's read capability.
func (s *Server) listBlobs(w http.ResponseWriter, r *http.Request) {
	l, ok := s.store.(Lister)
	if !ok {
		s.writeError(w, r, httpstatus.Errorf(http.StatusNotImplemented, "this node's store cannot list its blobs"))
		return
	}
	q := r.URL.Query()
	var after dtfc.ID
	if v := q.Get("after"); v != "" {
		id, err := dtfc.ParseID(v)
		if err != nil {
			s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, "after=%.140q: want the 128-hex ID of the last blob of the previous page (its \"next\")", v))
			return
		}
		after = id
	}
	limit := DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			s.writeError(w, r, httpstatus.Errorf(http.StatusBadRequest, "limit=%.40q: want a number from 1 to %d", v, MaxListLimit))
			return
		}
		limit = n
	}
	page, next, err := l.List(after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := struct {
		Blobs []listedBlob `json:"blobs"`
		Next  string       `json:"next"`
	}{Blobs: make([]listedBlob, 0, len(page))}
	for _, st := range page {
		at := st.Clock.Time()
		out.Blobs = append(out.Blobs, listedBlob{
			ID:          st.ID,
			Size:        st.Size,
			ContentType: st.ContentType,
			Filename:    st.Filename,
			Uploaded:    at.UTC().Format(time.RFC3339Nano),
			UploadedMS:  at.UnixMilli(),
		})
	}
	if !next.IsZero() {
		out.Next = next.String()
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}
