package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// heldBytes is the size of the files under node i's blobs/.
func heldBytes(c *cluster.Cluster, i int) int64 {
	var n int64
	for _, size := range c.BlobFiles(i) {
		n += size
	}
	return n
}

// archiveErrors is node 0's count of failed requests to archive b.
func archiveErrors(t *testing.T, c *cluster.Cluster, b *bucket) int64 {
	t.Helper()
	st, ok := archiveStatus(t, c, b)
	if !ok || st.Archive == nil {
		return 0
	}
	return st.Archive.Errors
}

// TestArchiveTier: a replica with max_bytes and an archive (a tier)
// keeps the bytes of the most recently read blobs under the limit and
// the records of all; an evicted blob is read back from the archive
// (verified, X-Dtfc-Source: peer) and a HEAD answers from the record.
// With the S3 server stopped, uploads are acknowledged and none is
// evicted while the archive has not taken it; evicted blobs answer 503
// meanwhile, not 404. A delete of an evicted blob holds across a
// restart, and every other blob still reads back.
func TestArchiveTier(t *testing.T) {
	const size, limit = 50 << 10, 200 << 10
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "tier")
	c := archiveNodes(t, b, "--archive-interval", "1h", "--max-bytes", fmt.Sprint(limit))
	hc := newClient(t)
	base := c.Nodes[0].URL

	blobs := map[string][]byte{}
	var order []string
	for i := range 12 {
		data := randomBytes(size + i)
		status, id := upload(t, hc, base, fmt.Sprintf("t%d", i), data)
		require.Equal(t, http.StatusCreated, status)
		blobs[id] = data
		order = append(order, id)
	}
	eventually(t, 30*time.Second, "the archive took every upload and the node went under max_bytes", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n == 0 && heldBytes(c, 0) <= limit
	})
	files := c.BlobFiles(0)
	assert.LessOrEqual(t, len(files), 4, "at most 4 blobs of 50 KiB held under 200 KiB")
	st, err := c.Status(0)
	require.NoError(t, err)
	require.NotNil(t, st.Cluster.Eviction, "/_status of a tier has its eviction figures")
	ev := st.Cluster.Eviction
	assert.Equal(t, int64(limit), ev.MaxBytes)
	assert.False(t, ev.Over)
	assert.Equal(t, int64(12-len(files)), ev.Evicted, "blobs evicted since the start")
	assert.GreaterOrEqual(t, ev.EvictedBytes, ev.Evicted*size)
	for id, data := range blobs {
		assert.True(t, b.holds(id, data), "only what the archive holds was evicted: %s", id[:12])
	}

	// Every record stays: a HEAD answers from it without moving bytes.
	evicted := ""
	for _, id := range order {
		if _, held := files[id]; held {
			continue
		}
		evicted = id
		req, err := http.NewRequest(http.MethodHead, base+"/"+id, nil)
		require.NoError(t, err)
		res, err := hc.Do(req)
		require.NoError(t, err)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode, "HEAD of evicted %s", id[:12])
		assert.Equal(t, fmt.Sprint(len(blobs[id])), res.Header.Get("Content-Length"))
		res, _ = get(t, hc, base+"/"+id+"?nopeerload=1")
		assert.Equal(t, http.StatusNotFound, res.StatusCode, "its bytes are not here")
	}
	require.NotEmpty(t, evicted)
	res, listing := get(t, hc, base+"/_blobs?limit=100")
	require.Equal(t, http.StatusOK, res.StatusCode)
	var page struct {
		Blobs []struct {
			ID string `json:"sha512"`
		} `json:"blobs"`
	}
	require.NoError(t, json.Unmarshal(listing, &page))
	listed := map[string]bool{}
	for _, b := range page.Blobs {
		listed[b.ID] = true
	}
	for id := range blobs {
		assert.True(t, listed[id], "GET /_blobs lists %s, evicted or not", id[:12])
	}

	// Reads bring evicted blobs back, verified; the node stays under
	// max_bytes as it reads.
	for _, id := range order {
		_, held := files[id]
		res, body := get(t, hc, base+"/"+id)
		require.Equal(t, http.StatusOK, res.StatusCode, "GET %s", id[:12])
		assert.True(t, bytes.Equal(blobs[id], body), "the bytes of %s", id[:12])
		if !held {
			assert.Equal(t, "peer", res.Header.Get("X-Dtfc-Source"), "%s read back from the archive", id[:12])
		}
	}
	eventually(t, 10*time.Second, "under max_bytes after the reads", func() bool { return heldBytes(c, 0) <= limit })
	last := order[len(order)-1]
	res, _ = get(t, hc, base+"/"+last+"?nopeerload=1")
	assert.Equal(t, http.StatusOK, res.StatusCode, "the most recently read blob is held")

	// The S3 server stopped: uploads are taken and kept, none evicted
	// while the archive lacks it, however long.
	s.Stop(t)
	var fresh []string
	for i := range 6 {
		data := randomBytes(size + 100 + i)
		status, id := upload(t, hc, base, fmt.Sprintf("down%d", i), data)
		require.Equal(t, http.StatusCreated, status)
		blobs[id] = data
		fresh = append(fresh, id)
	}
	before := archiveErrors(t, c, b)
	eventually(t, 30*time.Second, "pushes to the stopped archive failed twice more", func() bool {
		return archiveErrors(t, c, b) >= before+2
	})
	files = c.BlobFiles(0)
	for _, id := range fresh {
		_, held := files[id]
		assert.True(t, held, "upload %s not yet archived is kept", id[:12])
	}
	assert.Greater(t, heldBytes(c, 0), int64(limit), "above max_bytes rather than evict what the archive lacks")
	st, err = c.Status(0)
	require.NoError(t, err)
	assert.True(t, st.Cluster.Eviction.Over, "/_status says the tier is above max_bytes")
	var gone string
	for _, id := range order {
		if _, held := files[id]; !held {
			gone = id
			break
		}
	}
	require.NotEmpty(t, gone)
	res, body := get(t, hc, base+"/"+gone)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "an evicted blob with its archive down: %s", body)
	assert.NotEmpty(t, res.Header.Get("Retry-After"))

	s.Start(t)
	eventually(t, 60*time.Second, "the queue drained and the node back under max_bytes", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n == 0 && heldBytes(c, 0) <= limit
	})

	// A delete of an evicted blob holds, across a restart.
	files = c.BlobFiles(0)
	var victim string
	for _, id := range order {
		if _, held := files[id]; !held {
			victim = id
			break
		}
	}
	require.NotEmpty(t, victim)
	deleteID(t, hc, base, victim)
	res, _ = get(t, hc, base+"/"+victim)
	assert.Equal(t, http.StatusNotFound, res.StatusCode)
	eventually(t, 20*time.Second, "the delete in the bucket", func() bool {
		for _, st := range b.states(t, victim) {
			if st.Deleted {
				return true
			}
		}
		return false
	})
	c.Nodes[0].Stop()
	c.Nodes[0].Start()
	res, _ = get(t, hc, base+"/"+victim)
	assert.Equal(t, http.StatusNotFound, res.StatusCode, "the deleted blob stays deleted")
	for id, data := range blobs {
		if id == victim {
			continue
		}
		res, body := get(t, hc, base+"/"+id)
		require.Equal(t, http.StatusOK, res.StatusCode, "GET %s after the restart", id[:12])
		assert.True(t, bytes.Equal(data, body), "the bytes of %s", id[:12])
	}
	eventually(t, 10*time.Second, "under max_bytes", func() bool { return heldBytes(c, 0) <= limit })
}

