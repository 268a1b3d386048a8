package main_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

// TestAuthTokenNeedsClusterSecret: a node whose writes (or reads) need a
// token but that has a peer list and no cluster secret refuses to start, with one
// line naming the keys and exit status 1, and creates nothing; with the
// secret it starts.
func TestAuthTokenNeedsClusterSecret(t *testing.T) {
	dir := t.TempDir()
	peers := filepath.Join(dir, "peers.toml")
	require.NoError(t, os.WriteFile(peers, []byte("[[peers]]\nurl = \"http://127.0.0.1:1\"\n"), 0o644))
	conf := filepath.Join(dir, "dtfc.toml")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf("auth_token = [\"w1\", \"w2\"]\npeerlist = %q\n", peers)), 0o600))

	for _, tt := range []struct {
		name string
		args []string
	}{
		{"flags", []string{"--auth-token", "w", "--peerlist", peers}},
		{"config file", []string{"--config", conf}},
		{"an empty secret is none", []string{"--auth-token", "w", "--peerlist", peers, "--cluster-secret", ""}},
		{"read_token", []string{"--read-token", "r", "--peerlist", peers}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := filepath.Join(t.TempDir(), "data")
			args := append([]string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(freePort(t)), "--basedir", base}, tt.args...)
			stdout, stderr, code := cli(t, nil, args...)
			assert.Equal(t, 1, code, "stdout: %s\nstderr: %s", stdout, stderr)
			assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
			assert.Contains(t, stderr, "_token is set but cluster_secret is not")
			assert.Contains(t, stderr, "peerlist")
			assert.NoDirExists(t, base, "nothing is created for a refused config")
		})
	}

	t.Run("with the secret", func(t *testing.T) {
		p := startServer(t, filepath.Join(t.TempDir(), "data"), "--auth-token", "w", "--peerlist", peers, "--cluster-secret", "s")
		assert.False(t, p.exited())
	})
}

// TestAuthTokenAloneHidesInternal: a node with auth_token, no
// cluster_secret and no peer list does not serve /_internal at all: a
// pushed tombstone and a pushed blob (larger than max_upload_bytes),
// sent without any token, answer 404 and change nothing.
func TestAuthTokenAloneHidesInternal(t *testing.T) {
	p := startServer(t, filepath.Join(t.TempDir(), "data"), "--auth-token", "w", "--max-upload-bytes", "1KiB")
	do := func(method, path string, body []byte, hdr ...string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, p.url+path, bytes.NewReader(body))
		require.NoError(t, err)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := httpClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}

	kept := []byte("an upload with the token")
	code, b := do(http.MethodPut, "/kept.txt", kept, "Authorization", "Bearer w")
	require.Equal(t, http.StatusCreated, code, "%s", b)
	id, err := dtfc.ParseID(sum(kept))
	require.NoError(t, err)
	code, _ = do(http.MethodPut, "/no-token.txt", []byte("x"))
	require.Equal(t, http.StatusUnauthorized, code, "the write token is in force")

	// A tombstone newer than the upload, as a peer would push it.
	tomb, err := json.Marshal(map[string]any{"changes": []dtfc.State{{
		ID: id, Deleted: true, Clock: dtfc.TimestampAt(time.Now().Add(time.Second)), Node: "zzzz-not-a-node",
	}}})
	require.NoError(t, err)
	code, b = do(http.MethodPost, "/_internal/changes", tomb, "Content-Type", "application/json")
	assert.Equal(t, http.StatusNotFound, code, "POST /_internal/changes: %s", b)
	assert.Contains(t, string(b), `"error"`)

	// A blob of 4 KiB, past max_upload_bytes, with its state.
	big := randBytes(9, 4<<10)
	bigID, err := dtfc.ParseID(sum(big))
	require.NoError(t, err)
	st, err := json.Marshal(dtfc.State{ID: bigID, Clock: dtfc.TimestampAt(time.Now()), Node: "zzzz-not-a-node", Size: int64(len(big))})
	require.NoError(t, err)
	code, b = do(http.MethodPut, "/_internal/blobs/"+bigID.String(), big, "X-Dtfc-State", base64.RawURLEncoding.EncodeToString(st))
	assert.Equal(t, http.StatusNotFound, code, "PUT /_internal/blobs: %s", b)

	// Reads of node-to-node routes are gone too.
	for _, path := range []string{"/_internal/states", "/_internal/digests", "/_internal/blobs/" + id.String()} {
		code, _ = do(http.MethodGet, path, nil)
		assert.Equal(t, http.StatusNotFound, code, "GET %s", path)
	}

	// Nothing changed: the upload is still served, the pushed blob was
	// not stored.
	assert.Equal(t, kept, mustGet(t, p.url, id.String()))
	code, _ = do(http.MethodGet, "/"+bigID.String(), nil)
	assert.Equal(t, http.StatusNotFound, code, "the pushed blob was stored")
	assert.Contains(t, p.stderr.String(), "/_internal) not served")
}

// TestReadTokenAloneHidesInternal: likewise with read_token: the blobs
// that need a read token are not served without one by /_internal.
func TestReadTokenAloneHidesInternal(t *testing.T) {
	p := startServer(t, filepath.Join(t.TempDir(), "data"), "--read-token", "r")
	data := []byte("for readers with the token")
	require.Equal(t, http.StatusCreated, putStatusData(t, p.url+"/secret.txt", data))
	id := sum(data)
	assert.Equal(t, http.StatusUnauthorized, statusOf(httpClient, p.url+"/"+id), "the read token is in force")
	for _, path := range []string{"/_internal/blobs/" + id, "/_internal/states", "/_internal/state/" + id} {
		assert.Equal(t, http.StatusNotFound, statusOf(httpClient, p.url+path), "GET %s", path)
	}
}

// putStatusData uploads data to url and returns the status.
func putStatusData(t testing.TB, url string, data []byte) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, url, bytes.NewReader(data))
	require.NoError(t, err)
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}
