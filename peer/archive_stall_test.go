package peer

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
)

// TestArchiveStalledServerIsCutOff: a bucket's server that stops
// answering without closing holds no request for longer than
// archiveStallTimeout: one that never answers, and one that sends half a
// blob and then nothing. Before stallTransport a stalled S3 server held a
// pusher, the relay, a miss and a DELETE's lookup forever.
func TestArchiveStalledServerIsCutOff(t *testing.T) {
	old := archiveStallTimeout
	archiveStallTimeout = 300 * time.Millisecond
	t.Cleanup(func() { archiveStallTimeout = old })

	// A real socket whose server takes requests and then stalls: for a
	// GET of a blob it sends the head and half the body.
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Query().Get("list-type") == "" {
			w.Header().Set("Content-Length", "2048")
			w.WriteHeader(http.StatusOK)
			w.Write(make([]byte, 1024))
			w.(http.Flusher).Flush()
		}
		<-stall
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	a, err := archive.New(t.Context(), archive.Config{Bucket: "b", Endpoint: "http://" + ln.Addr().String(),
		PathStyle: true, AccessKeyID: "k", SecretAccessKeyFile: writeTemp(t, "s"), Wrap: watchStalls})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start := time.Now()
	_, err = a.NewestState(ctx, dtfc.ID{1})
	require.Error(t, err)
	require.NoError(t, ctx.Err(), "cut off by the operation's deadline, not by the stall watch")
	t.Logf("a listing with no answer failed after %v: %v", time.Since(start), err)

	start = time.Now()
	body, _, err := a.OpenBlob(ctx, dtfc.ID{1}, 0)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, body)
	body.Close()
	require.Error(t, err)
	require.NoError(t, ctx.Err())
	t.Logf("a body that stopped half-way failed after %v: %v", time.Since(start), err)
}

// writeTemp writes s to a file in a temporary directory and returns its
// path.
func writeTemp(t *testing.T, s string) string {
	t.Helper()
	p := t.TempDir() + "/secret"
	require.NoError(t, os.WriteFile(p, []byte(s), 0o600))
	return p
}
