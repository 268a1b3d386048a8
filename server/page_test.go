package server_test

import (
	"context"
	"encoding/json"
	"html"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

// fakeCluster answers Status with a fixed view; the page needs nothing
// else of the cluster.
type fakeCluster struct {
	server.Cluster // nil: any other method panics
	status         peer.Status
}

func (f *fakeCluster) Status() peer.Status                                      { return f.status }
func (f *fakeCluster) Removed() (time.Time, bool)                               { return time.Time{}, false }
func (f *fakeCluster) IdentityConflict() string                                 { return f.status.IdentityConflict }
func (f *fakeCluster) InternalHandler() http.Handler                            { return http.NotFoundHandler() }
func (f *fakeCluster) Refresh(context.Context) ([]peer.Peer, error)             { return nil, nil }
func (f *fakeCluster) WaitReplicas(context.Context, dtfc.ID, uint64, int) error { return nil }
func (f *fakeCluster) Lookup(context.Context, dtfc.ID, bool) (dtfc.State, error) {
	return dtfc.State{}, peer.ErrNotFound
}

func TestStatusPageAlone(t *testing.T) {
	n := startNode(t, server.Config{})
	a := n.get(t, "/")
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, "text/html; charset=utf-8", a.header.Get("Content-Type"))
	assert.Equal(t, "no-store", a.header.Get("Cache-Control"))
	assert.Contains(t, a.header.Get("Content-Security-Policy"), "default-src 'none'")
	page := string(a.body)
	assert.Contains(t, page, `<meta http-equiv="refresh" content="5">`)
	assert.Contains(t, page, `<html lang="en">`)
	assert.Contains(t, page, "<title>dtfc "+n.me+"</title>")
	assert.NotContains(t, page, "<script")
	assert.NotRegexp(t, `(?i)(src|href)="(https?:)?//`, page, "no external assets")
	assert.Contains(t, page, "No peers: this node is alone.")
	assert.Contains(t, page, "No warnings or errors since the node started.")
	assert.Regexp(t, `id="disk">[0-9.]+ [KMGTPE]?i?B of [0-9.]+ [KMGTPE]?i?B \(\d+%\)`, page)

	h := n.do(t, http.MethodHead, "/", nil)
	requireStatus(t, h, http.StatusOK)
	assert.Empty(t, h.body)
	assert.Equal(t, a.header.Get("Content-Type"), h.header.Get("Content-Type"))

	// The JSON twin has the same figures.
	var st server.Status
	require.NoError(t, json.Unmarshal(n.get(t, "/_status").body, &st))
	require.NotNil(t, st.Disk)
	assert.Equal(t, n.base, st.Disk.Dir)
	assert.Positive(t, st.Disk.TotalBytes)
	assert.LessOrEqual(t, st.Disk.FreeBytes, st.Disk.TotalBytes)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(n.get(t, "/_status").body, &raw))
	assert.Equal(t, []any{}, raw["recent_errors"], "an empty list, not null")
}

