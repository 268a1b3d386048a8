package couchdb_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/couchdb"
	"github.com/dtfc/dtfc/internal/cluster"
)

// blobNames turns blobs into what cluster.BlobFiles answers.
func blobNames(blobs map[dtfc.ID]int64) map[string]int64 {
	out := map[string]int64{}
	for id, n := range blobs {
		out[id.String()] = n
	}
	return out
}

// withoutRev returns a document without its _rev, and the revision's
// generation.
func withoutRev(d map[string]any) (map[string]any, string) {
	out := map[string]any{}
	for k, v := range d {
		out[k] = v
	}
	rev, _ := out["_rev"].(string)
	delete(out, "_rev")
	gen, _, _ := strings.Cut(rev, "-")
	return out, gen
}

// TestMigrate200 migrates 200 documents with 0 to 5 attachments each
// (text and binary, up to 20 MiB) with --remove-attachments, through the
// command, twice on identical databases: once without interruption (the
// figures of the README come from it), once killed with SIGKILL twice
// midway and run again. Both end in the same state: every attachment in
// dtfc under its sha512 and served by it, no attachment left in CouchDB,
// every document updated exactly once, every blob stored once, and at most
// the documents in flight at each kill uploaded again.
func TestMigrate200(t *testing.T) {
	p := sharedPouch(t)
	big := 20 << 20
	if testing.Short() {
		big = 2 << 20
	}
	docs := dataset(8, 200, big)
	natt, size, blobs := totals(docs)
	withAtts := 0
	for _, d := range docs {
		if len(d.Atts) > 0 {
			withAtts++
		}
	}
	t.Logf("dataset: %d documents (%d with attachments), %d attachments, %d distinct blobs, %.1f MiB", len(docs), withAtts, natt, len(blobs), float64(size)/(1<<20))

	a, b := newDB(t, p, ""), newDB(t, p, "")
	start := time.Now()
	a.seed(docs)
	t.Logf("seeding pouchdb-server: %s", time.Since(start).Round(time.Millisecond))
	b.seed(docs)
	ca := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	cb := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	hc := httpClient(t)
	const concurrency = 4
	args := func(db, node string) []string {
		return []string{"couchdb", "migrate", "--couch", p.URL, "--db", db, "--server", node,
			"--remove-attachments", "--batch", "50", "--concurrency", fmt.Sprint(concurrency)}
	}

	// The baseline: the least any copy does, every attachment streamed
	// from CouchDB into a dtfc node, as many at once as the migration
	// does, no document touched.
	cc := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	baseline := baselineCopy(t, a, docs, dtfcClient(t, cc.Nodes[0].URL), concurrency)

	// The uninterrupted run.
	start = time.Now()
	run := startDtfc(t, args(a.db, ca.Nodes[0].URL)...)
	require.Equal(t, 0, run.wait(t, 10*time.Minute), run.out.String())
	took := time.Since(start)
	t.Logf("migration: %s for %d documents, %.1f MB: %.1f documents/s (%.1f with attachments/s), %.1f MB/s (%.1f MiB/s)",
		took.Round(time.Millisecond), len(docs), float64(size)/1e6, float64(len(docs))/took.Seconds(),
		float64(withAtts)/took.Seconds(), float64(size)/1e6/took.Seconds(), float64(size)/(1<<20)/took.Seconds())
	t.Logf("baseline copy: %s (%.1f MB/s); the migration takes %.2f times as long",
		baseline.Round(time.Millisecond), float64(size)/1e6/baseline.Seconds(), took.Seconds()/baseline.Seconds())
	t.Logf("summary:\n%s", run.out.String())
	assert.Equal(t, "0", summaryLine(run.out.String(), "failed"))
	assert.Equal(t, fmt.Sprintf("%d, conflicts retried: 0", natt), summaryLine(run.out.String(), "uploads"), "one upload per attachment")

	require.Equal(t, blobs, a.checkMigrated(docs, true))
	require.Equal(t, blobNames(blobs), ca.BlobFiles(0))
	checkServed(t, dtfcClient(t, ca.Nodes[0].URL), blobs)
	for _, d := range docs {
		for _, at := range d.Atts {
			require.Equal(t, http.StatusNotFound, a.attachmentStatus(d.ID, at.Name), "CouchDB still serves %s/%s", d.ID, at.Name)
		}
	}
	upA := uploads(t, hc, ca.Nodes[0].URL)
	require.Equal(t, len(blobs), upA["created"], "blobs stored")
	require.Equal(t, natt-len(blobs), upA["existing"], "uploads of bytes already held (the shared attachment)")

	// The interrupted run: killed at about a quarter and at about 60% of
	// the blobs, then run to the end.
	for _, frac := range []float64{0.25, 0.6} {
		pr := startDtfc(t, args(b.db, cb.Nodes[0].URL)...)
		target := int(frac * float64(len(blobs)))
		eventually(t, 5*time.Minute, "uploads progress", func() bool {
			return pr.exited() || uploads(t, hc, cb.Nodes[0].URL)["created"] >= target
		})
		require.False(t, pr.exited(), "the migration ended before it could be killed:\n%s", pr.out.String())
		require.NoError(t, pr.cmd.Process.Kill())
		pr.wait(t, deadline)
		t.Logf("killed at %v uploads", uploads(t, hc, cb.Nodes[0].URL))
	}
	run = startDtfc(t, args(b.db, cb.Nodes[0].URL)...)
	require.Equal(t, 0, run.wait(t, 10*time.Minute), run.out.String())
	t.Logf("summary of the last run:\n%s", run.out.String())

	require.Equal(t, blobs, b.checkMigrated(docs, true))
	docsA, docsB := a.allDocs(), b.allDocs()
	require.Len(t, docsB, len(docsA))
	for id, da := range docsA {
		ra, genA := withoutRev(da)
		rb, genB := withoutRev(docsB[id])
		assert.Equal(t, ra, rb, "document %s", id)
		assert.Equal(t, genA, genB, "document %s: revision generation (number of updates)", id)
	}
	for _, d := range docs {
		want := "1"
		if len(d.Atts) > 0 {
			want = "2" // updated once: references recorded, attachments dropped
		}
		_, gen := withoutRev(docsB[d.ID])
		assert.Equal(t, want, gen, "document %s updated more than once", d.ID)
	}
	require.Equal(t, ca.BlobFiles(0), cb.BlobFiles(0))
	noTemp(t, cb.Nodes[0]) // the uploads cut by the kills left nothing behind
	checkServed(t, dtfcClient(t, cb.Nodes[0].URL), blobs)
	upB := uploads(t, hc, cb.Nodes[0].URL)
	assert.Equal(t, upA["created"], upB["created"], "every blob stored once")
	again := upB["existing"] - upA["existing"]
	t.Logf("uploads of the interrupted run: %v (uninterrupted: %v); uploaded again after the kills: %d", upB, upA, again)
	// What "uploaded twice" means: an attachment already recorded in its
	// document is never uploaded again; the documents in flight at a kill
	// (at most --concurrency, 5 attachments each) are.
	assert.LessOrEqual(t, again, 2*concurrency*5)
}

