package cluster_test

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// converge bounds every WaitConverged: generous, for a noisy 2-core
// machine (anti-entropy runs every 2 s in the harness).
const converge = 30 * time.Second

func TestMain(m *testing.M) { cluster.VerifyTestMain(m) }

// client is a plain HTTP client whose connections each test closes.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// randomBytes returns n bytes never returned before in this process.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], seq.Add(1))
	rand.NewChaCha8(seed).Read(b)
	return b
}

var seq atomic.Uint64

func idOf(b []byte) string {
	sum := sha512.Sum512(b)
	return hex.EncodeToString(sum[:])
}

// put uploads data as name to the node at base and returns its ID.
func put(t *testing.T, hc *http.Client, base, name string, data []byte) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, base+"/"+name, bytes.NewReader(data))
	require.NoError(t, err)
	res, err := hc.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	require.Contains(t, []int{http.StatusCreated, http.StatusOK}, res.StatusCode, "PUT %s: %s", name, body)
	var ans struct {
		SHA512 string `json:"sha512"`
		Size   int64  `json:"size"`
	}
	require.NoError(t, json.Unmarshal(body, &ans))
	require.Equal(t, idOf(data), ans.SHA512)
	require.Equal(t, int64(len(data)), ans.Size)
	return ans.SHA512
}

// del deletes id through the node at base.
func del(t *testing.T, hc *http.Client, base, id string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, base+"/"+id, nil)
	require.NoError(t, err)
	res, err := hc.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "DELETE: %s", body)
}

// getLocal reads id from the node at base without letting it ask its
// peers.
func getLocal(t *testing.T, hc *http.Client, base, id string) (int, []byte) {
	t.Helper()
	res, err := hc.Get(base + "/" + id + "?nopeerload=1")
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, body
}

// requireEverywhere checks that every running node holds data, on disk
// and through GET ?nopeerload=1.
func requireEverywhere(t *testing.T, c *cluster.Cluster, hc *http.Client, data []byte) {
	t.Helper()
	id := idOf(data)
	for i, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		assert.Equal(t, int64(len(data)), c.BlobFiles(i)[id], "node %d: blob file", i)
		status, body := getLocal(t, hc, n.URL, id)
		if assert.Equal(t, http.StatusOK, status, "node %d: GET ?nopeerload=1", i) {
			assert.True(t, bytes.Equal(data, body), "node %d: GET answered other bytes", i)
		}
	}
}

// requireNowhere checks that no running node holds id any more.
func requireNowhere(t *testing.T, c *cluster.Cluster, hc *http.Client, id string) {
	t.Helper()
	for i, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		assert.NotContains(t, c.BlobFiles(i), id, "node %d: blob file of a deleted ID", i)
		status, _ := getLocal(t, hc, n.URL, id)
		assert.Equal(t, http.StatusNotFound, status, "node %d: GET of a deleted ID", i)
	}
}

// eventually polls cond every 50 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReplicates(t *testing.T) {
	// With a secret, so that WaitConverged's /_internal calls prove they
	// carry it.
	c := cluster.Start(t, cluster.Options{Nodes: 3, Secret: "s3cret \"quoted\""})
	hc := client(t)
	data := randomBytes(100 << 10)
	put(t, hc, c.Nodes[0].URL, "hello.bin", data)
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, data)
	c.CheckNoTemp(t)

	st, err := c.Status(1)
	require.NoError(t, err)
	assert.EqualValues(t, 1, st.Blobs)
	// Node 1 knows its peers by their proxies' URLs, never their own.
	queues := st.Queues
	assert.Contains(t, queues, c.PeerURL(1, 0))
	assert.Contains(t, queues, c.PeerURL(1, 2))
	assert.NotContains(t, queues, c.Nodes[0].URL)

	// /_internal refuses a request without the secret.
	res, err := hc.Get(c.Nodes[0].URL + "/_internal/digests")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, res.StatusCode)
}

