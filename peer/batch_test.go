package peer_test

import (
	"bufio"
	"bytes"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// blobRoutes counts the pushes a node receives: batches (POST
// /_internal/blobs) with the IDs each carried, and single PUTs. With
// corrupt set, it flips the last byte of the next batch's body (a byte
// of its last blob), once; with old set, it answers batches 404, as a
// dtfc from before them does.
type blobRoutes struct {
	mu      sync.Mutex
	batches [][]dtfc.ID
	puts    []dtfc.ID
	refused int // batches answered 404
	corrupt atomic.Bool
	flipped dtfc.ID // the blob whose byte was flipped
	old     atomic.Bool
}

func (br *blobRoutes) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/_internal/blobs":
			if br.old.Load() {
				br.mu.Lock()
				br.refused++
				br.mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				io.WriteString(w, `{"error":"no such node-to-node route"}`)
				return
			}
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			ids := frameIDs(body)
			br.mu.Lock()
			br.batches = append(br.batches, ids)
			if len(ids) > 0 && br.corrupt.CompareAndSwap(true, false) {
				body[len(body)-1] ^= 0xff
				br.flipped = ids[len(ids)-1]
			}
			br.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
		case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/_internal/blobs/"):
			id, err := dtfc.ParseID(strings.TrimPrefix(r.URL.Path, "/_internal/blobs/"))
			if err == nil {
				br.mu.Lock()
				br.puts = append(br.puts, id)
				br.mu.Unlock()
			}
		}
		h.ServeHTTP(w, r)
	})
}

// frameIDs returns the IDs of a batch body's frames (each a state line,
// base64url JSON, then the state's Size bytes).
func frameIDs(body []byte) []dtfc.ID {
	var ids []dtfc.ID
	r := bufio.NewReader(bytes.NewReader(body))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return ids
		}
		js, err := base64.RawURLEncoding.DecodeString(strings.TrimSuffix(line, "\n"))
		if err != nil {
			return ids
		}
		var st dtfc.State
		if json.Unmarshal(js, &st) != nil {
			return ids
		}
		ids = append(ids, st.ID)
		if _, err := io.CopyN(io.Discard, r, st.Size); err != nil {
			return ids
		}
	}
}

func (br *blobRoutes) counts() (batches, puts, refused int) {
	br.mu.Lock()
	defer br.mu.Unlock()
	return len(br.batches), len(br.puts), br.refused
}

// catchUpPair starts a (pushing) and c (serving only: no anti-entropy of
// its own, so that what it gets comes by a's pushes), takes c down while
// a gets small small blobs and large large ones, and brings c back. It
// returns the blobs' IDs.
func catchUpPair(t *testing.T, routes *blobRoutes, small, large int) (a, c *node, ids map[dtfc.ID]bool) {
	nodes := startCluster(t, running(nodeOpts{}), nodeOpts{wrap: routes.wrap})
	a, c = nodes[0], nodes[1]
	c.down()
	ids = uploadWhileDown(t, a, small, large)
	c.start()
	return a, c, ids
}

// uploadWhileDown puts small blobs of 1 KiB and large ones of 100 KiB
// (more than a batch takes) on a.
func uploadWhileDown(t *testing.T, a *node, small, large int) map[dtfc.ID]bool {
	ids := map[dtfc.ID]bool{}
	for i := range small + large {
		size := 1 << 10
		if i >= small {
			size = 100 << 10
		}
		ids[a.put(randomBytes(t, size))] = true
	}
	return ids
}

// holdsRight reports whether n holds every ID, its bytes hashing to it.
func holdsRight(t *testing.T, n *node, ids map[dtfc.ID]bool) func() bool {
	return func() bool {
		for id := range ids {
			b, err := n.Store.Open(id)
			if err != nil {
				return false
			}
			h := sha512.New()
			_, err = io.Copy(h, b)
			b.Close()
			require.NoError(t, err)
			require.Equal(t, id[:], h.Sum(nil), "only right bytes are stored")
		}
		return true
	}
}

