package e2e_test

import (
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

	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/internal/cluster"
	"github.com/dtfc/dtfc/internal/versitygw"
)

// archiveStatus is node 0 of c's view of the archive b in its /_status.
func archiveStatus(t *testing.T, c *cluster.Cluster, b *bucket) (api.PeerStatus, bool) {
	t.Helper()
	st, err := c.Status(0)
	if err != nil || st.Cluster == nil {
		return api.PeerStatus{}, false
	}
	for _, p := range st.Cluster.Peers {
		if p.URL == b.URL() && p.Archive != nil {
			return p, true
		}
	}
	return api.PeerStatus{}, false
}

// dtfcStatus runs `dtfc status --server URL` and returns its output.
func dtfcStatus(t *testing.T, url string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), cluster.Binary(t), "status", "--server", url).CombinedOutput()
	require.NoError(t, err, "dtfc status:\n%s", out)
	return string(out)
}

// TestArchiveOperations: /_status, /metrics, the status page and `dtfc
// status` show an archive's queue, lag, errors, and the blob bytes
// written to it (by the node that pushed) and read from it (by the node
// that missed); none of them, nor the log, shows the credentials, also
// while the S3 server is down.
func TestArchiveOperations(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "ops")
	a := archiveNodes(t, b, "--archive-interval", "1h")
	hc := newClient(t)
	data := randomBytes(300<<10 + 7)
	_, id := upload(t, hc, a.Nodes[0].URL, "ops.bin", data)
	eventually(t, 20*time.Second, "the blob written and counted, the queue empty", func() bool {
		p, ok := archiveStatus(t, a, b)
		return ok && len(b.states(t, id)) == 1 && p.Queue == 0 && p.Archive.BytesWritten == int64(len(data))
	})
	p, _ := archiveStatus(t, a, b)
	assert.Equal(t, s.Bucket, p.Archive.Bucket)
	assert.Equal(t, "ops", p.Archive.Prefix)
	assert.Equal(t, s.URL, p.Archive.Endpoint)
	assert.Zero(t, p.Archive.BytesRead)
	assert.Zero(t, p.Archive.Errors)
	assert.Zero(t, p.LagSeconds)
	label := fmt.Sprintf(`{archive=%q}`, b.URL())
	assert.Contains(t, metrics(t, hc, a.Nodes[0].URL, "dtfc_archive_bytes"), "dtfc_archive_bytes_written_total"+label+fmt.Sprintf(" %d", len(data)))
	assert.Contains(t, metrics(t, hc, a.Nodes[0].URL, "dtfc_archive_bytes"), "dtfc_archive_bytes_read_total"+label+" 0")
	_, page := get(t, hc, a.Nodes[0].URL+"/")
	assert.Regexp(t, `(?s)<tr class="up" data-entry="`+b.URL()+`" data-state="up">.*?<td class="num queue">0</td>.*?title="`+fmt.Sprint(len(data))+` bytes">300 KiB</td>`, string(page))
	var cli api.Status
	out := dtfcStatus(t, a.Nodes[0].URL)
	require.NoError(t, json.Unmarshal([]byte(out), &cli), "dtfc status prints /_status:\n%s", out)
	require.NotNil(t, cli.Cluster)
	assert.Contains(t, out, `"bytes_written": `+fmt.Sprint(len(data)))

	// Another node, alone but for the bucket, misses the blob: it is read
	// from the archive, and counted there.
	r := archiveNodes(t, b, "--archive-interval", "1h")
	res, body := get(t, hc, r.Nodes[0].URL+"/"+id)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, data, body)
	eventually(t, 10*time.Second, "the bytes read counted on the reader", func() bool {
		p, ok := archiveStatus(t, r, b)
		return ok && p.Archive.BytesRead == int64(len(data))
	})
	assert.Contains(t, metrics(t, hc, r.Nodes[0].URL, "dtfc_archive_bytes"), "dtfc_archive_bytes_read_total"+label+fmt.Sprintf(" %d", len(data)))
	assert.Contains(t, dtfcStatus(t, r.Nodes[0].URL), `"bytes_read": `+fmt.Sprint(len(data)))

	// The S3 server stops: the upload waits in the queue, the lag grows,
	// the error is shown; the credentials never are.
	s.Stop(t)
	_, id2 := upload(t, hc, a.Nodes[0].URL, "later.bin", randomBytes(10<<10))
	eventually(t, 20*time.Second, "a queue, a lag and an error for the archive", func() bool {
		p, ok := archiveStatus(t, a, b)
		return ok && p.Queue >= 1 && p.LagSeconds > 0 && p.LastError != "" && !p.Up && p.Archive.Errors > 0 && p.Pusher == "backoff"
	})
	assert.NotContains(t, metrics(t, hc, a.Nodes[0].URL, "dtfc_archive_errors_total"), "dtfc_archive_errors_total"+label+" 0")
	p, _ = archiveStatus(t, a, b)
	_, page = get(t, hc, a.Nodes[0].URL+"/")
	assert.Regexp(t, `(?s)<tr class="down" data-entry="`+b.URL()+`" data-state="down">.*?<td class="num queue">[1-9]`, string(page))
	assert.Contains(t, string(page), strings.ReplaceAll(p.LastError, `"`, "&#34;")[:20], "the last error on the page")
	_, statusBody := get(t, hc, a.Nodes[0].URL+"/_status")
	_, metricsBody := get(t, hc, a.Nodes[0].URL+"/metrics")
	for what, text := range map[string]string{
		"/_status": string(statusBody), "/metrics": string(metricsBody), "the status page": string(page),
		"dtfc status": dtfcStatus(t, a.Nodes[0].URL), "the log": a.Nodes[0].Log(), "the reader's log": r.Nodes[0].Log(),
	} {
		assert.NotContains(t, text, versitygw.AccessKey, "the access key id in %s", what)
		assert.NotContains(t, text, versitygw.SecretKey, "the secret in %s", what)
	}
	s.Start(t)
	eventually(t, 45*time.Second, "the queue drained", func() bool {
		p, ok := archiveStatus(t, a, b)
		return ok && p.Queue == 0 && len(b.states(t, id2)) == 1 && p.Pusher == "idle"
	})
}