// baselineCopy streams every attachment of docs from CouchDB into dtfc,
// conc at a time, and returns how long that took.
func baselineCopy(t *testing.T, c *couch, docs []docSpec, dc *client.Client, conc int) time.Duration {
	t.Helper()
	start := time.Now()
	g, ctx := errgroup.WithContext(t.Context())
	g.SetLimit(conc)
	for _, d := range docs {
		for _, a := range d.Atts {
			g.Go(func() error {
				segs := strings.Split(a.Name, "/")
				for i := range segs {
					segs[i] = url.PathEscape(segs[i])
				}
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/"+c.db+"/"+d.ID+"/"+strings.Join(segs, "/"), nil)
				if err != nil {
					return err
				}
				resp, err := c.hc.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("GET %s/%s: %s", d.ID, a.Name, resp.Status)
				}
				res, err := dc.Put(ctx, resp.Body, client.PutOptions{Size: resp.ContentLength})
				if err == nil && res.ID != a.Sum {
					err = fmt.Errorf("%s/%s: stored as %s", d.ID, a.Name, res.ID)
				}
				return err
			})
		}
	}
	require.NoError(t, g.Wait())
	return time.Since(start)
}

// TestKeepThenRemove runs the two-step runbook: migrate keeping the
// attachments, then again with --remove-attachments, which uploads
// nothing already recorded and present, but does upload an attachment
// replaced meanwhile by other bytes of the same length, and one whose
// blob was deleted from dtfc.
func TestKeepThenRemove(t *testing.T) {
	p := sharedPouch(t)
	docs := dataset(3, 40, 100<<10)
	natt, _, blobs := totals(docs)
	c := newDB(t, p, "")
	c.seed(docs)
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	dc := dtfcClient(t, cl.Nodes[0].URL)
	hc := httpClient(t)
	ctx := t.Context()

	m, err := couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, Target: cl.Nodes[0].URL})
	require.NoError(t, err)
	st, err := m.Run(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(len(docs)), st.Documents)
	assert.Equal(t, int64(natt), st.Attachments)
	assert.Equal(t, int64(natt), st.Uploads)
	assert.Zero(t, st.Failures, "%v", st.Failed)
	require.Equal(t, blobs, c.checkMigrated(docs, false))
	checkServed(t, dc, blobs)

	// Run again: nothing to do (at most the last updates of the first
	// run, left in the feed, are read again and found done).
	m, err = couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, Target: cl.Nodes[0].URL})
	require.NoError(t, err)
	st, err = m.Run(ctx)
	require.NoError(t, err)
	assert.Zero(t, st.Uploads+st.Updated+st.Failures)

	// Replace an attachment with other bytes of the same length, and
	// delete another's blob from dtfc.
	var replaced, lost *docSpec
	for i := range docs {
		if len(docs[i].Atts) > 1 && docs[i].Atts[0].Size > 0 && replaced == nil {
			replaced = &docs[i]
		} else if len(docs[i].Atts) == 1 && lost == nil && docs[i].Atts[0].Name != "logo.png" {
			lost = &docs[i]
		}
	}
	require.NotNil(t, replaced)
	require.NotNil(t, lost)
	att := &replaced.Atts[0]
	att.Seed++
	att.Sum = dtfc.Sum(att.bytes())
	d := c.doc(replaced.ID)
	d["_attachments"].(map[string]any)[att.Name] = map[string]any{"content_type": att.Type, "data": att.bytes()}
	c.do(http.MethodPut, "/"+c.db+"/"+replaced.ID, d, nil, http.StatusCreated)
	require.NoError(t, dc.Delete(ctx, lost.Atts[0].Sum))
	before := uploads(t, hc, cl.Nodes[0].URL)

	m, err = couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, Target: cl.Nodes[0].URL, RemoveAttachments: true})
	require.NoError(t, err)
	st, err = m.Run(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(2), st.Uploads, "only the replaced attachment and the lost blob are uploaded")
	assert.Equal(t, int64(2), st.Attachments)
	assert.Equal(t, int64(natt-2), st.Skipped)
	assert.Zero(t, st.Failures, "%v", st.Failed)
	after := uploads(t, hc, cl.Nodes[0].URL)
	assert.Equal(t, before["created"]+2, after["created"])
	_, _, blobs = totals(docs)
	require.Equal(t, blobs, c.checkMigrated(docs, true))
	checkServed(t, dc, blobs)
	assert.NotContains(t, c.doc(replaced.ID), "_attachments")
}

