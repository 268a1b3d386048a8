package blobstore

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/broadcast"
)

// Options configure a Store. The zero value is a replica store with a
// silent logger.
type Options struct {
	// Logger receives the store's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// TrackAccess keeps a persistent least-recently-used order of reads, for
	// a cache that evicts (see Store.Evict). If false, reads write nothing.
	TrackAccess bool
	// Tier makes an eviction keep the blob's record and drop only its
	// bytes (record.Evicted): for a replica whose archive holds what it
	// evicts, and from which reads fetch it back. Without it an eviction
	// forgets the blob (a cache). It needs TrackAccess.
	Tier bool
	// Wall is the wall clock of the hybrid logical clock. If nil, it
	// defaults to time.Now.
	Wall func() time.Time
	// SmallCacheBytes bounds the memory keeping small blobs' bytes for
	// ReadOrOpen. If zero, it defaults to 32 MiB; negative disables it.
	SmallCacheBytes int64
	// MaxClockOffset bounds how far ahead of Wall a remote state's clock
	// may be: Apply, CommitState and ApplyDeny refuse one further ahead
	// with a *ClockAheadError. If zero, it defaults to one minute.
	MaxClockOffset time.Duration
}

// Store is a node's local blob store. All methods are safe for concurrent
// use. Open starts its one background goroutine (the metadata committer);
// Close stops it.
type Store struct {
	dir     string
	blobDir string
	tmpDir  string
	log     *slog.Logger
	db      *bolt.DB
	node    string
	clock   *dtfc.Clock
	opts    Options
	locks   keyLock

	ops     chan *op
	placing placings
	stop    chan struct{}
	stopped chan struct{}
	// intentsDone is closed when intentsLoop has returned.
	intentsDone chan struct{}
	closeMu     sync.RWMutex // held shared by writers, exclusively by Close
	closed      bool

	blobs   atomic.Int64
	bytes   atomic.Int64
	lastSeq atomic.Uint64
	feed    broadcast.Signal // notified at every change of the feed
	access  accessLog
	evictMu sync.Mutex
	// untrackedScan is when Evict last walked the records for blobs
	// missing from the read order (guarded by evictMu).
	untrackedScan time.Time
	scrubber      scrubState
	small         *smallCache
	denied        denyCache
	opener        *blobOpener
	// partials are the IDs with a resumable writer open (partial.go),
	// each with the channel its Close closes.
	partialMu sync.Mutex
	partials  map[dtfc.ID]chan struct{}

	unconfirmed atomic.Int64 // entries in bucketUnconfirmed
	// unconfirmedNews is notified when an unconfirmed blob that waited
	// for nothing the store can see (a lift of a block whose tombstone
	// is forgotten) is now for the cluster to decide (UnconfirmedNews).
	unconfirmedNews broadcast.Signal
	denyUnknown     atomic.Bool // keyDenyUnknown is set
	recordsLost     bool        // keyRecordsLost is set
	// pastForgetting is the Timestamp before which the memory of what
	// was forgotten was last pruned (PruneForgotten): a delete or lift
	// that old, of an ID without a record here, is no news (see
	// forgotten.go). 0 until the first prune since the start.
	pastForgetting atomic.Uint64
	unlock         func() // releases the lock on dir (lockDir)

	// syncfs: CommitBatch makes its files durable with one syncfs of
	// the file system rather than a sync per file and directory.
	syncfs bool
	// ahead: the clocks of states refused as too far ahead (ahead.go).
	ahead aheadClocks
	// aheadDeny: the clocks of deny entries refused as too far ahead.
	aheadDeny aheadClocks
}

