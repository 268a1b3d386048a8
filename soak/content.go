package soak

import (
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"sync"
)

// blockSize is the unit in which Content generates its bytes: each block
// comes from its own ChaCha8 stream, so any offset can be read without
// generating what precedes it.
const blockSize = 64 << 10

// Content is the bytes of one file of the soak: a function of the seed,
// the file's index and its size, generated on demand, never held whole.
//
// Two files of one soak never have the same bytes, so never the same ID:
// the first 8 bytes of a file of 8 bytes or more are its index (little
// endian); a shorter file is the first Size bytes of its index, and the
// schedule only gives a file a size below 8 if its index fits (see
// fitSize). Only file 0 may be empty.
type Content struct {
	Seed  uint64
	Index int
	Size  int64
}

// ReadAt implements io.ReaderAt.
func (c Content) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.Size {
		return 0, io.EOF
	}
	n := 0
	var block [blockSize]byte
	for n < len(p) && off < c.Size {
		b := off / blockSize
		c.fill(b, &block)
		in := off - b*blockSize
		end := int64(blockSize)
		if rest := c.Size - b*blockSize; rest < end {
			end = rest
		}
		k := copy(p[n:], block[in:end])
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fill generates block b.
func (c Content) fill(b int64, block *[blockSize]byte) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], c.Seed)
	binary.LittleEndian.PutUint64(key[8:], uint64(c.Index))
	binary.LittleEndian.PutUint64(key[16:], uint64(b))
	binary.LittleEndian.PutUint64(key[24:], 0x50a6) // "soak"
	rand.NewChaCha8(key).Read(block[:])
	if b == 0 {
		var ix [8]byte
		binary.LittleEndian.PutUint64(ix[:], uint64(c.Index))
		copy(block[:], ix[:])
	}
}

// Reader returns a reader of the whole content.
func (c Content) Reader() io.Reader { return io.NewSectionReader(c, 0, c.Size) }

// Slice returns the bytes [off, off+n).
func (c Content) Slice(off, n int64) []byte {
	b := make([]byte, n)
	k, _ := c.ReadAt(b, off)
	return b[:k]
}

// computeID hashes the content.
func (c Content) computeID() string {
	h := sha512.New()
	buf := make([]byte, blockSize)
	io.CopyBuffer(h, io.LimitReader(c.Reader(), c.Size), buf)
	return hex.EncodeToString(h.Sum(nil))
}

// fitSize adjusts a drawn size so that file index's content is unique
// (see Content): only file 0 may be empty, and a size below 8 bytes must
// hold the index.
func fitSize(index int, size int64) int64 {
	if size == 0 && index != 0 {
		size = 1
	}
	for size > 0 && size < 8 && uint64(index) >= 1<<(8*size) {
		size++
	}
	return size
}

// IDs computes and caches the IDs of a soak's files; safe for concurrent
// use. Hashing a 64 MiB file takes a fraction of a second, once.
type IDs struct {
	seed uint64
	mu   sync.Mutex
	ids  map[int]string
}

// NewIDs returns an empty cache for the files of seed.
func NewIDs(seed uint64) *IDs { return &IDs{seed: seed, ids: map[int]string{}} }

// Of returns the ID of file c.
func (x *IDs) Of(c Content) string {
	x.mu.Lock()
	id, ok := x.ids[c.Index]
	x.mu.Unlock()
	if ok {
		return id
	}
	id = c.computeID()
	x.mu.Lock()
	x.ids[c.Index] = id
	x.mu.Unlock()
	return id
}
