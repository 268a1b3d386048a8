package couchdb_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/couchdb"
	"github.com/dtfc/dtfc/internal/cluster"
)

// dbAndNode makes a database on the shared CouchDB-API server and starts
// one dtfc node, with a client of it.
func dbAndNode(t *testing.T) (*couch, *cluster.Node, *client.Client) {
	c := newDB(t, sharedPouch(t), "")
	node := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true}).Nodes[0]
	return c, node, dtfcClient(t, node.URL)
}

// TestMigrateDigestlessRefReuploads: a reference in the
// documented form without "digest" ({"sha512", "content_type", "length"}:
// what the command's usage text and the runbook's reading code describe,
// what a migration before the digest was added wrote, and what an
// application recording its own uploads writes) was taken as recording
// the attachment whenever the lengths agreed. When the attachment was
// since replaced by other bytes of the same length, --remove-attachments
// dropped it as "skipped": the new bytes were in neither CouchDB nor dtfc
// (found by a review helper). Such a reference now counts only while the
// attachment is kept.
func TestMigrateDigestlessRefReuploads(t *testing.T) {
	c, node, dc := dbAndNode(t)
	ctx := t.Context()

	oldBytes := []byte("version 1 of the record, 40 bytes long.")
	newBytes := []byte("version 2 of the record, 40 bytes long!")
	require.Equal(t, len(oldBytes), len(newBytes))
	oldID, newID := dtfc.Sum(oldBytes), dtfc.Sum(newBytes)

	// The old bytes were moved to dtfc earlier and recorded without a
	// digest; the attachment was kept, then replaced by the application.
	_, err := dc.Put(ctx, bytes.NewReader(oldBytes), client.PutOptions{Filename: "rec.txt"})
	require.NoError(t, err)
	c.do(http.MethodPut, "/"+c.db+"/doc", map[string]any{
		couchdb.Field: map[string]any{"rec.txt": map[string]any{
			"sha512": oldID.String(), "content_type": "text/plain", "length": len(oldBytes),
		}},
		"_attachments": map[string]any{"rec.txt": map[string]any{
			"content_type": "text/plain", "data": base64.StdEncoding.EncodeToString(newBytes),
		}},
	}, nil, http.StatusCreated)

	m, err := couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, RemoveAttachments: true, Target: node.URL})
	require.NoError(t, err)
	st, err := m.Run(ctx)
	require.NoError(t, err)
	t.Logf("migrate --remove-attachments: moved %d, skipped %d, uploads %d, failed %d", st.Attachments, st.Skipped, st.Uploads, st.Failures)

	doc := c.doc("doc")
	_, hasAtt := doc["_attachments"]
	ref, _ := doc[couchdb.Field].(map[string]any)["rec.txt"].(map[string]any)
	refID, _ := ref["sha512"].(string)
	served := false
	if id, err := dtfc.ParseID(refID); err == nil {
		if rc, err := dc.Get(context.Background(), id); err == nil {
			b, err := io.ReadAll(rc)
			rc.Close()
			served = err == nil && bytes.Equal(b, newBytes)
		}
	}
	assert.True(t, hasAtt || served,
		"the attachment's current bytes (%s...) are lost: the attachment was dropped (still there: %v) and the reference names %s... (the old bytes: %v)",
		newID.String()[:16], hasAtt, refID[:min(16, len(refID))], refID == oldID.String())
}

// TestMigrateContentTypeChangeKept: an attachment whose bytes stay
// the same but whose content_type the application corrected after the
// first migration kept its old content_type in the reference: the match
// was on length and digest only, and --remove-attachments then dropped
// the attachment, so the corrected type was gone from the document
// (found by a review helper). A reference of another type is rewritten.
func TestMigrateContentTypeChangeKept(t *testing.T) {
	c, node, dc := dbAndNode(t)
	ctx := t.Context()

	data := []byte("<svg xmlns='http://www.w3.org/2000/svg'/>")
	c.do(http.MethodPut, "/"+c.db+"/doc", map[string]any{
		"_attachments": map[string]any{"logo": map[string]any{
			"content_type": "application/octet-stream", "data": base64.StdEncoding.EncodeToString(data),
		}},
	}, nil, http.StatusCreated)
	m, err := couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, Target: node.URL})
	require.NoError(t, err)
	_, err = m.Run(ctx)
	require.NoError(t, err)

	// The application corrects the type (same bytes, same digest).
	d := c.doc("doc")
	d["_attachments"].(map[string]any)["logo"] = map[string]any{
		"content_type": "image/svg+xml", "data": base64.StdEncoding.EncodeToString(data),
	}
	c.do(http.MethodPut, "/"+c.db+"/doc", d, nil, http.StatusCreated)
	att := c.doc("doc")["_attachments"].(map[string]any)["logo"].(map[string]any)
	require.Equal(t, "image/svg+xml", att["content_type"])

	m, err = couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, Target: node.URL, RemoveAttachments: true})
	require.NoError(t, err)
	_, err = m.Run(ctx)
	require.NoError(t, err)
	doc := c.doc("doc")
	_, hasAtt := doc["_attachments"]
	ref := doc[couchdb.Field].(map[string]any)["logo"].(map[string]any)
	assert.True(t, hasAtt || ref["content_type"] == "image/svg+xml",
		"attachment dropped and its reference records content_type %v, not the attachment's image/svg+xml", ref["content_type"])
}
