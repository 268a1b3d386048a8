package peer_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/peer"
)

// steady sends every blob body it serves to peers at rate bytes a second,
// in 64 KiB steps: a healthy holder on a slow link, never idle.
func steady(rate int64) func(http.Handler) http.Handler {
	return blobAnswersAfter(0, func(w http.ResponseWriter, r *http.Request, p []byte) (int, error) {
		const step = 64 << 10
		n := 0
		for len(p) > 0 {
			k := min(len(p), step)
			select {
			case <-time.After(time.Duration(int64(k) * int64(time.Second) / rate)):
			case <-r.Context().Done():
				return n, r.Context().Err()
			}
			m, err := w.Write(p[:k])
			n += m
			if err != nil {
				return n, err
			}
			http.NewResponseController(w).Flush()
			p = p[k:]
		}
		return n, nil
	})
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
	a, b, reader := missFromTwoHolders(t, steady(2<<20), steady(2<<20))
	for _, p := range reader.status().Cluster.Peers {
		if p.URL == a.URL || p.URL == b.URL {
			assert.True(t, p.Up, "holder %s, healthy and steady, is marked down: %q", p.URL, p.LastError)
			assert.NotContains(t, p.LastError, "too slow", "holder %s", p.URL)
		}
	}
}

// missFromTwoHolders puts a 20 MiB blob on two nodes whose handlers are
// wrapped so (nil: as they are) and reads it, whole and right, from a
// third, within a minute: a deadline, not a timing (a transfer a holder
// holds for good never ends).
func missFromTwoHolders(t *testing.T, wrapA, wrapB func(http.Handler) http.Handler) (a, b, reader *node) {
	t.Helper()
	nodes := startCluster(t, nodeOpts{wrap: wrapA}, nodeOpts{wrap: wrapB}, nodeOpts{})
	a, b, reader = nodes[0], nodes[1], nodes[2]
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
	require.NoError(t, err, "the read ended after %d bytes", len(body))
	require.True(t, bytes.Equal(data, body), "the read got other bytes")
	return a, b, reader
}
