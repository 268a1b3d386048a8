package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// bucket is a versitygw bucket under a prefix, as the nodes' archive and
// as the test reads it.
type bucket struct {
	s      *versitygw.Server
	prefix string
	secret string // the secret_access_key_file
	a      *archive.Archive
}

func newBucket(t *testing.T, s *versitygw.Server, prefix string) *bucket {
	t.Helper()
	secret := versitygw.SecretFile(t)
	a, err := archive.New(t.Context(), archive.Config{Bucket: s.Bucket, Prefix: prefix, Endpoint: s.URL, PathStyle: true,
		AccessKeyID: versitygw.AccessKey, SecretAccessKeyFile: secret})
	require.NoError(t, err)
	return &bucket{s: s, prefix: prefix, secret: secret, a: a}
}

// URL is the archive's peer list url.
func (b *bucket) URL() string { return "s3://" + b.s.Bucket + "/" + b.prefix }

// entry is the archive's peer list entry.
func (b *bucket) entry() string {
	return b.s.PeerEntry(b.prefix, b.secret)
}

// objects calls fn with the name and body of each object under key in
// versitygw's directory, in name order (none if there is no such
// directory).
func (b *bucket) objects(t *testing.T, key string, fn func(name string, body []byte)) {
	t.Helper()
	dir := b.s.Path(b.prefix + "/" + key)
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return
	}
	require.NoError(t, err)
	for _, e := range ents {
		body, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		fn(e.Name(), body)
	}
}

// shardOf is an ID's key under states/, deny/ or blobs/.
func shardOf(id string) string { return id[0:2] + "/" + id[2:4] + "/" + id }

// states reads id's state records straight from versitygw's directory.
func (b *bucket) states(t *testing.T, id string) []dtfc.State {
	t.Helper()
	var out []dtfc.State
	b.objects(t, "states/"+shardOf(id), func(name string, body []byte) {
		var st dtfc.State
		require.NoError(t, json.Unmarshal(body, &st), "record %s", name)
		out = append(out, st)
	})
	return out
}

// logged lists what node 0 of c named in its log in the bucket ("up
// <id>", "del <id>", "deny <id>" for a block or a lift), read from
// versitygw's directory.
func (b *bucket) logged(t *testing.T, c *cluster.Cluster) []string {
	t.Helper()
	node, err := os.ReadFile(filepath.Join(c.Nodes[0].Basedir, "node-id"))
	require.NoError(t, err)
	var out []string
	b.objects(t, "log/"+strings.TrimSpace(string(node)), func(name string, body []byte) {
		var entries []archive.LogEntry
		require.NoError(t, json.Unmarshal(body, &entries), "log entry %s", name)
		for _, le := range entries {
			op := "up "
			switch {
			case le.Deny:
				op = "deny "
			case le.Deleted:
				op = "del "
			}
			out = append(out, op+le.ID.String())
		}
	})
	return out
}

// holds reports whether the bucket's directory holds blob id with data.
func (b *bucket) holds(id string, data []byte) bool {
	got, err := os.ReadFile(b.s.Path(b.prefix + "/blobs/" + shardOf(id)))
	return err == nil && bytes.Equal(got, data)
}

// seed writes a blob and its upload record into the bucket as a node
// "7e57" would.
func (b *bucket) seed(t *testing.T, data []byte) dtfc.ID {
	t.Helper()
	return b.seedAt(t, data, time.Now()).ID
}

// seedAt is seed with the record's clock at the time given; it returns
// the record.
func (b *bucket) seedAt(t *testing.T, data []byte, at time.Time) dtfc.State {
	t.Helper()
	st := dtfc.State{ID: dtfc.Sum(data), Clock: dtfc.TimestampAt(at), Node: "7e57", Size: int64(len(data))}
	require.NoError(t, b.a.PutBlob(t.Context(), st.ID, bytes.NewReader(data), st.Size))
	require.NoError(t, b.a.PutState(t.Context(), st))
	return st
}

// archiveNodes starts n nodes, each alone but for the archive b (no node
// knows another).
func archiveNodes(t *testing.T, b *bucket, args ...string) *cluster.Cluster {
	t.Helper()
	return cluster.Start(t, cluster.Options{Nodes: 1, Direct: true, Args: args,
		ExtraPeers: func(int) string { return b.entry() }})
}

