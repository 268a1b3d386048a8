package blobstore

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// Unconfirmed blobs.
//
// A blob file the node has no record of is never deleted: its metadata
// may have been lost (a missing or damaged meta.db, rebuilt by Rebuild),
// or it was an upload cut before its commit (never acknowledged, found
// after a crash). Either way the node cannot tell whether the cluster
// wants it. Such a file is verified (its bytes hash to its name; if not it
// goes to quarantine/), moved out of blobs/ (which holds only blobs the
// node serves: nginx may serve that directory) into
// <dir>/unconfirmed/ab/cd/<id>, and recorded as unconfirmed. An
// unconfirmed blob has no record: to readers, to anti-entropy and to the
// change feed it does not exist, so it is never served, pushed or
// offered. Package peer resolves each one: with a state some peer holds
// (ResolveUnconfirmed), or, on a node without peers, as a new upload
// (AdoptUnconfirmed). One no peer knows stays where it is, for the
// operator.
//
// Order of operations, so that a crash at any point leaves a state the
// next start's reconcile understands: an entry is recorded before its
// file is moved into unconfirmed/, and a file is moved back into blobs/
// before the record that adopts it is committed (the commit drops the
// entry). Every file in unconfirmed/ therefore has an entry, except after
// a crash, which reconcile repairs.

// bucketUnconfirmed maps an ID to its unconfirmed entry.
var bucketUnconfirmed = []byte("unconfirmed")

// bucketAside maps the ID of an unconfirmed blob a block set aside (see
// recordDeny) to the state of the upload it was: the state it gets back
// once the block is lifted. Its entries come and go with the unconfirmed
// ones.
var bucketAside = []byte("aside")

// aside returns the upload state set aside with id's unconfirmed copy.
func (t *txn) aside(id dtfc.ID) (dtfc.State, bool, error) {
	return getAside(t.tx, id)
}

func getAside(tx *bolt.Tx, id dtfc.ID) (dtfc.State, bool, error) {
	v := tx.Bucket(bucketAside).Get(id[:])
	if v == nil {
		return dtfc.State{}, false, nil
	}
	r, err := decodeRecord(id[:], v)
	if err != nil {
		return dtfc.State{}, false, fmt.Errorf("set-aside state of %s: %w", id, err)
	}
	return r.State, true, nil
}

// asideState returns the upload state set aside with id's unconfirmed
// copy, if a block set it aside.
func (s *Store) asideState(id dtfc.ID) (st dtfc.State, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) (err error) {
		st, ok, err = getAside(tx, id)
		return err
	})
	return st, ok, err
}

// keepAside records st as the state of st.ID's unconfirmed copy, unless
// a newer one is recorded already. The caller holds the ID's lock.
func (s *Store) keepAside(st dtfc.State) error {
	return s.update(func(t *txn) error {
		old, ok, err := t.aside(st.ID)
		if err != nil || (ok && !st.Newer(old)) {
			return err
		}
		return t.putAside(st)
	})
}

// putAside records st as the upload st.ID's unconfirmed copy was.
func (t *txn) putAside(st dtfc.State) error {
	r := record{State: st}
	return t.tx.Bucket(bucketAside).Put(st.ID[:], r.encode())
}

// dropUnconfirmed removes id's unconfirmed entry and set-aside state.
func (t *txn) dropUnconfirmed(id dtfc.ID) error {
	if err := t.tx.Bucket(bucketUnconfirmed).Delete(id[:]); err != nil {
		return err
	}
	return t.tx.Bucket(bucketAside).Delete(id[:])
}

// unconfirmedDir is the directory, under the store's, of unconfirmed blobs.
const unconfirmedDir = "unconfirmed"

// UnconfirmedBlob is a verified blob file whose state the node does not
// know (see the package's README section "When the metadata is damaged").
type UnconfirmedBlob struct {
	ID   dtfc.ID
	Size int64
	// ContentType is a guess from the bytes when the entry was made, or
	// "".
	ContentType string
	// Since is when the entry was made.
	Since time.Time
	// Clock is the clock its file's modification time records (see
	// filetime.go): when the operation that made it live happened, as
	// far as the file can tell; 0 if it cannot. It is read from the file,
	// not kept in the entry.
	Clock dtfc.Timestamp
}

