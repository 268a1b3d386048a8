package couchdb_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/couchdb"
	"github.com/dtfc/dtfc/internal/cluster"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The shared pouchdb-server outlives the tests; stop it before
	// looking for leaked goroutines (one waits for its process).
	stopShared()
	cluster.RemoveBinary()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// deadline bounds every wait: generous, for a noisy 2-core machine.
const deadline = 60 * time.Second

// httpClient returns a client whose connections close when the test ends.
func httpClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 16,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// couch is the test's own access to a database, beside the package's.
type couch struct {
	t   testing.TB
	url string // server URL
	db  string
	hc  *http.Client
	// DB is the package's handle on the database.
	DB *couchdb.DB
}

var dbSeq struct {
	mu sync.Mutex
	n  int
}

// newDB creates a fresh database on p for t.
func newDB(t testing.TB, p *pouch, name string) *couch {
	t.Helper()
	if name == "" {
		dbSeq.mu.Lock()
		dbSeq.n++
		name = fmt.Sprintf("db%d", dbSeq.n)
		dbSeq.mu.Unlock()
	}
	hc := httpClient(t)
	cc, err := couchdb.New(p.URL, couchdb.ClientOptions{HTTPClient: hc})
	require.NoError(t, err)
	c := &couch{t: t, url: p.URL, db: name, hc: hc, DB: cc.DB(name)}
	var ans map[string]any
	c.do(http.MethodPut, "/"+name, nil, &ans, http.StatusCreated, http.StatusOK)
	return c
}

// do sends a request to the server and decodes the answer into out,
// failing the test unless the status is one of want.
func (c *couch) do(method, path string, body any, out any, want ...int) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url+path, rd)
	require.NoError(c.t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	if len(want) > 0 {
		require.Containsf(c.t, want, resp.StatusCode, "%s %s: %s", method, path, b)
	}
	if out != nil && resp.StatusCode < 300 {
		require.NoError(c.t, json.Unmarshal(b, out), "%s %s: %s", method, path, b)
	}
	return resp.StatusCode
}

