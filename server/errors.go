package server

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
)

// writeError answers err as JSON {"error": "..."}.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := httpstatus.Of(err)
	msg := err.Error()
	switch status {
	case http.StatusBadGateway:
		// A peer's fault, said as it is.
		s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	case http.StatusInternalServerError:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		msg = "internal error: " + msg
	}
	if status != http.StatusRequestTimeout {
		drainBody(w, r)
	}
	switch status {
	case http.StatusRequestTimeout, http.StatusRequestEntityTooLarge:
		// The rest of the body may be unread: the connection cannot be
		// reused.
		w.Header().Set("Connection", "close")
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="dtfc"`)
	case http.StatusServiceUnavailable:
		var ra retryAfter
		if errors.As(err, &ra) {
			w.Header().Set("Retry-After", ra.after)
		} else if errors.Is(err, blobstore.ErrAheadPending) {
			w.Header().Set("Retry-After", "60") // until a clock is set right
		}
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error: encoding the answer"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// maxDrain bounds how much of an unread request body is read and thrown
// away before an error answer. A client that is still sending when the
// server closes the connection gets a reset instead of the answer; reading
// a reasonable remainder first lets it see why. Beyond this, or after
// drainTime, the connection is closed regardless.
const (
	maxDrain  = 16 << 20
	drainTime = 5 * time.Second
)

func drainBody(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody || (r.Method != http.MethodPut && r.Method != http.MethodPost) {
		return
	}
	if cb, ok := r.Body.(*continueBody); ok && !cb.read.Load() {
		return // the client waits for a 100 Continue: it sent no body yet
	}
	if r.ContentLength > maxDrain {
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(drainTime))
	io.CopyN(io.Discard, r.Body, maxDrain)
}
