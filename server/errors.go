package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// Error is an error with the HTTP status it deserves. Handlers return it
// for bad requests; everything else is classified by errorStatus.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

var (
	// ErrNotFound answers 404: neither this node nor a reachable peer holds
	// the ID.
	ErrNotFound = errors.New("not found on this node or any reachable peer")
	// ErrIdleTimeout answers 408: the upload body stalled.
	ErrIdleTimeout = errors.New("upload body sent nothing for too long")
	// ErrHeaderTooLarge answers 431: the request's head is larger than
	// Config.MaxHeaderBytes.
	ErrHeaderTooLarge = errors.New("request header fields too large")
	// ErrReplicasTimeout answers 504: ?replicas=N was not reached in time.
	ErrReplicasTimeout = errors.New("not enough replicas confirmed in time; the file is stored and still replicating")
)

// errorStatus is the one place that maps errors to HTTP statuses.
func errorStatus(err error) int {
	var he *Error
	switch {
	case errors.As(err, &he):
		return he.Status
	case errors.Is(err, ErrNotFound), errors.Is(err, blobstore.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, dtfc.ErrMalformedID), errors.Is(err, blobstore.ErrDigestMismatch):
		return http.StatusBadRequest
	case errors.Is(err, blobstore.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrIdleTimeout), errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusRequestTimeout
	case errors.Is(err, blobstore.ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, ErrReplicasTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, ErrHeaderTooLarge):
		return http.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, blobstore.ErrClosed), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// writeError answers err as JSON {"error": "..."}.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := errorStatus(err)
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
	if r.ContentLength > maxDrain {
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(drainTime))
	io.CopyN(io.Discard, r.Body, maxDrain)
}
