package deploy_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// corsPageJS is the script of the pages the browser runs the uploads and
// reads from: what an application's page would do with fetch(). Every
// call resolves to {ok: <answer>} or {error: <name>, message}, so a
// fetch() the browser refuses shows as {error: "TypeError"}.
const corsPageJS = `
const b64 = bytes => btoa(String.fromCharCode(...bytes));
const unb64 = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
const hexOf = buf => [...new Uint8Array(buf)].map(b => b.toString(16).padStart(2, "0")).join("");

// answer reads what a page may read of a fetch() answer. X-Dtfc-Source
// is not exposed: the browser must hide it.
async function answer(res) {
  const body = new Uint8Array(await res.arrayBuffer());
  const get = n => res.headers.get(n);
  return {
    status: res.status,
    etag: get("ETag"), sha512: get("X-Content-SHA512"), location: get("Location"),
    contentRange: get("Content-Range"), contentType: get("Content-Type"),
    source: get("X-Dtfc-Source"), body: b64(body),
  };
}

async function attempt(f) {
  try { return {ok: await f()}; } catch (e) { return {error: e.name, message: String(e.message)}; }
}

// upload PUTs the bytes with the headers that make a preflight: a
// Content-Type not safelisted, the expected ID, and the token.
function upload(url, data, type, token) {
  return attempt(async () => {
    const bytes = unb64(data);
    const id = hexOf(await crypto.subtle.digest("SHA-512", bytes));
    const headers = {"Content-Type": type, "X-Content-SHA512": id};
    if (token) headers["Authorization"] = "Bearer " + token;
    const res = await fetch(url, {method: "PUT", headers, body: bytes});
    return Object.assign(await answer(res), {id});
  });
}

function read(url, headers) {
  return attempt(async () => answer(await fetch(url, {headers: headers || {}})));
}

// show puts url in the page as an image, as a page may before it reads
// the same URL with fetch(): a request without Origin, cached by the
// browser.
function show(url) {
  return attempt(() => new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img.naturalWidth);
    img.onerror = () => reject(new Error("image did not load"));
    img.src = url;
    document.body.append(img);
  }));
}
`

// fetchAnswer is what corsPageJS's answer() returns.
type fetchAnswer struct {
	Status       int     `json:"status"`
	ID           string  `json:"id"` // upload only: the SHA-512 the page computed
	ETag         *string `json:"etag"`
	SHA512       *string `json:"sha512"`
	Location     *string `json:"location"`
	ContentRange *string `json:"contentRange"`
	ContentType  *string `json:"contentType"`
	Source       *string `json:"source"`
	Body         string  `json:"body"` // base64
}

