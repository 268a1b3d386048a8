package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/internal/cluster"
)

// converge bounds a WaitConverged: generous, for a noisy 2-core CI
// machine (the harness runs anti-entropy every 2 s).
const converge = 30 * time.Second

func TestMain(m *testing.M) { cluster.VerifyTestMain(m) }

// newClient returns an HTTP client for talking to the nodes directly (not
// through the proxies). Its connections are closed when the test ends.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 16,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// uniq makes randomBytes' outputs distinct within the test process.
var uniq atomic.Uint64

// randomBytes returns n bytes never returned before in this process.
func randomBytes(n int) []byte {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uniq.Add(1))
	binary.LittleEndian.PutUint64(seed[8:], 0xe2e)
	return bytesFrom(seed, n)
}

// bytesFrom returns n pseudo-random bytes determined by seed.
func bytesFrom(seed [32]byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8(seed).Read(b)
	return b
}

// idOf is the dtfc ID of data: its SHA-512 in lower-case hex.
func idOf(data []byte) string {
	sum := sha512.Sum512(data)
	return hex.EncodeToString(sum[:])
}

// tryUpload PUTs data as name to the node at base. It returns the status
// and, for a 200 or 201, the ID the node answered; err is a transport
// failure or a malformed answer. Safe to call from any goroutine.
func tryUpload(ctx context.Context, hc *http.Client, base, name string, data []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, base+"/"+name, bytes.NewReader(data))
	if err != nil {
		return 0, "", err
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, "", fmt.Errorf("PUT %s: reading the answer: %w", name, err)
	}
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusCreated {
		return res.StatusCode, "", nil
	}
	var ans struct {
		SHA512 string `json:"sha512"`
		Size   int64  `json:"size"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return res.StatusCode, "", fmt.Errorf("PUT %s: %s: %w", name, body, err)
	}
	if ans.SHA512 != idOf(data) || ans.Size != int64(len(data)) {
		return res.StatusCode, "", fmt.Errorf("PUT %s: answered %s, want sha512 %s and size %d", name, body, idOf(data), len(data))
	}
	return res.StatusCode, ans.SHA512, nil
}

// upload PUTs data to the node at base, requires a 200 or 201 and returns
// the status and the ID.
func upload(t *testing.T, hc *http.Client, base, name string, data []byte) (int, string) {
	t.Helper()
	status, id, err := tryUpload(t.Context(), hc, base, name, data)
	require.NoError(t, err)
	require.Contains(t, []int{http.StatusOK, http.StatusCreated}, status, "PUT %s/%s", base, name)
	return status, id
}

// tryDelete sends DELETE /<id> to the node at base and returns the
// status; err is a transport failure or a malformed 200. Safe to call from
// any goroutine.
func tryDelete(ctx context.Context, hc *http.Client, base, id string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, base+"/"+id, nil)
	if err != nil {
		return 0, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, fmt.Errorf("DELETE %s: reading the answer: %w", id, err)
	}
	if res.StatusCode == http.StatusOK {
		var ans struct {
			SHA512  string `json:"sha512"`
			Deleted bool   `json:"deleted"`
		}
		if err := json.Unmarshal(body, &ans); err != nil || ans.SHA512 != id || !ans.Deleted {
			return res.StatusCode, fmt.Errorf("DELETE %s: answered %s", id, body)
		}
	}
	return res.StatusCode, nil
}

// deleteID deletes id through the node at base and requires a 200.
func deleteID(t *testing.T, hc *http.Client, base, id string) {
	t.Helper()
	status, err := tryDelete(t.Context(), hc, base, id)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, "DELETE %s/%s", base, id)
}

// get GETs base+path and returns the answer with its whole body.
func get(t *testing.T, hc *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	require.NoError(t, err)
	res, err := hc.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err, "GET %s: reading the body", url)
	return res, body
}

// stateOf asks node i for its record of id on the node-to-node route
// GET /_internal/state/{id}: the status, and for a 200 the state.
func stateOf(t *testing.T, c *cluster.Cluster, hc *http.Client, i int, id string) (int, wireState) {
	t.Helper()
	res, body := get(t, hc, c.Nodes[i].URL+"/_internal/state/"+id)
	var ans struct {
		State wireState `json:"state"`
		Held  bool      `json:"held"`
	}
	if res.StatusCode == http.StatusOK {
		require.NoError(t, json.Unmarshal(body, &ans), "node %d: /_internal/state: %s", i, body)
	}
	return res.StatusCode, ans.State
}

// wireState is dtfc.State as it travels between nodes (peer/internal.go).
type wireState struct {
	ID      string `json:"sha512"`
	Deleted bool   `json:"deleted,omitempty"`
	Clock   uint64 `json:"clock"`
	Node    string `json:"node"`
	Size    int64  `json:"size,omitempty"`
}

// clockAt is the hybrid logical clock reading of wall-clock time tm
// (unix milliseconds << 16, counter 0).
func clockAt(tm time.Time) uint64 { return uint64(tm.UnixMilli()) << 16 }

// blobPath is where node n stores blob id (API.md, "On disk").
func blobPath(n *cluster.Node, id string) string {
	return filepath.Join(n.Basedir, "blobs", id[0:2], id[2:4], id)
}

// wrongBlobs re-hashes every file under node n's blobs/ and describes
// each one whose bytes do not hash to its name. A file removed during the
// walk (a delete, an eviction) is skipped, so it may run while the node
// works. It returns the number of files checked.
func wrongBlobs(n *cluster.Node) (int, []string) {
	var bad []string
	checked := 0
	root := filepath.Join(n.Basedir, "blobs")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		got, err := cluster.HashFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		checked++
		if got != d.Name() {
			bad = append(bad, fmt.Sprintf("node %d: %s holds bytes hashing to %.16s…", n.Index, path, got))
		}
		return nil
	})
	if err != nil {
		bad = append(bad, fmt.Sprintf("node %d: walking %s: %v", n.Index, root, err))
	}
	return checked, bad
}

// assertHeld checks that node i holds id, size bytes long, in a file whose
// bytes hash to id.
func assertHeld(t *testing.T, c *cluster.Cluster, i int, id string, size int64) bool {
	t.Helper()
	got, ok := c.BlobFiles(i)[id]
	if !assert.True(t, ok, "node %d: no blob file for %.16s…", i, id) ||
		!assert.Equal(t, size, got, "node %d: size of blob file %.16s…", i, id) {
		return false
	}
	h, err := cluster.HashFile(blobPath(c.Nodes[i], id))
	return assert.NoError(t, err) && assert.Equal(t, id, h, "node %d: blob file %.16s… holds other bytes", i, id)
}

// assertEveryReplica checks assertHeld on every running replica.
func assertEveryReplica(t *testing.T, c *cluster.Cluster, id string, size int64) {
	t.Helper()
	for i, n := range c.Nodes {
		if n.Running() && n.Role == cluster.RoleReplica {
			assertHeld(t, c, i, id, size)
		}
	}
}

// assertNowhere checks that no running node has a blob file for id (see
// gone).
func assertNowhere(t *testing.T, c *cluster.Cluster, id string) {
	t.Helper()
	for i, n := range c.Nodes {
		if n.Running() {
			assert.True(t, gone(n, id), "node %d holds deleted ID %s", i, short(id))
		}
	}
}

// gone reports whether node n has no blob file for id, waiting a moment
// for it to go: a node commits a delete to its database before it
// unlinks the file, so the file may outlive the record that
// WaitConverged compares by a few milliseconds.
func gone(n *cluster.Node, id string) bool {
	deadline := time.Now().Add(time.Second)
	for {
		_, err := os.Stat(blobPath(n, id))
		if errors.Is(err, fs.ErrNotExist) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventually polls cond every 50 ms until it holds, failing the test if d
// passes first.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// peerStatus returns node i's view of node j from its /_status
// ("cluster.peers", found by the URL by which i knows j).
func peerStatus(t *testing.T, c *cluster.Cluster, i, j int) api.PeerStatus {
	t.Helper()
	st, err := c.Status(i)
	require.NoError(t, err)
	want := c.PeerURL(i, j)
	if st.Cluster != nil {
		for _, p := range st.Cluster.Peers {
			if p.URL == want {
				return p
			}
		}
	}
	t.Fatalf("node %d's /_status has no peer %s: %+v", i, want, st)
	return api.PeerStatus{}
}

// queueLength is the length of node i's replication queue towards node j
// in its /_status.
func queueLength(t *testing.T, c *cluster.Cluster, i, j int) int64 {
	t.Helper()
	st, err := c.Status(i)
	require.NoError(t, err)
	q, ok := st.Queues[c.PeerURL(i, j)]
	require.True(t, ok, "node %d's /_status has no queue for node %d: %v", i, j, st.Queues)
	return q.Length
}

// short abbreviates an ID for messages.
func short(id string) string {
	if len(id) > 16 {
		return id[:16] + "…"
	}
	return id
}

// logHas reports whether node n's log contains s (case-insensitively).
func logHas(n *cluster.Node, s string) bool {
	return strings.Contains(strings.ToLower(n.Log()), strings.ToLower(s))
}

// logCount counts the lines of node n's log that contain s.
func logCount(n *cluster.Node, s string) int {
	return strings.Count(n.Log(), s)
}

// metrics returns the lines of the node's /metrics whose names start with
// one of the given prefixes, joined by "; " (for failure messages).
func metrics(t *testing.T, hc *http.Client, base string, prefixes ...string) string {
	t.Helper()
	res, body := get(t, hc, base+"/metrics")
	if res.StatusCode != http.StatusOK {
		return fmt.Sprintf("GET /metrics: %s", res.Status)
	}
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "; ")
}

// splitHalves partitions nodes 0 and 1 from nodes 2 and 3.
func splitHalves(c *cluster.Cluster) {
	for _, a := range []int{0, 1} {
		for _, b := range []int{2, 3} {
			c.Partition(a, b)
		}
	}
}