func TestStatusPagePeers(t *testing.T) {
	now := time.Now()
	fc := &fakeCluster{status: peer.Status{
		Synced: true,
		Scrub:  blobstore.ScrubProgress{Running: true, PassStarted: now.Add(-90 * time.Second), Checked: 12, CheckedBytes: 3 << 20, Passes: 4},
		Peers: []peer.PeerStatus{
			{URL: "http://up.example:8080", Role: "replica", Up: true, Contacted: true, LastContact: now.Add(-2 * time.Second)},
			{URL: "http://down.example:8080", Role: "replica", Contacted: true, Failures: 7, Queue: 42, LagSeconds: 125,
				LastContact: now.Add(-10 * time.Minute), LastError: `dial tcp: <script>alert("x")</script>`, LastErrorAt: now.Add(-time.Second)},
			{URL: "http://new.example:8080", Role: "cache"},
		},
		Members: []peer.Member{
			{Node: "a1b2c3", URL: "http://up.example:8080", Role: "replica", Since: now.Add(-time.Hour)},
			{Node: "d4e5f6", URL: "http://gone.example:8080", Role: "replica", Since: now.Add(-2 * time.Hour), Removed: true, Clock: dtfc.TimestampAt(now.Add(-3 * time.Second))},
		},
	}}
	recent := server.NewRecent(4)
	n := startNode(t, server.Config{Cluster: fc, RecentErrors: recent.Entries})
	a := n.get(t, "/")
	requireStatus(t, a, http.StatusOK)
	page := string(a.body)

	row := func(url string) string {
		m := regexp.MustCompile(`(?s)<tr class="[a-z]+" data-peer="` + regexp.QuoteMeta(url) + `".*?</tr>`).FindString(page)
		require.NotEmpty(t, m, "no row for %s in\n%s", url, page)
		return m
	}
	up, down, unknown := row("http://up.example:8080"), row("http://down.example:8080"), row("http://new.example:8080")
	assert.Contains(t, up, `data-state="up"`)
	assert.Contains(t, up, `<span class="state up">up</span>`)
	assert.Contains(t, up, "2s ago")
	assert.Contains(t, down, `data-state="down"`)
	assert.Contains(t, down, `<span class="state down">down</span>`)
	assert.Contains(t, down, "(7 failures)")
	assert.Contains(t, down, `<td class="num">42</td>`)
	assert.Contains(t, down, `<td class="num">2m 5s</td>`, "lag")
	assert.Contains(t, down, "10m 0s ago")
	assert.Contains(t, down, "&lt;script&gt;", "errors are escaped")
	assert.NotContains(t, page, "<script")
	assert.Contains(t, unknown, `data-state="unknown"`)
	assert.Contains(t, unknown, "never")
	assert.Contains(t, page, `<p class="banner" role="alert">1 of 3 peers down</p>`)
	assert.Contains(t, page, "<title>1 down · dtfc")
	assert.Contains(t, page, "in sync")
	assert.Contains(t, page, "running since 1m 30s ago")
	assert.Contains(t, page, "12 blobs (3.0 MiB) checked")
	assert.Regexp(t, `(?s)<tr data-member="http://up.example:8080" data-removed="false">.*?<code>a1b2c3</code>.*?member</td>.*?1h 0m ago`, page)
	assert.Regexp(t, `(?s)<tr data-member="http://gone.example:8080" data-removed="true">.*?removed 3s ago`, page)

	// A warning logged through Recent shows on the page and in the JSON.
	slogWarn(recent, "push to peer failed", "peer", "http://down.example:8080")
	page = string(n.get(t, "/").body)
	assert.Regexp(t, `(?s)<table id="errors">.*WARN.*push to peer failed.*peer=http://down.example:8080`, page)
	var st server.Status
	require.NoError(t, json.Unmarshal(n.get(t, "/_status").body, &st))
	require.Len(t, st.RecentErrors, 1)
	assert.Equal(t, "push to peer failed", st.RecentErrors[0].Message)
	require.NotNil(t, st.Cluster)
	assert.Len(t, st.Cluster.Peers, 3)
	assert.EqualValues(t, 42, st.Queues["http://down.example:8080"].Length)
}

func TestHumanFigures(t *testing.T) {
	// Through the page: sizes in binary units.
	fc := &fakeCluster{status: peer.Status{Scrub: blobstore.ScrubProgress{Passes: 1, Checked: 1, CheckedBytes: 1536}}}
	n := startNode(t, server.Config{Cluster: fc})
	page := string(n.get(t, "/").body)
	assert.Contains(t, page, "1 blobs (1.5 KiB) checked")
	assert.True(t, strings.Contains(page, "No peers") || strings.Contains(page, "0 peers"))
}

func slogWarn(r *server.Recent, msg string, args ...any) {
	slog.New(r.Handler(slog.DiscardHandler)).Warn(msg, args...)
}

