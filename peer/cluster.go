package peer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/broadcast"
	"github.com/dtfc/dtfc/internal/defaults"
)

// Options configure a Cluster. Zero durations take the defaults of API.md.
type Options struct {
	// Me is this node's own URL; a peer list entry equal to it is ignored.
	Me string
	// Role is RoleReplica (the default) or RoleCache.
	Role dtfc.Role
	// PeerList is the path of the peer list file. If empty, the node has
	// no peers (a single node) and Refresh has nothing to read.
	PeerList string
	// MaxBytes is the size of the store to stay under by evicting the
	// least recently used blobs: a cache forgets them; a replica with an
	// archive in its peer list (a tier) keeps their records and reads
	// their bytes back from the archive on demand. If zero, there is no
	// limit.
	MaxBytes int64
	// Secret, if set, must be presented by every node-to-node request
	// (and is sent with this node's).
	Secret string
	// AcceptSecrets are further secrets accepted (not sent) during a
	// rotation of the cluster secret.
	AcceptSecrets []string
	// RequirePeerCert makes node-to-node routes refuse requests without a
	// TLS client certificate verified against the cluster's CA (the
	// listener must request one: see internal/tlsreload).
	RequirePeerCert bool
	// MaxFetches bounds the transfers from peers running at once, so a
	// flood of misses cannot exhaust file descriptors; a miss beyond it
	// waits a few seconds for a slot, then fails with ErrBusy. If zero, it
	// defaults to defaults.MaxPeerFetches.
	MaxFetches int
	// FetchSources is how many holders a transfer of a large blob takes
	// pieces from at once (1: one holder at a time). If zero, it defaults
	// to defaults.PeerFetchSources.
	FetchSources int
	// AntiEntropyInterval is how often each peer's digests are compared.
	// If zero, it defaults to one minute.
	AntiEntropyInterval time.Duration
	// ArchiveInterval is how often the relay reads what other nodes
	// wrote to each archive. If zero, it defaults to ten seconds.
	ArchiveInterval time.Duration
	// TombstoneRetention is how long a delete (or a lifted block) that
	// every peer acknowledged is remembered. If zero, it defaults to 720
	// hours.
	TombstoneRetention time.Duration
	// TombstoneExpiry is how long a peer that has not acknowledged a
	// delete holds its forgetting back; past it the peer is marked
	// expired and must resync when it returns. If zero, it defaults to
	// 2160 hours.
	TombstoneExpiry time.Duration
	// MaxClockOffset bounds how far ahead of the wall clock a remote
	// state's clock may be. If zero, it defaults to one minute.
	MaxClockOffset time.Duration
	// ScrubInterval is how often a scrub pass starts. If zero (or
	// negative), the node never scrubs, as scrub_interval = 0 in the
	// config.
	ScrubInterval time.Duration
	// ScrubRate bounds the scrubber's reads, in bytes per second. If zero,
	// there is no bound.
	ScrubRate int64
	// HTTPClient sends node-to-node requests. If nil, a client with
	// connect and header timeouts (and no overall timeout: blobs may be
	// large) is used.
	HTTPClient *http.Client
	// Logger receives the cluster's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// Registry receives the cluster's metrics. If nil, they are not
	// exported.
	Registry prometheus.Registerer
	// Wall is the wall clock that dates tombstones' ages and remote
	// clocks (the store's hybrid logical clock should read the same). If
	// nil, it defaults to time.Now.
	Wall func() time.Time
	// Join are members to join the cluster through (--join): at start
	// this node sends them its membership records, itself included, and
	// learns theirs.
	Join []string
}

// Store is what the cluster needs of this node's blob store
// (*blobstore.Store): the sum of the interfaces its parts declare where
// they use it, and a few reads of its own.
type Store interface {
	LocalBlobs
	fetchStore
	feedStore
	syncStore
	servedStore
	denyStore
	resyncStore
	ledgerStore
	upkeepStore
	unconfirmedStore
	membersStore
	// Evict makes room on a cache or a tier (see blobstore.Store.Evict).
	Evict(maxBytes, reserve int64, acked uint64) ([]dtfc.State, error)
	// Stats counts the blobs recorded and the bytes held.
	Stats() (blobs, bytes int64)
	// StateSeq returns an ID's state and its place in the change feed.
	StateSeq(id dtfc.ID) (dtfc.State, uint64, error)
}

