package e2e_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// TestOneURLForTwoNodes: a peer list entry whose URL is a load balancer
// over two nodes (it hands each request to the next of them) answers as
// one node, then the other. Node 0 says so: /_status lists both
// identities for that entry, and its log says to list each node under a
// URL of its own. The entries of single nodes list none, and files still
// reach every node.
func TestOneURLForTwoNodes(t *testing.T) {
	var backends atomic.Pointer[[]*url.URL]
	var next atomic.Uint64
	lb := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		bs := backends.Load()
		if bs == nil {
			// Not yet: a closed port answers 502.
			r.SetURL(&url.URL{Scheme: "http", Host: "127.0.0.1:1"})
			return
		}
		r.SetURL((*bs)[next.Add(1)%uint64(len(*bs))])
		r.Out.Host = r.In.Host
	}})
	t.Cleanup(lb.Close)
	c := cluster.Start(t, cluster.Options{Direct: true, SharesURLs: true, ExtraPeers: func(i int) string {
		if i != 0 {
			return ""
		}
		return fmt.Sprintf("[[peers]]\nurl = %q\nrole = \"replica\"\n", lb.URL)
	}})
	var bs []*url.URL
	for _, n := range c.Nodes[1:] {
		u, err := url.Parse(n.URL)
		require.NoError(t, err)
		bs = append(bs, u)
	}
	backends.Store(&bs)
	ids := []string{nodeIdentity(t, c, 1), nodeIdentity(t, c, 2)}
	if ids[0] > ids[1] {
		ids[0], ids[1] = ids[1], ids[0]
	}

	hc := newClient(t)
	_, id := upload(t, hc, c.Nodes[0].URL, "f", randomBytes(1000))
	eventually(t, converge, "node 0 shows that the balancer's entry reaches both nodes", func() bool {
		for _, p := range status(t, c, 0).Cluster.Peers {
			if p.URL == lb.URL {
				return len(p.Nodes) == 2
			}
		}
		return false
	})
	for _, p := range status(t, c, 0).Cluster.Peers {
		if p.URL == lb.URL {
			assert.Equal(t, ids, p.Nodes)
		} else {
			assert.Empty(t, p.Nodes, "entry %s reaches one node", p.URL)
		}
	}
	eventually(t, converge, "node 0 logs it", func() bool {
		return logHas(c.Nodes[0], "a peer list entry reaches more than one node")
	})
	assert.Equal(t, 1, logCount(c.Nodes[0], "a peer list entry reaches more than one node"), "once in ten minutes")
	for i := 1; i < 3; i++ {
		eventually(t, converge, fmt.Sprintf("node %d holds the file", i), func() bool {
			res, err := hc.Head(c.Nodes[i].URL + "/" + id + "?nopeerload=1")
			require.NoError(t, err)
			res.Body.Close()
			return res.StatusCode == http.StatusOK
		})
	}
}
