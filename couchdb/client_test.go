package couchdb_test

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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

// These tests use a fake CouchDB (httptest) for what pouchdb-server cannot
// show: credentials, CouchDB 2+ string sequences, stalled connections,
// bytes that do not match their stub.

func TestCredentialsStayOutOfErrors(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pw, _ := r.BasicAuth()
		got = user + ":" + pw
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":"unauthorized","reason":"Name or password is incorrect."}`)
	}))
	defer srv.Close()
	u := strings.Replace(srv.URL, "http://", "http://admin:s3cret@", 1)
	cc, err := couchdb.New(u, couchdb.ClientOptions{HTTPClient: httpClient(t)})
	require.NoError(t, err)
	_, err = cc.DB("db").Info(t.Context())
	require.Error(t, err)
	assert.Equal(t, "admin:s3cret", got)
	assert.NotContains(t, err.Error(), "s3cret")
	assert.Contains(t, err.Error(), "unauthorized")
	assert.NotContains(t, cc.URL(), "s3cret")

	_, err = couchdb.New("ftp://admin:s3cret@host/", couchdb.ClientOptions{})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "s3cret")
}

func TestErrorsMatchSentinels(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"not_found","reason":"missing"}`)
		case http.MethodPut:
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"error":"conflict","reason":"Document update conflict."}`)
		}
	}))
	defer srv.Close()
	cc, err := couchdb.New(srv.URL, couchdb.ClientOptions{HTTPClient: httpClient(t)})
	require.NoError(t, err)
	_, err = cc.DB("db").Get(t.Context(), "x", "")
	assert.ErrorIs(t, err, couchdb.ErrNotFound)
	_, err = cc.DB("db").Put(t.Context(), "x", map[string]any{"_rev": "1-a"})
	assert.ErrorIs(t, err, couchdb.ErrConflict)
	assert.NotErrorIs(t, err, couchdb.ErrNotFound)
}

// TestPaths checks how IDs, names and sequences reach CouchDB.
func TestPaths(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.EscapedPath()+"?"+r.URL.RawQuery)
		mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/_changes"):
			io.WriteString(w, `{"results":[],"last_seq":"7-g1AAAA"}`)
		case r.Method == http.MethodPut:
			io.WriteString(w, `{"ok":true,"rev":"2-b"}`)
		default:
			io.WriteString(w, `{}`)
		}
	}))
	defer srv.Close()
	cc, err := couchdb.New(srv.URL+"/prefix/", couchdb.ClientOptions{HTTPClient: httpClient(t)})
	require.NoError(t, err)
	db := cc.DB("a/b")
	ctx := t.Context()
	for _, since := range []string{``, `0`, `42`, `"7-g1AAAA"`} {
		_, err := db.Changes(ctx, couchdb.ChangesOptions{Since: json.RawMessage(since), Limit: 5})
		require.NoError(t, err)
	}
	_, err = db.Get(ctx, "_design/app", "")
	require.NoError(t, err)
	_, err = db.Get(ctx, "x/y z", "3-c")
	require.NoError(t, err)
	_, err = db.Put(ctx, "_local/ck", map[string]any{})
	require.NoError(t, err)
	rc, _, err := db.Attachment(ctx, "d?", "dir/f g#.txt", "1-a")
	require.NoError(t, err)
	rc.Close()
	assert.Equal(t, []string{
		"GET /prefix/a%2Fb/_changes?limit=5&since=0",
		"GET /prefix/a%2Fb/_changes?limit=5&since=0",
		"GET /prefix/a%2Fb/_changes?limit=5&since=42",
		"GET /prefix/a%2Fb/_changes?limit=5&since=7-g1AAAA",
		"GET /prefix/a%2Fb/_design/app?att_encoding_info=true",
		"GET /prefix/a%2Fb/x%2Fy%20z?att_encoding_info=true&rev=3-c",
		"PUT /prefix/a%2Fb/_local/ck?",
		"GET /prefix/a%2Fb/d%3F/dir/f%20g%23.txt?rev=1-a",
	}, paths)
}

