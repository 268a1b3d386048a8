package couchdb_test

import (
	"encoding/base64"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/couchdb"
	"github.com/dtfc/dtfc/internal/cluster"
)

// TestMigrateWaitsForReplicas: with Replicas (--replicas), an attachment
// leaves its document only once that many replicas hold the file. With
// the second replica down, the upload is stored on the first but answers
// 504 after replicas_timeout: the run retries from its checkpoint and
// gives up, the attachment still in its document. With the replica back,
// the next run records the reference, drops the attachment, and the file
// is on both disks. (Without it, an attachment left CouchDB as soon as
// one node had the file: that disk lost before it pushed, and the
// attachment was gone.)
func TestMigrateWaitsForReplicas(t *testing.T) {
	p := sharedPouch(t)
	c := newDB(t, p, "")
	cl := cluster.Start(t, cluster.Options{Nodes: 2, Direct: true, Args: []string{"--replicas-timeout", "1s"}})
	data := []byte("an attachment that must be on two disks before CouchDB lets it go")
	id := dtfc.Sum(data)
	c.do(http.MethodPut, "/"+c.db+"/doc", map[string]any{
		"_attachments": map[string]any{"f.txt": map[string]any{
			"content_type": "text/plain", "data": base64.StdEncoding.EncodeToString(data),
		}},
	}, nil, http.StatusCreated)
	dc := dtfcClient(t, cl.Nodes[0].URL)
	migrate := func() (couchdb.Stats, error) {
		m, err := couchdb.NewMigrator(c.DB, couchdb.Options{Store: dc, RemoveAttachments: true, Replicas: 2,
			Target: cl.Nodes[0].URL, MaxRetries: 1})
		require.NoError(t, err)
		return m.Run(t.Context())
	}

	cl.Nodes[1].Stop()
	_, err := migrate()
	require.ErrorContains(t, err, "504")
	_, hasAtt := c.doc("doc")["_attachments"]
	assert.True(t, hasAtt, "the attachment stays while one replica holds the file")
	assert.Contains(t, cl.BlobFiles(0), id.String(), "stored on the first")

	cl.Nodes[1].Start()
	st, err := migrate()
	require.NoError(t, err)
	assert.Empty(t, st.Failed)
	doc := c.doc("doc")
	_, hasAtt = doc["_attachments"]
	assert.False(t, hasAtt, "dropped once both replicas hold the file")
	ref := doc[couchdb.Field].(map[string]any)["f.txt"].(map[string]any)
	assert.Equal(t, id.String(), ref["sha512"])
	assert.Contains(t, cl.BlobFiles(1), id.String(), "on the second replica's disk")
}
