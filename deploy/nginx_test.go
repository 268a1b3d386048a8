package deploy_test

import (
	"bufio"
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/cluster"
)

// nginxInstall is how to get nginx on Debian (what .ci/run does).
const nginxInstall = "apt-get install -y nginx-light (or nginx)"

// blobHeaders are the headers a download through nginx must carry with
// exactly the values (and the number of values) dtfc gives them.
var blobHeaders = []string{
	"Content-Type", "Etag", "X-Content-Sha512", "Cache-Control", "Content-Length",
	"Accept-Ranges", "X-Content-Type-Options", "Content-Security-Policy", "X-Dtfc-Source", "Content-Range", "Last-Modified",
	"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers", "Vary",
}

// nginxFront is a running nginx configured from deploy/nginx.conf.
type nginxFront struct {
	URL    string
	RunDir string // __RUNDIR__: pid, logs, temp files
}

// startNginx renders deploy/nginx.conf for a dtfc node and runs nginx on
// a free loopback port, in the foreground, as the current user. nginx is
// stopped (SIGQUIT, then SIGKILL) in t.Cleanup. A port taken between its
// choice and nginx's bind gets another try.
func startNginx(t *testing.T, nginx string, node *cluster.Node) *nginxFront {
	t.Helper()
	for try := 1; ; try++ {
		f, err := tryNginx(t, nginx, node)
		if err == nil {
			return f
		}
		if try == 3 || !strings.Contains(err.Error(), "Address already in use") {
			t.Fatal(err)
		}
		t.Logf("nginx: %v; trying another port", err)
	}
}

func tryNginx(t *testing.T, nginx string, node *cluster.Node) (*nginxFront, error) {
	t.Helper()
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	require.NoError(t, os.Mkdir(run, 0o755))
	u, err := user.Current()
	require.NoError(t, err)
	// When the test runs as root, nginx's workers would switch to the
	// user named here; root keeps them able to enter the harness's 0700
	// temp directories. As another user, the directive is ignored and the
	// workers run as that user, who owns the directories.
	port := freePort(t)
	conf := renderNginxConf(t, map[string]string{
		"__LISTEN__":  "127.0.0.1:" + strconv.Itoa(port),
		"__DTFC__":    strings.TrimPrefix(node.URL, "http://"),
		"__BASEDIR__": node.Basedir,
		"__RUNDIR__":  run,
		"__USER__":    u.Username,
	})
	confPath := filepath.Join(dir, "nginx.conf")
	require.NoError(t, os.WriteFile(confPath, []byte(conf), 0o644))
	args := []string{"-p", run + "/", "-c", confPath, "-e", filepath.Join(run, "error.log"), "-g", "daemon off;"}

	if out, err := exec.Command(nginx, append([]string{"-t", "-q"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s\n--- config:\n%s", err, out, conf)
	}
	var out lockedBuffer
	cmd := exec.Command(nginx, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	f := &nginxFront{URL: "http://127.0.0.1:" + strconv.Itoa(port), RunDir: run}
	t.Cleanup(func() {
		// SIGQUIT: graceful shutdown. Only the process this test started.
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(run, "error.log"))
			t.Logf("nginx output:\n%s\nnginx error.log:\n%s", out.String(), log)
		}
	})
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := hc.Get(f.URL + "/health")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return f, nil
			}
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(run, "error.log"))
			return nil, fmt.Errorf("nginx exited: %s\n%s%s", cmd.ProcessState, out.String(), log)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nginx not serving /health after 20 s: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// renderNginxConf fills the placeholders of deploy/nginx.conf, and fails
// the test if one is left or unknown.
func renderNginxConf(t *testing.T, vars map[string]string) string {
	t.Helper()
	conf := readRepoFile(t, "deploy", "nginx.conf")
	for k, v := range vars {
		require.Contains(t, conf, k, "deploy/nginx.conf has no %s", k)
		conf = strings.ReplaceAll(conf, k, v)
	}
	// Only the comments may still name placeholders (their documentation).
	for i, line := range strings.Split(conf, "\n") {
		code, _, _ := strings.Cut(line, "#")
		require.NotContains(t, code, "__", "deploy/nginx.conf line %d: a placeholder left: %s", i+1, line)
	}
	return conf
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// reply is a response whose body has been read.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) String() string {
	b := r.body
	if len(b) > 300 {
		b = b[:300]
	}
	return fmt.Sprintf("%d %q", r.status, b)
}