const unconfirmedVersion = 1

func encodeUnconfirmed(u UnconfirmedBlob) []byte {
	b := []byte{unconfirmedVersion}
	b = binary.AppendUvarint(b, uint64(u.Size))
	b = binary.AppendVarint(b, u.Since.UnixNano())
	b = binary.AppendUvarint(b, uint64(len(u.ContentType)))
	return append(b, u.ContentType...)
}

func decodeUnconfirmed(id, b []byte) (UnconfirmedBlob, error) {
	var u UnconfirmedBlob
	if len(id) != dtfc.IDLen || len(b) < 1 || b[0] != unconfirmedVersion {
		return u, errBadRecord
	}
	copy(u.ID[:], id)
	b = b[1:]
	size, n := binary.Uvarint(b)
	if n <= 0 || size > 1<<62 {
		return u, errBadRecord
	}
	b = b[n:]
	since, n := binary.Varint(b)
	if n <= 0 {
		return u, errBadRecord
	}
	b = b[n:]
	l, n := binary.Uvarint(b)
	if n <= 0 || uint64(len(b)-n) != l {
		return u, errBadRecord
	}
	u.Size, u.Since, u.ContentType = int64(size), time.Unix(0, since), string(b[n:])
	return u, nil
}

// UnconfirmedNews returns a channel closed when an unconfirmed blob may
// be decided by what the cluster knows, where nothing in the store would
// decide it: a block whose tombstone was forgotten was lifted, and the
// upload it set aside has no record to come back under (liftSetAside).
func (s *Store) UnconfirmedNews() <-chan struct{} { return s.unconfirmedNews.Wait() }

// UnconfirmedCount returns the number of unconfirmed blobs.
func (s *Store) UnconfirmedCount() int64 { return s.unconfirmed.Load() }

// Unconfirmed returns up to limit unconfirmed blobs whose IDs come after
// after (the zero ID: from the first), in ID order.
func (s *Store) Unconfirmed(after dtfc.ID, limit int) ([]UnconfirmedBlob, error) {
	var out []UnconfirmedBlob
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketUnconfirmed).Cursor()
		k, v := c.First()
		if !after.IsZero() {
			if k, v = c.Seek(after[:]); k != nil && string(k) == string(after[:]) {
				k, v = c.Next()
			}
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			u, err := decodeUnconfirmed(k, v)
			if err != nil {
				return fmt.Errorf("unconfirmed entry %x: %w", k, err)
			}
			u.Clock = s.fileStateClock(s.UnconfirmedPath(u.ID))
			out = append(out, u)
		}
		return nil
	})
	return out, err
}

// UnconfirmedPath returns where the file of unconfirmed blob id lives.
func (s *Store) UnconfirmedPath(id dtfc.ID) string {
	return filepath.Join(s.dir, unconfirmedDir, shardPath(id))
}

// UnconfirmedOutcome is what ResolveUnconfirmed or AdoptUnconfirmed did.
type UnconfirmedOutcome int

const (
	// UnconfirmedPending: nothing decides the blob yet; it stays.
	UnconfirmedPending UnconfirmedOutcome = iota
	// UnconfirmedAdopted: recorded as a present blob under the state
	// given (or a new one) and moved back into blobs/; the record is in
	// the change feed.
	UnconfirmedAdopted
	// UnconfirmedDeleted: a tombstone won; it is recorded (and in the
	// change feed) and the file removed.
	UnconfirmedDeleted
	// UnconfirmedSettled: the node's own record decided (a copy of a
	// blob it holds is dropped, one it lacks is put back, one it holds a
	// tombstone for is removed), or the ID is blocked, or the file was
	// gone.
	UnconfirmedSettled
	// UnconfirmedNone: the ID is not unconfirmed.
	UnconfirmedNone
	// UnconfirmedBlocked: the node records the blob as present, but its
	// ID is blocked: the bytes a block set aside (see applyDeny) stay
	// aside until the lift.
	UnconfirmedBlocked
)

func (o UnconfirmedOutcome) String() string {
	return [...]string{"pending", "adopted", "deleted", "settled", "none", "blocked"}[o]
}

