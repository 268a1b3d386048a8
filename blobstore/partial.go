package blobstore

import (
	"bytes"
	"crypto/sha512"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dtfc/dtfc"
)

// A transfer of a large blob from a peer keeps what it received, so that
// one cut off (a broken link, a peer that stopped, a restart of this node)
// continues where it stopped instead of from byte 0. Its bytes go to
// partial/<id>; every Checkpoint makes them durable and writes beside them
// partial/<id>.resume: how many bytes are good and the SHA-512 state after
// them (crypto/sha512's digest marshals its state). A later transfer of
// the same ID opens the pair, cuts the file back to the checkpoint, and
// asks a peer for the rest (an HTTP Range).
//
// Nothing here is trusted: the bytes of a resumed transfer are hashed to
// the ID at the end like any others, and a checkpoint that does not
// decode, or names more bytes than the file has, starts the transfer
// over. What a crash can leave (a file without its checkpoint, a
// checkpoint of a committed blob) is removed by the next transfer of the
// ID or at start-up once older than PartialMaxAge.

const (
	partialDir    = "partial"
	resumeSuffix  = ".resume"
	resumeMagic   = "dtfc-resume-1\n"
	maxResumeSize = 4096 // a checkpoint is ~250 bytes
)

// PartialMaxAge is how long an abandoned partial transfer is kept: one
// not resumed for that long is removed at start-up.
const PartialMaxAge = 24 * time.Hour

// partialPaths returns the data file and checkpoint of id's partial
// transfer.
func (s *Store) partialPaths(id dtfc.ID) (data, resume string) {
	data = filepath.Join(s.dir, partialDir, id.String())
	return data, data + resumeSuffix
}

// checkpoint is what partial/<id>.resume holds.
type checkpoint struct {
	size  int64  // the blob's size
	n     int64  // bytes good in the data file
	state []byte // the SHA-512 state after those n bytes
}

func (c checkpoint) encode(id dtfc.ID) []byte {
	var b bytes.Buffer
	b.WriteString(resumeMagic)
	b.Write(id[:])
	binary.Write(&b, binary.BigEndian, c.size)
	binary.Write(&b, binary.BigEndian, c.n)
	b.Write(c.state)
	sum := sha512.Sum512(b.Bytes())
	b.Write(sum[:8]) // a torn or damaged checkpoint does not decode
	return b.Bytes()
}

func decodeCheckpoint(id dtfc.ID, b []byte) (checkpoint, error) {
	head := len(resumeMagic) + len(id) + 16
	if len(b) < head+8 || string(b[:len(resumeMagic)]) != resumeMagic {
		return checkpoint{}, errors.New("not a checkpoint")
	}
	body, tail := b[:len(b)-8], b[len(b)-8:]
	if sum := sha512.Sum512(body); !bytes.Equal(sum[:8], tail) {
		return checkpoint{}, errors.New("checkpoint damaged")
	}
	if !bytes.Equal(body[len(resumeMagic):len(resumeMagic)+len(id)], id[:]) {
		return checkpoint{}, errors.New("checkpoint of another ID")
	}
	p := body[len(resumeMagic)+len(id):]
	c := checkpoint{
		size:  int64(binary.BigEndian.Uint64(p[0:8])),
		n:     int64(binary.BigEndian.Uint64(p[8:16])),
		state: append([]byte(nil), p[16:]...),
	}
	if c.size <= 0 || c.n <= 0 || c.n > c.size {
		return checkpoint{}, errors.New("checkpoint out of range")
	}
	return c, nil
}

// PartialSize returns how many bytes of id a resumable transfer would
// start with, and the blob's size they are of (0, 0: none kept, or not
// usable).
func (s *Store) PartialSize(id dtfc.ID) (n, size int64) {
	data, resume := s.partialPaths(id)
	c, err := readCheckpoint(id, resume)
	if err != nil {
		return 0, 0
	}
	if fi, err := os.Stat(data); err != nil || fi.Size() < c.n {
		return 0, 0
	}
	return c.n, c.size
}

func readCheckpoint(id dtfc.ID, path string) (checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return checkpoint{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxResumeSize+1))
	if err != nil {
		return checkpoint{}, err
	}
	return decodeCheckpoint(id, b)
}

// NewResumableWriter is NewWriter for a transfer of id, a blob of size
// bytes, that continues a partial transfer kept from an earlier one if
// there is a usable one (Size then starts above zero, and Progress is
// called with it at once), and keeps its own bytes if Suspend is called
// before Close. Only one resumable writer per ID may be open at a time:
// while one is, another call waits up to PartialWait for it to close (a
// transfer that just ended may be closing, or its last reader letting
// go), and continues what it kept; if it is still open then, the call
// gets a plain Writer.
func (s *Store) NewResumableWriter(id dtfc.ID, size int64, opts WriterOptions) (*Writer, error) {
	claimed := s.claimPartial(id)
	leave, err := s.enter()
	if err != nil {
		if claimed {
			s.releasePartial(id)
		}
		return nil, err
	}
	defer leave()
	if !claimed {
		return s.newWriter(opts)
	}
	w, err := s.openPartial(id, size, opts)
	if err != nil {
		s.releasePartial(id)
		return nil, err
	}
	return w, nil
}

