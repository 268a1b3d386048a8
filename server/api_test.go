package server_test

import (
	"bufio"
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// deadline bounds every wait in these tests: generous, for a noisy 2-core
// machine running the race detector.
const deadline = 30 * time.Second

// node is one dtfc server over a real store, served over loopback.
type node struct {
	url    string // http://127.0.0.1:port
	me     string // Config.Me
	parent string // the directory holding base, and nothing else
	base   string // the store's base directory
	store  *blobstore.Store
	api    *server.Server
	hc     *http.Client
	fast   *server.FastHits // the listener, answering plain hits
}

// startNode starts a server with cfg over a fresh store in a temp
// directory. Everything is closed in t.Cleanup.
func startNode(t testing.TB, cfg server.Config) *node {
	t.Helper()
	parent := t.TempDir()
	return startNodeAt(t, parent, filepath.Join(parent, "data"), cfg)
}

func startNodeAt(t testing.TB, parent, base string, cfg server.Config) *node {
	t.Helper()
	return startNodeStore(t, parent, base, cfg, blobstore.Options{})
}

// startNodeStore is startNodeAt with the store's options.
func startNodeStore(t testing.TB, parent, base string, cfg server.Config, opts blobstore.Options) *node {
	t.Helper()
	store, err := blobstore.Open(base, opts)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, store.Close()) })

	srv := httptest.NewUnstartedServer(nil)
	addr := "http://" + srv.Listener.Addr().String()
	if cfg.Me == "" {
		cfg.Me = addr
	}
	api := server.New(cfg, store)
	srv.Config.Handler = api
	// Every test node answers plain hits outside net/http, as dtfc
	// does (cmd/dtfc): every test here also checks that what it leaves
	// to net/http is answered as before.
	fast := api.FastHits(srv.Listener, server.FastHitsOptions{ReadHeaderTimeout: deadline, IdleTimeout: deadline})
	srv.Listener = fast
	srv.Start()
	t.Cleanup(func() {
		// Close waits for the requests in flight; Wait for the handlers,
		// before the store (registered earlier) is closed.
		srv.Close()
		api.Wait()
	})
	return &node{url: addr, me: cfg.Me, parent: parent, base: base, store: store, api: api, hc: srv.Client(), fast: fast}
}

// answer is a response whose body has been read.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) String() string {
	return fmt.Sprintf("%d %s", a.status, bytes.TrimSpace(a.body))
}

// do sends a request and reads the whole answer. hdr holds header names
// and values in turn.
func (n *node) do(t testing.TB, method, path string, body io.Reader, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, n.url+path, body)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := n.hc.Do(req)
	require.NoError(t, err, "%s %s", method, path)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err, "%s %s: reading the body", method, path)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (n *node) put(t testing.TB, path string, data []byte, hdr ...string) answer {
	t.Helper()
	return n.do(t, http.MethodPut, path, bytes.NewReader(data), hdr...)
}

func (n *node) get(t testing.TB, path string, hdr ...string) answer {
	t.Helper()
	return n.do(t, http.MethodGet, path, nil, hdr...)
}

// raw sends bytes as they are over a new connection and reads one answer:
// for requests Go's client would clean or refuse.
func (n *node) raw(t testing.TB, method, target string, extra string, body string) answer {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
	req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: dtfc.test\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s",
		method, target, len(body), extra, body)
	_, err = io.WriteString(c, req)
	require.NoError(t, err)
	return readAnswer(t, c, method)
}

