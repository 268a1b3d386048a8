package main

import (
	"bytes"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/server"
)

// The migration itself is tested against pouchdb-server and real nodes in
// ../../couchdb; these check the command's arguments.
func TestCouchDBArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"couchdb"}, 2, "no sub-command"},
		{[]string{"couchdb", "help"}, 0, ""},
		{[]string{"couchdb", "shrink"}, 2, `unknown sub-command "shrink"`},
		{[]string{"couchdb", "migrate", "--db", "x"}, 2, "--couch URL is required"},
		{[]string{"couchdb", "migrate", "--couch", "http://127.0.0.1:1"}, 2, "--db NAME is required"},
		{[]string{"couchdb", "migrate", "--couch", "http://127.0.0.1:1", "--db", "a", "--db", "b"}, 1, "one --db"},
		{[]string{"couchdb", "migrate", "--couch", "http://127.0.0.1:1", "--db", "a", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"couchdb", "migrate", "--couch", "http://127.0.0.1:1", "--db", "a", "--batch", "0"}, 1, "must be positive"},
		{[]string{"couchdb", "migrate", "--couch", "ftp://u:secret@h", "--db", "a"}, 1, "want http(s)://"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--purge"}, 1, "--purge needs --older-than DURATION (at least 1m0s)"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--purge", "--older-than", "0"}, 1, "--older-than 0s: must be at least 1m0s"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--purge", "--older-than", "59s"}, 1, "--older-than 59s: must be at least 1m0s"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--older-than", "-1h"}, 1, "must be at least 1m0s"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--older-than", "soon"}, 2, "invalid value"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--blobs", "/nonexistent", "--purge", "--older-than", "1h"}, 1, "--blobs has no upload times"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--blobs", "/nonexistent", "--older-than", "1h"}, 1, "--blobs has no upload times"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--server", "ftp://h", "--older-than", "1h"}, 1, "want http(s)://"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--server", "http://127.0.0.1:1", "--older-than", "1h", "--purge"}, 1, "127.0.0.1:1/_blobs"},
		{[]string{"couchdb", "orphans", "-h"}, 0, "--older-than"},
		{[]string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--remove-attachments"}, 2, "flag provided but not defined"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(t.Context(), tc.args, nil, &out, &errb)
			// 2: the command line is wrong (usageError); 1: it failed.
			assert.Equal(t, tc.code, code, errb.String())
			assert.Contains(t, errb.String(), tc.msg)
			assert.NotContains(t, errb.String(), "secret")
		})
	}
}

func TestListBlobs(t *testing.T) {
	dir := t.TempDir()
	a, b := dtfc.Sum([]byte("a")), dtfc.Sum([]byte("bb"))
	for _, f := range []struct {
		id   dtfc.ID
		data string
	}{{a, "a"}, {b, "bb"}} {
		h := f.id.String()
		p := filepath.Join(dir, "blobs", h[:2], h[2:4])
		require.NoError(t, os.MkdirAll(p, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(p, h), []byte(f.data), 0o644))
	}
	// Not blobs: a stray file, an ID in the wrong directory.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blobs", "README"), nil, 0o644))
	c := dtfc.Sum([]byte("c")).String()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blobs", c), nil, 0o644))

	for _, d := range []string{dir, filepath.Join(dir, "blobs")} {
		held, err := listBlobs(d)
		require.NoError(t, err)
		assert.Equal(t, map[dtfc.ID]int64{a: 1, b: 2}, held)
	}
	_, err := listBlobs(filepath.Join(dir, "missing"))
	assert.Error(t, err)
}

// TestOrphansNeedsToken runs orphans against a real node whose writes
// need a token: without it, or with a wrong one, the listing is refused
// and the error names --token; with it, the run gets past the listing
// (and then fails on the CouchDB, which is not there).
func TestOrphansNeedsToken(t *testing.T) {
	store, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, store.Close()) })
	api := server.New(server.Config{AuthTokens: []string{"w"}}, store)
	srv := httptest.NewServer(api)
	t.Cleanup(func() {
		srv.Close()
		api.Wait()
	})
	args := []string{"couchdb", "orphans", "--couch", "http://127.0.0.1:1", "--db", "a", "--server", srv.URL, "--older-than", "1h", "--purge"}
	for _, extra := range [][]string{nil, {"--token", "wrong"}} {
		var out, errb bytes.Buffer
		code := run(t.Context(), append(args, extra...), nil, &out, &errb)
		assert.Equal(t, 1, code)
		assert.Contains(t, errb.String(), "401")
		assert.Contains(t, errb.String(), "--token TOKEN or $DTFC_TOKEN", "%v", extra)
		assert.Empty(t, out.String())
		t.Log(errb.String())
	}
	var out, errb bytes.Buffer
	code := run(t.Context(), append(args, "--token", "w"), nil, &out, &errb)
	assert.Equal(t, 1, code)
	assert.NotContains(t, errb.String(), "--token")
	assert.Contains(t, errb.String(), "127.0.0.1:1", "the CouchDB could not be read")
	t.Log(errb.String())
}
