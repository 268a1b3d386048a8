package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/server"
)

// TestPreconditionFailedHasAMessage: a GET with an If-Match that
// does not name the blob's ETag answers 412 with a message. It answered
// {"error": ""}: the status comes from http.ServeContent, which writes no
// text (found by a review helper). API.md: "Every error answers a JSON
// body {"error": "..."} with a clear message."
func TestPreconditionFailedHasAMessage(t *testing.T) {
	n := startNode(t, server.Config{})
	data := randBytes(3, 500)
	id := sum(data)
	requireStatus(t, n.put(t, "/x.bin", data), http.StatusCreated)
	a := n.get(t, "/"+id, "If-Match", `"not-its-etag"`)
	requireError(t, a, http.StatusPreconditionFailed)
}

// TestExpectContinueRefusedAtOnce: an upload refused before its
// body is read (413 by Content-Length, 401 without the write token, 400
// for an ID the header contradicts), sent with "Expect: 100-continue",
// is answered at once, never "100 Continue" first. It was: writeError's
// drainBody read the body to throw it away, and reading it is what makes
// net/http send the 100; the client then sent the whole body (up to
// maxDrain, 16 MiB) for nothing, and got the refusal only after it (or
// after drainTime, 5 s). README: "413 beyond max_upload_bytes (at once
// when Content-Length says so)". (Found by a review helper.)
func TestExpectContinueRefusedAtOnce(t *testing.T) {
	const token = "write-secret"
	n := startNode(t, server.Config{MaxUploadBytes: 1000, AuthTokens: []string{token}})
	other := sum([]byte("other"))
	for _, tt := range []struct {
		name   string
		target string
		extra  string
		want   int
	}{
		{"413", "/big.bin", "Authorization: Bearer " + token + "\r\n", http.StatusRequestEntityTooLarge},
		{"401", "/small.bin", "", http.StatusUnauthorized},
		{"400", "/" + sum([]byte("x")), "Authorization: Bearer " + token + "\r\nX-Content-SHA512: " + other + "\r\n", http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
			// The head only: a client that expects 100-continue waits
			// for it (or for the final answer) before the body.
			_, err = io.WriteString(c, fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: dtfc.test\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n%s\r\n", tt.target, tt.extra))
			require.NoError(t, err)
			res, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodPut})
			require.NoError(t, err)
			res.Body.Close()
			require.Equal(t, tt.want, res.StatusCode,
				"the first answer to a refused upload with Expect: 100-continue is %q: the client is told to send a body that will be thrown away", res.Status)
		})
	}
}