func readAnswer(t testing.TB, c net.Conn, method string) answer {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// requireError checks the contract every error answer keeps: the status,
// Content-Type application/json and a body {"error": "<non-empty>"}.
func requireError(t testing.TB, a answer, status int, method ...string) {
	t.Helper()
	require.Equal(t, status, a.status, "answer: %s", a)
	mt, _, err := mime.ParseMediaType(a.header.Get("Content-Type"))
	assert.NoError(t, err, "Content-Type %q", a.header.Get("Content-Type"))
	assert.Equal(t, "application/json", mt, "error answers are JSON: %s", a)
	if len(method) > 0 && method[0] == http.MethodHead {
		assert.Empty(t, a.body)
		return
	}
	var body map[string]any
	require.NoError(t, json.Unmarshal(a.body, &body), "error body %q is not JSON", a.body)
	msg, ok := body["error"].(string)
	assert.True(t, ok, `error body %s has no string "error"`, a.body)
	assert.NotEmpty(t, strings.TrimSpace(msg), "error body %s has an empty message", a.body)
}

// requireStatus checks a success status, showing the body on failure.
func requireStatus(t testing.TB, a answer, status int) {
	t.Helper()
	require.Equal(t, status, a.status, "answer: %s", a)
}

type uploadBody struct {
	SHA512   string `json:"sha512"`
	Size     int64  `json:"size"`
	Filename string `json:"filename"`
}

func decodeUpload(t testing.TB, a answer) uploadBody {
	t.Helper()
	mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type"))
	assert.Equal(t, "application/json", mt)
	var u uploadBody
	require.NoError(t, json.Unmarshal(a.body, &u), "upload answer %q", a.body)
	return u
}

func sum(b []byte) string {
	s := sha512.Sum512(b)
	return hex.EncodeToString(s[:])
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func (n *node) blobPath(id string) string {
	return filepath.Join(n.base, "blobs", id[0:2], id[2:4], id)
}

// files lists the regular files (and anything else not a directory) under
// dir, relative to it.
func files(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

// requireNothingStored checks that no blob file and no temp file exist,
// the store counts nothing, and nothing appeared beside the base directory.
func (n *node) requireNothingStored(t testing.TB) {
	t.Helper()
	assert.Empty(t, files(t, filepath.Join(n.base, "blobs")), "files under blobs/")
	assert.Empty(t, files(t, filepath.Join(n.base, "tmp")), "files under tmp/")
	blobs, _ := n.store.Stats()
	assert.Zero(t, blobs, "blobs counted by the store")
	n.requireParentClean(t)
}

// requireParentClean checks that nothing was created beside the base
// directory.
func (n *node) requireParentClean(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir(n.parent)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{filepath.Base(n.base)}, names, "entries beside the base directory")
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			require.FailNow(t, "timed out waiting for "+what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (n *node) tmpEmpty(t testing.TB) func() bool {
	return func() bool { return len(files(t, filepath.Join(n.base, "tmp"))) == 0 }
}

// requireServed checks that GET id answers data.
func (n *node) requireServed(t testing.TB, id string, data []byte) {
	t.Helper()
	a := n.get(t, "/"+id)
	requireStatus(t, a, http.StatusOK)
	assert.True(t, bytes.Equal(data, a.body), "GET /%s: %d bytes differ from the %d uploaded", id[:16], len(a.body), len(data))
}

func TestPutByFilename(t *testing.T) {
	n := startNode(t, server.Config{Me: "http://node-a.example:8080/"})
	data := []byte("hello, dtfc\n")
	id := sum(data)

	a := n.put(t, "/name.txt", data)
	requireStatus(t, a, http.StatusCreated)
	assert.Equal(t, uploadBody{SHA512: id, Size: int64(len(data)), Filename: "name.txt"}, decodeUpload(t, a))
	assert.Equal(t, "http://node-a.example:8080/"+id, a.header.Get("Location"), "Location is <me>/<id>, me without its trailing slash")

	got, err := os.ReadFile(n.blobPath(id))
	require.NoError(t, err, "blob at blobs/ab/cd/<id>")
	assert.Equal(t, data, got)
	fi, err := os.Stat(n.blobPath(id))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "blob files are world-readable")
	for _, d := range []string{filepath.Dir(n.blobPath(id)), filepath.Dir(filepath.Dir(n.blobPath(id)))} {
		fi, err := os.Stat(d)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm(), "%s", d)
	}

	a = n.put(t, "/name.txt", data)
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, uploadBody{SHA512: id, Size: int64(len(data)), Filename: "name.txt"}, decodeUpload(t, a))
	assert.Equal(t, "http://node-a.example:8080/"+id, a.header.Get("Location"))

	// The same bytes under another name are still the same blob.
	a = n.put(t, "/other.txt", data)
	requireStatus(t, a, http.StatusOK)
	assert.Equal(t, "other.txt", decodeUpload(t, a).Filename)

	assert.Equal(t, []string{filepath.Join(id[0:2], id[2:4], id)}, files(t, filepath.Join(n.base, "blobs")))
	assert.Empty(t, files(t, filepath.Join(n.base, "tmp")))
	n.requireServed(t, id, data)
}

func TestPostUpload(t *testing.T) {
	multipartBody := func(fields map[string]string, file, filename, ctype string) (io.Reader, string) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for k, v := range fields {
			require.NoError(t, mw.WriteField(k, v))
		}
		h := make(map[string][]string)
		h["Content-Disposition"] = []string{fmt.Sprintf(`form-data; name="file"; filename=%q`, filename)}
		if ctype != "" {
			h["Content-Type"] = []string{ctype}
		}
		w, err := mw.CreatePart(h)
		require.NoError(t, err)
		_, err = io.WriteString(w, file)
		require.NoError(t, err)
		require.NoError(t, mw.Close())
		return &buf, mw.FormDataContentType()
	}

	tests := []struct {
		name     string
		path     string
		body     func() (io.Reader, []string)
		content  string
		filename string
		ctype    string
	}{
		{
			name: "raw with X-Filename",
			path: "/",
			body: func() (io.Reader, []string) {
				return strings.NewReader("%PDF-1.4 not really"), []string{"X-Filename", "report.pdf"}
			},
			content: "%PDF-1.4 not really", filename: "report.pdf", ctype: "application/pdf",
		},
		{
			name: "raw with ?filename=",
			path: "/?filename=notes.txt",
			body: func() (io.Reader, []string) {
				return strings.NewReader("some notes"), nil
			},
			content: "some notes", filename: "notes.txt", ctype: "text/plain; charset=utf-8",
		},
		{
			name: "X-Filename wins over ?filename=",
			path: "/?filename=ignored.txt",
			body: func() (io.Reader, []string) {
				return strings.NewReader("header name"), []string{"X-Filename", "chosen.txt"}
			},
			content: "header name", filename: "chosen.txt", ctype: "text/plain; charset=utf-8",
		},
		{
			name: "raw without a name",
			path: "/",
			body: func() (io.Reader, []string) {
				return strings.NewReader("anonymous"), nil
			},
			content: "anonymous", filename: "", ctype: "text/plain; charset=utf-8",
		},
		{
			name: "multipart file part after a field",
			path: "/",
			body: func() (io.Reader, []string) {
				r, ct := multipartBody(map[string]string{"comment": "a field first"}, "\xff\xd8\xff\xe0 jpeg bytes", "photo.jpg", "image/jpeg")
				return r, []string{"Content-Type", ct}
			},
			content: "\xff\xd8\xff\xe0 jpeg bytes", filename: "photo.jpg", ctype: "image/jpeg",
		},
		{
			name: "multipart part without a type",
			path: "/",
			body: func() (io.Reader, []string) {
				r, ct := multipartBody(nil, "a,b\n1,2\n", "table.csv", "")
				return r, []string{"Content-Type", ct}
			},
			content: "a,b\n1,2\n", filename: "table.csv", ctype: "text/csv; charset=utf-8",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, server.Config{})
			body, hdr := tt.body()
			a := n.do(t, http.MethodPost, tt.path, body, hdr...)
			requireStatus(t, a, http.StatusCreated)
			id := sum([]byte(tt.content))
			assert.Equal(t, uploadBody{SHA512: id, Size: int64(len(tt.content)), Filename: tt.filename}, decodeUpload(t, a))
			assert.Equal(t, n.me+"/"+id, a.header.Get("Location"))
			got, err := os.ReadFile(n.blobPath(id))
			require.NoError(t, err)
			assert.Equal(t, tt.content, string(got), "stored bytes are the file part's content")
			g := n.get(t, "/"+id)
			requireStatus(t, g, http.StatusOK)
			assert.Equal(t, tt.content, string(g.body))
			assert.Equal(t, tt.ctype, g.header.Get("Content-Type"))
			assert.Empty(t, files(t, filepath.Join(n.base, "tmp")))
		})
	}

	t.Run("multipart without a file part", func(t *testing.T) {
		n := startNode(t, server.Config{})
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		require.NoError(t, mw.WriteField("comment", "no file here"))
		require.NoError(t, mw.Close())
		a := n.do(t, http.MethodPost, "/", &buf, "Content-Type", mw.FormDataContentType())
		requireError(t, a, http.StatusBadRequest)
		n.requireNothingStored(t)
	})
}