var _ Store = (*blobstore.Store)(nil)

// Cluster is this node's view of, and work with, the other nodes.
// New starts nothing; Run runs the background work until its context ends.
type Cluster struct {
	// commitMu orders the uploads and deletes made here (Admit, held
	// shared around their commits) against this node's removal of
	// itself (RemoveMember, held exclusively across its check of the
	// queues and the record).
	commitMu sync.RWMutex
	opts     Options
	store    Store
	log      *slog.Logger
	metrics  *metrics
	fetch    *fetcher

	mem        atomic.Pointer[membership]
	peersMu    sync.Mutex // serializes applyPeers
	filePeers  []Peer     // the peer list file's entries (under peersMu)
	members    members    // membership records (members.go)
	membersSig broadcast.Signal
	// saidRemoved: the log said this node was removed (once per removal).
	saidRemoved  atomic.Bool
	peersChanged broadcast.Signal // notified by setPeers (pushers.go)
	pushers      pushers
	repairs      repairs
	wg           sync.WaitGroup // Run's goroutines

	ackSig broadcast.Signal // notified whenever a cursor advances
	// peerBack is notified when a peer answers after it had failed.
	peerBack broadcast.Signal
	// identifySig asks identifyLoop to ask the peers marked expired
	// under their URL alone who they are (unnamedMarks).
	identifySig broadcast.Signal

	evicted, evictedBytes atomic.Int64 // blobs evicted since start, and their bytes

	// archiveCounters: archive URL → *archiveStats, kept across
	// refreshes (an entry whose endpoint or credentials change is
	// reached anew, its counts go on).
	archiveCounters sync.Map

	joined atomic.Bool // not started to join, or joined (members.go)
	synced atomic.Bool // completed an anti-entropy round with the replicas
	// pulled counts the states anti-entropy took from peers (newer than
	// this node's, or unknown here): uploads, deletes.
	pulled     [2]atomic.Int64
	clockAhead atomic.Bool // the wall clock is ahead of every peer's (purge)
	// prunePending: the memory of forgotten deletes was not pruned for
	// want of a peer's clock to check this node's against (pruneForgotten).
	prunePending atomic.Bool
	expired      expiries   // peers this node marked expired (acks.go)
	heard        heardMarks // the peers other peers marked expired (heardmarks.go)
	feedClock    feedClock  // when the feed reached where (acks.go)
	resync       resync     // whether this node must resync (resync.go)
	// unconfirmedPending counts the unconfirmed blobs to ask about again
	// soon (unconfirmed.go).
	unconfirmedPending atomic.Int64
	catchUp            *catchUps // peers catching this node up by pushes (catchup.go)
	// inst tracks the processes that send each identity (instances.go).
	inst *instances
}

type membership struct {
	peers   []Peer
	ring    *Ring
	remotes []*remote
	byURL   map[string]*remote
}

// byIdentity returns the remote of an identity ("node <id>" or
// "url <url>"), or nil.
func (m *membership) byIdentity(key string) *remote {
	for _, r := range m.remotes {
		if r.identity() == key {
			return r
		}
	}
	if url, ok := strings.CutPrefix(key, "url "); ok {
		return m.byURL[url]
	}
	return nil
}

