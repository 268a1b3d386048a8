package peer

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/archive"
	"github.com/dtfc/dtfc/blobstore"
)

// An archive peer (an s3://bucket/prefix entry) is a remote whose Node is
// an *archiveNode: the pusher sends it the feed like to any replica (its
// Offer writes a state record per operation, asking for the bytes of an
// upload whose blob is not in the bucket yet; its Put writes the blob,
// then the record), so its cursor counts in the tombstone ledger like any
// peer's (acks.go): a tombstone is acknowledged by an archive once its
// record is written. A miss asks it last (candidates), its bytes verified
// like any peer's (fetch.go). It takes no part in anti-entropy, resync or
// membership: it is not a node. What other nodes wrote to it is read by
// the relay (relay.go).

// errNotANode answers what only a node can answer (digests, resync).
var errNotANode = errors.New("an archive is not a node")

// archiveStore is what an archive's pushes need of the blob store: the
// writer's identity and where its log's next number is kept.
type archiveStore interface {
	NodeID() string
	Value(key string) ([]byte, error)
	SetValue(key string, v []byte) error
}

// keyArchiveLogPrefix + archive URL: the next number of this node's log
// in that archive.
const keyArchiveLogPrefix = "archive log "

// archiveNode is an archive as a Node.
type archiveNode struct {
	a     *archive.Archive
	url   string
	store archiveStore
	r     *remote
	stats *archiveStats // kept by the Cluster across refreshes
	// tier: this node evicts what the archive accepted (Offer checks a
	// blob's object found there more closely).
	tier bool

	logMu sync.Mutex // serializes the log's writes: numbers are taken in order

	// relayed are states the relay read from this archive and applied
	// (relayNoted): offered back by the pusher, they are taken at once
	// (their records are there, after their blobs, and never deleted;
	// the writer that wrote them named them in its log). Any other
	// state whose record is already there is named again in this node's
	// log (it may be a retry after its first log write failed: a record
	// no log names would reach no other node).
	relayedMu sync.Mutex
	relayed   map[relayedKey]struct{}
	// took counts the records the relay found newer than this node's
	// own and applied: uploads, tombstones, deny entries (logged once a
	// round, at info: what a bucket keeps bringing in).
	took [3]atomic.Int64

	// parked are the IDs the relay set aside (relay.go), for their
	// states; parkedDeny, for their deny entries.
	parked, parkedDeny parked
}

type relayedKey struct {
	id    dtfc.ID
	clock dtfc.Timestamp
	node  string
	deny  bool // a deny entry's, not a state's
}

func stateKey(st dtfc.State) relayedKey { return relayedKey{st.ID, st.Clock, st.Node, false} }

func denyKey(d blobstore.Deny) relayedKey { return relayedKey{d.ID, d.Clock, d.Node, true} }

// maxRelayed bounds the memory of relayed states; beyond it, a relayed
// state offered back is named again in this node's log (harmless: a
// reader finds the same record, and applying it changes nothing).
const maxRelayed = 100_000

// relayNoted records that the relay applied a state or deny entry (k)
// from this archive.
func (n *archiveNode) relayNoted(k relayedKey) {
	n.relayedMu.Lock()
	defer n.relayedMu.Unlock()
	if n.relayed == nil {
		n.relayed = map[relayedKey]struct{}{}
	}
	if len(n.relayed) < maxRelayed {
		n.relayed[k] = struct{}{}
	}
}

// wasRelayed reports, once, whether the relay applied k from this
// archive (an offer that fails after it is then repeated in full).
func (n *archiveNode) wasRelayed(k relayedKey) bool {
	n.relayedMu.Lock()
	defer n.relayedMu.Unlock()
	_, ok := n.relayed[k]
	delete(n.relayed, k)
	return ok
}

var _ Node = (*archiveNode)(nil)

// ArchiveConfig returns the archive configuration of an s3:// entry.
func ArchiveConfig(p Peer) (archive.Config, error) {
	u, err := url.Parse(p.URL)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return archive.Config{}, fmt.Errorf("%s: not an s3://bucket/prefix URL", p.URL)
	}
	return archive.Config{
		Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"),
		Endpoint: p.Endpoint, Region: p.Region, PathStyle: p.PathStyle,
		AccessKeyID: p.AccessKeyID, SecretAccessKeyFile: p.SecretAccessKeyFile,
	}, nil
}