// httpDo sends a request and reads the whole answer; hdr holds header
// names and values in turn.
func httpDo(t *testing.T, hc *http.Client, method, url string, body io.Reader, hdr ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := hc.Do(req)
	require.NoError(t, err, "%s %s", method, url)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err, "%s %s: the body", method, url)
	return reply{status: res.StatusCode, header: res.Header, body: b}
}

// sameHeaders asserts that nginx's answer carries dtfc's blob headers with
// the same values, as many times (nil for absent in both).
func sameHeaders(t *testing.T, direct, viaNginx reply, skip ...string) {
	t.Helper()
	for _, k := range blobHeaders {
		if k == "Content-Type" && strings.HasPrefix(direct.header.Get(k), "multipart/byteranges") {
			continue // the boundary differs
		}
		if contains(skip, k) {
			continue
		}
		assert.Equal(t, direct.header.Values(k), viaNginx.header.Values(k), "header %s", k)
	}
	for _, k := range []string{"X-Accel-Redirect", "X-Accel-Expires", "X-Accel-Buffering"} {
		assert.Empty(t, viaNginx.header.Values(k), "nginx must not pass on dtfc's %s", k)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// plainClient is an HTTP client without compression or proxies, whose
// idle connections are closed when the test ends.
func plainClient(t *testing.T, timeout time.Duration) *http.Client {
	tr := &http.Transport{DisableCompression: true, Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: timeout}
}

// metricSum sums the samples of the node's metric name whose labels
// include every one of labels (e.g. `source="local"`); found is false if
// there is none.
func metricSum(t *testing.T, hc *http.Client, node, name string, labels ...string) (sum float64, found bool) {
	t.Helper()
	r := httpDo(t, hc, http.MethodGet, node+"/metrics", nil)
	require.Equal(t, http.StatusOK, r.status)
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") || slices.ContainsFunc(labels, func(l string) bool { return !strings.Contains(line, l) }) {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		require.NoError(t, err, "%s", line)
		sum += f
		found = true
	}
	return sum, found
}

// localBytesServed is dtfc's dtfc_download_bytes_total{source="local"}:
// blob bytes dtfc itself sent from its disk.
func localBytesServed(t *testing.T, hc *http.Client, node string) float64 {
	t.Helper()
	n, ok := metricSum(t, hc, node, "dtfc_download_bytes_total", `source="local"`)
	require.True(t, ok, "no dtfc_download_bytes_total{source=\"local\"} in %s/metrics", node)
	return n
}

// blobReads is how many requests of method to /{id} the node has
// answered (dtfc_http_request_duration_seconds_count, every status).
func blobReads(t *testing.T, hc *http.Client, node, method string) float64 {
	t.Helper()
	n, _ := metricSum(t, hc, node, "dtfc_http_request_duration_seconds_count", `method="`+method+`"`, `route="/{id}"`)
	return n
}

// onDisk reports whether the node's blobs/ holds the file of id.
func onDisk(node *cluster.Node, id string) bool {
	_, err := os.Stat(filepath.Join(node.Basedir, "blobs", id[0:2], id[2:4], id))
	return err == nil
}

// waitUntil polls cond every 20 ms until it holds, and fails t if it
// still does not after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); {
		require.True(t, time.Now().Before(deadline), "not after %v: %s", d, what)
		time.Sleep(20 * time.Millisecond)
	}
}

// sentByNginx repeats read (a read of one blob through nginx) until one
// reaches dtfc no more (no GET or HEAD of /{id} answered by node
// meanwhile: nginx sends the blob from the answers it keeps), for at
// most 10 s, and returns that read's reply.
func sentByNginx(t *testing.T, hc *http.Client, node string, read func() reply) reply {
	t.Helper()
	asked := func() float64 {
		return blobReads(t, hc, node, http.MethodGet) + blobReads(t, hc, node, http.MethodHead)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := asked()
		r := read()
		if asked() == before {
			return r
		}
		require.True(t, time.Now().Before(deadline), "dtfc answered every read for 10 s")
	}
}

func sha512Hex(b []byte) string {
	s := sha512.Sum512(b)
	return hex.EncodeToString(s[:])
}

// upload PUTs data to url and returns the ID dtfc answered, which must be
// the data's.
func upload(t *testing.T, hc *http.Client, url string, data []byte) string {
	t.Helper()
	r := httpDo(t, hc, http.MethodPut, url, bytes.NewReader(data))
	require.Contains(t, []int{http.StatusCreated, http.StatusOK}, r.status, "PUT %s: %s", url, r)
	var ans struct {
		SHA512 string `json:"sha512"`
		Size   int64  `json:"size"`
	}
	require.NoError(t, json.Unmarshal(r.body, &ans), "%s", r)
	require.Equal(t, sha512Hex(data), ans.SHA512)
	require.EqualValues(t, len(data), ans.Size)
	return ans.SHA512
}

