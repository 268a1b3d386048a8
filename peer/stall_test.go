package peer

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStallWatch: a node-to-node exchange in which nothing moves for the
// stall timeout is cut off (a peer that stops answering without closing
// held replication to it for two minutes), while a peer that works on a
// long request and says so (102 Processing, the heartbeat middleware) is
// waited for, and so is a slow but moving body.
func TestStallWatch(t *testing.T) {
	oldStall, oldBeat := stallTimeout, heartbeatEvery
	stallTimeout, heartbeatEvery = 300*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { stallTimeout, heartbeatEvery = oldStall, oldBeat })

	release := make(chan struct{})
	work := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Second):
		case <-release:
		}
		io.WriteString(w, "done")
	}
	trickle := func(w http.ResponseWriter, r *http.Request) {
		for range 10 {
			io.WriteString(w, "x")
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/_internal/silent", http.HandlerFunc(work))
	mux.Handle("/_internal/busy", heartbeat(http.HandlerFunc(work)))
	mux.Handle("/_internal/trickle", http.HandlerFunc(trickle))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	r := newRemote(Peer{URL: srv.URL, Role: RoleReplica}, DefaultHTTPClient(nil), "", "me", nil)
	n := r.node.(*httpNode)
	t.Cleanup(n.hc.CloseIdleConnections)

	get := func(path string) (string, error) {
		resp, err := n.do(t.Context(), http.MethodGet, path, nil, nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	begin := time.Now()
	_, err := get("/silent")
	require.Error(t, err, "a peer silent for longer than the stall timeout")
	assert.Contains(t, err.Error(), "no progress")
	assert.Less(t, time.Since(begin), 900*time.Millisecond, "cut off after about the stall timeout")
	assert.True(t, errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "canceled"))
	assert.Equal(t, 1, r.status().Failures, "counted against the peer")

	body, err := get("/busy")
	require.NoError(t, err, "a peer that says it is working is waited for")
	assert.Equal(t, "done", body)

	body, err = get("/trickle")
	require.NoError(t, err, "a body that keeps coming is read to its end")
	assert.Equal(t, strings.Repeat("x", 10), body)
}