// archiveError is the last error node 0 of c had with the archive b.
func archiveError(t *testing.T, c *cluster.Cluster, b *bucket) string {
	t.Helper()
	st, err := c.Status(0)
	if err != nil || st.Cluster == nil {
		return ""
	}
	for _, p := range st.Cluster.Peers {
		if p.URL == b.URL() {
			return p.LastError
		}
	}
	return ""
}

func queueOf(t *testing.T, c *cluster.Cluster, i int, url string) (int64, bool) {
	t.Helper()
	st, err := c.Status(i)
	if err != nil {
		return 0, false
	}
	q, ok := st.Queues[url]
	return q.Length, ok
}

// waitDrained waits up to timeout until node i's queue to the archive at
// url is empty.
func waitDrained(t *testing.T, c *cluster.Cluster, i int, url string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("node %d's queue to %s empty", i, url), func() bool {
		n, ok := queueOf(t, c, i, url)
		return ok && n == 0
	})
}

// TestArchivePush: an upload reaches the bucket as a blob object (the
// same bytes) and an upload record, a delete as a tombstone record; the
// queue of the archive (keyed by its URL) empties.
func TestArchivePush(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "prod")
	c := archiveNodes(t, b, "--archive-interval", "1h")
	hc := newClient(t)
	data := randomBytes(100 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "a.bin", data)
	eventually(t, 20*time.Second, "the blob and its record in the bucket", func() bool {
		sts := b.states(t, id)
		return b.holds(id, data) && len(sts) == 1 && !sts[0].Deleted && sts[0].Size == int64(len(data))
	})
	eventually(t, 10*time.Second, "the archive's queue empty", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n == 0
	})
	deleteID(t, hc, c.Nodes[0].URL, id)
	eventually(t, 20*time.Second, "a tombstone record in the bucket", func() bool {
		for _, st := range b.states(t, id) {
			if st.Deleted {
				return true
			}
		}
		return false
	})
	got, err := b.a.NewestState(t.Context(), dtfc.ID(mustID(t, id)))
	require.NoError(t, err)
	assert.True(t, got.Deleted, "the newest record is the delete")
}

func mustID(t *testing.T, s string) dtfc.ID {
	id, err := dtfc.ParseID(s)
	require.NoError(t, err)
	return id
}

// TestArchiveDown: with the S3 server stopped, uploads are still
// acknowledged and wait in the archive's queue (in /_status); when it
// returns, the queue drains and the bucket holds them.
func TestArchiveDown(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "down")
	c := archiveNodes(t, b, "--archive-interval", "1h")
	hc := newClient(t)
	s.Stop(t)
	blobs := map[string][]byte{}
	for i := range 3 {
		data := randomBytes(10<<10 + i)
		status, id := upload(t, hc, c.Nodes[0].URL, fmt.Sprintf("f%d", i), data)
		require.Equal(t, http.StatusCreated, status)
		blobs[id] = data
	}
	eventually(t, 10*time.Second, "3 uploads queued for the archive", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n >= 3
	})
	// The failures are shown (status, metrics, logs), the credentials
	// never.
	eventually(t, 10*time.Second, "the archive's failure in /_status", func() bool {
		st, err := c.Status(0)
		if err != nil || st.Cluster == nil {
			return false
		}
		for _, p := range st.Cluster.Peers {
			if p.URL == b.URL() && p.LastError != "" {
				return true
			}
		}
		return false
	})
	_, statusBody := get(t, hc, c.Nodes[0].URL+"/_status")
	_, metricsBody := get(t, hc, c.Nodes[0].URL+"/metrics")
	assert.Contains(t, string(metricsBody), b.URL(), "the archive's queue in /metrics")
	for what, text := range map[string]string{"/_status": string(statusBody), "/metrics": string(metricsBody), "the log": c.Nodes[0].Log()} {
		assert.NotContains(t, text, versitygw.AccessKey, "the access key id in %s", what)
		assert.NotContains(t, text, versitygw.SecretKey, "the secret in %s", what)
	}
	s.Start(t)
	eventually(t, 45*time.Second, "the queue drained", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n == 0
	})
	for id, data := range blobs {
		assert.True(t, b.holds(id, data), "blob %s in the bucket", id[:12])
		assert.Len(t, b.states(t, id), 1)
	}
}

