package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

const chromiumPath = "/usr/bin/chromium"

// The page's reload period (server/page.go) and the harness's anti-entropy
// interval, which bounds how soon node 0 notices a peer is gone.
const (
	pageRefresh     = 5 * time.Second
	antiEntropy     = 2 * time.Second
	browserDeadline = 60 * time.Second
)

// newBrowser starts headless Chromium with the flags this machine needs (no
// sandbox as root, no network of its own, a fresh profile) and returns a
// context of one tab. The browser is stopped in t.Cleanup.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s is not installed: apt-get install -y chromium", chromiumPath)
	}
	out := &lockedBuffer{}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
		chromedp.CombinedOutput(out),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		if t.Failed() {
			t.Logf("chromium output:\n%s", out.String())
		}
	})
	// The first Run starts the browser; it lives as long as ctx.
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string]("navigator.userAgent"))
	require.NoError(t, err, "starting %s\n%s", chromiumPath, out.String())
	t.Logf("browser: %s", v)
	return ctx
}

// lockedBuffer collects the browser's output, written by chromedp's
// goroutine and read by the test's.
type lockedBuffer struct{ cluster.Output }

// String returns the output without the complaints about D-Bus, which
// is absent here and irrelevant.
func (b *lockedBuffer) String() string {
	var keep []string
	for _, l := range strings.Split(b.Output.String(), "\n") {
		if !strings.Contains(l, "dbus") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// peerRow is one row of the page's peer table, as the browser shows it.
type peerRow struct {
	URL   string `json:"url"`
	State string `json:"state"` // data-state
	Text  string `json:"text"`  // the state cell's text
	Queue string `json:"queue"`
}

// pageView is what the test reads off the rendered page.
type pageView struct {
	Title     string    `json:"title"`
	Generated string    `json:"generated"`
	Node      string    `json:"node"`
	Blobs     string    `json:"blobs"`
	Disk      string    `json:"disk"`
	Banner    string    `json:"banner"`
	Scripts   int       `json:"scripts"`
	Refresh   string    `json:"refresh"`
	Errors    string    `json:"errors"`
	Peers     []peerRow `json:"peers"`
	Scrub     string    `json:"scrub"`
	Complete  bool      `json:"complete"`
	LocalHref string    `json:"href"`
}

// readPage reads the page the tab shows now, from the DOM. It fails while
// the page is being replaced by its own refresh: callers poll.
const readPageJS = `(() => {
  const q = s => document.querySelector(s);
  const text = s => (q(s) ? q(s).textContent.trim() : "");
  return JSON.stringify({
    title: document.title,
    generated: q("#generated") ? q("#generated").getAttribute("datetime") : "",
    node: text("#node"),
    blobs: text("#blobs"),
    disk: text("#disk"),
    banner: text(".banner"),
    scripts: document.scripts.length,
    refresh: q('meta[http-equiv="refresh"]') ? q('meta[http-equiv="refresh"]').content : "",
    errors: text("#errors"),
    scrub: text("#scrub"),
    complete: document.readyState === "complete",
    href: location.href,
    peers: [...document.querySelectorAll("#peers tr[data-peer]")].map(r => ({
      url: r.dataset.peer,
      state: r.dataset.state,
      text: r.querySelector(".state").textContent.trim(),
      queue: r.querySelector("td.num").textContent.trim(),
    })),
  });
})()`

func readPage(ctx context.Context) (pageView, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(rctx, chromedp.Evaluate[string](readPageJS))
	if err != nil {
		return pageView{}, err
	}
	var v pageView
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return pageView{}, err
	}
	if !v.Complete || v.Generated == "" {
		return v, fmt.Errorf("page not loaded yet (readyState not complete)")
	}
	return v, nil
}

// waitPage polls the page the tab shows until cond holds or d passes. It
// never navigates: the page must get there by its own <meta refresh>.
// It returns the last view read and every distinct generation time seen.
func waitPage(t *testing.T, ctx context.Context, d time.Duration, what string, cond func(pageView) bool) (pageView, []string) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last pageView
	var lastErr error
	var gens []string
	for {
		v, err := readPage(ctx)
		if err == nil {
			last, lastErr = v, nil
			if len(gens) == 0 || gens[len(gens)-1] != v.Generated {
				gens = append(gens, v.Generated)
			}
			if cond(v) {
				return v, gens
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("status page: %s: not within %v (page generated at %v); last read: %+v; last error: %v", what, d, gens, last, lastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100)) // 100: PNG
	require.NoError(t, err, "screenshot")
	require.True(t, bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")), "the screenshot is not a PNG")
	path := filepath.Join(artifactDir(t), name)
	require.NoError(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
	return path
}

// TestStatusPageInChromium renders GET / of a real node in headless
// Chromium: every peer up; then a peer stops, and the page, reloading
// itself, marks it down within its refresh period.
func TestStatusPageInChromium(t *testing.T) {
	ctx := newBrowser(t)
	c := cluster.Start(t, cluster.Options{Nodes: 3, Direct: true})
	n0 := c.Nodes[0]
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	putBlob(t, hc, n0.URL, "hello.txt", []byte("hello, status page\n"))

	_, err := chromedp.Run(ctx, chromedp.Navigate(n0.URL+"/"))
	require.NoError(t, err)

	up, _ := waitPage(t, ctx, 30*time.Second, "every peer up", func(v pageView) bool {
		if len(v.Peers) != 2 {
			return false
		}
		for _, p := range v.Peers {
			if p.State != "up" {
				return false
			}
		}
		return true
	})
	assert.Contains(t, up.Title, n0.URL)
	assert.Equal(t, n0.URL, up.Node)
	assert.Equal(t, "1", up.Blobs)
	assert.Contains(t, up.Disk, "GiB", "disk free is shown")
	assert.Equal(t, "5", up.Refresh, "<meta http-equiv=refresh content=5>")
	assert.Zero(t, up.Scripts, "the page needs no JavaScript")
	assert.Empty(t, up.Banner, "no peer is down")
	assert.Contains(t, up.Scrub, "idle")
	for i, p := range up.Peers {
		assert.Equal(t, c.PeerURL(0, i+1), p.URL)
		assert.Equal(t, "up", p.Text)
	}
	// The page and the JSON twin show the same data.
	var js struct {
		Node  string `json:"node"`
		Blobs int64  `json:"blobs"`
		Disk  *struct {
			Free  uint64 `json:"free_bytes"`
			Total uint64 `json:"total_bytes"`
		} `json:"disk"`
		RecentErrors []json.RawMessage `json:"recent_errors"`
	}
	getJSON(t, hc, n0.URL+"/_status", &js)
	assert.Equal(t, up.Node, js.Node)
	assert.Equal(t, up.Blobs, fmt.Sprint(js.Blobs))
	require.NotNil(t, js.Disk, "/_status has the disk")
	assert.Positive(t, js.Disk.Total)
	screenshot(t, ctx, "status-all-up.png")

	// Node 2 goes away; node 0 notices at its next exchange with it (at
	// most an anti-entropy interval), the page at its next reload.
	c.Nodes[2].Stop()
	stopped := time.Now()
	// An upload node 0 cannot push to node 2: a queue, and a warning.
	putBlob(t, hc, n0.URL, "after.txt", []byte("written while node 2 is down\n"))
	margin := 10 * time.Second // a loaded 2-core machine, the race detector
	down, gens := waitPage(t, ctx, pageRefresh+antiEntropy+margin, "node 2 marked down", func(v pageView) bool {
		for _, p := range v.Peers {
			if p.URL == c.PeerURL(0, 2) {
				return p.State == "down"
			}
		}
		return false
	})
	took := time.Since(stopped)
	t.Logf("node 2 shown down %v after it stopped; pages seen (generated at): %v", took.Round(10*time.Millisecond), gens)
	assert.GreaterOrEqual(t, len(gens), 2, "the page reloaded itself")
	assert.Equal(t, n0.URL+"/", down.LocalHref, "the browser stayed on the page (meta refresh reloads it)")
	for _, p := range down.Peers {
		switch p.URL {
		case c.PeerURL(0, 2):
			assert.Equal(t, "down", p.Text, "a visible down marker")
		default:
			assert.Equal(t, "up", p.State, "node 1 stays up")
		}
	}
	assert.Contains(t, down.Banner, "1 of 2 peers down")
	assert.Contains(t, down.Title, "1 down")

	// The failed push shows as a queue for node 2 and a recent warning.
	down, _ = waitPage(t, ctx, pageRefresh+antiEntropy+margin, "node 2's queue and the push warning", func(v pageView) bool {
		for _, p := range v.Peers {
			if p.URL == c.PeerURL(0, 2) && p.Queue != "0" && strings.Contains(v.Errors, "push to peer failed") {
				return true
			}
		}
		return false
	})
	assert.Contains(t, down.Errors, "WARN")
	screenshot(t, ctx, "status-node2-down.png")
}

// putBlob uploads data as name and fails the test unless it is stored.
func putBlob(t *testing.T, hc *http.Client, base, name string, data []byte) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, base+"/"+name, bytes.NewReader(data))
	require.NoError(t, err)
	res, err := hc.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	var ans struct {
		SHA512 string `json:"sha512"`
	}
	require.Contains(t, []int{http.StatusOK, http.StatusCreated}, res.StatusCode, "PUT %s", name)
	require.NoError(t, json.NewDecoder(res.Body).Decode(&ans))
	return ans.SHA512
}

func getJSON(t *testing.T, hc *http.Client, url string, v any) {
	t.Helper()
	res, err := hc.Get(url)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "GET %s", url)
	require.NoError(t, json.NewDecoder(res.Body).Decode(v))
}