// TestStalledConnection: a CouchDB that stops sending is given up on after
// the idle timeout, and a long poll after three missed heartbeats; one that
// sends heartbeats is waited for.
func TestStalledConnection(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"results":[`)
		w.(http.Flusher).Flush()
		if r.URL.Query().Get("since") == "beating" {
			// Heartbeats for a while, then a change.
			for range 6 {
				time.Sleep(50 * time.Millisecond)
				io.WriteString(w, "\n")
				w.(http.Flusher).Flush()
			}
			io.WriteString(w, `{"seq":1,"id":"a","changes":[]}],"last_seq":1}`)
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	cc, err := couchdb.New(srv.URL, couchdb.ClientOptions{HTTPClient: httpClient(t), IdleTimeout: 200 * time.Millisecond})
	require.NoError(t, err)
	db := cc.DB("db")

	start := time.Now()
	_, err = db.Changes(t.Context(), couchdb.ChangesOptions{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nothing received")
	assert.Less(t, time.Since(start), 5*time.Second)

	start = time.Now()
	_, err = db.Changes(t.Context(), couchdb.ChangesOptions{Longpoll: true, Heartbeat: 100 * time.Millisecond})
	require.Error(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)

	page, err := db.Changes(t.Context(), couchdb.ChangesOptions{Since: json.RawMessage(`"beating"`), Longpoll: true, Heartbeat: 100 * time.Millisecond})
	require.NoError(t, err)
	require.Len(t, page.Results, 1)
	assert.Equal(t, "a", page.Results[0].ID)
}

// fakeStore is a Store from functions.
type fakeStore struct {
	put  func(ctx context.Context, r io.Reader, opts client.PutOptions) (client.PutResult, error)
	stat func(ctx context.Context, id dtfc.ID) (client.Info, error)
}

func (f *fakeStore) Put(ctx context.Context, r io.Reader, opts client.PutOptions) (client.PutResult, error) {
	return f.put(ctx, r, opts)
}

func (f *fakeStore) Stat(ctx context.Context, id dtfc.ID) (client.Info, error) {
	return f.stat(ctx, id)
}

// fakeCouch serves one document with attachments whose bytes may differ
// from what their stubs say, and records the writes.
type fakeCouch struct {
	stubs map[string]map[string]any
	bytes map[string][]byte

	mu     sync.Mutex
	writes []map[string]any
}

func (f *fakeCouch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	p := strings.TrimPrefix(r.URL.Path, "/db/")
	switch {
	case p == "_changes":
		if r.URL.Query().Get("since") != "0" {
			io.WriteString(w, `{"results":[],"last_seq":"1-x"}`)
			return
		}
		doc := map[string]any{"_id": "doc", "_rev": "1-a", "_attachments": f.stubs}
		json.NewEncoder(w).Encode(map[string]any{"results": []any{map[string]any{"seq": "1-x", "id": "doc", "doc": doc}}, "last_seq": "1-x"})
	case strings.HasPrefix(p, "_local/"):
		if r.Method == http.MethodGet {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"not_found","reason":"missing"}`)
			return
		}
		io.WriteString(w, `{"ok":true,"rev":"0-1"}`)
	case p == "doc" && r.Method == http.MethodPut:
		var d map[string]any
		json.NewDecoder(r.Body).Decode(&d)
		f.mu.Lock()
		f.writes = append(f.writes, d)
		f.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"ok":true,"rev":"2-b"}`)
	case strings.HasPrefix(p, "doc/"):
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(f.bytes[strings.TrimPrefix(p, "doc/")])
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":"not_found","reason":"missing"}`)
	}
}

func md5Digest(b []byte) string {
	s := md5.Sum(b)
	return "md5-" + base64.StdEncoding.EncodeToString(s[:])
}

