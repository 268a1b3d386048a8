package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// quietToxiproxy silences zerolog's global logger once: toxiproxy's
// bandwidth toxic logs through it rather than through the server's logger.
var quietToxiproxy sync.Once

// proxyServer is the in-process toxiproxy that owns a cluster's proxies.
// Only its Go API is used: no HTTP API listens.
type proxyServer struct {
	api *toxiproxy.ApiServer
}

func newProxyServer() *proxyServer {
	quietToxiproxy.Do(func() { zerolog.SetGlobalLevel(zerolog.Disabled) })
	return &proxyServer{api: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
}

// link is the path from one node to another: node from ->
// toxiproxy -> corruptor -> node to.
type link struct {
	from, to int
	url      string // the toxiproxy's URL, what node from knows node to by
	proxy    *toxiproxy.Proxy
	// url2 and proxy2 are the link's second toxiproxy, in front of the
	// same corruptor (Options.SecondProxy), or empty.
	url2   string
	proxy2 *toxiproxy.Proxy
	corr   *corruptor
	cut    bool // guarded by Cluster.mu
}

// proxies returns the link's toxiproxies: one, or two with SecondProxy.
func (l *link) proxies() []*toxiproxy.Proxy {
	if l.proxy2 != nil {
		return []*toxiproxy.Proxy{l.proxy, l.proxy2}
	}
	return []*toxiproxy.Proxy{l.proxy}
}

// addLink creates and starts the proxies of the link from -> to.
func (c *Cluster) addLink(from, to int) {
	t := c.t
	t.Helper()
	target, err := url.Parse(c.Nodes[to].URL)
	if err != nil {
		t.Fatalf("cluster: link %d->%d: %v", from, to, err)
	}
	corr := newCorruptor(target, c.listen())
	l := &link{from: from, to: to, corr: corr}
	c.mu.Lock()
	c.links[[2]int{from, to}] = l // closed at cleanup from here on
	c.mu.Unlock()
	p, u := c.startToxiproxy(fmt.Sprintf("node%d->node%d", from, to), corr.addr())
	c.mu.Lock()
	l.proxy, l.url = p, u
	c.mu.Unlock()
	if c.opts.ListTwice && c.opts.SecondProxy {
		p, u := c.startToxiproxy(fmt.Sprintf("node%d->node%d (second)", from, to), corr.addr())
		c.mu.Lock()
		l.proxy2, l.url2 = p, u
		c.mu.Unlock()
	}
}

// startToxiproxy starts a toxiproxy forwarding to upstream on a port the
// cluster has not handed out, and returns it with its URL.
func (c *Cluster) startToxiproxy(name, upstream string) (*toxiproxy.Proxy, string) {
	t := c.t
	t.Helper()
	for range 100 {
		p := toxiproxy.NewProxy(c.proxy.api, name, "127.0.0.1:0", upstream)
		if err := p.Start(); err != nil {
			t.Fatalf("cluster: %s: starting toxiproxy: %v", name, err)
		}
		// Listen is the address actually bound, set by Start.
		_, ps, _ := net.SplitHostPort(p.Listen)
		var port int
		fmt.Sscan(ps, &port)
		if !c.reserve(port) {
			// A port the cluster gave a node (down at the moment):
			// try another, or the node could not restart.
			p.Stop()
			continue
		}
		return p, "http://" + p.Listen
	}
	t.Fatalf("cluster: %s: no free port for toxiproxy", name)
	return nil, ""
}

// listen opens a listener on a loopback port the cluster has not handed
// out yet.
func (c *Cluster) listen() net.Listener {
	c.t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.t.Fatalf("cluster: listening: %v", err)
		}
		if c.reserve(ln.Addr().(*net.TCPAddr).Port) {
			return ln
		}
		ln.Close()
	}
	c.t.Fatalf("cluster: no free port found")
	return nil
}

// close stops both proxies of the link, cutting its connections.
func (l *link) close() {
	for _, p := range []*toxiproxy.Proxy{l.proxy, l.proxy2} {
		if p != nil {
			p.Stop()
		}
	}
	l.corr.close()
}

// link returns the link from -> to, failing the test if there is none
// (a Direct cluster, a bad index).
func (c *Cluster) link(from, to int) *link {
	c.t.Helper()
	if c.opts.Direct {
		c.t.Fatalf("cluster: link %d->%d: the cluster is Direct, there are no proxies to inject faults with", from, to)
	}
	c.mu.Lock()
	l := c.links[[2]int{from, to}]
	c.mu.Unlock()
	if l == nil {
		c.t.Fatalf("cluster: no link %d->%d (the cluster has %d nodes)", from, to, len(c.Nodes))
	}
	return l
}

// Cut makes node from unable to reach node to: the link's toxiproxy (both,
// with SecondProxy) stops listening and closes its connections, so node
// from's requests to node to fail at once (connection refused, or reset
// for those in flight). The other direction is untouched.
func (c *Cluster) Cut(from, to int) {
	c.t.Helper()
	l := c.link(from, to)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !l.cut {
		for _, p := range l.proxies() {
			p.Stop()
		}
		l.cut = true
	}
}

// Partition cuts the links between a and b both ways.
func (c *Cluster) Partition(a, b int) {
	c.t.Helper()
	c.Cut(a, b)
	c.Cut(b, a)
}

