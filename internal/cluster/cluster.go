package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
)

// Roles a node can have (dtfc.Role's, named here for the tests' brevity).
const (
	RoleReplica = dtfc.RoleReplica
	RoleCache   = dtfc.RoleCache
)

// HeaderSecret is the header carrying the cluster secret on node-to-node
// requests (/_internal/...).
const HeaderSecret = "X-Dtfc-Cluster-Secret"

// Options configure a Cluster. The zero value starts three replicas
// behind proxies.
type Options struct {
	// Nodes is the number of nodes. If zero, it defaults to 3.
	Nodes int
	// Roles gives each node's role by index: "replica" or "cache". A
	// missing or empty entry means "replica".
	Roles []dtfc.Role
	// Args are extra flags for every node, e.g. "--anti-entropy-interval",
	// "5s". They follow the harness's defaults (--anti-entropy-interval 2s,
	// --scrub-interval 0) on the command line, and the last of a repeated
	// flag wins, so they override them.
	Args []string
	// NodeArgs are extra flags per node index, after Args.
	NodeArgs map[int][]string
	// Secret, if set, is every node's cluster_secret, written in a
	// per-node TOML file given with --config. Requests a test sends to
	// /_internal need it in HeaderSecret.
	Secret string
	// AuthToken, if set, is every node's auth_token (in the same --config
	// file): writes need "Authorization: Bearer <AuthToken>". The harness
	// sends it with PUT /refreshpeers. It needs Secret: a node with a
	// peer list and an auth_token but no cluster_secret refuses to start.
	AuthToken string
	// Direct, if set, lets nodes reach each other directly: no proxies,
	// so no faults can be injected (Cut, Latency, Corrupt and the like
	// fail the test).
	Direct bool
	// ListSelf, if set, names every node in its own peer list under a
	// second URL (http://localhost:<port>, where its --me says
	// 127.0.0.1): a node must find out that this peer is itself.
	ListSelf bool
	// ListTwice, if set, names every peer twice in each peer list: by
	// the URL of the link's proxy and by the peer's own URL (the second
	// bypasses the proxies, so faults do not apply to it, unless
	// SecondProxy).
	ListTwice bool
	// SecondProxy, with ListTwice, makes a peer's second URL that of a
	// second toxiproxy on the same link, in front of the same corruptor,
	// instead of the peer's own URL: every fault on the link (Cut,
	// Corrupt, Delay, Latency, ...) then applies to both names of the
	// peer, so a partition still partitions.
	SecondProxy bool
	// ExtraPeers, if set, returns TOML appended to node i's peer list
	// (further [[peers]] entries, such as an archive's).
	ExtraPeers func(i int) string
	// CopiesNodes, if set, lets nodes log that two running nodes have
	// one identity (a test that starts a copy of a node's basedir);
	// otherwise such a line fails the test, as a false alarm.
	CopiesNodes bool
	// SharesURLs, if set, lets nodes log that a peer list entry reaches
	// more than one node by turns (a test that lists a load balancer);
	// otherwise such a line fails the test, as a false alarm.
	SharesURLs bool
	// Join, if set, makes the nodes find each other by joining node 0
	// (--join) instead of by peer lists: every peer list is empty, and
	// every other node, those added by AddNode included, starts with
	// --join <node 0's URL>. It implies Direct: members reach each other
	// at their own URLs.
	Join bool
}

// Cluster is a set of running dtfc nodes and the proxies between them.
// Its methods, and those of its Nodes, fail the test given to Start on any
// error, so they must be called from that test's goroutine (not from a
// subtest's or another goroutine); WaitConverged and CheckNoTemp take the
// test to fail instead.
type Cluster struct {
	// Nodes are the cluster's nodes by index, those added by AddNode
	// included.
	Nodes []*Node

	t    testing.TB
	opts Options
	dir  string
	bin  string
	hc   *http.Client

	mu     sync.Mutex
	links  map[[2]int]*link // by {from, to}; empty if Direct
	ports  map[int]bool     // every port the cluster uses or reserved
	mounts []string         // tmpfs mounts to undo at cleanup
	proxy  *proxyServer
}

