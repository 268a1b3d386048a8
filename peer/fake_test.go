package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// fakeNode is a peer made of functions, as litestream's mocks are: each
// method calls its field. A method whose field is nil was not expected
// by the test: it fails the test and answers an error.
type fakeNode struct {
	t            testing.TB
	StatFunc     func(ctx context.Context, id dtfc.ID) (NodeState, error)
	OpenFunc     func(ctx context.Context, id dtfc.ID, off int64) (io.ReadCloser, dtfc.State, error)
	PutFunc      func(ctx context.Context, st dtfc.State, body io.Reader, size int64) error
	OfferFunc    func(ctx context.Context, req changesRequest) (changesAnswer, error)
	DigestsFunc  func(ctx context.Context, prefix []byte) (digestsAnswer, error)
	StatesFunc   func(ctx context.Context, prefix []byte, fn func(dtfc.State) error) error
	LookupFunc   func(ctx context.Context, ids []dtfc.ID) ([]dtfc.State, error)
	DenyListFunc func(ctx context.Context) (denyList, error)
	ResyncedFunc func(ctx context.Context, horizon dtfc.Timestamp) error
}

var _ Node = (*fakeNode)(nil)

func (f *fakeNode) unexpected(method string) error {
	f.t.Errorf("fakeNode: unexpected call of %s", method)
	return fmt.Errorf("fakeNode: %s not expected", method)
}

func (f *fakeNode) Stat(ctx context.Context, id dtfc.ID) (NodeState, error) {
	if f.StatFunc == nil {
		return NodeState{}, f.unexpected("Stat")
	}
	return f.StatFunc(ctx, id)
}

func (f *fakeNode) Open(ctx context.Context, id dtfc.ID, off int64) (io.ReadCloser, dtfc.State, error) {
	if f.OpenFunc == nil {
		return nil, dtfc.State{}, f.unexpected("Open")
	}
	return f.OpenFunc(ctx, id, off)
}

func (f *fakeNode) Put(ctx context.Context, st dtfc.State, body io.Reader, size int64) error {
	if f.PutFunc == nil {
		return f.unexpected("Put")
	}
	return f.PutFunc(ctx, st, body, size)
}

func (f *fakeNode) Offer(ctx context.Context, req changesRequest) (changesAnswer, error) {
	if f.OfferFunc == nil {
		return changesAnswer{}, f.unexpected("Offer")
	}
	return f.OfferFunc(ctx, req)
}

func (f *fakeNode) Digests(ctx context.Context, prefix []byte) (digestsAnswer, error) {
	if f.DigestsFunc == nil {
		return digestsAnswer{}, f.unexpected("Digests")
	}
	return f.DigestsFunc(ctx, prefix)
}

func (f *fakeNode) States(ctx context.Context, prefix []byte, fn func(dtfc.State) error) error {
	if f.StatesFunc == nil {
		return f.unexpected("States")
	}
	return f.StatesFunc(ctx, prefix, fn)
}

func (f *fakeNode) Lookup(ctx context.Context, ids []dtfc.ID) ([]dtfc.State, error) {
	if f.LookupFunc == nil {
		return nil, f.unexpected("Lookup")
	}
	return f.LookupFunc(ctx, ids)
}

func (f *fakeNode) DenyList(ctx context.Context) (denyList, error) {
	if f.DenyListFunc == nil {
		return denyList{}, f.unexpected("DenyList")
	}
	return f.DenyListFunc(ctx)
}

func (f *fakeNode) Resynced(ctx context.Context, horizon dtfc.Timestamp) error {
	if f.ResyncedFunc == nil {
		return f.unexpected("Resynced")
	}
	return f.ResyncedFunc(ctx, horizon)
}

// newLoneCluster returns a Cluster without peers over a fresh store; it
// runs nothing.
func newLoneCluster(t testing.TB) (*Cluster, *blobstore.Store) {
	t.Helper()
	store, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, store.Close()) })
	c, err := New(store, Options{Me: "http://me.invalid"})
	require.NoError(t, err)
	return c, store
}

func putBytes(t testing.TB, store *blobstore.Store, b []byte) dtfc.ID {
	t.Helper()
	w, err := store.NewWriter(blobstore.WriterOptions{})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(b)
	require.NoError(t, err)
	res, err := w.Commit(blobstore.Upload{ContentType: "application/octet-stream"})
	require.NoError(t, err)
	return res.State.ID
}

