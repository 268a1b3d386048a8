package peer_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCorruptMissOverHTTP2: a miss whose only holder sends a wrong
// byte, read over HTTP/2: the whole GET must end in a stream error (not
// END_STREAM after a short body), and a ranged GET must be a 502. (A
// review's check, 2026-12-07: it passed as it is.)
func TestCorruptMissOverHTTP2(t *testing.T) {
	var on atomic.Bool
	on.Store(true)
	nodes := startCluster(t, nodeOpts{wrap: corrupter(&on)}, nodeOpts{})
	bad, reader := nodes[0], nodes[1]
	data := randomBytes(t, 6<<20)
	id := bad.put(data)

	h2 := httptest.NewUnstartedServer(reader.hs.Config.Handler)
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()
	hc := h2.Client()

	resp, err := hc.Get(h2.URL + "/" + id.String())
	require.NoError(t, err)
	assert.Equal(t, 2, resp.ProtoMajor)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Error(t, err, "a corrupt miss over HTTP/2 must be a stream error")
	t.Logf("whole: %d of %d bytes, err %v", len(body), len(data), err)

	req, _ := http.NewRequest(http.MethodGet, h2.URL+"/"+id.String(), nil)
	req.Header.Set("Range", "bytes=0-99")
	resp, err = hc.Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
}
