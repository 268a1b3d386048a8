package peer_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/peer"
)

// steady sends every blob body it serves to peers at rate bytes a second,
// in 64 KiB steps: a healthy holder on a slow link, never idle.
func steady(rate int64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_internal/blobs/") {
				w = &steadyWriter{ResponseWriter: w, rate: rate, ctx: r.Context()}
			}
			h.ServeHTTP(w, r)
		})
	}
}

type steadyWriter struct {
	http.ResponseWriter
	rate int64
	ctx  context.Context
}

func (s *steadyWriter) Write(p []byte) (int, error) {
	const step = 64 << 10
	n := 0
	for len(p) > 0 {
		k := min(len(p), step)
		select {
		case <-time.After(time.Duration(int64(k) * int64(time.Second) / s.rate)):
		case <-s.ctx.Done():
			return n, s.ctx.Err()
		}
		m, err := s.ResponseWriter.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		http.NewResponseController(s.ResponseWriter).Flush()
		p = p[k:]
	}
	return n, nil
}

// TestEquallySlowHoldersStayUp: a 20 MiB miss in pieces from two holders
// equally slow (2 MiB/s each: a piece takes 2 s; here stallTimeout is
// 1 s, as a piece on a slow link may take more than the real 15 s). Each
// sends steadily: neither stalls, neither is at fault. At the last piece
// one holder has nothing left to claim; after stallTimeout it looks at
// the other's piece, which will be done well within twice stallTimeout
// at its rate, and leaves it. The first version of the trickler's fix
// ended it, and marked the holder down (a review found it on
// 2026-12-07); a holder dropped as too slow is not marked down at all.
func TestEquallySlowHoldersStayUp(t *testing.T) {
	t.Cleanup(peer.SetStallTimeout(time.Second))
	nodes := startCluster(t, nodeOpts{wrap: steady(2 << 20)}, nodeOpts{wrap: steady(2 << 20)}, nodeOpts{})
	a, b, reader := nodes[0], nodes[1], nodes[2]
	data := randomBytes(t, 20<<20)
	id := a.put(data)
	require.Equal(t, id, b.put(data))

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, reader.URL+"/"+id.String(), nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, body))
	for _, p := range reader.status().Cluster.Peers {
		if p.URL == a.URL || p.URL == b.URL {
			assert.True(t, p.Up, "holder %s, healthy and steady, is marked down: %q", p.URL, p.LastError)
			assert.NotContains(t, p.LastError, "too slow", "holder %s", p.URL)
		}
	}
}
