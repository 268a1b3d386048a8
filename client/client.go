// Package client is a Go client for dtfc nodes. It uploads, downloads (and
// verifies as it streams: a download whose bytes do not hash to their ID
// fails, never returns wrong bytes silently), deletes and inspects blobs,
// trying each configured node URL in turn when one is unreachable.
//
// It depends only on the standard library and the root dtfc package, so an
// application can import it without the server's dependencies.
package client

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
)

var (
	// ErrNotFound means no node had the ID (HTTP 404).
	ErrNotFound = errors.New("dtfc: not found")
	// ErrDigestMismatch means bytes received did not hash to their ID.
	ErrDigestMismatch = errors.New("dtfc: content does not match its SHA-512")
	// ErrNoNodes means every node URL failed; the error wraps each failure.
	ErrNoNodes = errors.New("dtfc: no node could be reached")
	// ErrModified means a conditional delete (DeleteUnmodifiedSince)
	// found the blob uploaded again after the time given (HTTP 412);
	// nothing was deleted.
	ErrModified = errors.New("dtfc: uploaded again since")
)

// Error is an error answer from a node.
type Error struct {
	URL        string
	StatusCode int
	Message    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("dtfc: %s: %d %s: %s", e.URL, e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Is makes errors.Is(err, ErrNotFound) true for a 404, and
// errors.Is(err, ErrModified) for a 412.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound ||
		target == ErrModified && e.StatusCode == http.StatusPreconditionFailed
}

// Options configure a Client. The zero value is usable.
type Options struct {
	// HTTPClient sends the requests. If nil, http.DefaultClient is used.
	HTTPClient *http.Client
	// Token is sent as "Authorization: Bearer <token>" with every request,
	// if set.
	Token string
}

// Client talks to one or more dtfc nodes of a cluster.
type Client struct {
	urls  []string
	hc    *http.Client
	token string
}

// New returns a Client for the given node URLs, tried in order.
func New(urls []string, opts Options) (*Client, error) {
	if len(urls) == 0 {
		return nil, errors.New("dtfc: no node URL given")
	}
	c := &Client{hc: opts.HTTPClient, token: opts.Token}
	if c.hc == nil {
		c.hc = http.DefaultClient
	}
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return nil, fmt.Errorf("dtfc: node URL %q: want http(s)://host:port", u)
		}
		c.urls = append(c.urls, strings.TrimRight(u, "/"))
	}
	return c, nil
}