// TestCatchUpInBatches: a node back from a stop gets the small blobs it
// missed in batches and the large ones one by one, every byte right;
// the pusher's queue empties.
func TestCatchUpInBatches(t *testing.T) {
	routes := &blobRoutes{}
	a, c, ids := catchUpPair(t, routes, 300, 3)
	eventually(t, converge, holdsRight(t, c, ids), "c holds every blob")
	eventually(t, converge, queuesEmpty(a), "a's queue drains")

	batches, _, _ := routes.counts()
	assert.GreaterOrEqual(t, batches, 2, "the small blobs came in batches")
	routes.mu.Lock()
	defer routes.mu.Unlock()
	inBatch := map[dtfc.ID]bool{}
	for _, b := range routes.batches {
		assert.LessOrEqual(t, len(b), 256)
		for _, id := range b {
			inBatch[id] = true
		}
	}
	assert.Len(t, inBatch, 300, "every small blob in a batch")
	assert.Len(t, routes.puts, 3, "only the large ones alone")
	for _, id := range routes.puts {
		assert.False(t, inBatch[id])
	}
}

// TestBatchCorruptedInTransit: a blob of a batch whose bytes are
// corrupted on the way is refused (the others of the batch are stored),
// pushed again, and lands; no wrong byte is ever stored.
func TestBatchCorruptedInTransit(t *testing.T) {
	routes := &blobRoutes{}
	routes.corrupt.Store(true)
	a, c, ids := catchUpPair(t, routes, 200, 0)
	eventually(t, converge, holdsRight(t, c, ids), "c holds every blob, the corrupted one too")
	eventually(t, converge, queuesEmpty(a), "a's queue drains")

	routes.mu.Lock()
	defer routes.mu.Unlock()
	require.False(t, routes.flipped.IsZero(), "a byte was flipped")
	sent := 0
	for _, b := range routes.batches {
		for _, id := range b {
			if id == routes.flipped {
				sent++
			}
		}
	}
	assert.GreaterOrEqual(t, sent, 2, "the corrupted blob was pushed again")
}

// TestBatchFallbackToSinglePuts: a peer that answers batches 404 (a dtfc
// from before them) gets the blobs one by one, and no batch again; once
// it comes back upgraded (seen down, then up), it gets batches.
func TestBatchFallbackToSinglePuts(t *testing.T) {
	routes := &blobRoutes{}
	routes.old.Store(true)
	a, c, ids := catchUpPair(t, routes, 150, 0)
	eventually(t, converge, holdsRight(t, c, ids), "c holds every blob")
	eventually(t, converge, queuesEmpty(a), "a's queue drains")
	_, puts, refused := routes.counts()
	assert.GreaterOrEqual(t, refused, 1)
	assert.LessOrEqual(t, refused, 4, "refused once by each batch of the first push (four at once at most)")
	assert.GreaterOrEqual(t, puts, 150, "one by one instead")

	// Later pushes do not try batches again.
	more := map[dtfc.ID]bool{}
	for range 50 {
		more[a.put(randomBytes(t, 1<<10))] = true
	}
	eventually(t, converge, holdsRight(t, c, more), "c holds the later blobs")
	_, _, again := routes.counts()
	assert.Equal(t, refused, again, "no batch tried again")

	// Upgraded: stopped, started again knowing batches.
	c.down()
	later := uploadWhileDown(t, a, 100, 0)
	routes.old.Store(false)
	c.start()
	eventually(t, converge, holdsRight(t, c, later), "c holds the blobs pushed after its upgrade")
	batches, _, _ := routes.counts()
	assert.GreaterOrEqual(t, batches, 1, "batches again after the peer came back")
}

// frame is a batch frame of data under st, as a pusher writes it.
func frame(t *testing.T, st dtfc.State, data []byte) []byte {
	js, err := json.Marshal(st)
	require.NoError(t, err)
	return append([]byte(base64.RawURLEncoding.EncodeToString(js)+"\n"), data...)
}

// postBatch posts body to n's batch route and returns the status and
// the decoded answer.
func postBatch(t *testing.T, n *node, body io.Reader) (int, map[string]any) {
	resp, err := http.Post(n.URL+"/_internal/blobs", "application/x-dtfc-blobs", body)
	require.NoError(t, err)
	defer resp.Body.Close()
	var ans map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ans), "a JSON answer")
	return resp.StatusCode, ans
}