// ResolveUnconfirmed decides unconfirmed blob id with st, a state of id
// that another node holds (nil if none is known). The winner under the
// last-writer-wins rule between st and the node's own record, if any,
// decides: a present state is adopted (recorded with its clock and node,
// the file moved back into blobs/: nothing is downloaded), a tombstone is
// applied and the file removed; the node's own record settles the copy.
// With no record and st nil it does nothing (UnconfirmedPending).
func (s *Store) ResolveUnconfirmed(id dtfc.ID, st *dtfc.State) (UnconfirmedOutcome, error) {
	if st != nil && st.ID != id {
		return UnconfirmedPending, fmt.Errorf("blobstore: resolve %s with a state of %s", id, st.ID)
	}
	if st != nil {
		// A peer's state: its clock is bounded like any remote state's.
		if err := s.checkClock(st.Clock); err != nil {
			return UnconfirmedPending, err
		}
	}
	return s.resolve(id, func(UnconfirmedBlob, bool) *dtfc.State { return st })
}

// OldestClock is the clock an adopted unconfirmed blob gets when its
// file does not say when it was made live (UnconfirmedBlob.Clock is 0):
// older than any operation any node made, so that any delete (or upload)
// of its ID the cluster still knows of wins over it wherever they meet.
const OldestClock dtfc.Timestamp = 1

// FileState is the state unconfirmed blob u's file tells of: the upload
// it was, for a copy a block set aside (see recordDeny; recorded is then
// true: this node recorded that upload, its file is no stray); otherwise
// present, made by this node at u.Clock, or OldestClock if the file
// cannot say.
func (s *Store) FileState(u UnconfirmedBlob) (st dtfc.State, recorded bool) {
	if st, ok, err := s.asideState(u.ID); err == nil && ok && st.Size == u.Size {
		return st, true
	}
	c := u.Clock
	if c == 0 {
		c = OldestClock
	}
	return dtfc.State{ID: u.ID, Clock: c, Node: s.node, Size: u.Size, ContentType: u.ContentType}, false
}

// AdoptUnconfirmed records unconfirmed blob id under the state its file
// tells of (FileState), for a node whose peers (if any) all answered that
// they know nothing of it: an upload it took and never passed on before
// its metadata was lost, which must not be lost in its turn. If the node
// has a record of id, that record settles the copy instead.
func (s *Store) AdoptUnconfirmed(id dtfc.ID) (UnconfirmedOutcome, error) {
	return s.resolve(id, func(u UnconfirmedBlob, hasLocal bool) *dtfc.State {
		if hasLocal {
			return nil
		}
		st, _ := s.FileState(u)
		return &st
	})
}

// resolve decides unconfirmed blob id under its lock with the state that
// state returns (given the entry and whether the node has a record of id).
func (s *Store) resolve(id dtfc.ID, state func(u UnconfirmedBlob, hasLocal bool) *dtfc.State) (UnconfirmedOutcome, error) {
	leave, err := s.enter()
	if err != nil {
		return UnconfirmedPending, err
	}
	defer leave()
	defer s.locks.lock(id)()
	u, ok, err := s.unconfirmedEntry(id)
	if err != nil || !ok {
		return UnconfirmedNone, err
	}
	src := s.UnconfirmedPath(id)
	if _, err := os.Lstat(src); errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("an unconfirmed blob's file is gone (removed by hand?); forgetting it", "id", id.String(), "path", src)
		return UnconfirmedSettled, s.dropUnconfirmed(id, "")
	} else if err != nil {
		return UnconfirmedPending, fmt.Errorf("blobstore: unconfirmed %s: %w", id, err)
	}
	local, hasLocal, err := s.record(id)
	if err != nil {
		return UnconfirmedPending, err
	}
	st := state(u, hasLocal)
	if st != nil && (!hasLocal || st.Newer(local.State)) {
		if !st.Deleted && st.Size != u.Size {
			return UnconfirmedPending, fmt.Errorf("blobstore: unconfirmed %s: the state says %d bytes, the file has %d", id, st.Size, u.Size)
		}
		s.clock.Observe(st.Clock)
		if st.Deleted {
			return s.unconfirmedTombstone(id, *st)
		}
		if s.checkDenied(id) != nil {
			// Blocked: the bytes stay aside, never served, until a lift
			// (or a delete) decides them; the lift may be on its way.
			// st is what they are: the state a lift puts them back under.
			return UnconfirmedBlocked, s.keepAside(*st)
		}
		if !s.DenyKnown() {
			// Likewise while the deny list is not known (metadata
			// rebuilt): a block of them may be what is missing from it
			// (MarkDenyKnown wakes the resolver, which decides again;
			// TestRebuiltNodeAdoptsNoBlockedUpload). Nothing is recorded:
			// st may be a stray file's guess, not a state to trust later.
			return UnconfirmedBlocked, nil
		}
		return s.adoptFile(id, *st)
	}
	if hasLocal {
		return s.settleByRecord(id, local)
	}
	return UnconfirmedPending, nil
}

