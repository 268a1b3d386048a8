package server

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/dtfc/dtfc/internal/httpstatus"
)

// The CORS answers' fixed values. A preflight allows every method of the
// API and the request headers a page needs for it beyond the safelisted
// ones: Content-Type (an upload's own type is not safelisted),
// Authorization (the tokens), X-Content-SHA512 (the expected ID),
// X-Filename (POST /'s name) and Range (a safelisted Range is a single
// range only). Actual answers expose what a page reads beyond the
// safelisted headers (Content-Length and Content-Type are already).
const (
	corsAllowMethods  = "GET, HEAD, POST, PUT, DELETE"
	corsAllowHeaders  = "Content-Type, Authorization, X-Content-SHA512, X-Filename, Range"
	corsExposeHeaders = "ETag, X-Content-SHA512, Location, Content-Range"
	// corsMaxAge is how long (seconds) a browser may reuse a preflight's
	// answer: one preflight per page and URL every ten minutes, not one
	// per upload. Chromium caps it at two hours.
	corsMaxAge = "600"
)

// corsPolicy is Config.CORSOrigins, normalized once.
type corsPolicy struct {
	any     bool            // "*" is listed
	origins map[string]bool // normalized origins listed by name
}

func newCORSPolicy(list []string) corsPolicy {
	p := corsPolicy{origins: map[string]bool{}}
	for _, o := range list {
		if o == "*" {
			p.any = true
			continue
		}
		if n, ok := normalizeOrigin(o); ok {
			p.origins[n] = true
		}
	}
	return p
}

// normalizeOrigin returns origin as a browser serializes it in the Origin
// header: scheme and host in lower case, no default port, no trailing
// "/". ok is false for anything that is not an http(s) origin (a
// browser's "null" included).
func normalizeOrigin(origin string) (string, bool) {
	u, err := url.Parse(strings.TrimSuffix(origin, "/"))
	if err != nil || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Host)
	switch scheme {
	case "http":
		host = strings.TrimSuffix(host, ":80")
	case "https":
		host = strings.TrimSuffix(host, ":443")
	default:
		return "", false
	}
	return scheme + "://" + host, true
}

// allow decides what an answer to origin says: the value of
// Access-Control-Allow-Origin ("" when origin is not allowed) and whether
// credentials are allowed. An origin listed by name is echoed, with
// credentials (cookies, for sessions a later feature may read); any other
// origin, when "*" is listed, gets "*" and no credentials, which browsers
// require of "*".
func (p corsPolicy) allow(origin string) (allowOrigin string, credentials bool) {
	if n, ok := normalizeOrigin(origin); ok && p.origins[n] {
		return origin, true
	}
	if p.any {
		return "*", false
	}
	return "", false
}

// cors answers CORS preflights and adds the CORS headers for the origins
// of Config.CORSOrigins. With none configured it is not in the chain at
// all.
//
// A request without Origin is served as if CORS were off. A request from
// an origin that is not allowed is served too, without CORS headers: the
// browser then keeps the answer from the page (an upload it sent is still
// stored: CORS protects what a page reads, the tokens protect what it
// writes). A preflight from such an origin is refused with 403. The
// headers are set before the handler runs, so they are on every answer,
// errors, 304 and 206 included: a page can read why it failed.
//
// Every answer carries Vary: Origin, with or without Origin: whether the
// CORS headers are there depends on it, and blob answers are cacheable
// for a year. Without it, a cache (the browser's own, after an <img> of
// the same blob) could hand a fetch() an answer stored without them.
func (s *Server) cors(next http.Handler) http.Handler {
	if len(s.cfg.CORSOrigins) == 0 {
		return next
	}
	p := newCORSPolicy(s.cfg.CORSOrigins)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Add("Vary", "Origin")
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		allowOrigin, credentials := p.allow(origin)
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if allowOrigin == "" {
			if preflight {
				s.writeError(w, r, httpstatus.Errorf(http.StatusForbidden,
					"origin %q may not use this node from a browser (cors_origins)", origin))
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		h.Set("Access-Control-Allow-Origin", allowOrigin)
		if credentials {
			h.Set("Access-Control-Allow-Credentials", "true")
		}
		if !preflight {
			h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
			next.ServeHTTP(w, r)
			return
		}
		// A preflight carries no credentials and asks only whether the
		// real request may be sent: it is answered here, before any
		// token is checked and whatever the path (an unknown one then
		// answers its 404 to the real request, readable by the page).
		h.Set("Access-Control-Allow-Methods", corsAllowMethods)
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", corsMaxAge)
		if r.Header.Get("Access-Control-Request-Private-Network") == "true" {
			// Chromium asks this of a page reaching a node on a more
			// private network than its own (a LAN node, a public app):
			// an origin the operator listed may.
			h.Set("Access-Control-Allow-Private-Network", "true")
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