var (
	bucketMeta    = []byte("meta")   // id -> record
	bucketFeed    = []byte("feed")   // seq -> id
	bucketTombs   = []byte("tombs")  // clock|id -> {} (tombstones by age)
	bucketDigest  = []byte("digest") // id[0] -> Digest
	bucketSys     = []byte("sys")    // store-wide values
	bucketValues  = []byte("values") // other layers' durable values (cursors)
	bucketATime   = []byte("atime")  // id -> access counter (caches)
	bucketLRU     = []byte("lru")    // access|id -> {} (caches)
	allBuckets    = [][]byte{bucketMeta, bucketFeed, bucketTombs, bucketDigest, bucketSys, bucketValues, bucketATime, bucketLRU, bucketDeny, bucketUnconfirmed, bucketAside, bucketIntents, bucketForgotten}
	keyNode       = []byte("node")
	keyClean      = []byte("clean")
	keyRebuilding = []byte("rebuilding") // set by Rebuild until it has finished
	// keyDenyUnknown is set while the store's deny list may lack blocks
	// its peers hold: its metadata was rebuilt, or started afresh under
	// a known identity (MarkDenyKnown clears it).
	keyDenyUnknown = []byte("deny_unknown")
	// keyRecordsLost is set for good in metadata rebuilt, or started
	// afresh under a known identity: what this node wrote to a bucket
	// before is not in it (see Store.RecordsLost).
	keyRecordsLost = []byte("records_lost")
	keyClock       = []byte("clock")
	keyBlobs       = []byte("blobs")
	keyBytes       = []byte("bytes")
	keyAccessNext  = []byte("access")
	// keyAccessAll is set while every blob held is in the read order
	// (see trackAll).
	keyAccessAll = []byte("access_all")
)

// errDirLocked means another process holds the store's directory.
var errDirLocked = errors.New("blobstore: directory locked")

// Open opens (creating if needed) the store in dir.
//
// The metadata (meta.db) is checked first, read-only (see check.go):
// Open refuses, with a *MetaError and without changing anything in dir,
// a meta.db that is damaged, one that names another node than dir's
// node-id file, and a missing one while blobs/ or unconfirmed/ holds
// files (Rebuild is the way out of each). A missing meta.db with no blob
// file starts a fresh store, under the identity of node-id if there is
// one.
//
// Temp files left by a previous process are removed. After an unclean
// shutdown (a crash or kill -9) the blob files are reconciled with the
// records: a deleted ID's file is removed; a file no record accounts for
// is never deleted but set aside as unconfirmed (see unconfirmed.go), so
// blobs/ holds exactly the blobs the store serves.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxClockOffset <= 0 {
		opts.MaxClockOffset = time.Minute
	}
	s := &Store{
		dir:         dir,
		blobDir:     filepath.Join(dir, "blobs"),
		tmpDir:      filepath.Join(dir, "tmp"),
		log:         opts.Logger,
		opts:        opts,
		clock:       &dtfc.Clock{Wall: opts.Wall},
		ops:         make(chan *op, 1024),
		placing:     placings{arrived: make(chan struct{}, 1)},
		stop:        make(chan struct{}),
		stopped:     make(chan struct{}),
		intentsDone: make(chan struct{}),
		syncfs:      canSyncFS(),
	}
	switch {
	case opts.SmallCacheBytes == 0:
		s.small = newSmallCache(32 << 20)
	case opts.SmallCacheBytes > 0:
		s.small = newSmallCache(opts.SmallCacheBytes)
	}
	for _, d := range []string{dir, s.blobDir, s.tmpDir, filepath.Join(dir, "quarantine"), filepath.Join(dir, unconfirmedDir), filepath.Join(dir, partialDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, diskErr("create directory", err)
		}
		// MkdirAll honours the umask; blobs must stay readable by a web
		// server running as another user.
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, fmt.Errorf("blobstore: %w", err)
		}
	}
	if err := s.openFiles(); err != nil {
		return nil, err
	}
	releaseMap(s.db, s.metaPath())
	go s.commitLoop()
	go s.intentsLoop()
	return s, nil
}

