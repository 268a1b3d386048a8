package blobstore

import (
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/dtfc/dtfc"
)

// WriterOptions configure a Writer.
type WriterOptions struct {
	// MaxBytes makes writes beyond this many bytes fail with ErrTooLarge.
	// If zero, there is no limit.
	MaxBytes int64
	// Size, if known (above zero), is checked against the free space
	// first: NewWriter fails with ErrNoSpace rather than fill the disk.
	Size int64
	// Progress, if set, is called with the number of bytes that have
	// reached the temp file, after each write. Readers of a transfer in
	// progress (ReadAt) use it to wait for data.
	Progress func(written int64)
}

// Writer receives the bytes of one blob into a temp file under the store,
// hashing them as they arrive. Commit places them; Close releases the
// Writer and, if nothing was committed, removes the temp file. A Writer is
// used by one goroutine, except ReadAt, which may be called concurrently.
type Writer struct {
	s        *Store
	f        *os.File
	tmp      string
	h        hash.Hash
	n        int64 // bytes accepted
	written  atomic.Int64
	synced   int64 // bytes whose writeback was started (writer stage only)
	opts     WriterOptions
	head     []byte
	err      error
	sum      dtfc.ID
	finished bool
	placed   bool // the temp file is gone: linked into blobs/ and committed, or not needed
	closed   bool
	partial  *partialTransfer // a resumable transfer's (see partial.go)
}

const (
	bufSize  = 256 << 10
	pipeBufs = 4
	headSize = 512 // what http.DetectContentType looks at
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// NewWriter starts a blob: a temp file, created exclusively, on the same
// filesystem as blobs/ so that placing it is a rename.
func (s *Store) NewWriter(opts WriterOptions) (*Writer, error) {
	leave, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	if err := s.checkSpace(opts.Size); err != nil {
		return nil, err
	}
	return s.newWriter(opts)
}

func (s *Store) newWriter(opts WriterOptions) (*Writer, error) {
	f, err := os.CreateTemp(s.tmpDir, "blob-*")
	if err != nil {
		return nil, diskErr("create temp file", err)
	}
	return &Writer{s: s, f: f, tmp: f.Name(), h: sha512.New(), opts: opts}, nil
}

// accept accounts for p before it is hashed and written.
func (w *Writer) accept(p []byte) error {
	if w.opts.MaxBytes > 0 && w.n+int64(len(p)) > w.opts.MaxBytes {
		return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, w.opts.MaxBytes)
	}
	if len(w.head) < headSize {
		k := min(headSize-len(w.head), len(p))
		w.head = append(w.head, p[:k]...)
	}
	w.n += int64(len(p))
	return nil
}

// writebackChunk is how much written data may wait before the kernel is
// asked to start writing it back.
const writebackChunk = 8 << 20

func (w *Writer) wrote(n int) {
	v := w.written.Add(int64(n))
	if v-w.synced >= writebackChunk {
		startWriteback(w.f, w.synced, v-w.synced)
		w.synced = v
	}
	if w.opts.Progress != nil {
		w.opts.Progress(v)
	}
}

// Write hashes p and appends it to the temp file.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.finished {
		return 0, errors.New("blobstore: write after commit")
	}
	if err := w.accept(p); err != nil {
		w.err = err
		return 0, err
	}
	w.h.Write(p)
	n, err := w.f.Write(p)
	if n > 0 {
		w.wrote(n)
	}
	if err != nil {
		w.err = diskErr("write temp file", err)
		return n, w.err
	}
	return n, nil
}

// ReadFrom copies r into the blob until EOF. Reading, hashing and writing
// run as a three-stage pipeline over a few fixed buffers, so a large upload
// costs about one SHA-512 pass on one core while the socket and the disk
// are served on another; memory stays a few buffers whatever the size.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.finished {
		return 0, errors.New("blobstore: write after commit")
	}
	start := w.n
	first := bufPool.Get().(*[]byte)
	n, err := r.Read(*first)
	if err == io.EOF {
		// The whole body came in one read: not worth two goroutines.
		_, werr := w.Write((*first)[:n])
		bufPool.Put(first)
		return w.n - start, werr
	}
	if err != nil {
		bufPool.Put(first)
		return 0, w.sourceErr(err)
	}

	p := newPipeline(first)
	defer p.release()
	go p.hash(w.h)
	go p.write(w)
	rerr, fromR := p.read(w, r, chunk{first, n})
	close(p.toHash)
	werr := <-p.writeErr
	switch {
	case werr != nil:
		w.err = diskErr("write temp file", werr)
	case rerr != nil && fromR:
		return w.n - start, w.sourceErr(rerr)
	case rerr != nil:
		w.err = rerr
	}
	return w.n - start, w.err
}

