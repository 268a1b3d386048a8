package peer_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/peer"
)

// TestMissServedFromPeer: a read that misses locally is served from a
// peer (X-Dtfc-Source: peer), stored, and then served locally;
// nopeerload stays local; nobody holding it is a 404.
func TestMissServedFromPeer(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{}, nodeOpts{})
	a, c := nodes[0], nodes[2]
	data := randomBytes(t, 300<<10)
	id := a.put(data)

	resp, body, err := get(c.URL + "/" + id.String() + "/nopeerload")
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "nopeerload must not ask peers")
	resp, _, err = get(c.URL + "/" + id.String() + "?nopeerload=1")
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	resp, body, err = get(c.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "peer", resp.Header.Get("X-Dtfc-Source"))
	assert.Equal(t, id.String(), resp.Header.Get("X-Content-SHA512"))
	assert.True(t, bytes.Equal(data, body))

	resp, body, err = get(c.URL + "/" + id.String() + "/nopeerload")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "local", resp.Header.Get("X-Dtfc-Source"))
	assert.True(t, bytes.Equal(data, body))
	assert.Equal(t, 1.0, c.metric("dtfc_peer_fetches_total", "ok"))

	missing := dtfc.Sum([]byte("nobody has this"))
	resp, _, err = get(c.URL + "/" + missing.String())
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Equal(t, 1.0, c.metric("dtfc_peer_fetches_total", "notfound"))
}

// TestHeadMissMovesNoBytes: HEAD of a miss answers from a peer's state.
func TestHeadMissMovesNoBytes(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{})
	a, b := nodes[0], nodes[1]
	data := []byte("<html><body>hi</body></html>")
	w, err := a.Store.NewWriter(blobWriterOpts())
	require.NoError(t, err)
	w.Write(data)
	res, err := w.Commit(uploadAs("text/html; charset=utf-8", "page.html"))
	require.NoError(t, err)
	w.Close()
	id := res.State.ID

	req, _ := http.NewRequest(http.MethodHead, b.URL+"/"+id.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, int64(len(data)), resp.ContentLength)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Equal(t, "peer", resp.Header.Get("X-Dtfc-Source"))
	assert.False(t, b.holds(id), "HEAD must not transfer the blob")
	assert.Zero(t, b.metric("dtfc_peer_fetches_total", "ok"))
}

// TestDeleteKnownOnlyToPeer: DELETE of an ID this node does not know but
// a peer holds succeeds and leaves a tombstone here.
func TestDeleteKnownOnlyToPeer(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{})
	a, b := nodes[0], nodes[1]
	id := a.put([]byte("delete me from the other side"))
	req, _ := http.NewRequest(http.MethodDelete, b.URL+"/"+id.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	st, err := b.Store.Stat(id)
	require.NoError(t, err)
	assert.True(t, st.Deleted)

	unknown := dtfc.Sum([]byte("nobody knows this"))
	req, _ = http.NewRequest(http.MethodDelete, b.URL+"/"+unknown.String(), nil)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// corrupter flips one byte in the middle of every blob body the node
// serves to its peers, as a faulty disk, NIC or proxy would.
func corrupter(on *atomic.Bool) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if on.Load() && r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_internal/blobs/") {
				w = &flipWriter{ResponseWriter: w}
			}
			h.ServeHTTP(w, r)
		})
	}
}

type flipWriter struct {
	http.ResponseWriter
	n       int64
	flipped bool
}

func (f *flipWriter) Write(p []byte) (int, error) {
	cl := f.Header().Get("Content-Length")
	if !f.flipped && cl != "" {
		var size int64
		for _, c := range cl {
			size = size*10 + int64(c-'0')
		}
		if mid := size / 2; mid >= f.n && mid < f.n+int64(len(p)) {
			q := append([]byte(nil), p...)
			q[mid-f.n] ^= 0xff
			p = q
			f.flipped = true
		}
	}
	n, err := f.ResponseWriter.Write(p)
	f.n += int64(n)
	return n, err
}

