package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPutRecordsAnyFileName: `dtfc put FILE` records the file's base
// name as metadata (API.md: "A client-supplied filename is metadata only";
// "files are always retrieved by ID"), whatever it is called. The client
// sent it as the path of `PUT /{filename}`, so a name that means
// something there broke the upload of an ordinary file (found by a review
// helper): a name beginning with "_" (_config.yml, __init__.py) is a
// reserved path, and one of 128 hex digits is taken as the expected ID.
// It now sends POST /?filename=, where the server records either.
func TestPutRecordsAnyFileName(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	dir := t.TempDir()
	for _, name := range []string{"_config.yml", "__init__.py", strings.Repeat("ab", 64)} {
		t.Run(name[:min(len(name), 16)], func(t *testing.T) {
			data := []byte("an ordinary file called " + name + "\n")
			path := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(path, data, 0o644))
			out, errOut, code := cli(t, nil, "put", "--server", srv.url, path)
			assert.Equal(t, 0, code, "dtfc put %s: stderr: %s", name, errOut)
			assert.Equal(t, sum(data), strings.TrimSpace(out))
		})
	}
}

// TestGetAndRmSayWhatIsWrong: `dtfc get -o DIR` is refused before the
// download (it failed at the end, naming its temp file), and `dtfc rm` of
// an unknown ID says so once (it printed the ID three times).
func TestGetAndRmSayWhatIsWrong(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	dir := t.TempDir()
	path := filepath.Join(dir, "f.txt")
	data := []byte("get me\n")
	require.NoError(t, os.WriteFile(path, data, 0o644))
	out, _, code := cli(t, nil, "put", "--server", srv.url, path)
	require.Equal(t, 0, code)
	id := strings.TrimSpace(out)

	_, errOut, code := cli(t, nil, "get", "--server", srv.url, "-o", dir, id)
	assert.NotZero(t, code)
	assert.Contains(t, errOut, "is a directory")
	_, errOut, code = cli(t, nil, "get", "--server", srv.url, "-o", filepath.Join(dir, "no", "x"), id)
	assert.NotZero(t, code)
	assert.Contains(t, errOut, "does not exist")

	unknown := sum([]byte("never uploaded"))
	_, errOut, code = cli(t, nil, "rm", "--server", srv.url, unknown)
	assert.NotZero(t, code)
	assert.Equal(t, 1, strings.Count(errOut, unknown), "stderr: %s", errOut)
	assert.Contains(t, errOut, "not found")
}
