package server

// Tests of couchdb_auth against a real CouchDB-API server: pouchdb-server
// (CouchDB's HTTP API over PouchDB), installed with npm into a cache
// directory outside the repository, as for package couchdb's tests:
//
//	npm install --prefix ~/.cache/dtfc-node-tools pouchdb-server@4.2.0
//
// Checked by hand and by these tests: pouchdb-server 4.2.0 answers GET
// /_session as CouchDB does for an AuthSession cookie (got from POST
// /_session) and for Basic credentials ({"ok":true,"userCtx":{"name":...,
// "roles":[...]}}); a wrong password answers 401, a bad or expired cookie
// a null name; users with roles are created by an admin with PUT
// /_users/org.couchdb.user:NAME, admins with PUT /_config/admins/NAME.
// Like CouchDB in "admin party" (no admin yet), it answers anyone a null
// name with the role _admin. Deviation: answers carry Content-Type
// text/plain.

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/pouchtest"
)

// couchWait bounds every wait in these tests: generous, for a noisy
// 2-core machine running the race detector.
const couchWait = 30 * time.Second

// couchPouch is an in-memory pouchdb-server (internal/pouchtest) with an
// admin "admin" (password couchAdminPassword).
type couchPouch struct {
	*pouchtest.Server
	url string
	hc  *http.Client
}

const couchAdminPassword = "admin-pw-1f6c"

// startCouchPouch starts a pouchdb-server for t, stopped in t.Cleanup;
// the test is skipped, saying how to install it, if it is not installed.
func startCouchPouch(t *testing.T) *couchPouch {
	t.Helper()
	srv := pouchtest.ForTest(t, true)
	p := &couchPouch{Server: srv, url: srv.URL, hc: &http.Client{Timeout: couchWait, Transport: &http.Transport{}}}
	t.Cleanup(p.hc.CloseIdleConnections)
	// The end of "admin party": from now on only named users are users.
	p.do(t, http.MethodPut, "/_config/admins/admin", strconv.Quote(couchAdminPassword), http.StatusOK, false)
	return p
}

// stop stops the server and waits for its exit.
func (p *couchPouch) stop() error { return p.Shutdown() }

// do sends a JSON request to pouchdb-server (as the admin if asAdmin)
// and requires status.
func (p *couchPouch) do(t *testing.T, method, path, body string, status int, asAdmin bool) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, p.url+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if asAdmin {
		req.SetBasicAuth("admin", couchAdminPassword)
	}
	resp, err := p.hc.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "%s %s: %s", method, path, b)
	return resp
}

// addUser creates a CouchDB user with roles, as CouchDB's admin does.
func (p *couchPouch) addUser(t *testing.T, name, password string, roles ...string) {
	t.Helper()
	if roles == nil {
		roles = []string{}
	}
	doc, err := json.Marshal(map[string]any{"name": name, "password": password, "roles": roles, "type": "user"})
	require.NoError(t, err)
	p.do(t, http.MethodPut, "/_users/org.couchdb.user:"+name, string(doc), http.StatusCreated, true)
}

// login opens a CouchDB session (POST /_session) and returns its
// AuthSession cookie's value.
func (p *couchPouch) login(t *testing.T, name, password string) string {
	t.Helper()
	doc, err := json.Marshal(map[string]string{"name": name, "password": password})
	require.NoError(t, err)
	resp := p.do(t, http.MethodPost, "/_session", string(doc), http.StatusOK, false)
	for _, c := range resp.Cookies() {
		if c.Name == "AuthSession" && c.Value != "" {
			return c.Value
		}
	}
	t.Fatalf("POST /_session as %s set no AuthSession cookie: %v", name, resp.Header.Values("Set-Cookie"))
	return ""
}

// couchProxy is a reverse proxy in front of a CouchDB that counts, and
// records the headers of, the GET /_session requests passing through.
type couchProxy struct {
	url      string
	sessions atomic.Int64
	// gate, if not nil, holds every /_session request until it is
	// closed.
	gate chan struct{}

	mu   sync.Mutex
	seen []http.Header
}