func TestPutExpectedID(t *testing.T) {
	data := []byte("content whose hash the client knows")
	other := []byte("other content")
	id, otherID := sum(data), sum(other)

	tests := []struct {
		name   string
		path   string
		body   []byte
		hdr    []string
		status int
	}{
		{name: "path ID matches", path: "/" + id, body: data, status: http.StatusCreated},
		{name: "upper-case path ID matches", path: "/" + strings.ToUpper(id), body: data, status: http.StatusCreated},
		{name: "path ID mismatch", path: "/" + otherID, body: data, status: http.StatusBadRequest},
		{name: "header matches", path: "/file.bin", body: data, hdr: []string{"X-Content-SHA512", id}, status: http.StatusCreated},
		{name: "upper-case header matches", path: "/file.bin", body: data, hdr: []string{"X-Content-SHA512", strings.ToUpper(id)}, status: http.StatusCreated},
		{name: "header and path ID agree", path: "/" + id, body: data, hdr: []string{"X-Content-SHA512", id}, status: http.StatusCreated},
		{name: "header mismatch", path: "/file.bin", body: data, hdr: []string{"X-Content-SHA512", otherID}, status: http.StatusBadRequest},
		{name: "header mismatch on POST", path: "/?filename=file.bin", body: data, hdr: []string{"X-Content-SHA512", otherID}, status: http.StatusBadRequest},
		{name: "malformed header", path: "/file.bin", body: data, hdr: []string{"X-Content-SHA512", "abc123"}, status: http.StatusBadRequest},
		{name: "malformed header, 128 chars", path: "/file.bin", body: data, hdr: []string{"X-Content-SHA512", strings.Repeat("g", 128)}, status: http.StatusBadRequest},
		{name: "path ID and header disagree", path: "/" + id, body: data, hdr: []string{"X-Content-SHA512", otherID}, status: http.StatusBadRequest},
		{name: "empty body against an ID", path: "/" + id, body: nil, status: http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, server.Config{})
			method := http.MethodPut
			if strings.HasPrefix(tt.path, "/?") {
				method = http.MethodPost
			}
			a := n.do(t, method, tt.path, bytes.NewReader(tt.body), tt.hdr...)
			if tt.status >= 400 {
				requireError(t, a, tt.status)
				n.requireNothingStored(t)
				requireError(t, n.get(t, "/"+sum(tt.body)), http.StatusNotFound)
				return
			}
			requireStatus(t, a, tt.status)
			assert.Equal(t, id, decodeUpload(t, a).SHA512, "the ID is answered in lower case")
			assert.Equal(t, n.me+"/"+id, a.header.Get("Location"))
			n.requireServed(t, id, tt.body)
			n.requireServed(t, strings.ToUpper(id), tt.body)
		})
	}
}

