package httpstatus

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

func TestOf(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("receiving x: %w", err) }
	for _, tc := range []struct {
		err  error
		want int
	}{
		{Errorf(http.StatusConflict, "no peer list"), http.StatusConflict},
		{wrap(Errorf(http.StatusTeapot, "x")), http.StatusTeapot},
		{ErrNotFound, http.StatusNotFound},
		{wrap(blobstore.ErrNotFound), http.StatusNotFound},
		{dtfc.ErrMalformedID, http.StatusBadRequest},
		{wrap(blobstore.ErrDigestMismatch), http.StatusBadRequest},
		// The same status on the client and the node-to-node routes (it
		// was 400 on the latter).
		{wrap(blobstore.ErrTooLarge), http.StatusRequestEntityTooLarge},
		{ErrIdleTimeout, http.StatusRequestTimeout},
		{wrap(os.ErrDeadlineExceeded), http.StatusRequestTimeout},
		{wrap(blobstore.ErrNoSpace), http.StatusInsufficientStorage},
		{wrap(blobstore.ErrClockAhead), http.StatusUnprocessableEntity},
		{ErrReplicasTimeout, http.StatusGatewayTimeout},
		{ErrHeaderTooLarge, http.StatusRequestHeaderFieldsTooLarge},
		{blobstore.ErrClosed, http.StatusServiceUnavailable},
		{context.Canceled, http.StatusServiceUnavailable},
		{fmt.Errorf("disk on fire"), http.StatusInternalServerError},
	} {
		if got := Of(tc.err); got != tc.want {
			t.Errorf("Of(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