// TestArchiveTierNeedsArchive: max_bytes on a replica whose peer list
// names no archive refuses the start, and so does a refresh of a tier's
// peer list that drops its archive (the current list stays).
func TestArchiveTierNeedsArchive(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "peers.toml")
	require.NoError(t, os.WriteFile(list, []byte("[[peers]]\nurl = \"http://127.0.0.1:1\"\n"), 0o644))
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cluster.Binary(t), "serve", "--host", "127.0.0.1", "--port", "0",
		"--basedir", filepath.Join(dir, "data"), "--peerlist", list, "--max-bytes", "1MiB").CombinedOutput()
	require.Error(t, err, "the node started:\n%s", out)
	require.NoError(t, ctx.Err(), "the node did not exit:\n%s", out)
	assert.Contains(t, string(out), "needs an archive")

	s := versitygw.ForTest(t)
	b := newBucket(t, s, "tierlist")
	c := archiveNodes(t, b, "--max-bytes", "1MiB")
	hc := newClient(t)
	require.NoError(t, os.WriteFile(c.Nodes[0].PeerList, []byte(""), 0o644))
	status, body := refresh(t, hc, c)
	assert.Equal(t, http.StatusUnprocessableEntity, status)
	assert.Contains(t, body, "needs an archive")
	_, ok := archiveStatus(t, c, b)
	assert.True(t, ok, "the archive is still listed")
}

