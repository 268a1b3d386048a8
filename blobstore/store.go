package blobstore

import (
	"crypto/rand"
	"encoding/hex"
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
)

// Options configure a Store. The zero value is a replica store with a
// silent logger.
type Options struct {
	// Logger receives the store's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// TrackAccess keeps a persistent least-recently-used order of reads, for
	// a cache that evicts (see Store.Evict). If false, reads write nothing.
	TrackAccess bool
	// Wall is the wall clock of the hybrid logical clock. If nil, it
	// defaults to time.Now.
	Wall func() time.Time
	// SmallCacheBytes bounds the memory keeping small blobs' bytes for
	// ReadSmall. If zero, it defaults to 32 MiB; negative disables it.
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
	stop    chan struct{}
	stopped chan struct{}
	closeMu sync.RWMutex // held shared by writers, exclusively by Close
	closed  bool

	blobs    atomic.Int64
	bytes    atomic.Int64
	lastSeq  atomic.Uint64
	feedMu   sync.Mutex
	feedCh   chan struct{}
	access   accessLog
	evictMu  sync.Mutex
	scrubber scrubState
	small    *smallCache
	denied   denyCache
	opener   *blobOpener
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
	allBuckets    = [][]byte{bucketMeta, bucketFeed, bucketTombs, bucketDigest, bucketSys, bucketValues, bucketATime, bucketLRU, bucketDeny}
	keyNode       = []byte("node")
	keyClean      = []byte("clean")
	keyClock      = []byte("clock")
	keyBlobs      = []byte("blobs")
	keyBytes      = []byte("bytes")
	keyAccessNext = []byte("access")
)

// Open opens (creating if needed) the store in dir. Temp files left by a
// previous process are removed; after an unclean shutdown (a crash or
// kill -9), blob files that no committed record accounts for are removed
// too, so nothing unacknowledged or deleted stays visible under blobs/.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxClockOffset <= 0 {
		opts.MaxClockOffset = time.Minute
	}
	s := &Store{
		dir:     dir,
		blobDir: filepath.Join(dir, "blobs"),
		tmpDir:  filepath.Join(dir, "tmp"),
		log:     opts.Logger,
		opts:    opts,
		clock:   &dtfc.Clock{Wall: opts.Wall},
		ops:     make(chan *op, 1024),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
		feedCh:  make(chan struct{}),
	}
	switch {
	case opts.SmallCacheBytes == 0:
		s.small = newSmallCache(32 << 20)
	case opts.SmallCacheBytes > 0:
		s.small = newSmallCache(opts.SmallCacheBytes)
	}
	for _, d := range []string{dir, s.blobDir, s.tmpDir, filepath.Join(dir, "quarantine")} {
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
	go s.commitLoop()
	return s, nil
}

// openFiles opens the blob directory and the metadata, and brings them to
// a consistent state; on failure it closes whatever it opened.
func (s *Store) openFiles() (err error) {
	if s.opener, err = newBlobOpener(s.blobDir); err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	defer func() {
		if err != nil {
			s.opener.close()
		}
	}()
	s.db, err = bolt.Open(filepath.Join(s.dir, "meta.db"), 0o600, &bolt.Options{
		Timeout:        2 * time.Second, // another process holds the directory
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
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
	clean, err := s.init()
	if err != nil {
		return err
	}
	if err := s.sweepTemp(); err != nil {
		return err
	}
	if !clean {
		return s.reconcile()
	}
	return nil
}

// init creates the buckets, reads the store-wide values and marks the store
// dirty until a clean Close.
func (s *Store) init() (clean bool, err error) {
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
			var b [8]byte
			if _, err := rand.Read(b[:]); err != nil {
				return err
			}
			s.node = hex.EncodeToString(b[:])
			if err := sys.Put(keyNode, []byte(s.node)); err != nil {
				return err
			}
		}
		// A fresh store is clean; an existing one is clean only if the
		// last Close said so.
		fresh := sys.Get(keyClean) == nil && tx.Bucket(bucketMeta).Stats().KeyN == 0
		clean = fresh || string(sys.Get(keyClean)) == "1"
		s.clock.Observe(dtfc.Timestamp(getU64(sys, keyClock)))
		s.blobs.Store(int64(getU64(sys, keyBlobs)))
		s.bytes.Store(int64(getU64(sys, keyBytes)))
		s.access.next = getU64(sys, keyAccessNext)
		if err := s.loadDeny(tx); err != nil {
			return err
		}
		// The bucket's sequence, not its last key: compaction, purges
		// and evictions delete feed entries, the latest one included.
		s.lastSeq.Store(tx.Bucket(bucketFeed).Sequence())
		return sys.Put(keyClean, []byte("0"))
	})
	if err != nil {
		return false, fmt.Errorf("blobstore: init metadata: %w", err)
	}
	return clean, nil
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

// reconcile runs after an unclean shutdown. A crash can leave a blob file
// renamed into place whose record was never committed (the upload was not
// acknowledged) or a file whose tombstone was committed before the unlink.
// Neither may stay visible to readers of blobs/, so both are removed. Other
// nodes still hold what should exist, and anti-entropy brings it back.
func (s *Store) reconcile() error {
	start := time.Now()
	var checked, removed int
	err := filepath.WalkDir(s.blobDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		id, perr := dtfc.ParseID(d.Name())
		if perr != nil || filepath.Join(s.blobDir, shardPath(id)) != path {
			s.log.Warn("removing a foreign file from the blob directory", "path", path)
			removed++
			return os.Remove(path)
		}
		checked++
		rec, ok, err := s.record(id)
		if err != nil {
			return err
		}
		if !ok || rec.Deleted {
			removed++
			return os.Remove(path)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("blobstore: reconcile after unclean shutdown: %w", err)
	}
	s.log.Info("checked blob files after an unclean shutdown", "files", checked, "removed", removed, "took", time.Since(start).Round(time.Millisecond))
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
	err := s.flushAccess()
	err = errors.Join(err, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSys).Put(keyClean, []byte("1"))
	}))
	s.opener.close()
	return errors.Join(err, s.db.Close())
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
	return filepath.Join(h[0:2], h[2:4], h)
}

// Path returns where the blob of id lives (or would live) on disk.
func (s *Store) Path(id dtfc.ID) string { return filepath.Join(s.blobDir, shardPath(id)) }

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
func (s *Store) Changed() <-chan struct{} {
	s.feedMu.Lock()
	defer s.feedMu.Unlock()
	return s.feedCh
}

func (s *Store) notifyFeed() {
	s.feedMu.Lock()
	close(s.feedCh)
	s.feedCh = make(chan struct{})
	s.feedMu.Unlock()
}

// LastSeq returns the sequence number of the latest change in the feed.
func (s *Store) LastSeq() uint64 { return s.lastSeq.Load() }