func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

// TestNginxFront runs nginx with deploy/nginx.conf in front of a real
// dtfc cache node whose origin is a replica, and checks that clients of
// nginx get what clients of dtfc get, with nginx sending the bytes of
// every hit.
func TestNginxFront(t *testing.T) {
	nginx := need(t, "nginx", nginxInstall)
	const app = "https://app.example"
	c := cluster.Start(t, cluster.Options{Nodes: 2, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleCache}, Direct: true,
		Args: []string{"--cors-origins", app}})
	origin, front := c.Nodes[0], c.Nodes[1]
	ngx := startNginx(t, nginx, front)
	hc := plainClient(t, 2*time.Minute)
	t.Logf("nginx %s in front of dtfc cache %s (origin %s)", ngx.URL, front.URL, origin.URL)

	// Blobs uploaded through nginx to the cache: hits there.
	blobs := []struct {
		name string
		data []byte
	}{
		{"hello.txt", []byte("hello through nginx\n")},
		{"thumb.jpg", randomData(9, 64<<10)},
		{"photo.png", randomData(1, 3<<19)}, // blobs[2]: sent from its file
		{"empty", []byte{}},
		{"page.html", []byte("<!doctype html><title>x</title>")},
		{"medium.jpg", randomData(5, 256<<10)}, // sent from its file too
	}
	ids := map[string]string{}
	for _, b := range blobs {
		ids[b.name] = upload(t, hc, ngx.URL+"/"+b.name, b.data)
		require.FileExists(t, filepath.Join(front.Basedir, "blobs", ids[b.name][0:2], ids[b.name][2:4], ids[b.name]))
	}

	t.Run("hit", func(t *testing.T) {
		for _, b := range blobs {
			id := ids[b.name]
			// The first read may fill nginx's micro-cache (dtfc answers a
			// blob of up to 16 KiB whole, a larger one with where its file
			// is); within the same second, the next ones come from nginx
			// alone: a large blob from its file.
			first := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil)
			var got, head, upper reply
			deadline := time.Now().Add(10 * time.Second)
			for {
				before := localBytesServed(t, hc, front.URL)
				got = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil)
				head = httpDo(t, hc, http.MethodHead, ngx.URL+"/"+id, nil)
				upper = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+strings.ToUpper(id), nil)
				// The bytes came from nginx: dtfc sent none of them.
				if before == localBytesServed(t, hc, front.URL) {
					break
				}
				require.True(t, time.Now().Before(deadline), "%s: dtfc served the bytes of every hit for 10 s", b.name)
				require.LessOrEqual(t, len(b.data), 16<<10, "%s: dtfc served the bytes of a large hit", b.name)
			}
			assert.Equal(t, first.body, got.body)
			sameHeaders(t, first, got)

			before := localBytesServed(t, hc, front.URL)
			direct := httpDo(t, hc, http.MethodGet, front.URL+"/"+id, nil)
			directHead := httpDo(t, hc, http.MethodHead, front.URL+"/"+id, nil)
			require.Equal(t, http.StatusOK, direct.status, "%s", direct)
			require.Equal(t, http.StatusOK, got.status, "%s", got)
			assert.Equal(t, b.data, got.body, "%s: body", b.name)
			assert.Equal(t, direct.body, got.body)
			sameHeaders(t, direct, got)
			assert.Equal(t, "local", got.header.Get("X-Dtfc-Source"))
			assert.Equal(t, `"`+id+`"`, got.header.Get("Etag"))
			assert.Empty(t, got.header.Values("Last-Modified"))
			require.Equal(t, http.StatusOK, head.status)
			assert.Empty(t, head.body)
			sameHeaders(t, directHead, head)
			assert.Equal(t, b.data, upper.body, "an upper-case ID")
			if len(b.data) > 0 {
				assert.Equal(t, before+float64(len(b.data)), localBytesServed(t, hc, front.URL), "the direct GET is counted")
			}
		}
		assert.Equal(t, "image/png", httpDo(t, hc, http.MethodGet, ngx.URL+"/"+ids["photo.png"], nil).header.Get("Content-Type"), "the recorded type")
	})

	t.Run("CORS, per Origin", func(t *testing.T) {
		// The micro-cache keeps one answer per Origin: a listed origin's
		// CORS headers are never given to another, nor kept from it,
		// whether nginx keeps the answer or sends the file.
		for _, id := range []string{ids["hello.txt"], ids["thumb.jpg"]} {
			for range 3 {
				for _, o := range []string{app, "https://other.example", ""} {
					var hdr []string
					if o != "" {
						hdr = []string{"Origin", o}
					}
					got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, hdr...)
					direct := httpDo(t, hc, http.MethodGet, front.URL+"/"+id, nil, hdr...)
					require.Equal(t, http.StatusOK, got.status, "%s", got)
					sameHeaders(t, direct, got)
					want := ""
					if o == app {
						want = app
					}
					assert.Equal(t, want, got.header.Get("Access-Control-Allow-Origin"), "Origin %q", o)
				}
			}
		}
	})

	t.Run("range", func(t *testing.T) {
		id, data := ids["photo.png"], blobs[2].data
		for _, tt := range []struct {
			rng       string
			from, to  int // the slice of data expected
			multipart bool
		}{
			{rng: "bytes=100-1099", from: 100, to: 1100},
			{rng: "bytes=-10", from: len(data) - 10, to: len(data)},
			{rng: "bytes=1048000-", from: 1048000, to: len(data)},
			{rng: "bytes=0-0,10-19", multipart: true},
		} {
			got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, "Range", tt.rng)
			direct := httpDo(t, hc, http.MethodGet, front.URL+"/"+id, nil, "Range", tt.rng)
			require.Equal(t, http.StatusPartialContent, got.status, "%s: %s", tt.rng, got)
			require.Equal(t, http.StatusPartialContent, direct.status)
			if tt.multipart {
				assert.True(t, strings.HasPrefix(got.header.Get("Content-Type"), "multipart/byteranges; boundary="))
				sameHeaders(t, direct, got, "Content-Length") // the boundaries differ in length
				continue
			}
			assert.Equal(t, data[tt.from:tt.to], got.body, tt.rng)
			assert.Equal(t, fmt.Sprintf("bytes %d-%d/%d", tt.from, tt.to-1, len(data)), got.header.Get("Content-Range"))
			sameHeaders(t, direct, got)
		}
	})

	t.Run("if-none-match", func(t *testing.T) {
		id := ids["hello.txt"]
		for _, inm := range []string{`"` + id + `"`, `W/"` + id + `"`, `"x", "` + id + `"`, "*"} {
			got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, "If-None-Match", inm)
			direct := httpDo(t, hc, http.MethodGet, front.URL+"/"+id, nil, "If-None-Match", inm)
			assert.Equal(t, http.StatusNotModified, got.status, "If-None-Match: %s", inm)
			assert.Empty(t, got.body)
			require.Equal(t, http.StatusNotModified, direct.status)
			sameHeaders(t, direct, got, "Content-Length")
		}
		got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, "If-None-Match", `"`+strings.Repeat("0", 128)+`"`)
		assert.Equal(t, http.StatusOK, got.status, "another ETag")
		assert.Equal(t, blobs[0].data, got.body)
	})

	t.Run("miss pulled from a peer", func(t *testing.T) {
		data := randomData(2, 3<<20)
		id := upload(t, hc, origin.URL+"/remote.bin", data)
		require.Equal(t, http.StatusNotFound, httpDo(t, hc, http.MethodGet, front.URL+"/"+id+"/nopeerload", nil).status,
			"a cache does not get pushed uploads: the blob must be a miss")
		// A HEAD of the miss is answered from the peer's state: the
		// cache does not pull the blob for it (nginx must not turn the
		// HEAD into a GET).
		heads, gets := blobReads(t, hc, front.URL, "HEAD"), blobReads(t, hc, front.URL, "GET")
		head := httpDo(t, hc, http.MethodHead, ngx.URL+"/"+id, nil)
		require.Equal(t, http.StatusOK, head.status, "%s", head)
		assert.Equal(t, "peer", head.header.Get("X-Dtfc-Source"))
		assert.Equal(t, strconv.Itoa(len(data)), head.header.Get("Content-Length"))
		// dtfc counts a request when its handler returns.
		deadline := time.Now().Add(10 * time.Second)
		for blobReads(t, hc, front.URL, "HEAD") == heads {
			require.True(t, time.Now().Before(deadline), "dtfc saw no HEAD: nginx turned it into a GET")
			time.Sleep(10 * time.Millisecond)
		}
		assert.Equal(t, gets, blobReads(t, hc, front.URL, "GET"), "dtfc saw a GET for the HEAD")
		require.Equal(t, http.StatusNotFound, httpDo(t, hc, http.MethodGet, front.URL+"/"+id+"/nopeerload", nil).status,
			"a HEAD through nginx made the cache pull the blob")
		got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil)
		require.Equal(t, http.StatusOK, got.status, "%s", got)
		assert.Equal(t, "peer", got.header.Get("X-Dtfc-Source"))
		assert.True(t, bytes.Equal(data, got.body), "the bytes pulled through nginx")
		fromOrigin := httpDo(t, hc, http.MethodGet, origin.URL+"/"+id, nil)
		sameHeaders(t, fromOrigin, got, "X-Dtfc-Source")

		// Now held by the cache: the next read is a hit nginx serves.
		before := localBytesServed(t, hc, front.URL)
		again := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil)
		assert.Equal(t, "local", again.header.Get("X-Dtfc-Source"))
		assert.True(t, bytes.Equal(data, again.body))
		assert.Equal(t, before, localBytesServed(t, hc, front.URL), "nginx serves the hit")
	})

	t.Run("large streamed upload", func(t *testing.T) {
		const size = 50 << 20
		h := sha512.New()
		// No Content-Length: a chunked body, generated as it is sent.
		body := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{3}), size), h)
		req, err := http.NewRequest(http.MethodPut, ngx.URL+"/big.bin", struct{ io.Reader }{body})
		require.NoError(t, err)
		start := time.Now()
		res, err := hc.Do(req)
		require.NoError(t, err)
		ans, _ := io.ReadAll(res.Body)
		res.Body.Close()
		took := time.Since(start)
		require.Equal(t, http.StatusCreated, res.StatusCode, "%s", ans)
		id := hex.EncodeToString(h.Sum(nil))
		assert.Contains(t, string(ans), `"sha512":"`+id+`"`)
		assert.Contains(t, string(ans), fmt.Sprintf(`"size":%d`, size))
		t.Logf("50 MiB chunked PUT through nginx: %v (%.0f MiB/s)", took.Round(time.Millisecond), 50/took.Seconds())
		fi, err := os.Stat(filepath.Join(front.Basedir, "blobs", id[0:2], id[2:4], id))
		require.NoError(t, err)
		assert.EqualValues(t, size, fi.Size())
		// Streamed through: nginx spooled nothing to its temp directory.
		entries, _ := os.ReadDir(filepath.Join(ngx.RunDir, "client_body"))
		assert.Empty(t, entries, "nginx buffered the upload body")

		// And read back through nginx, verified.
		res, err = hc.Get(ngx.URL + "/" + id)
		require.NoError(t, err)
		rh := sha512.New()
		n, err := io.Copy(rh, res.Body)
		res.Body.Close()
		require.NoError(t, err)
		assert.EqualValues(t, size, n)
		assert.Equal(t, id, hex.EncodeToString(rh.Sum(nil)))

		// POST / with a Content-Length goes through too.
		data := randomData(4, 256<<10)
		r := httpDo(t, hc, http.MethodPost, ngx.URL+"/?filename=posted.bin", bytes.NewReader(data))
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		assert.Contains(t, string(r.body), sha512Hex(data))
	})

	t.Run("expected ID mismatch", func(t *testing.T) {
		data := []byte("not what the name says")
		r := httpDo(t, hc, http.MethodPut, ngx.URL+"/"+sha512Hex([]byte("something else")), bytes.NewReader(data))
		assert.Equal(t, http.StatusBadRequest, r.status, "%s", r)
		assert.Contains(t, r.header.Get("Content-Type"), "application/json")
	})

	t.Run("deleted file is not served", func(t *testing.T) {
		data := randomData(5, 200<<10)
		id := upload(t, hc, ngx.URL+"/doomed.bin", data)
		require.Equal(t, http.StatusOK, httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil).status)
		r := httpDo(t, hc, http.MethodDelete, ngx.URL+"/"+id, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Contains(t, string(r.body), `"deleted":true`)
		answered := time.Now()
		assert.NoFileExists(t, filepath.Join(front.Basedir, "blobs", id[0:2], id[2:4], id))
		staleAtMostASecond(t, hc, ngx.URL+"/"+id, answered, http.StatusNotFound)
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			got := httpDo(t, hc, m, ngx.URL+"/"+id, nil)
			assert.Equal(t, http.StatusNotFound, got.status, "%s after DELETE: %s", m, got)
			assert.Empty(t, got.header.Values("Etag"))
		}
		// A large blob (sent from its file, nginx keeping where it is
		// and the open file) likewise.
		big := upload(t, hc, ngx.URL+"/doomed-large.bin", randomData(7, 2<<20))
		require.Equal(t, http.StatusOK, httpDo(t, hc, http.MethodGet, ngx.URL+"/"+big, nil).status)
		require.Equal(t, http.StatusOK, httpDo(t, hc, http.MethodDelete, ngx.URL+"/"+big, nil).status)
		staleAtMostASecond(t, hc, ngx.URL+"/"+big, time.Now(), http.StatusNotFound)
	})

	t.Run("a blocked blob is not served", func(t *testing.T) {
		data := randomData(6, 100<<10)
		id := upload(t, hc, ngx.URL+"/blocked.bin", data)
		require.Equal(t, http.StatusOK, httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil).status)
		r := httpDo(t, hc, http.MethodPut, front.URL+"/_deny/"+id, strings.NewReader(`{"status":451,"reason":"test"}`), "Content-Type", "application/json")
		require.True(t, r.status == http.StatusOK || r.status == http.StatusCreated, "%s", r)
		staleAtMostASecond(t, hc, ngx.URL+"/"+id, time.Now(), http.StatusUnavailableForLegalReasons)
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			got := httpDo(t, hc, m, ngx.URL+"/"+id, nil)
			assert.Equal(t, http.StatusUnavailableForLegalReasons, got.status, "%s after the block: %s", m, got)
			if m == http.MethodGet {
				assert.NotContains(t, string(got.body), string(data[:64]))
			}
		}
	})

	t.Run("nginx's own paths", func(t *testing.T) {
		id := ids["hello.txt"]
		// The internal location is not reachable from outside.
		r := httpDo(t, hc, http.MethodGet, ngx.URL+"/_dtfc_blobs/"+id[0:2]+"/"+id[2:4]+"/"+id, nil)
		assert.Equal(t, http.StatusNotFound, r.status)
		assert.NotContains(t, string(r.body), "hello")
		// A client cannot ask dtfc for an accel redirect itself.
		r = httpDo(t, hc, http.MethodGet, ngx.URL+"/_status", nil, "X-Dtfc-Accel-Redirect", "/_dtfc_blobs")
		assert.Equal(t, http.StatusOK, r.status)
		r = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, "X-Dtfc-Accel-Redirect", "/elsewhere")
		assert.Equal(t, blobs[0].data, r.body)
		// Nor ask the front's questions: a ranged read goes to dtfc
		// without them, and a plain one gets the blob.
		large := ids["photo.png"]
		for _, q := range []string{"state", "hit"} {
			r = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+large, nil, "X-Dtfc-Front", q, "Range", "bytes=0-9")
			assert.Equal(t, http.StatusPartialContent, r.status, "%s", r)
			assert.Equal(t, blobs[2].data[:10], r.body)
			r = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+large, nil, "X-Dtfc-Front", q)
			assert.Equal(t, http.StatusOK, r.status)
			assert.Equal(t, blobs[2].data, r.body)
		}
		r = httpDo(t, hc, http.MethodGet, ngx.URL+"/_dtfc_state", nil)
		assert.Equal(t, http.StatusNotFound, r.status, "the state location is internal")
		// The status page and the API's errors pass through unchanged.
		r = httpDo(t, hc, http.MethodGet, ngx.URL+"/", nil)
		assert.Equal(t, http.StatusOK, r.status)
		assert.Contains(t, r.header.Get("Content-Type"), "text/html")
		r = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+strings.Repeat("ab", 64), nil)
		assert.Equal(t, http.StatusNotFound, r.status)
		assert.Contains(t, r.header.Get("Content-Type"), "application/json")
	})
}

