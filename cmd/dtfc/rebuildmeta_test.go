package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
)

// runCmd runs dtfc in this process with args and returns its output and
// exit code.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), code
}

// TestRebuildMetaCommand: dtfc serve refuses a store whose meta.db is
// missing with a message naming dtfc rebuild-meta, and no Go trace;
// rebuild-meta leaves sound metadata alone unless forced, refuses a
// directory without a store, and rebuilds the missing metadata with a
// summary.
func TestRebuildMetaCommand(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	for _, data := range []string{"one", "two"} {
		w, err := s.NewWriter(blobstore.WriterOptions{})
		require.NoError(t, err)
		_, err = w.Write([]byte(data))
		require.NoError(t, err)
		_, err = w.Commit(blobstore.Upload{})
		require.NoError(t, err)
		require.NoError(t, w.Close())
	}
	node := s.NodeID()
	require.NoError(t, s.Close())

	_, errOut, code := runCmd(t, "rebuild-meta", "--basedir", dir)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "the metadata is sound")
	assert.Contains(t, errOut, "--force")

	_, errOut, code = runCmd(t, "rebuild-meta", "--basedir", filepath.Join(dir, "blobs", "nothing-here"))
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "holds no store")

	_, errOut, code = runCmd(t, "rebuild-meta", "--basedir", dir, "extra")
	assert.Equal(t, 2, code, "a wrong command line")
	assert.Contains(t, errOut, `unexpected argument "extra"`)

	require.NoError(t, os.Remove(filepath.Join(dir, "meta.db")))
	_, errOut, code = runCmd(t, "serve", "--host", "127.0.0.1", "--port", "0", "--basedir", dir)
	assert.Equal(t, 1, code, "stderr: %s", errOut)
	assert.Contains(t, errOut, "the metadata is missing: "+filepath.Join(dir, "meta.db"))
	assert.Contains(t, errOut, "changed nothing")
	assert.Contains(t, errOut, "dtfc rebuild-meta --basedir "+dir)
	assert.NotContains(t, errOut, "goroutine ")

	out, errOut, code := runCmd(t, "rebuild-meta", "--basedir", dir)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	assert.Contains(t, out, "found:       meta.db is missing")
	assert.Contains(t, out, "node "+node+", identity kept (node-id)")
	assert.Contains(t, out, "verified:    2 files, 6.0 B")
	assert.Contains(t, out, "quarantined: 0 files")
	assert.Contains(t, out, "Next: start the node")
}