func startCouchProxy(t *testing.T, target string, gate chan struct{}) *couchProxy {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	rp := httputil.NewSingleHostReverseProxy(u)
	tr := &http.Transport{}
	rp.Transport = tr
	rp.ErrorLog = log.New(io.Discard, "", 0) // a stopped CouchDB is expected
	p := &couchProxy{gate: gate}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_session" {
			p.mu.Lock()
			p.seen = append(p.seen, r.Header.Clone())
			p.mu.Unlock()
			p.sessions.Add(1)
			if p.gate != nil {
				select {
				case <-p.gate:
				case <-r.Context().Done():
					return
				}
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
	})
	p.url = srv.URL
	return p
}

// last returns the headers of the latest /_session request.
func (p *couchProxy) last(t *testing.T) http.Header {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.NotEmpty(t, p.seen, "no request reached CouchDB's /_session")
	return p.seen[len(p.seen)-1]
}

// couchNode is a dtfc Server over a real store, served over loopback,
// logging into logs.
type couchNode struct {
	url     string
	hc      *http.Client
	logs    *couchLogs
	entered atomic.Int64 // requests that have entered the server
}

type couchLogs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *couchLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *couchLogs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startCouchNode(t *testing.T, cfg Config) *couchNode {
	t.Helper()
	store, err := blobstore.Open(filepath.Join(t.TempDir(), "data"), blobstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, store.Close()) })
	n := &couchNode{logs: &couchLogs{}}
	cfg.Logger = slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	api := New(cfg, store)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.entered.Add(1)
		api.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		api.Wait()
	})
	n.url, n.hc = srv.URL, srv.Client()
	return n
}

type couchAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (a couchAnswer) String() string { return fmt.Sprintf("%d %s", a.status, bytes.TrimSpace(a.body)) }

// do sends a request; auth, if not nil, sets its credentials.
func (n *couchNode) do(t *testing.T, method, path string, body []byte, auth func(*http.Request)) couchAnswer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, n.url+path, bytes.NewReader(body))
	require.NoError(t, err)
	if auth != nil {
		auth(req)
	}
	resp, err := n.hc.Do(req)
	require.NoError(t, err, "%s %s", method, path)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return couchAnswer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (n *couchNode) put(t *testing.T, name string, data []byte, auth func(*http.Request)) couchAnswer {
	t.Helper()
	return n.do(t, http.MethodPut, "/"+name, data, auth)
}

func withBasic(name, password string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(name, password) }
}

func withSession(cookie string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Cookie", "AuthSession="+cookie) }
}