// TestPushToFakePeer: a pusher sends the bytes of exactly the uploads
// the peer asks for, and its cursor may advance only over the prefix of
// the batch the peer accepted.
func TestPushToFakePeer(t *testing.T) {
	errDisk := errors.New("the peer's disk is full")
	for _, tt := range []struct {
		name    string
		results []string // the peer's answer to the three offers
		putErr  error    // what the peer answers to the bytes
		upTo    int      // how many changes the cursor may pass
		wantErr error
		sent    int // uploads whose bytes were sent
	}{
		{"all accepted", []string{resultNeed, resultOK, resultNeed}, nil, 3, nil, 2},
		{"a clock refused", []string{resultNeed, resultOK, resultAhead}, nil, 2, errClockRefused, 1},
		{"bytes refused", []string{resultOK, resultNeed, resultOK}, errDisk, 1, errDisk, 1},
		{"cache", []string{resultCache, resultCache, resultCache}, nil, 3, nil, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, store := newLoneCluster(t)
			data := map[dtfc.ID][]byte{}
			for i := range 3 {
				b := fmt.Appendf(nil, "upload %d", i)
				data[putBytes(t, store, b)] = b
			}
			changes, err := store.Changes(0, 10)
			require.NoError(t, err)
			require.Len(t, changes, 3)

			var mu sync.Mutex
			sent := map[dtfc.ID][]byte{}
			fake := &fakeNode{t: t,
				OfferFunc: func(_ context.Context, req changesRequest) (changesAnswer, error) {
					assert.Len(t, req.Changes, 3, "every upload is offered to a replica")
					return changesAnswer{Results: tt.results}, nil
				},
				PutFunc: func(_ context.Context, st dtfc.State, body io.Reader, size int64) error {
					b, err := io.ReadAll(body)
					require.NoError(t, err)
					assert.Equal(t, size, int64(len(b)))
					mu.Lock()
					sent[st.ID] = b
					mu.Unlock()
					return tt.putErr
				},
			}
			r := newRemoteNode(Peer{URL: "http://fake.invalid", Role: RoleReplica}, fake, store.NodeID(), nil)
			p := newPusher(c, r, nil)
			upTo, _, err := p.push(t.Context(), changes)
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			} else {
				assert.NoError(t, err)
			}
			want := uint64(0)
			if tt.upTo > 0 {
				want = changes[tt.upTo-1].Seq
			}
			assert.Equal(t, want, upTo, "the cursor passes only what the peer accepted")
			assert.Len(t, sent, tt.sent)
			for id, b := range sent {
				assert.Equal(t, data[id], b, "the bytes of the blob the peer asked for")
			}
		})
	}
}

// TestPushOnlyUploadsToCache: a batch of uploads alone, none of which a
// cache is offered, moves the cursor past them without a request;
// before, the cursor stayed put and the pusher read the same batch again
// at once (256 uploads in a row kept every later delete from the cache).
func TestPushOnlyUploadsToCache(t *testing.T) {
	c, store := newLoneCluster(t)
	for i := range 3 {
		putBytes(t, store, fmt.Appendf(nil, "upload %d to no cache", i))
	}
	changes, err := store.Changes(0, 10)
	require.NoError(t, err)
	require.Len(t, changes, 3)
	fake := &fakeNode{t: t} // any call fails the test
	r := newRemoteNode(Peer{URL: "http://cache.invalid", Role: RoleCache}, fake, store.NodeID(), nil)
	p := newPusher(c, r, nil)
	upTo, skipped, err := p.push(t.Context(), changes)
	require.NoError(t, err)
	assert.Equal(t, changes[2].Seq, upTo, "the cursor passes the uploads a cache is not sent")
	assert.True(t, skipped, "and says it did")
}