// PartialWait is how long NewResumableWriter waits for the resumable
// writer of the same ID open elsewhere to close.
const PartialWait = 2 * time.Second

// claimPartial makes id's partial transfer the caller's, waiting up to
// PartialWait for the writer that has it to close; false if it did not.
func (s *Store) claimPartial(id dtfc.ID) bool {
	var timeout <-chan time.Time
	for {
		s.partialMu.Lock()
		if s.partials == nil {
			s.partials = map[dtfc.ID]chan struct{}{}
		}
		closed, busy := s.partials[id]
		if !busy {
			s.partials[id] = make(chan struct{})
			s.partialMu.Unlock()
			return true
		}
		s.partialMu.Unlock()
		if timeout == nil {
			t := time.NewTimer(PartialWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-closed:
		case <-timeout:
			return false
		}
	}
}

func (s *Store) releasePartial(id dtfc.ID) {
	s.partialMu.Lock()
	if closed, ok := s.partials[id]; ok {
		delete(s.partials, id)
		close(closed)
	}
	s.partialMu.Unlock()
}

func (s *Store) openPartial(id dtfc.ID, size int64, opts WriterOptions) (*Writer, error) {
	data, resume := s.partialPaths(id)
	c, cerr := readCheckpoint(id, resume)
	if cerr == nil && c.size == size {
		w, err := s.continuePartial(id, data, c, opts)
		if err == nil {
			s.log.Info("resuming a partial transfer", "id", id.String(), "at", c.n, "size", size)
			return w, nil
		}
		s.log.Warn("partial transfer not usable; starting over", "id", id.String(), "err", err)
	}
	// A fresh start: whatever was there goes.
	os.Remove(resume)
	if err := s.checkSpace(size); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(data, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, diskErr("create partial file", err)
	}
	w := &Writer{s: s, f: f, tmp: data, h: sha512.New(), opts: opts}
	w.partial = &partialTransfer{id: id, size: size, resume: resume}
	return w, nil
}

// continuePartial opens data at checkpoint c.
func (s *Store) continuePartial(id dtfc.ID, data string, c checkpoint, opts WriterOptions) (*Writer, error) {
	h := sha512.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(c.state); err != nil {
		return nil, fmt.Errorf("hash state: %w", err)
	}
	if err := s.checkSpace(c.size - c.n); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(data, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() < c.n {
		err = fmt.Errorf("file has %d bytes, checkpoint %d", fi.Size(), c.n)
	}
	if err == nil {
		err = f.Truncate(c.n) // bytes after the checkpoint were never hashed into it
	}
	if err == nil {
		err = checkKept(f, c)
	}
	if err == nil {
		_, err = f.Seek(c.n, io.SeekStart)
	}
	head := make([]byte, min(c.n, headSize))
	if err == nil {
		_, err = f.ReadAt(head, 0)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &Writer{s: s, f: f, tmp: data, h: h, opts: opts, n: c.n, head: head, synced: c.n}
	w.written.Store(c.n)
	w.partial = &partialTransfer{id: id, size: c.size, resume: data + resumeSuffix, checked: c.n}
	if opts.Progress != nil {
		opts.Progress(c.n)
	}
	return w, nil
}

// checkKept hashes again the c.n bytes f keeps: the checkpoint's hash
// state vouches for them as they were written, not as they are now. A
// byte damaged on disk since would otherwise go unseen, since the final
// hash goes on from that state, and the blob would be committed and
// served with it (TestResumeFromDamagedPartialFile). The cost is one read
// of what is kept, against a transfer of all of it if started over.
func checkKept(f *os.File, c checkpoint) error {
	h := sha512.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, c.n)); err != nil {
		return err
	}
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return err
	}
	if !bytes.Equal(state, c.state) {
		return fmt.Errorf("the %d bytes kept do not hash to the checkpoint's state (damaged on disk?)", c.n)
	}
	return nil
}

// partialTransfer is a resumable Writer's own state.
type partialTransfer struct {
	id      dtfc.ID
	size    int64
	resume  string
	checked int64 // bytes covered by the last checkpoint
	keep    bool  // Suspend was called: Close keeps the files

	// bg is closed when the background checkpoint in progress
	// (CheckpointSoon) ends, having set bgChecked or bgErr; nil if none
	// runs.
	bg        chan struct{}
	bgChecked int64
	bgErr     error
}

// CheckpointSoon is Checkpoint in the background: the transfer goes on
// while the disk catches up, and if the last one has not finished, none
// is started. An error of it (a failed fsync, fatal for the write) is
// w's at the next write after it is seen. Call it between writes, like
// Checkpoint.
func (w *Writer) CheckpointSoon() {
	p := w.partial
	if p == nil || w.err != nil || w.finished || w.n == 0 || w.n == p.checked {
		return
	}
	if p.bg != nil {
		select {
		case <-p.bg:
			w.checkpointDone()
			if w.err != nil {
				return
			}
		default:
			return // the disk is behind: skip this one
		}
	}
	state, err := w.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return
	}
	b := checkpoint{size: p.size, n: w.n, state: state}.encode(p.id)
	n, f, done := w.n, w.f, make(chan struct{})
	p.bg = done
	go func() {
		defer close(done)
		if err := f.Sync(); err != nil {
			p.bgErr = diskErr("fsync partial file", err)
			return
		}
		if err := writeFileSync(p.resume, b); err != nil {
			p.bgErr = diskErr("write checkpoint", err)
			return
		}
		p.bgChecked = n
	}()
}