func TestDownloadHeaders(t *testing.T) {
	html := "<html><head><title>t</title></head><body>hi</body></html>"
	tests := []struct {
		name  string
		path  string
		body  string
		hdr   []string
		ctype string
	}{
		{name: "recorded from the request", path: "/data.bin", body: "x,y", hdr: []string{"Content-Type", "application/vnd.dtfc.test"}, ctype: "application/vnd.dtfc.test"},
		{name: "recorded with parameters", path: "/data", body: "x,y", hdr: []string{"Content-Type", "text/plain; charset=iso-8859-1"}, ctype: "text/plain; charset=iso-8859-1"},
		{name: "from the extension", path: "/pic.png", body: "not really a png"}, // ctype below
		{name: "octet-stream defers to the extension", path: "/pic.png", body: "still not a png", hdr: []string{"Content-Type", "application/octet-stream"}},
		{name: "sniffed", path: "/page", body: html, ctype: "text/html; charset=utf-8"},
		{name: "sniffed binary", path: "/blob", body: "\x00\x01\x02\x03binary", ctype: "application/octet-stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.ctype == "" {
				tt.ctype = "image/png"
			}
			n := startNode(t, server.Config{})
			data := []byte(tt.body)
			id := sum(data)
			requireStatus(t, n.put(t, tt.path, data, tt.hdr...), http.StatusCreated)

			for _, path := range []string{"/" + id, "/" + strings.ToUpper(id), "/" + id + "/nopeerload", "/" + id + "?nopeerload=1", "/" + id + "?nopeerload"} {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					a := n.do(t, method, path, nil)
					requireStatus(t, a, http.StatusOK)
					h := a.header
					assert.Equal(t, strconv.Itoa(len(data)), h.Get("Content-Length"), "%s %s", method, path)
					assert.Equal(t, tt.ctype, h.Get("Content-Type"), "%s %s", method, path)
					assert.Equal(t, `"`+id+`"`, h.Get("ETag"), "%s %s", method, path)
					assert.Equal(t, id, h.Get("X-Content-SHA512"), "%s %s", method, path)
					assert.Equal(t, "public, max-age=31536000, immutable", h.Get("Cache-Control"), "%s %s", method, path)
					assert.Equal(t, "bytes", h.Get("Accept-Ranges"), "%s %s", method, path)
					assert.Equal(t, "local", h.Get("X-Dtfc-Source"), "%s %s", method, path)
					if method == http.MethodGet {
						assert.Equal(t, data, a.body, "%s %s", method, path)
					} else {
						assert.Empty(t, a.body)
					}
				}
			}
		})
	}
}

func TestConditionalAndRange(t *testing.T) {
	n := startNode(t, server.Config{})
	data := randBytes(1, 10000)
	id := sum(data)
	requireStatus(t, n.put(t, "/r.bin", data), http.StatusCreated)
	size := strconv.Itoa(len(data))

	t.Run("If-None-Match", func(t *testing.T) {
		for _, inm := range []string{`"` + id + `"`, `W/"` + id + `"`, `"other", "` + id + `"`, "*"} {
			a := n.get(t, "/"+id, "If-None-Match", inm)
			assert.Equal(t, http.StatusNotModified, a.status, "If-None-Match: %s", inm)
			assert.Empty(t, a.body)
			assert.Equal(t, `"`+id+`"`, a.header.Get("ETag"))
		}
		a := n.get(t, "/"+id, "If-None-Match", `"`+sum(nil)+`"`)
		requireStatus(t, a, http.StatusOK)
		assert.Equal(t, data, a.body)
	})

	t.Run("single ranges", func(t *testing.T) {
		tests := []struct {
			rng        string
			start, end int // inclusive
		}{
			{"bytes=0-3", 0, 3},
			{"bytes=5-", 5, len(data) - 1},
			{"bytes=-5", len(data) - 5, len(data) - 1},
			{"bytes=9990-20000", 9990, len(data) - 1},
			{"bytes=0-0", 0, 0},
		}
		for _, tt := range tests {
			a := n.get(t, "/"+id, "Range", tt.rng)
			requireStatus(t, a, http.StatusPartialContent)
			assert.Equal(t, fmt.Sprintf("bytes %d-%d/%s", tt.start, tt.end, size), a.header.Get("Content-Range"), tt.rng)
			assert.Equal(t, strconv.Itoa(tt.end-tt.start+1), a.header.Get("Content-Length"), tt.rng)
			assert.Equal(t, data[tt.start:tt.end+1], a.body, tt.rng)
		}
	})

	t.Run("unsatisfiable", func(t *testing.T) {
		a := n.get(t, "/"+id, "Range", "bytes=1000000-")
		assert.Equal(t, "bytes */"+size, a.header.Get("Content-Range"))
		requireError(t, a, http.StatusRequestedRangeNotSatisfiable)
	})

	t.Run("multiple ranges", func(t *testing.T) {
		a := n.get(t, "/"+id, "Range", "bytes=0-3,100-199,-10")
		requireStatus(t, a, http.StatusPartialContent)
		mt, params, err := mime.ParseMediaType(a.header.Get("Content-Type"))
		require.NoError(t, err)
		require.Equal(t, "multipart/byteranges", mt)
		mr := multipart.NewReader(bytes.NewReader(a.body), params["boundary"])
		want := [][2]int{{0, 3}, {100, 199}, {len(data) - 10, len(data) - 1}}
		for _, w := range want {
			p, err := mr.NextPart()
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprintf("bytes %d-%d/%s", w[0], w[1], size), p.Header.Get("Content-Range"))
			b, err := io.ReadAll(p)
			require.NoError(t, err)
			assert.Equal(t, data[w[0]:w[1]+1], b)
		}
		_, err = mr.NextPart()
		assert.Equal(t, io.EOF, err)
	})
}