// TestArchiveStartWhileDown: a node starts while the S3 server of its
// archive is unreachable (only a missing bucket or refused credentials
// refuse the start): a node restarted during an outage of the server comes
// back, takes uploads, queues them, and pushes them once it returns.
func TestArchiveStartWhileDown(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "startdown")
	s.Stop(t)
	c := archiveNodes(t, b, "--archive-interval", "300ms")
	hc := newClient(t)
	data := randomBytes(20 << 10)
	status, id := upload(t, hc, c.Nodes[0].URL, "d.bin", data)
	require.Equal(t, http.StatusCreated, status)
	eventually(t, 10*time.Second, "the upload queued for the archive, its failure in /_status", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n >= 1 && archiveError(t, c, b) != ""
	})
	s.Start(t)
	eventually(t, 45*time.Second, "the queue drained", func() bool {
		n, ok := queueOf(t, c, 0, b.URL())
		return ok && n == 0
	})
	assert.True(t, b.holds(id, data), "the blob in the bucket")
}

// TestArchiveMiss: a node missing a blob serves it from the archive
// (X-Dtfc-Source: peer) and keeps it.
func TestArchiveMiss(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "miss")
	data := randomBytes(300 << 10)
	id := b.seed(t, data).String()
	c := archiveNodes(t, b, "--archive-interval", "1h")
	hc := newClient(t)
	res, body := get(t, hc, c.Nodes[0].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "peer", res.Header.Get("X-Dtfc-Source"))
	assert.True(t, bytes.Equal(data, body))
	res, _ = get(t, hc, c.Nodes[0].URL+"/"+id+"?nopeerload=1")
	assert.Equal(t, http.StatusOK, res.StatusCode, "kept after the miss")
}

// TestArchiveCorrupt: a blob whose object was corrupted in the bucket
// (its file overwritten under versitygw) is never served whole: the
// transfer is refused or cut off, and the node does not keep it.
func TestArchiveCorrupt(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "corrupt")
	data := randomBytes(200 << 10)
	id := b.seed(t, data).String()
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 0xff
	require.NoError(t, os.WriteFile(s.Path(b.a.BlobKey(mustID(t, id))), bad, 0o644))
	c := archiveNodes(t, b, "--archive-interval", "1h")
	hc := newClient(t)
	for range 2 {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, c.Nodes[0].URL+"/"+id, nil)
		require.NoError(t, err)
		res, err := hc.Do(req)
		if err != nil {
			continue // cut off before the answer's head: refused
		}
		body, rerr := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == http.StatusOK && rerr == nil {
			sum := sha512.Sum512(body)
			assert.Equal(t, id, hex.EncodeToString(sum[:]), "a complete 200 body must hash to the ID")
		}
		assert.False(t, bytes.Equal(bad, body), "the corrupted bytes were served whole")
	}
	res, _ := get(t, hc, c.Nodes[0].URL+"/"+id+"?nopeerload=1")
	assert.Equal(t, http.StatusNotFound, res.StatusCode, "the corrupted blob is not kept")
}

