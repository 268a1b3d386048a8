package couchdb_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/couchdb"
	"github.com/dtfc/dtfc/internal/cluster"
)

// The node of these tests runs two hours late: what it stores is stamped
// as uploaded two hours ago (it is a fresh node whose clock file said -2h
// from its first start, so its clock never ran ahead of that). Then its
// clock is put right, and what it stores from then on is young. The
// command under test reads real time, so "old" needs no wait and no hook
// in it: the upload times are the node's own.
const lateBy = 2 * time.Hour

// agedFixture is a CouchDB with two databases and a dtfc node (write
// token "tok") holding old blobs (referenced in various ways, and not)
// and one young unreferenced blob.
type agedFixture struct {
	pouch  *pouch
	c1, c2 *couch
	node   *cluster.Node
	dc     *client.Client
	hc     *http.Client

	// Old, referenced: by a winning revision, by a design document, from
	// the second database, and only by a conflicting revision.
	refWinning, refDesign, refDB2, refConflict dtfc.ID
	// Old and unreferenced: the orphans.
	orphans []dtfc.ID
	// Young and unreferenced.
	young dtfc.ID
}

func (f *agedFixture) all() []dtfc.ID {
	return append([]dtfc.ID{f.refWinning, f.refDesign, f.refDB2, f.refConflict, f.young}, f.orphans...)
}

func refTo(id dtfc.ID) map[string]any {
	return map[string]any{"f.txt": map[string]any{"sha512": id.String(), "content_type": "text/plain", "length": 1}}
}

func newAgedFixture(t *testing.T, nOrphans int) *agedFixture {
	t.Helper()
	f := &agedFixture{pouch: sharedPouch(t), hc: httpClient(t)}
	f.c1, f.c2 = newDB(t, f.pouch, ""), newDB(t, f.pouch, "")
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true, Secret: "s", AuthToken: "tok"})
	f.node = cl.Nodes[0]
	f.node.Stop()
	require.NoError(t, os.RemoveAll(f.node.Basedir))
	f.node.SetClock(-lateBy)
	f.node.Start()
	var err error
	f.dc, err = client.New([]string{f.node.URL}, client.Options{HTTPClient: f.hc, Token: "tok"})
	require.NoError(t, err)

	put := func(s string) dtfc.ID {
		res, err := f.dc.Put(t.Context(), strings.NewReader(s), client.PutOptions{Filename: "x.txt"})
		require.NoError(t, err)
		return res.ID
	}
	f.refWinning, f.refDesign, f.refDB2, f.refConflict = put("winning"), put("design"), put("db2"), put("conflict")
	for i := range nOrphans {
		f.orphans = append(f.orphans, put(fmt.Sprintf("orphan %d", i)))
	}
	// Every old upload is two hours old.
	for _, b := range f.listAll(t) {
		require.WithinDuration(t, time.Now().Add(-lateBy), b.Uploaded, 5*time.Minute, "old upload %s", b.ID)
	}

	// Back to real time; the young upload, repeated (an upload of bytes
	// held is a new upload) until the node has read its clock file.
	f.node.SetClock(0)
	eventually(t, 10*time.Second, "an upload stamped with the real time", func() bool {
		f.young = put("young")
		for _, b := range f.listAll(t) {
			if b.ID == f.young {
				return time.Since(b.Uploaded) < time.Minute
			}
		}
		return false
	})

	f.c1.do(http.MethodPut, "/"+f.c1.db+"/a", map[string]any{couchdb.Field: refTo(f.refWinning)}, nil, http.StatusCreated)
	f.c1.do(http.MethodPut, "/"+f.c1.db+"/_design/app", map[string]any{couchdb.Field: refTo(f.refDesign)}, nil, http.StatusCreated)
	f.c1.do(http.MethodPut, "/"+f.c1.db+"/plain", map[string]any{"title": "no dtfc field"}, nil, http.StatusCreated)
	f.c2.do(http.MethodPut, "/"+f.c2.db+"/x", map[string]any{couchdb.Field: refTo(f.refDB2)}, nil, http.StatusCreated)
	// Two revisions of one document, written as replication would: the
	// higher revision wins, the other is a conflict still readable.
	f.c2.do(http.MethodPost, "/"+f.c2.db+"/_bulk_docs", map[string]any{"new_edits": false, "docs": []any{
		map[string]any{"_id": "y", "_rev": "1-ffff", couchdb.Field: refTo(f.refDB2)},
		map[string]any{"_id": "y", "_rev": "1-0000", couchdb.Field: refTo(f.refConflict)},
	}}, nil, http.StatusCreated)
	var y map[string]any
	f.c2.do(http.MethodGet, "/"+f.c2.db+"/y?conflicts=true", nil, &y, http.StatusOK)
	require.Equal(t, "1-ffff", y["_rev"], "the winning revision")
	require.Equal(t, []any{"1-0000"}, y["_conflicts"], "the conflicting revision")
	return f
}