func TestBadAndUnknownIDs(t *testing.T) {
	n := startNode(t, server.Config{})
	known := sum([]byte("nobody uploaded this"))
	tests := []struct {
		name   string
		path   string
		status int
	}{
		{"not an ID", "/notanid", http.StatusBadRequest},
		{"127 hex", "/" + known[:127], http.StatusBadRequest},
		{"129 hex", "/" + known + "0", http.StatusBadRequest},
		{"128 non-hex", "/" + strings.Repeat("z", 128), http.StatusBadRequest},
		{"not an ID, nopeerload", "/notanid/nopeerload", http.StatusBadRequest},
		{"unknown ID", "/" + known, http.StatusNotFound},
		{"unknown ID, upper case", "/" + strings.ToUpper(known), http.StatusNotFound},
		{"unknown ID, nopeerload", "/" + known + "/nopeerload", http.StatusNotFound},
		{"unknown ID, ?nopeerload=1", "/" + known + "?nopeerload=1", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireError(t, n.get(t, tt.path), tt.status)
			requireError(t, n.do(t, http.MethodHead, tt.path, nil), tt.status, http.MethodHead)
		})
	}
}

// TestUnknownRoutesAndMethods: an unknown route beginning with "_" is
// 404 and a method a route does not take is 405, as the README says, not
// "malformed ID" (400) from the routes of /{id}, which matched them
// (found by a review helper).
func TestUnknownRoutesAndMethods(t *testing.T) {
	n := startNode(t, server.Config{})
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodDelete} {
		requireError(t, n.do(t, m, "/_nothing", nil), http.StatusNotFound, m)
	}
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		a := n.do(t, m, "/refreshpeers", nil)
		requireError(t, a, http.StatusMethodNotAllowed)
		assert.Equal(t, http.MethodPut, a.header.Get("Allow"))
	}
}

func TestDelete(t *testing.T) {
	n := startNode(t, server.Config{})
	data := []byte("to be deleted")
	id := sum(data)
	requireStatus(t, n.put(t, "/del.txt", data), http.StatusCreated)
	require.FileExists(t, n.blobPath(id))

	a := n.do(t, http.MethodDelete, "/"+id, nil)
	requireStatus(t, a, http.StatusOK)
	var body map[string]any
	require.NoError(t, json.Unmarshal(a.body, &body))
	assert.Equal(t, map[string]any{"sha512": id, "deleted": true}, body)

	requireError(t, n.get(t, "/"+id), http.StatusNotFound)
	requireError(t, n.get(t, "/"+id+"/nopeerload"), http.StatusNotFound)
	assert.NoFileExists(t, n.blobPath(id))
	assert.Empty(t, files(t, filepath.Join(n.base, "blobs")))

	requireError(t, n.do(t, http.MethodDelete, "/"+sum([]byte("never uploaded")), nil), http.StatusNotFound)
	requireError(t, n.do(t, http.MethodDelete, "/notanid", nil), http.StatusBadRequest)

	// A newer upload beats the older delete.
	a = n.put(t, "/del.txt", data)
	requireStatus(t, a, http.StatusCreated)
	n.requireServed(t, id, data)
	assert.FileExists(t, n.blobPath(id))

	// Delete by the upper-case form.
	requireStatus(t, n.do(t, http.MethodDelete, "/"+strings.ToUpper(id), nil), http.StatusOK)
	requireError(t, n.get(t, "/"+id), http.StatusNotFound)
}

// TestDeleteUnmodifiedSince: a DELETE with If-Unmodified-Since deletes
// only a blob this node holds and has not had uploaded after that date
// (412 and nothing deleted otherwise: an upload of the same bytes renews
// the time a caller judged it by); a date that does not parse is 400,
// not an unconditional delete; an ID without a live record here is 404.
func TestDeleteUnmodifiedSince(t *testing.T) {
	n := startNode(t, server.Config{})
	data := []byte("judged old, uploaded again since")
	id := sum(data)
	requireStatus(t, n.put(t, "/old.txt", data), http.StatusCreated)
	del := func(date string) answer {
		return n.do(t, http.MethodDelete, "/"+id, nil, "If-Unmodified-Since", date)
	}
	hourAgo := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	requireError(t, del(hourAgo), http.StatusPreconditionFailed)
	n.requireServed(t, id, data)
	requireError(t, del("yesterday"), http.StatusBadRequest)
	n.requireServed(t, id, data)

	requireStatus(t, del(time.Now().Add(time.Second).UTC().Format(http.TimeFormat)), http.StatusOK)
	requireError(t, n.get(t, "/"+id), http.StatusNotFound)
	requireError(t, del(time.Now().UTC().Format(http.TimeFormat)), http.StatusNotFound)
	unknown := sum([]byte("never uploaded"))
	requireError(t, n.do(t, http.MethodDelete, "/"+unknown, nil, "If-Unmodified-Since", hourAgo), http.StatusNotFound)
}

func TestReservedPaths(t *testing.T) {
	tests := []struct {
		name   string
		method string
		path   string
		hdr    []string
	}{
		{"PUT /_anything", http.MethodPut, "/_anything", nil},
		{"PUT /_status", http.MethodPut, "/_status", nil},
		{"PUT /_internal/x", http.MethodPut, "/_internal/x", nil},
		{"PUT /_", http.MethodPut, "/_", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, server.Config{})
			a := n.do(t, tt.method, tt.path, strings.NewReader("reserved"), tt.hdr...)
			assert.True(t, a.status >= 400 && a.status < 500, "want 4xx, got %s", a)
			requireError(t, a, a.status)
			n.requireNothingStored(t)
		})
	}
	t.Run("GET /_status still works", func(t *testing.T) {
		n := startNode(t, server.Config{})
		n.put(t, "/_status", []byte("x"))
		requireStatus(t, n.get(t, "/_status"), http.StatusOK)
	})
}

