package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// TestScrubRepairs: a byte flipped in a blob file on disk is found by the
// scrubber, the corrupt copy quarantined and the blob fetched again from a
// peer (Consistency 5). About 3 s.
func TestScrubRepairs(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3, Args: []string{"--scrub-interval", "2s"}})
	hc := newClient(t)
	data := randomBytes(256 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "scrubbed.bin", data)
	c.WaitConverged(t, converge)

	n := c.Nodes[1]
	path := blobPath(n, id)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(path, fi.Mode().Perm()|0o200))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	b := []byte{0}
	_, err = f.ReadAt(b, 100_000)
	require.NoError(t, err)
	b[0] ^= 0xFF
	_, err = f.WriteAt(b, 100_000)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	got, err := cluster.HashFile(path)
	require.NoError(t, err)
	require.NotEqual(t, id, got, "the flip did not change the file")
	flipped := time.Now()

	quarantine := filepath.Join(n.Basedir, "quarantine")
	eventually(t, converge, "node 1 quarantines the corrupt copy and holds the right bytes again", func() bool {
		h, err := cluster.HashFile(path)
		return err == nil && h == id && len(quarantined(t, quarantine, id)) > 0
	})
	t.Logf("repaired %v after the flip", time.Since(flipped).Round(time.Millisecond))
	q := quarantined(t, quarantine, id)
	require.Len(t, q, 1)
	h, err := cluster.HashFile(filepath.Join(quarantine, q[0]))
	require.NoError(t, err)
	assert.Equal(t, got, h, "the quarantined file is the corrupt copy")
	assertHeld(t, c, 1, id, int64(len(data)))
	c.WaitConverged(t, converge)
	assertEveryReplica(t, c, id, int64(len(data)))
	assert.True(t, logHas(n, "corrupt"), "node 1's log does not mention the corruption")
	c.CheckNoTemp(t)
}

// quarantined lists the files in dir whose names start with id.
func quarantined(t *testing.T, dir, id string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			out = append(out, e.Name())
		}
	}
	return out
}
