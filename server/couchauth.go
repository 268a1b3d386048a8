package server

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/dtfc/dtfc/internal/httpstatus"
)

// couchLimits bound how long and how much of CouchDB's answers are kept.
// A variable only so that tests can shorten the times; nothing else
// writes it. Each couchAuth copies it when it is made.
var couchLimits = struct {
	// OK is how long a user named by CouchDB is trusted: the most a
	// password change, a logout or a removed role waits to take effect
	// ("at most 10s" in the contract).
	OK time.Duration
	// NoUser is how long "no such user" is remembered: short, since an
	// account may have just been created or its password fixed, yet long
	// enough that a client repeating wrong credentials does not cost a
	// request to CouchDB each time.
	NoUser time.Duration
	// Timeout bounds one request to CouchDB.
	Timeout time.Duration
	// Entries bounds the cache; beyond, the oldest answer is dropped.
	Entries int
}{OK: 10 * time.Second, NoUser: 2 * time.Second, Timeout: 5 * time.Second, Entries: 10000}

// maxSessionBytes bounds CouchDB's answer to GET /_session: a user
// context with a few hundred roles fits many times over.
const maxSessionBytes = 64 << 10

// couchRetryAfter is the Retry-After, in seconds, of a 503 answered
// because CouchDB could not be asked.
const couchRetryAfter = "5"

// couchAuth authorizes writers by their CouchDB session: it asks
// CouchDB's GET /_session who the request's credentials (the AuthSession
// cookie, or Basic credentials) belong to, and caches the answer per
// credential. It is safe for concurrent use.
type couchAuth struct {
	session string // <couchdb_auth>/_session, without userinfo
	bad     error  // set when couchdb_auth is not a URL: every lookup fails with it
	roles   []string
	hc      *http.Client
	okTTL   time.Duration
	noTTL   time.Duration
	timeout time.Duration
	max     int

	flight singleflight.Group

	mu    sync.Mutex
	cache map[[sha256.Size]byte]*list.Element // of *couchEntry
	order *list.List                          // oldest first
}

// couchUser is who CouchDB says a credential belongs to.
type couchUser struct {
	Name  string
	Roles []string
}

type couchEntry struct {
	key     [sha256.Size]byte
	user    *couchUser // nil: no user (wrong, expired or no credentials)
	expires time.Time
}