// Isolate cuts every link to and from node i.
func (c *Cluster) Isolate(i int) {
	c.t.Helper()
	for j := range c.Nodes {
		if j != i {
			c.Partition(i, j)
		}
	}
}

// Heal removes every fault between a and b, both ways: cuts, latency,
// bandwidth limits and corruption.
func (c *Cluster) Heal(a, b int) {
	c.t.Helper()
	c.heal(c.link(a, b))
	c.heal(c.link(b, a))
}

// HealAll removes every fault on every link.
func (c *Cluster) HealAll() {
	c.t.Helper()
	if c.opts.Direct {
		return
	}
	c.mu.Lock()
	links := make([]*link, 0, len(c.links))
	for _, l := range c.links {
		links = append(links, l)
	}
	c.mu.Unlock()
	for _, l := range links {
		c.heal(l)
	}
}

func (c *Cluster) heal(l *link) {
	c.t.Helper()
	l.corr.on.Store(false)
	l.corr.unslow()
	l.corr.uncut()
	for _, p := range l.proxies() {
		c.toxiproxy(l, "resetting toxics", func(ctx context.Context) error {
			p.Toxics.ResetToxics(ctx)
			return nil
		})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if l.cut {
		l.restart(c.t, "healing")
	}
}

// restart makes a cut link's toxiproxies listen again on the addresses
// they had. The caller holds Cluster.mu.
func (l *link) restart(t testing.TB, why string) {
	t.Helper()
	for _, p := range l.proxies() {
		if err := p.Start(); err != nil {
			t.Fatalf("cluster: %s link %d->%d: restarting toxiproxy on %s: %v", why, l.from, l.to, p.Listen, err)
		}
	}
	l.cut = false
}

// Latency delays everything on the link from -> to by d in each direction
// (requests and responses), so an exchange takes at least 2d longer. Zero
// removes the delay.
func (c *Cluster) Latency(from, to int, d time.Duration) {
	c.t.Helper()
	ms := d.Milliseconds()
	if d > 0 && ms == 0 {
		ms = 1
	}
	c.setToxic(c.link(from, to), "latency", ms > 0, map[string]any{"latency": ms})
}

// Bandwidth limits the link from -> to to kbPerSec kilobytes (1000 bytes)
// per second in each direction. Zero removes the limit.
func (c *Cluster) Bandwidth(from, to int, kbPerSec int64) {
	c.t.Helper()
	c.setToxic(c.link(from, to), "bandwidth", kbPerSec > 0, map[string]any{"rate": kbPerSec})
}

// setToxic replaces the toxic of a type on both streams of l, or only
// removes it if !on.
func (c *Cluster) setToxic(l *link, typ string, on bool, attrs map[string]any) {
	c.t.Helper()
	for _, p := range l.proxies() {
		c.setProxyToxic(l, p, typ, on, attrs)
	}
}

func (c *Cluster) setProxyToxic(l *link, p *toxiproxy.Proxy, typ string, on bool, attrs map[string]any) {
	c.t.Helper()
	for _, stream := range []string{"upstream", "downstream"} {
		name := typ + "_" + stream
		if p.Toxics.GetToxic(name) != nil {
			c.toxiproxy(l, "removing "+name, func(ctx context.Context) error {
				return p.Toxics.RemoveToxic(ctx, name)
			})
		}
		if !on {
			continue
		}
		js, err := json.Marshal(map[string]any{
			"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs,
		})
		if err != nil {
			c.t.Fatalf("cluster: %v", err)
		}
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(string(js))); err != nil {
			c.t.Fatalf("cluster: link %d->%d: adding %s: %v", l.from, l.to, js, err)
		}
	}
}

// Corrupt switches corruption on the link from -> to on or off. While on,
// every request body (from -> to) and response body (to -> from) larger
// than 64 bytes that starts through the link gets one byte flipped (XOR
// 0xFF): in the middle if its length is known, at offset 64 if it is
// streamed without one.
func (c *Cluster) Corrupt(from, to int, on bool) {
	c.t.Helper()
	c.link(from, to).corr.on.Store(on)
}

// CorruptNextBlob flips one byte in the middle of the next blob, or range
// of one, that the link from -> to carries back (an answer to a GET of
// /_internal/blobs/<id>), once.
func (c *Cluster) CorruptNextBlob(from, to int) {
	c.t.Helper()
	c.link(from, to).corr.nextBlob.Store(true)
}

// Corrupted returns how many bodies the link from -> to has corrupted so
// far.
func (c *Cluster) Corrupted(from, to int) int64 {
	c.t.Helper()
	return c.link(from, to).corr.corrupted.Load()
}

// toxiproxyTimeout bounds a call into toxiproxy. Removing a toxic can block
// forever in toxiproxy v2.12.0 when the link's destination connection died
// under it (Shopify/toxiproxy#558): a test must fail then, not hang CI.
const toxiproxyTimeout = 30 * time.Second

func (c *Cluster) toxiproxy(l *link, what string, f func(context.Context) error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toxiproxyTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			c.t.Fatalf("cluster: link %d->%d: %s: %v", l.from, l.to, what, err)
		}
	case <-time.After(toxiproxyTimeout):
		c.t.Fatalf("cluster: link %d->%d: toxiproxy hung %s for %s (Shopify/toxiproxy#558: a toxic on a link whose destination restarted)",
			l.from, l.to, what, toxiproxyTimeout)
	}
}
