package main_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// rawHead writes head (a request up to its blank line) as it is to the
// node and reads the answer.
func rawHead(t *testing.T, baseURL, head string) (int, http.Header, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(baseURL, "http://"), deadline)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
	_, err = io.WriteString(c, head)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, b
}

// TestMaxHeaderBytesDefault: the default max_header_bytes, 8 KiB, is the
// real bound on a request's head as sent: 8192 bytes pass, 8193 get 431
// as JSON (net/http alone would take 4096 bytes more); 7 KiB of header
// from Go's client pass, 9 KiB do not; a 64 KiB line, far beyond, is
// refused by net/http itself, still 431.
func TestMaxHeaderBytesDefault(t *testing.T) {
	p := startServer(t, filepath.Join(t.TempDir(), "data"))
	head := func(size int) string {
		h := "GET /health HTTP/1.1\r\nHost: dtfc.test\r\nX-Pad: \r\n\r\n"
		return strings.Replace(h, "X-Pad: ", "X-Pad: "+strings.Repeat("p", size-len(h)), 1)
	}
	code, _, body := rawHead(t, p.url, head(8192))
	assert.Equal(t, http.StatusOK, code, "a head of 8192 bytes: %s", body)
	code, hdr, body := rawHead(t, p.url, head(8193))
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, code, "a head of 8193 bytes: %s", body)
	assert.Equal(t, "application/json", hdr.Get("Content-Type"))
	assert.Contains(t, string(body), `"error"`)
	code, _, body = rawHead(t, p.url, head(8192+4096))
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, code, "within net/http's slack: %s", body)
	code, _, _ = rawHead(t, p.url, head(64<<10))
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, code, "a 64 KiB head")

	for size, want := range map[int]int{7 << 10: http.StatusOK, 9 << 10: http.StatusRequestHeaderFieldsTooLarge} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, p.url+"/health", nil)
		require.NoError(t, err)
		req.Header.Set("X-Pad", strings.Repeat("a", size))
		resp, err := httpClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, want, resp.StatusCode, "a header of %d bytes", size)
	}
}

// TestNodeToNodeHeadersFit: the largest state a node pushes in its
// X-Dtfc-State header (a 255-byte filename and a 255-byte Content-Type,
// of the characters JSON escapes sixfold) fits the default
// max_header_bytes of its peer: the upload replicates, metadata intact.
func TestNodeToNodeHeadersFit(t *testing.T) {
	dir := t.TempDir()
	ports := []int{freePort(t), freePort(t)}
	for ports[1] == ports[0] {
		ports[1] = freePort(t)
	}
	var peers strings.Builder
	var urls []string
	for _, port := range ports {
		u := "http://127.0.0.1:" + strconv.Itoa(port)
		urls = append(urls, u)
		fmt.Fprintf(&peers, "[[peers]]\nurl = %q\n", u)
	}
	peerFile := filepath.Join(dir, "peers.toml")
	require.NoError(t, os.WriteFile(peerFile, []byte(peers.String()), 0o644))
	for i, port := range ports {
		startProc(t, urls[i], "serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--me", urls[i],
			"--basedir", filepath.Join(dir, fmt.Sprint("node", i)), "--peerlist", peerFile,
			"--cluster-secret", strings.Repeat("s", 64), "--anti-entropy-interval", "1h")
	}

	filename := strings.Repeat("<", 255)
	ctype := `application/x-dtfc; p="` + strings.Repeat("<", 255-len(`application/x-dtfc; p=""`)) + `"`
	require.Len(t, ctype, 255)
	mt, params, err := mime.ParseMediaType(ctype)
	require.NoError(t, err)
	require.Equal(t, ctype, mime.FormatMediaType(mt, params), "recorded as sent")
	data := []byte("metadata as large as it gets")
	id, err := dtfc.ParseID(sum(data))
	require.NoError(t, err)
	st, err := json.Marshal(dtfc.State{ID: id, Clock: dtfc.TimestampAt(time.Now()), Node: strings.Repeat("f", 16),
		Size: int64(len(data)), ContentType: ctype, Filename: filename})
	require.NoError(t, err)
	t.Logf("X-Dtfc-State for this upload: about %d bytes (JSON %d)", base64.RawURLEncoding.EncodedLen(len(st)), len(st))

	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, urls[0]+"/"+url.PathEscape(filename), bytes.NewReader(data))
	require.NoError(t, err)
	req.Header.Set("Content-Type", ctype)
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode, "%s", b)

	var got *http.Response
	waitUntil(t, "replicated to the second node", func() bool {
		resp, err := httpClient.Get(urls[1] + "/" + id.String() + "/nopeerload")
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got = resp
		return resp.StatusCode == http.StatusOK
	})
	assert.Equal(t, ctype, got.Header.Get("Content-Type"))
}