// TestCorruptPeer: a peer sends wrong bytes. The client's transfer is
// aborted before it completes (it never receives a whole 200 body of
// wrong bytes), nothing is stored, and the next request gets the right
// bytes from another peer.
func TestCorruptPeer(t *testing.T) {
	var on atomic.Bool
	on.Store(true)
	nodes := startCluster(t, nodeOpts{wrap: corrupter(&on)}, nodeOpts{}, nodeOpts{})
	bad, good, reader := nodes[0], nodes[1], nodes[2]
	// Content whose owner, as the reader sees the ring, is the bad peer,
	// so the bad peer is asked first.
	ring := peer.NewRing(reader.Cluster.Peers())
	var data []byte
	var id dtfc.ID
	for {
		data = randomBytes(t, 2<<20)
		id = dtfc.Sum(data)
		if ring.Owner(id) == bad.URL {
			break
		}
	}
	require.Equal(t, id, bad.put(data))
	require.Equal(t, id, good.put(data))

	resp, err := http.Get(reader.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "headers go out before the bytes are verified")
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Error(t, err, "the transfer must be cut off, not completed")
	assert.Less(t, len(body), len(data), "the last byte is held back until verified")
	assert.True(t, bytes.Equal(data[:len(body)/2], body[:len(body)/2]) || len(body) == 0)
	assert.False(t, reader.holds(id), "corrupt bytes are not stored")
	assert.Equal(t, 1.0, reader.metric("dtfc_peer_fetches_total", "corrupt"))

	resp, body, err = get(reader.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, sha512.Sum512(data), sha512.Sum512(body), "right bytes from the good peer")
	reader.eventuallyHolds(id, true)

	st := reader.status()
	require.NotNil(t, st.Cluster)
	var badStatus peer.PeerStatus
	for _, p := range st.Cluster.Peers {
		if p.URL == bad.URL {
			badStatus = p
		}
	}
	assert.Contains(t, badStatus.LastError, "do not match", "the bad peer shows in /_status")
}

// TestConcurrentMissesOneTransfer: 100 clients read one missing 64 MiB
// blob at once; the peers see exactly one transfer, and every client gets
// every byte right.
func TestConcurrentMissesOneTransfer(t *testing.T) {
	size := 64 << 20
	if testing.Short() {
		size = 4 << 20
	}
	nodes := startCluster(t, nodeOpts{}, nodeOpts{})
	a, b := nodes[0], nodes[1]
	data := randomBytes(t, size)
	id := a.put(data)
	want := sha512.Sum512(data)
	data = nil

	const clients = 100
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(b.URL + "/" + id.String())
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha512.New()
			n, err := io.Copy(h, resp.Body)
			switch {
			case err != nil:
				errs <- err
			case resp.StatusCode != http.StatusOK:
				errs <- errors.New(resp.Status)
			case n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]):
				errs <- errors.New("wrong bytes")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Equal(t, 1.0, b.metric("dtfc_peer_fetches_total", "ok"), "one transfer for all clients")
	assert.Equal(t, float64(size), b.metric("dtfc_peer_fetch_bytes_total", ""))
}

// TestDisagreeingPeersNoDeadlock: two nodes that list each other (and
// disagree about who else exists) never wait on each other: a peer asked
// by a peer answers from its own disk only.
func TestDisagreeingPeersNoDeadlock(t *testing.T) {
	a, b, c := newNode(t, nodeOpts{}), newNode(t, nodeOpts{}), newNode(t, nodeOpts{})
	a.writePeers(b, c) // a knows c
	b.writePeers(a)    // b does not
	c.writePeers(a, b)
	a.start()
	b.start()
	c.start()
	held := c.put([]byte("only c holds this"))
	missing := dtfc.Sum([]byte("nobody holds this"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	codes := make(chan int, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := []*node{a, b}[i%2]
			id := []dtfc.ID{held, missing}[i/2%2]
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.URL+"/"+id.String(), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("request did not finish: %v", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	var got []int
	for c := range codes {
		got = append(got, c)
	}
	assert.Len(t, got, 40)
	a.eventuallyHolds(held, true) // a, which knows c, fetched it
	// b asked a, which answers peers from its own disk only: b gets it
	// only if a's copy had landed by then; either answer is fine, but
	// every request finished well before the deadline.
	assert.NoError(t, ctx.Err())
}

// TestRefreshPeers: a peer added to the list file at run time is used
// after PUT /refreshpeers; a removed one is no longer asked; a broken file
// is refused and the old list stays in force.
func TestRefreshPeers(t *testing.T) {
	a, b, c := newNode(t, nodeOpts{}), newNode(t, nodeOpts{}), newNode(t, nodeOpts{})
	a.writePeers(b)
	b.writePeers(a)
	c.writePeers()
	a.start()
	b.start()
	c.start()
	onC := c.put([]byte("held by c only"))

	resp, _, err := get(a.URL + "/" + onC.String())
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "a does not know c yet")

	a.writePeers(b, c)
	code, body := refresh(t, a)
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, c.URL)
	resp, _, err = get(a.URL + "/" + onC.String())
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "a asks c after the refresh")

	require.NoError(t, os.WriteFile(a.peerFile, []byte("[[peers]]\nurl = \"http://x\"\nrol = 3\n"), 0o644))
	code, body = refresh(t, a)
	assert.Equal(t, http.StatusUnprocessableEntity, code)
	assert.Contains(t, body, "unknown keys")
	assert.Len(t, a.Cluster.Peers(), 2, "the old list stays in force")

	a.writePeers(b)
	code, _ = refresh(t, a)
	require.Equal(t, http.StatusOK, code)
	onC2 := c.put([]byte("also held by c only"))
	resp, _, err = get(a.URL + "/" + onC2.String())
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "c was removed")
	assert.Len(t, a.status().Queues, 1)

	// The .html alias and a node without a peer list.
	req, _ := http.NewRequest(http.MethodPut, a.URL+"/refreshpeers.html", nil)
	r2, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	r2.Body.Close()
	assert.Equal(t, http.StatusOK, r2.StatusCode)
}

