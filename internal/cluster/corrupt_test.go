package cluster

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCorruptor checks the byte flipping of the corrupting proxy alone,
// against an echo server: request bodies reach it flipped, its answers
// come back flipped (so an echo is flipped twice when both are long).
func TestCorruptor(t *testing.T) {
	var (
		mu  sync.Mutex
		got []byte // the last request body the echo server received
	)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = body
		mu.Unlock()
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.Write(body)
		if f, ok := w.(http.Flusher); ok && r.URL.Query().Get("chunked") != "" {
			f.Flush()
		}
	})
	c, hc := corruptorBefore(t, echo)

	send := func(t *testing.T, body []byte, chunked bool) (sent, back []byte) {
		t.Helper()
		var r io.Reader = bytes.NewReader(body)
		q := ""
		if chunked {
			r = io.MultiReader(r) // hides the length: sent chunked
			q = "?chunked=1"
		}
		req, err := http.NewRequest(http.MethodPut, "http://"+c.addr()+"/x"+q, r)
		require.NoError(t, err)
		res, err := hc.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		back, err = io.ReadAll(res.Body)
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		return got, back
	}
	diffs := func(a, b []byte) (n, at int) {
		at = -1
		for i := range a {
			if a[i] != b[i] {
				n, at = n+1, i
			}
		}
		return n, at
	}

	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	sent, back := send(t, body, false)
	assert.Equal(t, body, sent, "switched off: untouched")
	assert.Equal(t, body, back)
	assert.Zero(t, c.corrupted.Load())

	c.on.Store(true)
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool
		flipAt  int // -1: none
	}{
		{"small", 64, false, -1},
		{"just over", 65, false, 32},
		{"large", 1 << 20, false, 1 << 19},
		{"chunked small", 64, true, -1},
		{"chunked large", 1 << 20, true, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := c.corrupted.Load()
			b := body[:tc.size]
			sent, back := send(t, b, tc.chunked)
			require.Len(t, sent, tc.size)
			require.Len(t, back, tc.size)
			n, at := diffs(b, sent)
			if tc.flipAt < 0 {
				assert.Zero(t, n)
				assert.Equal(t, b, back)
				assert.Equal(t, before, c.corrupted.Load())
				return
			}
			assert.Equal(t, 1, n, "one byte of the request flipped")
			assert.Equal(t, tc.flipAt, at)
			assert.Equal(t, b[at]^0xFF, sent[at])
			// The echo of the flipped body is flipped again on the way
			// back, at the same offset: the two flips cancel.
			assert.Equal(t, b, back)
			assert.Equal(t, before+2, c.corrupted.Load())
		})
	}
}

// corruptorBefore starts handler as a test server and a corruptor in
// front of it, both stopped when the test ends, and a client for it.
func corruptorBefore(t *testing.T, handler http.Handler) (*corruptor, *http.Client) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	target, err := url.Parse(srv.URL)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c := newCorruptor(target, ln)
	t.Cleanup(c.close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return c, &http.Client{Transport: tr}
}