// staleAtMostASecond reads url through nginx from just after a delete or
// block that dtfc answered at `answered` until 1.5 s later: nginx's
// micro-cache may still answer 200 with the blob, but only to a request
// sent less than a second after that answer; from then on every answer
// is want.
func staleAtMostASecond(t *testing.T, hc *http.Client, url string, answered time.Time, want int) {
	t.Helper()
	var stale, after int
	for time.Since(answered) < 1500*time.Millisecond {
		sent := time.Now()
		got := httpDo(t, hc, http.MethodGet, url, nil)
		switch {
		case got.status == want:
			if sent.Sub(answered) >= time.Second {
				after++
			}
		case got.status == http.StatusOK && sent.Sub(answered) < time.Second:
			stale++
		default:
			t.Fatalf("%v after the answer: %d, %d bytes", sent.Sub(answered), got.status, len(got.body))
		}
	}
	require.Positive(t, after, "no request was sent more than a second after the answer")
	t.Logf("%d answers of the cached blob in the second after the answer", stale)
}

// TestNginxPassesOnACorruptMiss: a miss whose bytes arrive corrupted from
// the peer is cut by dtfc before its last byte; nginx must pass the cut
// on, never complete a 200 of wrong bytes.
func TestNginxPassesOnACorruptMiss(t *testing.T) {
	nginx := need(t, "nginx", nginxInstall)
	// Proxies between the nodes (not Direct): the link can corrupt.
	c := cluster.Start(t, cluster.Options{Nodes: 2, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleCache}})
	origin, front := c.Nodes[0], c.Nodes[1]
	ngx := startNginx(t, nginx, front)
	hc := plainClient(t, time.Minute)

	data := randomData(6, 2<<20)
	id := upload(t, hc, origin.URL+"/corrupt-me.bin", data)
	c.Corrupt(1, 0, true) // what the origin answers the cache is corrupted
	before := c.Corrupted(1, 0)
	res, err := hc.Get(ngx.URL + "/" + id)
	require.NoError(t, err)
	body, rerr := io.ReadAll(res.Body)
	res.Body.Close()
	t.Logf("GET through nginx of a corrupted miss: %s, %d of %d bytes, read error: %v", res.Status, len(body), len(data), rerr)
	require.Greater(t, c.Corrupted(1, 0), before, "the transfer went through the corrupting link")
	if res.StatusCode == http.StatusOK && rerr == nil {
		assert.Equal(t, id, sha512Hex(body), "nginx completed a 200 whose bytes do not hash to the ID")
	}
	c.Corrupt(1, 0, false)

	// Once the link is sound, the same read succeeds.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil)
		if r.status == http.StatusOK && bytes.Equal(r.body, data) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the miss never succeeded after the link healed: %s", r)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestNginxReadTokens: with read_tokens, nginx's micro-cache never gives
