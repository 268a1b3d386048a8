package peer_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// rmEmptyLiar makes a node answer every peer's GET of a blob as if the
// blob were empty: its state with size 0 and no body (a holder whose
// record's size is wrong, or any peer that lies). The bytes it sends
// (none) do not hash to the ID.
func rmEmptyLiar(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_internal/blobs/") {
			w = &rmEmptyWriter{ResponseWriter: w}
		}
		h.ServeHTTP(w, r)
	})
}

type rmEmptyWriter struct {
	http.ResponseWriter
	wrote bool
}

func (e *rmEmptyWriter) WriteHeader(code int) {
	if code >= 200 && !e.wrote {
		e.wrote = true
		if code == http.StatusOK {
			h := e.Header()
			if b, err := base64.RawURLEncoding.DecodeString(h.Get(peer.HeaderState)); err == nil {
				var st map[string]any
				if json.Unmarshal(b, &st) == nil {
					delete(st, "size") // omitempty: size 0
					b, _ = json.Marshal(st)
					h.Set(peer.HeaderState, base64.RawURLEncoding.EncodeToString(b))
				}
			}
			h.Set("Content-Length", "0")
		}
	}
	e.ResponseWriter.WriteHeader(code)
}

func (e *rmEmptyWriter) Write(p []byte) (int, error) {
	if !e.wrote {
		e.WriteHeader(http.StatusOK)
	}
	return len(p), nil // the body is dropped
}

// rmHandlersWaiting counts the goroutines of this process in a download
// handler that wait for a transfer's end (Blob.Wait).
func rmHandlersWaiting() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("server.(*Server).download(")) && bytes.Contains(g, []byte("peer.(*transfer).wait(")) {
			n++
		}
	}
	return n
}

// rmHoldCorruptWarning is a log handler that holds the fetcher's warning
// about corrupt bytes (logged after the transfer failed its hash, before
// its end is announced to its readers) until the client's handler is
// waiting for that end, or 5 s at most: the order in which a loaded
// machine would schedule them anyway, made certain.
type rmHoldCorruptWarning struct{ slog.Handler }

func (h rmHoldCorruptWarning) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "peer sent corrupt bytes") {
		deadline := time.Now().Add(5 * time.Second)
		for rmHandlersWaiting() < 1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

func (h rmHoldCorruptWarning) Enabled(context.Context, slog.Level) bool { return true }
func (h rmHoldCorruptWarning) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h rmHoldCorruptWarning) WithGroup(string) slog.Handler            { return h }