// openFiles locks the directory, checks and opens the metadata and the
// blob directory, and brings them to a consistent state; on failure it
// closes whatever it opened.
func (s *Store) openFiles() (err error) {
	s.unlock, err = lockDir(s.dir, 2*time.Second)
	if errors.Is(err, errDirLocked) {
		return fmt.Errorf("blobstore: %s is in use by another process", s.dir)
	}
	if err != nil {
		return fmt.Errorf("blobstore: lock %s: %w", s.dir, err)
	}
	defer func() {
		if err != nil {
			s.unlock()
		}
	}()
	// Nothing below writes to dir before prepare has accepted it: a store
	// it refuses is left as found (but for the store's directories, made
	// if missing).
	plan, err := s.prepare()
	if err != nil {
		return err
	}
	if plan.writeNodeID {
		// Before meta.db exists or is written to: the identity is on disk
		// before anything that carries it.
		if err := writeNodeID(s.dir, s.tmpDir, plan.node); err != nil {
			return err
		}
	}
	if s.opener, err = newBlobOpener(s.blobDir); err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	defer func() {
		if err != nil {
			s.opener.close()
		}
	}()
	s.db, err = bolt.Open(s.metaPath(), 0o600, metaOptions(2*time.Second))
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return fmt.Errorf("blobstore: %s is in use by another process", s.dir)
		}
		return fmt.Errorf("blobstore: open metadata: %w", err)
	}
	defer func() {
		if err != nil {
			s.db.Close()
		}
	}()
	clean, intents, err := s.init(plan)
	if err != nil {
		return err
	}
	if err := s.trackAll(); err != nil {
		return fmt.Errorf("blobstore: read order: %w", err)
	}
	var inFlight map[dtfc.ID]bool
	if !clean && intents {
		// Before the temp files go: they name the placements in flight.
		if inFlight, err = s.inFlight(make([]byte, 1<<20)); err != nil {
			return fmt.Errorf("blobstore: reconcile after unclean shutdown: %w", err)
		}
	}
	if err := s.sweepTemp(); err != nil {
		return err
	}
	if err := s.sweepPartials(); err != nil {
		return err
	}
	switch {
	case clean:
		return nil
	case intents:
		return s.reconcileIntents(inFlight)
	default:
		if err := s.reconcile(); err != nil {
			return err
		}
		return s.clearIntents()
	}
}

func (s *Store) metaPath() string { return filepath.Join(s.dir, "meta.db") }

// metaOptions are bbolt's options for writing meta.db, waiting timeout
// for another process to let go of it.
//
// The free list is not stored: stored, every commit writes all of it, 8
// bytes per free page, and after a mass forget (2*10^5 free pages) a
// small commit took 7.5-8.1 ms instead of 0.4 (BenchmarkFreeListCommit).
// Unstored, bbolt rebuilds it at the
// first write after an open by walking every page of the file (about
// 0.2 s at 10^6 blobs), through its memory map: Open then releases those
// pages from the resident set (releaseMap), or the node would hold the
// whole file resident for as long as it runs (349 MiB at 10^6 blobs,
// issue 18). A file whose list is stored (bbolt's default) opens too, and
// the check at open (walkBolt) proves the list agrees with the tree.
func metaOptions(timeout time.Duration) *bolt.Options {
	return &bolt.Options{Timeout: timeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType}
}

// openPlan is what prepare decided.
type openPlan struct {
	// node is the identity of a store initialised now (meta.db missing or
	// empty): node-id's, or a new one.
	node string
	// writeNodeID: node-id is missing (or unreadable) and must be written
	// with node.
	writeNodeID bool
	// denyUnknown: the store starts afresh under an identity that had a
	// deny list once (keyDenyUnknown).
	denyUnknown bool
	// checked: meta.db was checked and these are its counts.
	checked      bool
	blobs, bytes int64
}