func withBearer(token string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func both(a, b func(*http.Request)) func(*http.Request) {
	return func(r *http.Request) { a(r); b(r) }
}

func couchSum(b []byte) string {
	s := sha512.Sum512(b)
	return hex.EncodeToString(s[:])
}

// requireCouchStatus checks a status; an error status must come with a
// JSON body {"error": "<message>"}.
func requireCouchStatus(t *testing.T, a couchAnswer, status int) {
	t.Helper()
	require.Equal(t, status, a.status, "answer: %s", a)
	if status < 400 {
		return
	}
	mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type"))
	assert.Equal(t, "application/json", mt, "error answers are JSON: %s", a)
	var body map[string]string
	require.NoError(t, json.Unmarshal(a.body, &body), "error body %q", a.body)
	assert.NotEmpty(t, body["error"], "error body %s", a.body)
}

// requireNotStored checks that no blob of data is held.
func requireNotStored(t *testing.T, n *couchNode, data []byte) {
	t.Helper()
	requireCouchStatus(t, n.do(t, http.MethodGet, "/"+couchSum(data)+"/nopeerload", nil, nil), http.StatusNotFound)
}

// setCouchLimits changes the cache's times for the nodes made until the
// test ends. Tests that call it must not run in parallel.
func setCouchLimits(t *testing.T, ok, noUser, timeout time.Duration) {
	old := couchLimits
	t.Cleanup(func() { couchLimits = old })
	couchLimits.OK, couchLimits.NoUser, couchLimits.Timeout = ok, noUser, timeout
}

// TestCouchAuth runs couchdb_auth against pouchdb-server: who may write,
// what reaches CouchDB, the cache, and CouchDB going away.
func TestCouchAuth(t *testing.T) {
	pouch := startCouchPouch(t)
	pouch.addUser(t, "alice", "alice-pw-9e2", "writer")
	pouch.addUser(t, "bob", "bob-pw-41c")
	pouch.addUser(t, "carol", "carol-pw-77d", "reader", "editor")
	aliceCookie := pouch.login(t, "alice", "alice-pw-9e2")
	bobCookie := pouch.login(t, "bob", "bob-pw-41c")
	secrets := []string{"alice-pw-9e2", "bob-pw-41c", "carol-pw-77d", couchAdminPassword, aliceCookie, bobCookie,
		"wrong-pw-0b1", "dtfc-token-5a", "cookie-jar-secret"}

	proxy := startCouchProxy(t, pouch.url, nil)
	cfg := Config{CouchDBAuth: proxy.url, CouchDBRoles: []string{"writer"}}

	t.Run("who may write", func(t *testing.T) {
		n := startCouchNode(t, cfg)
		data := []byte("uploaded with a CouchDB session")
		// Other cookies and headers of the request stay with dtfc.
		cookieAndMore := func(r *http.Request) {
			r.Header.Set("Cookie", "theme=dark; AuthSession="+aliceCookie+"; jar=cookie-jar-secret")
			r.Header.Set("X-Api-Key", "cookie-jar-secret")
		}
		requireCouchStatus(t, n.put(t, "session.txt", data, cookieAndMore), http.StatusCreated)
		got := proxy.last(t)
		assert.Equal(t, []string{"AuthSession=" + aliceCookie}, got.Values("Cookie"), "only the AuthSession cookie reaches CouchDB")
		assert.Empty(t, got.Get("Authorization"))
		for name := range got {
			assert.Contains(t, []string{"Accept", "Accept-Encoding", "User-Agent", "Connection", "Cookie"}, name, "header %s reached CouchDB", name)
		}
		// Reads need nothing (no read_token); the same session deletes.
		requireCouchStatus(t, n.do(t, http.MethodGet, "/"+couchSum(data), nil, nil), http.StatusOK)
		requireCouchStatus(t, n.do(t, http.MethodDelete, "/"+couchSum(data), nil, withSession(aliceCookie)), http.StatusOK)

		// Basic credentials, forwarded alone.
		data = []byte("uploaded with Basic credentials")
		requireCouchStatus(t, n.put(t, "basic.txt", data, both(withBasic("alice", "alice-pw-9e2"), func(r *http.Request) {
			r.Header.Set("Cookie", "jar=cookie-jar-secret")
		})), http.StatusCreated)
		got = proxy.last(t)
		assert.Empty(t, got.Values("Cookie"))
		user, pw, ok := (&http.Request{Header: got}).BasicAuth()
		assert.True(t, ok && user == "alice" && pw == "alice-pw-9e2", "Basic credentials reach CouchDB as sent")

		// CouchDB's admins have every role.
		requireCouchStatus(t, n.put(t, "admin.txt", []byte("by the admin"), withBasic("admin", couchAdminPassword)), http.StatusCreated)

		for _, tc := range []struct {
			name   string
			auth   func(*http.Request)
			status int
		}{
			{"wrong password", withBasic("alice", "wrong-pw-0b1"), http.StatusUnauthorized},
			{"unknown user", withBasic("mallory", "wrong-pw-0b1"), http.StatusUnauthorized},
			{"forged cookie", withSession(aliceCookie[:len(aliceCookie)-2] + "xx"), http.StatusUnauthorized},
			{"garbage cookie", withSession("garbage"), http.StatusUnauthorized},
			{"no credentials", nil, http.StatusUnauthorized},
			{"other cookies only", func(r *http.Request) { r.Header.Set("Cookie", "jar=cookie-jar-secret") }, http.StatusUnauthorized},
			{"a bearer token, none configured", withBearer("dtfc-token-5a"), http.StatusUnauthorized},
			{"session without the role", withSession(bobCookie), http.StatusForbidden},
			{"Basic without the role", withBasic("carol", "carol-pw-77d"), http.StatusForbidden},
		} {
			t.Run(tc.name, func(t *testing.T) {
				data := []byte("refused: " + tc.name)
				requireCouchStatus(t, n.put(t, "refused.txt", data, tc.auth), tc.status)
				requireNotStored(t, n, data)
			})
		}
		// Deletes are writes too.
		requireCouchStatus(t, n.do(t, http.MethodDelete, "/"+couchSum(data), nil, withSession(bobCookie)), http.StatusForbidden)
		requireCouchStatus(t, n.do(t, http.MethodGet, "/"+couchSum(data), nil, nil), http.StatusOK)

		logs := n.logs.String()
		for _, s := range secrets {
			assert.NotContains(t, logs, s, "a credential in the logs")
		}
	})

	t.Run("a session cookie from another site's page", func(t *testing.T) {
		c := cfg
		c.Me = "http://dtfc.example"
		c.CORSOrigins = []string{"https://app.example", "*"}
		n := startCouchNode(t, c)
		from := func(origin string) func(*http.Request) {
			return both(withSession(aliceCookie), func(r *http.Request) { r.Header.Set("Origin", origin) })
		}
		// A page of an origin not listed by name ("*" allows reading
		// only): refused, nothing stored.
		data := []byte("a forged upload")
		requireCouchStatus(t, n.put(t, "csrf.txt", data, from("https://evil.example")), http.StatusForbidden)
		requireNotStored(t, n, data)
		// The node's own pages and a listed origin's write; Basic
		// credentials are no ambient credential: any origin.
		requireCouchStatus(t, n.put(t, "own.txt", []byte("own origin"), from("http://dtfc.example")), http.StatusCreated)
		requireCouchStatus(t, n.put(t, "app.txt", []byte("listed origin"), from("https://app.example")), http.StatusCreated)
		requireCouchStatus(t, n.put(t, "basic.txt", []byte("basic, any origin"), both(withBasic("alice", "alice-pw-9e2"), func(r *http.Request) {
			r.Header.Set("Origin", "https://evil.example")
		})), http.StatusCreated)
	})

	t.Run("the operator's routes need CouchDB's _admin", func(t *testing.T) {
		n := startCouchNode(t, cfg)
		for _, path := range []string{"/_deny", "/_blobs"} {
			requireCouchStatus(t, n.do(t, http.MethodGet, path, nil, withSession(aliceCookie)), http.StatusForbidden)
			requireCouchStatus(t, n.do(t, http.MethodGet, path, nil, withBasic("admin", couchAdminPassword)), http.StatusOK)
		}
	})

	t.Run("any user without roles", func(t *testing.T) {
		n := startCouchNode(t, Config{CouchDBAuth: proxy.url})
		requireCouchStatus(t, n.put(t, "bob.txt", []byte("bob has no role"), withSession(bobCookie)), http.StatusCreated)
		requireCouchStatus(t, n.put(t, "x.txt", []byte("wrong"), withBasic("bob", "wrong-pw-0b1")), http.StatusUnauthorized)
	})

	t.Run("with auth_token either credential writes", func(t *testing.T) {
		c := cfg
		c.AuthTokens = []string{"dtfc-token-5a"}
		n := startCouchNode(t, c)
		before := proxy.sessions.Load()
		requireCouchStatus(t, n.put(t, "t.txt", []byte("by token"), withBearer("dtfc-token-5a")), http.StatusCreated)
		assert.Equal(t, before, proxy.sessions.Load(), "a write token needs no CouchDB")
		requireCouchStatus(t, n.put(t, "s.txt", []byte("by session"), withSession(aliceCookie)), http.StatusCreated)
		requireCouchStatus(t, n.put(t, "s.txt", []byte("session, wrong token"), both(withBearer("nope"), withSession(aliceCookie))), http.StatusCreated)
		a := n.put(t, "x.txt", []byte("wrong token"), withBearer("nope"))
		requireCouchStatus(t, a, http.StatusUnauthorized)
		assert.Contains(t, string(a.body), "Bearer", "the message names both ways to write")
		requireCouchStatus(t, n.put(t, "x.txt", []byte("no role"), withSession(bobCookie)), http.StatusForbidden)
	})

	t.Run("cache", func(t *testing.T) {
		const ok, noUser = 2 * time.Second, 1 * time.Second
		setCouchLimits(t, ok, noUser, 5*time.Second)
		proxy := startCouchProxy(t, pouch.url, nil)
		n := startCouchNode(t, Config{CouchDBAuth: proxy.url, CouchDBRoles: []string{"writer"}})

		// A user: asked once, then trusted for ok.
		requireCouchStatus(t, n.put(t, "c1.txt", []byte("cache 1"), withSession(aliceCookie)), http.StatusCreated)
		expired := time.Now().Add(ok) // the answer was cached before this
		require.EqualValues(t, 1, proxy.sessions.Load())
		for i := range 3 {
			requireCouchStatus(t, n.put(t, "c.txt", []byte(fmt.Sprint("cache again ", i)), withSession(aliceCookie)), http.StatusCreated)
		}
		if time.Now().Before(expired) {
			assert.EqualValues(t, 1, proxy.sessions.Load(), "CouchDB asked again within the cache's time")
		}
		// Another credential of the same user is another entry.
		requireCouchStatus(t, n.put(t, "c2.txt", []byte("cache 2"), withBasic("alice", "alice-pw-9e2")), http.StatusCreated)
		require.EqualValues(t, 2, proxy.sessions.Load())
		// Once expired, CouchDB is asked again.
		time.Sleep(time.Until(expired))
		requireCouchStatus(t, n.put(t, "c3.txt", []byte("cache 3"), withSession(aliceCookie)), http.StatusCreated)
		assert.EqualValues(t, 3, proxy.sessions.Load(), "an expired answer must be asked again")

		// No user: remembered too, for noUser.
		before := proxy.sessions.Load()
		requireCouchStatus(t, n.put(t, "x.txt", []byte("wrong 1"), withBasic("alice", "wrong-pw-0b1")), http.StatusUnauthorized)
		expired = time.Now().Add(noUser)
		requireCouchStatus(t, n.put(t, "x.txt", []byte("wrong 2"), withBasic("alice", "wrong-pw-0b1")), http.StatusUnauthorized)
		if time.Now().Before(expired) {
			assert.Equal(t, before+1, proxy.sessions.Load(), "a refused credential asked again within its cache time")
		}
		time.Sleep(time.Until(expired))
		requireCouchStatus(t, n.put(t, "x.txt", []byte("wrong 3"), withBasic("alice", "wrong-pw-0b1")), http.StatusUnauthorized)
		assert.Equal(t, before+2, proxy.sessions.Load())
	})

	t.Run("concurrent lookups share one request", func(t *testing.T) {
		setCouchLimits(t, 10*time.Second, 2*time.Second, couchWait)
		gate := make(chan struct{})
		proxy := startCouchProxy(t, pouch.url, gate)
		n := startCouchNode(t, Config{CouchDBAuth: proxy.url, CouchDBRoles: []string{"writer"}})
		const k = 8
		answers := make(chan couchAnswer, k)
		var wg sync.WaitGroup
		for i := range k {
			wg.Go(func() {
				answers <- n.put(t, "f.txt", []byte(fmt.Sprint("concurrent ", i)), withSession(aliceCookie))
			})
		}
		waitFor(t, couchWait, "every upload to enter and one to reach CouchDB", func() bool {
			return n.entered.Load() == k && proxy.sessions.Load() >= 1
		})
		// None of the others may reach CouchDB while the first is held.
		end := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(end) && proxy.sessions.Load() == 1 {
			time.Sleep(10 * time.Millisecond)
		}
		close(gate)
		wg.Wait()
		close(answers)
		for a := range answers {
			requireCouchStatus(t, a, http.StatusCreated)
		}
		assert.EqualValues(t, 1, proxy.sessions.Load(), "concurrent lookups of one credential must share one request")
	})

	t.Run("CouchDB down", func(t *testing.T) {
		n := startCouchNode(t, cfg)
		requireCouchStatus(t, n.put(t, "d.txt", []byte("before"), withSession(aliceCookie)), http.StatusCreated)
		cachedUntil := time.Now().Add(couchLimits.OK)
		require.NoError(t, pouch.stop())
		// Cached before CouchDB went away: still trusted for its time.
		a := n.put(t, "d2.txt", []byte("cached"), withSession(aliceCookie))
		if time.Now().Before(cachedUntil) {
			requireCouchStatus(t, a, http.StatusCreated)
		}
		data := []byte("while CouchDB is down")
		for _, auth := range []func(*http.Request){
			withBasic("alice", "alice-pw-9e2"),
			withSession(bobCookie),
		} {
			a := n.put(t, "down.txt", data, auth)
			requireCouchStatus(t, a, http.StatusServiceUnavailable)
			assert.Equal(t, "5", a.header.Get("Retry-After"))
			assert.NotContains(t, string(a.body), proxy.url, "CouchDB's address is not the client's business")
		}
		requireNotStored(t, n, data)
		assert.Contains(t, n.logs.String(), "cannot ask CouchDB")
		logs := n.logs.String()
		for _, s := range secrets {
			assert.NotContains(t, logs, s, "a credential in the logs")
		}
	})
}

// TestCouchAuthUnreachable: a CouchDB nobody answers at is a 503, never
// a 401 and never a write.
func TestCouchAuthUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())

	n := startCouchNode(t, Config{CouchDBAuth: dead, CouchDBRoles: []string{"writer"}})
	data := []byte("nobody to ask")
	for _, auth := range []func(*http.Request){withBasic("alice", "pw"), withSession("c2Vzc2lvbg")} {
		a := n.put(t, "u.txt", data, auth)
		requireCouchStatus(t, a, http.StatusServiceUnavailable)
		assert.Equal(t, "5", a.header.Get("Retry-After"))
	}
	requireNotStored(t, n, data)
	// Without credentials there is nothing to ask: 401.
	requireCouchStatus(t, n.put(t, "u.txt", data, nil), http.StatusUnauthorized)
}

