// Package httpstatus decides, in one place, the HTTP status every error
// of dtfc deserves: the client routes (package server) and the
// node-to-node routes (package peer) both answer with Of.
package httpstatus

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// Error is an error with the status it deserves, for what a handler finds
// wrong with a request itself (a bad parameter, a conflict).
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Errorf returns an *Error with status and the formatted message.
func Errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

var (
	// ErrNotFound answers 404: neither this node nor a reachable peer holds
	// the ID.
	ErrNotFound = errors.New("not found on this node or any reachable peer")
	// ErrIdleTimeout answers 408: the upload body stalled.
	ErrIdleTimeout = errors.New("upload body sent nothing for too long")
	// ErrHeaderTooLarge answers 431: the request's head is larger than
	// the configured max_header_bytes.
	ErrHeaderTooLarge = errors.New("request header fields too large")
	// ErrReplicasTimeout answers 504: ?replicas=N was not reached in time.
	ErrReplicasTimeout = errors.New("not enough replicas confirmed in time; the file is stored and still replicating")
)

// Of is the status err deserves; 500 for what it does not know.
func Of(err error) int {
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
	case errors.Is(err, blobstore.ErrClockAhead):
		// A state from a peer whose clock runs too far ahead of ours.
		return http.StatusUnprocessableEntity
	case errors.Is(err, blobstore.ErrDenyUnknown), errors.Is(err, blobstore.ErrAheadPending):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrReplicasTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, ErrHeaderTooLarge):
		return http.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, blobstore.ErrModified):
		return http.StatusPreconditionFailed
	case errors.Is(err, blobstore.ErrClosed), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