// TestUnderscoreFilenameAsMetadata: a filename beginning with "_" is
// refused as a path (PUT /_x: the API's reserved routes) but recorded as
// metadata (POST with ?filename= or X-Filename): it names no route there.
// It was refused too, and with it a Django save or a CLI put of
// "_config.yml" (found by a review helper).
func TestUnderscoreFilenameAsMetadata(t *testing.T) {
	n := startNode(t, server.Config{})
	for i, hdr := range [][]string{nil, {"X-Filename", "_notes.txt"}} {
		data := []byte(fmt.Sprintf("underscore %d", i))
		path := "/"
		if hdr == nil {
			path = "/?filename=_notes.txt"
		}
		a := n.do(t, http.MethodPost, path, bytes.NewReader(data), hdr...)
		requireStatus(t, a, http.StatusCreated)
		var body map[string]any
		require.NoError(t, json.Unmarshal(a.body, &body))
		assert.Equal(t, "_notes.txt", body["filename"])
		n.requireServed(t, sum(data), data)
	}
}

func TestBadFilenames(t *testing.T) {
	tests := []struct {
		name   string
		target string
	}{
		{"dot-dot segment", "/../x"},
		{"dot-dot at the end", "/x/.."},
		{"encoded dot-dot segment", "/%2e%2e/x"},
		{"encoded dot-dot", "/%2e%2e"},
		{"dot-dot upper-case encoding", "/%2E%2E"},
		{"dot", "/%2e"},
		{"encoded slash", "/a%2Fb"},
		{"encoded backslash", "/a%5Cb"},
		{"deep path", "/a/b/c"},
		{"encoded traversal", "/..%2F..%2Fetc%2Fpasswd"},
		{"absolute", "//etc/passwd"},
		{"NUL", "/a%00b"},
		{"control character", "/a%01b"},
		{"newline", "/a%0Ab"},
		{"DEL", "/a%7Fb"},
		{"C1 control", "/a%C2%85b"},
		{"300-byte name", "/" + strings.Repeat("n", 300)},
		{"invalid UTF-8", "/%ff"},
		{"truncated UTF-8", "/a%E2%82"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, server.Config{})
			a := n.raw(t, http.MethodPut, tt.target, "", "evil content")
			assert.True(t, a.status >= 400 && a.status < 500, "PUT %s: want 4xx, got %s", tt.target, a)
			requireError(t, a, a.status)
			n.requireNothingStored(t)
		})
	}
	t.Run("255-byte name is fine", func(t *testing.T) {
		n := startNode(t, server.Config{})
		name := strings.Repeat("n", 251) + ".txt"
		a := n.raw(t, http.MethodPut, "/"+name, "", "fine")
		requireStatus(t, a, http.StatusCreated)
		assert.Equal(t, name, decodeUpload(t, a).Filename)
		n.requireParentClean(t)
	})
	t.Run("non-ASCII name is fine", func(t *testing.T) {
		n := startNode(t, server.Config{})
		a := n.raw(t, http.MethodPut, "/caf%C3%A9%20menu.txt", "", "fine")
		requireStatus(t, a, http.StatusCreated)
		assert.Equal(t, "café menu.txt", decodeUpload(t, a).Filename)
	})
}

func TestMaxUploadBytes(t *testing.T) {
	n := startNode(t, server.Config{MaxUploadBytes: 1000})

	// Content-Length over the limit: refused before reading.
	a := n.put(t, "/big.bin", randBytes(2, 1001))
	requireError(t, a, http.StatusRequestEntityTooLarge)

	// Chunked: refused once the limit is crossed.
	a = n.do(t, http.MethodPut, "/big.bin", io.MultiReader(bytes.NewReader(randBytes(3, 1001))))
	requireError(t, a, http.StatusRequestEntityTooLarge)

	// Much larger, chunked.
	a = n.do(t, http.MethodPut, "/bigger.bin", io.MultiReader(bytes.NewReader(randBytes(4, 1<<20))))
	requireError(t, a, http.StatusRequestEntityTooLarge)

	// POST too.
	a = n.do(t, http.MethodPost, "/", io.MultiReader(bytes.NewReader(randBytes(5, 1001))))
	requireError(t, a, http.StatusRequestEntityTooLarge)

	waitFor(t, "tmp/ to be empty", n.tmpEmpty(t))
	n.requireNothingStored(t)

	// Exactly the limit, with a length and chunked.
	exact := randBytes(6, 1000)
	requireStatus(t, n.put(t, "/exact.bin", exact), http.StatusCreated)
	exact2 := randBytes(7, 1000)
	requireStatus(t, n.do(t, http.MethodPut, "/exact2.bin", io.MultiReader(bytes.NewReader(exact2))), http.StatusCreated)
	n.requireServed(t, sum(exact), exact)
	n.requireServed(t, sum(exact2), exact2)
	assert.Empty(t, files(t, filepath.Join(n.base, "tmp")))
}