func (s *Store) unconfirmedEntry(id dtfc.ID) (u UnconfirmedBlob, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUnconfirmed).Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		u, err = decodeUnconfirmed(id[:], v)
		u.Clock = s.fileStateClock(s.UnconfirmedPath(id))
		return err
	})
	return u, ok, err
}

// dropUnconfirmed removes the file at src (if src is not "") and then
// the entry. The caller holds the ID's lock.
func (s *Store) dropUnconfirmed(id dtfc.ID, src string) error {
	if src != "" {
		if err := removeDurably(src); err != nil {
			return err
		}
	}
	err := s.update(func(t *txn) error { return t.dropUnconfirmed(id) })
	if err != nil {
		return err
	}
	s.unconfirmed.Add(-1)
	return nil
}

// settleByRecord lets the node's own record decide: the copy of a blob
// it holds, or has a tombstone for, goes; one it lacks is put back. But a
// copy a block set aside (see recordDeny) of an upload newer than the
// tombstone (the block's, or a delete older than that upload) is not the
// tombstone's to settle: the upload is the last writer. It stays aside
// while the ID is blocked, and is adopted as that upload once the block
// is lifted.
func (s *Store) settleByRecord(id dtfc.ID, local record) (UnconfirmedOutcome, error) {
	src := s.UnconfirmedPath(id)
	if local.Deleted {
		aside, ok, err := s.asideState(id)
		if err != nil {
			return UnconfirmedPending, err
		}
		if ok && aside.Newer(local.State) {
			if s.checkDenied(id) != nil {
				return UnconfirmedBlocked, nil
			}
			return s.adoptFile(id, aside)
		}
	}
	if local.Deleted || local.Evicted || s.fileExists(id) {
		// (A tier's evicted blob is held by its archive: read back on demand.)
		return UnconfirmedSettled, s.dropUnconfirmed(id, src)
	}
	if s.checkDenied(id) != nil {
		return UnconfirmedBlocked, nil
	}
	if err := s.moveIn(id); err != nil {
		return UnconfirmedPending, err
	}
	return UnconfirmedSettled, s.dropUnconfirmed(id, "")
}

// adoptFile moves the file back into blobs/ (unless a copy is there
// already) and commits st, dropping the entry in the same transaction.
func (s *Store) adoptFile(id dtfc.ID, st dtfc.State) (UnconfirmedOutcome, error) {
	src := s.UnconfirmedPath(id)
	held := s.fileExists(id)
	if !held {
		if err := s.moveIn(id); err != nil {
			return UnconfirmedPending, err
		}
	}
	err := s.update(func(t *txn) error {
		if _, err := t.replace(st, true); err != nil {
			return err
		}
		return t.dropUnconfirmed(id)
	})
	if err != nil {
		if !held {
			// Back out of blobs/: nothing unrecorded stays visible.
			if rerr := moveDurably(s.Path(id), src); rerr != nil {
				s.log.Error("could not move an unconfirmed blob back out of blobs/", "id", id.String(), "err", rerr)
			}
		}
		return UnconfirmedPending, err
	}
	s.unconfirmed.Add(-1)
	s.stampFile(s.Path(id), st.Clock)
	if held {
		if err := removeDurably(src); err != nil {
			return UnconfirmedAdopted, err
		}
	}
	s.noteWrite(id, st.Size)
	return UnconfirmedAdopted, nil
}

