package peer_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// fakeBucket is an in-process S3 server (gofakes3) with one bucket,
// counting the reads of blob objects.
type fakeBucket struct {
	be          *s3mem.Backend
	url, secret string
	blobGets    atomic.Int64
	denyPuts    atomic.Int64 // deny records written
	a           *archive.Archive
}

func newFakeBucket(t *testing.T) *fakeBucket {
	t.Helper()
	be := s3mem.New()
	require.NoError(t, be.CreateBucket("b"))
	fb := &fakeBucket{be: be}
	h := gofakes3.New(be).Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			fb.blobGets.Add(1)
		}
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/deny/") {
			fb.denyPuts.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	fb.url = srv.URL
	fb.secret = filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(fb.secret, []byte("s"), 0o600))
	var err error
	fb.a, err = archive.New(t.Context(), archive.Config{Bucket: "b", Prefix: "p", Endpoint: srv.URL, PathStyle: true, AccessKeyID: "k", SecretAccessKeyFile: fb.secret})
	require.NoError(t, err)
	return fb
}

// addTo appends the archive's entry to n's peer list.
func (fb *fakeBucket) addTo(t *testing.T, n *node) {
	f, err := os.OpenFile(n.peerFile, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	_, err = fmt.Fprintf(f, "[[peers]]\nurl = \"s3://b/p\"\nrole = \"archive\"\nendpoint = %q\npath_style = true\naccess_key_id = \"k\"\nsecret_access_key_file = %q\n", fb.url, fb.secret)
	require.NoError(t, err)
}

// TestArchiveAskedAfterNodes: a miss asks the nodes first and the
// archive only when no node has the blob; the archive's queue is in
// /_status under its URL.
func TestArchiveAskedAfterNodes(t *testing.T) {
	fb := newFakeBucket(t)
	x := newNode(t, nodeOpts{run: true})
	y := newNode(t, nodeOpts{role: peer.RoleCache, run: true}) // gets no pushed upload: every read is a miss
	x.writePeers(y)
	y.writePeers(x)
	fb.addTo(t, x)
	fb.addTo(t, y)
	x.start()
	y.start()
	require.NoError(t, x.Cluster.CheckArchives(t.Context()))

	b1 := randomBytes(t, 50<<10)
	id := x.put(b1)
	eventually(t, 10*time.Second, func() bool {
		has, err := fb.a.HasBlob(t.Context(), id)
		return err == nil && has && x.status().Queues["s3://b/p"].Length == 0
	}, "the blob in the archive, its queue empty")
	resp, body, err := get(y.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, b1, body)
	assert.Zero(t, fb.blobGets.Load(), "a node held it: the archive was not read")

	b2 := randomBytes(t, 60<<10)
	id2 := x.put(b2)
	// The queue empty, not only the blob there: the state record, which
	// a read of the archive needs, is written after the blob.
	eventually(t, 10*time.Second, func() bool {
		has, err := fb.a.HasBlob(t.Context(), id2)
		return err == nil && has && x.status().Queues["s3://b/p"].Length == 0
	}, "the second blob and its record in the archive")
	x.down()
	resp, body, err = get(y.URL + "/" + id2.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "peer", resp.Header.Get("X-Dtfc-Source"))
	assert.Equal(t, b2, body)
	assert.Positive(t, fb.blobGets.Load(), "read from the archive")
	y.eventuallyHolds(id2, true)
}

// TestArchiveDenyListWritten: a node whose archive acknowledged its deny
// entries without keeping them (nodes before deny records were kept in
// a bucket did) writes its whole deny list to that archive, once: a
// block then reaches the nodes that read the cluster through the bucket.
func TestArchiveDenyListWritten(t *testing.T) {
	fb := newFakeBucket(t)
	x := newNode(t, nodeOpts{run: true})
	x.writePeers()
	x.start()
	block, err := x.Store.SetDeny(dtfc.Sum([]byte("blocked")), 451, "court order", false)
	require.NoError(t, err)
	lift, err := x.Store.SetDeny(dtfc.Sum([]byte("lifted")), 0, "", true)
	require.NoError(t, err)
	x.down()

	// The archive's cursor past both entries, as an older node left it.
	st, err := blobstore.Open(x.Dir, blobstore.Options{})
	require.NoError(t, err)
	require.NoError(t, st.SetValue("cursor s3://b/p", []byte(strconv.FormatUint(st.LastSeq(), 10))))
	require.NoError(t, st.Close())
	fb.addTo(t, x)
	x.start()
	for _, d := range []blobstore.Deny{block, lift} {
		eventually(t, 10*time.Second, func() bool {
			got, err := fb.a.NewestDeny(t.Context(), d.ID)
			return err == nil && got == d
		}, "the deny entry's record in the bucket")
	}
	// Once: an archive is never a cache, so the older store's missing
	// floor of skipped uploads does not have the feed offered again.
	eventually(t, 10*time.Second, func() bool {
		return x.status().Queues["s3://b/p"].Length == 0
	}, "the archive's queue empty")
	assert.EqualValues(t, 2, fb.denyPuts.Load(), "each deny record written once")
}

// TestArchiveRelayPastBadDenyRecord: a deny record that is not valid
// (not JSON here) is skipped with a warning; the relay goes on with the
// rest of the writer's log (it held the log for ever, reading the record
// again every round).
func TestArchiveRelayPastBadDenyRecord(t *testing.T) {
	fb := newFakeBucket(t)
	now := dtfc.TimestampAt(time.Now())
	bad := dtfc.Sum([]byte("bad"))
	h := bad.String()
	key := "p/deny/" + h[0:2] + "/" + h[2:4] + "/" + h + "/" + fmt.Sprintf("%016x", uint64(now)) + "-7e57"
	_, err := fb.be.PutObject("b", key, nil, strings.NewReader("not json"), 8, nil)
	require.NoError(t, err)
	require.NoError(t, fb.a.AppendLog(t.Context(), "7e57", 1, []archive.LogEntry{{ID: bad, Clock: now, Node: "7e57", Deny: true}}))
	good := blobstore.Deny{ID: dtfc.Sum([]byte("good")), Status: 451, Reason: "r", Clock: now + 1, Node: "7e57"}
	require.NoError(t, fb.a.PutDeny(t.Context(), good))
	require.NoError(t, fb.a.AppendLog(t.Context(), "7e57", 2, []archive.LogEntry{{ID: good.ID, Clock: good.Clock, Node: good.Node, Deny: true}}))

	x := newNode(t, nodeOpts{run: true, peer: func(o *peer.Options) { o.ArchiveInterval = 100 * time.Millisecond }})
	x.writePeers()
	fb.addTo(t, x)
	x.start()
	eventually(t, 10*time.Second, func() bool {
		_, ok := x.Store.Denied(good.ID)
		return ok
	}, "the valid block after the bad record applied")
	_, ok := x.Store.Denied(bad)
	assert.False(t, ok)
}