func TestIdleTimeout(t *testing.T) {
	n := startNode(t, server.Config{IdleTimeout: 300 * time.Millisecond})
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
	_, err = io.WriteString(c, "PUT /stall.bin HTTP/1.1\r\nHost: dtfc.test\r\nContent-Length: 100\r\n\r\n0123456789")
	require.NoError(t, err)
	start := time.Now()
	a := readAnswer(t, c, http.MethodPut)
	requireError(t, a, http.StatusRequestTimeout)
	assert.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond, "answered before the idle timeout")
	waitFor(t, "tmp/ to be empty after the 408", n.tmpEmpty(t))
	n.requireNothingStored(t)

	// A body that trickles slower than the whole timeout but never idles
	// that long is fine.
	c2, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
	require.NoError(t, err)
	defer c2.Close()
	require.NoError(t, c2.SetDeadline(time.Now().Add(deadline)))
	body := []byte("0123456789")
	_, err = fmt.Fprintf(c2, "PUT /trickle.bin HTTP/1.1\r\nHost: dtfc.test\r\nContent-Length: %d\r\n\r\n", len(body))
	require.NoError(t, err)
	for i := range body {
		_, err := c2.Write(body[i : i+1])
		require.NoError(t, err)
		time.Sleep(50 * time.Millisecond) // pacing the trickle, not waiting on a condition
	}
	a = readAnswer(t, c2, http.MethodPut)
	requireStatus(t, a, http.StatusCreated)
}

func TestShortBody(t *testing.T) {
	n := startNode(t, server.Config{})
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(deadline)))
	_, err = io.WriteString(c, "PUT /short.bin HTTP/1.1\r\nHost: dtfc.test\r\nContent-Length: 100\r\n\r\n0123456789")
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	// The client is gone as far as the body goes; if an answer still comes
	// it must be an error.
	if resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodPut}); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		requireError(t, answer{status: resp.StatusCode, header: resp.Header, body: b}, http.StatusBadRequest)
	}
	waitFor(t, "tmp/ to be empty", n.tmpEmpty(t))
	n.requireNothingStored(t)

	// And a client that closes the connection outright.
	series := `dtfc_uploads_total{result="failed"}`
	failed := metricValue(t, n, series)
	c2, err := net.DialTimeout("tcp", strings.TrimPrefix(n.url, "http://"), deadline)
	require.NoError(t, err)
	_, err = io.WriteString(c2, "PUT /short2.bin HTTP/1.1\r\nHost: dtfc.test\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("x", 50000))
	require.NoError(t, err)
	require.NoError(t, c2.Close())
	// Wait until the server has seen the request and dropped it: its
	// metrics count one more failed upload.
	waitFor(t, "the dropped upload to be counted", func() bool {
		return metricValue(t, n, series) > failed
	})
	waitFor(t, "tmp/ to be empty", n.tmpEmpty(t))
	n.requireNothingStored(t)
}

// metricValue reads one sample of the node's /metrics (0 if absent).
func metricValue(t testing.TB, n *node, series string) float64 {
	t.Helper()
	a := n.get(t, "/metrics")
	requireStatus(t, a, http.StatusOK)
	for line := range strings.Lines(string(a.body)) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			require.NoError(t, err, "metric line %q", line)
			return v
		}
	}
	return 0
}