// TestAntiEntropyFromFakePeer: a range whose digests differ is compared
// state by state, a newer state is pulled with its bytes, and bytes that
// do not hash to their ID are refused and count against the peer.
func TestAntiEntropyFromFakePeer(t *testing.T) {
	good := []byte("a blob only the peer holds")
	for _, tt := range []struct {
		name     string
		body     []byte
		held     bool
		failures int
	}{
		{"good bytes", good, true, 0},
		{"corrupt bytes", []byte("a blob only the peer holdz"), false, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, store := newLoneCluster(t)
			id := dtfc.Sum(good)
			st := dtfc.State{ID: id, Clock: dtfc.TimestampAt(time.Now().Add(-time.Minute)), Node: "peer", Size: int64(len(good)), ContentType: "text/plain"}
			var theirs [256]blobstore.Digest
			theirs[id[0]] = blobstore.Digest{Count: 1, Sum: [32]byte{1}}
			ans := encodeDigests("peer", true, &theirs)
			var err error
			ans.Deny, err = store.DenyDigest()
			require.NoError(t, err)
			fake := &fakeNode{t: t,
				DigestsFunc: func(_ context.Context, prefix []byte) (digestsAnswer, error) {
					assert.Empty(t, prefix, "a range of one state is not drilled into")
					return ans, nil
				},
				StatesFunc: func(_ context.Context, prefix []byte, fn func(dtfc.State) error) error {
					assert.Equal(t, []byte{id[0]}, prefix, "only the range that differs is listed")
					return fn(st)
				},
				OpenFunc: func(_ context.Context, got dtfc.ID, _ int64) (io.ReadCloser, dtfc.State, error) {
					assert.Equal(t, id, got)
					return io.NopCloser(bytes.NewReader(tt.body)), st, nil
				},
			}
			r := newRemoteNode(Peer{URL: "http://fake.invalid", Role: RoleReplica}, fake, store.NodeID(), nil)
			err = c.syncWith(t.Context(), r)
			if tt.held {
				require.NoError(t, err)
				b, err := store.Open(id)
				require.NoError(t, err, "pulled")
				assert.Equal(t, st, b.State, "with the peer's state")
				b.Close()
			} else {
				assert.ErrorIs(t, err, blobstore.ErrDigestMismatch)
				_, err := store.Open(id)
				assert.ErrorIs(t, err, blobstore.ErrNotFound, "wrong bytes are never stored")
			}
			assert.Equal(t, tt.failures, r.status().Failures)
		})
	}
}

// TestResyncKeepsWhatNoPeerForgot: a resync drops a local file that the
// peer which expired this node lacks only if that peer says it deleted
// and forgot it (a newer forgotten tombstone); a peer that merely lacks
// it (never got it, or its metadata was rebuilt) leaves it kept. The
// soak found the first rule missing (seed 20261203): every replica,
// expired by a node whose metadata had been rebuilt, dropped acknowledged
// uploads that node had set aside as unconfirmed.
func TestResyncKeepsWhatNoPeerForgot(t *testing.T) {
	c, store := newLoneCluster(t)
	kept := putBytes(t, store, []byte("an upload the expiring peer never got"))
	gone := putBytes(t, store, []byte("an upload the expiring peer deleted and forgot"))
	newer := putBytes(t, store, []byte("an upload newer than the delete the peer forgot"))
	local := map[dtfc.ID]dtfc.State{}
	for _, id := range []dtfc.ID{kept, gone, newer} {
		st, err := store.Stat(id)
		require.NoError(t, err)
		local[id] = st
	}
	tomb := func(id dtfc.ID, clock dtfc.Timestamp) dtfc.State {
		return dtfc.State{ID: id, Clock: clock, Node: "peer", Deleted: true}
	}
	fake := &fakeNode{t: t,
		StatFunc: func(_ context.Context, id dtfc.ID) (NodeState, error) {
			switch id {
			case gone:
				return NodeState{State: tomb(id, local[id].Clock+1), Forgotten: true}, nil
			case newer:
				return NodeState{State: tomb(id, local[id].Clock-1), Forgotten: true}, nil
			}
			return NodeState{}, fmt.Errorf("peer x: %w", errPeerNotFound)
		},
	}
	m, by := expiringPeer(store, fake)

	candidates := maps.Clone(local)
	require.NoError(t, c.keepUnlessForgotten(t.Context(), m, by, candidates))
	assert.Equal(t, map[dtfc.ID]dtfc.State{gone: local[gone]}, candidates, "only the file the peer deleted after its upload is dropped")

	// A peer that cannot be asked ends the attempt: nothing is dropped on
	// a guess.
	fake.StatFunc = func(context.Context, dtfc.ID) (NodeState, error) {
		return NodeState{}, errors.New("connection refused")
	}
	candidates = maps.Clone(local)
	assert.Error(t, c.keepUnlessForgotten(t.Context(), m, by, candidates))
}

// ownUploads uploads n different files to store and returns their
// states: a resync's candidates.
func ownUploads(t testing.TB, store *blobstore.Store, n int) map[dtfc.ID]dtfc.State {
	t.Helper()
	states := map[dtfc.ID]dtfc.State{}
	for i := range n {
		id := putBytes(t, store, fmt.Appendf(nil, "upload %d, which the expiring peer may never have had", i))
		st, err := store.Stat(id)
		require.NoError(t, err)
		states[id] = st
	}
	return states
}