// prepare decides, before bbolt opens meta.db for writing (which would
// create a missing one, and crashes on a damaged one), whether the store
// may be opened, and under which identity.
func (s *Store) prepare() (openPlan, error) {
	var p openPlan
	path := s.metaPath()
	fileID, err := readNodeID(s.dir)
	if errors.Is(err, errBadNodeID) {
		s.log.Warn("ignoring the node-id file", "err", err)
		fileID, p.writeNodeID = "", true
	} else if err != nil {
		return p, err
	}
	var mc metaContents
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		mc.empty = true
	case err != nil:
		return p, fmt.Errorf("blobstore: %w", err)
	case fi.Size() == 0:
		mc.empty = true
	default:
		if mc, err = checkMeta(path); err != nil {
			return p, err
		}
		if mc.warning != "" {
			s.log.Warn("meta.db: "+mc.warning, "path", path)
		}
		if !mc.empty {
			s.log.Info("checked the metadata", "blobs", mc.blobs, "unconfirmed", mc.unconfirmed, "took", mc.took.Round(time.Millisecond))
		}
	}
	if mc.empty {
		// A new store, or one whose metadata is gone: which it is, the
		// blob files tell.
		held, err := s.holdsBlobFiles()
		if err != nil {
			return p, err
		}
		if held != "" {
			what := "does not exist"
			if fi != nil {
				what = "holds no metadata"
			}
			return p, &MetaError{Kind: ErrMetaMissing, Path: path,
				Detail: fmt.Sprintf("it %s, but the store holds blob files (%s): opening it would make an empty store that knows none of them", what, held)}
		}
		if fileID != "" {
			s.log.Warn("meta.db is missing and no blob file is held: starting a fresh store under the same identity", "node", fileID, "path", path)
			p.node, p.denyUnknown = fileID, true
			return p, nil
		}
		if p.node, err = newNodeID(); err != nil {
			return p, err
		}
		p.writeNodeID = true
		return p, nil
	}
	if mc.rebuilding {
		return p, damaged(path, "a dtfc rebuild-meta was interrupted before it finished")
	}
	if fileID != "" && mc.node != fileID {
		return p, &MetaError{Kind: ErrMetaForeign, Path: path,
			Detail: fmt.Sprintf("it names node %s, but %s names node %s: it is not this store's own metadata (copied from another node?)",
				mc.node, filepath.Join(s.dir, nodeIDFile), fileID)}
	}
	if fileID == "" {
		// A store made before node-id existed: keep its identity there
		// from now on.
		p.writeNodeID = true
	}
	p.node, p.checked = mc.node, true
	p.blobs, p.bytes = mc.blobs, mc.bytes
	return p, nil
}

// holdsBlobFiles returns the path of a file under blobs/ or unconfirmed/
// (one is enough), or "" if there is none.
func (s *Store) holdsBlobFiles() (string, error) {
	var found string
	for _, root := range []string{s.blobDir, filepath.Join(s.dir, unconfirmedDir)} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				found = path
				return fs.SkipAll
			}
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("blobstore: look for blob files: %w", err)
		}
		if found != "" {
			return found, nil
		}
	}
	return "", nil
}

