package server_test

import (
	"bufio"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

// routerNode is a server over a real store, called in-process: no
// listener, so one fuzz input costs a handler call.
type routerNode struct {
	name  string
	api   *server.Server
	store *blobstore.Store
}

func newRouterNode(t testing.TB, name string, cfg server.Config, withCluster bool) *routerNode {
	t.Helper()
	dir := t.TempDir()
	store, err := blobstore.Open(filepath.Join(dir, "data"), blobstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	cfg.Me = "http://dtfc.test"
	if withCluster {
		// As dtfc serve builds it, without a peer list: a node alone, but
		// with the node-to-node routes mounted. New starts nothing.
		c, err := peer.New(store, peer.Options{Me: cfg.Me})
		require.NoError(t, err)
		cfg.Cluster = c
	}
	api := server.New(cfg, store)
	t.Cleanup(api.Wait)
	return &routerNode{name: name, api: api, store: store}
}

// validHeaders reports whether every header field would pass net/http's
// server, which answers 400 itself to the others before any handler.
func validHeaders(h http.Header) bool {
	for k, vs := range h {
		if k == "" || strings.ContainsFunc(k, func(r rune) bool {
			return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r)
		}) {
			return false
		}
		for _, v := range vs {
			if strings.ContainsFunc(v, func(r rune) bool { return (r < ' ' && r != '\t') || r == 0x7f }) {
				return false
			}
		}
	}
	return len(h["Host"]) == 0 // the request line's Host is the only one
}

// FuzzRouter feeds the whole router random methods, request targets
// (encoded, overlong, reserved), headers (Range, If-None-Match,
// Content-Length and Transfer-Encoding that disagree with the body,
// X-Content-SHA512, Authorization, multipart types) and bodies, parsed
// as net/http's server parses a request. Whatever comes, the server must
// not panic (http.ErrAbortHandler, a deliberately cut transfer, aside),
// must not answer 5xx to a client's mistake (only 503 and 507 are
// allowed: the store closing, the disk full), must answer every error as
// JSON {"error": "..."}, and must leave nothing new under blobs/ nor in
// tmp/ after a 4xx. Half the inputs go to a node with a write token and
// an upload limit, the other half to an open node with the node-to-node
// routes mounted.
func FuzzRouter(f *testing.F) {
	blob := []byte("hello, fuzz\n")
	bs := sha512.Sum512(blob)
	bid := hex.EncodeToString(bs[:])
	for _, s := range []struct {
		method, target, headers string
		body                    string
		variant                 uint8
	}{
		{"GET", "/", "", "", 0},
		{"GET", "/health", "", "", 1},
		{"HEAD", "/health.html", "", "", 0},
		{"GET", "/_status", "", "", 0},
		{"GET", "/metrics", "", "", 1},
		{"PUT", "/hello.txt", "Content-Type: text/plain\r\n", string(blob), 0},
		{"PUT", "/hello.txt", "Authorization: Bearer t0k\r\n", string(blob), 1},
		{"PUT", "/hello.txt", "Authorization: Bearer nope\r\n", string(blob), 1},
		{"PUT", "/" + bid, "", string(blob), 0},
		{"PUT", "/" + strings.ToUpper(bid), "", "not the bytes", 0},
		{"PUT", "/x", "X-Content-SHA512: " + bid + "\r\n", "other bytes", 0},
		{"PUT", "/x", "X-Content-SHA512: zz\r\n", "b", 0},
		{"PUT", "/x?replicas=2", "", "some bytes", 0},
		{"PUT", "/x?replicas=0", "", "some bytes", 0},
		{"PUT", "/x?replicas=99999", "", "some bytes", 1},
		{"PUT", "/_status", "", "reserved", 0},
		{"PUT", "/_x", "", "reserved", 0},
		{"PUT", "/%2e%2e", "", "dots", 0},
		{"PUT", "/a%2Fb", "", "slash", 0},
		{"PUT", "/%00", "", "nul", 0},
		{"PUT", "/" + strings.Repeat("a", 300), "", "long name", 0},
		{"PUT", "/" + strings.Repeat("%e2%82%ac", 100), "", "long utf-8 name", 0},
		{"PUT", "/%ff%fe", "", "not utf-8", 0},
		{"PUT", "/short", "Content-Length: 100\r\n", "only a few bytes", 0},
		{"PUT", "/long", "Content-Length: 3\r\n", "more bytes than announced", 0},
		{"PUT", "/chunked", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n", 0},
		{"PUT", "/badchunk", "Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n", 0},
		{"PUT", "/cut", "Transfer-Encoding: chunked\r\n", "10\r\nhel", 0},
		{"PUT", "/big", "Content-Length: 99999999\r\n", "x", 1},
		{"POST", "/", "X-Filename: a.txt\r\n", "post body", 0},
		{"POST", "/?filename=_a", "", "post body", 0},
		{"POST", "/", "Content-Type: multipart/form-data; boundary=b\r\n", "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\n\r\nfile bytes\r\n--b--\r\n", 0},
		{"POST", "/", "Content-Type: multipart/form-data; boundary=b\r\n", "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nno file\r\n--b--\r\n", 0},
		{"POST", "/", "Content-Type: multipart/form-data; boundary=b\r\n", "--b\r\nbroken", 0},
		{"POST", "/", "Content-Type: multipart/form-data\r\n", "no boundary", 0},
		{"GET", "/" + bid, "Range: bytes=0-3\r\n", "", 0},
		{"GET", "/" + bid, "Range: bytes=0-1,5-6\r\n", "", 0},
		{"GET", "/" + bid, "Range: bytes=99-\r\n", "", 0},
		{"GET", "/" + bid, "Range: bytes=-0\r\n", "", 0},
		{"GET", "/" + bid, "If-None-Match: \"" + bid + "\"\r\n", "", 0},
		{"GET", "/" + bid, "If-None-Match: *\r\n", "", 0},
		{"GET", "/" + bid, "If-Range: \"x\"\r\nRange: bytes=0-1\r\n", "", 0},
		{"GET", "/" + bid + "/nopeerload", "", "", 0},
		{"GET", "/" + bid + "?nopeerload=1", "", "", 0},
		{"GET", "/" + bid, "X-Dtfc-Accel-Redirect: /blobs\r\n", "", 0},
		{"GET", "/" + bid, "X-Dtfc-Accel-Redirect: ../x\r\n", "", 0},
		{"HEAD", "/" + strings.Repeat("0", 128), "", "", 0},
		{"GET", "/" + strings.Repeat("0", 127), "", "", 0},
		{"GET", "/" + strings.Repeat("g", 128), "", "", 0},
		{"DELETE", "/" + bid, "", "", 0},
		{"DELETE", "/" + bid, "Authorization: Bearer t0k\r\n", "", 1},
		{"DELETE", "/nothex", "", "", 0},
		{"PUT", "/refreshpeers", "", "", 0},
		{"PUT", "/refreshpeers.html", "Authorization: Bearer t0k\r\n", "", 1},
		{"OPTIONS", "*", "", "", 0},
		{"PATCH", "/" + bid, "", "", 0},
		{"BREW", "/", "", "", 0},
		{"GET", "/_internal/digests", "", "", 0},
		{"GET", "/_internal/state/" + bid, "", "", 0},
		{"POST", "/_internal/changes", "Content-Type: application/json\r\n", "{\"changes\":[{}]}", 0},
		{"POST", "/_internal/lookup", "", "[\"" + bid + "\"]", 0},
		{"PUT", "/_internal/blobs/" + bid, "", string(blob), 0},
		{"GET", "/_internal/states?after=zz", "", "", 0},
		{"GET", "/_internal/digests/zz", "", "", 0},
		{"GET", "http://other.host/health", "", "", 0},
		{"GET", "/a/b/c/d", "", "", 0},
		{"GET", "//", "", "", 0},
		{"GET", "/?" + strings.Repeat("x=1&", 100), "", "", 0},
	} {
		f.Add(s.method, s.target, s.headers, []byte(s.body), s.variant)
	}
	nodes := []*routerNode{
		newRouterNode(f, "open, with node-to-node routes", server.Config{}, true),
		newRouterNode(f, "write token, 64 KiB upload limit", server.Config{AuthTokens: []string{"t0k"}, MaxUploadBytes: 64 << 10}, false),
	}

	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte, variant uint8) {
		n := nodes[variant%2]
		if headers != "" && !strings.HasSuffix(headers, "\r\n") {
			headers += "\r\n"
		}
		if lower := strings.ToLower(headers); !strings.Contains(lower, "content-length:") && !strings.Contains(lower, "transfer-encoding:") {
			// A body without a length is no body at all: announce it,
			// unless the input says otherwise.
			headers += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
		}
		raw := method + " " + target + " HTTP/1.1\r\nHost: dtfc.test\r\n" + headers + "\r\n" + string(body)
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || !validHeaders(req.Header) {
			return // net/http's server answers 400 itself
		}
		req.RemoteAddr = "192.0.2.1:4321"
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req = req.WithContext(ctx)

		// What the body would be stored as, if it were: a 4xx must not
		// leave it behind.
		sum := sha512.Sum512(body)
		bodyID, _ := dtfc.ParseID(hex.EncodeToString(sum[:]))
		_, statErr := os.Lstat(n.store.Path(bodyID))
		heldBefore := statErr == nil
		blobsBefore, _ := n.store.Stats()

		rec := httptest.NewRecorder()
		aborted := serveRecovering(t, n, rec, req)
		if aborted {
			return // a transfer cut on purpose: no status to check
		}
		status := rec.Code
		desc := func() string {
			return n.name + ": " + strings.ReplaceAll(method+" "+target, "\n", `\n`) + ": " + rec.Result().Status + " " + strings.TrimSpace(rec.Body.String())
		}
		if status >= 500 && status != http.StatusServiceUnavailable && status != http.StatusInsufficientStorage {
			t.Fatalf("a 5xx to a client's request: %s", desc())
		}
		if status >= 400 && req.Method != http.MethodHead {
			mt, _, _ := mime.ParseMediaType(rec.Header().Get("Content-Type"))
			var e struct {
				Error string `json:"error"`
			}
			if mt != "application/json" || json.Unmarshal(rec.Body.Bytes(), &e) != nil || strings.TrimSpace(e.Error) == "" {
				t.Fatalf("an error answer that is not JSON {\"error\": ...} (Content-Type %q): %s", rec.Header().Get("Content-Type"), desc())
			}
		}
		if status >= 400 && status < 500 {
			blobsAfter, _ := n.store.Stats()
			_, statErr := os.Lstat(n.store.Path(bodyID))
			switch {
			case blobsAfter > blobsBefore:
				t.Fatalf("a 4xx stored a blob (%d blobs before, %d after): %s", blobsBefore, blobsAfter, desc())
			case !heldBefore && statErr == nil:
				t.Fatalf("a 4xx left the body under blobs/: %s", desc())
			}
		}
		if entries, err := os.ReadDir(filepath.Join(n.store.Dir(), "tmp")); err == nil && len(entries) > 0 {
			t.Fatalf("%d temp files left after %s", len(entries), desc())
		}
		if req.Method == http.MethodPut && status < 300 && strings.HasPrefix(req.URL.Path, "/_") &&
			!strings.HasPrefix(req.URL.Path, "/_internal/") {
			t.Fatalf("a PUT to a reserved path succeeded: %s", desc())
		}
	})
}

// serveRecovering serves req, failing t on a panic other than
// http.ErrAbortHandler (which net/http turns into a cut connection, as a
// handler means it to); it reports whether the handler aborted so.
func serveRecovering(t *testing.T, n *routerNode, w http.ResponseWriter, req *http.Request) (aborted bool) {
	defer func() {
		if p := recover(); p != nil {
			if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				aborted = true
				return
			}
			t.Fatalf("%s: %s %s panicked: %v\n%s", n.name, req.Method, req.RequestURI, p, debug.Stack())
		}
	}()
	n.api.ServeHTTP(w, req)
	return false
}
