package blobstore

import (
	"errors"
	"fmt"
	"io"
)

// A transfer from several peers at once receives its blob in pieces, out
// of order: WriteAt puts each where it belongs in the temp file (sparse
// until the gaps fill), and HashTo takes the contiguous prefix in, in
// order, reading it back from the page cache. So there is still one
// hasher, and Size, Progress and the checkpoints of a resumable Writer
// follow the prefix: readers of the transfer never see a byte before
// every byte ahead of it is there, and a checkpoint never names a gap.

// WriteAt writes p at off, at or past the bytes taken so far (Size),
// without hashing it: HashTo takes it in once every byte before it is
// there. Unlike the other methods, WriteAt may be called from several
// goroutines at once, and while HashTo runs, for ranges that do not
// overlap. An error of it is the caller's: the range may be written
// again.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	if off < w.written.Load() {
		return 0, fmt.Errorf("blobstore: piece at %d, before the %d bytes taken", off, w.written.Load())
	}
	if w.opts.MaxBytes > 0 && off+int64(len(p)) > w.opts.MaxBytes {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, w.opts.MaxBytes)
	}
	n, err := w.f.WriteAt(p, off)
	if err != nil {
		err = diskErr("write temp file", err)
	}
	return n, err
}

// HashTo takes in the bytes up to end that WriteAt wrote, as if they had
// been written in order: hashed, counted in Size, reported to Progress.
func (w *Writer) HashTo(end int64) error {
	if w.err != nil {
		return w.err
	}
	if w.finished {
		return errors.New("blobstore: write after commit")
	}
	if end <= w.n {
		return nil
	}
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	for w.n < end {
		k := int(min(int64(len(*buf)), end-w.n))
		b := (*buf)[:k]
		if _, err := w.f.ReadAt(b, w.n); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			w.err = diskErr("read back temp file", err)
			return w.err
		}
		if err := w.accept(b); err != nil {
			w.err = err
			return err
		}
		w.h.Write(b)
		w.wrote(k)
	}
	return nil
}