// a blob read with a token to a request without one (or with a wrong
// one): reads with Authorization skip the cache, and dtfc's 401 is never
// kept.
func TestNginxReadTokens(t *testing.T) {
	nginx := need(t, "nginx", nginxInstall)
	const token = "read-secret"
	c := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true, Secret: "cluster-secret", Args: []string{"--read-token", token}})
	node := c.Nodes[0]
	ngx := startNginx(t, nginx, node)
	hc := plainClient(t, time.Minute)
	data := randomData(8, 4<<10)
	id := upload(t, hc, node.URL+"/private.bin", data)
	for range 20 {
		got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, "Authorization", "Bearer "+token)
		require.Equal(t, http.StatusOK, got.status, "%s", got)
		assert.Equal(t, data, got.body)
		for _, hdr := range [][]string{nil, {"Authorization", "Bearer wrong"}} {
			got = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, hdr...)
			require.Equal(t, http.StatusUnauthorized, got.status, "a read with %q: %d, %d bytes", hdr, got.status, len(got.body))
		}
	}
}

// TestNginxFrontWithoutCORS: on a node without cors_origins, whose
// answers carry no Vary, a large hit takes the front's way without CORS
// headers (dtfc's 399, not 398): the same headers as dtfc's, nginx
// sending the bytes, and the same Content-Type as recorded.
func TestNginxFrontWithoutCORS(t *testing.T) {
	nginx := need(t, "nginx", nginxInstall)
	c := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	node := c.Nodes[0]
	ngx := startNginx(t, nginx, node)
	hc := plainClient(t, time.Minute)
	var large string
	for i, n := range []int{1 << 10, 16 << 10, 16<<10 + 1, 64 << 10, 3 << 20} {
		data := randomData(uint64(20+i), n)
		id := upload(t, hc, node.URL+"/f"+strconv.Itoa(i)+".png", data)
		large = id
		direct := httpDo(t, hc, http.MethodGet, node.URL+"/"+id, nil)
		directHead := httpDo(t, hc, http.MethodHead, node.URL+"/"+id, nil)
		require.Equal(t, http.StatusOK, direct.status)
		assert.Empty(t, direct.header.Values("Vary"))
		httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil) // may fill the micro-cache
		httpDo(t, hc, http.MethodHead, ngx.URL+"/"+id, nil)
		deadline := time.Now().Add(10 * time.Second)
		for {
			before, reads := localBytesServed(t, hc, node.URL), blobReads(t, hc, node.URL, http.MethodGet)
			got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil)
			head := httpDo(t, hc, http.MethodHead, ngx.URL+"/"+id, nil)
			require.Equal(t, http.StatusOK, got.status, "%d bytes: %s", n, got)
			require.Equal(t, http.StatusOK, head.status, "%d bytes: %s", n, head)
			assert.Equal(t, data, got.body, "%d bytes", n)
			assert.Empty(t, head.body)
			sameHeaders(t, direct, got)
			sameHeaders(t, directHead, head)
			assert.Equal(t, "image/png", got.header.Get("Content-Type"))
			// Within one second of nginx's clock, both reads come from
			// nginx alone: dtfc neither sent the bytes nor was asked.
			if before == localBytesServed(t, hc, node.URL) && reads == blobReads(t, hc, node.URL, http.MethodGet) {
				break
			}
			require.True(t, time.Now().Before(deadline), "%d bytes: dtfc was asked at every hit for 10 s", n)
		}
	}

	// A large blob's file gone behind dtfc's back (as a tier evicts it):
	// once nginx's kept answers and open file are past their second,
	// nginx asks dtfc, and the client gets dtfc's own answer (here its
	// JSON 404), not nginx's page.
	path := filepath.Join(node.Basedir, "blobs", large[0:2], large[2:4], large)
	require.NoError(t, os.Rename(path, path+".away"))
	t.Cleanup(func() { os.Rename(path+".away", path) })
	moved := time.Now()
	var got reply
	for {
		sent := time.Now()
		got = httpDo(t, hc, http.MethodGet, ngx.URL+"/"+large, nil)
		if got.status != http.StatusOK {
			break
		}
		require.Less(t, sent.Sub(moved), time.Second, "the moved file was still served by nginx a second later")
	}
	direct := httpDo(t, hc, http.MethodGet, node.URL+"/"+large, nil)
	assert.Equal(t, direct.status, got.status, "%s", got)
	assert.Equal(t, direct.header.Get("Content-Type"), got.header.Get("Content-Type"))
	assert.Contains(t, got.header.Get("Content-Type"), "application/json")
}

