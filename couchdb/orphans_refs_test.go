package couchdb_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/couchdb"
	"github.com/dtfc/dtfc/internal/cluster"
)

// TestPurgeRacesMigrate: README says of `orphans --purge`: "Just
// before each delete the blob's entry is read again: one uploaded again
// since ... is young and kept, so `migrate`, which uploads before it
// records, is safe at any moment." The re-read and the DELETE are two
// requests, and the DELETE is unconditional: an upload made to the same
// node between them (a migration with --remove-attachments moving an
// attachment whose bytes are an old orphan) is answered 200, the
// migration records the reference and drops the attachment, and the
// purge's DELETE then removes the blob. The attachment is gone from both
// CouchDB and dtfc.
//
// The interleaving is fixed with the hook of hookedBlobs (the real client):
// the whole migration runs right after Collect's re-read of the orphan,
// before its delete; only the upload needs to fall in that window.
func TestPurgeRacesMigrate(t *testing.T) {
	f := newAgedFixture(t, 1)
	orphan := f.orphans[0]
	content := "orphan 0" // the orphan's bytes (newAgedFixture)

	// A document whose attachment has the orphan's bytes: a new upload
	// of an application that does not know dtfc, still to be migrated.
	f.c1.do(http.MethodPut, "/"+f.c1.db+"/late", map[string]any{
		"_attachments": map[string]any{"f.txt": map[string]any{
			"content_type": "text/plain",
			"data":         base64.StdEncoding.EncodeToString([]byte(content)),
		}},
	}, nil, http.StatusCreated)

	h := &hookedBlobs{Client: f.dc}
	migrated := false
	h.afterList = func(n int, opts client.ListOptions) {
		if opts.Limit != 1 || migrated {
			return // the listing, not the re-read of the orphan
		}
		migrated = true
		// The purge has just read the orphan's entry again (old): now a
		// migration runs, through the same node.
		m, err := couchdb.NewMigrator(f.c1.DB, couchdb.Options{Store: f.dc, RemoveAttachments: true, Checkpoint: "review"})
		if err != nil {
			t.Error(err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		st, err := m.Run(ctx)
		if err != nil {
			t.Error(err)
		}
		t.Logf("migration between the re-read and the delete: %d attachments moved, %d uploads", st.Attachments, st.Uploads)
	}
	st, err := couchdb.Collect(t.Context(), couchdb.CollectOptions{
		Blobs:     h,
		DBs:       []*couchdb.DB{f.c1.DB, f.c2.DB},
		OlderThan: time.Hour,
		Purge:     true,
	})
	require.NoError(t, err)
	require.True(t, migrated, "the hook ran")
	t.Logf("purge: deleted %d, kept %d", st.Deleted, st.Kept)

	// The document as the migration left it: where are its bytes?
	doc := f.c1.doc("late")
	_, hasAtt := doc["_attachments"]
	var ref map[string]any
	if refs, ok := doc[couchdb.Field].(map[string]any); ok {
		ref, _ = refs["f.txt"].(map[string]any)
	}
	served := false
	if ref != nil {
		id, err := dtfc.ParseID(ref["sha512"].(string))
		require.NoError(t, err)
		require.Equal(t, orphan, id, "the reference names the orphan's bytes")
		served = f.status(t, id) == http.StatusOK
	}
	assert.True(t, hasAtt || served,
		"attachment lost: the document has no attachment any more (_attachments %v) and its reference %v names a blob dtfc no longer serves (purge deleted %d)",
		hasAtt, ref, st.Deleted)
}

// TestOrphansOneOddEntryHidesTheRest: the references of a document
// are decoded all at once (orphans.go addRefs: json.Unmarshal into
// map[string]Ref), so one entry of its dtfc field that does not decode
// into a Ref (here a length written as a string, "8", as an application
// that records its own uploads in the documented {"name": {"sha512": ...}}
// form may write it, copying a Content-Length header) makes the whole field
// unreadable, and every blob the document references, those the
// migration recorded included, is taken for an orphan and purged.
func TestOrphansOneOddEntryHidesTheRest(t *testing.T) {
	f := newAgedFixture(t, 2)
	migrated, appOwn := f.orphans[0], f.orphans[1]
	// The document after a migration moved f.txt ("orphan 0"), and the
	// application then recorded g.txt ("orphan 1") itself.
	f.c1.do(http.MethodPut, "/"+f.c1.db+"/mixed", map[string]any{couchdb.Field: map[string]any{
		"f.txt": map[string]any{"sha512": migrated.String(), "content_type": "text/plain", "length": 8, "digest": "md5-RQZizOqvNhcC6n8d8dACGg=="},
		"g.txt": map[string]any{"sha512": appOwn.String(), "content_type": "text/plain", "length": "8"},
	}}, nil, http.StatusCreated)

	var reports []string
	st, err := couchdb.Collect(t.Context(), couchdb.CollectOptions{
		Blobs:     f.dc,
		DBs:       []*couchdb.DB{f.c1.DB, f.c2.DB},
		OlderThan: time.Hour,
		Purge:     true,
		Report:    func(o couchdb.Orphan) { reports = append(reports, o.ID.String()[:16]+" "+o.Action) },
	})
	require.NoError(t, err)
	t.Logf("purge: %v (deleted %d)", reports, st.Deleted)
	assert.Equal(t, http.StatusOK, f.status(t, migrated), "the blob the migration recorded in doc mixed (f.txt) was purged")
	assert.Equal(t, http.StatusOK, f.status(t, appOwn), "the blob the application recorded in doc mixed (g.txt) was purged")
}

// TestMigrateLeavesAnObjectFieldAlone: a document whose dtfc field is
// an object of the application's ({"schema": 2}) is the application's,
// and left as it is, attachment and all. parseDoc refused only a field
// that was not an object: migrate --remove-attachments added its
// reference beside "schema" and dropped the attachment, and the orphans
// command, which could not decode that field as references, then purged
// the blob once old: the attachment was in neither CouchDB nor dtfc
// (found by a review helper, with the node's clock set two hours late
// for the migration).
func TestMigrateLeavesAnObjectFieldAlone(t *testing.T) {
	p := sharedPouch(t)
	c := newDB(t, p, "")
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true, Secret: "s", AuthToken: "tok"})
	node := cl.Nodes[0]
	dc, err := client.New([]string{node.URL}, client.Options{HTTPClient: httpClient(t), Token: "tok"})
	require.NoError(t, err)

	c.do(http.MethodPut, "/"+c.db+"/doc", map[string]any{
		couchdb.Field: map[string]any{"schema": 2},
		"_attachments": map[string]any{"f.txt": map[string]any{
			"content_type": "text/plain", "data": base64.StdEncoding.EncodeToString([]byte("the only copy")),
		}},
	}, nil, http.StatusCreated)
	m, err := couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, RemoveAttachments: true, Target: node.URL})
	require.NoError(t, err)
	mst, err := m.Run(t.Context())
	require.NoError(t, err)
	assert.Zero(t, mst.Attachments, "nothing moved")
	require.Len(t, mst.Failed, 1, "the document is reported")
	assert.Contains(t, mst.Failed[0].Reason, "schema")
	doc := c.doc("doc")
	_, hasAtt := doc["_attachments"]
	assert.True(t, hasAtt, "the attachment stays")
	assert.Equal(t, map[string]any{"schema": float64(2)}, doc[couchdb.Field], "the application's field is unchanged")
}