// init creates the buckets, reads the store-wide values and marks the store
// dirty until a clean Close.
func (s *Store) init(p openPlan) (clean, intents bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		sys := tx.Bucket(bucketSys)
		if v := sys.Get(keyNode); v != nil {
			s.node = string(v)
		} else {
			s.node = p.node
			if err := sys.Put(keyNode, []byte(s.node)); err != nil {
				return err
			}
		}
		// A fresh store is clean; an existing one is clean only if the
		// last Close said so.
		fresh := sys.Get(keyClean) == nil && tx.Bucket(bucketMeta).Stats().KeyN == 0
		clean = fresh || string(sys.Get(keyClean)) == markClean
		intents = string(sys.Get(keyClean)) == markIntents
		s.clock.Observe(dtfc.Timestamp(getU64(sys, keyClock)))
		s.blobs.Store(int64(getU64(sys, keyBlobs)))
		s.bytes.Store(int64(getU64(sys, keyBytes)))
		if p.checked && (s.blobs.Load() != p.blobs || s.bytes.Load() != p.bytes) {
			// Counted from the records by the check: the stored counters
			// are only a cache of that.
			s.log.Warn("the stored blob counters disagree with the records; corrected",
				"blobs", s.blobs.Load(), "counted", p.blobs, "bytes", s.bytes.Load(), "counted_bytes", p.bytes)
			s.blobs.Store(p.blobs)
			s.bytes.Store(p.bytes)
			if err := sys.Put(keyBlobs, u64(uint64(p.blobs))); err != nil {
				return err
			}
			if err := sys.Put(keyBytes, u64(uint64(p.bytes))); err != nil {
				return err
			}
		}
		s.unconfirmed.Store(int64(tx.Bucket(bucketUnconfirmed).Stats().KeyN))
		if p.denyUnknown {
			if err := sys.Put(keyDenyUnknown, []byte("1")); err != nil {
				return err
			}
			if err := sys.Put(keyRecordsLost, []byte("1")); err != nil {
				return err
			}
		}
		s.denyUnknown.Store(sys.Get(keyDenyUnknown) != nil)
		s.recordsLost = sys.Get(keyRecordsLost) != nil
		s.access.next = getU64(sys, keyAccessNext)
		if err := s.loadDeny(tx); err != nil {
			return err
		}
		// The bucket's sequence, not its last key: compaction, purges
		// and evictions delete feed entries, the latest one included.
		s.lastSeq.Store(tx.Bucket(bucketFeed).Sequence())
		// Unclean until Close says otherwise; this process keeps intents.
		return sys.Put(keyClean, []byte(markIntents))
	})
	if err != nil {
		return false, false, fmt.Errorf("blobstore: init metadata: %w", err)
	}
	return clean, intents, nil
}

func getU64(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return decU64(v)
	}
	return 0
}

func decU64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// sweepTemp removes temp files of a previous process: none of them was
// acknowledged, and this process holds the directory exclusively (bbolt's
// file lock).
func (s *Store) sweepTemp() error {
	entries, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("blobstore: sweep temp files: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(s.tmpDir, e.Name())); err != nil {
			return fmt.Errorf("blobstore: sweep temp files: %w", err)
		}
	}
	if len(entries) > 0 {
		s.log.Info("removed stale temp files", "count", len(entries))
	}
	return nil
}

