package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/server"
)

// corsHeaders returns an answer's Access-Control-* headers, to check that
// there are none.
func corsHeaders(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		if strings.HasPrefix(k, "Access-Control-") {
			out[k] = v
		}
	}
	return out
}

// varyOrigin reports whether the answer's Vary lists Origin.
func varyOrigin(h http.Header) bool {
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "Origin") {
				return true
			}
		}
	}
	return false
}

// preflight sends the OPTIONS a browser sends before a cross-origin PUT
// with a token and an expected ID.
func preflight(t *testing.T, n *node, path, origin string, hdr ...string) answer {
	t.Helper()
	return n.do(t, http.MethodOptions, path, nil, append([]string{
		"Origin", origin,
		"Access-Control-Request-Method", "PUT",
		"Access-Control-Request-Headers", "authorization,content-type,x-content-sha512",
	}, hdr...)...)
}

// requireAllowed checks an actual (not preflight) answer readable by a
// page of origin: Allow-Origin is allowOrigin, credentials only when the
// origin is echoed, the contract's headers exposed.
func requireAllowed(t *testing.T, a answer, allowOrigin string) {
	t.Helper()
	require.Equal(t, allowOrigin, a.header.Get("Access-Control-Allow-Origin"), "answer %s: %v", a, a.header)
	if allowOrigin == "*" {
		assert.Empty(t, a.header.Get("Access-Control-Allow-Credentials"), "no credentials with *")
	} else {
		assert.Equal(t, "true", a.header.Get("Access-Control-Allow-Credentials"))
	}
	exposed := map[string]bool{}
	for _, f := range strings.Split(a.header.Get("Access-Control-Expose-Headers"), ",") {
		exposed[strings.ToLower(strings.TrimSpace(f))] = true
	}
	for _, want := range []string{"etag", "x-content-sha512", "location", "content-range"} {
		assert.True(t, exposed[want], "%s is exposed: %q", want, a.header.Get("Access-Control-Expose-Headers"))
	}
	assert.True(t, varyOrigin(a.header), "Vary: Origin: %v", a.header.Values("Vary"))
	assert.Empty(t, a.header.Get("Access-Control-Allow-Methods"), "an actual answer is no preflight answer")
}

// TestCORSUnconfigured: without cors_origins, nothing changes: no CORS
// header for any origin, and OPTIONS answers what it answered before
// (405, JSON, as any method a route does not take).
func TestCORSUnconfigured(t *testing.T) {
	n := startNode(t, server.Config{})
	data := []byte("no cors here\n")
	id := decodeUpload(t, n.put(t, "/a.txt", data, "Origin", "https://app.example.com")).SHA512

	pre := preflight(t, n, "/a.txt", "https://app.example.com")
	requireError(t, pre, http.StatusMethodNotAllowed)
	assert.Empty(t, corsHeaders(pre.header))

	for _, a := range []answer{
		n.get(t, "/"+id, "Origin", "https://app.example.com"),
		n.get(t, "/"+id),
		n.get(t, "/"+strings.Repeat("0", 128), "Origin", "https://app.example.com"),
	} {
		assert.Empty(t, corsHeaders(a.header), "answer %s", a)
		assert.False(t, varyOrigin(a.header), "no Vary: Origin without CORS: %v", a.header.Values("Vary"))
	}
}

