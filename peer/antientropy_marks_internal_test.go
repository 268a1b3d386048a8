package peer

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestRoundImportsNothingFromPeerMarkedElsewhere: this node (C) heard
// from peer A that A marked node B expired (A deleted x and forgot the
// delete without B's acknowledgement). C never had x (it joined after
// the delete was forgotten), so only the heard mark keeps B's copy of x
// out. B is back but has not learned yet that it is expired (it cannot
// reach A), so its digests do not say "resyncing".
//
// An anti-entropy round decided whom to trust once, before it started:
// at that moment C may not know B's identity yet (a node that just
// started knows no peer's identity until it answers), so the mark heard
// of "node B" did not apply to B's remote. B's first answer names it,
// but syncWith never looked again: it listed B's states and pulled x, the
// deleted file, from the expired node (the fetcher even asked B first,
// though candidates() leaves distrusted peers out). A review found it on
// 2026-12-07; trust is now checked again after each digests answer,
// before each pull's apply, and by the fetcher.
func TestRoundImportsNothingFromPeerMarkedElsewhere(t *testing.T) {
	// "KnownBeforeRound" is the control: B's identity and A's mark both
	// known when the round starts; B is left alone (passed before too).
	for _, tc := range []string{"KnownBeforeRound", "IdentityLearnedMidRound", "MarkHeardMidRound"} {
		t.Run(tc, func(t *testing.T) { testRoundImportsNothingFromPeerMarkedElsewhere(t, tc) })
	}
}

func testRoundImportsNothingFromPeerMarkedElsewhere(t *testing.T, tc string) {
	c, store := newLoneCluster(t)
	const urlA, urlB = "http://a.invalid", "http://b.invalid"
	c.setPeers([]Peer{{URL: urlA, Role: RoleReplica}, {URL: urlB, Role: RoleReplica}})
	m := c.mem.Load()
	rA, rB := m.byURL[urlA], m.byURL[urlB]
	require.NotNil(t, rA)
	require.NotNil(t, rB)

	deny, err := store.DenyDigest()
	require.NoError(t, err)
	ours, err := store.Digests()
	require.NoError(t, err)

	answerA := http.Header{}
	answerA.Set(HeaderNode, "nodeA")
	answerA.Set(HeaderRole, string(RoleReplica))
	answerA.Set(HeaderMarks, "nodeB")
	answerB := http.Header{}
	answerB.Set(HeaderNode, "nodeB")
	answerB.Set(HeaderRole, string(RoleReplica))

	if tc == "KnownBeforeRound" {
		rB.ok(answerB)
	}
	if tc == "IdentityLearnedMidRound" || tc == "KnownBeforeRound" {
		// C heard A's mark of B before the round (or read it from its
		// store at start-up), but does not know B's identity yet.
		rA.ok(answerA)
		_, marked := c.markedElsewhere("nodeB")
		require.True(t, marked, "C heeds A's mark of node B")
	}

	// x: the file A deleted and forgot; B still holds it.
	body := []byte("a file deleted at A and forgotten; only expired B holds it")
	x := dtfc.Sum(body)
	stX := dtfc.State{ID: x, Clock: dtfc.TimestampAt(time.Now().Add(-time.Hour)), Node: "nodeB", Size: int64(len(body)), ContentType: "text/plain"}
	theirs := ours
	theirs[x[0]] = blobstore.Digest{Count: ours[x[0]].Count + 1, Sum: [32]byte{7}}

	rA.node = &fakeNode{t: t,
		DigestsFunc: func(context.Context, []byte) (digestsAnswer, error) {
			// Every answer of A names the nodes it marked (HeaderMarks).
			rA.ok(answerA)
			ans := encodeDigests("nodeA", true, &ours)
			ans.Deny = deny
			ans.Expired = []string{"nodeB"}
			return ans, nil
		},
	}
	rB.node = &fakeNode{t: t,
		DigestsFunc: func(context.Context, []byte) (digestsAnswer, error) {
			rB.ok(answerB) // what httpNode does with every answer
			ans := encodeDigests("nodeB", true, &theirs)
			ans.Deny = deny
			return ans, nil
		},
		StatesFunc: func(_ context.Context, _ []byte, fn func(dtfc.State) error) error {
			rB.ok(answerB)
			return fn(stX)
		},
		OpenFunc: func(context.Context, dtfc.ID, int64) (io.ReadCloser, dtfc.State, error) {
			rB.ok(answerB)
			return io.NopCloser(bytes.NewReader(body)), stX, nil
		},
		StatFunc: func(context.Context, dtfc.ID) (NodeState, error) {
			rB.ok(answerB)
			return NodeState{State: stX, Held: true}, nil
		},
	}

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c.AntiEntropy(ctx)
	c.fetch.wg.Wait()

	require.True(t, c.distrusts(rB), "after the round C knows B is marked expired by A")
	if b, err := store.Open(x); err == nil {
		b.Close()
		t.Fatalf("anti-entropy imported x (deleted and forgotten by A) from node B, which peer A marked expired: a resurrection")
	}
}

// TestDenyListNotLearnedWhenEveryReplicaIsDistrusted: a node whose
// metadata was started afresh (or rebuilt) learns its deny list from a
// replica peer; when every replica peer is distrusted (marked expired),
// the round compares with none, and the deny list stays unknown (the
// node still takes no upload, and adopts nothing held aside). It was
// counted as learned, as for a node with no replica peer at all (a
// review's concern, 2026-12-07).
func TestDenyListNotLearnedWhenEveryReplicaIsDistrusted(t *testing.T) {
	dir := t.TempDir()
	first, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	require.NoError(t, first.Close())
	require.NoError(t, os.Remove(filepath.Join(dir, "meta.db"))) // no blob file: a fresh store, same identity
	store, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	require.False(t, store.DenyKnown(), "a store started afresh under its old identity")
	const urlB = "http://b.invalid"
	list := filepath.Join(t.TempDir(), "peers.toml")
	require.NoError(t, os.WriteFile(list, []byte("[[peers]]\nurl = \""+urlB+"\"\n"), 0o644))
	c, err := New(store, Options{Me: "http://me.invalid", PeerList: list})
	require.NoError(t, err)
	rB := c.mem.Load().byURL[urlB]
	require.NotNil(t, rB)
	require.NoError(t, c.markExpired(rB, dtfc.TimestampAt(time.Now())))
	require.True(t, c.distrusts(rB))
	c.AntiEntropy(t.Context())
	assert.False(t, store.DenyKnown(), "the deny list counted as learned from no one")

	c.setPeers(nil) // no replica peer at all: nothing to learn it from
	c.AntiEntropy(t.Context())
	assert.True(t, store.DenyKnown())
}
