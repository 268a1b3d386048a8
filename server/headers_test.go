package server_test

import (
	"bytes"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
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