// TestBatchRoute: the batch route answers one result per blob (201
// stored, 200 for a state it needs no bytes for, 400 for bytes that do
// not hash to the ID), and refuses with 400 and a JSON error, storing
// nothing and leaving no temp file, a batch beyond its limits or that is
// malformed.
func TestBatchRoute(t *testing.T) {
	c := startCluster(t, nodeOpts{})[0]
	now := dtfc.TimestampAt(time.Now())
	blob := func(size int) ([]byte, dtfc.State) {
		data := randomBytes(t, size)
		return data, dtfc.State{ID: dtfc.Sum(data), Clock: now, Node: "peer", Size: int64(size)}
	}

	d1, s1 := blob(1000)
	d2, s2 := blob(2000)
	bad := append([]byte(nil), d2...)
	bad[0] ^= 1
	d3, s3 := blob(0)
	body := bytes.Join([][]byte{frame(t, s1, d1), frame(t, s2, bad), frame(t, s3, d3)}, nil)
	code, ans := postBatch(t, c, bytes.NewReader(body))
	require.Equal(t, http.StatusOK, code, ans)
	results := ans["results"].([]any)
	require.Len(t, results, 3)
	assert.EqualValues(t, http.StatusCreated, results[0].(map[string]any)["status"])
	assert.EqualValues(t, http.StatusBadRequest, results[1].(map[string]any)["status"], "corrupted: refused")
	assert.Contains(t, results[1].(map[string]any)["error"], "hashes to")
	assert.EqualValues(t, http.StatusCreated, results[2].(map[string]any)["status"], "an empty blob")
	assert.True(t, c.holds(s1.ID) && c.holds(s3.ID))
	assert.False(t, c.holds(s2.ID))

	// Again: nothing needed, the bytes read and dropped.
	code, ans = postBatch(t, c, bytes.NewReader(frame(t, s1, d1)))
	require.Equal(t, http.StatusOK, code, ans)
	first := ans["results"].([]any)[0].(map[string]any)
	assert.EqualValues(t, http.StatusOK, first["status"])
	assert.Equal(t, "stale", first["result"])

	many := make([][]byte, 257)
	for i := range many {
		d, s := blob(10)
		many[i] = frame(t, s, d)
	}
	big, bigState := blob(64<<10 + 1)
	var large [][]byte // 8 MiB and more, of blobs within the limit
	for range 129 {
		d, s := blob(64 << 10)
		large = append(large, frame(t, s, d))
	}
	whole := frame(t, s2, d2)
	tomb := dtfc.State{ID: s2.ID, Deleted: true, Clock: now, Node: "peer"}
	for _, tc := range []struct {
		name string
		body io.Reader
		want string
	}{
		{"more than 256 blobs", bytes.NewReader(bytes.Join(many, nil)), "more than 256 blobs"},
		{"a blob larger than 64 KiB", bytes.NewReader(frame(t, bigState, big)), "more than the 65536"},
		{"a body declared larger than 8 MiB", bytes.NewReader(bytes.Join(large, nil)), "at most 8388608 bytes"},
		{"a body streamed larger than 8 MiB", io.MultiReader(bytes.NewReader(bytes.Join(large, nil))), "at most 8388608 bytes"},
		{"a malformed state line", strings.NewReader("not base64!\n"), "bad frame"},
		{"a state line too long", strings.NewReader(strings.Repeat("A", 9000) + "\n"), "longer than"},
		{"a tombstone", bytes.NewReader(append(frame(t, s2, d2), frame(t, tomb, nil)...)), "a tombstone has no bytes"},
		{"a body that ends inside a blob", bytes.NewReader(whole[:len(whole)-500]), "ends inside a blob"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, ans := postBatch(t, c, tc.body)
			assert.Equal(t, http.StatusBadRequest, code)
			assert.Contains(t, ans["error"], tc.want)
			assert.False(t, c.holds(s2.ID), "nothing of the batch stored")
			tmp, err := os.ReadDir(filepath.Join(c.Dir, "tmp"))
			require.NoError(t, err)
			assert.Empty(t, tmp, "no temp file left")
		})
	}
}
