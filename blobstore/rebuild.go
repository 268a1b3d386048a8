package blobstore

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// ErrMetaSound means Rebuild found the metadata sound and, without
// RebuildOptions.Force, left it alone.
var ErrMetaSound = errors.New("blobstore: the metadata is sound; nothing to rebuild")

// RebuildOptions configure Rebuild.
type RebuildOptions struct {
	// Logger receives a line for every file quarantined. If nil, logs
	// are discarded.
	Logger *slog.Logger
	// Force rebuilds metadata that checks out sound (its file is kept
	// aside like a damaged one). If false, Rebuild refuses sound
	// metadata with ErrMetaSound.
	Force bool
	// Sniff, if set, guesses a blob's content type from its first bytes
	// (up to 512); the guess is what a node without peers records when it
	// adopts the blob. If nil, none is recorded.
	Sniff func(head []byte) string
	// Progress, if set, is called with the report so far about every
	// ProgressEvery while files are hashed.
	Progress func(RebuildReport)
	// ProgressEvery is how often Progress is called. If zero, it
	// defaults to 5 seconds.
	ProgressEvery time.Duration
}

// RebuildReport tells what Rebuild did.
type RebuildReport struct {
	// Node is the store's identity; NodeFrom says where it was found:
	// "node-id", "meta.db" (the old one) or "new" (made up: neither had
	// it).
	Node, NodeFrom string
	// Found is what was wrong with the old metadata.
	Found string
	// MovedAside is where the old meta.db was moved ("" if there was
	// none).
	MovedAside string
	// Resumed is true if an interrupted rebuild was taken up.
	Resumed bool
	// Verified counts the blob files whose bytes hash to their name, now
	// unconfirmed, and their bytes.
	Verified, VerifiedBytes int64
	// Quarantined counts the blob files whose bytes do not, now in
	// quarantine/, and their bytes.
	Quarantined, QuarantinedBytes int64
	// Foreign counts the other files found under blobs/ or unconfirmed/
	// (not a blob's name at its place), now in quarantine/.
	Foreign int64
	// Took is how long it took.
	Took time.Duration
}

// Rebuild makes new metadata for the store in dir from its blob files,
// with the store closed (it takes the store's lock, so it fails while a
// node runs on dir). It is the way out of every refusal of Open with a
// *MetaError.
//
// It never deletes anything. The old meta.db, if any, is moved aside to
// meta.db.damaged-<time>. The new one is made under the node's identity
// (node-id's; else the old meta.db's, if it can be read; else a new one).
// Every file under blobs/ and unconfirmed/ is hashed (streamed, one
// buffer): one whose bytes hash to its name is recorded as an unconfirmed
// blob, its file in unconfirmed/ (see unconfirmed.go); one whose bytes do
// not, and any file that is not a blob, goes to quarantine/. The node,
// once started, resolves each unconfirmed blob with its peers.
//
// An interrupted Rebuild is taken up by the next (Open refuses the store
// meanwhile).
func Rebuild(dir string, opts RebuildOptions) (rep RebuildReport, err error) {
	start := time.Now()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ProgressEvery == 0 {
		opts.ProgressEvery = 5 * time.Second
	}
	path := filepath.Join(dir, "meta.db")
	blobDir := filepath.Join(dir, "blobs")
	tmpDir := filepath.Join(dir, "tmp")
	unlock, err := lockForRebuild(dir, path, blobDir, tmpDir)
	if err != nil {
		return rep, err
	}
	defer unlock()

	fileID, err := readNodeID(dir)
	if err != nil && !errors.Is(err, errBadNodeID) {
		return rep, err
	}
	rep.Node, rep.NodeFrom = fileID, "node-id"
	if err := examineMeta(path, fileID, opts.Force, &rep); err != nil {
		return rep, err
	}
	if err := settleNode(dir, tmpDir, fileID, &rep); err != nil {
		return rep, err
	}
	if !rep.Resumed && exists(path) {
		if err := moveMetaAside(dir, path, start, &rep); err != nil {
			return rep, err
		}
	}

	db, err := bolt.Open(path, 0o600, metaOptions(time.Second))
	if err != nil {
		return rep, fmt.Errorf("blobstore: create metadata: %w", err)
	}
	defer func() {
		if cerr := db.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("blobstore: close metadata: %w", cerr)
		}
	}()
	if err := startRebuildMeta(db, rep.Node); err != nil {
		return rep, diskErr("create metadata", err)
	}
	rb := &rebuilder{dir: dir, db: db, opts: opts, rep: &rep, buf: make([]byte, 1<<20), start: start, lastProgress: time.Now()}
	if err := rb.run(blobDir); err != nil {
		return rep, err
	}
	if err := finishRebuildMeta(db); err != nil {
		return rep, diskErr("commit metadata", err)
	}
	rep.Took = time.Since(start)
	return rep, nil
}