// retryable reports whether another node may succeed where this one
// failed: it could not be reached, or it failed on its side.
func retryable(err error) bool {
	if errors.As(err, new(final)) {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.StatusCode >= 500
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// each runs try against every node in turn until one succeeds or fails for
// a reason another node would share.
func (c *Client) each(ctx context.Context, try func(base string) error) error {
	var errs []error
	for _, base := range c.urls {
		err := try(base)
		if err == nil {
			return nil
		}
		if !retryable(err) || ctx.Err() != nil {
			return err
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("%w: %w", ErrNoNodes, errors.Join(errs...))
}

func (c *Client) request(ctx context.Context, method, u string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// do sends a request to u, with the client's token.
func (c *Client) do(ctx context.Context, method, u string, body io.Reader) (*http.Response, error) {
	req, err := c.request(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	return c.hc.Do(req)
}

// answerError turns a non-2xx answer into an *Error, reading its JSON body.
func answerError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		msg = body.Error
	}
	return &Error{URL: resp.Request.URL.String(), StatusCode: resp.StatusCode, Message: msg}
}

// PutOptions describe an upload.
type PutOptions struct {
	// Filename is recorded as metadata (and chooses the Content-Type).
	Filename string
	// Expected, if non-zero, is the ID the content must hash to; a node
	// refuses mismatching bytes and stores nothing.
	Expected dtfc.ID
	// ContentType is recorded if set.
	ContentType string
	// Replicas, if above 1, waits until that many replicas hold the file.
	Replicas int
	// Size, if above zero, is sent as the Content-Length. If zero, the
	// remaining length of an io.Seeker body is sent; any other body is
	// sent chunked.
	Size int64
}

// PutResult describes a stored file.
type PutResult struct {
	ID       dtfc.ID
	Size     int64
	Created  bool
	Location string
}

// Put uploads r. The ID the node answers is checked against the hash of the
// bytes sent, so an upload corrupted in transit is an error. If r is an
// io.Seeker, a node that cannot be reached (or fails with a 5xx) is
// replaced by the next one, which gets r again from where it started;
// otherwise only the first node is tried.
//
// If opts.Expected is set and the bytes do not hash to it, the node refuses
// them and stores nothing; the error then matches ErrDigestMismatch.
func (c *Client) Put(ctx context.Context, r io.Reader, opts PutOptions) (PutResult, error) {
	seeker, canRetry := r.(io.Seeker)
	var start int64
	if canRetry {
		var err error
		if start, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			canRetry = false
		}
	}
	if canRetry && opts.Size <= 0 {
		// The remaining length, so the node gets a Content-Length (and
		// can refuse an upload over its limit before reading it).
		if end, err := seeker.Seek(0, io.SeekEnd); err == nil {
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return PutResult{}, fmt.Errorf("dtfc: rewinding the body: %w", err)
			}
			opts.Size = end - start
			if opts.Size == 0 {
				r = http.NoBody
			}
		} else {
			canRetry = false
		}
	}
	var res PutResult
	attempt := 0
	err := c.each(ctx, func(base string) error {
		if attempt > 0 {
			if !canRetry {
				return fmt.Errorf("dtfc: upload to %s failed and the body cannot be re-read", base)
			}
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return err
			}
		}
		attempt++
		var err error
		res, err = c.putOnce(ctx, base, r, opts)
		var e *Error
		if opts.Replicas > 1 && errors.As(err, &e) && e.StatusCode == http.StatusGatewayTimeout {
			// The file is stored and still replicating: sent to the next
			// node, it would only wait there again.
			return final{err}
		}
		return err
	})
	var f final
	if errors.As(err, &f) {
		err = f.error
	}
	return res, err
}

// final is an error each does not try another node for.
type final struct{ error }

func (f final) Unwrap() error { return f.error }

func (c *Client) putOnce(ctx context.Context, base string, r io.Reader, opts PutOptions) (PutResult, error) {
	body := newHashingReader(r)
	// POST with the filename as a query parameter, not PUT /<filename>:
	// as a path, a name beginning with "_" is a reserved route, and one
	// of 128 hex digits is taken for the expected ID.
	q := url.Values{}
	if opts.Filename != "" {
		q.Set("filename", opts.Filename)
	}
	if opts.Replicas > 1 {
		q.Set("replicas", strconv.Itoa(opts.Replicas))
	}
	u := base + "/"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := c.request(ctx, http.MethodPost, u, body)
	if err != nil {
		return PutResult{}, err
	}
	req.ContentLength = -1
	if opts.Size > 0 {
		req.ContentLength = opts.Size
	}
	if r == http.NoBody {
		req.Body, req.ContentLength = http.NoBody, 0
		body.eof = true
		body.Close()
	}
	if !opts.Expected.IsZero() {
		req.Header.Set("X-Content-SHA512", opts.Expected.String())
	}
	if opts.ContentType != "" {
		req.Header.Set("Content-Type", opts.ContentType)
	}
	resp, err := c.hc.Do(req)
	// Whatever the outcome, the transport is done with r before Put
	// seeks it back for the next node.
	defer body.sum(ctx)
	if err != nil {
		return PutResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		err := answerError(resp)
		if resp.StatusCode == http.StatusBadRequest && !opts.Expected.IsZero() {
			if sent, whole, serr := body.sum(ctx); serr == nil && whole && sent != opts.Expected {
				return PutResult{}, fmt.Errorf("%w: the bytes sent hash to %s, not the expected %s: %w", ErrDigestMismatch, sent, opts.Expected, err)
			}
		}
		return PutResult{}, err
	}
	var ans struct {
		SHA512 string `json:"sha512"`
		Size   int64  `json:"size"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return PutResult{}, fmt.Errorf("dtfc: %s: reading the answer: %w", u, err)
	}
	id, err := dtfc.ParseID(ans.SHA512)
	if err != nil {
		return PutResult{}, fmt.Errorf("dtfc: %s: the answer's sha512: %w", u, err)
	}
	sent, _, err := body.sum(ctx)
	if err != nil {
		return PutResult{}, err
	}
	if id != sent {
		return PutResult{}, fmt.Errorf("%w: sent %s, node stored %s", ErrDigestMismatch, sent, id)
	}
	return PutResult{ID: id, Size: ans.Size, Created: resp.StatusCode == http.StatusCreated, Location: resp.Header.Get("Location")}, nil
}

// hashingReader hashes the upload body as the transport reads it. The
// transport reads from its own goroutine and closes the body once done
// (even after RoundTrip returned), so the hash is read only after Close:
// sum waits for it.
type hashingReader struct {
	r      io.Reader
	h      hash.Hash
	eof    bool
	closed chan struct{}
	once   sync.Once
}

func newHashingReader(r io.Reader) *hashingReader {
	return &hashingReader{r: r, h: sha512.New(), closed: make(chan struct{})}
}

func (hr *hashingReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	if err == io.EOF {
		hr.eof = true
	}
	return n, err
}

// Close marks the end of the transport's use; the caller's reader is not
// closed (Put does not own it).
func (hr *hashingReader) Close() error {
	hr.once.Do(func() { close(hr.closed) })
	return nil
}

// sum returns the hash of what was sent, and whether that was the whole
// body, once the transport is done with it.
func (hr *hashingReader) sum(ctx context.Context) (id dtfc.ID, whole bool, err error) {
	select {
	case <-hr.closed:
	case <-ctx.Done():
		return id, false, ctx.Err()
	}
	copy(id[:], hr.h.Sum(nil))
	return id, hr.eof, nil
}

// Get opens the blob id. The returned reader verifies the bytes as they
// stream: if they do not hash to id, the read that reaches the end returns
// ErrDigestMismatch instead of io.EOF. Nodes are tried in order.
func (c *Client) Get(ctx context.Context, id dtfc.ID) (io.ReadCloser, error) {
	var out io.ReadCloser
	err := c.each(ctx, func(base string) error {
		resp, err := c.do(ctx, http.MethodGet, base+"/"+id.String(), nil)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			defer resp.Body.Close()
			return answerError(resp)
		}
		out = &verifier{rc: resp.Body, want: id, h: sha512.New(), size: resp.ContentLength}
		return nil
	})
	return out, err
}

type verifier struct {
	rc   io.ReadCloser
	want dtfc.ID
	h    hash.Hash
	n    int64
	size int64
	err  error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if err == io.EOF {
		var got dtfc.ID
		copy(got[:], v.h.Sum(nil))
		if got != v.want {
			err = fmt.Errorf("%w: received %d bytes hashing to %s, want %s", ErrDigestMismatch, v.n, got, v.want)
		}
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

func (v *verifier) Close() error { return v.rc.Close() }

// Delete deletes id throughout the cluster.
func (c *Client) Delete(ctx context.Context, id dtfc.ID) error { return c.delete(ctx, id, "") }

// DeleteUnmodifiedSince deletes id throughout the cluster, on the
// condition that the node that takes the delete holds id and has not
// had it uploaded after since (to the second; If-Unmodified-Since): for
// a caller that judged the blob by its upload time (as Blob.Uploaded in
// a listing), so that an upload of the same bytes meanwhile, which
// renews that time, keeps it. The node checks the condition with the
// delete: ErrModified if it fails, ErrNotFound if the node holds no live
// record of id (it asks no peer).
func (c *Client) DeleteUnmodifiedSince(ctx context.Context, id dtfc.ID, since time.Time) error {
	return c.delete(ctx, id, since.UTC().Format(http.TimeFormat))
}

// delete sends DELETE /id, with If-Unmodified-Since: since unless it is "".
func (c *Client) delete(ctx context.Context, id dtfc.ID, since string) error {
	return c.each(ctx, func(base string) error {
		req, err := c.request(ctx, http.MethodDelete, base+"/"+id.String(), nil)
		if err != nil {
			return err
		}
		if since != "" {
			req.Header.Set("If-Unmodified-Since", since)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return answerError(resp)
		}
		return nil
	})
}

// Info describes a blob, as answered to HEAD.
type Info struct {
	ID          dtfc.ID
	Size        int64
	ContentType string
	// Source is "local" if the node answering held it, "peer" otherwise.
	Source string
}

// Stat describes id without downloading it.
func (c *Client) Stat(ctx context.Context, id dtfc.ID) (Info, error) {
	var info Info
	err := c.each(ctx, func(base string) error {
		req, err := c.request(ctx, http.MethodHead, base+"/"+id.String(), nil)
		if err != nil {
			return err
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &Error{URL: req.URL.String(), StatusCode: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
		}
		info = Info{ID: id, Size: resp.ContentLength, ContentType: resp.Header.Get("Content-Type"), Source: resp.Header.Get("X-Dtfc-Source")}
		return nil
	})
	return info, err
}

// Status returns the first reachable node's /_status document.
func (c *Client) Status(ctx context.Context) (*api.Status, error) {
	var out *api.Status
	err := c.each(ctx, func(base string) error {
		resp, err := c.do(ctx, http.MethodGet, base+"/_status", nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return answerError(resp)
		}
		var st api.Status
		if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
			return fmt.Errorf("%s/_status: %w", base, err)
		}
		out = &st
		return nil
	})
	return out, err
}