// New returns a Cluster for store, reading the peer list if one is set.
func New(store Store, opts Options) (*Cluster, error) {
	if opts.Role == "" {
		opts.Role = RoleReplica
	}
	opts.AntiEntropyInterval = cmp.Or(opts.AntiEntropyInterval, defaults.AntiEntropyInterval)
	opts.ArchiveInterval = cmp.Or(opts.ArchiveInterval, defaults.ArchiveInterval)
	opts.TombstoneRetention = cmp.Or(opts.TombstoneRetention, defaults.TombstoneRetention)
	opts.TombstoneExpiry = cmp.Or(opts.TombstoneExpiry, defaults.TombstoneExpiry)
	opts.MaxClockOffset = cmp.Or(opts.MaxClockOffset, defaults.MaxClockOffset)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = DefaultHTTPClient(nil)
	}
	opts.MaxFetches = cmp.Or(opts.MaxFetches, defaults.MaxPeerFetches)
	opts.FetchSources = cmp.Or(opts.FetchSources, defaults.PeerFetchSources)
	if opts.Wall == nil {
		opts.Wall = time.Now
	}
	// An empty secret is no secret (README: as if unset): accepted, it
	// matched a request without the header; as the one sent, it turned
	// the check off (TestEmptyClusterSecretEntry).
	opts.AcceptSecrets = slices.DeleteFunc(slices.Clone(opts.AcceptSecrets), func(s string) bool { return s == "" })
	if opts.Secret == "" && len(opts.AcceptSecrets) > 0 {
		opts.Secret = opts.AcceptSecrets[0]
	}
	opts.Me = normalizeURL(opts.Me)
	c := &Cluster{
		opts:  opts,
		store: store,
		log:   opts.Logger,
	}
	c.catchUp = newCatchUps(opts.AntiEntropyInterval)
	c.inst = newInstances(max(3*opts.AntiEntropyInterval, minConflictWindow))
	c.metrics = newMetrics(opts.Registry, c)
	c.fetch = newFetcher(c, opts.MaxFetches, opts.FetchSources)
	if opts.PeerList != "" {
		var err error
		if c.filePeers, err = LoadList(opts.PeerList, opts.Me); err != nil {
			return nil, err
		}
	}
	if err := c.tierNeedsArchive(c.filePeers); err != nil {
		return nil, err
	}
	if err := c.loadMembers(); err != nil {
		return nil, err
	}
	// A node that joined before it restarted keeps its records, and with
	// them the members it asks.
	c.joined.Store(len(opts.Join) == 0 || len(c.members.list()) > 1)
	c.applyPeers()
	if len(c.mem.Load().peers) == 0 && len(opts.Join) == 0 {
		// Alone, the node has nobody to learn blocks from: it takes
		// uploads at once, also after a rebuild.
		c.denyLearned("no peer list")
	}
	// Before the listener serves a single request: a resync cut short
	// resumes (its states must not be offered until it ends), and the
	// peers marked expired stay so.
	c.loadResync()
	c.loadExpiries()
	c.loadHeardMarks()
	c.loadFeedClock()
	c.applyMarks()
	return c, nil
}