// expiringPeer makes fake the one peer, which expired this node (whose
// store is store) with a horizon an hour ahead: what keepUnlessForgotten
// asks.
func expiringPeer(store *blobstore.Store, fake *fakeNode) (*membership, map[string]expiredAt) {
	r := newRemoteNode(Peer{URL: "http://fake.invalid", Role: RoleReplica}, fake, store.NodeID(), nil)
	m := &membership{remotes: []*remote{r}, byURL: map[string]*remote{r.URL: r}}
	return m, map[string]expiredAt{r.identity(): {URL: r.URL, Horizon: dtfc.TimestampAt(time.Now().Add(time.Hour))}}
}

// TestResyncAsksAtOnce: the candidates of a resync are asked about
// several at a time. The fake peer answers no question until resyncAsks
// of them are waiting at once; asked one at a time, it would answer
// none, and the attempt would end in an error.
func TestResyncAsksAtOnce(t *testing.T) {
	c, store := newLoneCluster(t)
	candidates := ownUploads(t, store, 3*resyncAsks)
	var (
		mu      sync.Mutex
		waiting int
		asked   int
	)
	all := make(chan struct{})
	fake := &fakeNode{t: t,
		StatFunc: func(ctx context.Context, id dtfc.ID) (NodeState, error) {
			mu.Lock()
			asked++
			if waiting++; waiting == resyncAsks {
				close(all)
			}
			mu.Unlock()
			select {
			case <-all:
				return NodeState{}, fmt.Errorf("peer x: %w", errPeerNotFound)
			case <-time.After(10 * time.Second):
				return NodeState{}, errors.New("asked one at a time")
			case <-ctx.Done():
				return NodeState{}, ctx.Err()
			}
		},
	}
	m, by := expiringPeer(store, fake)
	require.NoError(t, c.keepUnlessForgotten(t.Context(), m, by, candidates))
	assert.Empty(t, candidates, "none of them said deleted: every one kept")
	assert.Equal(t, 3*resyncAsks, asked, "each asked once")
}

// TestResyncKeepsBlocksNoPeerLifted: a resync drops a local block that
// the peer which expired this node lacks only if that peer says it
// lifted and forgot it (a forgotten lift no older than the block); a
// block the peer merely lacks stays, and so does one newer than the lift
// it forgot.
func TestResyncKeepsBlocksNoPeerLifted(t *testing.T) {
	c, store := newLoneCluster(t)
	var clock dtfc.Clock
	block := func(seed byte) blobstore.Deny {
		d := blobstore.Deny{ID: dtfc.ID{seed}, Status: 451, Reason: "test", Clock: clock.Now(), Node: "peer"}
		_, err := store.ApplyDeny(d)
		require.NoError(t, err)
		return d
	}
	block(1) // the peer lacks it and says nothing of it: kept
	lifted, newer, theirs := block(2), block(3), block(4)
	lift := func(d blobstore.Deny, clock dtfc.Timestamp) blobstore.Deny {
		return blobstore.Deny{ID: d.ID, Lifted: true, Clock: clock, Node: "peer"}
	}
	fake := &fakeNode{t: t,
		DenyListFunc: func(context.Context) (denyList, error) {
			return denyList{
				Entries:        []blobstore.Deny{theirs},
				ForgottenLifts: []blobstore.Deny{lift(lifted, lifted.Clock+1), lift(newer, newer.Clock-1), lift(theirs, theirs.Clock+1)},
			}, nil
		},
	}
	r := newRemoteNode(Peer{URL: "http://fake.invalid", Role: RoleReplica}, fake, store.NodeID(), nil)
	out := map[dtfc.ID]blobstore.Deny{}
	require.NoError(t, c.denyOrphansAgainst(t.Context(), r, clock.Now()+1, out))
	assert.Equal(t, map[dtfc.ID]blobstore.Deny{lifted.ID: lifted}, out, "only the block the peer lifted after it was made is dropped")

	// Nothing older than the horizon: nothing dropped.
	out = map[dtfc.ID]blobstore.Deny{}
	require.NoError(t, c.denyOrphansAgainst(t.Context(), r, lifted.Clock, out))
	assert.Empty(t, out)
}

