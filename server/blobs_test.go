package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/server"
)

type listedBlob struct {
	SHA512      string    `json:"sha512"`
	Size        int64     `json:"size"`
	ContentType string    `json:"content_type"`
	Filename    string    `json:"filename"`
	Uploaded    time.Time `json:"uploaded"`
	UploadedMS  int64     `json:"uploaded_ms"`
}

type listAnswer struct {
	Blobs []listedBlob `json:"blobs"`
	Next  string       `json:"next"`
}

// list asks GET /_blobs with query and decodes a 200 answer.
func (n *node) list(t *testing.T, query string, hdr ...string) listAnswer {
	t.Helper()
	a := n.get(t, "/_blobs"+query, hdr...)
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, "application/json", a.header.Get("Content-Type"))
	assert.Equal(t, "no-store", a.header.Get("Cache-Control"))
	var out listAnswer
	require.NoError(t, json.Unmarshal(a.body, &out), "%s", a.body)
	require.NotNil(t, out.Blobs, `"blobs" is a list, never null: %s`, a.body)
	return out
}

// TestListBlobs pages through GET /_blobs on a real store: every live
// blob once, in ID order, with its size, type, name and upload time; no
// deleted or blocked one; ?after= continues from any ID; the write token
// is needed (a read token is not enough); bad parameters answer 400.
func TestListBlobs(t *testing.T) {
	n := startNode(t, server.Config{AuthTokens: []string{"w"}, ReadTokens: []string{"r"}})
	auth := []string{"Authorization", "Bearer w"}
	before := time.Now().Add(-time.Millisecond)
	live := map[string]int{}
	for i := range 25 {
		data := randBytes(uint64(i), 10+i)
		requireStatus(t, n.put(t, fmt.Sprintf("/f%d.txt", i), data, auth...), http.StatusCreated)
		live[sum(data)] = len(data)
	}
	after := time.Now().Add(time.Millisecond)
	// Three deleted, one blocked: 21 left.
	var gone []string
	for id := range live {
		if len(gone) == 4 {
			break
		}
		gone = append(gone, id)
	}
	for _, id := range gone[:3] {
		requireStatus(t, n.do(t, http.MethodDelete, "/"+id, nil, auth...), http.StatusOK)
	}
	a := n.do(t, http.MethodPut, "/_deny/"+gone[3], strings.NewReader(`{"status":451,"reason":"test"}`), append([]string{"Content-Type", "application/json"}, auth...)...)
	requireStatus(t, a, http.StatusOK)
	for _, id := range gone {
		delete(live, id)
	}
	want := make([]string, 0, len(live))
	for id := range live {
		want = append(want, id)
	}
	slices.Sort(want)

	t.Run("one page", func(t *testing.T) {
		got := n.list(t, "", auth...)
		assert.Empty(t, got.Next)
		var ids []string
		for _, b := range got.Blobs {
			ids = append(ids, b.SHA512)
			assert.Equal(t, int64(live[b.SHA512]), b.Size)
			assert.Equal(t, "text/plain; charset=utf-8", b.ContentType)
			assert.True(t, strings.HasPrefix(b.Filename, "f") && strings.HasSuffix(b.Filename, ".txt"), b.Filename)
			assert.True(t, b.Uploaded.After(before) && b.Uploaded.Before(after), "uploaded %s, not between %s and %s", b.Uploaded, before, after)
			assert.Equal(t, b.Uploaded.UnixMilli(), b.UploadedMS)
			assert.Equal(t, time.UTC, b.Uploaded.Location())
		}
		assert.Equal(t, want, ids, "every live blob, in ID order")
	})

	t.Run("pages", func(t *testing.T) {
		var ids []string
		q := "?limit=4"
		pages := 0
		for {
			got := n.list(t, q, auth...)
			pages++
			require.LessOrEqual(t, len(got.Blobs), 4)
			for _, b := range got.Blobs {
				ids = append(ids, b.SHA512)
			}
			if got.Next == "" {
				break
			}
			require.True(t, dtfc.LooksLikeID(got.Next), "next %q", got.Next)
			require.Less(t, pages, 100)
			q = "?limit=4&after=" + got.Next
		}
		assert.Equal(t, want, ids)
		assert.GreaterOrEqual(t, pages, 6)
	})

	t.Run("after", func(t *testing.T) {
		got := n.list(t, "?limit=3&after="+want[5], auth...)
		require.Len(t, got.Blobs, 3)
		assert.Equal(t, want[6], got.Blobs[0].SHA512)
		assert.Equal(t, want[8], got.Next)
		// Upper case means the same ID.
		up := n.list(t, "?limit=3&after="+strings.ToUpper(want[5]), auth...)
		assert.Equal(t, got, up)
		// An ID that is not listed (deleted) continues after it.
		got = n.list(t, "?after="+gone[0], auth...)
		var later []string
		for _, id := range want {
			if id > gone[0] {
				later = append(later, id)
			}
		}
		var ids []string
		for _, b := range got.Blobs {
			ids = append(ids, b.SHA512)
		}
		assert.Equal(t, later, ids)
		// After the last: an empty list, complete.
		got = n.list(t, "?after="+want[len(want)-1], auth...)
		assert.Empty(t, got.Blobs)
		assert.Empty(t, got.Next)
	})

	t.Run("bad input", func(t *testing.T) {
		for _, q := range []string{
			"?after=xyz", "?after=" + want[0][:127], "?after=" + want[0] + "0", "?after=" + strings.Repeat("g", 128),
			"?limit=0", "?limit=-1", "?limit=10001", "?limit=abc", "?limit=1.5", "?limit=", "?limit=99999999999999999999",
		} {
			if q == "?limit=" {
				// An empty value is the default.
				n.list(t, q, auth...)
				continue
			}
			requireError(t, n.get(t, "/_blobs"+q, auth...), http.StatusBadRequest)
		}
		n.list(t, "?limit=10000", auth...)
		n.list(t, "?limit=1", auth...)
	})

	t.Run("write token", func(t *testing.T) {
		for _, hdr := range [][]string{nil, {"Authorization", "Bearer r"}, {"Authorization", "Bearer wrong"}, {"Authorization", "w"}} {
			a := n.get(t, "/_blobs", hdr...)
			requireError(t, a, http.StatusUnauthorized)
			assert.NotContains(t, string(a.body), want[0], "%v", hdr)
		}
		// Not under another method.
		requireError(t, n.do(t, http.MethodPost, "/_blobs", nil, auth...), http.StatusMethodNotAllowed)
	})
}

// TestListBlobsOpen: without auth_token, writes are open and so is the
// list (a node that lets anyone delete hides nothing by its list).
func TestListBlobsOpen(t *testing.T) {
	n := startNode(t, server.Config{})
	data := []byte("open")
	requireStatus(t, n.put(t, "/o.txt", data), http.StatusCreated)
	got := n.list(t, "")
	require.Len(t, got.Blobs, 1)
	assert.Equal(t, sum(data), got.Blobs[0].SHA512)
	assert.Empty(t, got.Next)
}

// bareStore is a real store seen only through server.Blobs: no List.
type bareStore struct{ server.Blobs }

// TestListBlobsUnsupported: a store that cannot list answers 501.
func TestListBlobsUnsupported(t *testing.T) {
	store, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, store.Close()) })
	api := server.New(server.Config{}, bareStore{store})
	srv := httptest.NewServer(api)
	t.Cleanup(func() {
		srv.Close()
		api.Wait()
	})
	n := &node{url: srv.URL, hc: srv.Client()}
	requireError(t, n.get(t, "/_blobs"), http.StatusNotImplemented)
}