// TestNginxFrontKeepsHotBlobs: a cache with max_bytes behind nginx. A
// blob nginx keeps sending from its file counts as read (dtfc opens the
// file to answer nginx's "state" question), so a fill that needs room
// evicts the blob read least recently, not the hot one; and an evicted
// blob read through nginx again is fetched back and served whole. (Before
// 2026-12-06 the state answer looked up the record only: the hot blob,
// never read through dtfc after its fill, was the first evicted.)
func TestNginxFrontKeepsHotBlobs(t *testing.T) {
	nginx := need(t, "nginx", nginxInstall)
	const size = 100 << 10
	c := cluster.Start(t, cluster.Options{Nodes: 2, Roles: []dtfc.Role{cluster.RoleReplica, cluster.RoleCache}, Direct: true,
		NodeArgs: map[int][]string{1: {"--max-bytes", strconv.Itoa(size * 7 / 2)}}})
	origin, cache := c.Nodes[0], c.Nodes[1]
	ngx := startNginx(t, nginx, cache)
	hc := plainClient(t, time.Minute)
	var ids []string
	var data [][]byte
	for i := range 4 {
		data = append(data, randomData(uint64(70+i), size))
		ids = append(ids, upload(t, hc, origin.URL+"/b"+strconv.Itoa(i), data[i]))
	}
	held := func(i int) bool { return onDisk(cache, ids[i]) }
	get := func(i int) reply {
		t.Helper()
		r := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+ids[i], nil)
		require.Equal(t, http.StatusOK, r.status, "blob %d: %s", i, r)
		require.Equal(t, data[i], r.body, "blob %d", i)
		return r
	}
	filled := func(i int) {
		t.Helper()
		get(i)
		// dtfc stores a fill once the last byte went out to nginx.
		waitUntil(t, 10*time.Second, fmt.Sprintf("blob %d filled", i), func() bool { return held(i) })
	}
	for i := range 3 { // in this order
		filled(i)
	}
	// Blob 0, the oldest fill, is sent by nginx from its file: read it
	// until a read reaches dtfc no more (nginx then keeps dtfc's answers).
	r := sentByNginx(t, hc, cache.URL, func() reply { return get(0) })
	assert.Equal(t, "local", r.header.Get("X-Dtfc-Source"))
	filled(3) // needs room for one blob
	waitUntil(t, 30*time.Second, "the cache evicted a blob", func() bool { return !held(0) || !held(1) || !held(2) })
	assert.True(t, held(0), "the blob nginx kept sending was evicted")
	assert.False(t, held(1), "the blob read least recently was kept")
	assert.True(t, held(2) && held(3))
	get(1) // fetched back through nginx
}