func refresh(t *testing.T, n *node) (int, string) {
	req, _ := http.NewRequest(http.MethodPut, n.URL+"/refreshpeers", nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestCacheEvicts: a cache limited to ten files' worth reads thirty files
// through it, stays under its limit after every read, and still serves all
// thirty (fetching evicted ones again).
func TestCacheEvicts(t *testing.T) {
	const size = 64 << 10
	nodes := startCluster(t, nodeOpts{}, nodeOpts{role: peer.RoleCache, maxBytes: 10 * size})
	replica, cache := nodes[0], nodes[1]
	var ids []dtfc.ID
	var datas [][]byte
	for range 30 {
		d := randomBytes(t, size)
		datas = append(datas, d)
		ids = append(ids, replica.put(d))
	}
	for round := range 2 {
		for i, id := range ids {
			resp, body, err := get(cache.URL + "/" + id.String())
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.True(t, bytes.Equal(datas[i], body), "round %d file %d", round, i)
			_, held := cache.Store.Stats()
			require.LessOrEqual(t, held, int64(10*size), "round %d file %d: over the limit", round, i)
		}
	}
	// Round two fetched again (nearly) every file: only the last ten fit.
	assert.GreaterOrEqual(t, cache.metric("dtfc_peer_fetches_total", "ok"), 50.0, "evicted files are fetched again")
	assert.GreaterOrEqual(t, cache.metric("dtfc_cache_evictions_total", ""), 50.0)
	blobs, _ := replica.Store.Stats()
	assert.EqualValues(t, 30, blobs, "replicas never evict")
}

// TestCacheKeepsRecentlyRead: the least recently read file goes first.
func TestCacheKeepsRecentlyRead(t *testing.T) {
	const size = 32 << 10
	nodes := startCluster(t, nodeOpts{}, nodeOpts{role: peer.RoleCache, maxBytes: 3 * size})
	replica, cache := nodes[0], nodes[1]
	var ids []dtfc.ID
	for range 4 {
		ids = append(ids, replica.put(randomBytes(t, size)))
	}
	read := func(id dtfc.ID) {
		resp, _, err := get(cache.URL + "/" + id.String())
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	// A fill commits just after its reader has all the bytes: wait for
	// each, so the fills are noted as used in the order of the reads.
	for _, id := range ids[:3] {
		read(id)
		cache.eventuallyHolds(id, true)
	}
	read(ids[0]) // 0 is now more recent than 1
	read(ids[3]) // evicts 1
	cache.eventuallyHolds(ids[3], true)
	cache.eventuallyHolds(ids[1], false)
	assert.True(t, cache.holds(ids[0]))
	assert.True(t, cache.holds(ids[2]))
}

// TestMissOfDeletedStaysDeleted: a node whose tombstone is newer than a
// peer's copy does not fetch it back.
func TestMissOfDeletedStaysDeleted(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{})
	a, b := nodes[0], nodes[1]
	data := []byte("deleted on b, still on a")
	id := a.put(data)
	_, err := b.Store.Delete(id, true)
	require.NoError(t, err)
	resp, _, err := get(b.URL + "/" + id.String())
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.False(t, b.holds(id))
}

func blobWriterOpts() blobstoreWriterOptions { return blobstoreWriterOptions{} }

// TestEmptyBlobFromTwoHolders: with two holders, a transfer's first
// request asks for the first piece only (a Range); a range of an empty
// blob is unsatisfiable (416), and the empty blob must still come, to a
// client's miss and to anti-entropy (soak seed 68 lost an acknowledged
// empty upload on a replaced node this way).
func TestEmptyBlobFromTwoHolders(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{}, nodeOpts{}, nodeOpts{})
	a, b, c, d := nodes[0], nodes[1], nodes[2], nodes[3]
	id := a.put(nil)
	require.Equal(t, id, b.put(nil))

	resp, body, err := get(c.URL + "/" + id.String())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "a miss of an empty blob two peers hold")
	assert.Empty(t, body)
	assert.Equal(t, "peer", resp.Header.Get("X-Dtfc-Source"))

	require.False(t, d.holds(id))
	d.Cluster.AntiEntropy(context.Background())
	assert.True(t, d.holds(id), "anti-entropy brings an empty blob two peers hold")
}
