package blobstore_test

import (
	"crypto/sha512"
	"encoding/binary"
	"io"
	"testing"

	"github.com/dtfc/dtfc/blobstore"
)

// repeatReader yields n bytes: buf over and over, with the first 8 bytes of
// the stream replaced by head, so that a benchmark can store a distinct
// 256 MiB blob per iteration while holding only buf in memory.
type repeatReader struct {
	buf  []byte
	head [8]byte
	off  int64
	n    int64
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	total := 0
	for len(p) > 0 && r.off < r.n {
		i := r.off % int64(len(r.buf))
		k := copy(p[:min(int64(len(p)), r.n-r.off)], r.buf[i:])
		if r.off < int64(len(r.head)) {
			copy(p[:k], r.head[r.off:])
		}
		p = p[k:]
		r.off += int64(k)
		total += k
	}
	return total, nil
}

var benchSizes = []struct {
	name string
	n    int64
}{
	{"4KiB", 4 << 10},
	{"1MiB", 1 << 20},
	{"256MiB", 256 << 20},
}

// BenchmarkPut measures an upload: temp file, SHA-512, fsync, rename,
// metadata commit. Compare its MB/s with BenchmarkSHA512.
func BenchmarkPut(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.name, func(b *testing.B) {
			s := openStore(b, b.TempDir(), blobstore.Options{})
			buf := content(1, int(min(size.n, 1<<20)))
			b.SetBytes(size.n)
			var i uint64
			for b.Loop() {
				i++
				r := &repeatReader{buf: buf, n: size.n}
				binary.BigEndian.PutUint64(r.head[:], i)
				w, err := s.NewWriter(blobstore.WriterOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.ReadFrom(r); err != nil {
					b.Fatal(err)
				}
				res, err := w.Commit(blobstore.Upload{})
				if err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
				if !res.Created {
					b.Fatal("iterations must store distinct blobs")
				}
				if size.n >= 1<<20 {
					// Keep the disk from filling up over many iterations.
					b.StopTimer()
					if _, err := s.Delete(res.State.ID, false); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			}
		})
	}
}

// BenchmarkOpen measures a local read: metadata lookup, open, read the
// whole blob, close.
func BenchmarkOpen(b *testing.B) {
	for _, size := range benchSizes[:2] {
		b.Run(size.name, func(b *testing.B) {
			s := openStore(b, b.TempDir(), blobstore.Options{})
			data := content(2, int(size.n))
			id := put(b, s, data, blobstore.Upload{}).State.ID
			buf := make([]byte, size.n)
			b.SetBytes(size.n)
			for b.Loop() {
				blob, err := s.Open(id)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(blob, buf); err != nil {
					b.Fatal(err)
				}
				if err := blob.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSHA512 is the baseline: raw crypto/sha512 throughput over 1 MiB
// buffers, the bound on one upload's speed.
func BenchmarkSHA512(b *testing.B) {
	buf := content(3, 1<<20)
	b.SetBytes(int64(len(buf)))
	h := sha512.New()
	var sum []byte
	for b.Loop() {
		h.Reset()
		h.Write(buf)
		sum = h.Sum(sum[:0])
	}
}