// TestDryRun writes nothing: no upload, no document update, no checkpoint.
func TestDryRun(t *testing.T) {
	p := sharedPouch(t)
	docs := dataset(4, 30, 10<<10)
	natt, size, _ := totals(docs)
	c := newDB(t, p, "")
	c.seed(docs)
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	dc := dtfcClient(t, cl.Nodes[0].URL)
	var events []couchdb.Event
	m, err := couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, DryRun: true, RemoveAttachments: true,
		Report: func(e couchdb.Event) { events = append(events, e) }})
	require.NoError(t, err)
	st, err := m.Run(t.Context())
	require.NoError(t, err)
	assert.Equal(t, int64(natt), st.Attachments)
	assert.Equal(t, size, st.Bytes)
	assert.Zero(t, st.Uploads)
	assert.Len(t, events, natt)
	for _, e := range events {
		assert.Equal(t, "would move", e.Action)
	}
	for id, d := range c.allDocs() {
		_, gen := withoutRev(d)
		assert.Equal(t, "1", gen, "document %s was written", id)
	}
	assert.Empty(t, cl.BlobFiles(0))
	assert.Equal(t, http.StatusNotFound, c.do(http.MethodGet, "/"+c.db+"/"+m.CheckpointDoc(), nil, nil))
}