// TestCORSPreflight: a preflight from a listed origin is answered 204 on
// any route, before any token is asked for, with what the real request
// may use; from any other origin 403 JSON without Allow-Origin; with "*"
// every origin gets "*" and no credentials, except one also listed by
// name.
func TestCORSPreflight(t *testing.T) {
	const app = "https://app.example.com"
	n := startNode(t, server.Config{
		// As validated by cmd/dtfc: any case, a trailing "/", a default
		// port written out.
		CORSOrigins: []string{"https://App.Example.COM/", "http://127.0.0.1:3000", "https://other.example:443"},
		AuthTokens:  []string{"t0k"},
		ReadTokens:  []string{"r3ad"},
	})
	star := startNode(t, server.Config{CORSOrigins: []string{"*", app}, AuthTokens: []string{"t0k"}})

	allowed := func(t *testing.T, a answer, allowOrigin string) {
		t.Helper()
		require.Equal(t, http.StatusNoContent, a.status, "preflight: %s", a)
		assert.Empty(t, a.body)
		assert.Equal(t, allowOrigin, a.header.Get("Access-Control-Allow-Origin"))
		if allowOrigin == "*" {
			assert.Empty(t, a.header.Get("Access-Control-Allow-Credentials"))
		} else {
			assert.Equal(t, "true", a.header.Get("Access-Control-Allow-Credentials"))
		}
		methods := strings.Split(strings.ReplaceAll(a.header.Get("Access-Control-Allow-Methods"), " ", ""), ",")
		assert.Subset(t, methods, []string{"GET", "HEAD", "POST", "PUT", "DELETE"})
		headers := strings.Split(strings.ToLower(strings.ReplaceAll(a.header.Get("Access-Control-Allow-Headers"), " ", "")), ",")
		assert.Subset(t, headers, []string{"content-type", "authorization", "x-content-sha512"})
		assert.Equal(t, "600", a.header.Get("Access-Control-Max-Age"))
		assert.True(t, varyOrigin(a.header), "Vary: Origin")
	}

	for _, c := range []struct{ name, path, origin string }{
		{"an upload", "/photo.jpg", app},
		{"a read needing a token", "/" + strings.Repeat("ab", 64), app},
		{"a delete", "/" + strings.Repeat("ab", 64), "http://127.0.0.1:3000"},
		{"POST /", "/", app},
		{"an unknown route", "/a/b/c", app},
		{"the status", "/_status", app},
		{"a default port left out", "/x", "https://other.example"},
	} {
		t.Run(c.name, func(t *testing.T) { allowed(t, preflight(t, n, c.path, c.origin), c.origin) })
	}

	t.Run("origins differ by port and scheme", func(t *testing.T) {
		for _, o := range []string{"http://app.example.com", "https://app.example.com:8443", "http://127.0.0.1:3001", "https://app.example.com.evil.test", "null"} {
			a := preflight(t, n, "/photo.jpg", o)
			requireError(t, a, http.StatusForbidden)
			assert.Contains(t, string(a.body), o)
			assert.Empty(t, corsHeaders(a.header), "a refused preflight allows nothing")
		}
	})

	t.Run("OPTIONS that is no preflight", func(t *testing.T) {
		// Without Access-Control-Request-Method it is an ordinary OPTIONS:
		// answered as before (405), readable by the listed origin.
		a := n.do(t, http.MethodOptions, "/photo.jpg", nil, "Origin", app)
		requireError(t, a, http.StatusMethodNotAllowed)
		requireAllowed(t, a, app)
	})

	t.Run("private network", func(t *testing.T) {
		a := preflight(t, n, "/photo.jpg", app, "Access-Control-Request-Private-Network", "true")
		allowed(t, a, app)
		assert.Equal(t, "true", a.header.Get("Access-Control-Allow-Private-Network"))
		assert.Empty(t, preflight(t, n, "/photo.jpg", app).header.Get("Access-Control-Allow-Private-Network"), "only when asked")
	})

	t.Run("star", func(t *testing.T) {
		allowed(t, preflight(t, star, "/photo.jpg", "https://anyone.test"), "*")
		allowed(t, preflight(t, star, "/photo.jpg", "http://localhost:5173"), "*")
		allowed(t, preflight(t, star, "/photo.jpg", "null"), "*")
		// Listed by name as well: echoed, with credentials.
		allowed(t, preflight(t, star, "/photo.jpg", app), app)
	})
}