// sourceErr handles an error of ReadFrom's reader. It ends a plain
// Writer's write (a cut upload must never be committed as a shorter
// blob); a resumable one stays usable at Size, every byte taken before
// the error hashed and written, so that the transfer may go on from
// another source (its commit still needs the whole blob's ID).
func (w *Writer) sourceErr(err error) error {
	if w.partial == nil {
		w.err = err
	}
	return err
}

// chunk is a buffer of the pipeline and the bytes read into it.
type chunk struct {
	b *[]byte
	n int
}

// pipeline carries ReadFrom's buffers from the reader (read) to the hasher
// (hash) to the writer of the temp file (write), which frees them for the
// reader again.
type pipeline struct {
	bufs     []*[]byte // all of them, back to bufPool at the end
	free     chan *[]byte
	toHash   chan chunk // closed by the reader at its end
	toWrite  chan chunk // closed by the hasher at its end
	abort    chan struct{}
	writeErr chan error // the writer's first error (or nil), at its end
}

// newPipeline gets the pipeline's buffers (first, read already, and
// pipeBufs-1 free ones).
func newPipeline(first *[]byte) *pipeline {
	p := &pipeline{bufs: []*[]byte{first}, free: make(chan *[]byte, pipeBufs)}
	for i := 1; i < pipeBufs; i++ {
		b := bufPool.Get().(*[]byte)
		p.bufs = append(p.bufs, b)
		p.free <- b
	}
	p.toHash = make(chan chunk, pipeBufs)
	p.toWrite = make(chan chunk, pipeBufs)
	p.abort = make(chan struct{})
	p.writeErr = make(chan error, 1)
	return p
}

// release gives the buffers back to bufPool, once the pipeline is done.
func (p *pipeline) release() {
	for _, b := range p.bufs {
		bufPool.Put(b)
	}
}

// hash feeds the chunks to h, then passes them to the writer.
func (p *pipeline) hash(h hash.Hash) {
	for c := range p.toHash {
		h.Write((*c.b)[:c.n])
		p.toWrite <- c
	}
	close(p.toWrite)
}

// write writes the chunks to w's temp file and frees them; after a failed
// write it aborts the reader and only frees the chunks still coming.
func (p *pipeline) write(w *Writer) {
	var werr error
	for c := range p.toWrite {
		if werr == nil {
			var k int
			k, werr = w.f.Write((*c.b)[:c.n])
			if k > 0 {
				w.wrote(k)
			}
			if werr != nil {
				close(p.abort)
			}
		}
		p.free <- c.b
	}
	p.writeErr <- werr
}

// read accepts c, sends it to the hasher, and reads r into the next free
// buffer, until EOF, an error of r (fromR) or of accept, or the writer's
// abort.
func (p *pipeline) read(w *Writer, r io.Reader, c chunk) (err error, fromR bool) {
	for {
		if err := w.accept((*c.b)[:c.n]); err != nil {
			p.free <- c.b
			return err, false
		}
		p.toHash <- c
		var b *[]byte
		select {
		case b = <-p.free:
		case <-p.abort:
		}
		if b == nil {
			return nil, false
		}
		k, err := r.Read(*b)
		c = chunk{b, k}
		if err == nil {
			continue
		}
		if k > 0 {
			// Bytes that came with the error (or with EOF) count.
			if aerr := w.accept((*b)[:k]); aerr != nil {
				p.free <- b
				return aerr, false
			}
			p.toHash <- c
		} else {
			p.free <- b
		}
		if err == io.EOF {
			return nil, false
		}
		return err, true
	}
}

// ReadAt reads bytes already written to the temp file (see
// WriterOptions.Progress). It may be called while writing continues, and
// after Commit until Close.
func (w *Writer) ReadAt(p []byte, off int64) (int, error) { return w.f.ReadAt(p, off) }