// Start starts opts.Nodes dtfc processes and, unless opts.Direct, a pair
// of proxies on every directed link between them, and waits until every
// node's /health answers 200 (for at most 30 s each). Everything is
// stopped in t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 0 || len(opts.Roles) > opts.Nodes {
		t.Fatalf("cluster: %d nodes with %d roles", opts.Nodes, len(opts.Roles))
	}
	for i := range opts.NodeArgs {
		// An index past Nodes is allowed: AddNode gives it to a node.
		if i < 0 {
			t.Fatalf("cluster: NodeArgs for node %d", i)
		}
	}
	bin := Binary(t)
	if opts.Join {
		opts.Direct = true
	}
	c := &Cluster{
		t:     t,
		opts:  opts,
		dir:   t.TempDir(),
		bin:   bin,
		links: map[[2]int]*link{},
		ports: map[int]bool{},
		hc: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				DisableCompression:  true,
				MaxIdleConnsPerHost: 4,
			},
		},
	}
	if !opts.Direct {
		c.proxy = newProxyServer()
	}
	// Registered after t.TempDir, so it runs before the directory is
	// removed.
	t.Cleanup(c.cleanup)

	for i := 0; i < opts.Nodes; i++ {
		role := RoleReplica
		if i < len(opts.Roles) && opts.Roles[i] != "" {
			role = opts.Roles[i]
		}
		c.Nodes = append(c.Nodes, c.newNode(i, role))
	}
	if !opts.Direct {
		for i := range c.Nodes {
			for j := range c.Nodes {
				if i != j {
					c.addLink(i, j)
				}
			}
		}
	}
	for _, n := range c.Nodes {
		c.writePeerList(n)
	}
	// Start every process first, then wait: the nodes boot in parallel.
	for _, n := range c.Nodes {
		if err := n.start(); err != nil {
			t.Fatalf("cluster: %v", err)
		}
	}
	for _, n := range c.Nodes {
		err := n.waitHealthy(healthTimeout)
		if err != nil && strings.Contains(n.Log(), "address already in use") {
			err = n.startHealthy() // its port was taken meanwhile: once it is free
		}
		if err != nil {
			t.Fatalf("cluster: %v\n%s", err, n.logTail(40))
		}
	}
	return c
}

// newNode prepares node i: port, directories, files. It starts nothing.
func (c *Cluster) newNode(i int, role dtfc.Role) *Node {
	t := c.t
	t.Helper()
	if role != RoleReplica && role != RoleCache {
		t.Fatalf("cluster: node %d: role %q: want %q or %q", i, role, RoleReplica, RoleCache)
	}
	port := c.freePort()
	n := &Node{
		Index:     i,
		Role:      role,
		URL:       "http://127.0.0.1:" + strconv.Itoa(port),
		Port:      port,
		Basedir:   filepath.Join(c.dir, fmt.Sprintf("node-%d", i)),
		LogPath:   filepath.Join(c.dir, fmt.Sprintf("node-%d.log", i)),
		PeerList:  filepath.Join(c.dir, fmt.Sprintf("peers-%d.toml", i)),
		ClockFile: filepath.Join(c.dir, fmt.Sprintf("node-%d.clock", i)),
		c:         c,
	}
	if c.opts.Secret != "" || c.opts.AuthToken != "" {
		n.Config = filepath.Join(c.dir, fmt.Sprintf("node-%d.toml", i))
		conf := struct {
			ClusterSecret string `toml:"cluster_secret,omitempty"`
			AuthToken     string `toml:"auth_token,omitempty"`
		}{c.opts.Secret, c.opts.AuthToken}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(conf); err != nil {
			t.Fatalf("cluster: node %d: config: %v", i, err)
		}
		// 0600: it holds secrets.
		if err := os.WriteFile(n.Config, buf.Bytes(), 0o600); err != nil {
			t.Fatalf("cluster: node %d: config: %v", i, err)
		}
	}
	return n
}

// freePort finds a loopback port nothing listens on and that the cluster
// has not handed out yet, and reserves it. Nodes keep their port across
// restarts, so a port once given to a node is never handed out again.
func (c *Cluster) freePort() int {
	c.t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.t.Fatalf("cluster: finding a free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if c.reserve(port) {
			return port
		}
	}
	c.t.Fatalf("cluster: no free port found")
	return 0
}

// reserve records port as the cluster's; false if it already was.
func (c *Cluster) reserve(port int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ports[port] {
		return false
	}
	c.ports[port] = true
	return true
}

// PeerURL returns the URL by which node from knows node to: the URL of the
// proxy on that link, or node to's own URL if the cluster is Direct. It is
// the key of node from's /_status queues for node to.
func (c *Cluster) PeerURL(from, to int) string {
	if c.opts.Direct {
		return c.Nodes[to].URL
	}
	return c.link(from, to).url
}

// PeerURLs returns every URL by which node from knows node to: PeerURL,
// and with ListTwice the second one (the peer's own URL, or with
// SecondProxy the second proxy's). Each is a key of node from's /_status
// queues.
func (c *Cluster) PeerURLs(from, to int) []string {
	urls := []string{c.PeerURL(from, to)}
	if !c.opts.ListTwice || c.opts.Direct {
		return urls
	}
	if l := c.link(from, to); l.url2 != "" {
		return append(urls, l.url2)
	}
	return append(urls, c.Nodes[to].URL)
}