// listAll pages through the node's GET /_blobs.
func (f *agedFixture) listAll(t *testing.T) []client.ListedBlob {
	t.Helper()
	var out []client.ListedBlob
	var after dtfc.ID
	for {
		page, err := f.dc.List(t.Context(), client.ListOptions{After: after, Limit: 3})
		require.NoError(t, err)
		out = append(out, page.Blobs...)
		if page.Next.IsZero() {
			return out
		}
		after = page.Next
	}
}

// status is the node's answer to GET /{id}.
func (f *agedFixture) status(t *testing.T, id dtfc.ID) int {
	t.Helper()
	resp, err := f.hc.Get(f.node.URL + "/" + id.String())
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// requireHeld checks that every blob of want is served (200) and every
// other blob of the fixture answers 404.
func (f *agedFixture) requireHeld(t *testing.T, want []dtfc.ID, what string) {
	t.Helper()
	for _, id := range f.all() {
		code := http.StatusNotFound
		if slices.Contains(want, id) {
			code = http.StatusOK
		}
		assert.Equal(t, code, f.status(t, id), "%s: GET %s", what, id)
	}
}

func idStrings(ids []dtfc.ID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	slices.Sort(out)
	return out
}

// TestOrphansPurge runs `dtfc couchdb orphans` against pouchdb-server and
// a dtfc node: a report deletes nothing and names the old unreferenced
// blobs; a purge deletes exactly those (never one referenced by a winning,
// conflicting or design revision, in either database, never the young
// one), through the node, with its token; a second purge finds nothing.
func TestOrphansPurge(t *testing.T) {
	f := newAgedFixture(t, 3)
	base := []string{"couchdb", "orphans", "--couch", f.pouch.URL, "--db", f.c1.db, "--db", f.c2.db, "--server", f.node.URL}
	orphans := func(extra ...string) (string, int) {
		t.Helper()
		pr := startDtfc(t, append(slices.Clone(base), extra...)...)
		code := pr.wait(t, deadline)
		return pr.out.String(), code
	}

	// Without the token: refused, saying so, nothing deleted.
	out, code := orphans("--older-than", "1h", "--purge")
	require.Equal(t, 1, code, out)
	assert.Contains(t, out, "--token TOKEN or $DTFC_TOKEN")
	f.requireHeld(t, f.all(), "no token")
	// Without a grace period, or too short a one: refused.
	out, code = orphans("--token", "tok", "--purge")
	require.Equal(t, 1, code, out)
	assert.Contains(t, out, "--purge needs --older-than")
	out, code = orphans("--token", "tok", "--purge", "--older-than", "0")
	require.Equal(t, 1, code, out)
	assert.Contains(t, out, "must be at least 1m0s")
	f.requireHeld(t, f.all(), "refused")

	// A report without a grace period: every unreferenced blob.
	out, code = orphans("--token", "tok")
	require.Equal(t, 0, code, out)
	assert.Equal(t, idStrings(append(slices.Clone(f.orphans), f.young)), idLines(out), out)
	assert.Equal(t, "none (a report; --purge deletes)", summaryLine(out, "deleted"), out)

	// A report with one: the old ones only.
	out, code = orphans("--token", "tok", "--older-than", "1h")
	require.Equal(t, 0, code, out)
	assert.Equal(t, idStrings(f.orphans), idLines(out), out)
	assert.Equal(t, "8 blobs", strings.Fields(summaryLine(out, "listed"))[0]+" blobs", out)
	assert.Equal(t, "4", summaryLine(out, "referenced"), out)
	assert.True(t, strings.HasPrefix(summaryLine(out, "young"), "1 "), out)
	assert.True(t, strings.HasPrefix(summaryLine(out, "orphans"), "3 "), out)
	f.requireHeld(t, f.all(), "report")

	// A grace period longer than their age: nothing to delete.
	out, code = orphans("--token", "tok", "--older-than", "3h", "--purge")
	require.Equal(t, 0, code, out)
	assert.Empty(t, idLines(out), out)
	assert.True(t, strings.HasPrefix(summaryLine(out, "young"), "4 "), out)
	assert.True(t, strings.HasPrefix(summaryLine(out, "deleted"), "0 "), out)
	f.requireHeld(t, f.all(), "3h")

	// The purge.
	out, code = orphans("--token", "tok", "--older-than", "1h", "--purge")
	require.Equal(t, 0, code, out)
	assert.Equal(t, idStrings(f.orphans), idLines(out), out)
	assert.True(t, strings.HasPrefix(summaryLine(out, "deleted"), "3 "), out)
	assert.Equal(t, "0", summaryLine(out, "failed"), out)
	t.Logf("the purge's output:\n%s", out)
	kept := []dtfc.ID{f.refWinning, f.refDesign, f.refDB2, f.refConflict, f.young}
	f.requireHeld(t, kept, "purge")
	var listed []dtfc.ID
	for _, b := range f.listAll(t) {
		listed = append(listed, b.ID)
	}
	assert.Equal(t, idStrings(kept), idStrings(listed), "the node lists what is left")

	// Again: nothing left to delete.
	out, code = orphans("--token", "tok", "--older-than", "1h", "--purge")
	require.Equal(t, 0, code, out)
	assert.Empty(t, idLines(out), out)
	assert.True(t, strings.HasPrefix(summaryLine(out, "orphans"), "0 "), out)
	f.requireHeld(t, kept, "second purge")
}

// hookedBlobs is the real client with a hook run after each answer to
// List: the test acts there, between Collect's steps, as another client
// of the node or of CouchDB would.
type hookedBlobs struct {
	*client.Client
	mu        sync.Mutex
	lists     int
	afterList func(n int, opts client.ListOptions)
}

func (h *hookedBlobs) List(ctx context.Context, opts client.ListOptions) (client.ListPage, error) {
	page, err := h.Client.List(ctx, opts)
	h.mu.Lock()
	h.lists++
	n := h.lists
	h.mu.Unlock()
	if h.afterList != nil {
		h.afterList(n, opts)
	}
	return page, err
}

// TestCollectRaces: what happens between the listing and the deletes is
// seen. Right after the listing, another client references one orphan
// in a document, uploads another again, and deletes a third: the first
// is referenced (the references are read after the listing), the second
// is young at its re-check and kept, the third is gone; only the fourth
// is deleted.
func TestCollectRaces(t *testing.T) {
	f := newAgedFixture(t, 4)
	sorted := slices.Clone(f.orphans)
	slices.SortFunc(sorted, func(a, b dtfc.ID) int { return strings.Compare(a.String(), b.String()) })
	referenced, reuploaded, deleted, orphan := sorted[0], sorted[1], sorted[2], sorted[3]

	h := &hookedBlobs{Client: f.dc}
	h.afterList = func(n int, opts client.ListOptions) {
		if n != 1 {
			return
		}
		// The listing (one page) is taken: now the others act.
		f.c1.do(http.MethodPut, "/"+f.c1.db+"/late", map[string]any{couchdb.Field: refTo(referenced)}, nil, http.StatusCreated)
		i := slices.Index(f.orphans, reuploaded)
		_, err := f.dc.Put(context.Background(), strings.NewReader(fmt.Sprintf("orphan %d", i)), client.PutOptions{})
		if err == nil {
			err = f.dc.Delete(context.Background(), deleted)
		}
		if err != nil {
			t.Error(err)
		}
	}
	var reports []couchdb.Orphan
	st, err := couchdb.Collect(t.Context(), couchdb.CollectOptions{
		Blobs:     h,
		DBs:       []*couchdb.DB{f.c1.DB, f.c2.DB},
		OlderThan: time.Hour,
		Purge:     true,
		Report:    func(o couchdb.Orphan) { reports = append(reports, o) },
	})
	require.NoError(t, err)
	actions := map[string]string{}
	for _, o := range reports {
		actions[o.ID.String()] = o.Action
	}
	assert.Equal(t, map[string]string{reuploaded.String(): "kept", deleted.String(): "gone", orphan.String(): "deleted"}, actions)
	assert.Equal(t, couchdb.CollectStats{
		Listed: 9, ListedBytes: st.ListedBytes, Documents: 6, Referenced: 5, Young: 1,
		Orphans: 1, OrphanBytes: int64(len("orphan 3")), Deleted: 1, DeletedBytes: int64(len("orphan 3")),
		Kept: 1, Gone: 1,
	}, st)
	f.requireHeld(t, []dtfc.ID{f.refWinning, f.refDesign, f.refDB2, f.refConflict, f.young, referenced, reuploaded}, "after the races")
}
