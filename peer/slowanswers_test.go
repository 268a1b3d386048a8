package peer_test

import (
	"net/http"
	"strings"
)

// blobAnswersAfter wraps a node's answers to peers' GETs of blobs: their
// first n bytes go at once (flushed), and every byte after them goes
// through then, which writes them to w its own way (slowly, or after a
// gate opens).
func blobAnswersAfter(n int64, then func(w http.ResponseWriter, r *http.Request, p []byte) (int, error)) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_internal/blobs/") {
				w = &afterWriter{ResponseWriter: w, r: r, left: n, then: then}
			}
			h.ServeHTTP(w, r)
		})
	}
}

type afterWriter struct {
	http.ResponseWriter
	r    *http.Request
	left int64
	then func(w http.ResponseWriter, r *http.Request, p []byte) (int, error)
}

func (s *afterWriter) Write(p []byte) (int, error) {
	n := 0
	if s.left > 0 {
		k := min(int64(len(p)), s.left)
		var err error
		n, err = s.ResponseWriter.Write(p[:k])
		s.left -= int64(n)
		if err != nil || s.left > 0 {
			return n, err
		}
		http.NewResponseController(s.ResponseWriter).Flush()
		p = p[k:]
	}
	if len(p) == 0 {
		return n, nil
	}
	m, err := s.then(s.ResponseWriter, s.r, p)
	return n + m, err
}