// attempt is a call of corsPageJS: Ok, or the exception's name.
type attempt[T any] struct {
	Ok      *T     `json:"ok"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

func (a attempt[T]) String() string {
	if a.Ok != nil {
		b, _ := json.Marshal(a.Ok)
		return string(b)
	}
	return a.Error + ": " + a.Message
}

// corsPage serves, on its own loopback port (an origin of its own), an
// HTML page holding corsPageJS.
func corsPage(t *testing.T, title string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintf(w, "<!doctype html>\n<html><head><title>%s</title><script>%s</script></head><body><h1>%s</h1></body></html>\n", title, corsPageJS, title)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// call runs a corsPageJS expression in the tab and decodes its result.
func call[T any](t *testing.T, ctx context.Context, js string) attempt[T] {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, browserDeadline)
	defer cancel()
	raw, err := chromedp.Run(cctx, chromedp.Evaluate[json.RawMessage](js, chromedp.EvalAwaitPromise))
	require.NoError(t, err, "evaluating %s", js)
	var a attempt[T]
	require.NoError(t, json.Unmarshal(raw, &a), "result of %s: %s", js, raw)
	return a
}

// jsString quotes s for a script.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// optionsAnswers counts the node's answers to OPTIONS with status code,
// from its /metrics.
func optionsAnswers(t *testing.T, hc *http.Client, base string, code int) int {
	t.Helper()
	res, err := hc.Get(base + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	n := 0
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "dtfc_http_request_duration_seconds_count{") &&
			strings.Contains(line, `method="OPTIONS"`) && strings.Contains(line, `code="`+strconv.Itoa(code)+`"`) {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			require.NoError(t, err, "metric line %q", line)
			n += int(v)
		}
	}
	require.NoError(t, sc.Err())
	return n
}

// TestCORSInChromium runs a page's uploads and reads in headless Chromium
// against a real node started with --cors-origins naming the page's
// origin: a PUT with a token and an expected ID (so a preflight), the
// blob read back (after the page showed it as an image, so the browser
// holds an answer without CORS headers), a range and the JSON errors,
// with the exposed headers read from JavaScript. A page of another
// origin (another port) gets nothing: its fetch() rejects with a
// TypeError, its upload is never sent.
func TestCORSInChromium(t *testing.T) {
	ctx := newBrowser(t)
	allowed := corsPage(t, "allowed app")
	other := corsPage(t, "other origin")
	const token = "t0k-cors"
	c := cluster.Start(t, cluster.Options{
		Nodes:     1,
		Direct:    true,
		Secret:    "cluster-s3cret",
		AuthToken: token,
		// A trailing "/" is the operator's to write; the browser sends
		// none.
		Args: []string{"--cors-origins", "https://app.example.com", "--cors-origins", allowed.URL + "/"},
	})
	node := c.Nodes[0]
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)

	// A GIF, with random bytes after it (ignored by the decoder), so that
	// every run uploads new bytes.
	data := append([]byte(nil), gif...)
	var salt [32]byte
	_, _ = rand.Read(salt[:])
	data = append(data, salt[:]...)
	sum := sha512.Sum512(data)
	id := hex.EncodeToString(sum[:])
	blobURL := node.URL + "/" + id

	nav := func(t *testing.T, url string) {
		t.Helper()
		nctx, cancel := context.WithTimeout(ctx, browserDeadline)
		defer cancel()
		require.NoError(t, chromedp.Do(nctx, chromedp.Navigate(url)), "loading %s", url)
	}

	t.Run("allowed origin", func(t *testing.T) {
		nav(t, allowed.URL+"/")
		preflights := optionsAnswers(t, hc, node.URL, http.StatusNoContent)

		up := call[fetchAnswer](t, ctx, fmt.Sprintf(`upload(%s, %s, "image/gif", %s)`,
			jsString(node.URL+"/pixel.gif"), jsString(base64.StdEncoding.EncodeToString(data)), jsString(token)))
		require.NotNil(t, up.Ok, "the page's upload failed: %s", up)
		assert.Equal(t, http.StatusCreated, up.Ok.Status, "upload: %s", up)
		assert.Equal(t, id, up.Ok.ID, "the page computed the same SHA-512")
		if assert.NotNil(t, up.Ok.Location, "Location is exposed") {
			assert.Equal(t, blobURL, *up.Ok.Location)
		}
		var stored struct {
			SHA512 string `json:"sha512"`
			Size   int    `json:"size"`
		}
		body, _ := base64.StdEncoding.DecodeString(up.Ok.Body)
		require.NoError(t, json.Unmarshal(body, &stored), "upload answer %q", body)
		assert.Equal(t, id, stored.SHA512)
		assert.Equal(t, len(data), stored.Size)
		assert.Greater(t, optionsAnswers(t, hc, node.URL, http.StatusNoContent), preflights, "the upload was preflighted")

		// The node holds the bytes (read without a browser).
		res, err := hc.Get(blobURL)
		require.NoError(t, err)
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Equal(t, data, got, "the node stored the page's bytes")

		// The page shows it first (no Origin: no CORS headers; cached),
		// then reads it: the browser must not answer the read from that.
		img := call[int](t, ctx, fmt.Sprintf(`show(%s)`, jsString(blobURL)))
		require.NotNil(t, img.Ok, "the image: %s", img)
		assert.Equal(t, 1, *img.Ok, "a 1×1 image")

		get := call[fetchAnswer](t, ctx, fmt.Sprintf(`read(%s)`, jsString(blobURL)))
		require.NotNil(t, get.Ok, "the page's read failed: %s", get)
		assert.Equal(t, http.StatusOK, get.Ok.Status)
		assert.Equal(t, base64.StdEncoding.EncodeToString(data), get.Ok.Body, "the page read the bytes it uploaded")
		if assert.NotNil(t, get.Ok.ETag, "ETag is exposed") {
			assert.Equal(t, `"`+id+`"`, *get.Ok.ETag)
		}
		if assert.NotNil(t, get.Ok.SHA512, "X-Content-SHA512 is exposed") {
			assert.Equal(t, id, *get.Ok.SHA512)
		}
		if assert.NotNil(t, get.Ok.ContentType) {
			assert.Equal(t, "image/gif", *get.Ok.ContentType)
		}
		assert.Nil(t, get.Ok.Source, "X-Dtfc-Source is not exposed: the browser hides it")

		part := call[fetchAnswer](t, ctx, fmt.Sprintf(`read(%s, {"Range": "bytes=6-9"})`, jsString(blobURL)))
		require.NotNil(t, part.Ok, "the page's range read failed: %s", part)
		assert.Equal(t, http.StatusPartialContent, part.Ok.Status)
		if assert.NotNil(t, part.Ok.ContentRange, "Content-Range is exposed") {
			assert.Equal(t, fmt.Sprintf("bytes 6-9/%d", len(data)), *part.Ok.ContentRange)
		}
		assert.Equal(t, base64.StdEncoding.EncodeToString(data[6:10]), part.Ok.Body)

		// Errors are readable too, and CORS opens no door: without the
		// token the upload is refused.
		for _, e := range []struct {
			js     string
			status int
		}{
			{fmt.Sprintf(`read(%s)`, jsString(node.URL+"/"+strings.Repeat("0", 128))), http.StatusNotFound},
			{fmt.Sprintf(`upload(%s, %s, "text/plain; charset=utf-8", "")`, jsString(node.URL+"/no-token.txt"), jsString(base64.StdEncoding.EncodeToString([]byte("no token")))), http.StatusUnauthorized},
		} {
			a := call[fetchAnswer](t, ctx, e.js)
			require.NotNil(t, a.Ok, "%s: %s", e.js, a)
			assert.Equal(t, e.status, a.Ok.Status, "%s", e.js)
			var msg struct {
				Error string `json:"error"`
			}
			body, _ := base64.StdEncoding.DecodeString(a.Ok.Body)
			assert.NoError(t, json.Unmarshal(body, &msg), "%s: the page reads the JSON error %q", e.js, body)
			assert.NotEmpty(t, msg.Error, "%s", e.js)
		}
	})

	t.Run("other origin", func(t *testing.T) {
		nav(t, other.URL+"/")
		refused := optionsAnswers(t, hc, node.URL, http.StatusForbidden)

		otherData := []byte("from a page the node does not list\n")
		up := call[fetchAnswer](t, ctx, fmt.Sprintf(`upload(%s, %s, "text/plain; charset=utf-8", %s)`,
			jsString(node.URL+"/other.txt"), jsString(base64.StdEncoding.EncodeToString(otherData)), jsString(token)))
		assert.Nil(t, up.Ok, "the upload of a page not listed succeeded: %s", up)
		assert.Equal(t, "TypeError", up.Error, "fetch() rejects: %s", up)
		assert.Greater(t, optionsAnswers(t, hc, node.URL, http.StatusForbidden), refused, "the node refused the preflight")
		// The PUT itself was never sent: nothing stored.
		otherSum := sha512.Sum512(otherData)
		res, err := hc.Get(node.URL + "/" + hex.EncodeToString(otherSum[:]))
		require.NoError(t, err)
		res.Body.Close()
		assert.Equal(t, http.StatusNotFound, res.StatusCode, "the refused upload stored nothing")

		// A plain read needs no preflight: the node serves it, the
		// browser keeps it from the page.
		get := call[fetchAnswer](t, ctx, fmt.Sprintf(`read(%s)`, jsString(blobURL)))
		assert.Nil(t, get.Ok, "a page not listed read the blob: %s", get)
		assert.Equal(t, "TypeError", get.Error, "fetch() rejects: %s", get)

		// Showing it as an image needs no CORS: still fine.
		img := call[int](t, ctx, fmt.Sprintf(`show(%s)`, jsString(blobURL)))
		assert.NotNil(t, img.Ok, "the image: %s", img)
	})
}