// TestCORSAnswers: reads and uploads from a listed origin carry
// Allow-Origin and expose the contract's headers on every answer (201,
// 200, 206, 304, and the JSON errors); a token is still needed; an origin
// not listed is served as before without CORS headers; a request without
// Origin gets none either.
func TestCORSAnswers(t *testing.T) {
	const app = "http://127.0.0.1:3000"
	n := startNode(t, server.Config{CORSOrigins: []string{"https://app.example.com", app + "/"}, AuthTokens: []string{"t0k"}})
	data := randBytes(7, 10_000)
	id := sum(data)
	from := func(hdr ...string) []string { return append([]string{"Origin", app}, hdr...) }

	t.Run("an upload needs the token still", func(t *testing.T) {
		a := n.put(t, "/blob.bin", data, from("Content-Type", "application/x-test", "X-Content-SHA512", id)...)
		requireError(t, a, http.StatusUnauthorized)
		requireAllowed(t, a, app)
		n.requireNothingStored(t)
	})

	t.Run("upload", func(t *testing.T) {
		a := n.put(t, "/blob.bin", data, from("Authorization", "Bearer t0k", "Content-Type", "application/x-test", "X-Content-SHA512", id)...)
		requireStatus(t, a, http.StatusCreated)
		requireAllowed(t, a, app)
		assert.Equal(t, n.me+"/"+id, a.header.Get("Location"))
		again := n.put(t, "/blob.bin", data, from("Authorization", "Bearer t0k")...)
		requireStatus(t, again, http.StatusOK)
		requireAllowed(t, again, app)
	})

	t.Run("a mismatch", func(t *testing.T) {
		a := n.put(t, "/other.bin", []byte("other bytes"), from("Authorization", "Bearer t0k", "X-Content-SHA512", id)...)
		requireError(t, a, http.StatusBadRequest)
		requireAllowed(t, a, app)
	})

	t.Run("reads", func(t *testing.T) {
		get := n.get(t, "/"+id, from()...)
		requireStatus(t, get, http.StatusOK)
		requireAllowed(t, get, app)
		assert.Equal(t, data, get.body)
		assert.Equal(t, `"`+id+`"`, get.header.Get("ETag"))

		head := n.do(t, http.MethodHead, "/"+id, nil, from()...)
		requireStatus(t, head, http.StatusOK)
		requireAllowed(t, head, app)

		part := n.get(t, "/"+id, from("Range", "bytes=10-19")...)
		requireStatus(t, part, http.StatusPartialContent)
		requireAllowed(t, part, app)
		assert.Equal(t, fmt.Sprintf("bytes 10-19/%d", len(data)), part.header.Get("Content-Range"))
		assert.Equal(t, data[10:20], part.body)

		same := n.get(t, "/"+id, from("If-None-Match", `"`+id+`"`)...)
		requireStatus(t, same, http.StatusNotModified)
		requireAllowed(t, same, app)

		beyond := n.get(t, "/"+id, from("Range", fmt.Sprintf("bytes=%d-", len(data)+5))...)
		requireError(t, beyond, http.StatusRequestedRangeNotSatisfiable)
		requireAllowed(t, beyond, app)

		missing := n.get(t, "/"+strings.Repeat("0", 128), from()...)
		requireError(t, missing, http.StatusNotFound)
		requireAllowed(t, missing, app)

		bad := n.get(t, "/nothex", from()...)
		requireError(t, bad, http.StatusBadRequest)
		requireAllowed(t, bad, app)

		status := n.get(t, "/_status", from()...)
		requireStatus(t, status, http.StatusOK)
		requireAllowed(t, status, app)
	})

	t.Run("an origin not listed is served without CORS headers", func(t *testing.T) {
		for _, o := range []string{"http://127.0.0.1:3001", "https://evil.test"} {
			get := n.get(t, "/"+id, "Origin", o)
			requireStatus(t, get, http.StatusOK)
			assert.Equal(t, data, get.body, "served as without CORS: the browser, not the node, withholds it")
			assert.Empty(t, corsHeaders(get.header), "origin %s", o)
			assert.True(t, varyOrigin(get.header), "Vary: Origin: the answer depends on it")

			missing := n.get(t, "/"+strings.Repeat("0", 128), "Origin", o)
			requireError(t, missing, http.StatusNotFound)
			assert.Empty(t, corsHeaders(missing.header))

			put := n.put(t, "/x.txt", []byte("from "+o), "Origin", o)
			requireError(t, put, http.StatusUnauthorized)
			assert.Empty(t, corsHeaders(put.header))
		}
	})

	t.Run("no Origin, no CORS headers", func(t *testing.T) {
		for _, a := range []answer{
			n.get(t, "/"+id),
			n.get(t, "/"+id, "Range", "bytes=0-0"),
			n.get(t, "/"+strings.Repeat("0", 128)),
			n.put(t, "/y.txt", []byte("no origin")),
		} {
			assert.Empty(t, corsHeaders(a.header), "answer %s", a)
			// Still Vary: Origin, so that a cache does not give a later
			// fetch() from a page this answer without CORS headers.
			assert.True(t, varyOrigin(a.header), "Vary: Origin on %s", a)
		}
	})

	t.Run("delete", func(t *testing.T) {
		a := n.do(t, http.MethodDelete, "/"+id, nil, from("Authorization", "Bearer t0k")...)
		requireStatus(t, a, http.StatusOK)
		requireAllowed(t, a, app)
		gone := n.get(t, "/"+id, from()...)
		requireError(t, gone, http.StatusNotFound)
		requireAllowed(t, gone, app)
	})
}

// TestCORSStar: with "*" any origin reads, with Allow-Origin "*" and no
// credentials (browsers refuse "*" with them); a token still guards
// writes.
func TestCORSStar(t *testing.T) {
	n := startNode(t, server.Config{CORSOrigins: []string{"*"}, AuthTokens: []string{"t0k"}})
	data := []byte("for everyone\n")
	up := n.put(t, "/e.txt", data, "Origin", "https://anyone.test", "Authorization", "Bearer t0k")
	requireStatus(t, up, http.StatusCreated)
	requireAllowed(t, up, "*")
	id := decodeUpload(t, up).SHA512

	get := n.get(t, "/"+id, "Origin", "http://localhost:5173")
	requireStatus(t, get, http.StatusOK)
	requireAllowed(t, get, "*")

	denied := n.put(t, "/f.txt", []byte("no token"), "Origin", "https://anyone.test")
	requireError(t, denied, http.StatusUnauthorized)
	requireAllowed(t, denied, "*")

	assert.Empty(t, corsHeaders(n.get(t, "/"+id).header), "no Origin, no CORS headers")
}