// Size returns the number of bytes written so far.
func (w *Writer) Size() int64 { return w.n }

// Head returns up to the first 512 bytes, for content sniffing.
func (w *Writer) Head() []byte { return w.head }

// ID returns the SHA-512 of the bytes, once Commit has been called.
func (w *Writer) ID() dtfc.ID { return w.sum }

// Sum returns the SHA-512 of the bytes written so far, without ending the
// write. A transfer uses it to release its readers as soon as the bytes
// are known good, before the fsync of Commit.
func (w *Writer) Sum() dtfc.ID {
	var id dtfc.ID
	copy(id[:], w.h.Sum(nil))
	return id
}

// finish seals the temp file: hash checked against want (unless zero).
// Its data is made durable only if it is to be placed (sync, by place or
// CommitBatch): bytes that turn out to be held already, or a state that
// lost, cost no fsync.
func (w *Writer) finish(want dtfc.ID) error {
	if w.err != nil {
		return w.err
	}
	if w.finished {
		return errors.New("blobstore: commit called twice")
	}
	w.waitCheckpoint() // its error is the commit's; and place renames the file
	if w.err != nil {
		return w.err
	}
	w.finished = true
	copy(w.sum[:], w.h.Sum(nil))
	if !want.IsZero() && want != w.sum {
		w.err = &MismatchError{Want: want, Got: w.sum}
		return w.err
	}
	if err := w.f.Chmod(0o644); err != nil {
		w.err = diskErr("chmod temp file", err)
		return w.err
	}
	return nil
}

// sync makes the temp file's data durable, before it is placed. An fsync
// error is fatal for this write and never retried: after a failed fsync
// the page cache may claim data the disk lost.
func (w *Writer) sync() error {
	if err := w.f.Sync(); err != nil {
		w.err = diskErr("fsync temp file", err)
		return w.err
	}
	return nil
}

