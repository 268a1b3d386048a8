package server

// With read_token set, what a client without a token can learn of the
// IDs a node holds (a review found both leaks on 2026-12-07).

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestOperatorReadsNeedReadToken: on a node with read_token and no
// auth_token (writes open: an upload box whose files only readers see),
// the operator's listings (GET /_blobs, /_deny) need a read token, as
// GET /{id} does; they listed every ID and filename to anyone.
func TestOperatorReadsNeedReadToken(t *testing.T) {
	n := startFFNode(t, Config{ReadTokens: []string{"reader"}}, nil, "")
	id := n.upload(t, "payroll-2026.pdf", []byte("confidential\n")) // writes stay open
	require.Equal(t, http.StatusUnauthorized, n.do(t, http.MethodGet, "/"+id, nil).status)

	for _, path := range []string{"/_blobs", "/_deny"} {
		a := n.do(t, http.MethodGet, path, nil)
		assert.Equal(t, http.StatusUnauthorized, a.status, "GET %s without a token: %s", path, a)
		assert.NotContains(t, string(a.body), id)
		assert.NotContains(t, string(a.body), "payroll-2026.pdf")
		assert.Equal(t, http.StatusUnauthorized, n.do(t, http.MethodGet, path, nil, "Authorization", "Bearer other").status)
		assert.Equal(t, http.StatusOK, n.do(t, http.MethodGet, path, nil, "Authorization", "Bearer reader").status, "GET %s with the read token", path)
	}
	list := n.do(t, http.MethodGet, "/_blobs", nil, "Authorization", "Bearer reader")
	assert.Contains(t, string(list.body), id)
}

// TestStatusHidesIDsFromAnonymous: the status (GET /_status and the page
// at /) shows the node's recent warnings, which name blob IDs (here the
// scrubber's "found a corrupt blob"). To a client without a token an ID
// is shown cut to 16 digits: without read_token an ID is a read
// capability, with it the IDs are not for anonymous clients either. A
// client with the read token sees it whole.
func TestStatusHidesIDsFromAnonymous(t *testing.T) {
	recent := NewRecent(0)
	log := slog.New(recent.Handler(slog.DiscardHandler))
	store, err := blobstore.Open(t.TempDir(), blobstore.Options{Logger: log})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, store.Close()) })
	n := serveFF(t, Config{AuthTokens: []string{"writer"}, ReadTokens: []string{"reader"}, Logger: log, RecentErrors: recent.Entries}, nil, store)
	id := n.upload(t, "secret.txt", []byte("a secret file\n"), "Authorization", "Bearer writer")
	parsed, err := dtfc.ParseID(id)
	require.NoError(t, err)

	// Bit rot: the file's bytes change on disk; the scrub finds it.
	path := store.Path(parsed)
	require.NoError(t, os.Chmod(path, 0o644))
	require.NoError(t, os.WriteFile(path, []byte("a secreT file\n"), 0o644))
	require.NoError(t, store.Scrub(context.Background(), 0, nil))

	for _, p := range []string{"/_status", "/"} {
		anon := n.do(t, http.MethodGet, p, nil)
		require.Equal(t, http.StatusOK, anon.status, "%s", anon)
		assert.NotContains(t, string(anon.body), id, "GET %s without a token shows the whole ID", p)
		assert.Contains(t, string(anon.body), id[:16]+"…", "GET %s: the ID cut to 16 digits", p)
		reader := n.do(t, http.MethodGet, p, nil, "Authorization", "Bearer reader")
		assert.Contains(t, string(reader.body), id, "GET %s with the read token", p)
	}
}

// TestStatusHidesCutIDs: the recent warnings are cut at 1024 bytes before
// the status shortens the IDs in them, so an ID the cut lands in has
// fewer than 128 digits left; it is shortened all the same (a review
// found 127 digits shown on 2026-12-07, with a long data directory). A
// node's identity (16 digits) is left as it is.
func TestStatusHidesCutIDs(t *testing.T) {
	id := strings.Repeat("0123456789abcdef", 8)
	for in, want := range map[string]string{
		"id=" + id + " path=/q/" + id + ".17": "id=0123456789abcdef… path=/q/0123456789abcdef….17",
		"path=/q/" + id[:127] + "…":           "path=/q/0123456789abcdef……",
		"node=0123456789abcdef peer=x":        "node=0123456789abcdef peer=x",
		"short":                               "short",
	} {
		assert.Equal(t, want, shortIDs(in))
	}
}
