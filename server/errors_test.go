package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
)

// TestUploadReadError: a failure to read the client's body is the
// client's (400, 408, 413), one of the store's is the server's (500).
func TestUploadReadError(t *testing.T) {
	boom := errors.New("connection reset by peer")
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"body broken", fmt.Errorf("blobstore: receiving: %w", bodyError{boom}), http.StatusBadRequest},
		{"body cut short", bodyError{io.ErrUnexpectedEOF}, http.StatusBadRequest},
		{"body idle", bodyError{httpstatus.ErrIdleTimeout}, http.StatusRequestTimeout},
		{"body over the limit", bodyError{&http.MaxBytesError{Limit: 10}}, http.StatusRequestEntityTooLarge},
		{"store full", blobstore.ErrNoSpace, http.StatusInsufficientStorage},
		{"store too large", fmt.Errorf("%w: more than 10 bytes", blobstore.ErrTooLarge), http.StatusRequestEntityTooLarge},
		{"store broken", fmt.Errorf("blobstore: writing a temp file: %w", boom), http.StatusInternalServerError},
	} {
		if got := httpstatus.Of(uploadReadError(tc.err, time.Second)); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}