// refresh sends PUT /refreshpeers to node 0 of c and returns the status
// and the body.
func refresh(t *testing.T, hc *http.Client, c *cluster.Cluster) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, c.Nodes[0].URL+"/refreshpeers", nil)
	require.NoError(t, err)
	res, err := hc.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, string(body)
}

// TestArchiveRefreshChecked: PUT /refreshpeers checks an archive entry
// that is new or changed like the start does (the bucket is there, the
// credentials work) and refuses the whole refresh with a JSON error that
// names the entry and says why; the list in force stays (without the
// archive, or with its previous entry, still pushed to).
func TestArchiveRefreshChecked(t *testing.T) {
	s := versitygw.ForTest(t)
	b := newBucket(t, s, "refresh")
	c := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true, Args: []string{"--archive-interval", "1h"}})
	hc := newClient(t)
	list := c.Nodes[0].PeerList
	base, err := os.ReadFile(list)
	require.NoError(t, err)
	wrongSecret := filepath.Join(t.TempDir(), "wrong")
	require.NoError(t, os.WriteFile(wrongSecret, []byte("not-the-secret"), 0o600))
	missing := strings.Replace(b.entry(), "s3://"+s.Bucket+"/", "s3://no-such-bucket/", 1)
	wrong := strings.Replace(b.entry(), b.secret, wrongSecret, 1)
	refused := func(entry, url, why string) {
		t.Helper()
		require.NoError(t, os.WriteFile(list, append(append([]byte{}, base...), "\n"+entry...), 0o644))
		status, body := refresh(t, hc, c)
		assert.Equal(t, http.StatusUnprocessableEntity, status, body)
		var e struct {
			Error string `json:"error"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &e), "a JSON error: %s", body)
		assert.Contains(t, e.Error, url, "the entry is named")
		assert.Contains(t, e.Error, why)
		assert.Contains(t, e.Error, "the previous peer list stays in force")
		assert.NotContains(t, body, versitygw.SecretKey)
		assert.NotContains(t, body, "not-the-secret")
	}
	archiveListed := func() bool {
		st, err := c.Status(0)
		require.NoError(t, err)
		_, ok := st.Queues[b.URL()]
		return ok
	}

	refused(missing, "s3://no-such-bucket/refresh", "bucket does not exist")
	assert.False(t, archiveListed(), "a refused archive is not taken")
	refused(wrong, b.URL(), "refused the credentials")
	assert.False(t, archiveListed(), "a refused archive is not taken")

	require.NoError(t, os.WriteFile(list, append(append([]byte{}, base...), "\n"+b.entry()...), 0o644))
	status, body := refresh(t, hc, c)
	require.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, b.URL())
	require.True(t, archiveListed())

	// The same archive with credentials that do not work: refused, and
	// the entry in force (with the right ones) still takes uploads.
	refused(wrong, b.URL(), "refused the credentials")
	data := randomBytes(20 << 10)
	_, id := upload(t, hc, c.Nodes[0].URL, "after.bin", data)
	eventually(t, 20*time.Second, "the upload pushed through the entry in force", func() bool {
		return len(b.states(t, id)) == 1 && b.holds(id, data)
	})
	// An unchanged entry is not checked again: with the S3 server down,
	// a refresh that only adds a node goes through.
	s.Stop(t)
	require.NoError(t, os.WriteFile(list, append(append([]byte{}, base...), "\n"+b.entry()+"\n[[peers]]\nurl = \"http://127.0.0.1:1\"\n"...), 0o644))
	status, body = refresh(t, hc, c)
	assert.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, "http://127.0.0.1:1")
}