// TestArchiveStartRefused: a node does not start with an archive it
// cannot use, and says which entry and why.
func TestArchiveStartRefused(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "p")
	wrongSecret := filepath.Join(t.TempDir(), "wrong")
	require.NoError(t, os.WriteFile(wrongSecret, []byte("not-the-secret"), 0o600))
	for _, tc := range []struct {
		name, list, want string
	}{
		{"missing bucket", strings.Replace(b.entry(), "s3://"+s.Bucket+"/", "s3://no-such-bucket/", 1), "bucket does not exist"},
		{"wrong secret", strings.Replace(b.entry(), b.secret, wrongSecret, 1), "refused the credentials"},
		{"s3 entry as a replica", strings.Replace(b.entry(), `role = "archive"`, `role = "replica"`, 1), `must have role = "archive"`},
		{"archive role on a node", "[[peers]]\nurl = \"http://127.0.0.1:1\"\nrole = \"archive\"\n", "s3://bucket/prefix entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			list := filepath.Join(dir, "peers.toml")
			require.NoError(t, os.WriteFile(list, []byte(tc.list), 0o644))
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, cluster.Binary(t), "serve", "--host", "127.0.0.1", "--port", "0",
				"--basedir", filepath.Join(dir, "data"), "--peerlist", list)
			out, err := cmd.CombinedOutput()
			require.Error(t, err, "the node started:\n%s", out)
			require.NoError(t, ctx.Err(), "the node did not exit:\n%s", out)
			assert.Contains(t, string(out), tc.want)
			if !strings.HasPrefix(tc.name, "archive role") {
				assert.Contains(t, string(out), "s3://", "the entry is named")
			}
			assert.NotContains(t, string(out), versitygw.SecretKey)
			assert.NotContains(t, string(out), "not-the-secret")
		})
	}
}

// TestArchiveRelay: two nodes whose only common peer is the bucket
// converge through it, on uploads and on deletes (either way), and a new
// node whose only peer is the bucket gets the whole collection (and not
// what was deleted).
func TestArchiveRelay(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "relay")
	a := archiveNodes(t, b, "--archive-interval", "300ms")
	bb := archiveNodes(t, b, "--archive-interval", "300ms")
	A, B := a.Nodes[0].URL, bb.Nodes[0].URL
	hc := newClient(t)
	local := func(base, id string) int { return localStatus(t, hc, base, id) }
	d1, d2, d3 := randomBytes(50<<10), randomBytes(60<<10), randomBytes(70<<10)
	_, id1 := upload(t, hc, A, "one", d1)
	_, id2 := upload(t, hc, B, "two", d2)
	_, id3 := upload(t, hc, A, "three", d3)
	eventually(t, 30*time.Second, "B holds A's uploads and A holds B's", func() bool {
		return local(B, id1) == http.StatusOK && local(B, id3) == http.StatusOK && local(A, id2) == http.StatusOK
	})
	deleteID(t, hc, B, id1) // B deletes what A uploaded
	deleteID(t, hc, A, id2) // and A what B uploaded
	deleted := func(cl *cluster.Cluster, id string) bool {
		status, st := stateOf(t, cl, hc, 0, id)
		return status == http.StatusOK && st.Deleted
	}
	eventually(t, 30*time.Second, "the deletes applied on the other node", func() bool {
		return deleted(a, id1) && deleted(bb, id2) && local(A, id1) == http.StatusNotFound && local(B, id2) == http.StatusNotFound
	})
	res, body := get(t, hc, A+"/"+id3)
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.True(t, bytes.Equal(d3, body))

	c := archiveNodes(t, b, "--archive-interval", "300ms")
	C := c.Nodes[0].URL
	eventually(t, 30*time.Second, "the new node holds the collection and the tombstones", func() bool {
		return local(C, id3) == http.StatusOK && deleted(c, id1) && deleted(c, id2)
	})
	// Each node's log names its own operations only: what the relay
	// brought is not named again (which would echo between the nodes).
	assert.ElementsMatch(t, []string{"up " + id1, "up " + id3, "del " + id2}, b.logged(t, a), "A's log")
	assert.ElementsMatch(t, []string{"up " + id2, "del " + id1}, b.logged(t, bb), "B's log")
	assert.Empty(t, b.logged(t, c), "C's log")
	assert.Equal(t, http.StatusNotFound, local(C, id1), "a deleted blob is not brought back")
	assert.Equal(t, http.StatusNotFound, local(C, id2), "a deleted blob is not brought back")
	res, body = get(t, hc, C+"/"+id3+"?nopeerload=1")
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.True(t, bytes.Equal(d3, body))
}