// writePeerList writes node n's peer list: every other node, as n reaches
// it. The file is replaced atomically, so a node reloading it never reads
// half of it.
func (c *Cluster) writePeerList(n *Node) {
	c.t.Helper()
	type entry struct {
		URL  string    `toml:"url"`
		Role dtfc.Role `toml:"role"`
	}
	var list struct {
		Peers []entry `toml:"peers"`
	}
	for _, m := range c.Nodes {
		if m != n && !c.opts.Join {
			list.Peers = append(list.Peers, entry{URL: c.PeerURL(n.Index, m.Index), Role: m.Role})
			if c.opts.ListTwice && !c.opts.Direct {
				second := m.URL
				if l := c.link(n.Index, m.Index); l.url2 != "" {
					second = l.url2
				}
				list.Peers = append(list.Peers, entry{URL: second, Role: m.Role})
			}
		}
	}
	if c.opts.ListSelf {
		list.Peers = append(list.Peers, entry{URL: "http://localhost:" + strconv.Itoa(n.Port), Role: n.Role})
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# node %d (%s): its peers, as it reaches them\n", n.Index, n.URL)
	if err := toml.NewEncoder(&buf).Encode(list); err != nil {
		c.t.Fatalf("cluster: peer list of node %d: %v", n.Index, err)
	}
	if c.opts.ExtraPeers != nil {
		buf.WriteString("\n" + c.opts.ExtraPeers(n.Index) + "\n")
	}
	tmp := n.PeerList + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		c.t.Fatalf("cluster: peer list of node %d: %v", n.Index, err)
	}
	if err := os.Rename(tmp, n.PeerList); err != nil {
		c.t.Fatalf("cluster: peer list of node %d: %v", n.Index, err)
	}
}

// AddNode joins a new, empty node of the given role: it starts with a peer
// list of every existing node, every existing node's peer list is
// rewritten to include it, and every running node is told to re-read its
// list with PUT /refreshpeers (which must answer 200). Options.NodeArgs
// applies to the new node's index.
func (c *Cluster) AddNode(role dtfc.Role) *Node {
	t := c.t
	t.Helper()
	if role == "" {
		role = RoleReplica
	}
	n := c.newNode(len(c.Nodes), role)
	c.Nodes = append(c.Nodes, n)
	if !c.opts.Direct {
		for _, m := range c.Nodes[:n.Index] {
			c.addLink(n.Index, m.Index)
			c.addLink(m.Index, n.Index)
		}
	}
	for _, m := range c.Nodes {
		c.writePeerList(m)
	}
	n.Start()
	for _, m := range c.Nodes[:n.Index] {
		if c.opts.Join {
			break // it joined node 0
		}
		if !m.Running() {
			continue // it reads the new list when it starts
		}
		if err := c.refreshPeers(m); err != nil {
			t.Fatalf("cluster: AddNode: node %d: %v", m.Index, err)
		}
	}
	return n
}

// refreshPeers calls PUT /refreshpeers on n and expects 200.
func (c *Cluster) refreshPeers(n *Node) error {
	req, err := http.NewRequest(http.MethodPut, n.URL+"/refreshpeers", nil)
	if err != nil {
		return err
	}
	if c.opts.AuthToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.opts.AuthToken)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("PUT /refreshpeers: %w", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("PUT /refreshpeers: %s: %s", res.Status, body)
	}
	return nil
}