// lockForRebuild takes the lock on the store in dir (refusing a store in
// use, or no store at all) and makes sure its directories exist, open to
// all (0755). It returns the function that releases the lock.
func lockForRebuild(dir, path, blobDir, tmpDir string) (unlock func(), err error) {
	if !exists(path) && !exists(blobDir) {
		return nil, fmt.Errorf("blobstore: %s holds no store (neither meta.db nor blobs/)", dir)
	}
	unlock, err = lockDir(dir, 0)
	if errors.Is(err, errDirLocked) {
		return nil, fmt.Errorf("blobstore: %s is in use by a running node: stop it first", dir)
	}
	if err != nil {
		return nil, fmt.Errorf("blobstore: lock %s: %w", dir, err)
	}
	for _, d := range []string{blobDir, tmpDir, filepath.Join(dir, "quarantine"), filepath.Join(dir, unconfirmedDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			unlock()
			return nil, diskErr("create directory", err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			unlock()
			return nil, fmt.Errorf("blobstore: %w", err)
		}
	}
	return unlock, nil
}

// examineMeta looks at the old meta.db at path, if any, and notes in rep
// what it found, and the node it names when node-id (fileID) named none.
// It refuses a meta.db a node of an older version holds, and a sound one
// unless force.
func examineMeta(path, fileID string, force bool, rep *RebuildReport) error {
	fi, serr := os.Stat(path)
	if serr != nil {
		if !errors.Is(serr, fs.ErrNotExist) {
			return fmt.Errorf("blobstore: %w", serr)
		}
		rep.Found = "meta.db is missing"
		return nil
	}
	// A node of a version without the directory lock holds bbolt's.
	release, lerr := lockDir(path, 0)
	if errors.Is(lerr, errDirLocked) {
		return fmt.Errorf("blobstore: %s is in use by a running node: stop it first", path)
	}
	if lerr != nil {
		return fmt.Errorf("blobstore: lock %s: %w", path, lerr)
	}
	release()
	var mc metaContents
	var cerr error
	if fi.Size() > 0 {
		mc, cerr = checkMeta(path)
	}
	var me *MetaError
	switch {
	case cerr != nil && !errors.As(cerr, &me):
		return cerr
	case fi.Size() == 0:
		rep.Found = "meta.db is empty"
	case cerr != nil:
		rep.Found = "damaged: " + me.Detail
	case mc.empty:
		rep.Found = "meta.db holds no metadata"
	case fileID != "" && mc.node != fileID:
		rep.Found = fmt.Sprintf("meta.db names node %s, node-id names node %s", mc.node, fileID)
	case mc.rebuilding:
		rep.Resumed = true
	case !force:
		return fmt.Errorf("%w: %s checks out (%d blobs, %d unconfirmed); rebuilding it would forget its deletes and replication state", ErrMetaSound, path, mc.blobs, mc.unconfirmed)
	default:
		rep.Found = "sound, rebuilt on request"
	}
	if rep.Node == "" && !mc.empty && mc.node != "" {
		rep.Node, rep.NodeFrom = mc.node, "meta.db"
	}
	if rep.Node == "" && cerr != nil {
		if n := peekNode(path); n != "" {
			rep.Node, rep.NodeFrom = n, "meta.db"
		}
	}
	return nil
}

// settleNode gives the store a new identity if neither node-id nor the
// old meta.db named one, and writes node-id when it differs from
// rep.Node.
func settleNode(dir, tmpDir, fileID string, rep *RebuildReport) error {
	if rep.Node == "" {
		var err error
		if rep.Node, err = newNodeID(); err != nil {
			return err
		}
		rep.NodeFrom = "new"
	}
	if fileID != rep.Node {
		return writeNodeID(dir, tmpDir, rep.Node)
	}
	return nil
}

// moveMetaAside renames the old meta.db to meta.db.damaged-<start> (with
// a suffix if that is taken) and makes the rename durable.
func moveMetaAside(dir, path string, start time.Time, rep *RebuildReport) error {
	rep.MovedAside = filepath.Join(dir, "meta.db.damaged-"+start.UTC().Format("20060102T150405Z"))
	for i := 1; exists(rep.MovedAside); i++ {
		rep.MovedAside = filepath.Join(dir, fmt.Sprintf("meta.db.damaged-%s.%d", start.UTC().Format("20060102T150405Z"), i))
	}
	if err := os.Rename(path, rep.MovedAside); err != nil {
		return fmt.Errorf("blobstore: move the old metadata aside: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return diskErr("fsync directory", err)
	}
	return nil
}

// startRebuildMeta creates the new metadata's buckets, under node, marked
// unclean and rebuilding until finishRebuildMeta.
func startRebuildMeta(db *bolt.DB, node string) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		sys := tx.Bucket(bucketSys)
		if err := sys.Put(keyNode, []byte(node)); err != nil {
			return err
		}
		if err := sys.Put(keyClean, []byte("0")); err != nil {
			return err
		}
		if err := sys.Put(keyDenyUnknown, []byte("1")); err != nil {
			return err
		}
		if err := sys.Put(keyRecordsLost, []byte("1")); err != nil {
			return err
		}
		return sys.Put(keyRebuilding, []byte("1"))
	})
}

// finishRebuildMeta marks the new metadata rebuilt, and clean.
func finishRebuildMeta(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		sys := tx.Bucket(bucketSys)
		if err := sys.Delete(keyRebuilding); err != nil {
			return err
		}
		return sys.Put(keyClean, []byte("1"))
	})
}