// TestArchiveRelayClockAhead: a state in the bucket whose clock is
// further ahead than max_clock_offset is refused (counted in /metrics),
// like a peer's.
func TestArchiveRelayClockAhead(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "ahead")
	ahead := b.seedAt(t, randomBytes(10<<10), time.Now().Add(time.Hour))
	id := ahead.ID
	require.NoError(t, b.a.AppendLog(t.Context(), "7e57", 1, []archive.LogEntry{{ID: id, Clock: ahead.Clock, Node: ahead.Node}}))
	c := archiveNodes(t, b, "--archive-interval", "200ms")
	hc := newClient(t)
	eventually(t, 20*time.Second, "refused in two relay rounds", func() bool {
		return strings.Contains(metrics(t, hc, c.Nodes[0].URL, "dtfc_clock_refused_total"), "dtfc_clock_refused_total ") &&
			!strings.HasSuffix(metrics(t, hc, c.Nodes[0].URL, "dtfc_clock_refused_total"), " 0") &&
			!strings.HasSuffix(metrics(t, hc, c.Nodes[0].URL, "dtfc_clock_refused_total"), " 1")
	})
	status, _ := stateOf(t, c, hc, 0, id.String())
	assert.Equal(t, http.StatusNotFound, status, "the state from the future is not applied")
}

// TestArchiveHoldsTombstones: an archive counts in the acknowledgements
// a tombstone waits for: while the S3 server is down, a delete older than
// the retention is kept; once the tombstone's record is in the bucket,
// it is forgotten.
func TestArchiveHoldsTombstones(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "acks")
	c := archiveNodes(t, b, "--archive-interval", "1h", "--tombstone-retention", "1s", "--tombstone-expiry", "1h")
	hc := newClient(t)
	data := randomBytes(10 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "t", data)
	eventually(t, 20*time.Second, "the upload in the bucket", func() bool { return len(b.states(t, id)) == 1 })
	s.Stop(t)
	deleteID(t, hc, c.Nodes[0].URL, id)
	wait(3 * time.Second) // past the retention: purges (every second) have run
	status, st := stateOf(t, c, hc, 0, id)
	require.Equal(t, http.StatusOK, status, "the tombstone the archive has not acknowledged is kept")
	require.True(t, st.Deleted)
	s.Start(t)
	eventually(t, 45*time.Second, "the tombstone's record in the bucket", func() bool {
		sts := b.states(t, id)
		return len(sts) == 2
	})
	eventually(t, 20*time.Second, "the tombstone forgotten once the archive acknowledged it", func() bool {
		status, _ := stateOf(t, c, hc, 0, id)
		return status == http.StatusNotFound
	})
}

// TestArchiveLogRetried: when a node's log entry cannot be written after
// the record it names was (the log's path is blocked in the bucket's
// directory), the retry finds the record there and still names it, so the
// other node gets the upload once the path is clear.
func TestArchiveLogRetried(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "logretry")
	a := archiveNodes(t, b, "--archive-interval", "300ms")
	bb := archiveNodes(t, b, "--archive-interval", "300ms")
	hc := newClient(t)
	nodeA, err := os.ReadFile(filepath.Join(a.Nodes[0].Basedir, "node-id"))
	require.NoError(t, err)
	block := s.Path(b.prefix + "/log/" + strings.TrimSpace(string(nodeA)))
	require.NoError(t, os.MkdirAll(filepath.Dir(block), 0o755))
	require.NoError(t, os.WriteFile(block, []byte("in the way"), 0o644))
	data := randomBytes(20 << 10)
	_, id := upload(t, hc, a.Nodes[0].URL, "x", data)
	eventually(t, 20*time.Second, "the record written, the log failing", func() bool {
		return len(b.states(t, id)) == 1 && strings.Contains(archiveError(t, a, b), "put log")
	})
	n, _ := queueOf(t, a, 0, b.URL())
	require.Positive(t, n, "the upload waits in the queue")
	require.NoError(t, os.Remove(block))
	eventually(t, 45*time.Second, "the other node holds the upload", func() bool {
		res, _ := get(t, hc, bb.Nodes[0].URL+"/"+id+"?nopeerload=1")
		return res.StatusCode == http.StatusOK
	})
}

