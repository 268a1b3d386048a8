package server_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

// TestLongContentTypeIgnored: a client's Content-Type of 60,000 bytes is
// not recorded (it would be sent with every download); the extension's or
// the sniffed type is, and a long type recorded before the bound is not
// sent on.
func TestLongContentTypeIgnored(t *testing.T) {
	long := "text/html; junk=" + strings.Repeat("x", 60000)
	n := startNode(t, server.Config{})
	html := []byte("<!doctype html><title>x</title><p>hello")
	check := func(t *testing.T, id, want string) {
		t.Helper()
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			a := n.do(t, m, "/"+id, nil)
			requireStatus(t, a, http.StatusOK)
			assert.Equal(t, want, a.header.Get("Content-Type"), m)
		}
	}

	t.Run("PUT, by the extension", func(t *testing.T) {
		data := []byte("not really a png")
		requireStatus(t, n.put(t, "/pic.png", data, "Content-Type", long), http.StatusCreated)
		check(t, sum(data), "image/png")
	})
	t.Run("PUT, sniffed", func(t *testing.T) {
		requireStatus(t, n.put(t, "/page", html, "Content-Type", long), http.StatusCreated)
		check(t, sum(html), "text/html; charset=utf-8")
	})
	t.Run("not a media type", func(t *testing.T) {
		data := []byte("plain words")
		requireStatus(t, n.put(t, "/notes", data, "Content-Type", "no media type"), http.StatusCreated)
		check(t, sum(data), "text/plain; charset=utf-8")
	})
	t.Run("multipart part", func(t *testing.T) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		w, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Disposition": {`form-data; name="file"; filename="photo.jpg"`},
			"Content-Type":        {long},
		})
		require.NoError(t, err)
		data := []byte("\xff\xd8\xff\xe0 jpeg bytes")
		_, err = w.Write(data)
		require.NoError(t, err)
		require.NoError(t, mw.Close())
		requireStatus(t, n.do(t, http.MethodPost, "/", &buf, "Content-Type", mw.FormDataContentType()), http.StatusCreated)
		check(t, sum(data), "image/jpeg")
	})
	t.Run("recorded before the bound", func(t *testing.T) {
		data := []byte("recorded by an older version")
		bw, err := n.store.NewWriter(blobstore.WriterOptions{})
		require.NoError(t, err)
		defer bw.Close()
		_, err = bw.ReadFrom(bytes.NewReader(data))
		require.NoError(t, err)
		res, err := bw.Commit(blobstore.Upload{ContentType: long})
		require.NoError(t, err)
		require.Equal(t, long, res.State.ContentType, "the store keeps what it is given")
		check(t, sum(data), "application/octet-stream")
	})
	t.Run("short types still recorded", func(t *testing.T) {
		data := []byte("x,y")
		ct := fmt.Sprintf("application/vnd.dtfc.%s", strings.Repeat("y", 200))
		requireStatus(t, n.put(t, "/data", data, "Content-Type", ct), http.StatusCreated)
		check(t, sum(data), ct)
	})
}

// lookupCluster answers Lookup with a fixed state, as a peer holding the
// blob would; a HEAD of a local miss needs nothing else.
type lookupCluster struct {
	server.Cluster // nil: any other method panics
	st             dtfc.State
}

func (l *lookupCluster) Lookup(_ context.Context, id dtfc.ID, _ bool) (dtfc.State, error) {
	if id != l.st.ID {
		return dtfc.State{}, peer.ErrNotFound
	}
	return l.st, nil
}
func (l *lookupCluster) InternalHandler() http.Handler { return http.NotFoundHandler() }
func (l *lookupCluster) Replicas() int                 { return 1 }
func (l *lookupCluster) Status() peer.Status           { return peer.Status{} }

// TestBlobAnswersSandboxed: every answer with a blob carries
// Content-Security-Policy: sandbox, once: small (from memory) and large
// (from the file), GET and HEAD, ranges, 304, the accel-redirect answer a
// front server sends on, and a miss answered from a peer. An HTML page
// or SVG image served from the node runs nothing as the node's origin
// (deploy/activecontent_test.go shows it in Chromium).
func TestBlobAnswersSandboxed(t *testing.T) {
	html := []byte("<!doctype html><script>document.title='ran'</script>")
	svg := append([]byte(`<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script>`), bytes.Repeat([]byte("<g/>"), 8<<10)...)
	svg = append(svg, "</svg>"...)
	remote := dtfc.State{ID: dtfc.ID(sumBytes([]byte("held by a peer"))), Clock: 1, Node: "n", Size: 14, ContentType: "text/html"}
	n := startNode(t, server.Config{Cluster: &lookupCluster{st: remote}})
	requireStatus(t, n.put(t, "/page.html", html), http.StatusCreated)
	requireStatus(t, n.put(t, "/image.svg", svg), http.StatusCreated)
	small, large := sum(html), sum(svg)

	for _, tt := range []struct {
		name, method, path string
		hdr                []string
		status             int
	}{
		{"small GET", http.MethodGet, "/" + small, nil, http.StatusOK},
		{"small HEAD", http.MethodHead, "/" + small, nil, http.StatusOK},
		{"large GET", http.MethodGet, "/" + large, nil, http.StatusOK},
		{"large HEAD", http.MethodHead, "/" + large + "/nopeerload", nil, http.StatusOK},
		{"range", http.MethodGet, "/" + large, []string{"Range", "bytes=0-99"}, http.StatusPartialContent},
		{"ranges", http.MethodGet, "/" + small, []string{"Range", "bytes=0-0,5-9"}, http.StatusPartialContent},
		{"not modified", http.MethodGet, "/" + small, []string{"If-None-Match", `"` + small + `"`}, http.StatusNotModified},
		{"accel redirect", http.MethodGet, "/" + large, []string{server.HeaderAccel, "/_dtfc_blobs"}, http.StatusOK},
		{"accel redirect, not modified", http.MethodHead, "/" + small, []string{server.HeaderAccel, "/_dtfc_blobs", "If-None-Match", `"` + small + `"`}, http.StatusNotModified},
		{"miss, HEAD answered by a peer", http.MethodHead, "/" + remote.ID.String(), nil, http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := n.do(t, tt.method, tt.path, nil, tt.hdr...)
			requireStatus(t, a, tt.status)
			assert.Equal(t, []string{"sandbox"}, a.header.Values("Content-Security-Policy"))
			assert.Equal(t, []string{"nosniff"}, a.header.Values("X-Content-Type-Options"))
		})
	}
	assert.Equal(t, "peer", n.do(t, http.MethodHead, "/"+remote.ID.String(), nil).header.Get("X-Dtfc-Source"))
	assert.NotEmpty(t, n.do(t, http.MethodGet, "/"+large, nil, server.HeaderAccel, "/_dtfc_blobs").header.Get("X-Accel-Redirect"))
	// Not on dtfc's own status page, which has its own policy and must
	// reload itself.
	assert.NotContains(t, n.get(t, "/").header.Get("Content-Security-Policy"), "sandbox")
}

func sumBytes(b []byte) [64]byte { return sha512.Sum512(b) }