// editingTransport edits a document (as another CouchDB client would) when
// the migrator starts reading one of its attachments: between the
// migrator's read of the document and its write, so that the write meets a
// 409. For some documents the edit also adds an attachment.
type editingTransport struct {
	base  http.RoundTripper
	c     *couch
	db    string
	match func(doc string) (edit, addAttachment bool)

	mu     sync.Mutex
	edited map[string]bool
	edits  map[string]int
	added  map[string]bool // documents the transport added an attachment to
	errs   []error
}

func (e *editingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/"), "/")
	if req.Method == http.MethodGet && len(parts) >= 3 && parts[0] == e.db && !strings.HasPrefix(parts[1], "_") {
		doc := parts[1]
		e.mu.Lock()
		first := !e.edited[doc]
		e.edited[doc] = true
		e.mu.Unlock()
		if edit, add := e.match(doc); first && edit {
			if err := e.c.editDoc(doc, add); err != nil {
				e.mu.Lock()
				e.errs = append(e.errs, err)
				e.mu.Unlock()
			} else {
				e.count(doc)
				if add {
					e.mu.Lock()
					e.added[doc] = true
					e.mu.Unlock()
				}
			}
		}
	}
	return e.base.RoundTrip(req)
}

func (e *editingTransport) count(doc string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.edits[doc]++
}

// editDoc adds 1 to the document's "edits" (and, if add, an attachment
// "added.txt"), re-reading on a conflict. It reports errors instead of
// failing the test: it runs on the migrator's goroutines.
func (c *couch) editDoc(id string, add bool) error {
	for range 100 {
		var d map[string]any
		if st := c.get("/"+c.db+"/"+id, &d); st != http.StatusOK {
			return fmt.Errorf("GET %s: %d", id, st)
		}
		n, _ := d["edits"].(float64)
		d["edits"] = n + 1
		if add {
			atts, _ := d["_attachments"].(map[string]any)
			if atts == nil {
				atts = map[string]any{}
				d["_attachments"] = atts
			}
			atts["added.txt"] = map[string]any{"content_type": "text/plain", "data": []byte("added by " + id)}
		}
		st, err := c.put("/"+c.db+"/"+id, d)
		if err != nil {
			return err
		}
		switch st {
		case http.StatusCreated, http.StatusOK:
			return nil
		case http.StatusConflict:
			time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
			continue
		default:
			return fmt.Errorf("PUT %s: %d", id, st)
		}
	}
	return fmt.Errorf("PUT %s: too many conflicts", id)
}

