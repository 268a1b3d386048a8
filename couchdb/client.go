package couchdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	// ErrNotFound means CouchDB answered 404: no such database, document,
	// revision or attachment.
	ErrNotFound = errors.New("couchdb: not found")
	// ErrConflict means CouchDB answered 409: the document was updated
	// since the revision the write named.
	ErrConflict = errors.New("couchdb: document update conflict")
)

// Error is an error answer from CouchDB.
type Error struct {
	Method string
	// URL is the request's URL without credentials.
	URL        string
	StatusCode int
	// Name and Reason are CouchDB's "error" and "reason".
	Name   string
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("couchdb: %s %s: %d %s: %s", e.Method, e.URL, e.StatusCode, e.Name, e.Reason)
}

// Is makes errors.Is(err, ErrNotFound) true for a 404 and
// errors.Is(err, ErrConflict) true for a 409.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound ||
		target == ErrConflict && e.StatusCode == http.StatusConflict
}

// ClientOptions configure a Client. The zero value is usable.
type ClientOptions struct {
	// HTTPClient sends the requests. If nil, a client with its own
	// transport (no transparent gzip, so attachment bytes arrive as
	// CouchDB stores them decoded) is used. It should have no overall
	// Timeout: change feeds and attachments are streamed.
	HTTPClient *http.Client
	// IdleTimeout cancels a request that receives nothing for this long
	// (headers or body). If zero, it defaults to 60 s. A long-poll
	// change feed's heartbeat must be shorter.
	IdleTimeout time.Duration
}

// Client talks to one CouchDB server (or anything speaking its HTTP API).
type Client struct {
	base *url.URL // without credentials
	user *url.Userinfo
	hc   *http.Client
	idle time.Duration
}

// New returns a Client for the server at rawURL, which may carry
// credentials (http://user:password@host:5984), sent as basic auth. They
// never appear in errors.
func New(rawURL string, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(rawURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("couchdb: URL %q: want http(s)://[user:password@]host:port", redact(rawURL))
	}
	c := &Client{user: u.User, hc: opts.HTTPClient, idle: opts.IdleTimeout}
	u.User = nil
	u.RawQuery, u.Fragment = "", ""
	c.base = u
	if c.hc == nil {
		c.hc = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			DisableCompression:    true,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}}
	}
	if c.idle <= 0 {
		c.idle = 60 * time.Second
	}
	return c, nil
}

// redact removes the password from a URL for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// URL is the server's URL without credentials.
func (c *Client) URL() string { return c.base.String() }

// CloseIdleConnections closes the connections the client keeps open.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// DB returns a handle on the database name. It checks nothing.
func (c *Client) DB(name string) *DB { return &DB{c: c, name: name} }

// DB is one database of a Client.
type DB struct {
	c    *Client
	name string
}

// Name is the database's name.
func (db *DB) Name() string { return db.name }

// pathSeg escapes one segment of a URL path, a '+' too: CouchDB 3 reads
// a '+' in a path as a space by default ([chttpd] decode_plus_to_space),
// so a name holding one would be read or written as another.
func pathSeg(s string) string { return strings.ReplaceAll(url.PathEscape(s), "+", "%2B") }

// docPath escapes a document ID for a URL path. The prefixes _design/ and
// _local/ keep their slash, as CouchDB expects; any other slash in an ID
// is escaped.
func docPath(id string) string {
	for _, p := range []string{"_design/", "_local/"} {
		if rest, ok := strings.CutPrefix(id, p); ok {
			return p + pathSeg(rest)
		}
	}
	return pathSeg(id)
}

// attPath escapes an attachment name: CouchDB takes the rest of the path
// as the name, so its slashes may stay, and every segment is escaped.
func attPath(name string) string {
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = pathSeg(s)
	}
	return strings.Join(segs, "/")
}