// TestStatusPageForgetting: the page shows a peer marked expired (and
// since when it acknowledged), an entry that is the node itself, a role
// the peer reports against the list's, changes refused for their clock,
// an entry that reaches two nodes by turns, and a resync in progress with
// its last error.
func TestStatusPageForgetting(t *testing.T) {
	now := time.Now()
	fc := &fakeCluster{status: peer.Status{
		Resyncing: true,
		Resync:    peer.ResyncStatus{State: peer.ResyncRetrying, LastError: "comparing with http://a: connection refused"},
		Peers: []peer.PeerStatus{
			{URL: "http://gone.example:8080", Role: "replica", Contacted: true, Expired: true, ExpiredSince: now.Add(-100 * 24 * time.Hour)},
			{URL: "http://localhost:8080", Role: "replica", Self: true, Up: true, Contacted: true},
			{URL: "http://cache.example:8080", Role: "replica", ReportedRole: "cache", Up: true, Contacted: true, ClockRefused: 3},
			{URL: "http://lb.example:8080", Role: "replica", Node: "b", Nodes: []string{"a", "b"}, Up: true, Contacted: true},
		},
	}}
	n := startNode(t, server.Config{Cluster: fc})
	page := string(n.get(t, "/").body)
	assert.Contains(t, page, `data-state="expired"`)
	assert.Contains(t, page, "must resync")
	assert.Contains(t, page, `data-state="self"`)
	assert.Contains(t, page, "(says cache)")
	assert.Contains(t, page, "3 refused: clock ahead")
	assert.Contains(t, page, `title="a, b">(reaches 2 nodes by turns: list each under a URL of its own)`)
	assert.Contains(t, page, "resyncing (retrying)")
	assert.Contains(t, page, "connection refused")
}

// TestIdentityConflict: a node whose identity another running node has
// shows why on its status page and refuses uploads and deletes (503,
// saying why); it still serves its status.
func TestIdentityConflict(t *testing.T) {
	why := "another running node has this node's identity 0123456789abcdef (peer http://b answers with this node's identity): one of them is a copy of the other's basedir"
	n := startNode(t, server.Config{Cluster: &fakeCluster{status: peer.Status{IdentityConflict: why}}})
	assert.Contains(t, string(n.get(t, "/").body), html.EscapeString("takes no uploads or deletes: "+why))
	a := n.put(t, "/f", []byte("x"))
	assert.Equal(t, http.StatusServiceUnavailable, a.status, "%s", a)
	assert.Contains(t, string(a.body), why)
	a = n.do(t, http.MethodDelete, "/"+strings.Repeat("ab", 64), nil)
	assert.Equal(t, http.StatusServiceUnavailable, a.status, "%s", a)
}

// TestStatusPageArchives: an archive has a row of its own with its
// endpoint, queue, lag, the bytes written to and read from it, and its
// last error; the JSON twin carries the same figures.
func TestStatusPageArchives(t *testing.T) {
	now := time.Now()
	arch := peer.PeerStatus{URL: "s3://bucket/prod", Role: "archive", Contacted: true, Failures: 2, Queue: 7, LagSeconds: 65,
		LastError: "archive: put blobs/ab: connection refused", LastErrorAt: now.Add(-time.Second),
		Archive: &api.ArchiveStatus{Bucket: "bucket", Prefix: "prod", Endpoint: "http://s3.example:7070", BytesWritten: 3 << 30, BytesRead: 1536, Errors: 5}}
	fc := &fakeCluster{status: peer.Status{Peers: []peer.PeerStatus{
		{URL: "http://up.example:8080", Role: "replica", Up: true, Contacted: true},
		arch,
	}}}
	n := startNode(t, server.Config{Cluster: fc})
	page := string(n.get(t, "/").body)
	row := regexp.MustCompile(`(?s)<tr class="[a-z]+" data-entry="s3://bucket/prod".*?</tr>`).FindString(page)
	require.NotEmpty(t, row, "no archive row in\n%s", page)
	assert.NotContains(t, page, `data-entry="http://up.example:8080"`, "a node is not an archive")
	assert.Contains(t, row, `data-state="down"`)
	assert.Contains(t, row, "http://s3.example:7070")
	assert.Contains(t, row, `<td class="num queue">7</td>`)
	assert.Contains(t, row, `<td class="num lag">1m 5s</td>`)
	assert.Contains(t, row, `title="3221225472 bytes">3.0 GiB</td>`)
	assert.Contains(t, row, `title="1536 bytes">1.5 KiB</td>`)
	assert.Contains(t, row, "connection refused")
	assert.Contains(t, row, "(2 failures)")
	assert.Contains(t, row, `<td class="num errors">5</td>`)

	var st server.Status
	require.NoError(t, json.Unmarshal(n.get(t, "/_status").body, &st))
	require.NotNil(t, st.Cluster)
	require.Len(t, st.Cluster.Peers, 2)
	assert.Nil(t, st.Cluster.Peers[0].Archive)
	require.NotNil(t, st.Cluster.Peers[1].Archive)
	assert.Equal(t, *arch.Archive, *st.Cluster.Peers[1].Archive)
	assert.EqualValues(t, 7, st.Queues["s3://bucket/prod"].Length)
}