// TestConcurrentEdits edits documents while they are migrated: at the
// worst moment (between the migrator's read and its write) for one in
// three, some of those edits adding an attachment, and at random for all
// of them. Every edit survives, and every attachment, the added ones too,
// ends in dtfc.
func TestConcurrentEdits(t *testing.T) {
	p := sharedPouch(t)
	docs := dataset(5, 60, 200<<10)
	c := newDB(t, p, "")
	c.seed(docs)
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	dc := dtfcClient(t, cl.Nodes[0].URL)

	et := &editingTransport{base: httpClient(t).Transport, c: c, db: c.db,
		edited: map[string]bool{}, edits: map[string]int{}, added: map[string]bool{},
		match: func(doc string) (bool, bool) {
			var n int
			fmt.Sscanf(doc, "doc-%d", &n)
			return n%3 == 0, n%6 == 0
		}}
	cc, err := couchdb.New(p.URL, couchdb.ClientOptions{HTTPClient: &http.Client{Transport: et}})
	require.NoError(t, err)
	m, err := couchdb.NewMigrator(cc.DB(c.db), couchdb.Options{Store: dc, RemoveAttachments: true, Concurrency: 4, Batch: 10})
	require.NoError(t, err)

	// Random edits meanwhile, from another client.
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var randomEdits atomic.Int64
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for range 50 {
				if ctx.Err() != nil {
					return
				}
				time.Sleep(time.Duration(5+r.IntN(20)) * time.Millisecond)
				id := docs[r.IntN(len(docs))].ID
				if err := c.editDoc(id, false); err != nil {
					et.mu.Lock()
					et.errs = append(et.errs, err)
					et.mu.Unlock()
					return
				}
				et.count(id)
				randomEdits.Add(1)
			}
		}()
	}
	st, err := m.Run(ctx)
	cancel()
	wg.Wait()
	require.NoError(t, err)
	require.Empty(t, et.errs)
	t.Logf("stats: %+v; random edits: %d", st, randomEdits.Load())
	assert.Zero(t, st.Failures, "%v", st.Failed)
	assert.Positive(t, st.Conflicts)
	// Conflicts and documents brought twice by the feed cost no second
	// upload.
	assert.Equal(t, st.Attachments, st.Uploads)

	// The feed may have more to bring (edits after the run caught up):
	// a second run finishes the job, as a re-run would.
	st, err = m.Run(t.Context())
	require.NoError(t, err)
	assert.Zero(t, st.Failures, "%v", st.Failed)

	all := c.allDocs()
	for i := range docs {
		d := all[docs[i].ID]
		want := et.edits[docs[i].ID]
		got, _ := d["edits"].(float64)
		assert.Equal(t, want, int(got), "document %s: edits kept", docs[i].ID)
		// (Not for a document whose only attachment is empty: moving it
		// reads nothing from CouchDB, so the transport never edits it.)
		if et.added[docs[i].ID] {
			b := []byte("added by " + docs[i].ID)
			docs[i].Atts = append(docs[i].Atts, attSpec{Name: "added.txt", Type: "text/plain", Size: len(b), Sum: dtfc.Sum(b)})
		}
	}
	// Documents without attachments were edited but have nothing to
	// migrate; the check wants them untouched, so leave them out.
	var withAtts []docSpec
	for _, d := range docs {
		if len(d.Atts) > 0 {
			withAtts = append(withAtts, d)
		}
	}
	_, _, blobs := totals(withAtts)
	require.Equal(t, blobs, c.checkMigrated(withAtts, true))
	checkServed(t, dc, blobs)
}

