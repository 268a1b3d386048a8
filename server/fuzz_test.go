package server_test

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dtfc/dtfc/server"
)

// parseContentRange parses "bytes a-b/size".
func parseContentRange(s string) (start, end, size int64, err error) {
	_, err = fmt.Sscanf(s, "bytes %d-%d/%d", &start, &end, &size)
	return
}

// FuzzRange serves one fixed 1000-byte blob under fuzzed Range headers:
// never a panic, only 200, 206 or 416, and every byte range answered is
// the right slice of the blob.
func FuzzRange(f *testing.F) {
	for _, s := range []string{
		"", "bytes=0-3", "bytes=5-", "bytes=-5", "bytes=0-0", "bytes=999-999", "bytes=999-",
		"bytes=1000-", "bytes=1000000-", "bytes=-0", "bytes=-1000", "bytes=-1001", "bytes=-999999999999999999999",
		"bytes=0-999", "bytes=0-1000", "bytes=0-99999999999999999999", "bytes=9223372036854775807-",
		"bytes=-9223372036854775808", "bytes=5-3", "bytes=-5-3", "bytes=--5", "bytes=0--1",
		"bytes=0-1,2-3", "bytes=0-10,5-15", "bytes=0-499,500-999", "bytes=0-,0-", "bytes=-1,-1,-1",
		"bytes=1-2,1000-2000", "bytes=1000-2000,3000-", "bytes= 1 - 2 ", "bytes=1-2,", "bytes=,",
		"bytes=", "bytes", "Bytes=0-3", "items=0-3", "bytes=a-b", "bytes=0x10-0x20", "bytes=+1-+2",
		"bytes=1-2\x00", "bytes=\xff-", "garbage", "bytes=0-1, 3-4, 6-7, 9-10",
		"bytes=- 0", "bytes= -\t00 ", "bytes=0-1, - 0", "bytes=-+0", "bytes=--0", "bytes=-+00",
	} {
		f.Add(s)
	}
	n := startNode(f, server.Config{})
	blob := randBytes(42, 1000)
	id := sum(blob)
	a := n.put(f, "/fuzz.bin", blob)
	requireStatus(f, a, http.StatusCreated)

	f.Fuzz(func(t *testing.T, rng string) {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/"+id, nil)
		req.Header["Range"] = []string{rng}
		rec := httptest.NewRecorder()
		n.api.ServeHTTP(rec, req)
		body := rec.Body.Bytes()
		switch rec.Code {
		case http.StatusOK:
			if !bytes.Equal(body, blob) {
				t.Fatalf("Range %q: 200 with %d bytes that are not the blob", rng, len(body))
			}
		case http.StatusRequestedRangeNotSatisfiable:
			// Unsatisfiable ranges say the size; malformed ones need not.
			if got := rec.Header().Get("Content-Range"); got != "" && got != "bytes */1000" {
				t.Errorf("Range %q: 416 with Content-Range %q", rng, got)
			}
		case http.StatusPartialContent:
			mt, params, err := mime.ParseMediaType(rec.Header().Get("Content-Type"))
			if err == nil && mt == "multipart/byteranges" {
				mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
				parts := 0
				for {
					p, err := mr.NextPart()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatalf("Range %q: reading the multipart answer: %v", rng, err)
					}
					b, err := io.ReadAll(p)
					if err != nil {
						t.Fatalf("Range %q: reading part %d: %v", rng, parts, err)
					}
					checkSlice(t, rng, p.Header.Get("Content-Range"), b, blob)
					parts++
				}
				if parts < 2 {
					t.Errorf("Range %q: multipart answer with %d parts", rng, parts)
				}
				return
			}
			checkSlice(t, rng, rec.Header().Get("Content-Range"), body, blob)
		default:
			t.Fatalf("Range %q: status %d (%s)", rng, rec.Code, body)
		}
	})
}

func checkSlice(t *testing.T, rng, contentRange string, got, blob []byte) {
	t.Helper()
	start, end, size, err := parseContentRange(contentRange)
	if err != nil {
		t.Fatalf("Range %q: Content-Range %q: %v", rng, contentRange, err)
	}
	if size != int64(len(blob)) || start < 0 || start > end || end >= size {
		t.Fatalf("Range %q: Content-Range %q out of the blob", rng, contentRange)
	}
	if !bytes.Equal(got, blob[start:end+1]) {
		t.Fatalf("Range %q: Content-Range %q but %d bytes that are not that slice", rng, contentRange, len(got))
	}
}