// run records every blob file under blobs/ and unconfirmed/.
func (rb *rebuilder) run(blobDir string) error {
	if err := rb.walk(blobDir, false); err != nil {
		return err
	}
	if err := rb.walk(filepath.Join(rb.dir, unconfirmedDir), true); err != nil {
		return err
	}
	return rb.flush()
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// peekNode reads the node identity out of a damaged meta.db if its
// structure is sound enough to read safely, or returns "".
func peekNode(path string) (node string) {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	_, err = walkBolt(f)
	f.Close()
	if err != nil {
		return ""
	}
	_ = protect(func() error {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			return err
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			if sys := tx.Bucket(bucketSys); sys != nil {
				if v := sys.Get(keyNode); validNodeID(string(v)) {
					node = string(v)
				}
			}
			return nil
		})
	})
	return node
}

// rebuilder is one Rebuild's walk over the blob files.
type rebuilder struct {
	dir          string
	db           *bolt.DB
	opts         RebuildOptions
	rep          *RebuildReport
	buf          []byte
	batch        []rebuildItem
	start        time.Time
	lastProgress time.Time
}

// rebuildItem is a verified blob file waiting for its entry and its move.
type rebuildItem struct {
	u    UnconfirmedBlob
	path string // where it is now
}

// rebuildBatch bounds the entries committed in one transaction (and the
// files moved between two rounds of directory fsyncs).
const rebuildBatch = 512

// walk hashes every file under root; inUnconfirmed says root is
// unconfirmed/ (its files stay where they are).
func (rb *rebuilder) walk(root string, inUnconfirmed bool) error {
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		id, perr := dtfc.ParseID(d.Name())
		if perr != nil || !d.Type().IsRegular() || filepath.Join(root, shardPath(id)) != path {
			rb.rep.Foreign++
			return rb.quarantine(path, "not a blob file at its place")
		}
		if inUnconfirmed {
			var have bool
			if err := rb.db.View(func(tx *bolt.Tx) error {
				have = tx.Bucket(bucketUnconfirmed).Get(id[:]) != nil
				return nil
			}); err != nil || have {
				return err // recorded by this rebuild already
			}
		}
		got, size, head, err := hashFile(path, rb.buf)
		if err != nil {
			return fmt.Errorf("blobstore: hash %s: %w", path, err)
		}
		if got != id {
			rb.rep.Quarantined++
			rb.rep.QuarantinedBytes += size
			return rb.quarantine(path, "its bytes do not hash to its name")
		}
		rb.rep.Verified++
		rb.rep.VerifiedBytes += size
		u := UnconfirmedBlob{ID: id, Size: size, Since: time.Now()}
		if rb.opts.Sniff != nil {
			u.ContentType = rb.opts.Sniff(head)
		}
		rb.batch = append(rb.batch, rebuildItem{u: u, path: path})
		if len(rb.batch) >= rebuildBatch {
			if err := rb.flush(); err != nil {
				return err
			}
		}
		if rb.opts.Progress != nil && time.Since(rb.lastProgress) >= rb.opts.ProgressEvery {
			rb.lastProgress = time.Now()
			rep := *rb.rep
			rep.Took = time.Since(rb.start)
			rb.opts.Progress(rep)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("blobstore: rebuild: %w", err)
	}
	return nil
}

// flush commits the batch's entries, then moves its files into
// unconfirmed/ and fsyncs each directory touched once: an entry is
// always durable before its file moves.
func (rb *rebuilder) flush() error {
	if len(rb.batch) == 0 {
		return nil
	}
	err := rb.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUnconfirmed)
		for _, it := range rb.batch {
			if err := b.Put(it.u.ID[:], encodeUnconfirmed(it.u)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return diskErr("commit metadata", err)
	}
	root := filepath.Join(rb.dir, unconfirmedDir)
	dirs := map[string]bool{}
	for _, it := range rb.batch {
		dst := filepath.Join(root, shardPath(it.u.ID))
		if it.path == dst {
			continue
		}
		if exists(dst) {
			// A copy is there already (from before the damage): keep
			// the one that is verified now, set the other aside.
			if _, err := quarantineFile(rb.dir, dst); err != nil {
				return err
			}
			rb.opts.Logger.Warn("an older copy of a blob in unconfirmed/ was moved to quarantine/", "id", it.u.ID.String())
		}
		if err := ensureDirIn(root, shardPath(it.u.ID)); err != nil {
			return err
		}
		if err := os.Rename(it.path, dst); err != nil {
			return diskErr("move blob file", err)
		}
		dirs[filepath.Dir(it.path)], dirs[filepath.Dir(dst)] = true, true
	}
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return diskErr("fsync directory", err)
		}
	}
	rb.batch = rb.batch[:0]
	return nil
}

func (rb *rebuilder) quarantine(path, why string) error {
	dst, err := quarantineFile(rb.dir, path)
	if err != nil {
		return err
	}
	rb.opts.Logger.Warn("moved to quarantine/: "+why, "from", path, "to", dst)
	return nil
}