// unconfirmedTombstone commits the tombstone st (dropping the entry in the
// same transaction), then removes the file and any copy in blobs/.
func (s *Store) unconfirmedTombstone(id dtfc.ID, st dtfc.State) (UnconfirmedOutcome, error) {
	// The tombstone's commit drops the entry and then the file (txn.set).
	err := s.update(func(t *txn) error {
		_, err := t.replace(st, true)
		return err
	})
	if err != nil {
		return UnconfirmedPending, err
	}
	return UnconfirmedDeleted, s.removeFile(id)
}

// moveAside moves the file at path, blob id's bytes, to its place in
// unconfirmed/, whose entry the caller recorded first.
func (s *Store) moveAside(path string, id dtfc.ID) error {
	if err := ensureDirIn(filepath.Join(s.dir, unconfirmedDir), shardPath(id)); err != nil {
		return err
	}
	return moveDurably(path, s.UnconfirmedPath(id))
}

// moveIn moves the unconfirmed file of id into its place in blobs/.
func (s *Store) moveIn(id dtfc.ID) error {
	if err := s.ensureShard(id); err != nil {
		return err
	}
	return moveDurably(s.UnconfirmedPath(id), s.Path(id))
}

// moveDurably renames src to dst and fsyncs both directories, so that
// after a crash the file is in one place or the other, not both or none.
func moveDurably(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		return diskErr("move blob file", err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return diskErr("fsync directory", err)
	}
	return diskErr("fsync directory", syncDir(filepath.Dir(src)))
}

// removeDurably unlinks path (already gone is fine) and fsyncs its
// directory.
func removeDurably(path string) error {
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return diskErr("remove file", err)
	}
	return diskErr("fsync directory", syncDir(filepath.Dir(path)))
}

// ensureDirIn creates the shard directories of rel's parent under root
// (0755, against the umask), fsyncing each new directory's parent.
func ensureDirIn(root, rel string) error {
	parent := root
	dir := filepath.Dir(rel)
	if dir == "." {
		return nil
	}
	for _, part := range splitPath(dir) {
		d := filepath.Join(parent, part)
		err := checkRealDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			if err = os.Mkdir(d, 0o755); err == nil {
				if err = os.Chmod(d, 0o755); err == nil {
					err = syncDir(parent)
				}
			} else if errors.Is(err, fs.ErrExist) {
				err = checkRealDir(d)
			}
		}
		if err != nil {
			return diskErr("create directory", err)
		}
		parent = d
	}
	return nil
}

func splitPath(p string) []string {
	var parts []string
	for p != "." && p != "/" && p != "" {
		parts = append([]string{filepath.Base(p)}, parts...)
		p = filepath.Dir(p)
	}
	return parts
}

// quarantineFile moves the file at path into dir's quarantine/, named
// after it and the time, fsyncing both directories; it returns the new
// path. Nothing there is ever read again by the store: it is kept for the
// operator.
func quarantineFile(dir, path string) (string, error) {
	qdir := filepath.Join(dir, "quarantine")
	if err := os.MkdirAll(qdir, 0o755); err != nil {
		return "", diskErr("create quarantine directory", err)
	}
	dst := filepath.Join(qdir, fmt.Sprintf("%s.%d", filepath.Base(path), time.Now().UnixNano()))
	return dst, moveDurably(path, dst)
}

// hashFile streams the file at path through SHA-512 with buf and returns
// the ID its bytes hash to and its size.
func hashFile(path string, buf []byte) (dtfc.ID, int64, []byte, error) {
	var id dtfc.ID
	f, err := os.Open(path)
	if err != nil {
		return id, 0, nil, err
	}
	defer f.Close()
	h := sha512.New()
	var head []byte
	var n int64
	for {
		k, err := f.Read(buf)
		if k > 0 {
			h.Write(buf[:k])
			if len(head) < 512 {
				head = append(head, buf[:min(k, 512-len(head))]...)
			}
			n += int64(k)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return id, n, head, err
		}
	}
	copy(id[:], h.Sum(nil))
	return id, n, head, nil
}