// TestArchiveLargeBlob: a blob above the part size (64 MiB) goes to the
// bucket in parts, read from the node's file, and comes back whole and
// verified on another node's miss.
func TestArchiveLargeBlob(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "large")
	a := archiveNodes(t, b, "--archive-interval", "1h")
	hc := newClient(t)
	data := randomBytes(64<<20 + 5<<20 + 17)
	_, id := upload(t, hc, a.Nodes[0].URL, "big.bin", data)
	eventually(t, 60*time.Second, "the blob and its record in the bucket", func() bool {
		return len(b.states(t, id)) == 1
	})
	sum, err := cluster.HashFile(s.Path(b.a.BlobKey(mustID(t, id))))
	require.NoError(t, err)
	require.Equal(t, id, sum, "the object's bytes hash to the ID")
	c := archiveNodes(t, b, "--archive-interval", "1h")
	res, body := get(t, hc, c.Nodes[0].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "peer", res.Header.Get("X-Dtfc-Source"))
	assert.True(t, bytes.Equal(data, body))
}

// archiveExpired reports whether node 0 of c marked the archive b expired.
func archiveExpired(t *testing.T, c *cluster.Cluster, b *bucket) bool {
	t.Helper()
	st, err := c.Status(0)
	if err != nil || st.Cluster == nil {
		return false
	}
	for _, p := range st.Cluster.Peers {
		if p.URL == b.URL() {
			return p.Expired
		}
	}
	return false
}

// TestArchiveNeverExpires: a delete waits for an archive however long it
// is down. With the S3 server and a peer node both stopped past
// tombstone_expiry, the purge marks the node expired, never the archive,
// and keeps the delete; once the server is back the delete's record is in
// the bucket, and only then is the delete forgotten. A new node whose only
// peer is the bucket does not bring the file back. (A bucket cannot
// resync as a node does: a delete forgotten without it would leave the
// upload's record the newest there.)
func TestArchiveNeverExpires(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "neverexpires")
	a := cluster.Start(t, cluster.Options{Nodes: 2, Direct: true,
		Args:       []string{"--archive-interval", "300ms", "--tombstone-retention", "1s", "--tombstone-expiry", "3s"},
		ExtraPeers: func(int) string { return b.entry() }})
	hc := newClient(t)
	data := randomBytes(10 << 10)
	_, id := upload(t, hc, a.Nodes[0].URL, "e", data)
	eventually(t, 20*time.Second, "the upload in the bucket and on node 1", func() bool {
		return len(b.states(t, id)) == 1 && assertHeldQuiet(a, 1, id)
	})
	a.Nodes[1].Stop()
	s.Stop(t)
	deleteID(t, hc, a.Nodes[0].URL, id)
	eventually(t, 30*time.Second, "node 1 marked expired", func() bool { return peerExpired(t, a, a.Nodes[1].URL) })
	// The purge that marked node 1 weighed the archive too.
	require.False(t, archiveExpired(t, a, b), "the archive was marked expired")
	status, st := stateOf(t, a, hc, 0, id)
	require.True(t, status == http.StatusOK && st.Deleted, "the delete was forgotten without the archive: %d %+v", status, st)

	s.Start(t)
	eventually(t, 45*time.Second, "the delete in the bucket, then forgotten", func() bool {
		status, _ := stateOf(t, a, hc, 0, id)
		return status == http.StatusNotFound
	})
	got, err := b.a.NewestState(t.Context(), mustID(t, id))
	require.NoError(t, err)
	require.True(t, got.Deleted, "the newest record in the bucket is the delete")
	c := archiveNodes(t, b, "--archive-interval", "300ms")
	eventually(t, 20*time.Second, "the new node took the delete", func() bool {
		status, st := stateOf(t, c, hc, 0, id)
		return status == http.StatusOK && st.Deleted
	})
	res, _ := get(t, hc, c.Nodes[0].URL+"/"+id)
	assert.Equal(t, http.StatusNotFound, res.StatusCode, "the deleted file is not brought back")
}

// peerExpired reports whether node 0 of c marked the peer at url expired.
func peerExpired(t *testing.T, c *cluster.Cluster, url string) bool {
	t.Helper()
	st, err := c.Status(0)
	if err != nil || st.Cluster == nil {
		return false
	}
	for _, p := range st.Cluster.Peers {
		if p.URL == url {
			return p.Expired
		}
	}
	return false
}

