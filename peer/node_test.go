package peer_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
	"github.com/dtfc/dtfc/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// nodeOpts configure an in-process node.
type nodeOpts struct {
	role     dtfc.Role                       // "" = replica
	maxBytes int64                           // cache size limit
	run      bool                            // run background work (pushers, anti-entropy)
	wrap     func(http.Handler) http.Handler // e.g. a corrupter in front of the node
	peer     func(*peer.Options)             // adjust the cluster options
	server   func(*server.Config)            // adjust the server options
	wall     func() time.Time                // the store's and the cluster's wall clock (nil: the machine's)
}

// node is an in-process dtfc node: a real store on disk, a real
// peer.Cluster and HTTP API on a loopback socket.
type node struct {
	t        testing.TB
	o        nodeOpts
	URL      string
	Store    *blobstore.Store
	Cluster  *peer.Cluster
	Reg      *prometheus.Registry
	peerFile string
	Dir      string // the store's base directory, kept across restarts
	addr     string
	hs       *httptest.Server
	stop     func()
}

// newNode takes a socket (so the node's URL is known for peer lists);
// start serves it.
func newNode(t testing.TB, o nodeOpts) *node {
	if o.role == "" {
		o.role = peer.RoleReplica
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	n := &node{t: t, o: o, URL: "http://" + ln.Addr().String(), addr: ln.Addr().String(), Dir: t.TempDir()}
	n.hs = httptest.NewUnstartedServer(nil)
	n.hs.Listener.Close()
	n.hs.Listener = ln
	n.peerFile = filepath.Join(t.TempDir(), "peers.toml")
	require.NoError(t, os.WriteFile(n.peerFile, nil, 0o644))
	n.stop = func() { ln.Close() }
	t.Cleanup(func() { n.stop() })
	return n
}

// writePeers writes the node's peer list file (Refresh or start read it).
func (n *node) writePeers(peers ...*node) {
	var b strings.Builder
	for _, p := range peers {
		fmt.Fprintf(&b, "[[peers]]\nurl = %q\nrole = %q\n\n", p.URL, p.o.role)
	}
	require.NoError(n.t, os.WriteFile(n.peerFile, []byte(b.String()), 0o644))
}

func (n *node) start() *node {
	t, o := n.t, n.o
	if n.hs == nil {
		// Restarting: the same address and directory. Another process may
		// have taken the port meanwhile (a connection's ephemeral port):
		// wait for it to be free again.
		var ln net.Listener
		require.Eventually(t, func() bool {
			var err error
			ln, err = net.Listen("tcp", n.addr)
			return err == nil
		}, 30*time.Second, 50*time.Millisecond, "the port of %s stayed taken", n.addr)
		n.hs = httptest.NewUnstartedServer(nil)
		n.hs.Listener.Close()
		n.hs.Listener = ln
	}
	st, err := blobstore.Open(n.Dir, blobstore.Options{TrackAccess: o.role == peer.RoleCache, Wall: o.wall})
	require.NoError(t, err)
	n.Store = st
	n.Reg = prometheus.NewRegistry()
	po := peer.Options{
		Me: n.URL, Role: o.role, PeerList: n.peerFile, MaxBytes: o.maxBytes,
		Registry: n.Reg, ScrubInterval: -1, AntiEntropyInterval: time.Hour, Wall: o.wall,
	}
	if o.peer != nil {
		o.peer(&po)
	}
	if os.Getenv("DTFC_TEST_LOG") != "" {
		// The nodes' logs on stderr, to see what a failing test did.
		po.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.URL)
	}
	cl, err := peer.New(st, po)
	require.NoError(t, err)
	n.Cluster = cl
	sc := server.Config{Me: n.URL, Role: o.role, Cluster: cl, Registry: n.Reg}
	if o.server != nil {
		o.server(&sc)
	}
	var h http.Handler = server.New(sc, st)
	if o.wrap != nil {
		h = o.wrap(h)
	}
	n.hs.Config.Handler = h
	n.hs.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	if o.run {
		go func() { cl.Run(ctx); close(done) }()
	} else {
		close(done)
	}
	n.stop = func() {
		cancel()
		<-done
		n.hs.Close()
		n.hs = nil
		require.NoError(t, st.Close())
		n.stop = func() {}
	}
	return n
}

// down stops the node (its port refuses connections); start brings it
// back on the same address and directory.
func (n *node) down() { n.stop() }

// startCluster starts nodes that all list each other.
func startCluster(t testing.TB, opts ...nodeOpts) []*node {
	nodes := make([]*node, len(opts))
	for i, o := range opts {
		nodes[i] = newNode(t, o)
	}
	for i, n := range nodes {
		others := append(append([]*node{}, nodes[:i]...), nodes[i+1:]...)
		n.writePeers(others...)
	}
	for _, n := range nodes {
		n.start()
	}
	return nodes
}

// put stores b as an upload to this node, straight into its store.
func (n *node) put(b []byte) dtfc.ID {
	w, err := n.Store.NewWriter(blobstore.WriterOptions{})
	require.NoError(n.t, err)
	defer w.Close()
	_, err = w.Write(b)
	require.NoError(n.t, err)
	res, err := w.Commit(blobstore.Upload{ContentType: "application/octet-stream"})
	require.NoError(n.t, err)
	return res.State.ID
}

func (n *node) holds(id dtfc.ID) bool {
	b, err := n.Store.Open(id)
	if err != nil {
		return false
	}
	b.Close()
	return true
}

// eventuallyHolds waits until the node holds id (or not). A read from a
// peer completes for the client once the bytes are verified; storing them
// may take a moment more.
func (n *node) eventuallyHolds(id dtfc.ID, want bool) {
	n.t.Helper()
	eventually(n.t, 10*time.Second, func() bool { return n.holds(id) == want }, "node %s holds %s: %v", n.URL, id.String()[:8], want)
}

// metric returns the value of a counter or gauge with the given label
// value (or the first series when label is "").
func (n *node) metric(name, label string) float64 {
	mfs, err := n.Reg.Gather()
	require.NoError(n.t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			match := label == ""
			for _, lp := range m.Label {
				match = match || lp.GetValue() == label
			}
			if !match {
				continue
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

func (n *node) status() server.Status {
	resp, err := http.Get(n.URL + "/_status")
	require.NoError(n.t, err)
	defer resp.Body.Close()
	var st server.Status
	require.NoError(n.t, json.NewDecoder(resp.Body).Decode(&st))
	return st
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func get(url string) (*http.Response, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, fmt.Sprintf(msg, args...))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type blobstoreWriterOptions = blobstore.WriterOptions

func uploadAs(ctype, name string) blobstore.Upload {
	return blobstore.Upload{ContentType: ctype, Filename: name}
}
