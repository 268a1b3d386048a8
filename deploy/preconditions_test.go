package deploy_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// TestNginxFrontPreconditions: a conditional GET that dtfc answers 200
// (206 with a Range) is answered so through deploy/nginx.conf too. It got
// 412 Precondition Failed (nginx's HTML page; found by a review helper):
//   - If-Match naming the blob's own ETag, on a blob sent by nginx from
//     its file (larger than 16 KiB), whether plain (the micro-cache's
//     399 -> @dtfc_file) or ranged (dtfc's accel redirect ->
//     /_dtfc_blobs/): nginx's not_modified filter runs before add_header
//     sets the ETag, so it sees none and fails every If-Match but "*";
//   - If-Unmodified-Since, on any hit: dtfc's blobs have no
//     Last-Modified, so RFC 9110 (13.1.4) says to ignore it, as dtfc
//     does; nginx compares it with the file's mtime (a large blob) or with
//     no date at all (a small one kept whole) and fails it.
//
// Now such reads go to dtfc as they came, with no accel redirect.
func TestNginxFrontPreconditions(t *testing.T) {
	nginx := need(t, "nginx", nginxInstall)
	c := cluster.Start(t, cluster.Options{Nodes: 1, Direct: true})
	node := c.Nodes[0]
	ngx := startNginx(t, nginx, node)
	hc := plainClient(t, time.Minute)
	for _, size := range []int{1 << 10, 100 << 10} {
		data := randomData(uint64(40+size), size)
		id := upload(t, hc, node.URL+"/f.bin", data)
		for _, h := range [][]string{
			{"If-Match", `"` + id + `"`},
			{"If-Match", `"` + id + `"`, "Range", "bytes=0-9"},
			{"If-Unmodified-Since", "Mon, 02 Jan 2006 15:04:05 GMT"},
		} {
			direct := httpDo(t, hc, http.MethodGet, node.URL+"/"+id, nil, h...)
			require.Contains(t, []int{http.StatusOK, http.StatusPartialContent}, direct.status, "dtfc itself: %v: %s", h, direct)
			// Twice: the first may fill the micro-cache, the second is
			// answered from what nginx keeps.
			for range 2 {
				got := httpDo(t, hc, http.MethodGet, ngx.URL+"/"+id, nil, h...)
				assert.Equal(t, direct.status, got.status, "%d-byte blob, %q: dtfc answers %d, nginx %d (%s)",
					size, h, direct.status, got.status, got.header.Get("Content-Type"))
			}
		}
	}
}