// newCouchAuth returns the authorizer for the CouchDB at base whose users
// need one of roles (any user if none), or nil if base is empty.
func newCouchAuth(base string, roles []string) *couchAuth {
	if base == "" {
		return nil
	}
	lim := couchLimits
	a := &couchAuth{
		okTTL:   lim.OK,
		noTTL:   lim.NoUser,
		timeout: lim.Timeout,
		max:     max(lim.Entries, 1),
		cache:   map[[sha256.Size]byte]*list.Element{},
		order:   list.New(),
	}
	for _, r := range roles {
		if r != "" {
			a.roles = append(a.roles, r)
		}
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		a.bad = fmt.Errorf("couchdb_auth %q is not CouchDB's URL", base)
	} else {
		// Userinfo in the URL would make Go's client send it as Basic
		// credentials whenever the request carries none (a cookie
		// lookup): a bad cookie would then pass as that user.
		u.User = nil
		u.Path = strings.TrimRight(u.Path, "/") + "/_session"
		u.RawPath, u.RawQuery, u.Fragment = "", "", ""
		a.session = u.String()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// No idle connections to close at shutdown (the Server has no Close),
	// and lookups are rare: at most one per credential per okTTL.
	tr.DisableKeepAlives = true
	tr.ResponseHeaderTimeout = a.timeout
	a.hc = &http.Client{
		Transport: tr,
		// A redirect is not CouchDB's answer, and following one could
		// carry the credentials elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return a
}

// couchCredential is the one credential of a request forwarded to
// CouchDB: its Authorization: Basic header, else its AuthSession cookie.
type couchCredential struct {
	basic  string // the whole Authorization header value
	cookie string // the AuthSession cookie's value
}

func couchCredentialOf(r *http.Request) (couchCredential, bool) {
	const prefix = "Basic "
	if h := r.Header.Get("Authorization"); len(h) > len(prefix) && strings.EqualFold(h[:len(prefix)], prefix) {
		return couchCredential{basic: h}, true
	}
	if c, err := r.Cookie("AuthSession"); err == nil && c.Value != "" {
		return couchCredential{cookie: c.Value}, true
	}
	return couchCredential{}, false
}

// key is the cache key of c: a hash, so that no secret is kept in memory
// longer than its request.
func (c couchCredential) key() [sha256.Size]byte {
	if c.basic != "" {
		return sha256.Sum256([]byte("basic\x00" + c.basic))
	}
	return sha256.Sum256([]byte("cookie\x00" + c.cookie))
}

var (
	errCouchNoUser = httpstatus.Errorf(http.StatusUnauthorized,
		"CouchDB knows no user by these credentials (a wrong name or password, or an expired session: log in again)")
	errCouchUnavailable = httpstatus.Errorf(http.StatusServiceUnavailable,
		"cannot check these credentials: CouchDB, which authorizes writers here, did not answer; nothing was stored; retry later")
)

// couchError is a failure to ask CouchDB: the detail for the log, the
// client gets errCouchUnavailable (CouchDB's address is not its business).
type couchError struct{ err error }

func (e *couchError) Error() string { return "couchdb_auth: " + e.err.Error() }
func (e *couchError) Unwrap() error { return e.err }

// authorize returns nil if cred belongs to a CouchDB user with one of
// the required roles; else errCouchNoUser (401), a 403, or a *couchError
// when CouchDB could not be asked (the credentials may be fine).
func (a *couchAuth) authorize(ctx context.Context, cred couchCredential, admin bool) error {
	u, err := a.user(ctx, cred)
	if err != nil {
		return err
	}
	if u == nil {
		return errCouchNoUser
	}
	if admin && !slices.Contains(u.Roles, "_admin") {
		return httpstatus.Errorf(http.StatusForbidden,
			"CouchDB user %q may write blobs but not run the cluster: this route needs a write token or a CouchDB _admin", u.Name)
	}
	if !a.allowed(u) {
		return httpstatus.Errorf(http.StatusForbidden,
			"CouchDB user %q has none of the roles that may write here (%s)", u.Name, strings.Join(a.roles, ", "))
	}
	return nil
}

func (a *couchAuth) allowed(u *couchUser) bool {
	if len(a.roles) == 0 || slices.Contains(u.Roles, "_admin") {
		return true
	}
	for _, r := range a.roles {
		if slices.Contains(u.Roles, r) {
			return true
		}
	}
	return false
}

// user returns who cred belongs to (nil: nobody), from the cache or from
// CouchDB. Concurrent lookups of one credential share one request to
// CouchDB, made under a context of its own so that a caller that goes
// away does not fail the others; each caller waits on its own ctx.
func (a *couchAuth) user(ctx context.Context, cred couchCredential) (*couchUser, error) {
	key := cred.key()
	if u, ok := a.cached(key); ok {
		return u, nil
	}
	ch := a.flight.DoChan(string(key[:]), func() (any, error) {
		u, err := a.ask(cred)
		if err != nil {
			return nil, err
		}
		a.store(key, u)
		return u, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*couchUser), nil
	case <-ctx.Done():
		return nil, httpstatus.Errorf(http.StatusServiceUnavailable, "gave up waiting for CouchDB: %v", ctx.Err())
	}
}

func (a *couchAuth) cached(key [sha256.Size]byte) (*couchUser, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	el, ok := a.cache[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*couchEntry)
	if !time.Now().Before(e.expires) {
		a.order.Remove(el)
		delete(a.cache, key)
		return nil, false
	}
	return e.user, true
}

func (a *couchAuth) store(key [sha256.Size]byte, u *couchUser) {
	ttl := a.okTTL
	if u == nil {
		ttl = a.noTTL
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if el, ok := a.cache[key]; ok {
		a.order.Remove(el)
		delete(a.cache, key)
	}
	for a.order.Len() >= a.max {
		oldest := a.order.Front()
		a.order.Remove(oldest)
		delete(a.cache, oldest.Value.(*couchEntry).key)
	}
	a.cache[key] = a.order.PushBack(&couchEntry{key: key, user: u, expires: time.Now().Add(ttl)})
}

// couchSession is the part of CouchDB's answer to GET /_session used
// here: {"ok": true, "userCtx": {"name": "alice", "roles": ["writer"]}}.
type couchSession struct {
	UserCtx *struct {
		Name  *string  `json:"name"`
		Roles []string `json:"roles"`
	} `json:"userCtx"`
}

// ask asks CouchDB who cred belongs to, forwarding that credential and
// nothing else of the client's request. A nil user with a nil error
// means CouchDB knows no user by it.
func (a *couchAuth) ask(cred couchCredential) (*couchUser, error) {
	if a.bad != nil {
		return nil, &couchError{a.bad}
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.session, nil)
	if err != nil {
		return nil, &couchError{err}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "dtfc")
	if cred.basic != "" {
		req.Header.Set("Authorization", cred.basic)
	} else {
		req.Header.Set("Cookie", "AuthSession="+cred.cookie)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		// *url.Error names the URL (without userinfo) and the cause,
		// never a header.
		return nil, &couchError{err}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusBadRequest, resp.StatusCode == http.StatusUnauthorized, resp.StatusCode == http.StatusForbidden:
		// Wrong Basic credentials (401) or a malformed cookie (400).
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxSessionBytes))
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		return nil, &couchError{fmt.Errorf("GET %s answered %s", a.session, resp.Status)}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxSessionBytes+1))
	if err != nil {
		return nil, &couchError{fmt.Errorf("GET %s: reading the answer: %w", a.session, err)}
	}
	if len(b) > maxSessionBytes {
		return nil, &couchError{fmt.Errorf("GET %s: answer larger than %d bytes", a.session, maxSessionBytes)}
	}
	var s couchSession
	if err := json.Unmarshal(b, &s); err != nil || s.UserCtx == nil {
		return nil, &couchError{fmt.Errorf("GET %s: not CouchDB's answer (want {\"userCtx\": {...}})", a.session)}
	}
	if s.UserCtx.Name == nil || *s.UserCtx.Name == "" {
		// No user, whatever the roles say: CouchDB in "admin party"
		// answers a null name with the role _admin to anyone.
		return nil, nil
	}
	return &couchUser{Name: *s.UserCtx.Name, Roles: s.UserCtx.Roles}, nil
}

// errIsCouch reports whether err is a failure to ask CouchDB.
func errIsCouch(err error) bool {
	var ce *couchError
	return errors.As(err, &ce)
}