// newArchiveRemote returns the remote of an archive entry. A
// configuration that cannot be loaded (a secret file missing) gives a
// remote whose every exchange fails with that error: the start-up check
// (CheckArchives) refuses it first.
func (c *Cluster) newArchiveRemote(p Peer) *remote {
	r := newRemoteNode(p, nil, c.store.NodeID(), c.opts.Wall)
	r.notes = c
	if m, ok := c.markOf(r); ok {
		// Marked expired by an earlier run: the relay takes nothing
		// from it (relayRound).
		r.setExpired(m)
	}
	n := &archiveNode{url: p.URL, store: c.store, r: r, tier: c.isTier()}
	cfg, err := ArchiveConfig(p)
	n.stats = c.stats(p.URL)
	cfg.Counters = &n.stats.bytes
	cfg.Wrap = watchStalls
	if err == nil {
		n.a, err = archive.New(context.Background(), cfg)
	}
	if err != nil {
		r.node = brokenNode{err: fmt.Errorf("archive %s: %w", p.URL, err)}
		return r
	}
	r.node = n
	return r
}

// archiveStats counts what this node exchanged with one archive.
type archiveStats struct {
	bytes  archive.Counters
	errors atomic.Int64 // failed exchanges (seen)
}

// stats returns the counters of the archive at url.
func (c *Cluster) stats(url string) *archiveStats {
	v, _ := c.archiveCounters.LoadOrStore(url, &archiveStats{})
	return v.(*archiveStats)
}

// archiveStatus describes the archive entry p: where it is and the bytes
// moved, never its credentials.
func (c *Cluster) archiveStatus(p Peer) *api.ArchiveStatus {
	cnt := c.stats(p.URL)
	st := &api.ArchiveStatus{BytesWritten: cnt.bytes.Written(), BytesRead: cnt.bytes.Read(), Errors: cnt.errors.Load(),
		Endpoint: redactedEndpoint(p.Endpoint)}
	if cfg, err := ArchiveConfig(p); err == nil {
		st.Bucket, st.Prefix = cfg.Bucket, cfg.Prefix
	}
	return st
}

// redactedEndpoint is an endpoint URL without user information (which
// would be a credential).
func redactedEndpoint(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return "(not a URL)"
	}
	u.User = nil
	return u.String()
}

// CheckArchives checks every archive of the peer list: the bucket is
// there and the credentials work. Its error names the entry and says why.
// An archive that cannot be reached is not an error (it is logged): only
// a missing bucket, refused credentials or a configuration that cannot be
// loaded refuse the start.
func (c *Cluster) CheckArchives(ctx context.Context) error {
	for _, r := range c.mem.Load().remotes {
		if !r.Peer.IsArchive() {
			continue
		}
		var err error
		switch n := r.node.(type) {
		case *archiveNode:
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = n.a.Check(cctx)
			cancel()
			if err != nil && !errors.Is(err, archive.ErrNoBucket) && !errors.Is(err, archive.ErrCredentials) && ctx.Err() == nil {
				// Unreachable (or an answer that says nothing of the
				// entry): the node starts and the archive's queue
				// waits, as for a peer node that is down. Refusing
				// would keep a node restarted during an outage of the
				// server down with it.
				c.log.Warn("an archive cannot be checked at start-up; starting, its queue waits for it", "archive", r.URL, "err", err)
				n.seen(err)
				err = nil
			}
		case brokenNode:
			err = n.err
		}
		if err != nil {
			return fmt.Errorf("peer list entry %s (archive): %w", r.URL, err)
		}
	}
	return nil
}

// checkNewArchives checks each archive of peers that the current list
// does not have as it is (a new entry, or one whose endpoint or
// credentials changed), like CheckArchives at start. Its error names the
// entry and says why.
func (c *Cluster) checkNewArchives(ctx context.Context, peers []Peer) error {
	cur := c.mem.Load()
	c.peersMu.Lock()
	taken := map[string]Peer{}
	for _, p := range c.filePeers {
		taken[p.URL] = p
	}
	c.peersMu.Unlock()
	for _, p := range peers {
		if !p.IsArchive() {
			continue
		}
		if o, ok := taken[p.URL]; ok && o == p {
			// Unchanged in the file: checked when it was taken (also
			// when this node, removed from the cluster, lists no peer).
			continue
		}
		if cur != nil {
			if o := cur.byURL[p.URL]; o != nil && o.Peer == p {
				continue // unchanged: checked when it was taken
			}
		}
		if err := usableArchive(ctx, p); err != nil {
			return fmt.Errorf("peer list entry %s (archive): %w", p.URL, err)
		}
	}
	return nil
}

