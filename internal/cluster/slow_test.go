package cluster

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCorruptorSlows checks the delay and the rate limit of the
// corrupting proxy against an echo server.
func TestCorruptorSlows(t *testing.T) {
	c, hc := corruptorBefore(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Write(body)
	}))
	send := func(body []byte) time.Duration {
		t.Helper()
		start := time.Now()
		res, err := hc.Post("http://"+c.addr()+"/", "application/octet-stream", bytes.NewReader(body))
		require.NoError(t, err)
		back, err := io.ReadAll(res.Body)
		res.Body.Close()
		require.NoError(t, err)
		require.True(t, bytes.Equal(body, back), "echoed %d bytes of %d", len(back), len(body))
		return time.Since(start)
	}
	body := bytes.Repeat([]byte("x"), 200_000)
	send(body)

	c.delay.Store(int64(150 * time.Millisecond))
	assert.GreaterOrEqual(t, send(body[:10]), 300*time.Millisecond, "delayed both ways")
	c.unslow()

	c.rate.Store(1_000_000) // 1 MB/s: 200 kB takes 200 ms each way
	assert.GreaterOrEqual(t, send(body), 350*time.Millisecond, "throttled")
	c.unslow()
	assert.Zero(t, c.delay.Load())
	assert.Zero(t, c.rate.Load())
	send(body)
}