// TestArchiveTierPushesReadBack: a tier evicts what its archive holds
// while a replica peer is down (a peer does not hold evictions back), and
// when the peer returns, the tier reads each evicted blob back to push it:
// the peer, which does not list the archive itself, gets every file.
func TestArchiveTierPushesReadBack(t *testing.T) {
	const size, limit = 50 << 10, 150 << 10
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "tierpush")
	c := cluster.Start(t, cluster.Options{Nodes: 2, Direct: true,
		Args:     []string{"--archive-interval", "1h"},
		NodeArgs: map[int][]string{0: {"--max-bytes", fmt.Sprint(limit)}},
		ExtraPeers: func(i int) string {
			if i == 0 {
				return b.entry()
			}
			return ""
		}})
	hc := newClient(t)
	c.Nodes[1].Stop()
	blobs := map[string][]byte{}
	for i := range 10 {
		data := randomBytes(size + i)
		status, id := upload(t, hc, c.Nodes[0].URL, fmt.Sprintf("p%d", i), data)
		require.Equal(t, http.StatusCreated, status)
		blobs[id] = data
	}
	eventually(t, 30*time.Second, "the tier under max_bytes with its peer down", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n == 0 && heldBytes(c, 0) <= limit
	})
	c.Nodes[1].Start()
	defer func() {
		if t.Failed() {
			t.Logf("peer files: %v; tier files: %v", c.BlobFiles(1), c.BlobFiles(0))
		}
	}()
	eventually(t, 60*time.Second, "the returning peer holds every file", func() bool {
		files := c.BlobFiles(1)
		for id := range blobs {
			if _, ok := files[id]; !ok {
				return false
			}
		}
		return true
	})
	for id, data := range blobs {
		res, body := get(t, hc, c.Nodes[1].URL+"/"+id+"?nopeerload=1")
		require.Equal(t, http.StatusOK, res.StatusCode)
		assert.True(t, bytes.Equal(data, body), "the bytes of %s on the peer", id[:12])
	}
	eventually(t, 20*time.Second, "the tier back under max_bytes", func() bool { return heldBytes(c, 0) <= limit })
}

// TestArchiveTierDamagedObject: an upload whose object in the bucket is
// already there but cut short (damaged, or written by hand) is not taken
// as archived: the push fails, naming the object, and the tier keeps the
// bytes; once the object is removed, the push writes it whole and the
// tier evicts.
func TestArchiveTierDamagedObject(t *testing.T) {
	const size, limit = 100 << 10, 60 << 10
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "damaged")
	data := randomBytes(size)
	id := dtfc.Sum(data)
	path := s.Path(b.a.BlobKey(id))
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, data[:size/2], 0o644))
	c := archiveNodes(t, b, "--archive-interval", "1h", "--max-bytes", fmt.Sprint(limit))
	hc := newClient(t)
	status, got := upload(t, hc, c.Nodes[0].URL, "d.bin", data)
	require.Equal(t, http.StatusCreated, status)
	require.Equal(t, id.String(), got)
	eventually(t, 20*time.Second, "the push refused, naming the damaged object", func() bool {
		return strings.Contains(archiveError(t, c, b), "damaged")
	})
	before := archiveErrors(t, c, b)
	eventually(t, 30*time.Second, "the push failed again", func() bool { return archiveErrors(t, c, b) > before })
	_, held := c.BlobFiles(0)[id.String()]
	assert.True(t, held, "not evicted: the bucket does not hold it")
	require.NoError(t, os.Remove(path))
	eventually(t, 60*time.Second, "written whole, then evicted", func() bool {
		_, held := c.BlobFiles(0)[id.String()]
		return b.holds(id.String(), data) && !held
	})
	res, body := get(t, hc, c.Nodes[0].URL+"/"+id.String())
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.True(t, bytes.Equal(data, body))
}

// TestTierKeepsBlobOverSameSizeDamagedObject: the bucket already has
// an object under a blob's key, of the blob's size but other bytes
// (damaged in the bucket, or written there by hand: the premise of
// TestArchiveTierDamagedObject, whose object is cut short). A tier takes
// an upload of that blob (201); its push to the archive finds the
// object "with the blob's size", takes it as archived, and the tier
// evicted its only copy. The bucket's bytes do not hash to the ID, so
// the file could never be read again: an acknowledged upload lost (found
// by a review helper). The object, planted in the server's storage, has
// no SHA-512 checksum: the tier reads it, finds it damaged, and keeps
// its bytes.
func TestTierKeepsBlobOverSameSizeDamagedObject(t *testing.T) {
	const size, limit = 100 << 10, 60 << 10
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "samesize")
	data := randomBytes(size)
	id := dtfc.Sum(data)
	damaged := bytes.Clone(data)
	damaged[size/2] ^= 0xff // one byte flipped: the same size
	path := s.Path(b.a.BlobKey(id))
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, damaged, 0o644))

	c := archiveNodes(t, b, "--archive-interval", "1h", "--max-bytes", fmt.Sprint(limit))
	hc := newClient(t)
	status, got := upload(t, hc, c.Nodes[0].URL, "d.bin", data)
	require.Equal(t, http.StatusCreated, status)
	require.Equal(t, id.String(), got)

	// The push is refused, naming the damaged object, and the tier keeps
	// its bytes, above max_bytes, and serves them.
	eventually(t, 30*time.Second, "the push refused as damaged", func() bool {
		return strings.Contains(archiveError(t, c, b), "does not hash to its ID")
	})
	_, held := c.BlobFiles(0)[id.String()]
	require.True(t, held, "the tier evicted its only copy over the damaged object")
	res, err := hc.Get(c.Nodes[0].URL + "/" + id.String())
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.True(t, bytes.Equal(data, body))
}