// TestMissOfAnEmptyLie: the only holder of a (non-empty) blob says
// it is empty: size 0, no body. A transfer of zero bytes has no last byte
// for download.Read to hold back, and http.ServeContent reads nothing for
// a size of 0, so only the handler's b.Failed() check stood between the
// client and a complete 200 of wrong bytes; it was made right after
// ServeContent, before the transfer had necessarily ended, and the
// handler then waited for the end (b.Wait, its result ignored) and
// returned normally: a clean 200, Content-Length 0, X-Content-SHA512
// naming a blob that is not empty (found by a review helper). Now such a
// state is refused (validState), and the handler waits for the end
// before it looks for a failure.
func TestMissOfAnEmptyLie(t *testing.T) {
	nodes := startCluster(t, nodeOpts{wrap: rmEmptyLiar}, nodeOpts{peer: func(o *peer.Options) {
		o.Logger = slog.New(rmHoldCorruptWarning{slog.DiscardHandler})
	}})
	liar, reader := nodes[0], nodes[1]
	data := []byte("not an empty blob: " + strings.Repeat("x", 100))
	id := liar.put(data)
	require.NotEqual(t, dtfc.Sum(nil), id)

	resp, err := http.Get(reader.URL + "/" + id.String())
	if err != nil {
		t.Logf("GET: %v", err)
		return // cut off before an answer: no wrong body delivered
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.False(t, reader.holds(id), "the empty lie is not stored")
	if resp.StatusCode == http.StatusOK {
		require.Error(t, rerr, "a 200 of %d bytes (Content-Length %d, X-Content-SHA512 %s...) whose SHA-512 is %x...: its transfer must be cut off, not completed",
			len(body), resp.ContentLength, resp.Header.Get("X-Content-SHA512")[:16], sha512.Sum512(body))
	}
}

// rmStallAfter makes a node's answers to peers' GETs of blobs send their
// first n bytes, then wait until gate is closed before the rest.
func rmStallAfter(n int64, gate chan struct{}) func(http.Handler) http.Handler {
	return blobAnswersAfter(n, func(w http.ResponseWriter, _ *http.Request, p []byte) (int, error) {
		<-gate
		return w.Write(p)
	})
}

// TestGetAfterDeleteJoinsTransfer: a node is pulling a blob from
// its holder for a client (the holder is slow) when a DELETE of the blob
// reaches the node and is acknowledged (200, a tombstone recorded here).
// A GET of the blob on that node after the delete must not be a 200: with
// no transfer in flight it is a 404 (the local tombstone is newer than
// the holder's copy: fetcher.ask), and a transfer that happens to be in
// flight must not change that. The GET joined the transfer
// (fetcher.attach) without the check that ask makes, and the deleted blob
// was served whole (found by a review helper).
func TestGetAfterDeleteJoinsTransfer(t *testing.T) {
	_, reader, data, id, release := stalledHolder(t)
	url := reader.URL + "/" + id.String()

	// A first client's miss: its transfer is in flight, stalled.
	resp1, err := http.Get(url)
	require.NoError(t, err)
	defer resp1.Body.Close()
	require.Equal(t, http.StatusOK, resp1.StatusCode)
	_, err = io.ReadFull(resp1.Body, make([]byte, 1))
	require.NoError(t, err)

	req, _ := http.NewRequest(http.MethodDelete, url, nil)
	dresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	dresp.Body.Close()
	require.Equal(t, http.StatusOK, dresp.StatusCode)
	st, err := reader.Store.Stat(id)
	require.NoError(t, err)
	require.True(t, st.Deleted, "the delete is recorded on the reader")

	// A GET after the acknowledged delete. Its answer's head comes
	// while the transfer is still stalled (a 404 at once; a 200 with the
	// bytes the transfer has).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req2, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp2, err := http.DefaultClient.Do(req2)
	release() // let the transfer end, whatever the answer
	require.NoError(t, err)
	body2, err := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	require.NotEqual(t, http.StatusOK, resp2.StatusCode,
		"GET after an acknowledged DELETE on this node answered 200 with %d bytes (the whole blob: %v; read error: %v; X-Dtfc-Source %q)",
		len(body2), bytes.Equal(body2, data), err, resp2.Header.Get("X-Dtfc-Source"))
}

// TestNotModifiedMissWaitsForWholeTransfer: a conditional GET
// (If-None-Match with the blob's ETag) of a blob this node does not hold
// answers 304, which needs none of the blob's bytes; yet the handler
// waited for the whole transfer it started (download: b.Wait after
// serveBlob) before the 304, buffered, left: with a slow or stalled
// holder, the client waited for the last byte of a body it never gets
// (found by a review helper).
func TestNotModifiedMissWaitsForWholeTransfer(t *testing.T) {
	_, reader, _, id, release := stalledHolder(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, reader.URL+"/"+id.String(), nil)
	req.Header.Set("If-None-Match", `"`+id.String()+`"`)
	resp, err := http.DefaultClient.Do(req)
	release()
	require.NoError(t, err, "a 304 for a miss while its holder is stalled (the transfer has 256 KiB of 1 MiB)")
	resp.Body.Close()
	require.Equal(t, http.StatusNotModified, resp.StatusCode)
}

// stalledHolder starts a holder of a 1 MiB blob that stalls after 256 KiB
// of every transfer until release is called (at the latest when the test
// ends), and a reader that holds nothing.
func stalledHolder(t *testing.T) (holder, reader *node, data []byte, id dtfc.ID, release func()) {
	t.Helper()
	gate := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	nodes := startCluster(t, nodeOpts{wrap: rmStallAfter(256<<10, gate)}, nodeOpts{})
	holder, reader = nodes[0], nodes[1]
	data = randomBytes(t, 1<<20)
	return holder, reader, data, holder.put(data), release
}