// DefaultHTTPClient returns the client nodes use to talk to each other:
// a bounded connect, no overall timeout (a blob may take hours; each
// exchange is cut off after stallTimeout without progress instead),
// connections kept alive per peer.
func DefaultHTTPClient(tr *http.Transport) *http.Client {
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	// No ResponseHeaderTimeout: a large push is fsync'd before the
	// answer, and every exchange has a progress watch instead (remote.do).
	tr.MaxIdleConnsPerHost = 16
	tr.IdleConnTimeout = 90 * time.Second
	// A large push waits this long at most for the peer's 100 Continue
	// before it sends its body anyway: a peer that kept part of the blob
	// refuses it first, before a byte of it (httpNode.Put). Longer than
	// Go's default second: the peer may be ending the cut transfer that
	// kept them (their fsync) when the retry comes.
	tr.ExpectContinueTimeout = 3 * time.Second
	tr.ForceAttemptHTTP2 = false
	// A redirect is not followed: Go would send it the cluster secret
	// (a header of the request) wherever it points, plain http or
	// another host. A peer URL that redirects is a wrong URL; the 3xx
	// fails the exchange and says so.
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (c *Cluster) isCache() bool { return c.opts.Role == RoleCache }

// isTier reports whether this node is a replica that keeps only the most
// recently read blobs' bytes (max_bytes), the rest in its archive.
func (c *Cluster) isTier() bool { return !c.isCache() && c.opts.MaxBytes > 0 }

// tierNeedsArchive refuses a peer list without an archive for a tier: it
// evicts only what an archive holds, and reads it back from there.
func (c *Cluster) tierNeedsArchive(peers []Peer) error {
	if !c.isTier() {
		return nil
	}
	for _, p := range peers {
		if p.IsArchive() {
			return nil
		}
	}
	return errors.New("max_bytes on a replica needs an archive (an s3:// entry with role = \"archive\") in the peer list file: a replica evicts only what an archive holds, and reads it back from there")
}

// setPeers swaps in a new peer list. Remotes of peers still listed are
// kept (with their health); pushers follow the list when running.
func (c *Cluster) setPeers(peers []Peer) {
	old := c.mem.Load()
	// Archives are never a blob's owner: a miss asks them after every
	// node (candidates).
	var nodes []Peer
	for _, p := range peers {
		if !p.IsArchive() {
			nodes = append(nodes, p)
		}
	}
	m := &membership{peers: peers, ring: NewRing(nodes), byURL: map[string]*remote{}}
	for _, p := range peers {
		var r *remote
		if old != nil {
			// The whole entry: an archive whose endpoint or
			// credentials changed is reached anew.
			if o := old.byURL[p.URL]; o != nil && o.Peer == p {
				r = o
			}
		}
		if r == nil {
			r = c.newRemote(p)
		}
		m.remotes = append(m.remotes, r)
		m.byURL[p.URL] = r
	}
	c.mem.Store(m)
	c.peersChanged.Notify()
}

// newRemote returns a remote of p that tells this Cluster what it learns.
func (c *Cluster) newRemote(p Peer) *remote {
	if p.IsArchive() {
		return c.newArchiveRemote(p)
	}
	r := newRemote(p, c.opts.HTTPClient, c.opts.Secret, c.store.NodeID(), c.opts.Wall)
	r.notes = c
	if m, ok := c.markOf(r); ok {
		r.setExpired(m)
	}
	return r
}

// Peers returns the current peer list.
func (c *Cluster) Peers() []Peer { return slices.Clone(c.mem.Load().peers) }

// ErrNoPeerList means the node was started without a peer list file.
var ErrNoPeerList = errors.New("this node was started without --peerlist: there is no peer list file to re-read")

// Refresh re-reads the peer list file. A file that does not parse, or
// names an archive that is new or changed and cannot be used (checked
// like at start: the bucket is there, the credentials work), is refused
// with its error and the current list stays in force.
func (c *Cluster) Refresh(ctx context.Context) ([]Peer, error) {
	if c.opts.PeerList == "" {
		return nil, ErrNoPeerList
	}
	peers, err := LoadList(c.opts.PeerList, c.opts.Me)
	if err != nil {
		return nil, err
	}
	if err := c.tierNeedsArchive(peers); err != nil {
		return nil, err
	}
	if err := c.checkNewArchives(ctx, peers); err != nil {
		return nil, err
	}
	c.peersMu.Lock()
	c.filePeers = peers
	c.peersMu.Unlock()
	c.applyPeers()
	c.log.Info("peer list reloaded", "peers", len(peers))
	return c.Peers(), nil
}

// candidates lists the remotes to ask for id: ring order, with peers that
// failed recently moved to the end rather than dropped (if every peer is
// backing off, they are still tried). This node itself (listed under
// another URL) and peers it marked expired are never asked.
func (c *Cluster) candidates(id dtfc.ID) []*remote {
	list, _ := c.candidatesIn(c.mem.Load(), id)
	return list
}

// candidatesIn is candidates in the membership m; left reports whether
// a peer other than this node was left out (distrusted, or an archive
// marked expired): one not asked.
func (c *Cluster) candidatesIn(m *membership, id dtfc.ID) (list []*remote, left bool) {
	var fresh, stale []*remote
	for _, u := range m.ring.Candidates(id) {
		r := m.byURL[u]
		switch {
		case r.Self():
		case c.distrusts(r):
			left = true
		case r.backedOff():
			stale = append(stale, r)
		default:
			fresh = append(fresh, r)
		}
	}
	var archives []*remote
	for _, r := range m.remotes {
		switch {
		case !r.Peer.IsArchive():
		case r.isExpired():
			left = true
		default:
			archives = append(archives, r)
		}
	}
	return append(append(fresh, stale...), archives...), left
}

// stater answers a peer's state of one ID (Lookup; unconfirmed.go).
type stater interface {
	// Stat returns the peer's state of id (errPeerNotFound if it has no
	// record).
	Stat(ctx context.Context, id dtfc.ID) (NodeState, error)
}

// ErrPeersUnreachable means a Lookup found no record, but some peer could
// not be asked.
var ErrPeersUnreachable = errors.New("some peers could not be asked")

// Lookup asks the peers for id's state without moving its bytes. With
// held, only a peer holding the bytes counts (HEAD of a miss); without, any
// record counts, tombstones included (DELETE of an ID unknown here). A
// state that loses to the local record does not count. It returns
// ErrNotFound only when every peer answered; ErrPeersUnreachable when
// none that answered knows id but some did not answer.
func (c *Cluster) Lookup(ctx context.Context, id dtfc.ID, held bool) (dtfc.State, error) {
	st, _, err := c.lookup(ctx, id, held)
	return st, err
}

// lookup is Lookup that also returns the URL of the peer that answered.
func (c *Cluster) lookup(ctx context.Context, id dtfc.ID, held bool) (dtfc.State, string, error) {
	local, lerr := c.store.Stat(id)
	// Who is asked, and who counts as not asked, is settled once, before
	// the first question. A peer left out (marked expired here or by
	// another peer) or a member with no remote yet counts as one that
	// could not be asked: its "never heard of it" is not worth a 404. A
	// mark lifted, or a remote made, while the others answer must not
	// turn one never asked into one that said "not found" (the soak,
	// seed 77 in CI: a node back from a stop longer than the expiry took
	// an upload, and a DELETE elsewhere that left it out as marked
	// answered 404, its mark lifted by then).
	m := c.mem.Load()
	asked, unreachable := c.candidatesIn(m, id)
	// So does a member this node has no remote for yet: the records of
	// a membership change are taken before the peers are made from them
	// (a node just added again has no peers until then), and a node
	// started to join has none until it joined.
	unreachable = unreachable || c.membersUnaskedIn(m)
	for _, r := range asked {
		ans, err := r.node.Stat(ctx, id)
		if err != nil || ans.Forgotten {
			// A delete the peer forgot is no record: as good as a 404.
			if !ans.Forgotten && !errors.Is(err, errPeerNotFound) {
				unreachable = true
			}
			continue
		}
		if held && !ans.Held {
			continue
		}
		if lerr == nil && local.Newer(ans.State) {
			// Older than what this node knows (an upload it deleted
			// since): no record worth having. The same state as the
			// local one counts: it may have landed here while the
			// caller, which found nothing, asked the peers (an upload's
			// replication racing its DELETE).
			continue
		}
		return ans.State, r.URL, nil
	}
	if unreachable {
		return dtfc.State{}, "", fmt.Errorf("%w: %w", ErrNotFound, ErrPeersUnreachable)
	}
	return dtfc.State{}, "", ErrNotFound
}

// ErrTooFewReplicas means ?replicas=N asked for more replicas than the
// cluster has.
var ErrTooFewReplicas = errors.New("not that many replicas in the cluster")

// WaitReplicas blocks until n replicas, this node counted, hold the state
// committed with sequence number seq: a replica peer holds it once its
// pusher's cursor has passed seq. Replicas are counted by node identity
// (a node listed under two URLs is one), and only peers that are replicas
// by their own word.
//
// Should id be blocked here meanwhile, it returns a
// *blobstore.DeniedError: a peer that knew of the block acknowledged the
// upload without keeping it, and the block keeps the upload (newer than
// it) only on this node, set aside until a lift. Should the block be
// lifted before this looks, the upload is back in the feed at a later
// place, and the replicas are counted there.
func (c *Cluster) WaitReplicas(ctx context.Context, id dtfc.ID, seq uint64, n int) error {
	if have := c.Replicas(); n > have {
		return fmt.Errorf("%w: asked for %d, the cluster has %d", ErrTooFewReplicas, n, have)
	}
	for {
		ch := c.ackSig.Wait()
		if d, ok := c.store.Denied(id); ok {
			return &blobstore.DeniedError{Deny: d}
		}
		// The upload may have entered the feed again since seq: a block
		// that set its copy aside, then a lift that put it back, both
		// while this waited (the peers that ignored the upload while it
		// was blocked were passed at seq). It counts where it is now.
		if st, s, err := c.store.StateSeq(id); err == nil && !st.Deleted && s > seq {
			seq = s
		}
		holders := map[string]bool{}
		for _, r := range c.replicaPeers() {
			// A replica by the list's word only (it has not answered
			// since its remote was made) is not counted: its cursor may
			// have passed uploads while it was known as a cache, which
			// gets none (the soak, seed 42: a cache listed as a replica,
			// its remote made anew by a membership change, counted as a
			// third holder).
			if r.reported() == RoleReplica && c.cursorOf(r.URL) >= seq {
				holders[r.identity()] = true
			}
		}
		if len(holders)+c.selfReplica() >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Replicas is how many replicas ?replicas=N can count on: this node (if
// it is a replica) and the distinct replica (not cache) peers of its
// current list.
func (c *Cluster) Replicas() int {
	ids := map[string]bool{}
	for _, r := range c.replicaPeers() {
		ids[r.identity()] = true
	}
	return len(ids) + c.selfReplica()
}

// selfReplica is 1 if this node counts as a replica of what it stores, 0
// for a cache: a cache keeps an upload only until a replica has it.
func (c *Cluster) selfReplica() int {
	if c.isCache() {
		return 0
	}
	return 1
}

// replicaPeers are the peers that are replicas (by their word, or the
// list's until they answered), this node itself excluded.
func (c *Cluster) replicaPeers() []*remote {
	var reps []*remote
	for _, r := range c.mem.Load().remotes {
		if !r.IsCache() && !r.Self() && !r.Peer.IsArchive() {
			reps = append(reps, r)
		}
	}
	return reps
}

func (c *Cluster) acked() { c.ackSig.Notify() }

// back notes that peer r answered after it had failed.
func (c *Cluster) back(*remote) { c.peerBack.Notify() }

// Status describes the cluster as this node sees it (the "cluster" of
// /_status).
type Status = api.Cluster

// Status returns each peer's health and replication queue.
func (c *Cluster) Status() Status {
	st := Status{Scrub: c.store.ScrubProgress(), Resync: c.resync.status()}
	st.Resyncing = st.Resync.State != ResyncInSync
	st.Synced = c.isSynced()
	st.Members = c.members.list()
	st.UnconfirmedPending = c.unconfirmedPending.Load()
	st.IdentityConflict = c.IdentityConflict()
	if c.opts.MaxBytes > 0 {
		_, held := c.store.Stats()
		st.Eviction = &api.Eviction{MaxBytes: c.opts.MaxBytes, Over: held > c.opts.MaxBytes,
			Evicted: c.evicted.Load(), EvictedBytes: c.evictedBytes.Load()}
	}
	for _, r := range c.mem.Load().remotes {
		ps := r.status()
		ps.ExpiredBy, _ = c.markedElsewhere(r.NodeID())
		q, lag := c.queue(r)
		ps.Queue, ps.LagSeconds = q, lag.Seconds()
		ps.Pusher = c.pushers.state(r)
		ps.PushError = c.pushers.lastError(r)
		if r.Peer.IsArchive() {
			ps.Archive = c.archiveStatus(r.Peer)
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}

// isSynced reports whether this node has completed anti-entropy with its
// replica peers and is not resyncing.
func (c *Cluster) isSynced() bool { return c.synced.Load() && !c.resync.holds() }

// Run runs the cluster's background work until ctx ends: a pusher per
// peer, anti-entropy, tombstone expiry, the resync when one is needed,
// scrubbing, and for a cache the persistence of its read order. It
// returns after all of it has stopped and every transfer from peers has
// finished or been cut off.
func (c *Cluster) Run(ctx context.Context) error {
	c.goLoop(ctx, c.pusherLoop)
	c.goLoop(ctx, c.repairLoop)
	c.goLoop(ctx, c.membersLoop)
	c.goLoop(ctx, c.identifyLoop)
	if !c.store.DenyKnown() {
		// The first anti-entropy round, right after resolveUnconfirmed,
		// compares them (or finds no replica peer to compare with; with
		// archives, the relay reads them there).
		c.log.Warn("the metadata was rebuilt: uploads are refused (503) until this node has compared its deny list with a peer's")
	}
	// Before anything is taken from a peer or a bucket: what is old news
	// (with peers, once one's clock is heard: pruneForgotten).
	c.pruneForgotten(c.opts.Wall())
	c.resolveUnconfirmed(ctx) // before anti-entropy, which would download what is held aside
	c.goLoop(ctx, c.antiEntropyLoop)
	c.goLoop(ctx, c.maintenanceLoop)
	c.goLoop(ctx, c.resyncLoop)
	c.goLoop(ctx, c.relayLoop)
	if c.opts.ScrubInterval > 0 {
		c.goLoop(ctx, c.scrubLoop)
	}
	if c.isTier() {
		c.goLoop(ctx, c.tierLoop)
	}
	<-ctx.Done()
	c.fetch.stop()
	c.wg.Wait()
	c.fetch.wg.Wait()
	return nil
}

func (c *Cluster) goLoop(ctx context.Context, f func(context.Context)) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f(ctx)
	}()
}

// evict makes room in a cache or a tier for incoming bytes. A cache never
// evicts what no replica has accepted yet (its own uploads); a tier
// never what its archives have not all accepted.
func (c *Cluster) evict(incoming int64) (int, error) {
	if c.opts.MaxBytes <= 0 {
		return 0, nil
	}
	acked := c.replicaAcked()
	if c.isTier() {
		acked = c.tierAcked()
	}
	ev, err := c.store.Evict(c.opts.MaxBytes, incoming, acked)
	c.metrics.evictions.Add(float64(len(ev)))
	var n int64
	for _, st := range ev {
		n += st.Size
	}
	c.evicted.Add(int64(len(ev)))
	c.evictedBytes.Add(n)
	return len(ev), err
}

// tierAcked is the feed position every archive accepted (0 without an
// archive): the bytes of every upload up to it are in each archive, so a
// tier may evict them. Replica peers do not count: one down for days
// would otherwise fill the tier's disk; a pusher whose peer then needs
// an evicted blob's bytes reads them back first (openToSend).
func (c *Cluster) tierAcked() uint64 {
	acked, archives := uint64(math.MaxUint64), 0
	for _, r := range c.mem.Load().remotes {
		if r.Peer.IsArchive() {
			archives++
			acked = min(acked, c.cursorOf(r.URL))
		}
	}
	if archives == 0 {
		return 0
	}
	return acked
}

// tierLoop keeps a tier under max_bytes as its archives accept what it
// holds: uploads and pushes it takes are evicted once acknowledged.
// An eviction that could not get under the limit (what is left is not
// archived yet) is not tried again until the archives accept more, or a
// minute later (reads may have freed some): each try reads the read
// order through.
func (c *Cluster) tierLoop(ctx context.Context) {
	t := time.NewTicker(tierEvery)
	defer t.Stop()
	var stuckAt uint64
	var stuckSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		acked := c.tierAcked()
		if !stuckSince.IsZero() && acked == stuckAt && time.Since(stuckSince) < time.Minute {
			continue
		}
		if _, err := c.evict(0); err != nil && ctx.Err() == nil {
			c.log.Warn("eviction failed", "err", err)
		}
		stuckSince = time.Time{}
		if _, held := c.store.Stats(); held > c.opts.MaxBytes {
			stuckAt, stuckSince = acked, time.Now()
		}
	}
}

// tierEvery is how often a tier evicts what its archives accepted.
const tierEvery = time.Second

// replicaAcked is the feed position every replica peer accepted:
// everything up to it is held by all of them. (One replica would keep an
// upload safe, but the pushers to the others still need its bytes: a
// cache that evicted it then would count them as holders, and they would
// only get it later from that one replica.)
func (c *Cluster) replicaAcked() uint64 {
	reps := c.replicaPeers()
	if len(reps) == 0 {
		return 0
	}
	acked := uint64(math.MaxUint64)
	for _, r := range reps {
		acked = min(acked, c.cursorOf(r.URL))
	}
	return acked
}
