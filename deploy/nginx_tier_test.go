package deploy_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// TestNginxFrontOverArchiveTier runs the shipped front before a tier: a
// replica with an archive (versitygw) and max_bytes, which keeps every
// record but only the bytes of the blobs read last. Through nginx:
//   - a blob whose bytes the tier evicted is read back from the archive,
//     verified, with dtfc's headers, and then sent by nginx from its file
//     again without reaching dtfc;
//   - a HEAD of an evicted blob answers from its record and brings no
//     bytes back;
//   - the reads nginx sends from a file count in the tier's
//     least-recently-used order, so the blob it keeps sending is not the
//     one evicted to make room;
//   - a blob deleted is served for less than a second after dtfc
//     answered the DELETE, and never read back from the archive after.
func TestNginxFrontOverArchiveTier(t *testing.T) {
	nginx := need(t, "nginx", nginxInstall)
	gw := versitygw.ForTest(t)
	archiveURL := "s3://" + gw.Bucket + "/front"
	entry := gw.PeerEntry("front", versitygw.SecretFile(t))
	const size, blobs = 100 << 10, 6
	const limit = size * 7 / 2 // three blobs and a half
	c := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true,
		Args:       []string{"--max-bytes", strconv.Itoa(limit)},
		ExtraPeers: func(int) string { return entry }})
	node := c.Nodes[0]
	ngx := startNginx(t, nginx, node)
	hc := plainClient(t, time.Minute)

	var ids []string
	var data [][]byte
	for i := range blobs { // uploads through nginx, streamed to dtfc
		data = append(data, randomData(uint64(90+i), size))
		ids = append(ids, upload(t, hc, ngx.URL+"/t"+strconv.Itoa(i), data[i]))
	}
	held := func(i int) bool { return onDisk(node, ids[i]) }
	heldCount := func() (n int) {
		for i := range blobs {
			if held(i) {
				n++
			}
		}
		return n
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		waitUntil(t, 30*time.Second, what, cond)
	}
	archived := func() bool {
		st, err := c.Status(0)
		if err != nil {
			return false
		}
		q, ok := st.Queues[archiveURL]
		return ok && q.Length == 0
	}
	waitFor("the archive took every upload and the tier went under max_bytes", func() bool {
		return archived() && heldCount() <= 3
	})
	// Evicted first: the blobs written first (none was read yet).
	for i := range blobs - 3 {
		require.False(t, held(i), "blob %d (of the first written) still held", i)
	}

	get := func(i int) reply {
		t.Helper()
		r := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+ids[i], nil)
		require.Equal(t, http.StatusOK, r.status, "blob %d: %s", i, r)
		require.Equal(t, data[i], r.body, "blob %d", i)
		assert.Equal(t, ids[i], r.header.Get("X-Content-Sha512"))
		assert.Equal(t, `"`+ids[i]+`"`, r.header.Get("Etag"))
		assert.Equal(t, strconv.Itoa(size), r.header.Get("Content-Length"))
		return r
	}
	fromFile := func(i int) reply {
		t.Helper()
		return sentByNginx(t, hc, node.URL, func() reply { return get(i) })
	}

	// A HEAD of an evicted blob: its record, no bytes brought back.
	r := httpDo(t, hc, http.MethodHead, ngx.URL+"/"+ids[0], nil)
	require.Equal(t, http.StatusOK, r.status, "HEAD of evicted blob 0: %s", r)
	assert.Equal(t, strconv.Itoa(size), r.header.Get("Content-Length"))
	assert.False(t, held(0), "a HEAD brought blob 0's bytes back")

	// Blob 3, the oldest held, is read until nginx sends it from its file
	// (the front's state answer opened it: a read, in the tier's order).
	assert.Equal(t, "local", fromFile(3).header.Get("X-Dtfc-Source"))
	// Blob 1, evicted, is read back from the archive through nginx, and
	// the tier makes room for it.
	first := get(1)
	assert.Equal(t, "peer", first.header.Get("X-Dtfc-Source"), "blob 1 read back from the archive")
	waitFor("blob 1 held again", func() bool { return held(1) })
	waitFor("the tier under max_bytes again", func() bool { return heldCount() <= 3 })
	assert.True(t, held(3), "the blob nginx kept sending was evicted")
	assert.False(t, held(4), "the blob read least recently was kept")
	assert.True(t, held(5))
	// Held again, blob 1 is sent by nginx from its file, with the same
	// headers as when dtfc streamed it from the archive (but its source).
	again := fromFile(1)
	assert.Equal(t, "local", again.header.Get("X-Dtfc-Source"))
	sameHeaders(t, first, again, "X-Dtfc-Source")

	// A delete through nginx of blob 3, which nginx was sending from its
	// file: served for less than a second after the answer, then 404,
	// and never read back from the archive.
	fromFile(3)
	del := httpDo(t, hc, http.MethodDelete, ngx.URL+"/"+ids[3], nil)
	answered := time.Now()
	require.Contains(t, []int{http.StatusOK, http.StatusNoContent}, del.status, "DELETE: %s", del)
	staleAtMostASecond(t, hc, ngx.URL+"/"+ids[3], answered, http.StatusNotFound)
	waitFor("the delete in the archive", archived)
	for range 3 {
		r := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+ids[3], nil)
		require.Equal(t, http.StatusNotFound, r.status, "deleted blob 3: %s", r)
	}
	assert.False(t, held(3), "deleted blob 3 back on disk")
	// Every other blob still reads back through nginx.
	for i := range blobs {
		if i != 3 {
			get(i)
		}
	}
}