// TestFollow runs dtfc couchdb follow as a process: documents created
// before and after it starts are migrated within seconds, through a
// restart of the dtfc node and one of pouchdb-server (same port and data
// directory), with nothing lost; SIGTERM stops it with status 0.
func TestFollow(t *testing.T) {
	p := startPouch(t, false)
	c := newDB(t, p, "follow")
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	node := cl.Nodes[0]
	dc := dtfcClient(t, node.URL)
	all := dataset(6, 80, 300<<10)
	var docs []docSpec
	for _, d := range all {
		if len(d.Atts) > 0 {
			docs = append(docs, d)
		}
	}
	require.GreaterOrEqual(t, len(docs), 40)
	batches := [][]docSpec{docs[0:8], docs[8:16], docs[16:24], docs[24:32], docs[32:40]}

	c.seed(batches[0]) // before follow starts
	pr := startDtfc(t, "couchdb", "follow", "--couch", p.URL, "--db", c.db, "--server", node.URL,
		"--remove-attachments", "--heartbeat", "500ms")

	migrated := func(ds []docSpec) func() bool {
		return func() bool {
			for _, d := range ds {
				var doc map[string]any
				if c.get("/"+c.db+"/"+d.ID, &doc) != http.StatusOK {
					return false
				}
				if _, ok := doc["dtfc"]; !ok {
					return false
				}
				if _, ok := doc["_attachments"]; ok {
					return false
				}
			}
			return true
		}
	}
	waitMigrated := func(what string, ds []docSpec) {
		t.Helper()
		start := time.Now()
		eventually(t, deadline, what, migrated(ds))
		t.Logf("%s: migrated %s after", what, time.Since(start).Round(time.Millisecond))
	}
	waitMigrated("documents there before follow started", batches[0])

	c.seed(batches[1])
	waitMigrated("documents added while following", batches[1])

	// retried waits until follow has logged a failure since its count
	// was taken: the outage was seen, and the server can come back.
	retries := func() int { return strings.Count(pr.out.String(), "retrying from the checkpoint") }
	retried := func(what string, before int) {
		t.Helper()
		eventually(t, deadline, what, func() bool { return retries() > before })
	}

	// dtfc restarts; documents arrive while it is down.
	before := retries()
	node.Stop()
	c.seed(batches[2])
	retried("follow fails to reach the stopped dtfc", before)
	node.Start()
	waitMigrated("documents added while dtfc was down", batches[2])

	// pouchdb-server restarts (same port and data).
	before = retries()
	p.Stop(t)
	retried("follow loses the stopped pouchdb-server", before)
	p.Start(t)
	c.seed(batches[3])
	waitMigrated("documents added after pouchdb-server restarted", batches[3])

	// dtfc killed while documents arrive.
	c.seed(batches[4][:4])
	node.Kill()
	c.seed(batches[4][4:])
	node.Start()
	waitMigrated("documents added around a dtfc kill", batches[4])

	require.False(t, pr.exited(), "follow exited:\n%s", pr.out.String())
	require.NoError(t, pr.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, pr.wait(t, deadline), pr.out.String())
	assert.Equal(t, "0", summaryLine(pr.out.String(), "failed"), pr.out.String())
	t.Logf("follow's output:\n%s", tail(pr.out.String(), 6000))

	var done []docSpec
	for _, b := range batches {
		done = append(done, b...)
	}
	_, _, blobs := totals(done)
	require.Equal(t, blobs, c.checkMigrated(done, true))
	checkServed(t, dc, blobs)
}

// TestOrphans lists the blobs of a node that no document of the given
// databases references, conflicting revisions included.
func TestOrphans(t *testing.T) {
	p := sharedPouch(t)
	docs := dataset(7, 20, 10<<10)
	c1, c2 := newDB(t, p, ""), newDB(t, p, "")
	c1.seed(docs)
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	dc := dtfcClient(t, cl.Nodes[0].URL)
	m, err := couchdb.NewMigrator(c1.DB, couchdb.Options{Store: dc, RemoveAttachments: true})
	require.NoError(t, err)
	_, err = m.Run(t.Context())
	require.NoError(t, err)

	put := func(s string) dtfc.ID {
		res, err := dc.Put(t.Context(), strings.NewReader(s), client.PutOptions{Filename: "x.txt"})
		require.NoError(t, err)
		return res.ID
	}
	inDB2, inConflict, orphan := put("referenced from db2"), put("referenced by a conflicting revision"), put("nobody's")
	ref := func(id dtfc.ID) map[string]any {
		return map[string]any{"f": map[string]any{"sha512": id.String(), "content_type": "text/plain", "length": 1}}
	}
	c2.do(http.MethodPut, "/"+c2.db+"/x", map[string]any{couchdb.Field: ref(inDB2)}, nil, http.StatusCreated)
	// Two revisions of one document, written as replication would: one
	// wins, the other is a conflict.
	c2.do(http.MethodPost, "/"+c2.db+"/_bulk_docs", map[string]any{"new_edits": false, "docs": []any{
		map[string]any{"_id": "y", "_rev": "1-aaaa", couchdb.Field: ref(inDB2)},
		map[string]any{"_id": "y", "_rev": "1-bbbb", couchdb.Field: ref(inConflict)},
	}}, nil, http.StatusCreated)

	pr := startDtfc(t, "couchdb", "orphans", "--couch", p.URL, "--db", c1.db, "--db", c2.db, "--blobs", cl.Nodes[0].Basedir)
	require.Equal(t, 0, pr.wait(t, deadline), pr.out.String())
	assert.Equal(t, []string{orphan.String()}, idLines(pr.out.String()))

	pr = startDtfc(t, "couchdb", "orphans", "--couch", p.URL, "--db", c1.db, "--blobs", cl.Nodes[0].Basedir)
	require.Equal(t, 0, pr.wait(t, deadline), pr.out.String())
	want := []string{inDB2.String(), inConflict.String(), orphan.String()}
	assert.ElementsMatch(t, want, idLines(pr.out.String()))
}