// TestCorruptAttachment: bytes from CouchDB that do not match the stub's
// length or MD5 never reach dtfc whole (the upload ends in an error before
// its end) and the attachment stays; the good one moves.
func TestCorruptAttachment(t *testing.T) {
	good, bad, short := []byte("good bytes"), []byte("bad bytes!"), []byte("short")
	fc := &fakeCouch{
		stubs: map[string]map[string]any{
			"good.txt":  {"stub": true, "content_type": "text/plain", "length": len(good), "digest": md5Digest(good)},
			"bad.txt":   {"stub": true, "content_type": "text/plain", "length": len(bad), "digest": md5Digest([]byte("bad bytes?"))},
			"short.txt": {"stub": true, "content_type": "text/plain", "length": 10, "digest": md5Digest(short)},
		},
		bytes: map[string][]byte{"good.txt": good, "bad.txt": bad, "short.txt": short},
	}
	srv := httptest.NewServer(fc)
	defer srv.Close()
	var mu sync.Mutex
	stored := map[string]error{}
	store := &fakeStore{
		put: func(ctx context.Context, r io.Reader, opts client.PutOptions) (client.PutResult, error) {
			// As the HTTP client does: read to the end; an error
			// instead of io.EOF aborts the upload.
			b, err := io.ReadAll(r)
			mu.Lock()
			stored[opts.Filename] = err
			mu.Unlock()
			if err != nil {
				return client.PutResult{}, fmt.Errorf("upload aborted: %w", err)
			}
			return client.PutResult{ID: dtfc.Sum(b), Size: int64(len(b)), Created: true}, nil
		},
		stat: func(context.Context, dtfc.ID) (client.Info, error) { return client.Info{}, client.ErrNotFound },
	}
	cc, err := couchdb.New(srv.URL, couchdb.ClientOptions{HTTPClient: httpClient(t)})
	require.NoError(t, err)
	m, err := couchdb.NewMigrator(cc.DB("db"), couchdb.Options{Store: store, RemoveAttachments: true})
	require.NoError(t, err)
	st, err := m.Run(t.Context())
	require.NoError(t, err)

	assert.NoError(t, stored["good.txt"])
	assert.Error(t, stored["bad.txt"])
	assert.Error(t, stored["short.txt"])
	assert.Equal(t, int64(2), st.Failures)
	reasons := map[string]string{}
	for _, f := range st.Failed {
		reasons[f.Attachment] = f.Reason
	}
	assert.Contains(t, reasons["bad.txt"], "digest")
	assert.Contains(t, reasons["short.txt"], "CouchDB sent 5 bytes, the attachment has 10")
	require.Len(t, fc.writes, 1)
	w := fc.writes[0]
	assert.Equal(t, "1-a", w["_rev"])
	refs := w["dtfc"].(map[string]any)
	assert.Len(t, refs, 1)
	assert.Equal(t, dtfc.Sum(good).String(), refs["good.txt"].(map[string]any)["sha512"])
	atts := w["_attachments"].(map[string]any)
	assert.Len(t, atts, 2)
	assert.Contains(t, atts, "bad.txt")
	assert.Contains(t, atts, "short.txt")
}

// TestCorruptAttachmentRealNode: the same against a real dtfc node, which
// receives the cut uploads: it stores the good attachment only, and keeps
// no temp file of the others.
func TestCorruptAttachmentRealNode(t *testing.T) {
	good, bad := []byte("good bytes"), []byte("bad bytes!")
	fc := &fakeCouch{
		stubs: map[string]map[string]any{
			"good.txt": {"stub": true, "content_type": "text/plain", "length": len(good), "digest": md5Digest(good)},
			"bad.txt":  {"stub": true, "content_type": "text/plain", "length": len(bad), "digest": md5Digest([]byte("bad bytes?"))},
			"long.txt": {"stub": true, "content_type": "text/plain", "length": 3, "digest": md5Digest(bad)},
		},
		bytes: map[string][]byte{"good.txt": good, "bad.txt": bad, "long.txt": bad},
	}
	srv := httptest.NewServer(fc)
	defer srv.Close()
	cl := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	cc, err := couchdb.New(srv.URL, couchdb.ClientOptions{HTTPClient: httpClient(t)})
	require.NoError(t, err)
	m, err := couchdb.NewMigrator(cc.DB("db"), couchdb.Options{Store: dtfcClient(t, cl.Nodes[0].URL)})
	require.NoError(t, err)
	st, err := m.Run(t.Context())
	require.NoError(t, err)
	assert.Equal(t, int64(2), st.Failures, "%v", st.Failed)
	assert.Equal(t, map[string]int64{dtfc.Sum(good).String(): int64(len(good))}, cl.BlobFiles(0))
	noTemp(t, cl.Nodes[0])
}

// TestStoreDown: a dtfc that cannot be reached fails the run after its
// retries, with the error, and writes no document and no checkpoint.
func TestStoreDown(t *testing.T) {
	good := []byte("good bytes")
	fc := &fakeCouch{
		stubs: map[string]map[string]any{"good.txt": {"stub": true, "content_type": "text/plain", "length": len(good), "digest": md5Digest(good)}},
		bytes: map[string][]byte{"good.txt": good},
	}
	srv := httptest.NewServer(fc)
	defer srv.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	dc := dtfcClient(t, down.URL)
	cc, err := couchdb.New(srv.URL, couchdb.ClientOptions{HTTPClient: httpClient(t)})
	require.NoError(t, err)
	m, err := couchdb.NewMigrator(cc.DB("db"), couchdb.Options{Store: dc, MaxRetries: 1})
	require.NoError(t, err)
	_, err = m.Run(t.Context())
	require.Error(t, err)
	assert.False(t, errors.Is(err, context.Canceled))
	assert.Contains(t, err.Error(), "connection refused")
	assert.Empty(t, fc.writes)
}
