package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

// TestTokensSetBySIGHUPHideInternal: a single node (no peer
// list, no join, no cluster secret) started without tokens serves
// /_internal, unauthenticated: there is nothing to protect yet. The
// operator then adds auth_token and read_token to the file and sends
// SIGHUP; cmd/dtfc's reloadOnHUP calls api.SetTokens, exactly as below.
// SECURITY.md: "With auth_token or read_token set, ... a node without one
// [peer list] does not serve /_internal at all (404): a token alone
// protects what it is for". Restarted with the same file it answers 404
// (NoInternal = internalHidden()); after the SIGHUP, /_internal still
// handed out every blob and took deletes with no token and no secret
// (found by a review helper). Now it is hidden as soon as a token is in
// force (Config.InternalUnguarded, as cmd/dtfc sets it for such a node).
func TestTokensSetBySIGHUPHideInternal(t *testing.T) {
	dir := t.TempDir()
	store, err := blobstore.Open(filepath.Join(dir, "data"), blobstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, store.Close()) })

	srv := httptest.NewUnstartedServer(nil)
	me := "http://" + srv.Listener.Addr().String()
	// As cmd/dtfc's newCluster and newAPI build a node without a peer
	// list, tokens or secret: the cluster exists, /_internal is mounted.
	cl, err := peer.New(store, peer.Options{Me: me, ScrubInterval: -1})
	require.NoError(t, err)
	api := server.New(server.Config{Me: me, Cluster: cl, InternalUnguarded: true}, store)
	srv.Config.Handler = api
	srv.Start()
	t.Cleanup(func() { srv.Close(); api.Wait() })

	data := []byte("private report")
	id := dtfc.Sum(data)
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/report.txt", bytes.NewReader(data))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)

	// SIGHUP with auth_token = "w", read_token = "r" in the file.
	api.SetTokens([]string{"w"}, []string{"r"})

	resp, err = http.Get(srv.URL + "/" + id.String())
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the public route wants the read token now")

	// The node-to-node route, with neither token nor secret.
	resp, err = http.Get(srv.URL + "/_internal/blobs/" + id.String())
	require.NoError(t, err)
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.NotEqual(t, http.StatusOK, resp.StatusCode, "GET /_internal/blobs/{id} without token or secret served %q", got)

	// A tombstone, with neither token nor secret.
	st, err := store.Stat(id)
	require.NoError(t, err)
	body, _ := json.Marshal(map[string]any{"changes": []dtfc.State{{ID: id, Deleted: true, Clock: st.Clock + 1<<20, Node: "intruder"}}})
	resp, err = http.Post(srv.URL+"/_internal/changes", "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	resp.Body.Close()
	after, _ := store.Stat(id)
	assert.False(t, after.Deleted, "POST /_internal/changes without token or secret deleted the blob (answer %d)", resp.StatusCode)
}