// Close releases the Writer. If its bytes were not committed, the temp
// file is removed: a failed or abandoned upload leaves nothing behind.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.waitCheckpoint() // it uses the file
	err := w.f.Close()
	if w.partial != nil {
		w.closePartial()
		return err
	}
	if !w.placed {
		if rerr := os.Remove(w.tmp); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// Upload describes a local upload for Commit.
type Upload struct {
	// Expected is the ID the client announced; if non-zero and the bytes
	// hash otherwise, Commit fails with ErrDigestMismatch.
	Expected    dtfc.ID
	ContentType string
	Filename    string
}

// Result tells what a commit did.
type Result struct {
	// State is the ID's state after the commit.
	State dtfc.State
	// Created is true if the bytes were not held before and are now.
	Created bool
	// Applied is false if the commit changed nothing (a remote state that
	// lost to the local one).
	Applied bool
	// Seq is the change-feed sequence number of the new state (0 if it is
	// not in the feed).
	Seq uint64
}

// Commit records the bytes as an upload to this node: a new operation with
// a fresh clock reading, which wins over every state this node has seen, so
// an upload after a delete stores the file again. Uploading bytes the node
// already holds changes no file but still records the newer operation.
func (w *Writer) Commit(u Upload) (Result, error) {
	if err := w.finish(u.Expected); err != nil {
		return Result{}, err
	}
	if !w.s.DenyKnown() {
		w.err = ErrDenyUnknown
		return Result{}, w.err
	}
	if err := w.s.afterAhead(w.sum); err != nil {
		w.err = err
		return Result{}, err
	}
	return w.place(func(*record, bool) (dtfc.State, bool, bool) {
		return dtfc.State{
			ID:          w.sum,
			Clock:       w.s.clock.Now(),
			Node:        w.s.node,
			Size:        w.n,
			ContentType: u.ContentType,
			Filename:    u.Filename,
		}, true, true
	})
}

// CommitState records the bytes under a state received from another node,
// if that state wins over the local one (otherwise Result.Applied is false
// and nothing changes). With toFeed false the change stays out of the
// change feed: a cache's fill, which no other node needs to hear about.
func (w *Writer) CommitState(st dtfc.State, toFeed bool) (Result, error) {
	decide, err := w.sealState(st, toFeed)
	if err != nil {
		return Result{}, err
	}
	return w.place(decide)
}

// decideFunc is how a commit decides, under the ID's lock, what to
// record: it sees the current record (nil if none) and whether its bytes
// are held, and returns the new state, whether to apply it, and whether
// it enters the feed.
type decideFunc func(old *record, held bool) (st dtfc.State, apply, toFeed bool)

// sealState checks the bytes against st, a state received from another
// node, and returns how CommitState decides whether st wins.
func (w *Writer) sealState(st dtfc.State, toFeed bool) (decideFunc, error) {
	if st.Deleted {
		return nil, errors.New("blobstore: CommitState of a tombstone")
	}
	if st.ID.IsZero() {
		return nil, errors.New("blobstore: CommitState of a state without an ID")
	}
	if err := w.finish(st.ID); err != nil {
		return nil, err
	}
	if st.Size != w.n {
		w.err = fmt.Errorf("blobstore: state says %d bytes, received %d", st.Size, w.n)
		return nil, w.err
	}
	if err := w.s.checkClock(st.Clock); err != nil {
		w.err = w.s.noteAhead(st.ID, err)
		return nil, w.err
	}
	w.s.clock.Observe(st.Clock)
	return func(old *record, held bool) (dtfc.State, bool, bool) {
		// The same upload whose file is missing is placed again: a
		// record without its bytes is repaired by any copy of them.
		if old != nil && !st.Newer(old.State) && !(sameUpload(st, old.State) && !held) {
			return old.State, false, false
		}
		// Read here, under the ID's lock, as Apply does: read before it
		// (a batch seals every item, then takes their locks), it would
		// miss a tombstone forgotten in between, and the late copy of
		// the deleted upload would be recorded again
		// (TestLateCopyWhileTombstoneForgotten).
		if old == nil && st.Clock <= w.s.forgottenClock('S', st.ID) {
			return st, false, false // deleted, and the delete forgotten here lately
		}
		return st, true, toFeed
	}, nil
}

// place commits under the ID's lock what decide makes of the current
// record (see decideFunc).
func (w *Writer) place(decide decideFunc) (res Result, err error) {
	s := w.s
	leave, err := s.enter()
	if err != nil {
		return res, err
	}
	defer leave()
	id := w.sum
	defer s.locks.lock(id)()
	d, err := s.decide(id, decide)
	if err != nil || !d.apply {
		return Result{State: d.st}, err
	}
	// To be placed: the bytes durable before anything names them. Held
	// already, they replace the file there: that file may have rotted
	// since it was written (the scrubber has not seen it yet), and these
	// bytes hash to the ID (TestReuploadReplacesCorruptHeldFile).
	if err := w.sync(); err != nil {
		return res, err
	}
	dst := s.Path(id)
	// On its way to the committer, which waits a little for it (and the
	// others) rather than commit each alone. It arrives once its record
	// is queued, or when place returns without queuing it.
	s.placing.start()
	arrived := false
	arrive := func() {
		if !arrived {
			arrived = true
			s.placing.arrive()
		}
	}
	defer arrive()
	if !d.held {
		if err := s.ensureShard(id); err != nil {
			return res, err
		}
		if err := w.nameIntent(d.st.Clock); err != nil {
			return res, err
		}
		if err := w.link(dst); err != nil {
			return res, err
		}
		if err := syncDir(filepath.Dir(dst)); err != nil {
			// The link may not be durable: take the file back out so
			// nothing unrecorded stays visible.
			os.Remove(dst)
			return res, diskErr("fsync blob directory", err)
		}
	}
	if d.held {
		if err := w.replace(dst); err != nil {
			return res, err
		}
	}
	var nr record
	err = s.updateThen(func(t *txn) error {
		var err error
		nr, err = t.commit(d)
		return err
	}, arrive)
	if err != nil {
		if !d.held {
			os.Remove(dst)
		}
		return res, err
	}
	return w.fulfilled(d, nr), nil
}

// decision is what a commit found and decided under the ID's lock.
type decision struct {
	st     dtfc.State
	apply  bool
	toFeed bool
	held   bool // the ID's bytes are in blobs/ already
	// refill: st is the upload a tier evicted the bytes of; the record
	// is only marked held again (see txn.commit).
	refill bool
}

// decide runs fn over id's current record. The caller holds the ID's
// lock, and keeps it until the commit: ApplyDeny takes it too (checked
// here, so a block and an upload cannot interleave), and nothing else
// changes the record meanwhile.
func (s *Store) decide(id dtfc.ID, fn decideFunc) (decision, error) {
	if err := s.checkDenied(id); err != nil {
		return decision{}, err
	}
	old, ok, err := s.record(id)
	if err != nil {
		return decision{}, err
	}
	var oldp *record
	if ok {
		oldp = &old
	}
	held := ok && !old.Deleted && !old.Evicted && s.fileExists(id)
	st, apply, toFeed := fn(oldp, held)
	refill := apply && ok && old.Evicted && sameUpload(st, old.State)
	return decision{st: st, apply: apply, toFeed: toFeed, held: held, refill: refill}, nil
}

// nameIntent renames the temp file tmp/<id>.<name>, dated by clock c (see
// filetime.go): the placement's intent (see intent.go). It is linked into
// blobs/ and stays in tmp/ until the record is committed, so that after a
// crash tmp/ names every placement that was in flight.
func (w *Writer) nameIntent(c dtfc.Timestamp) error {
	w.s.stampFile(w.tmp, c)
	base := w.tmp
	if w.partial != nil {
		base = "partial" // partial/<id>: one per ID at a time
	}
	named := placingName(w.s.tmpDir, w.sum, base)
	if err := os.Rename(w.tmp, named); err != nil {
		return diskErr("name temp file", err)
	}
	w.tmp = named
	return nil
}

// link links the named temp file into blobs/ at dst (its shard directory
// made).
func (w *Writer) link(dst string) error {
	if err := os.Link(w.tmp, dst); err != nil {
		return diskErr("place blob", err)
	}
	return nil
}

// replace renames the temp file over the held file at dst, durably: the
// same bytes, verified now. A reader that has the old file open reads it
// to its end.
func (w *Writer) replace(dst string) error {
	if err := os.Rename(w.tmp, dst); err != nil {
		return diskErr("replace held blob", err)
	}
	w.placed = true // the temp file is in blobs/ now: nothing to remove
	w.s.small.drop(w.sum)
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return diskErr("fsync blob directory", err)
	}
	return nil
}