// waitCheckpoint waits for the background checkpoint, if one runs.
func (w *Writer) waitCheckpoint() {
	if w.partial != nil && w.partial.bg != nil {
		<-w.partial.bg
		w.checkpointDone()
	}
}

// checkpointDone takes in the result of the background checkpoint, which
// has ended.
func (w *Writer) checkpointDone() {
	p := w.partial
	p.bg = nil
	if p.bgErr != nil && w.err == nil {
		w.err = p.bgErr
	}
	p.checked = max(p.checked, p.bgChecked)
}

// Resumable reports whether w keeps its bytes across a Suspend.
func (w *Writer) Resumable() bool { return w.partial != nil }

// Checkpoint makes the bytes written so far durable and records them with
// the hash state, so that a transfer cut after it (even by a crash)
// resumes from here. Call it between writes, never during one (ReadFrom
// has returned): the hash state must be that of exactly the bytes in the
// file. It does nothing for a plain Writer, or if nothing was written
// since the last one.
func (w *Writer) Checkpoint() error {
	w.waitCheckpoint()
	p := w.partial
	if p == nil || w.err != nil || w.finished || w.n == p.checked || w.n == 0 {
		return nil
	}
	state, err := w.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		w.err = diskErr("fsync partial file", err)
		return w.err
	}
	b := checkpoint{size: p.size, n: w.n, state: state}.encode(p.id)
	if err := writeFileSync(p.resume, b); err != nil {
		return diskErr("write checkpoint", err)
	}
	p.checked = w.n
	return nil
}

// Suspend checkpoints w and makes Close keep its bytes for a later
// transfer of the same ID. It returns the checkpoint's error (the bytes
// are then not kept).
func (w *Writer) Suspend() error {
	if w.partial == nil {
		return nil
	}
	if err := w.Checkpoint(); err != nil {
		return err
	}
	w.partial.keep = w.partial.checked > 0
	return nil
}

// closePartial ends w's partial transfer at Close: its files stay if it
// was suspended and never placed, and go otherwise.
func (w *Writer) closePartial() {
	p := w.partial
	if p == nil {
		return
	}
	defer w.s.releasePartial(p.id)
	if p.keep && !w.placed {
		return
	}
	os.Remove(p.resume)
	if !w.placed {
		os.Remove(w.tmp)
	}
}

// writeFileSync replaces path with b durably enough for a checkpoint: a
// crash leaves the old one or the new one (a lost rename only loses
// progress).
func writeFileSync(path string, b []byte) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// SweepPartials removes what no transfer will resume: files of partial/
// older than PartialMaxAge (by their last write), leftovers of an
// interrupted checkpoint, checkpoints without their data file, and data
// files without a checkpoint (a transfer cut before its first). The
// partial transfers open at the time are left alone. Open runs it; a
// long-running node runs it now and then, so that partial transfers of
// blobs deleted meanwhile do not stay for good.
func (s *Store) SweepPartials() error {
	leave, err := s.enter()
	if err != nil {
		return err
	}
	defer leave()
	return s.sweepPartials()
}

func (s *Store) sweepPartials() error {
	dir := filepath.Join(s.dir, partialDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("blobstore: sweep partial transfers: %w", err)
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	removed := 0
	for _, e := range entries {
		name := e.Name()
		base := strings.TrimSuffix(strings.TrimSuffix(name, ".new"), resumeSuffix)
		id, perr := dtfc.ParseID(base)
		old := false
		if fi, err := e.Info(); err == nil {
			old = time.Since(fi.ModTime()) > PartialMaxAge
		}
		stray := perr != nil || // not ours
			strings.HasSuffix(name, ".new") ||
			(strings.HasSuffix(name, resumeSuffix) && !names[base]) ||
			(!strings.HasSuffix(name, resumeSuffix) && !names[name+resumeSuffix])
		if !old && !stray && e.Type().IsRegular() {
			continue
		}
		// Under partialMu, which a resumable writer takes before it
		// touches its files: a transfer of the ID starting now either
		// comes after the removal or is seen open and left alone.
		s.partialMu.Lock()
		if _, open := s.partials[id]; perr == nil && open {
			s.partialMu.Unlock()
			continue
		}
		err := os.RemoveAll(filepath.Join(dir, name))
		s.partialMu.Unlock()
		if err != nil {
			return fmt.Errorf("blobstore: sweep partial transfers: %w", err)
		}
		removed++
	}
	if removed > 0 {
		s.log.Info("removed stale partial transfers", "files", removed)
	}
	return nil
}