// reconcile runs after an unclean shutdown, to bring blobs/ and
// unconfirmed/ in line with the records. A crash can leave in blobs/ a
// file whose tombstone was committed before the unlink (an acknowledged
// delete): it is removed. It can also leave a file renamed into place
// whose record was never committed (an upload cut before its commit,
// never acknowledged), or a file of an unconfirmed blob between its two
// moves: no such file is deleted; it is verified and set aside as
// unconfirmed (see unconfirmed.go), or quarantined if its bytes do not
// hash to its name. A file that is not a blob at its place (a foreign
// file) is quarantined too. blobs/ then holds exactly the recorded,
// present blobs; other nodes still hold what should exist, and
// anti-entropy brings it back.
func (s *Store) reconcile() error {
	start := time.Now()
	r := &reconciler{s: s, buf: make([]byte, 1<<20)}
	err := filepath.WalkDir(s.blobDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		return r.blobFile(path, d)
	})
	if err == nil {
		err = r.unconfirmedDir()
	}
	if err != nil {
		return fmt.Errorf("blobstore: reconcile after unclean shutdown: %w", err)
	}
	s.log.Info("checked blob files after an unclean shutdown", "files", r.checked, "removed", r.removed,
		"unconfirmed", r.setAside, "quarantined", r.quarantined, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// reconciler is one reconcile pass.
type reconciler struct {
	s                                       *Store
	buf                                     []byte
	checked, removed, setAside, quarantined int
}

// blobFile reconciles one file under blobs/.
func (r *reconciler) blobFile(path string, d fs.DirEntry) error {
	s := r.s
	r.checked++
	id, perr := dtfc.ParseID(d.Name())
	if perr != nil || !d.Type().IsRegular() || s.Path(id) != path {
		return r.quarantine(path, "a file that is not a blob at its place in the blob directory")
	}
	rec, ok, err := s.record(id)
	if err != nil {
		return err
	}
	switch {
	case ok && !rec.Deleted && !rec.Evicted:
		return nil
	case ok && rec.Evicted:
		// Its eviction was committed; only its unlink was lost.
		r.removed++
		return removeDurably(path)
	case ok:
		if aside, err := r.setAsideCut(id); err != nil || aside {
			return err
		}
		// The delete was acknowledged; only its unlink was lost.
		r.removed++
		return removeDurably(path)
	}
	_, entry, err := s.unconfirmedEntry(id)
	if err != nil {
		return err
	}
	if !entry {
		got, size, _, err := hashFile(path, r.buf)
		if err != nil {
			return err
		}
		if got != id {
			return r.quarantine(path, "a blob file whose bytes do not hash to its name")
		}
		if err := s.putUnconfirmed(UnconfirmedBlob{ID: id, Size: size, Since: time.Now()}); err != nil {
			return err
		}
	}
	dst := s.UnconfirmedPath(id)
	if _, err := os.Lstat(dst); err == nil {
		// Already set aside once (a crash between the two moves of an
		// adoption): the copy in unconfirmed/ was verified, this one is
		// the same bytes under the same name.
		r.removed++
		return removeDurably(path)
	}
	if err := s.moveAside(path, id); err != nil {
		return err
	}
	r.setAside++
	s.log.Warn("a blob file without a record was set aside as unconfirmed (an upload cut before its commit?)", "id", id.String(), "path", dst)
	return nil
}

// setAsideCut finishes a block's set-aside (recordDeny) cut between its
// commit (the tombstone and the unconfirmed entry) and the move of the
// file: the file at blobs/ goes to unconfirmed/, where the entry says it
// is. It reports whether it did.
func (r *reconciler) setAsideCut(id dtfc.ID) (bool, error) {
	s := r.s
	_, entry, err := s.unconfirmedEntry(id)
	if err != nil || !entry {
		return false, err
	}
	if _, err := os.Lstat(s.UnconfirmedPath(id)); !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	r.setAside++
	return true, s.moveAside(s.Path(id), id)
}

// unconfirmedDir reconciles every file under unconfirmed/.
func (r *reconciler) unconfirmedDir() error {
	root := filepath.Join(r.s.dir, unconfirmedDir)
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		return r.unconfirmedFile(root, path, d)
	})
}

// unconfirmedFile reconciles one file under unconfirmed/.
func (r *reconciler) unconfirmedFile(root, path string, d fs.DirEntry) error {
	s := r.s
	id, perr := dtfc.ParseID(d.Name())
	if perr != nil || !d.Type().IsRegular() || filepath.Join(root, shardPath(id)) != path {
		return r.quarantine(path, "a file that is not an unconfirmed blob at its place")
	}
	if _, ok, err := s.unconfirmedEntry(id); err != nil || ok {
		return err
	}
	rec, ok, err := s.record(id)
	if err != nil {
		return err
	}
	if ok && (rec.Deleted || s.fileExists(id)) {
		// Settled or deleted while the file was still here.
		r.removed++
		return removeDurably(path)
	}
	got, size, _, err := hashFile(path, r.buf)
	if err != nil {
		return err
	}
	if got != id {
		return r.quarantine(path, "an unconfirmed blob file whose bytes do not hash to its name")
	}
	if ok {
		// Recorded as present, its file lost on the way back: put it back.
		if err := s.ensureShard(id); err != nil {
			return err
		}
		return moveDurably(path, s.Path(id))
	}
	r.setAside++
	return s.putUnconfirmed(UnconfirmedBlob{ID: id, Size: size, Since: time.Now()})
}