func TestPartitionForwards(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := client(t)
	doomed := randomBytes(2000)
	doomedID := put(t, hc, c.Nodes[0].URL, "doomed.txt", doomed)
	c.WaitConverged(t, converge)

	c.Partition(0, 2)
	fresh := randomBytes(3000)
	put(t, hc, c.Nodes[0].URL, "fresh.txt", fresh)
	del(t, hc, c.Nodes[0].URL, doomedID)
	// Node 2 gets both through node 1 (API.md, Consistency 4).
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, fresh)
	requireNowhere(t, c, hc, doomedID)

	c.HealAll()
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, fresh)
	c.CheckNoTemp(t)
}

func TestCorruptLink(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := client(t)
	c.Corrupt(0, 1, true)
	data := randomBytes(1 << 20)
	id := put(t, hc, c.Nodes[0].URL, "big.bin", data)
	eventually(t, 20*time.Second, "the link 0->1 corrupts a body", func() bool {
		return c.Corrupted(0, 1) > 0
	})
	c.Corrupt(0, 1, false)
	c.WaitConverged(t, converge)

	status, body := getLocal(t, hc, c.Nodes[1].URL, id)
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, id, idOf(body), "node 1 holds bytes that do not hash to the ID")
	requireEverywhere(t, c, hc, data)
	assert.Positive(t, c.Corrupted(0, 1))
	assert.Zero(t, c.Corrupted(0, 2), "a link never switched on corrupted")
	c.CheckNoTemp(t)

	// Responses too: a file only node 0 holds, read through node 1 while
	// the link 1->0 corrupts what node 0 answers. The client must never
	// get a complete 200 whose bytes do not hash to the ID.
	c.Cut(0, 1)
	c.Cut(0, 2)
	c.Corrupt(1, 0, true)
	other := randomBytes(1 << 20)
	otherID := put(t, hc, c.Nodes[0].URL, "other.bin", other)
	before := c.Corrupted(1, 0)
	res, err := hc.Get(c.Nodes[1].URL + "/" + otherID)
	require.NoError(t, err)
	body, rerr := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode == http.StatusOK && rerr == nil {
		assert.Equal(t, otherID, idOf(body), "a complete 200 with corrupt bytes")
	}
	assert.Greater(t, c.Corrupted(1, 0), before, "the fetch went through the corrupting link (GET answered %s, source %q, %d bytes, read error %v)",
		res.Status, res.Header.Get("X-Dtfc-Source"), len(body), rerr)
	c.HealAll()
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, other)
	c.CheckNoTemp(t)
}

func TestRestartAndJoin(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 3})
	hc := client(t)
	first := randomBytes(5000)
	put(t, hc, c.Nodes[0].URL, "first", first)
	c.WaitConverged(t, converge)

	c.Nodes[1].Kill()
	c.Nodes[2].Stop()
	require.False(t, c.Nodes[1].Running())
	// WaitConverged skips the queues towards nodes that are down.
	second := randomBytes(6000)
	put(t, hc, c.Nodes[0].URL, "second", second)
	c.WaitConverged(t, converge)
	c.Nodes[1].Start()
	c.Nodes[2].Start()
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, first)
	requireEverywhere(t, c, hc, second)
	assert.Contains(t, c.Nodes[1].Log(), "starting node 1", "the log is appended across restarts")

	n := c.AddNode(cluster.RoleReplica)
	require.Equal(t, 3, n.Index)
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, first)
	requireEverywhere(t, c, hc, second)
	// The new node is a full member: an upload to it reaches the others
	// through the proxies made for it.
	third := randomBytes(7000)
	put(t, hc, n.URL, "third", third)
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, third)
	for i := range 3 {
		assert.Contains(t, readFile(t, c.Nodes[i].PeerList), c.PeerURL(i, 3))
	}
}