// TestArchiveRelayPastCorrupt: a blob corrupted in the bucket does not
// stop the relay. The node that reads it through the relay refuses its
// bytes, sets the ID aside to try again later, and goes on with the rest
// of the writer's log: an upload made after it still arrives.
func TestArchiveRelayPastCorrupt(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "relaycorrupt")
	a := archiveNodes(t, b, "--archive-interval", "300ms")
	A := a.Nodes[0].URL
	hc := newClient(t)
	data := randomBytes(100 << 10)
	_, bad := upload(t, hc, A, "bad", data)
	eventually(t, 20*time.Second, "the blob and its record in the bucket", func() bool { return len(b.states(t, bad)) == 1 })
	corrupt := bytes.Clone(data)
	corrupt[len(corrupt)/3] ^= 0xff
	require.NoError(t, os.WriteFile(s.Path(b.a.BlobKey(mustID(t, bad))), corrupt, 0o644))
	good := randomBytes(80 << 10)
	_, goodID := upload(t, hc, A, "good", good)

	bb := archiveNodes(t, b, "--archive-interval", "300ms")
	B := bb.Nodes[0].URL
	eventually(t, 30*time.Second, "B holds the upload logged after the corrupt one", func() bool {
		res, _ := get(t, hc, B+"/"+goodID+"?nopeerload=1")
		return res.StatusCode == http.StatusOK
	})
	res, _ := get(t, hc, B+"/"+bad+"?nopeerload=1")
	assert.Equal(t, http.StatusNotFound, res.StatusCode, "the corrupt blob was kept")
	assert.True(t, logHas(bb.Nodes[0], "set aside"), "the node says it set the ID aside")
}

// TestArchiveRelayForgottenDelete: a delete a bucket-only node relayed,
// applied and then forgot (past the retention, acknowledged by its only
// peer, the archive) is not set aside when another writer's log names
// the ID again: the bucket's newest record is that delete, which the node
// knows and forgot. It used to be set aside and retried for ever, every
// time, and the soak's relays churned on hundreds of them.
func TestArchiveRelayForgottenDelete(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "forgotten")
	args := []string{"--archive-interval", "300ms", "--tombstone-retention", "1s", "--tombstone-expiry", "1h"}
	a := archiveNodes(t, b, args...)
	hc := newClient(t)
	data := randomBytes(10 << 10)
	_, id := upload(t, hc, a.Nodes[0].URL, "x", data)
	deleteID(t, hc, a.Nodes[0].URL, id)
	eventually(t, 20*time.Second, "the delete in the bucket", func() bool {
		st, err := b.a.NewestState(t.Context(), mustID(t, id))
		return err == nil && st.Deleted
	})
	bb := archiveNodes(t, b, args...)
	B := bb.Nodes[0]
	eventually(t, 30*time.Second, "B relayed the delete, then forgot it", func() bool {
		return logHas(B, "forgot tombstones")
	})
	newest, err := b.a.NewestState(t.Context(), mustID(t, id))
	require.NoError(t, err)
	// Another writer names the ID again (as a node that relays or pushes
	// an older state would).
	require.NoError(t, b.a.AppendLog(t.Context(), "7e57", 1, []archive.LogEntry{{ID: newest.ID, Clock: newest.Clock, Node: newest.Node, Deleted: true}}))
	probe := randomBytes(8 << 10)
	require.NoError(t, b.a.PutBlob(t.Context(), dtfc.Sum(probe), bytes.NewReader(probe), int64(len(probe))))
	pst := dtfc.State{ID: dtfc.Sum(probe), Clock: dtfc.TimestampAt(time.Now()), Node: "7e57", Size: int64(len(probe))}
	require.NoError(t, b.a.PutState(t.Context(), pst))
	require.NoError(t, b.a.AppendLog(t.Context(), "7e57", 2, []archive.LogEntry{{ID: pst.ID, Clock: pst.Clock, Node: pst.Node}}))
	eventually(t, 20*time.Second, "B took the writer's next entry", func() bool {
		res, _ := get(t, hc, B.URL+"/"+pst.ID.String()+"?nopeerload=1")
		return res.StatusCode == http.StatusOK
	})
	assert.False(t, logHas(B, "set aside"), "the forgotten delete was set aside")
	res, _ := get(t, hc, B.URL+"/"+id)
	assert.Equal(t, http.StatusNotFound, res.StatusCode)
}