func (r *reconciler) quarantine(path, why string) error {
	dst, err := quarantineFile(r.s.dir, path)
	if err != nil {
		return err
	}
	r.quarantined++
	r.s.log.Warn("moved "+why+" to quarantine/", "from", path, "to", dst)
	return nil
}

// putUnconfirmed records an unconfirmed entry. It is used while opening,
// before the committer runs.
func (s *Store) putUnconfirmed(u UnconfirmedBlob) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUnconfirmed).Put(u.ID[:], encodeUnconfirmed(u))
	})
	if err != nil {
		return diskErr("commit metadata", err)
	}
	s.unconfirmed.Add(1)
	return nil
}

// Close stops the committer after the writes in flight and marks the store
// clean. Writes after Close fail with ErrClosed.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	close(s.stop)
	<-s.stopped
	<-s.intentsDone
	err := s.flushAccess()
	keep, kerr := s.unfinishedIntents()
	err = errors.Join(err, kerr, s.db.Update(func(tx *bolt.Tx) error {
		// Nothing is in flight (Close waited for every operation): the
		// intents go with the clean mark, but for a file whose removal
		// failed again: its intent stays, for the next start. If they
		// could not be looked at, all stay.
		if kerr != nil {
			return tx.Bucket(bucketSys).Put(keyClean, []byte(markIntents))
		}
		if err := tx.DeleteBucket(bucketIntents); err != nil {
			return err
		}
		b, err := tx.CreateBucket(bucketIntents)
		if err != nil {
			return err
		}
		for _, id := range keep {
			if err := b.Put(id[:], u64(1)); err != nil {
				return err
			}
		}
		if kerr != nil || len(keep) > 0 {
			return tx.Bucket(bucketSys).Put(keyClean, []byte(markIntents))
		}
		return tx.Bucket(bucketSys).Put(keyClean, []byte(markClean))
	}))
	s.opener.close()
	err = errors.Join(err, s.db.Close())
	s.unlock()
	return err
}

// Dir returns the store's base directory.
func (s *Store) Dir() string { return s.dir }

// BlobDir returns the directory that holds the blob files.
func (s *Store) BlobDir() string { return s.blobDir }

// NodeID returns this node's identity: random, generated when the store was
// created, kept for its life. It breaks ties between equal clocks.
func (s *Store) NodeID() string { return s.node }

// Clock returns the node's hybrid logical clock.
func (s *Store) Clock() *dtfc.Clock { return s.clock }

// Stats returns the number of blobs held and their total size in bytes.
func (s *Store) Stats() (blobs, bytes int64) { return s.blobs.Load(), s.bytes.Load() }

// checkClock refuses a remote clock further ahead of the wall clock than
// MaxClockOffset: observing it would drag this node's clock (and every
// clock that hears from it) ahead with it.
func (s *Store) checkClock(t dtfc.Timestamp) error {
	if ahead := s.clock.Ahead(t); ahead > s.opts.MaxClockOffset {
		return &ClockAheadError{Clock: t, Ahead: ahead, Max: s.opts.MaxClockOffset}
	}
	return nil
}

// shardPath is the path of a blob relative to the blob directory.
func shardPath(id dtfc.ID) string {
	h := id.String()
	// What filepath.Join would make, without its Clean (a hit makes
	// several of these).
	return h[0:2] + sep + h[2:4] + sep + h
}

const sep = string(filepath.Separator)

// Path returns where the blob of id lives (or would live) on disk.
func (s *Store) Path(id dtfc.ID) string { return s.blobDir + sep + shardPath(id) }

// enter guards a write against a concurrent Close.
func (s *Store) enter() (func(), error) {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return nil, ErrClosed
	}
	return s.closeMu.RUnlock, nil
}

// Changed returns a channel that is closed at the next change of the feed.
// Take it before reading the feed, so that no change can slip between.
func (s *Store) Changed() <-chan struct{} { return s.feed.Wait() }

// LastSeq returns the sequence number of the latest change in the feed.
func (s *Store) LastSeq() uint64 { return s.lastSeq.Load() }