func (db *DB) url(path string, q url.Values) string {
	s := db.c.base.String() + "/" + pathSeg(db.name)
	if path != "" {
		s += "/" + path
	}
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// watchdog cancels a request that makes no progress for the client's idle
// timeout: a CouchDB that stops answering mid-body (or a half-open
// connection) must not hang a migration forever.
type watchdog struct {
	body   io.ReadCloser
	timer  *time.Timer
	idle   time.Duration
	fired  *atomic.Bool
	cancel context.CancelFunc
	once   sync.Once
}

func (w *watchdog) Read(p []byte) (int, error) {
	n, err := w.body.Read(p)
	if n > 0 {
		w.timer.Reset(w.idle)
	}
	if err != nil && err != io.EOF && w.fired.Load() {
		err = fmt.Errorf("couchdb: nothing received for %s: %w", w.idle, err)
	}
	return n, err
}

func (w *watchdog) Close() error {
	err := w.body.Close()
	w.once.Do(func() {
		w.timer.Stop()
		w.cancel()
	})
	return err
}

// do sends a request and returns the response of a 2xx answer, its body
// guarded by the idle watchdog; any other answer is an *Error. The caller
// closes the body.
func (db *DB) do(ctx context.Context, method, u string, body []byte, idle time.Duration) (*http.Response, error) {
	if idle <= 0 {
		idle = db.c.idle
	}
	ctx, cancel := context.WithCancel(ctx)
	fired := new(atomic.Bool)
	timer := time.AfterFunc(idle, func() {
		fired.Store(true)
		cancel()
	})
	stop := func() {
		timer.Stop()
		cancel()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		stop()
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if db.c.user != nil {
		pw, _ := db.c.user.Password()
		req.SetBasicAuth(db.c.user.Username(), pw)
	}
	resp, err := db.c.hc.Do(req)
	if err != nil {
		stop()
		if fired.Load() {
			err = fmt.Errorf("couchdb: %s %s: nothing received for %s: %w", method, u, idle, err)
		}
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer stop()
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var ans struct {
			Error  string `json:"error"`
			Reason string `json:"reason"`
		}
		e := &Error{Method: method, URL: u, StatusCode: resp.StatusCode}
		if json.Unmarshal(b, &ans) == nil && (ans.Error != "" || ans.Reason != "") {
			e.Name, e.Reason = ans.Error, ans.Reason
		} else {
			e.Name, e.Reason = http.StatusText(resp.StatusCode), strings.TrimSpace(string(b))
		}
		return nil, e
	}
	timer.Reset(idle)
	resp.Body = &watchdog{body: resp.Body, timer: timer, idle: idle, fired: fired, cancel: cancel}
	return resp, nil
}

// getJSON decodes the answer to a GET into v.
func (db *DB) getJSON(ctx context.Context, u string, v any) error {
	resp, err := db.do(ctx, http.MethodGet, u, nil, 0)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("couchdb: GET %s: decoding the answer: %w", u, err)
	}
	return nil
}

// Info is the part of a database's information this package uses.
type Info struct {
	DocCount  int64           `json:"doc_count"`
	UpdateSeq json.RawMessage `json:"update_seq"`
}

// Info returns the database's information (GET /{db}).
func (db *DB) Info(ctx context.Context) (Info, error) {
	var info Info
	err := db.getJSON(ctx, db.url("", nil), &info)
	return info, err
}

// ChangesOptions select a page of the change feed.
type ChangesOptions struct {
	// Since is the sequence to start after, as CouchDB gave it (an opaque
	// JSON value: a number for CouchDB 1.x and pouchdb-server, a string
	// for CouchDB 2+). Nil starts at the beginning.
	Since json.RawMessage
	// Limit caps the number of results; zero means no limit.
	Limit int
	// IncludeDocs asks for every changed document (winning revision,
	// attachments as stubs with their encoding information).
	IncludeDocs bool
	// Conflicts adds _conflicts to included documents.
	Conflicts bool
	// Longpoll waits for at least one change if there is none after
	// Since, instead of answering an empty page at once.
	Longpoll bool
	// Heartbeat, with Longpoll, asks CouchDB to send a newline this often
	// while it waits; the request is cancelled after three heartbeats'
	// time without one, so a dead connection is noticed. If zero, it
	// defaults to 10 s.
	Heartbeat time.Duration
}

// Change is one result of the change feed.
type Change struct {
	// Seq is the change's sequence (opaque).
	Seq     json.RawMessage `json:"seq"`
	ID      string          `json:"id"`
	Deleted bool            `json:"deleted"`
	// Doc is the document, with ChangesOptions.IncludeDocs.
	Doc json.RawMessage `json:"doc"`
}

// Changes is a page of the change feed.
type Changes struct {
	Results []Change `json:"results"`
	// LastSeq is where the next page starts (pass it as Since).
	LastSeq json.RawMessage `json:"last_seq"`
}

// sinceParam turns an opaque sequence into the text of a since= query
// parameter: a JSON string is sent unquoted, anything else (a number, or
// CouchDB 1.6's [seq, ...] arrays) as its JSON text.
func sinceParam(seq json.RawMessage) string {
	seq = bytes.TrimSpace(seq)
	if len(seq) == 0 || string(seq) == "null" {
		return "0"
	}
	var s string
	if seq[0] == '"' && json.Unmarshal(seq, &s) == nil {
		return s
	}
	return string(seq)
}

// Changes reads one page of the database's change feed (GET
// /{db}/_changes), in the "normal" or "longpoll" style.
func (db *DB) Changes(ctx context.Context, opts ChangesOptions) (*Changes, error) {
	q := url.Values{}
	q.Set("since", sinceParam(opts.Since))
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.IncludeDocs {
		q.Set("include_docs", "true")
		q.Set("att_encoding_info", "true")
	}
	if opts.Conflicts {
		q.Set("conflicts", "true")
	}
	var idle time.Duration
	if opts.Longpoll {
		hb := opts.Heartbeat
		if hb <= 0 {
			hb = 10 * time.Second
		}
		q.Set("feed", "longpoll")
		q.Set("heartbeat", strconv.FormatInt(hb.Milliseconds(), 10))
		idle = 3 * hb
	}
	u := db.url("_changes", q)
	resp, err := db.do(ctx, http.MethodGet, u, nil, idle)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var page Changes
	// Heartbeats are whitespace inside the JSON text: the decoder skips
	// them.
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return nil, fmt.Errorf("couchdb: GET %s: decoding the answer: %w", u, err)
	}
	if len(page.LastSeq) == 0 {
		return nil, fmt.Errorf("couchdb: GET %s: the answer has no last_seq", u)
	}
	return &page, nil
}

