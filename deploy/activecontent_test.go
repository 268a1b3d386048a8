package deploy_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
)

// callbacks is a loopback HTTP server that records which pages called it:
// GET /hit/<case>/<what>. A script in an uploaded page calls it with
// what=script; an image after the script, which loads whether or not
// scripts run, with what=img.
type callbacks struct {
	url  string
	mu   sync.Mutex
	hits map[string]int // "<case>/<what>"
}

// gif is a 1×1 transparent GIF, the answer to an image's callback.
var gif = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

func newCallbacks(t *testing.T) *callbacks {
	t.Helper()
	cb := &callbacks{hits: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := strings.CutPrefix(r.URL.Path, "/hit/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		cb.mu.Lock()
		cb.hits[key]++
		cb.mu.Unlock()
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Cache-Control", "no-store")
		if strings.HasSuffix(key, "/img") {
			w.Header().Set("Content-Type", "image/gif")
			w.Write(gif)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("called back\n"))
	}))
	t.Cleanup(srv.Close)
	cb.url = srv.URL
	return cb
}

func (cb *callbacks) count(key string) int {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	return cb.hits[key]
}

// activePages are an HTML page and an SVG image whose script, if it runs,
// calls back (a synchronous request: it is answered before the parser
// goes on, so before the load event) and marks the document; the image
// after it calls back whether scripts run or not, proving the page was
// processed past the script. Their callback keys are name-html and
// name-svg.
func activePages(cbURL, name string) (html, svg []byte) {
	script := func(key string) string {
		return fmt.Sprintf(`var x = new XMLHttpRequest();
x.open("GET", "%s/hit/%s/script", false);
try { x.send(); } catch (e) {}
document.documentElement.setAttribute("data-ran", "yes");`, cbURL, key)
	}
	html = fmt.Appendf(nil, `<!doctype html>
<html><head><title>%[2]s</title></head><body>
<p>an uploaded page</p>
<script>%[3]s</script>
<img src="%[1]s/hit/%[2]s-html/img" alt="">
</body></html>
`, cbURL, name, script(name+"-html"))
	svg = fmt.Appendf(nil, `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">
<script type="text/javascript"><![CDATA[
%[3]s
]]></script>
<rect width="100" height="100" fill="teal"/>
<image href="%[1]s/hit/%[2]s-svg/img" width="1" height="1"/>
</svg>
`, cbURL, name, script(name+"-svg"))
	return html, svg
}

// visit loads url in the browser tab, waiting for its load event (after
// which a synchronous callback of its script, had it run, was answered),
// and reports whether the script ran: the callback server's view, and
// the document's (read through the DOM domain, which needs no script).
func visit(t *testing.T, ctx context.Context, cb *callbacks, url, key string) (calledBack, marked bool) {
	t.Helper()
	nctx, cancel := context.WithTimeout(ctx, browserDeadline)
	defer cancel()
	require.NoError(t, chromedp.Do(nctx, chromedp.Navigate(url)), "loading %s", url)
	attr, err := chromedp.Run(nctx, chromedp.AttributeValue(chromedp.CSS(":root"), "data-ran"))
	require.NoError(t, err, "reading %s's root element", url)
	require.Positive(t, cb.count(key+"/img"), "%s: the image after the script did not load: the page was not processed", url)
	return cb.count(key+"/script") > 0, attr.Exists
}

// TestActiveContentSandboxed uploads an HTML page and an SVG image whose
// scripts would call a loopback server, and opens them in headless
// Chromium from real dtfc nodes: a local hit, a miss pulled from a peer,
// and (with nginx installed) a hit nginx sends after dtfc's
// X-Accel-Redirect. Content-Security-Policy: sandbox stops every script;
// the same pages from a plain server without the header run theirs, so
// the test can tell.
func TestActiveContentSandboxed(t *testing.T) {
	ctx := newBrowser(t)
	cb := newCallbacks(t)

	// The control: the same kind of pages, no policy. Their scripts run.
	html, svg := activePages(cb.url, "control")
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/page.html":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write(html)
		case "/image.svg":
			w.Header().Set("Content-Type", "image/svg+xml")
			w.Write(svg)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(plain.Close)
	for _, p := range []struct{ path, key string }{{"/page.html", "control-html"}, {"/image.svg", "control-svg"}} {
		called, marked := visit(t, ctx, cb, plain.URL+p.path, p.key)
		require.True(t, called, "control %s: the script did not call back; the test cannot tell a sandbox from a page that never runs", p.path)
		require.True(t, marked, "control %s: the script did not mark the document", p.path)
	}

	c := cluster.Start(t, cluster.Options{Nodes: 2, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleCache}, Direct: true})
	replica, cache := c.Nodes[0], c.Nodes[1]
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)

	// check uploads the pages to the replica and opens them from base in
	// the tab of ctx; before runs first for each ID, if set. It returns
	// the IDs.
	check := func(t *testing.T, ctx context.Context, base, name string, before func(id string)) []string {
		html, svg := activePages(cb.url, name)
		var ids []string
		for _, p := range []struct {
			file, key, ctype string
			data             []byte
		}{{"page.html", name + "-html", "text/html; charset=utf-8", html}, {"image.svg", name + "-svg", "image/svg+xml", svg}} {
			id := putBlob(t, hc, replica.URL, p.file, p.data)
			ids = append(ids, id)
			if before != nil {
				before(id)
			}
			res, err := hc.Head(base + "/" + id)
			require.NoError(t, err)
			res.Body.Close()
			require.Equal(t, p.ctype, res.Header.Get("Content-Type"), "%s is served as active content", p.file)
			called, marked := visit(t, ctx, cb, base+"/"+id, p.key)
			assert.False(t, called, "%s from %s: the script called back", p.file, base)
			assert.False(t, marked, "%s from %s: the script marked the document", p.file, base)
		}
		return ids
	}

	t.Run("local hit", func(t *testing.T) { check(t, ctx, replica.URL, "local", nil) })

	t.Run("miss pulled from a peer", func(t *testing.T) {
		held := func(id string) int {
			res, err := hc.Get(cache.URL + "/" + id + "/nopeerload")
			require.NoError(t, err)
			res.Body.Close()
			return res.StatusCode
		}
		ids := check(t, ctx, cache.URL, "miss", func(id string) {
			// A cache gets no pushed uploads: the browser's GET is a miss.
			require.Equal(t, http.StatusNotFound, held(id), "the cache already holds the blob")
		})
		for _, id := range ids {
			assert.Equal(t, http.StatusOK, held(id), "the browser's GET pulled the blob from the replica")
		}
		screenshot(t, ctx, "svg-sandboxed.png")
	})

	t.Run("through nginx", func(t *testing.T) {
		nginx, err := exec.LookPath("nginx")
		if err != nil {
			t.Skipf("nginx is not installed: %s", nginxInstall)
		}
		ngx := startNginx(t, nginx, replica)
		// A browser of its own, stopped before nginx (cleanups run last
		// first): nginx's graceful stop waits for the idle connections
		// Chromium opens ahead of need, up to a minute.
		check(t, newBrowser(t), ngx.URL, "nginx", nil)
	})
}