// get decodes a GET's answer into out and returns the status (0 if the
// request failed). It does not fail the test: it may run on any goroutine.
func (c *couch) get(path string, out any) int {
	resp, err := c.hc.Get(c.url + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(out) != nil {
		return 0
	}
	return resp.StatusCode
}

// put sends a document and returns the status. It does not fail the test.
func (c *couch) put(path string, doc any) (int, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequest(http.MethodPut, c.url+path, bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// doc returns a document's fields.
func (c *couch) doc(id string) map[string]any {
	c.t.Helper()
	var d map[string]any
	c.do(http.MethodGet, "/"+c.db+"/"+id, nil, &d, http.StatusOK)
	return d
}

// allDocs returns every document by ID.
func (c *couch) allDocs() map[string]map[string]any {
	c.t.Helper()
	var ans struct {
		Rows []struct {
			ID  string         `json:"id"`
			Doc map[string]any `json:"doc"`
		} `json:"rows"`
	}
	c.do(http.MethodGet, "/"+c.db+"/_all_docs?include_docs=true", nil, &ans, http.StatusOK)
	out := map[string]map[string]any{}
	for _, r := range ans.Rows {
		out[r.ID] = r.Doc
	}
	return out
}

// edit adds 1 to the document's "edits" field, re-reading and retrying on
// a conflict as a well-behaved CouchDB client does. It returns false if it
// gave up.
func (c *couch) edit(id string) bool {
	c.t.Helper()
	for range 50 {
		d := c.doc(id)
		n, _ := d["edits"].(float64)
		d["edits"] = n + 1
		if c.do(http.MethodPut, "/"+c.db+"/"+id, d, nil, http.StatusCreated, http.StatusOK, http.StatusConflict) != http.StatusConflict {
			return true
		}
	}
	return false
}

// attSpec is one generated attachment; its bytes derive from seed.
type attSpec struct {
	Name string
	Type string
	Size int
	Seed uint64
	Text bool
	Sum  dtfc.ID
}

func (a attSpec) bytes() []byte {
	b := make([]byte, a.Size)
	rand.NewChaCha8(seedBytes(a.Seed)).Read(b)
	if a.Text {
		const letters = "abcdefghijklmnopqrstuvwxyz      \n"
		for i, c := range b {
			b[i] = letters[int(c)%len(letters)]
		}
	}
	return b
}

// encoded caches the base64 of generated attachments: a test seeding two
// databases with one dataset encodes it once.
var encoded sync.Map // attSpec (without Sum) -> []byte

func (a attSpec) base64() []byte {
	key := a
	key.Sum = dtfc.ID{}
	if b, ok := encoded.Load(key); ok {
		return b.([]byte)
	}
	raw := a.bytes()
	b := make([]byte, base64.StdEncoding.EncodedLen(len(raw)))
	base64.StdEncoding.Encode(b, raw)
	encoded.Store(key, b)
	return b
}

func seedBytes(s uint64) [32]byte {
	var k [32]byte
	for i := range 8 {
		k[i] = byte(s >> (8 * i))
	}
	return k
}

type docSpec struct {
	ID   string
	N    int
	Atts []attSpec
}

// dataset generates n documents with 0 to 5 attachments each (text and
// binary; three of size big, some of 1 MiB, one empty, one shared by
// several documents), the same for the same seed.
func dataset(seed uint64, n, big int) []docSpec {
	r := rand.New(rand.NewPCG(seed, 1))
	kinds := []struct {
		name, typ string
		text      bool
	}{
		{"photo.jpg", "image/jpeg", false},
		{"notes.txt", "text/plain", true},
		{"data.bin", "application/octet-stream", false},
		{"dir/report.csv", "text/csv", true},
		{"résumé.txt", "text/plain", true},
		{"with space.md", "text/markdown", true},
	}
	var docs []docSpec
	for i := range n {
		d := docSpec{ID: fmt.Sprintf("doc-%03d", i), N: i}
		k := r.IntN(6)
		if i == 10 || i == 100 || i == 190 {
			d.Atts = append(d.Atts, attSpec{Name: "video.bin", Type: "video/mp4", Size: big, Seed: r.Uint64()})
		}
		if i%17 == 3 {
			d.Atts = append(d.Atts, attSpec{Name: "scan.pdf", Type: "application/pdf", Size: 1<<20 + r.IntN(4096), Seed: r.Uint64()})
		}
		if i%50 == 7 {
			// The same bytes in several documents: one blob in dtfc.
			d.Atts = append(d.Atts, attSpec{Name: "logo.png", Type: "image/png", Size: 5000, Seed: 42})
		}
		if i == 42 {
			d.Atts = append(d.Atts, attSpec{Name: "empty.txt", Type: "text/plain", Seed: 1, Text: true})
		}
		for _, j := range r.Perm(len(kinds)) {
			if len(d.Atts) >= k || len(d.Atts) >= 5 {
				break
			}
			kd := kinds[j]
			d.Atts = append(d.Atts, attSpec{Name: kd.name, Type: kd.typ, Size: r.IntN(64 << 10), Seed: r.Uint64(), Text: kd.text})
		}
		for j := range d.Atts {
			d.Atts[j].Sum = dtfc.Sum(d.Atts[j].bytes())
		}
		docs = append(docs, d)
	}
	return docs
}

// totals are a dataset's attachments, bytes and distinct blobs.
func totals(docs []docSpec) (atts int, size int64, blobs map[dtfc.ID]int64) {
	blobs = map[dtfc.ID]int64{}
	for _, d := range docs {
		for _, a := range d.Atts {
			atts++
			size += int64(a.Size)
			blobs[a.Sum] = int64(a.Size)
		}
	}
	return atts, size, blobs
}

// seed stores docs with _bulk_docs, attachments inline, a few MiB per
// request. The body is written as it is sent, not by encoding/json: with
// the race detector, that takes a minute on 100 MB of attachments.
func (c *couch) seed(docs []docSpec) {
	c.t.Helper()
	for len(docs) > 0 {
		n, size := 0, 0
		for n < len(docs) && (n == 0 || size < 4<<20) {
			for _, a := range docs[n].Atts {
				size += a.Size
			}
			n++
		}
		c.bulk(docs[:n])
		docs = docs[n:]
	}
}

func (c *couch) bulk(docs []docSpec) {
	c.t.Helper()
	pr, pw := io.Pipe()
	go func() {
		w := bufio.NewWriterSize(pw, 64<<10)
		quote := func(s string) []byte {
			b, _ := json.Marshal(s)
			return b
		}
		w.WriteString(`{"docs":[`)
		for i, d := range docs {
			if i > 0 {
				w.WriteString(",")
			}
			fmt.Fprintf(w, `{"_id":%s,"type":"item","n":%d,"title":%s,"tags":["a","b"]`, quote(d.ID), d.N, quote("Item "+strconv.Itoa(d.N)))
			if len(d.Atts) > 0 {
				w.WriteString(`,"_attachments":{`)
				for j, a := range d.Atts {
					if j > 0 {
						w.WriteString(",")
					}
					fmt.Fprintf(w, `%s:{"content_type":%s,"data":"`, quote(a.Name), quote(a.Type))
					w.Write(a.base64())
					w.WriteString(`"}`)
				}
				w.WriteString("}")
			}
			w.WriteString("}")
		}
		w.WriteString("]}")
		pw.CloseWithError(w.Flush())
	}()
	req, err := http.NewRequest(http.MethodPost, c.url+"/"+c.db+"/_bulk_docs", pr)
	require.NoError(c.t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	pr.CloseWithError(io.ErrClosedPipe) // unblocks the writer if the request failed
	require.NoError(c.t, err)
	defer resp.Body.Close()
	var ans []map[string]any
	require.NoError(c.t, json.NewDecoder(resp.Body).Decode(&ans))
	require.Len(c.t, ans, len(docs))
	for _, a := range ans {
		require.Equal(c.t, true, a["ok"], "bulk insert: %v", a)
	}
}

// checkMigrated checks every document of docs against its spec: a dtfc
// reference for each attachment, with the right sha512, length and type;
// the attachments gone from CouchDB if removed, still there if not; the
// documents without attachments untouched. It returns the blobs referenced.
func (c *couch) checkMigrated(docs []docSpec, removed bool) map[dtfc.ID]int64 {
	c.t.Helper()
	all := c.allDocs()
	refs := map[dtfc.ID]int64{}
	for _, spec := range docs {
		d := all[spec.ID]
		require.NotNil(c.t, d, "document %s missing", spec.ID)
		require.Equal(c.t, float64(spec.N), d["n"], "document %s: field n", spec.ID)
		if len(spec.Atts) == 0 {
			require.NotContains(c.t, d, "dtfc", "document %s has no attachment", spec.ID)
			require.True(c.t, strings.HasPrefix(d["_rev"].(string), "1-"), "document %s without attachments was updated: %s", spec.ID, d["_rev"])
			continue
		}
		refMap, ok := d["dtfc"].(map[string]any)
		require.True(c.t, ok, "document %s: no dtfc field: %v", spec.ID, d)
		require.Len(c.t, refMap, len(spec.Atts), "document %s: references", spec.ID)
		atts, _ := d["_attachments"].(map[string]any)
		if removed {
			require.NotContains(c.t, d, "_attachments", "document %s", spec.ID)
		} else {
			require.Len(c.t, atts, len(spec.Atts), "document %s: attachments kept", spec.ID)
		}
		for _, a := range spec.Atts {
			r, ok := refMap[a.Name].(map[string]any)
			require.True(c.t, ok, "document %s: no reference for %q", spec.ID, a.Name)
			require.Equal(c.t, a.Sum.String(), r["sha512"], "document %s: %q: sha512", spec.ID, a.Name)
			require.Equal(c.t, float64(a.Size), r["length"], "document %s: %q: length", spec.ID, a.Name)
			require.Equal(c.t, a.Type, r["content_type"], "document %s: %q: content_type", spec.ID, a.Name)
			refs[a.Sum] = int64(a.Size)
		}
	}
	return refs
}

// attachmentStatus is the status CouchDB answers for an attachment.
func (c *couch) attachmentStatus(doc, name string) int {
	c.t.Helper()
	segs := strings.Split(name, "/")
	for i := range segs {
		segs[i] = url.PathEscape(segs[i])
	}
	resp, err := c.hc.Get(c.url + "/" + c.db + "/" + url.PathEscape(doc) + "/" + strings.Join(segs, "/"))
	require.NoError(c.t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// checkServed downloads every blob from dtfc and checks its bytes hash to
// its ID (the client verifies) and its length.
func checkServed(t testing.TB, dc *client.Client, blobs map[dtfc.ID]int64) {
	t.Helper()
	for id, size := range blobs {
		rc, err := dc.Get(context.Background(), id)
		require.NoError(t, err, "dtfc GET %s", id)
		h := sha512.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		require.NoError(t, err, "dtfc GET %s", id)
		require.Equal(t, size, n, "dtfc GET %s: length", id)
	}
}

// dtfcClient returns a client for the given node URLs.
func dtfcClient(t testing.TB, urls ...string) *client.Client {
	t.Helper()
	dc, err := client.New(urls, client.Options{HTTPClient: httpClient(t)})
	require.NoError(t, err)
	return dc
}

var uploadsRE = regexp.MustCompile(`(?m)^dtfc_uploads_total\{result="(\w+)"\} (\S+)$`)

// uploads reads a node's dtfc_uploads_total by result.
func uploads(t testing.TB, hc *http.Client, node string) map[string]int {
	t.Helper()
	resp, err := hc.Get(node + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := map[string]int{}
	for _, m := range uploadsRE.FindAllStringSubmatch(string(b), -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		require.NoError(t, err)
		out[m[1]] = int(v)
	}
	return out
}

// noTemp waits until the node's tmp/ is empty: the upload a client cut
// is cleaned up by the node as its handler notices, a moment later.
func noTemp(t testing.TB, n *cluster.Node) {
	t.Helper()
	dir := filepath.Join(n.Basedir, "tmp")
	eventually(t, 10*time.Second, "no temp file left in "+dir, func() bool {
		entries, err := os.ReadDir(dir)
		return err != nil || len(entries) == 0
	})
}

// eventually polls cond every 50 ms until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(within)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// proc is a dtfc command run by a test.
type proc struct {
	cmd  *exec.Cmd
	out  *cluster.Output
	done chan struct{}
}

// startDtfc runs the dtfc binary with args; it is killed at the end of
// the test if still running.
func startDtfc(t testing.TB, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(cluster.Binary(t), args...), out: &cluster.Output{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start())
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("dtfc %s:\n%s", strings.Join(args, " "), tail(p.out.String(), 4000))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t testing.TB, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("dtfc did not exit within %s:\n%s", within, tail(p.out.String(), 4000))
		return -1
	}
}

// summaryLine returns the value after "label:" in a command's summary.
func summaryLine(out, label string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), label+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