// Status returns node i's GET /_status, decoded.
func (c *Cluster) Status(i int) (*api.Status, error) {
	var v api.Status
	if err := c.getJSON(c.Nodes[i].URL+"/_status", nil, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// Digests is a node's answer to GET /_internal/digests: a digest per ID
// range (the first byte of the ID).
type Digests struct {
	Node   string   `json:"node"`
	Synced bool     `json:"synced"`
	Sums   string   `json:"sums"` // hex of 256 × 32 bytes
	Counts []uint64 `json:"counts"`
}

// Total is the number of entries the digests cover.
func (d *Digests) Total() uint64 {
	var n uint64
	for _, v := range d.Counts {
		n += v
	}
	return n
}

// Digests returns node i's GET /_internal/digests, sent with the cluster
// secret.
func (c *Cluster) Digests(i int) (*Digests, error) {
	var h http.Header
	if c.opts.Secret != "" {
		h = http.Header{HeaderSecret: {c.opts.Secret}}
	}
	var d Digests
	if err := c.getJSON(c.Nodes[i].URL+"/_internal/digests", h, &d); err != nil {
		return nil, err
	}
	if len(d.Sums) != 256*32*2 || len(d.Counts) != 256 {
		return nil, fmt.Errorf("malformed digests: %d hex digits of sums, %d counts", len(d.Sums), len(d.Counts))
	}
	return &d, nil
}

// GetJSON decodes node i's answer to GET path (with the write token, if
// the nodes have one) into v.
func (c *Cluster) GetJSON(i int, path string, v any) error {
	var h http.Header
	if c.opts.AuthToken != "" {
		h = http.Header{"Authorization": {"Bearer " + c.opts.AuthToken}}
	}
	return c.getJSON(c.Nodes[i].URL+path, h, v)
}

func (c *Cluster) getJSON(url string, h http.Header, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, res.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// BlobFiles walks node i's <basedir>/blobs and returns the size of every
// file in it by name (the ID): what nginx pointed at the directory would
// serve. A file removed during the walk (an eviction, a delete) is
// skipped, so it may run while the node works.
func (c *Cluster) BlobFiles(i int) map[string]int64 {
	c.t.Helper()
	root := filepath.Join(c.Nodes[i].Basedir, "blobs")
	files := map[string]int64{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path != root {
			return nil // removed during the walk (an eviction, a delete)
		}
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		files[d.Name()] = fi.Size()
		return nil
	})
	if err != nil {
		c.t.Fatalf("cluster: node %d: walking %s: %v", i, root, err)
	}
	return files
}

// CheckNoTemp fails t unless every node's <basedir>/tmp is empty (or
// missing). It is only meaningful while the nodes are idle.
func (c *Cluster) CheckNoTemp(t testing.TB) {
	t.Helper()
	for _, n := range c.Nodes {
		dir := filepath.Join(n.Basedir, "tmp")
		entries, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			t.Errorf("cluster: node %d: %v", n.Index, err)
			continue
		}
		if len(entries) > 0 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("cluster: node %d: %s holds %d entries: %s", n.Index, dir, len(names), strings.Join(names, ", "))
		}
	}
}

// cleanup stops every node, then every proxy, then undoes the mounts. If
// the test failed, it logs the tail of every node's log; whether or not,
// a data race or panic reported in a node's log fails the test.
func (c *Cluster) cleanup() {
	t := c.t
	var wg sync.WaitGroup
	complaints := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			complaints[i] = n.shutdown()
		}()
	}
	wg.Wait()
	c.mu.Lock()
	links := make([]*link, 0, len(c.links))
	for _, l := range c.links {
		links = append(links, l)
	}
	c.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	c.hc.CloseIdleConnections()
	for _, m := range slices.Backward(c.mounts) {
		if err := unmount(m); err != nil {
			t.Errorf("cluster: unmounting %s: %v", m, err)
		}
	}
	for _, n := range c.Nodes {
		if msg := n.crashed(); msg != "" {
			t.Errorf("cluster: %s", msg)
		}
	}
	for _, s := range complaints {
		if s != "" {
			t.Logf("cluster: cleanup: %s", s)
		}
	}
	for _, n := range c.Nodes {
		log := n.Log()
		if bad := badLines(log); bad != "" {
			t.Errorf("cluster: node %d reported a data race or crash:\n%s", n.Index, bad)
		}
		if line := firstLine(log, "two running nodes have one identity", "another running node has this node's identity"); line != "" && !c.opts.CopiesNodes {
			t.Errorf("cluster: node %d found two running nodes with one identity, and no test started a copy of a node:\n%s", n.Index, line)
		}
		if line := firstLine(log, "a peer list entry reaches more than one node"); line != "" && !c.opts.SharesURLs {
			t.Errorf("cluster: node %d found a peer list entry that reaches several nodes, and no test listed one:\n%s", n.Index, line)
		}
	}
	if t.Failed() {
		for _, n := range c.Nodes {
			t.Log(n.logTail(60))
		}
	}
}

// firstLine returns the first line of a node log that contains one of
// markers (in the order given), if any.
func firstLine(log string, markers ...string) string {
	for _, marker := range markers {
		if i := strings.Index(log, marker); i >= 0 {
			start := strings.LastIndexByte(log[:i], '\n') + 1
			end := strings.IndexByte(log[i:], '\n')
			if end < 0 {
				return log[start:]
			}
			return log[start : i+end]
		}
	}
	return ""
}

// badLines returns the part of a node log from the first data race
// report or Go panic, if any.
func badLines(log string) string {
	for _, marker := range []string{"WARNING: DATA RACE", "\npanic: ", "\nfatal error: "} {
		if i := strings.Index(log, marker); i >= 0 {
			s := log[i:]
			if len(s) > 8000 {
				s = s[:8000] + "\n..."
			}
			return s
		}
	}
	return ""
}