// TestResyncUnlistedPeerNotTold: the expiry of a peer this node does not
// list is dropped, but not counted as resynced: the peer is not told (it
// would lift its mark, and what it deleted and forgot would stay here and
// come back from this node). Listed again and still expiring it, the peer
// says so again and the resync runs against it then. (TestReaddedNodeResyncs
// failed now and then: a node added again ended its resync before it
// listed its peers, and told them it had resynced.)
func TestResyncUnlistedPeerNotTold(t *testing.T) {
	c, _ := newLoneCluster(t)
	const key = "node 0123456789abcdef"
	rs := &c.resync
	rs.mu.Lock()
	rs.saved.By = map[string]expiredAt{key: {URL: "http://gone.invalid", Horizon: dtfc.TimestampAt(time.Now())}}
	rs.state = ResyncNeeded
	rs.mu.Unlock()

	require.NoError(t, c.runResync(t.Context()))
	assert.Empty(t, c.resync.status().Against)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	_, done := rs.saved.Done[key]
	assert.False(t, done, "not resynced against")
	assert.False(t, rs.notify[key], "not told it resynced")
	assert.Equal(t, ResyncInSync, rs.state)
}

// TestResyncStopsWhenCancelled: a resync cancelled while it asks (the
// node stopping) fails; the candidates it had not asked about yet are not
// taken for deleted. Every answer here is "not found" (keep), and the
// first one cancels the attempt.
func TestResyncStopsWhenCancelled(t *testing.T) {
	c, store := newLoneCluster(t)
	candidates := ownUploads(t, store, 4*resyncAsks)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	fake := &fakeNode{t: t,
		StatFunc: func(context.Context, dtfc.ID) (NodeState, error) {
			cancel()
			return NodeState{}, fmt.Errorf("peer x: %w", errPeerNotFound)
		},
	}
	m, by := expiringPeer(store, fake)
	err := c.keepUnlessForgotten(ctx, m, by, candidates)
	assert.ErrorIs(t, err, context.Canceled, "an attempt cut short fails")
	assert.Empty(t, candidates, "no peer said deleted: nothing is taken for deleted")
}

// BenchmarkResyncAsks: the asking part of a resync, 256 candidates
// against one expiring peer whose every answer takes a millisecond (a
// round trip on a LAN, the peer's lookup included).
func BenchmarkResyncAsks(b *testing.B) {
	c, store := newLoneCluster(b)
	local := ownUploads(b, store, 256)
	fake := &fakeNode{
		StatFunc: func(context.Context, dtfc.ID) (NodeState, error) {
			time.Sleep(time.Millisecond)
			return NodeState{}, fmt.Errorf("peer x: %w", errPeerNotFound)
		},
	}
	m, by := expiringPeer(store, fake)
	for b.Loop() {
		require.NoError(b, c.keepUnlessForgotten(b.Context(), m, by, maps.Clone(local)))
	}
}

// TestReexpiredWithLowerHorizonResyncs: a node that resynced against a
// peer's expiry mark and hears that mark again tells the peer again; it
// runs no second resync. But only the same horizon is that mark. A new
// mark, made after the peer lifted the first, may have a lower horizon:
// a delete that reached the peer more than an expiry late, with its old
// clock, and was then forgotten without this node. Taken for the old
// mark (the check was "horizon no greater than the one resynced
// against"), no resync ran, the peer lifted its new mark on being told,
// and the file whose delete it forgot stayed live here and came back on
// every node (found by a review with three real nodes in one process).
func TestReexpiredWithLowerHorizonResyncs(t *testing.T) {
	c, _ := newLoneCluster(t)
	r := newRemoteNode(Peer{URL: "http://marker.invalid", Role: RoleReplica}, &fakeNode{t: t}, "marker", nil)
	h1 := dtfc.TimestampAt(time.Now())
	rs := &c.resync
	rs.mu.Lock()
	rs.saved.Done = map[string]expiredAt{r.identity(): {URL: r.URL, Horizon: h1}}
	rs.mu.Unlock()

	// The mark resynced against, heard again: the peer is told again.
	c.expiredBy(r, h1)
	st := c.resync.status()
	assert.Equal(t, ResyncInSync, st.State)
	rs.mu.Lock()
	assert.True(t, rs.notify[r.identity()], "told again")
	rs.mu.Unlock()

	// A new mark, with a lower horizon: a resync against it.
	c.expiredBy(r, h1-1000)
	assert.Equal(t, ResyncNeeded, c.resync.status().State)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	assert.Equal(t, h1-1000, rs.saved.By[r.identity()].Horizon)
}
