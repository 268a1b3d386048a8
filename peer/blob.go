package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// LocalBlobs is what reading a blob needs of this node's store.
type LocalBlobs interface {
	// ReadOrOpen returns id's state and, if it is at most limit bytes
	// and the store keeps small blobs in memory, its bytes; otherwise its
	// verified file, opened.
	ReadOrOpen(id dtfc.ID, limit int64) (dtfc.State, []byte, *blobstore.Blob, error)
	// Open opens id's verified file.
	Open(id dtfc.ID) (*blobstore.Blob, error)
}

var _ LocalBlobs = (*blobstore.Store)(nil)

// OpenOptions say how Open reads a blob. The zero value opens a local
// blob's file and, on a local miss, streams the blob from a peer.
type OpenOptions struct {
	// Small is the size up to which a local blob is read into memory
	// (for small files the syscalls, not the bytes, are the cost). If
	// zero, a local blob is always opened.
	Small int64
	// LocalOnly makes a local miss blobstore.ErrNotFound, without asking
	// any peer.
	LocalOnly bool
	// StateOnly asks the peers on a local miss for the state of a holder
	// and moves no bytes (a HEAD): the Blob's bytes read as zeros.
	StateOnly bool
}

// Blob is one blob being read, wherever its bytes come from: this node's
// disk, its memory, or a transfer from a peer that is verified while it
// arrives. It is an io.ReadSeekCloser for http.ServeContent. Reads of a
// transfer block until the bytes are there; its last byte is held back
// until the whole blob hashed to its ID, so no reader ever completes a
// body of wrong bytes (the read fails instead).
type Blob struct {
	state    dtfc.State
	source   string // "" for this node; the peer's URL otherwise
	content  io.ReadSeeker
	file     *blobstore.Blob // a local file, for sendfile
	dl       *download       // a transfer from a peer
	inMemory bool
}

// State returns the blob's state: this node's record, or the state the
// peer sent.
func (b *Blob) State() dtfc.State { return b.state }

// Local reports whether the bytes come from this node.
func (b *Blob) Local() bool { return b.source == "" }

// Source returns the URL of the peer the bytes (or the state) come from,
// "" if they are this node's.
func (b *Blob) Source() string { return b.source }

// InMemory reports whether the bytes were read into memory (Small).
func (b *Blob) InMemory() bool { return b.inMemory }

// Read implements io.Reader.
func (b *Blob) Read(p []byte) (int, error) { return b.content.Read(p) }

// Seek implements io.Seeker.
func (b *Blob) Seek(offset int64, whence int) (int64, error) { return b.content.Seek(offset, whence) }

// errNotAFile: SyscallConn of a blob that is not a local file.
var errNotAFile = errors.New("not a local file")

// SyscallConn returns a local blob's file descriptor, so that net/http
// sends it with sendfile (net.TCPConn.ReadFrom looks for syscall.Conn);
// any other blob answers an error, and its bytes are copied.
func (b *Blob) SyscallConn() (syscall.RawConn, error) {
	if b.file == nil {
		return nil, errNotAFile
	}
	return b.file.SyscallConn()
}

// Wait blocks until a transfer from a peer has finished and returns its
// result: nil if the blob was verified and stored. For any other blob it
// returns nil at once.
func (b *Blob) Wait(ctx context.Context) error {
	if b.dl == nil {
		return nil
	}
	return b.dl.Wait(ctx)
}

// Failed returns a transfer's error if it has finished with one before
// its bytes were verified (a failure to store verified bytes does not
// make what readers received wrong); nil for any other blob.
func (b *Blob) Failed() error {
	if b.dl == nil {
		return nil
	}
	return b.dl.Failed()
}

// Close releases the blob; a transfer goes on for other readers and for
// the store.
func (b *Blob) Close() error {
	switch {
	case b.file != nil:
		return b.file.Close()
	case b.dl != nil:
		return b.dl.Close()
	}
	return nil
}

// OpenLocal reads id from store alone (a node without peers): as
// Cluster.Open does before it asks any peer. A miss is
// blobstore.ErrNotFound.
func OpenLocal(store LocalBlobs, id dtfc.ID, opts OpenOptions) (*Blob, error) {
	var (
		st    dtfc.State
		small []byte
		f     *blobstore.Blob
		err   error
	)
	if opts.Small > 0 {
		st, small, f, err = store.ReadOrOpen(id, opts.Small)
	} else {
		f, err = store.Open(id)
	}
	switch {
	case err != nil:
		return nil, err
	case small != nil:
		return &Blob{state: st, content: bytes.NewReader(small), inMemory: true}, nil
	}
	return &Blob{state: f.State, content: f, file: f}, nil
}

// Open reads id: from this node if it holds the bytes, otherwise (unless
// opts say not to) from the peers, streamed while it arrives and stored
// once verified. Concurrent misses of one ID share one transfer, which
// runs detached from the callers' contexts (a client that goes away does
// not cancel a fill others wait for).
//
// A miss everywhere is ErrNotFound (blobstore.ErrNotFound with
// LocalOnly); too many transfers running is ErrBusy.
func (c *Cluster) Open(ctx context.Context, id dtfc.ID, opts OpenOptions) (*Blob, error) {
	gen := c.fetch.generation()
	b, err := OpenLocal(c.store, id, opts)
	if err != blobstore.ErrNotFound || opts.LocalOnly {
		return b, err
	}
	evicted := c.store.Evicted(id) // (also on a tier restarted without max_bytes)
	if opts.StateOnly {
		if evicted {
			// The state is here, the bytes in the archive: a HEAD need
			// not move them.
			if st, err := c.store.Stat(id); err == nil && !st.Deleted {
				return StateOnlyBlob(st, ""), nil
			}
		}
		st, src, err := c.lookup(ctx, id, true)
		if err != nil {
			return nil, err
		}
		return StateOnlyBlob(st, src), nil
	}
	b, err = c.fetch.open(ctx, id, gen, func() (*Blob, error) { return OpenLocal(c.store, id, opts) })
	if evicted && errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w (%w)", ErrEvictedUnreachable, err)
	}
	if err == nil && !b.Local() {
		// A transfer already running may be of a state this node has
		// since recorded a newer delete of (a DELETE answered while it
		// ran): joined, it served the deleted blob whole. A new
		// transfer is not started for such a state (ask); a reader
		// already streaming keeps its stream, as one of a local file.
		if st, serr := c.store.Stat(id); serr == nil && st.Deleted && st.Newer(b.State()) {
			b.Close()
			return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
		}
	}
	return b, err
}

// StateOnlyBlob returns a Blob of st held by the peer at source whose
// bytes are not moved (OpenOptions.StateOnly): they read as zeros, for a
// HEAD that never reads them.
func StateOnlyBlob(st dtfc.State, source string) *Blob {
	return &Blob{state: st, source: source, content: io.NewSectionReader(zeros{}, 0, st.Size)}
}

// zeros stands in for the bytes of a blob opened StateOnly.
type zeros struct{}

func (zeros) ReadAt(p []byte, _ int64) (int, error) { clear(p); return len(p), nil }

// fromPeer wraps a download as a Blob.
func fromPeer(d *download) *Blob {
	return &Blob{state: d.t.st, source: d.t.src, content: d, dl: d}
}
