package server_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dtfc/dtfc/server"
)

// FuzzRawRequest sends arbitrary bytes as an HTTP request over a real
// connection. Whatever they are: no panic, no 5xx for a client's mistake
// (net/http's own protocol answers aside: 501 for an unknown transfer
// coding, 505 for an unknown HTTP version, as RFC 9110 prescribes), and
// every file under blobs/ is whole (hashes to its name).
func FuzzRawRequest(f *testing.F) {
	for _, s := range []string{
		"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
		"PUT /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"PUT /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"PUT /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 60\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nhi\r\n--b--\r\n",
		"GET /%2e%2e/%00 HTTP/1.1\r\nHost: x\r\nRange: bytes=-0\r\n\r\n",
		"DELETE /" + strings.Repeat("A", 128) + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"PUT /_deny/" + strings.Repeat("a", 128) + " HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
		// A plain hit of the blob the second seed stored (FastHits),
		// then one net/http answers on the same connection.
		"GET /ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f HTTP/1.1\r\nHost: x\r\n\r\nGET /ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f HTTP/1.1\r\nHost: x\r\nRange: bytes=1-\r\n\r\n",
	} {
		f.Add(s)
	}
	n := startNode(f, server.Config{IdleTimeout: 200 * time.Millisecond})
	host := strings.TrimPrefix(n.url, "http://")
	f.Fuzz(func(t *testing.T, req string) {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		br := bufio.NewReader(c)
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusNotImplemented, http.StatusHTTPVersionNotSupported, http.StatusInsufficientStorage:
				continue
			}
			if resp.StatusCode >= 500 {
				t.Fatalf("answered %d to %q", resp.StatusCode, req)
			}
		}
		root := filepath.Join(n.base, "blobs")
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err == nil && sum(b) != d.Name() {
				t.Fatalf("partial or wrong blob %s after %q", p, req)
			}
			return nil
		})
	})
}