// usableArchive checks that the bucket of entry p is there and its
// credentials work.
func usableArchive(ctx context.Context, p Peer) error {
	cfg, err := ArchiveConfig(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	a, err := archive.New(ctx, cfg)
	if err != nil {
		return err
	}
	return a.Check(ctx)
}

// seen records how an exchange with the bucket went: an answer (even
// "not found", or a record that is not valid) is a sign of life,
// anything else a failure.
func (n *archiveNode) seen(err error) {
	if err == nil || errors.Is(err, archive.ErrNotFound) || errors.Is(err, archive.ErrExists) || errors.Is(err, archive.ErrBadRecord) {
		n.r.ok(http.Header{})
		return
	}
	if !errors.Is(err, context.Canceled) {
		n.r.fail(err)
		n.stats.errors.Add(1)
	}
}

// Stat returns the newest state record of id in the bucket.
func (n *archiveNode) Stat(ctx context.Context, id dtfc.ID) (NodeState, error) {
	st, err := n.a.NewestState(ctx, id)
	n.seen(err)
	if errors.Is(err, archive.ErrNotFound) {
		return NodeState{}, errPeerNotFound
	}
	if err != nil {
		return NodeState{}, err
	}
	// Records are written after their blob: an upload's record means
	// the bucket holds its bytes.
	return NodeState{State: st, Held: !st.Deleted}, nil
}

// Open opens the bucket's copy of id from byte off on, with its newest
// state. The bytes are the bucket's: the fetcher verifies them.
func (n *archiveNode) Open(ctx context.Context, id dtfc.ID, off int64) (io.ReadCloser, dtfc.State, error) {
	st, err := n.a.NewestState(ctx, id)
	n.seen(err)
	if errors.Is(err, archive.ErrNotFound) {
		return nil, dtfc.State{}, errPeerNotFound
	}
	if err != nil {
		return nil, dtfc.State{}, err
	}
	if st.Deleted || validState(st) != nil || off > st.Size {
		return nil, dtfc.State{}, errPeerNotFound
	}
	body, size, err := n.a.OpenBlob(ctx, id, off)
	n.seen(err)
	if errors.Is(err, archive.ErrNotFound) {
		return nil, dtfc.State{}, errPeerNotFound
	}
	if err != nil {
		return nil, dtfc.State{}, err
	}
	if size != st.Size {
		body.Close()
		return nil, dtfc.State{}, fmt.Errorf("archive %s: blob %s is %d bytes, its record says %d", n.url, id, size, st.Size)
	}
	return body, st, nil
}

// checkObject decides whether the object found in the bucket for upload
// st holds its bytes: of another size, or with the SHA-512 checksum of
// other bytes, it is damaged (an error naming it, every time, until it is
// removed and written again). On a tier, which evicts what the archive
// accepted, an object whose checksum vouches for nothing (written by
// hand, or by a server that keeps no SHA-512 checksum, or in parts) is
// read and hashed: accepted on its size alone, an object of the right
// size and other bytes had the tier evict its only copy
// (TestTierKeepsBlobOverSameSizeDamagedObject).
func (n *archiveNode) checkObject(ctx context.Context, st dtfc.State, head archive.BlobHead) error {
	damaged := func(what string) error {
		return fmt.Errorf("archive %s: the object of blob %s %s: it is damaged; remove it from the bucket and it is written again", n.url, st.ID, what)
	}
	switch {
	case head.Size != st.Size:
		return damaged(fmt.Sprintf("holds %d bytes, not %d", head.Size, st.Size))
	case head.Sum == archive.SumOther:
		return damaged("carries the SHA-512 checksum of other bytes")
	case head.Sum == archive.SumID || !n.tier:
		return nil
	}
	rc, _, err := n.a.OpenBlob(ctx, st.ID, 0)
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha512.New()
	got, err := io.Copy(h, rc)
	if err != nil {
		return fmt.Errorf("archive %s: reading the object of blob %s to check it: %w", n.url, st.ID, err)
	}
	if got != st.Size || !bytes.Equal(h.Sum(nil), st.ID[:]) {
		return damaged("does not hash to its ID")
	}
	return nil
}

// Offer writes the record of every delete and deny entry (a block or a
// lift), and of every upload whose blob is in the bucket; it asks for the
// bytes of the others (Put writes them, then the record). The records
// written, or found there, are named in this node's log; a state the
// relay brought from this archive is taken as it is (relayed) once its
// blob is found there, a deny entry or delete it brought at once. A blob whose
// object has another size than its state fails the offer, every time,
// until the object is removed: what an archive accepted, a tier evicts.
func (n *archiveNode) Offer(ctx context.Context, req changesRequest) (changesAnswer, error) {
	ans := changesAnswer{Results: make([]string, len(req.Changes)), DenyResults: make([]string, len(req.Deny))}
	var mu sync.Mutex
	var logged []archive.LogEntry
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pushParallelism) // each change is a request or two: at once
	for i, d := range req.Deny {
		g.Go(func() error {
			if !n.wasRelayed(denyKey(d)) {
				err := n.a.PutDeny(gctx, d)
				n.seen(err)
				if err != nil && !errors.Is(err, archive.ErrExists) {
					return err
				}
				mu.Lock()
				logged = append(logged, archive.LogEntry{ID: d.ID, Clock: d.Clock, Node: d.Node, Deny: true})
				mu.Unlock()
			}
			ans.DenyResults[i] = resultOK
			return nil
		})
	}
	for i, st := range req.Changes {
		g.Go(func() error {
			relayed := n.wasRelayed(stateKey(st))
			if relayed && st.Deleted {
				ans.Results[i] = resultOK
				return nil
			}
			if !st.Deleted {
				// Also for an upload the relay brought from here: its
				// bytes may have come from a node, the bucket's object
				// missing or cut short, and a tier evicts what this
				// archive accepted.
				head, has, err := n.a.HeadBlob(gctx, st.ID)
				n.seen(err)
				if err != nil {
					return err
				}
				if !has {
					ans.Results[i] = resultNeed
					return nil
				}
				if err := n.checkObject(gctx, st, head); err != nil {
					n.seen(err)
					return err
				}
				if relayed {
					ans.Results[i] = resultOK
					return nil
				}
			}
			if err := n.putState(gctx, st); err != nil {
				return err
			}
			mu.Lock()
			logged = append(logged, logEntry(st))
			mu.Unlock()
			ans.Results[i] = resultOK
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		// The records written stay: the offer is repeated, finds them
		// there and names them then.
		return changesAnswer{}, err
	}
	if err := n.appendLog(ctx, logged); err != nil {
		return changesAnswer{}, err
	}
	return ans, nil
}

// Put writes the blob of st (body is the blob's file: its parts are
// sections of it), then its record, then names it in this node's log.
func (n *archiveNode) Put(ctx context.Context, st dtfc.State, body io.Reader, size int64) error {
	ra, ok := body.(io.ReaderAt)
	if !ok {
		return fmt.Errorf("archive %s: a blob is sent from its file", n.url)
	}
	err := n.a.PutBlob(ctx, st.ID, ra, size)
	n.seen(err)
	if err != nil {
		return err
	}
	if err := n.putState(ctx, st); err != nil {
		return err
	}
	return n.appendLog(ctx, []archive.LogEntry{logEntry(st)})
}

// putState writes st's record; one already there (written before) is
// success.
func (n *archiveNode) putState(ctx context.Context, st dtfc.State) error {
	err := n.a.PutState(ctx, st)
	n.seen(err)
	if errors.Is(err, archive.ErrExists) {
		return nil
	}
	return err
}

func logEntry(st dtfc.State) archive.LogEntry {
	return archive.LogEntry{ID: st.ID, Clock: st.Clock, Node: st.Node, Deleted: st.Deleted}
}

// appendLog writes entries as this node's next log entry. Numbers are
// taken under a lock and persisted after each write; one already taken
// (an earlier attempt whose answer was lost, or a number not persisted
// before a crash) is skipped: an entry only names IDs, and a reader
// reads their records.
func (n *archiveNode) appendLog(ctx context.Context, entries []archive.LogEntry) error {
	if len(entries) == 0 {
		return nil
	}
	n.logMu.Lock()
	defer n.logMu.Unlock()
	key := keyArchiveLogPrefix + n.url
	seq := uint64(1)
	if v, err := n.store.Value(key); err == nil && v != nil {
		if s, perr := strconv.ParseUint(string(v), 10, 64); perr == nil && s > 0 {
			seq = s
		}
	}
	for {
		err := n.a.AppendLog(ctx, n.store.NodeID(), seq, entries)
		n.seen(err)
		if err != nil && !errors.Is(err, archive.ErrExists) {
			return err
		}
		seq++
		if serr := n.store.SetValue(key, []byte(strconv.FormatUint(seq, 10))); serr != nil {
			return serr
		}
		if err == nil {
			return nil
		}
	}
}

// What only nodes answer.

func (n *archiveNode) Digests(context.Context, []byte) (digestsAnswer, error) {
	return digestsAnswer{}, errNotANode
}

func (n *archiveNode) States(context.Context, []byte, func(dtfc.State) error) error {
	return errNotANode
}

func (n *archiveNode) Lookup(context.Context, []dtfc.ID) ([]dtfc.State, error) {
	return nil, errNotANode
}

func (n *archiveNode) DenyList(context.Context) (denyList, error) { return denyList{}, errNotANode }

func (n *archiveNode) Resynced(context.Context, dtfc.Timestamp) error { return errNotANode }

// brokenNode is an archive whose configuration could not be loaded:
// every exchange fails with why.
type brokenNode struct{ err error }

var _ Node = brokenNode{}

func (b brokenNode) Stat(context.Context, dtfc.ID) (NodeState, error) { return NodeState{}, b.err }
func (b brokenNode) Open(context.Context, dtfc.ID, int64) (io.ReadCloser, dtfc.State, error) {
	return nil, dtfc.State{}, b.err
}
func (b brokenNode) Offer(context.Context, changesRequest) (changesAnswer, error) {
	return changesAnswer{}, b.err
}
func (b brokenNode) Put(context.Context, dtfc.State, io.Reader, int64) error { return b.err }
func (b brokenNode) Digests(context.Context, []byte) (digestsAnswer, error) {
	return digestsAnswer{}, b.err
}
func (b brokenNode) States(context.Context, []byte, func(dtfc.State) error) error { return b.err }
func (b brokenNode) Lookup(context.Context, []dtfc.ID) ([]dtfc.State, error)      { return nil, b.err }
func (b brokenNode) DenyList(context.Context) (denyList, error)                   { return denyList{}, b.err }
func (b brokenNode) Resynced(context.Context, dtfc.Timestamp) error               { return b.err }

// archiveStallTimeout cuts off a request to a bucket in which nothing
// moved for that long: the server took no bytes of the body, sent no
// answer, or no bytes of it. Longer than a node's stallTimeout: a server
// may take a while to answer a large part it checks and stores.
var archiveStallTimeout = time.Minute

// watchStalls wraps the client that sends an archive's requests: each is
// cut off when nothing moved for archiveStallTimeout (a server that stops
// answering without closing would otherwise hold a pusher, the relay, a
// miss or a DELETE's lookup forever: the SDK's client has no such limit).
func watchStalls(d archive.Doer) archive.Doer { return stallClient{d} }

// stallClient watches each request's progress (stallWatch): the body
// sent, the answer's head, the answer's body read; closing the answer's
// body ends the watch.
type stallClient struct{ base archive.Doer }

func (c stallClient) Do(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	w := newStallWatchFor(cancel, archiveStallTimeout)
	req = req.Clone(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = struct {
			io.Reader
			io.Closer
		}{&progressReader{r: req.Body, w: w}, req.Body}
	}
	resp, err := c.base.Do(req)
	if err != nil {
		if w.stop() {
			err = fmt.Errorf("no progress for %v: %w", w.limit, err)
		}
		return nil, err
	}
	w.touch()
	resp.Body = &progressBody{ReadCloser: resp.Body, w: w}
	return resp, nil
}