// localStatus is the status of GET /<id>?nopeerload=1 on the node at
// base: whether it holds id itself.
func localStatus(t *testing.T, hc *http.Client, base, id string) int {
	t.Helper()
	res, _ := get(t, hc, base+"/"+id+"?nopeerload=1")
	return res.StatusCode
}

// denyRecords reads id's deny records straight from versitygw's
// directory: "block" or "lift" each, in clock order.
func (b *bucket) denyRecords(t *testing.T, id string) []string {
	t.Helper()
	var out []string
	b.objects(t, "deny/"+shardOf(id), func(name string, body []byte) {
		var d struct {
			Lifted bool `json:"lifted"`
		}
		require.NoError(t, json.Unmarshal(body, &d), "record %s", name)
		if d.Lifted {
			out = append(out, "lift")
		} else {
			out = append(out, "block")
		}
	})
	return out
}

// TestArchiveRelayDeny: blocks and lifts are kept in the bucket and
// relayed like states. A node B that reads the cluster only through the
// bucket, and has not read it since a block was made on A, takes a
// re-upload of the blocked ID (dated after the block's tombstone: the
// newest state record in the bucket). A node C that then reads the
// bucket applies the block, and never serves the file: it used to take
// the re-upload and serve it for ever (soak seeds 81 and 82, --archive).
// A's lift then reaches C too, and C takes the ID again.
func TestArchiveRelayDeny(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "deny")
	a := archiveNodes(t, b, "--archive-interval", "300ms")
	// B reads the bucket once, at start.
	bb := archiveNodes(t, b, "--archive-interval", "1h")
	A, B := a.Nodes[0].URL, bb.Nodes[0].URL
	hc := newClient(t)
	local := func(base, id string) int { return localStatus(t, hc, base, id) }
	data := randomBytes(20 << 10)
	_, id := upload(t, hc, B, "x", data)
	eventually(t, 30*time.Second, "A holds B's upload", func() bool { return local(A, id) == http.StatusOK })

	setDeny(t, hc, A, id, `{"status": 451, "reason": "court order"}`)
	eventually(t, 20*time.Second, "the block's record in the bucket", func() bool {
		return slices.Equal(b.denyRecords(t, id), []string{"block"}) && slices.Contains(b.logged(t, a), "deny "+id)
	})
	// B has not heard of the block: it takes the ID again, and its
	// record is the newest state in the bucket.
	require.Equal(t, http.StatusOK, local(B, id), "B, which has not read the bucket since, still holds the file")
	status, _ := upload(t, hc, B, "x", data)
	require.Contains(t, []int{http.StatusOK, http.StatusCreated}, status)
	eventually(t, 20*time.Second, "the bucket's newest state is an upload again", func() bool {
		st, err := b.a.NewestState(t.Context(), mustID(t, id))
		return err == nil && !st.Deleted && st.Node != ""
	})

	c := archiveNodes(t, b, "--archive-interval", "300ms")
	C := c.Nodes[0].URL
	eventually(t, 30*time.Second, "C applied the block", func() bool { return hasDenyEntry(t, hc, C, id) })
	res, _ := get(t, hc, C+"/"+id)
	assert.Equal(t, http.StatusUnavailableForLegalReasons, res.StatusCode, "C serves a blocked file")
	assert.Equal(t, http.StatusUnavailableForLegalReasons, local(C, id))
	assert.NotContains(t, b.logged(t, c), "deny "+id, "C names in its log a block it relayed")

	liftDeny(t, hc, A, id)
	eventually(t, 20*time.Second, "the lift's record in the bucket", func() bool {
		return slices.Equal(b.denyRecords(t, id), []string{"block", "lift"})
	})
	eventually(t, 30*time.Second, "C applied the lift", func() bool { return !hasDenyEntry(t, hc, C, id) })
	status, _ = upload(t, hc, C, "x", data)
	assert.Contains(t, []int{http.StatusOK, http.StatusCreated}, status, "C takes the ID once the block is lifted")
}