// TestCouchAuthAnswers runs a node against a small HTTP server standing
// in for CouchDB's GET /_session, for the answers pouchdb-server does not
// give: what a CouchDB in "admin party", a proxy or a broken server may
// answer. Which answer it gives is chosen by the Basic user name.
func TestCouchAuthAnswers(t *testing.T) {
	setCouchLimits(t, 10*time.Second, 2*time.Second, 500*time.Millisecond)
	var forwarded atomic.Value // the last Authorization seen
	var endless atomic.Int64   // bytes of the endless answer written
	standIn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere/_session" {
			// Where "redirect" points: a session that would pass.
			io.WriteString(w, `{"ok":true,"userCtx":{"name":"writer","roles":["writer"]}}`)
			return
		}
		if r.URL.Path != "/couch/_session" || r.Method != http.MethodGet {
			http.Error(w, `{"error":"not_found"}`, http.StatusNotFound)
			return
		}
		forwarded.Store(r.Header.Get("Authorization"))
		user, _, _ := r.BasicAuth()
		session := func(name any, roles ...string) {
			if roles == nil {
				roles = []string{}
			}
			json.NewEncoder(w).Encode(map[string]any{"ok": true, "userCtx": map[string]any{"name": name, "roles": roles}})
		}
		switch user {
		case "": // a cookie CouchDB does not know
			session(nil)
		case "writer":
			session("writer", "writer")
		case "admin":
			session("admin", "_admin")
		case "admin-party":
			session(nil, "_admin")
		case "empty-name":
			session("", "writer")
		case "denied":
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"unauthorized","reason":"Name or password is incorrect."}`)
		case "bad-request":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"bad_request","reason":"Malformed AuthSession cookie."}`)
		case "error":
			http.Error(w, `{"error":"internal"}`, http.StatusInternalServerError)
		case "busy":
			http.Error(w, `{"error":"too_many"}`, http.StatusTooManyRequests)
		case "redirect":
			http.Redirect(w, r, "/elsewhere/_session", http.StatusFound)
		case "not-json":
			io.WriteString(w, "<html>a login page</html>")
		case "no-userctx":
			io.WriteString(w, `{"ok":true}`)
		case "huge":
			io.WriteString(w, `{"ok":true,"userCtx":{"name":"writer","roles":["writer","`+strings.Repeat("r", maxSessionBytes)+`"]}}`)
		case "endless":
			// A valid start, then more than anyone should read.
			io.WriteString(w, `{"ok":true,"userCtx":{"name":"writer","roles":["writer","`)
			chunk := []byte(strings.Repeat("r", 64<<10))
			for endless.Load() < 1<<30 {
				n, err := w.Write(chunk)
				endless.Add(int64(n))
				if err != nil {
					return
				}
			}
		case "slow":
			<-r.Context().Done() // beyond the time limit
		default:
			t.Errorf("unexpected user %q", user)
		}
	}))
	t.Cleanup(standIn.Close)

	// The URL's path is kept; its userinfo is never sent.
	n := startCouchNode(t, Config{CouchDBAuth: strings.Replace(standIn.URL, "http://", "http://root:root-pw@", 1) + "/couch/", CouchDBRoles: []string{"writer"}})
	for _, tc := range []struct {
		user   string
		status int
	}{
		{"writer", http.StatusCreated},
		{"admin", http.StatusCreated},
		{"admin-party", http.StatusUnauthorized},
		{"empty-name", http.StatusUnauthorized},
		{"denied", http.StatusUnauthorized},
		{"bad-request", http.StatusUnauthorized},
		{"error", http.StatusServiceUnavailable},
		{"busy", http.StatusServiceUnavailable},
		{"redirect", http.StatusServiceUnavailable},
		{"not-json", http.StatusServiceUnavailable},
		{"no-userctx", http.StatusServiceUnavailable},
		{"huge", http.StatusServiceUnavailable},
		{"endless", http.StatusServiceUnavailable},
		{"slow", http.StatusServiceUnavailable},
	} {
		t.Run(tc.user, func(t *testing.T) {
			data := []byte("answer " + tc.user)
			start := time.Now()
			a := n.put(t, tc.user+".txt", data, withBasic(tc.user, "pw"))
			requireCouchStatus(t, a, tc.status)
			// The time limit (500 ms here) holds, with room for a slow
			// machine.
			assert.Less(t, time.Since(start), 10*time.Second)
			if tc.status >= 400 {
				requireNotStored(t, n, data)
			}
			wantAuth := (&http.Request{Header: http.Header{}})
			wantAuth.SetBasicAuth(tc.user, "pw")
			assert.Equal(t, wantAuth.Header.Get("Authorization"), forwarded.Load(), "the client's credentials, not the URL's")
		})
	}
	// Reading stopped near the size bound: what was written beyond it
	// sat in socket buffers (a few MiB at most), not in dtfc's memory.
	assert.Less(t, endless.Load(), int64(32<<20), "the answer to GET /_session must be read with a bound")
	// A session cookie is sent alone, with no Authorization from the URL.
	forwarded.Store("none")
	requireCouchStatus(t, n.put(t, "cookie.txt", []byte("cookie"), withSession("c2Vzc2lvbg")), http.StatusUnauthorized)
	assert.Equal(t, "", forwarded.Load(), "couchdb_auth's userinfo must not be sent")
	assert.NotContains(t, n.logs.String(), "root-pw")
}

// TestCouchAuthCacheBound: the cache keeps at most its number of
// entries, dropping the oldest, and keys them by a hash of the
// credential, never the credential itself.
func TestCouchAuthCacheBound(t *testing.T) {
	a := newCouchAuth("http://127.0.0.1:1", nil)
	a.max = 3
	creds := []couchCredential{{cookie: "one"}, {cookie: "two"}, {basic: "Basic dGhyZWU6eA=="}, {cookie: "four"}}
	for _, c := range creds {
		a.store(c.key(), &couchUser{Name: "u"})
	}
	assert.Equal(t, 3, a.order.Len())
	assert.Len(t, a.cache, 3)
	_, ok := a.cached(creds[0].key())
	assert.False(t, ok, "the oldest entry must be dropped")
	for _, c := range creds[1:] {
		_, ok := a.cached(c.key())
		assert.True(t, ok)
	}
	// A cookie and a Basic header of the same bytes are different keys.
	assert.NotEqual(t, couchCredential{cookie: "x"}.key(), couchCredential{basic: "x"}.key())
}