func TestAuth(t *testing.T) {
	n := startNode(t, server.Config{AuthTokens: []string{"s3cret", "n3xt"}})
	data := []byte("guarded")
	id := sum(data)

	writes := []struct {
		method, path string
		hdr          []string
	}{
		{http.MethodPut, "/g.txt", nil},
		{http.MethodPut, "/" + id, nil},
		{http.MethodPost, "/", []string{"X-Filename", "g.txt"}},
		{http.MethodDelete, "/" + id, nil},
		{http.MethodPut, "/refreshpeers", nil},
		{http.MethodPut, "/refreshpeers.html", nil},
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret-and-more", "Bearer s3cre", "Basic czNjcmV0", "s3cret", "Bearer "} {
		for _, w := range writes {
			hdr := append([]string(nil), w.hdr...)
			if auth != "" {
				hdr = append(hdr, "Authorization", auth)
			}
			a := n.do(t, w.method, w.path, bytes.NewReader(data), hdr...)
			requireError(t, a, http.StatusUnauthorized)
			assert.NotEmpty(t, a.header.Get("WWW-Authenticate"), "%s %s with %q", w.method, w.path, auth)
			assert.True(t, strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer"), a.header.Get("WWW-Authenticate"))
		}
	}
	n.requireNothingStored(t)

	// Reads stay open.
	requireError(t, n.get(t, "/"+id), http.StatusNotFound)
	requireStatus(t, n.get(t, "/health"), http.StatusOK)
	requireStatus(t, n.get(t, "/_status"), http.StatusOK)

	// Both tokens are accepted.
	a := n.put(t, "/g.txt", data, "Authorization", "Bearer s3cret")
	requireStatus(t, a, http.StatusCreated)
	a = n.put(t, "/g.txt", data, "Authorization", "Bearer n3xt")
	requireStatus(t, a, http.StatusOK)
	other := []byte("posted")
	a = n.do(t, http.MethodPost, "/", bytes.NewReader(other), "Authorization", "Bearer n3xt")
	requireStatus(t, a, http.StatusCreated)
	n.requireServed(t, id, data)
	n.requireServed(t, sum(other), other)

	a = n.do(t, http.MethodPut, "/refreshpeers", nil, "Authorization", "Bearer n3xt")
	assert.NotEqual(t, http.StatusUnauthorized, a.status)
	requireStatus(t, n.do(t, http.MethodDelete, "/"+id, nil, "Authorization", "Bearer s3cret"), http.StatusOK)
	requireError(t, n.get(t, "/"+id), http.StatusNotFound)
}

func TestOperations(t *testing.T) {
	n := startNode(t, server.Config{})
	for _, p := range []string{"/health", "/health.html"} {
		a := n.get(t, p)
		requireStatus(t, a, http.StatusOK)
		assert.Equal(t, "ok", strings.TrimSpace(string(a.body)), p)
		requireStatus(t, n.do(t, http.MethodHead, p, nil), http.StatusOK)
	}

	data := randBytes(8, 1234)
	requireStatus(t, n.put(t, "/s.bin", data), http.StatusCreated)

	a := n.get(t, "/_status")
	requireStatus(t, a, http.StatusOK)
	mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type"))
	assert.Equal(t, "application/json", mt)
	var st map[string]any
	require.NoError(t, json.Unmarshal(a.body, &st), "%s", a.body)
	for _, k := range []string{"node", "role", "blobs", "bytes", "queues"} {
		assert.Contains(t, st, k)
	}
	assert.Equal(t, n.me, st["node"])
	assert.Equal(t, "replica", st["role"])
	assert.EqualValues(t, 1, st["blobs"])
	assert.EqualValues(t, len(data), st["bytes"])
	assert.IsType(t, map[string]any{}, st["queues"])

	a = n.get(t, "/metrics")
	requireStatus(t, a, http.StatusOK)
	assert.Contains(t, string(a.body), "dtfc_http_request_duration_seconds")
	assert.Contains(t, string(a.body), "dtfc_blobs 1")
	assert.Contains(t, string(a.body), "dtfc_blobs")

	t.Run("wrong method", func(t *testing.T) {
		requireError(t, n.do(t, http.MethodPost, "/health", strings.NewReader("x")), http.StatusMethodNotAllowed)
		requireError(t, n.do(t, http.MethodPost, "/health.html", strings.NewReader("x")), http.StatusMethodNotAllowed)
		requireError(t, n.do(t, http.MethodPost, "/_status", strings.NewReader("x")), http.StatusMethodNotAllowed)
		requireError(t, n.do(t, http.MethodPatch, "/"+sum(data), strings.NewReader("x")), http.StatusMethodNotAllowed)
	})
	t.Run("unknown route", func(t *testing.T) {
		for _, tt := range []struct{ name, path string }{
			{"deep path", "/no/such/route"},
			{"suffix after an ID", "/" + sum(data) + "/nosuchsuffix"},
			{"reserved prefix", "/_nope/abc"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				requireError(t, n.get(t, tt.path), http.StatusNotFound)
			})
		}
	})

	t.Run("role cache", func(t *testing.T) {
		c := startNode(t, server.Config{Role: "cache"})
		var st map[string]any
		require.NoError(t, json.Unmarshal(c.get(t, "/_status").body, &st))
		assert.Equal(t, "cache", st["role"])
	})
}

func TestConcurrentSameUpload(t *testing.T) {
	n := startNode(t, server.Config{})
	data := randBytes(9, 1<<20)
	id := sum(data)
	const clients = 50
	statuses := make([]int, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, n.url+"/same.bin", bytes.NewReader(data))
			if err != nil {
				errs[i] = err
				return
			}
			resp, err := n.hc.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			var u uploadBody
			if err := json.NewDecoder(resp.Body).Decode(&u); err != nil {
				errs[i] = err
			} else if u.SHA512 != id {
				errs[i] = fmt.Errorf("answered sha512 %s", u.SHA512)
			}
			statuses[i] = resp.StatusCode
		})
	}
	wg.Wait()
	created := 0
	for i := range clients {
		require.NoError(t, errs[i], "client %d", i)
		assert.Contains(t, []int{http.StatusOK, http.StatusCreated}, statuses[i], "client %d", i)
		if statuses[i] == http.StatusCreated {
			created++
		}
	}
	assert.Equal(t, 1, created, "exactly one upload creates the blob")
	assert.Equal(t, []string{filepath.Join(id[0:2], id[2:4], id)}, files(t, filepath.Join(n.base, "blobs")))
	waitFor(t, "tmp/ to be empty", n.tmpEmpty(t))
	blobs, bytes := n.store.Stats()
	assert.EqualValues(t, 1, blobs)
	assert.EqualValues(t, len(data), bytes)
	n.requireServed(t, id, data)
}

func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("disk-full test needs root to mount a small tmpfs")
	}
	parent := t.TempDir()
	mnt := filepath.Join(parent, "data")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("disk-full test needs a small tmpfs, and mount failed: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	n := startNodeAt(t, parent, mnt, server.Config{})

	for _, chunked := range []bool{false, true} {
		big := randBytes(10, 8<<20)
		var body io.Reader = bytes.NewReader(big)
		if chunked {
			body = io.MultiReader(body)
		}
		a := n.do(t, http.MethodPut, "/big.bin", body)
		requireError(t, a, http.StatusInsufficientStorage)
		waitFor(t, "tmp/ to be empty after the 507", n.tmpEmpty(t))
		n.requireNothingStored(t)
	}

	small := []byte("there is room for this")
	requireStatus(t, n.put(t, "/small.txt", small), http.StatusCreated)
	n.requireServed(t, sum(small), small)
}