func TestFullDisk(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := client(t)
	small := randomBytes(10 << 10)
	put(t, hc, c.Nodes[0].URL, "small", small)
	c.WaitConverged(t, converge)

	c.FillDisk(1, "4m")                // skips unless root
	requireEverywhere(t, c, hc, small) // the blobs moved onto the tmpfs
	req, err := http.NewRequest(http.MethodPut, c.Nodes[1].URL+"/big", bytes.NewReader(randomBytes(8<<20)))
	require.NoError(t, err)
	res, err := hc.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusInsufficientStorage, res.StatusCode, "%s", body)
	c.CheckNoTemp(t)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// TestLatencyAndBandwidth checks the toxics apply and go away again.
func TestLatencyAndBandwidth(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := client(t)
	c.Latency(0, 1, 300*time.Millisecond)
	c.Bandwidth(0, 1, 100)
	start := time.Now()
	data := randomBytes(64 << 10)
	put(t, hc, c.Nodes[0].URL, "slow", data)
	c.WaitConverged(t, converge)
	assert.Greater(t, time.Since(start), 600*time.Millisecond, "latency applied")
	c.HealAll()
	requireEverywhere(t, c, hc, data)
	assert.True(t, strings.HasPrefix(c.PeerURL(0, 1), "http://127.0.0.1:"))
}

// TestListTwiceSecondProxy checks the peer lists of ListSelf and
// ListTwice with SecondProxy: every peer under two proxies' URLs, both
// reaching it, both cut by Cut and restored by Heal; the node itself
// under a second URL.
func TestListTwiceSecondProxy(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, ListSelf: true, ListTwice: true, SecondProxy: true})
	hc := client(t)
	urls := c.PeerURLs(0, 1)
	require.Len(t, urls, 2)
	assert.NotEqual(t, urls[0], urls[1])
	list := readFile(t, c.Nodes[0].PeerList)
	for _, u := range urls {
		assert.Contains(t, list, u)
		assert.NotEqual(t, c.Nodes[1].URL, u, "the second URL goes through a proxy")
	}
	assert.NotContains(t, list, c.Nodes[1].URL)
	assert.Contains(t, list, fmt.Sprintf("http://localhost:%d", c.Nodes[0].Port), "the node itself, under another name")

	health := func(u string) error {
		res, err := hc.Get(u + "/health")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", res.Status)
		}
		return nil
	}
	for _, u := range urls {
		require.NoError(t, health(u), "%s reaches node 1", u)
	}
	c.Cut(0, 1)
	for _, u := range urls {
		assert.Error(t, health(u), "%s is cut", u)
	}
	c.HealAll()
	for _, u := range urls {
		require.NoError(t, health(u), "%s reaches node 1 again", u)
	}

	// The cluster replicates over them (and the harness counts both
	// queues).
	data := randomBytes(3000)
	put(t, hc, c.Nodes[0].URL, "twice", data)
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, data)
	st, err := c.Status(0)
	require.NoError(t, err)
	queues := st.Queues
	for _, u := range urls {
		assert.Contains(t, queues, u)
	}
}

// TestRestartOnTakenPort: a node keeps its port across restarts, and
// while it is down another process may take that port. Start then waits
// for the port to be free again and starts the node once more, instead
// of failing the test.
func TestRestartOnTakenPort(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 1})
	n := c.Nodes[0]
	n.Stop()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)))
	require.NoError(t, err, "taking the stopped node's port")
	released := make(chan struct{})
	go func() {
		defer close(released)
		defer ln.Close()
		// Hold the port until the node has failed to bind it once.
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(n.Log(), "address already in use") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}()
	n.Start()
	<-released
	assert.True(t, n.Running())
	assert.Contains(t, n.Log(), "address already in use", "the first start failed to bind")
	assert.Contains(t, n.Log(), "starting node 0 once more")
	res, err := client(t).Get(n.URL + "/health")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
}