// fulfilled ends a commit whose record nr is committed under decision d:
// the intent is fulfilled (or the bytes were already here) and the temp
// file goes. Its unlink needs no fsync: left by a crash, it names a
// placement that is then checked again.
func (w *Writer) fulfilled(d decision, nr record) Result {
	s, id := w.s, w.sum
	if !w.placed {
		os.Remove(w.tmp)
		w.placed = true
	}
	if d.held {
		s.stampFile(s.Path(id), nr.Clock)
	}
	s.noteWrite(id, d.st.Size)
	return Result{State: nr.State, Created: !d.held, Applied: true, Seq: nr.Seq}
}

func (s *Store) fileExists(id dtfc.ID) bool {
	_, err := os.Lstat(s.Path(id))
	return err == nil
}

// ensureShard creates blobs/ab/cd if needed, fsyncing each new directory's
// parent so the directory entries survive a crash. Existing components are
// checked every time (two lstats): a shard directory replaced by a symlink
// would send the blob out of the store.
func (s *Store) ensureShard(id dtfc.ID) error { return s.makeShard(id, true) }

// makeShard is ensureShard; with durable false the new directories'
// parents are not fsync'd (CommitBatch syncs the whole file system).
func (s *Store) makeShard(id dtfc.ID, durable bool) error {
	h := id.String()
	parent := s.blobDir
	for _, part := range []string{h[0:2], h[2:4]} {
		d := filepath.Join(parent, part)
		err := checkRealDir(d)
		if errors.Is(err, os.ErrNotExist) {
			err = os.Mkdir(d, 0o755)
			switch {
			case err == nil:
				if err := os.Chmod(d, 0o755); err != nil { // against the umask
					return diskErr("chmod shard directory", err)
				}
				if durable {
					if err := syncDir(parent); err != nil {
						return diskErr("fsync blob directory", err)
					}
				}
			case errors.Is(err, os.ErrExist):
				err = checkRealDir(d) // made meanwhile by another upload
			}
		}
		if err != nil {
			return diskErr("shard directory", err)
		}
		parent = d
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}