func idLines(out string) []string {
	var ids []string
	for _, l := range strings.Split(out, "\n") {
		if dtfc.LooksLikeID(l) {
			ids = append(ids, l)
		}
	}
	return ids
}

// TestLeftAlone: what cannot or must not move stays in CouchDB and is
// reported: an attachment dtfc refuses (over its size limit; the other
// attachments of the document move), a document whose dtfc field is an
// application's own, and design documents (their attachments are what
// CouchDB serves for couchapps). The command exits with status 1 and lists
// the failures with their reasons.
func TestLeftAlone(t *testing.T) {
	p := sharedPouch(t)
	c := newDB(t, p, "")
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true, Args: []string{"--max-upload-bytes", "100000"}})
	big := make([]byte, 200000)
	c.do(http.MethodPost, "/"+c.db+"/_bulk_docs", map[string]any{"docs": []any{
		map[string]any{"_id": "mixed", "_attachments": map[string]any{
			"big.bin":   map[string]any{"content_type": "application/octet-stream", "data": big},
			"small.txt": map[string]any{"content_type": "text/plain", "data": []byte("small")},
		}},
		map[string]any{"_id": "own-field", "dtfc": "version 3", "_attachments": map[string]any{
			"a.txt": map[string]any{"content_type": "text/plain", "data": []byte("a")},
		}},
		map[string]any{"_id": "_design/app", "_attachments": map[string]any{
			"index.html": map[string]any{"content_type": "text/html", "data": []byte("<p>app</p>")},
		}},
	}}, nil, http.StatusCreated)

	pr := startDtfc(t, "couchdb", "migrate", "--couch", p.URL, "--db", c.db, "--server", cl.Nodes[0].URL, "--remove-attachments")
	require.Equal(t, 1, pr.wait(t, deadline), pr.out.String())
	out := pr.out.String()
	t.Logf("output:\n%s", out)
	assert.Equal(t, "2", summaryLine(out, "failed"))
	assert.Contains(t, out, `mixed: attachment "big.bin": dtfc refused it: 413`)
	assert.Contains(t, out, `own-field: field "dtfc" exists and is not an object of references`)
	assert.Contains(t, out, "1 design documents left alone")

	mixed := c.doc("mixed")
	assert.Equal(t, []string{"big.bin"}, mapKeys(mixed["_attachments"]))
	assert.Equal(t, []string{"small.txt"}, mapKeys(mixed["dtfc"]))
	assert.Equal(t, http.StatusOK, c.attachmentStatus("mixed", "big.bin"))
	own := c.doc("own-field")
	assert.Equal(t, "version 3", own["dtfc"])
	assert.Equal(t, []string{"a.txt"}, mapKeys(own["_attachments"]))
	design := c.doc("_design/app")
	assert.Equal(t, []string{"index.html"}, mapKeys(design["_attachments"]))
	assert.NotContains(t, design, "dtfc")
}

func mapKeys(v any) []string {
	m, _ := v.(map[string]any)
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
