package e2e_test

import (
	"crypto/sha512"
	"encoding/hex"
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

	"github.com/dtfc/dtfc/internal/versitygw"
)

// vmHWM is the peak resident set size of process pid (VmHWM in
// /proc/<pid>/status), in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err, line)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestArchiveTwoGiB: a 2 GiB blob uploaded to node A goes to the bucket
// in parts (32 of 64 MiB, each read from A's file), and node B, whose
// only peer is the bucket, serves a GET of it as a miss from the bucket
// (X-Dtfc-Source: peer) whose bytes hash to the ID; neither node's peak
// RSS (VmHWM) passes 64 MiB: memory stays flat whatever the blob's size.
// It moves some 10 GB through the disk and takes minutes, so it runs
// only when asked:
//
//	DTFC_TEST_2GIB=1 go test -run TestArchiveTwoGiB -v -timeout 30m ./e2e/
func TestArchiveTwoGiB(t *testing.T) {
	if os.Getenv("DTFC_TEST_2GIB") == "" {
		t.Skip("moves 2 GiB through an archive for minutes; run with DTFC_TEST_2GIB=1 go test -run TestArchiveTwoGiB -v -timeout 30m ./e2e/")
	}
	const size = 2 << 30
	const maxRSS = 64 << 20
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "huge")
	// Both started before the upload, the relay's only round at their
	// start: B's GET is the miss that reads the bucket.
	a := archiveNodes(t, b, "--archive-interval", "1h")
	r := archiveNodes(t, b, "--archive-interval", "1h")
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(hc.CloseIdleConnections)

	path, pid := randomFile(t, t.TempDir(), size)
	id := pid.String()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	start := time.Now()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, a.Nodes[0].URL+"/huge.bin", f)
	require.NoError(t, err)
	req.ContentLength = size
	res, err := hc.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode, "%s", body)
	require.Contains(t, string(body), id)
	uploaded := time.Since(start)
	f.Close()
	require.NoError(t, os.Remove(path)) // the disk is needed below

	eventually(t, 15*time.Minute, "the blob's record in the bucket", func() bool {
		return len(b.states(t, id)) == 1
	})
	archived := time.Since(start)
	p, ok := archiveStatus(t, a, b)
	require.True(t, ok)
	assert.EqualValues(t, size, p.Archive.BytesWritten, "every part counted once")
	parts, err := os.ReadDir(filepath.Dir(s.Path(b.a.BlobKey(pid))))
	require.NoError(t, err)
	require.Len(t, parts, 1)
	info, err := parts[0].Info()
	require.NoError(t, err)
	assert.EqualValues(t, size, info.Size(), "the object in the bucket")
	hwmA := vmHWM(t, a.Nodes[0].PID())

	start = time.Now()
	res, err = hc.Get(r.Nodes[0].URL + "/" + id)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "peer", res.Header.Get("X-Dtfc-Source"))
	h := sha512.New()
	n, err := io.Copy(h, res.Body)
	res.Body.Close()
	require.NoError(t, err)
	missed := time.Since(start)
	require.EqualValues(t, size, n)
	require.Equal(t, id, hex.EncodeToString(h.Sum(nil)), "the bytes B served hash to the ID")
	hwmB := vmHWM(t, r.Nodes[0].PID())
	pr, ok := archiveStatus(t, r, b)
	require.True(t, ok)
	assert.EqualValues(t, size, pr.Archive.BytesRead)
	res, err = hc.Head(r.Nodes[0].URL + "/" + id + "?nopeerload=1")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode, "B kept the blob")

	t.Logf("2 GiB: upload to A %v; in the bucket %v after the upload began; miss on B from the bucket %v (%.0f MB/s)",
		uploaded.Round(time.Millisecond), archived.Round(time.Millisecond), missed.Round(time.Millisecond), float64(size)/missed.Seconds()/1e6)
	t.Logf("peak RSS (VmHWM): A %.1f MiB, B %.1f MiB (limit %d MiB)", float64(hwmA)/(1<<20), float64(hwmB)/(1<<20), maxRSS>>20)
	assert.Less(t, hwmA, int64(maxRSS), "A's peak RSS")
	assert.Less(t, hwmB, int64(maxRSS), "B's peak RSS")
}
