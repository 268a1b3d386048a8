package peer_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/peer"
)

// trickle sends the first n bytes of every blob body it serves to
// peers at once, then one byte a second: a holder that never stops
// answering for stallTimeout (15 s), yet moves nothing.
func trickle(n int64, stop chan struct{}) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_internal/blobs/") {
				w = &trickleWriter{ResponseWriter: w, left: n, ctx: r.Context(), stop: stop}
			}
			h.ServeHTTP(w, r)
		})
	}
}

type trickleWriter struct {
	http.ResponseWriter
	left int64
	ctx  context.Context
	stop chan struct{}
}

func (s *trickleWriter) Write(p []byte) (int, error) {
	if s.left > 0 {
		k := min(int64(len(p)), s.left)
		n, err := s.ResponseWriter.Write(p[:k])
		s.left -= int64(n)
		if err != nil || s.left > 0 {
			return n, err
		}
		http.NewResponseController(s.ResponseWriter).Flush()
		p, s.left = p[k:], 0
		m, err := s.Write(p)
		return n + m, err
	}
	for i := range p {
		select {
		case <-time.After(time.Second):
		case <-s.ctx.Done():
			return i, s.ctx.Err()
		case <-s.stop:
			panic(http.ErrAbortHandler)
		}
		if _, err := s.ResponseWriter.Write(p[i : i+1]); err != nil {
			return i, err
		}
		if err := http.NewResponseController(s.ResponseWriter).Flush(); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

// TestTricklingHolderLosesItsPiece: a 20 MiB miss goes in pieces from a
// fast holder and one that trickles a byte a second after its first MiB,
// which its stall watch never cuts (a byte comes well within
// stallTimeout). The fast holder, done with every other piece and left
// waiting for stallTimeout, ends the trickler's worker (at its rate the
// piece would take far longer than twice stallTimeout) and finishes its
// piece from where it was. A review found on 2026-12-07 that nothing did:
// the prefix, the readers, the slot and the transfer waited for good.
func TestTricklingHolderLosesItsPiece(t *testing.T) {
	t.Cleanup(peer.SetStallTimeout(2 * time.Second))
	stop := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(stop) }) }
	t.Cleanup(release)
	nodes := startCluster(t, nodeOpts{}, nodeOpts{wrap: trickle(1<<20, stop)}, nodeOpts{})
	fast, slow, reader := nodes[0], nodes[1], nodes[2]
	data := randomBytes(t, 20<<20)
	id := fast.put(data)
	require.Equal(t, id, slow.put(data))

	// A deadline, not a timing: without the fix the read never ends.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, reader.URL+"/"+id.String(), nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err, "the read ended after %d bytes", len(body))
	assert.True(t, bytes.Equal(data, body))
	// Dropped from this transfer, not marked down: slow is no fault
	// (TestEquallySlowHoldersStayUp).
	for _, p := range reader.status().Cluster.Peers {
		if p.URL == slow.URL {
			assert.True(t, p.Up, "the trickler is marked down: %q", p.LastError)
		}
	}
}