// Get returns a document's JSON (GET /{db}/{id}): the winning revision, or
// rev if given; attachments as stubs with their encoding information.
func (db *DB) Get(ctx context.Context, id, rev string) (json.RawMessage, error) {
	q := url.Values{}
	q.Set("att_encoding_info", "true")
	if rev != "" {
		q.Set("rev", rev)
	}
	var raw json.RawMessage
	if err := db.getJSON(ctx, db.url(docPath(id), q), &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// Put writes a document (PUT /{db}/{id}). The document must carry the
// _rev it replaces, if any: CouchDB refuses a write naming an older
// revision with 409 (ErrConflict), so a newer revision is never
// overwritten. It returns the new revision.
func (db *DB) Put(ctx context.Context, id string, doc any) (string, error) {
	body, err := json.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("couchdb: encoding %s: %w", id, err)
	}
	u := db.url(docPath(id), nil)
	resp, err := db.do(ctx, http.MethodPut, u, body, 0)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var ans struct {
		Rev string `json:"rev"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return "", fmt.Errorf("couchdb: PUT %s: decoding the answer: %w", u, err)
	}
	return ans.Rev, nil
}

// Attachment opens an attachment of revision rev of a document (GET
// /{db}/{id}/{name}?rev=...), streamed. The caller closes it. It also
// returns the Content-Length CouchDB announced (-1 if none).
func (db *DB) Attachment(ctx context.Context, id, name, rev string) (io.ReadCloser, int64, error) {
	q := url.Values{}
	if rev != "" {
		q.Set("rev", rev)
	}
	resp, err := db.do(ctx, http.MethodGet, db.url(docPath(id)+"/"+attPath(name), q), nil, 0)
	if err != nil {
		return nil, 0, err
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		// Accept-Encoding is not sent, so this should not happen.
		resp.Body.Close()
		return nil, 0, fmt.Errorf("couchdb: attachment %s/%s: unexpected Content-Encoding %q", id, name, ce)
	}
	return resp.Body, resp.ContentLength, nil
}
