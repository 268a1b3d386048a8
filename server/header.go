package server

import (
	"fmt"
	"net/http"

	"github.com/dtfc/dtfc/internal/httpstatus"
)

// NetHTTPMaxHeaderBytes is the http.Server.MaxHeaderBytes to pair with
// Config.MaxHeaderBytes = limit. net/http's own bound is looser than its
// setting (HTTP/1.1 reads 4096 bytes more; HTTP/2 allows 320 bytes more
// but counts 32 bytes more per field than HTTP/1.1's text), and its
// refusal is not dtfc's JSON; so it is set above the limit and serves only
// as a backstop against heads far beyond it, while the server applies the
// limit itself, the same way over both protocols. With this value every
// head of up to limit bytes reaches the server over HTTP/2 unless it has
// more than about 150 fields.
func NetHTTPMaxHeaderBytes(limit int) int { return limit + 4096 }

// headBytes is the size of r's head as HTTP/1.1 writes it: the request
// line, every field as "Name: value\r\n" (Host and Transfer-Encoding,
// which net/http takes out of r.Header, included) and the blank line.
// Over HTTP/2 the same is computed from the decoded fields.
func headBytes(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len("HTTP/1.1") + 2
	if r.Host != "" {
		n += len("Host: ") + len(r.Host) + 2
	}
	for _, te := range r.TransferEncoding {
		n += len("Transfer-Encoding: ") + len(te) + 2
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n + 2
}

// limitHeader answers 431 to a request whose head is larger than
// Config.MaxHeaderBytes.
func (s *Server) limitHeader(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := headBytes(r); n > s.cfg.MaxHeaderBytes {
			s.writeError(w, r, fmt.Errorf("%w: %d bytes of request line and header fields, more than the %d this node accepts", httpstatus.ErrHeaderTooLarge, n, s.cfg.MaxHeaderBytes))
			return
		}
		next.ServeHTTP(w, r)
	})
}
