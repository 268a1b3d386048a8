package peer_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// A push of a large blob resumes (issue 14): the receiving node keeps
// what a cut push (or any cut transfer) received, refuses a resumable
// PUT before its body with where to start, and takes the rest from
// there. These tests speak the protocol to a node directly.

const (
	pushedSize = 6 << 20 // above the 4 MiB from which transfers resume
	keptBytes  = 5 << 20
)

// keepPartial leaves in n's store the first k bytes of data as a cut
// transfer of it would: checkpointed, kept for the next one.
func keepPartial(t *testing.T, n *node, id dtfc.ID, data []byte, k int) {
	t.Helper()
	w, err := n.Store.NewResumableWriter(id, int64(len(data)), blobstore.WriterOptions{})
	require.NoError(t, err)
	require.True(t, w.Resumable())
	_, err = w.Write(data[:k])
	require.NoError(t, err)
	require.NoError(t, w.Suspend())
	require.NoError(t, w.Close())
	n2, size := n.Store.PartialSize(id)
	require.Equal(t, int64(k), n2)
	require.Equal(t, int64(len(data)), size)
}

// pushTo PUTs body as the bytes of st to n, as a pusher does, with hdr
// added; the request waits long for 100 Continue when it expects one, so
// that a refusal shows as no body byte read. It returns the answer, its
// body, and how many bytes of body were read.
func pushTo(t *testing.T, n *node, st dtfc.State, body []byte, hdr map[string]string) (*http.Response, string, int64) {
	t.Helper()
	b, err := json.Marshal(st)
	require.NoError(t, err)
	var read atomic.Int64
	var rb io.Reader = &countingBody{ReadCloser: io.NopCloser(bytes.NewReader(body)), n: &read}
	if len(body) == 0 {
		rb = http.NoBody // a length of 0, not an unknown one
	}
	req, err := http.NewRequest(http.MethodPut, n.URL+peer.InternalPrefix+"/blobs/"+st.ID.String(), rb)
	require.NoError(t, err)
	req.ContentLength = int64(len(body))
	req.Header.Set(peer.HeaderState, base64.RawURLEncoding.EncodeToString(b))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	tr := &http.Transport{ExpectContinueTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	ans, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(ans), read.Load()
}

// blobToPush makes a large blob on a, whose state a pusher would send.
func blobToPush(t *testing.T, a *node) ([]byte, dtfc.State) {
	data := randomBytes(t, pushedSize)
	id := a.put(data)
	st, err := a.Store.Stat(id)
	require.NoError(t, err)
	return data, st
}

// noPartial waits for n's partial/ to be empty: the writer of a pushed
// blob removes its checkpoint when it is closed, just after the commit
// that makes the blob held (TestPusherSendsOnlyTheRest failed, now and
// then, looking in between).
func noPartial(t *testing.T, n *node) {
	t.Helper()
	var entries []os.DirEntry
	ok := assert.Eventually(t, func() bool {
		var err error
		entries, err = os.ReadDir(filepath.Join(n.Dir, "partial"))
		return err == nil && len(entries) == 0
	}, 10*time.Second, 10*time.Millisecond)
	if !ok {
		t.Errorf("a pushed blob that was stored left %v in partial/", entries)
	}
}

func TestPushResumesKeptBytes(t *testing.T) {
	resume := map[string]string{peer.HeaderResume: "1", "Expect": "100-continue"}
	at := func(off int) map[string]string {
		return map[string]string{peer.HeaderResume: "1", "Expect": "100-continue", peer.HeaderOffset: strconv.Itoa(off)}
	}

	t.Run("refused before the body, then the rest taken", func(t *testing.T) {
		nodes := startCluster(t, nodeOpts{}, nodeOpts{})
		a, b := nodes[0], nodes[1]
		data, st := blobToPush(t, a)
		keepPartial(t, b, st.ID, data, keptBytes)

		resp, ans, read := pushTo(t, b, st, data, resume)
		require.Equal(t, http.StatusConflict, resp.StatusCode, ans)
		assert.Equal(t, strconv.Itoa(keptBytes), resp.Header.Get(peer.HeaderResumeFrom))
		assert.Zero(t, read, "the refusal came before the body")
		assert.False(t, b.holds(st.ID))

		resp, ans, read = pushTo(t, b, st, data[keptBytes:], at(keptBytes))
		require.Equal(t, http.StatusCreated, resp.StatusCode, ans)
		assert.Equal(t, int64(pushedSize-keptBytes), read)
		assert.True(t, b.holds(st.ID))
		assert.Equal(t, 1.0, b.metric("dtfc_peer_push_resumes_total", ""))
		noPartial(t, b)
	})

	t.Run("kept whole: an empty rest completes it", func(t *testing.T) {
		nodes := startCluster(t, nodeOpts{}, nodeOpts{})
		a, b := nodes[0], nodes[1]
		data, st := blobToPush(t, a)
		keepPartial(t, b, st.ID, data, pushedSize)

		resp, ans, read := pushTo(t, b, st, data, resume)
		require.Equal(t, http.StatusConflict, resp.StatusCode, ans)
		assert.Equal(t, strconv.Itoa(pushedSize), resp.Header.Get(peer.HeaderResumeFrom))
		assert.Zero(t, read)
		resp, ans, _ = pushTo(t, b, st, nil, at(pushedSize))
		require.Equal(t, http.StatusCreated, resp.StatusCode, ans)
		assert.True(t, b.holds(st.ID))
		noPartial(t, b)
	})

	t.Run("an older pusher's PUT is taken whole", func(t *testing.T) {
		nodes := startCluster(t, nodeOpts{}, nodeOpts{})
		a, b := nodes[0], nodes[1]
		data, st := blobToPush(t, a)
		keepPartial(t, b, st.ID, data, keptBytes)

		resp, ans, read := pushTo(t, b, st, data, nil)
		require.Equal(t, http.StatusCreated, resp.StatusCode, ans)
		assert.Equal(t, int64(pushedSize), read)
		assert.True(t, b.holds(st.ID))
		noPartial(t, b)
	})

	t.Run("kept bytes of another blob are not resumed", func(t *testing.T) {
		nodes := startCluster(t, nodeOpts{}, nodeOpts{})
		a, b := nodes[0], nodes[1]
		data, st := blobToPush(t, a)
		resp, ans, read := pushTo(t, b, st, data, resume)
		require.Equal(t, http.StatusCreated, resp.StatusCode, ans)
		assert.Equal(t, int64(pushedSize), read)
		assert.Zero(t, b.metric("dtfc_peer_push_resumes_total", ""))
	})

	t.Run("a wrong offset is refused with the right one", func(t *testing.T) {
		nodes := startCluster(t, nodeOpts{}, nodeOpts{})
		a, b := nodes[0], nodes[1]
		data, st := blobToPush(t, a)
		for _, off := range []int{keptBytes + 1, keptBytes - 1} {
			resp, ans, read := pushTo(t, b, st, data[off:], at(off))
			require.Equal(t, http.StatusConflict, resp.StatusCode, ans)
			assert.Equal(t, "0", resp.Header.Get(peer.HeaderResumeFrom), "nothing kept: send it all")
			assert.Zero(t, read)
		}
		keepPartial(t, b, st.ID, data, keptBytes)
		for _, off := range []int{keptBytes + 1, keptBytes - 1, pushedSize} {
			resp, ans, read := pushTo(t, b, st, data[off:], at(off))
			require.Equal(t, http.StatusConflict, resp.StatusCode, ans)
			assert.Equal(t, strconv.Itoa(keptBytes), resp.Header.Get(peer.HeaderResumeFrom))
			assert.Zero(t, read)
		}
		assert.False(t, b.holds(st.ID))
		n, _ := b.Store.PartialSize(st.ID)
		assert.Equal(t, int64(keptBytes), n, "refusals keep the kept bytes")
	})

	t.Run("a bad offset is a 400", func(t *testing.T) {
		nodes := startCluster(t, nodeOpts{}, nodeOpts{})
		a, b := nodes[0], nodes[1]
		data, st := blobToPush(t, a)
		keepPartial(t, b, st.ID, data, keptBytes)
		for _, tc := range []struct {
			name string
			off  string
			body []byte
			hdr  map[string]string
		}{
			{"not a number", "abc", data, nil},
			{"negative", "-5", data, nil},
			{"signed", "+" + strconv.Itoa(keptBytes), data[keptBytes:], nil},
			{"spaced", " 5", data, nil},
			{"exponent", "5e6", data, nil},
			{"overflowing", "99999999999999999999", data, nil},
			{"past the end", strconv.Itoa(pushedSize + 1), nil, nil},
			{"body not the rest", strconv.Itoa(keptBytes), data, nil},
			{"without the resume header", strconv.Itoa(keptBytes), data[keptBytes:], map[string]string{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				hdr := tc.hdr
				if hdr == nil {
					hdr = map[string]string{peer.HeaderResume: "1"}
				}
				hdr[peer.HeaderOffset] = tc.off
				resp, ans, _ := pushTo(t, b, st, tc.body, hdr)
				assert.Equal(t, http.StatusBadRequest, resp.StatusCode, ans)
			})
		}
		assert.False(t, b.holds(st.ID))
		n, _ := b.Store.PartialSize(st.ID)
		assert.Equal(t, int64(keptBytes), n)
	})
}

// TestPusherSendsOnlyTheRest: a node's pusher, told by its peer that the
// peer kept part of a blob, sends only the rest, and the peer stores the
// blob.
func TestPusherSendsOnlyTheRest(t *testing.T) {
	var got atomic.Int64 // bytes of pushed bodies node b read
	count := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, peer.InternalPrefix+"/blobs/") {
				r.Body = &countingBody{ReadCloser: r.Body, n: &got}
			}
			h.ServeHTTP(w, r)
		})
	}
	nodes := startCluster(t, running(nodeOpts{}), nodeOpts{wrap: count})
	a, b := nodes[0], nodes[1]
	data := randomBytes(t, pushedSize)
	keepPartial(t, b, dtfc.Sum(data), data, keptBytes)
	id := a.put(data)
	b.eventuallyHolds(id, true)
	assert.Equal(t, int64(pushedSize-keptBytes), got.Load(), "the pusher sent the rest only")
	assert.Equal(t, 1.0, b.metric("dtfc_peer_push_resumes_total", ""))
	noPartial(t, b)
}
