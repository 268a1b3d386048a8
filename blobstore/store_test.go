package blobstore_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// deadline bounds every wait on a condition in these tests.
const deadline = 10 * time.Second

// onlyReader hides the WriterTo of the reader it wraps, so that io.Copy
// and the tests reach Writer.ReadFrom's pipeline rather than Write.
type onlyReader struct{ io.Reader }

// content returns n deterministic pseudo-random bytes; different seeds give
// different bytes.
func content(seed, n int) []byte {
	var key [32]byte
	copy(key[:], fmt.Sprintf("seed-%d", seed))
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

func openStore(t testing.TB, dir string, opts blobstore.Options) *blobstore.Store {
	t.Helper()
	s, err := blobstore.Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

func newStore(t testing.TB) *blobstore.Store {
	t.Helper()
	return openStore(t, t.TempDir(), blobstore.Options{})
}

// put uploads data through ReadFrom and commits it as a local upload.
func put(t testing.TB, s *blobstore.Store, data []byte, u blobstore.Upload) blobstore.Result {
	t.Helper()
	w, err := s.NewWriter(blobstore.WriterOptions{})
	require.NoError(t, err)
	defer func() { assert.NoError(t, w.Close()) }()
	n, err := w.ReadFrom(onlyReader{bytes.NewReader(data)})
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), n)
	res, err := w.Commit(u)
	require.NoError(t, err)
	return res
}

// commitState sends data with a Writer and commits it under st.
func commitState(t testing.TB, s *blobstore.Store, data []byte, st dtfc.State, toFeed bool) (blobstore.Result, error) {
	t.Helper()
	w, err := s.NewWriter(blobstore.WriterOptions{})
	require.NoError(t, err)
	defer func() { assert.NoError(t, w.Close()) }()
	_, err = w.Write(data)
	require.NoError(t, err)
	return w.CommitState(st, toFeed)
}

// filesUnder lists the regular (non-directory) entries under root, relative
// to it. A missing root has none.
func filesUnder(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == root {
			return filepath.SkipDir
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

// assertNoDataFiles checks that no file is left where uploads go: blobs/
// and tmp/.
func assertNoDataFiles(t testing.TB, dir string) {
	t.Helper()
	assert.Empty(t, filesUnder(t, filepath.Join(dir, "blobs")), "files under blobs/")
	assert.Empty(t, filesUnder(t, filepath.Join(dir, "tmp")), "files under tmp/")
}

func blobPath(dir string, id dtfc.ID) string {
	h := id.String()
	return filepath.Join(dir, "blobs", h[0:2], h[2:4], h)
}

func assertMode(t testing.TB, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if assert.NoError(t, err) {
		assert.Equal(t, want, fi.Mode().Perm(), "mode of %s", path)
	}
}

// readBlob opens id and returns its bytes and state.
func readBlob(t testing.TB, s *blobstore.Store, id dtfc.ID) ([]byte, dtfc.State) {
	t.Helper()
	b, err := s.Open(id)
	require.NoError(t, err)
	defer func() { assert.NoError(t, b.Close()) }()
	data, err := io.ReadAll(b)
	require.NoError(t, err)
	return data, b.State
}

func waitClosed(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(deadline):
		t.Fatalf("%s: not closed within %v", what, deadline)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// fixedWall is a wall clock stuck at one instant: every clock reading then
// differs only in its logical counter.
func fixedWall() time.Time { return time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC) }

var epoch = dtfc.TimestampAt(fixedWall())

func TestPutRoundTrip(t *testing.T) {
	sizes := []struct {
		name string
		size int
	}{
		{"0B", 0},
		{"1B", 1},
		{"4KiB", 4 << 10},
		{"1MiB+7", 1<<20 + 7}, // crosses the 256 KiB pipeline buffers
	}
	modes := []struct {
		name  string
		write func(w *blobstore.Writer, data []byte) (int64, error)
	}{
		{"ReadFrom", func(w *blobstore.Writer, data []byte) (int64, error) {
			return w.ReadFrom(onlyReader{bytes.NewReader(data)})
		}},
		{"ReadFromDataWithEOF", func(w *blobstore.Writer, data []byte) (int64, error) {
			// Small bodies arrive in one read that also reports io.EOF.
			return w.ReadFrom(iotest.DataErrReader(bytes.NewReader(data)))
		}},
		{"Write", func(w *blobstore.Writer, data []byte) (int64, error) {
			var total int64
			for len(data) > 0 {
				k := min(len(data), 10_000)
				n, err := w.Write(data[:k])
				total += int64(n)
				if err != nil {
					return total, err
				}
				data = data[k:]
			}
			return total, nil
		}},
	}
	for _, sz := range sizes {
		for _, mode := range modes {
			t.Run(sz.name+"/"+mode.name, func(t *testing.T) {
				s := newStore(t)
				data := content(sz.size, sz.size)
				id := dtfc.Sum(data)
				before := s.Clock().Last()

				w, err := s.NewWriter(blobstore.WriterOptions{})
				require.NoError(t, err)
				n, err := mode.write(w, data)
				require.NoError(t, err)
				require.Equal(t, int64(len(data)), n)
				assert.Equal(t, int64(len(data)), w.Size())
				assert.True(t, bytes.Equal(data[:min(len(data), 512)], w.Head()), "Head is the first 512 bytes")
				res, err := w.Commit(blobstore.Upload{ContentType: "application/x-test", Filename: "a.bin"})
				require.NoError(t, err)
				require.NoError(t, w.Close())
				assert.Equal(t, id, w.ID())

				assert.True(t, res.Created, "first upload creates")
				assert.True(t, res.Applied)
				st := res.State
				assert.Equal(t, id, st.ID)
				assert.False(t, st.Deleted)
				assert.Equal(t, int64(len(data)), st.Size)
				assert.Equal(t, "application/x-test", st.ContentType)
				assert.Equal(t, "a.bin", st.Filename)
				assert.Equal(t, s.NodeID(), st.Node)
				assert.NotZero(t, st.Clock)
				assert.Greater(t, st.Clock, before)

				got, err := s.Stat(id)
				require.NoError(t, err)
				assert.Equal(t, st, got)
				read, bst := readBlob(t, s, id)
				assert.True(t, bytes.Equal(data, read), "read back %d bytes, want %d equal bytes", len(read), len(data))
				assert.Equal(t, st, bst)

				// On disk: exactly one complete file at the sharded path.
				p := blobPath(s.Dir(), id)
				assert.Equal(t, p, s.Path(id))
				assert.Equal(t, filepath.Join(s.Dir(), "blobs"), s.BlobDir())
				onDisk, err := os.ReadFile(p)
				require.NoError(t, err)
				assert.True(t, bytes.Equal(data, onDisk), "file content differs")
				assertMode(t, p, 0o644)
				assertMode(t, filepath.Dir(p), 0o755)
				assertMode(t, filepath.Dir(filepath.Dir(p)), 0o755)
				h := id.String()
				assert.Equal(t, []string{filepath.Join(h[0:2], h[2:4], h)}, filesUnder(t, s.BlobDir()))
				assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")))
				blobs, nbytes := s.Stats()
				assert.Equal(t, int64(1), blobs)
				assert.Equal(t, int64(len(data)), nbytes)

				// Re-upload of the same bytes: not created, but a newer
				// operation with the new metadata.
				res2 := put(t, s, data, blobstore.Upload{ContentType: "text/plain", Filename: "b.txt"})
				assert.False(t, res2.Created, "re-upload of held bytes")
				assert.True(t, res2.Applied)
				assert.Greater(t, res2.State.Clock, st.Clock)
				assert.Equal(t, "b.txt", res2.State.Filename)
				got, err = s.Stat(id)
				require.NoError(t, err)
				assert.Equal(t, res2.State, got)
				blobs, nbytes = s.Stats()
				assert.Equal(t, int64(1), blobs)
				assert.Equal(t, int64(len(data)), nbytes)
				assert.Len(t, filesUnder(t, s.BlobDir()), 1)
				assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")))
			})
		}
	}
}

// TestPutFileModesUnderUmask checks that blob files and shard directories
// are world-readable whatever the process umask (a web server running as
// another user serves blobs/).
func TestPutFileModesUnderUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })

	s := newStore(t)
	data := []byte("readable by nginx")
	res := put(t, s, data, blobstore.Upload{})
	p := blobPath(s.Dir(), res.State.ID)
	assertMode(t, p, 0o644)
	assertMode(t, filepath.Dir(p), 0o755)
	assertMode(t, filepath.Dir(filepath.Dir(p)), 0o755)
	assertMode(t, s.BlobDir(), 0o755)
	assertMode(t, s.Dir(), 0o755)
}

// streamReader yields size pseudo-random bytes in small irregular chunks
// (including an empty read), hashing what it hands out.
type streamReader struct {
	left        int64
	rng         *rand.ChaCha8
	h           hash.Hash
	i           int
	eofWithData bool // return the last bytes together with io.EOF
}

var chunkCycle = []int{1, 13, 0, 4093, 65536, 262145, 777, 100_003, 7}

func (r *streamReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	k := min(int64(chunkCycle[r.i%len(chunkCycle)]), int64(len(p)), r.left)
	r.i++
	_, _ = r.rng.Read(p[:k])
	r.h.Write(p[:k])
	r.left -= k
	if r.left == 0 && r.eofWithData {
		return int(k), io.EOF
	}
	return int(k), nil
}

func TestPutStreamed20MiB(t *testing.T) {
	const size = 20 << 20
	for _, eofWithData := range []bool{false, true} {
		t.Run(fmt.Sprintf("eofWithData=%v", eofWithData), func(t *testing.T) {
			s := newStore(t)
			r := &streamReader{left: size, rng: rand.NewChaCha8([32]byte{1}), h: sha512.New(), eofWithData: eofWithData}
			var progress atomic.Int64
			var backwards atomic.Bool
			w, err := s.NewWriter(blobstore.WriterOptions{Progress: func(n int64) {
				if n < progress.Swap(n) {
					backwards.Store(true)
				}
			}})
			require.NoError(t, err)
			defer func() { assert.NoError(t, w.Close()) }()
			n, err := io.Copy(w, r) // io.Copy uses Writer.ReadFrom
			require.NoError(t, err)
			require.Equal(t, int64(size), n)
			res, err := w.Commit(blobstore.Upload{})
			require.NoError(t, err)

			want := dtfc.ID(r.h.Sum(nil))
			assert.Equal(t, want, res.State.ID)
			assert.Equal(t, int64(size), res.State.Size)
			assert.True(t, res.Created)
			assert.Equal(t, int64(size), progress.Load(), "last progress report")
			assert.False(t, backwards.Load(), "progress went backwards")

			b, err := s.Open(want)
			require.NoError(t, err)
			h := sha512.New()
			m, err := io.Copy(h, b)
			require.NoError(t, err)
			require.NoError(t, b.Close())
			assert.Equal(t, int64(size), m)
			assert.Equal(t, want, dtfc.ID(h.Sum(nil)), "file on disk hashes to its ID")
		})
	}
}

func TestWriterReadAt(t *testing.T) {
	s := newStore(t)
	data := content(7, 600<<10)
	w, err := s.NewWriter(blobstore.WriterOptions{})
	require.NoError(t, err)
	defer func() { assert.NoError(t, w.Close()) }()
	_, err = w.ReadFrom(onlyReader{bytes.NewReader(data)})
	require.NoError(t, err)
	buf := make([]byte, 1000)
	n, err := w.ReadAt(buf, 300<<10)
	require.NoError(t, err)
	assert.Equal(t, data[300<<10:300<<10+n], buf[:n])
	_, err = w.Commit(blobstore.Upload{})
	require.NoError(t, err)
	// Still readable after Commit, until Close.
	n, err = w.ReadAt(buf, 0)
	require.NoError(t, err)
	assert.Equal(t, data[:n], buf[:n])
}

func TestCommitDigestMismatch(t *testing.T) {
	data := content(2, 300<<10)
	other := dtfc.Sum([]byte("something else"))
	cases := []struct {
		name   string
		commit func(w *blobstore.Writer) (blobstore.Result, error)
	}{
		{"Commit", func(w *blobstore.Writer) (blobstore.Result, error) {
			return w.Commit(blobstore.Upload{Expected: other})
		}},
		{"CommitState", func(w *blobstore.Writer) (blobstore.Result, error) {
			return w.CommitState(dtfc.State{ID: other, Clock: epoch, Node: "peer", Size: int64(len(data))}, true)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			w, err := s.NewWriter(blobstore.WriterOptions{})
			require.NoError(t, err)
			_, err = w.ReadFrom(onlyReader{bytes.NewReader(data)})
			require.NoError(t, err)
			res, err := tc.commit(w)
			require.Error(t, err)
			assert.ErrorIs(t, err, blobstore.ErrDigestMismatch)
			var me *blobstore.MismatchError
			if assert.ErrorAs(t, err, &me) {
				assert.Equal(t, other, me.Want)
				assert.Equal(t, dtfc.Sum(data), me.Got)
			}
			assert.Equal(t, blobstore.Result{}, res)
			// A second Commit keeps failing.
			_, err = w.Commit(blobstore.Upload{})
			assert.Error(t, err)
			require.NoError(t, w.Close())

			assertNoDataFiles(t, s.Dir())
			for _, id := range []dtfc.ID{other, dtfc.Sum(data)} {
				_, err = s.Stat(id)
				assert.ErrorIs(t, err, blobstore.ErrNotFound)
			}
			blobs, _ := s.Stats()
			assert.Zero(t, blobs)
			assert.Zero(t, s.LastSeq())
		})
	}
}

func TestMaxBytes(t *testing.T) {
	type writeFunc func(w *blobstore.Writer, data []byte) error
	modes := []struct {
		name  string
		write writeFunc
	}{
		{"ReadFrom", func(w *blobstore.Writer, data []byte) error {
			_, err := w.ReadFrom(onlyReader{bytes.NewReader(data)})
			return err
		}},
		{"ReadFromOneRead", func(w *blobstore.Writer, data []byte) error {
			// The last bytes come together with io.EOF.
			_, err := w.ReadFrom(iotest.DataErrReader(bytes.NewReader(data)))
			return err
		}},
		{"ReadFromChunks", func(w *blobstore.Writer, data []byte) error {
			_, err := w.ReadFrom(&chunkReader{data: data, size: 999})
			return err
		}},
		{"Write", func(w *blobstore.Writer, data []byte) error {
			_, err := w.Write(data)
			return err
		}},
		{"WriteChunks", func(w *blobstore.Writer, data []byte) error {
			for len(data) > 0 {
				k := min(len(data), 777)
				if _, err := w.Write(data[:k]); err != nil {
					return err
				}
				data = data[k:]
			}
			return nil
		}},
	}
	for _, limit := range []int{1, 1000, 300 << 10} {
		for _, mode := range modes {
			t.Run(fmt.Sprintf("%d/%s", limit, mode.name), func(t *testing.T) {
				s := newStore(t)
				opts := blobstore.WriterOptions{MaxBytes: int64(limit)}

				// One byte too many: ErrTooLarge, nothing left.
				data := content(limit, limit+1)
				w, err := s.NewWriter(opts)
				require.NoError(t, err)
				err = mode.write(w, data)
				assert.ErrorIs(t, err, blobstore.ErrTooLarge)
				_, err = w.Commit(blobstore.Upload{})
				assert.ErrorIs(t, err, blobstore.ErrTooLarge)
				require.NoError(t, w.Close())
				assertNoDataFiles(t, s.Dir())
				_, err = s.Stat(dtfc.Sum(data))
				assert.ErrorIs(t, err, blobstore.ErrNotFound)

				// Exactly the limit: stored.
				data = data[:limit]
				w, err = s.NewWriter(opts)
				require.NoError(t, err)
				require.NoError(t, mode.write(w, data))
				res, err := w.Commit(blobstore.Upload{})
				require.NoError(t, err)
				require.NoError(t, w.Close())
				assert.Equal(t, dtfc.Sum(data), res.State.ID)
				assert.Equal(t, int64(limit), res.State.Size)
				assert.Len(t, filesUnder(t, s.BlobDir()), 1)
				assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")))
			})
		}
	}
}

// chunkReader returns data size bytes at a time, then io.EOF on its own.
type chunkReader struct {
	data []byte
	size int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.size)], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestWriterCloseWithoutCommit(t *testing.T) {
	for _, size := range []int{0, 10, 1 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := newStore(t)
			w, err := s.NewWriter(blobstore.WriterOptions{})
			require.NoError(t, err)
			_, err = w.ReadFrom(onlyReader{bytes.NewReader(content(3, size))})
			require.NoError(t, err)
			assert.Len(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")), 1, "the temp file while writing")
			require.NoError(t, w.Close())
			require.NoError(t, w.Close(), "Close twice")
			assertNoDataFiles(t, s.Dir())
			_, err = s.Stat(dtfc.Sum(content(3, size)))
			assert.ErrorIs(t, err, blobstore.ErrNotFound)
		})
	}
}

func TestWriterFailingReader(t *testing.T) {
	s := newStore(t)
	boom := errors.New("connection reset")
	w, err := s.NewWriter(blobstore.WriterOptions{})
	require.NoError(t, err)
	r := io.MultiReader(&chunkReader{data: content(4, 700<<10), size: 100 << 10}, iotest.ErrReader(boom))
	_, err = w.ReadFrom(r)
	assert.ErrorIs(t, err, boom)
	_, err = w.Commit(blobstore.Upload{})
	assert.ErrorIs(t, err, boom)
	require.NoError(t, w.Close())
	assertNoDataFiles(t, s.Dir())
}

func TestConcurrentSameContent(t *testing.T) {
	s := newStore(t)
	data := content(5, 64<<10)
	const n = 50
	results := make([]blobstore.Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			w, err := s.NewWriter(blobstore.WriterOptions{})
			if err != nil {
				errs[i] = err
				return
			}
			defer w.Close()
			if _, err := w.ReadFrom(onlyReader{bytes.NewReader(data)}); err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = w.Commit(blobstore.Upload{Filename: fmt.Sprint(i)})
		})
	}
	wg.Wait()
	created := 0
	var maxClock dtfc.Timestamp
	clocks := map[dtfc.Timestamp]bool{}
	for i := range n {
		require.NoError(t, errs[i], "upload %d", i)
		if results[i].Created {
			created++
		}
		assert.True(t, results[i].Applied)
		clocks[results[i].State.Clock] = true
		maxClock = max(maxClock, results[i].State.Clock)
	}
	assert.Equal(t, 1, created, "exactly one upload creates the blob")
	assert.Len(t, clocks, n, "every upload is its own operation")
	assert.Len(t, filesUnder(t, s.BlobDir()), 1)
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")))
	blobs, nbytes := s.Stats()
	assert.Equal(t, int64(1), blobs)
	assert.Equal(t, int64(len(data)), nbytes)
	st, err := s.Stat(dtfc.Sum(data))
	require.NoError(t, err)
	assert.Equal(t, maxClock, st.Clock, "the latest operation wins")
	changes, err := s.Changes(0, 1000)
	require.NoError(t, err)
	assert.Len(t, changes, 1)
}

func TestConcurrentDistinct(t *testing.T) {
	s := newStore(t)
	const n = 200
	errs := make([]error, n)
	results := make([]blobstore.Result, n)
	var wg sync.WaitGroup
	var total int64
	for i := range n {
		total += int64(100 + i)
		wg.Go(func() {
			w, err := s.NewWriter(blobstore.WriterOptions{})
			if err != nil {
				errs[i] = err
				return
			}
			defer w.Close()
			if _, err := w.Write(content(1000+i, 100+i)); err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = w.Commit(blobstore.Upload{})
		})
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i], "upload %d", i)
		assert.True(t, results[i].Created)
		assert.Equal(t, dtfc.Sum(content(1000+i, 100+i)), results[i].State.ID)
	}
	blobs, nbytes := s.Stats()
	assert.Equal(t, int64(n), blobs)
	assert.Equal(t, total, nbytes)
	assert.Len(t, filesUnder(t, s.BlobDir()), n)
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")))
	changes, err := s.Changes(0, 10*n)
	require.NoError(t, err)
	assert.Len(t, changes, n)
	assert.Equal(t, uint64(n), s.LastSeq())
	seen := map[dtfc.ID]bool{}
	for _, c := range changes {
		seen[c.State.ID] = true
	}
	assert.Len(t, seen, n)
}

func TestDelete(t *testing.T) {
	s := newStore(t)
	data := content(6, 5000)
	res := put(t, s, data, blobstore.Upload{Filename: "x"})
	id := res.State.ID

	tomb, err := s.Delete(id, false)
	require.NoError(t, err)
	assert.True(t, tomb.Deleted)
	assert.Equal(t, id, tomb.ID)
	assert.Equal(t, s.NodeID(), tomb.Node)
	assert.Greater(t, tomb.Clock, res.State.Clock)

	_, err = os.Stat(blobPath(s.Dir(), id))
	assert.ErrorIs(t, err, fs.ErrNotExist, "file removed from blobs/")
	assert.Empty(t, filesUnder(t, s.BlobDir()))
	st, err := s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, tomb, st)
	_, err = s.Open(id)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	blobs, nbytes := s.Stats()
	assert.Zero(t, blobs)
	assert.Zero(t, nbytes)

	// Unknown IDs.
	unknown := dtfc.Sum([]byte("never seen"))
	_, err = s.Delete(unknown, false)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	_, err = s.Stat(unknown)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "a refused delete records nothing")
	forced, err := s.Delete(unknown, true)
	require.NoError(t, err)
	assert.True(t, forced.Deleted)
	st, err = s.Stat(unknown)
	require.NoError(t, err)
	assert.Equal(t, forced, st, "force records a tombstone")

	// An upload after the delete stores the bytes again.
	res2 := put(t, s, data, blobstore.Upload{Filename: "y"})
	assert.True(t, res2.Created)
	assert.True(t, res2.Applied)
	assert.Greater(t, res2.State.Clock, tomb.Clock)
	read, _ := readBlob(t, s, id)
	assert.Equal(t, data, read)
	assertMode(t, blobPath(s.Dir(), id), 0o644)
	blobs, nbytes = s.Stats()
	assert.Equal(t, int64(1), blobs)
	assert.Equal(t, int64(len(data)), nbytes)
}

func TestApplyLWW(t *testing.T) {
	t.Run("newer tombstone removes a present blob", func(t *testing.T) {
		s := newStore(t)
		res := put(t, s, []byte("present"), blobstore.Upload{})
		tomb := dtfc.State{ID: res.State.ID, Deleted: true, Clock: res.State.Clock + 1, Node: "peer"}
		out, err := s.Apply(tomb)
		require.NoError(t, err)
		assert.Equal(t, blobstore.Applied, out)
		assert.Empty(t, filesUnder(t, s.BlobDir()))
		st, err := s.Stat(tomb.ID)
		require.NoError(t, err)
		assert.Equal(t, tomb, st)
		blobs, nbytes := s.Stats()
		assert.Zero(t, blobs)
		assert.Zero(t, nbytes)
		assert.GreaterOrEqual(t, s.Clock().Last(), tomb.Clock, "the clock observed the remote state")
	})

	t.Run("older upload after a newer tombstone is stale", func(t *testing.T) {
		s := newStore(t)
		data := []byte("resurrect me not")
		id := dtfc.Sum(data)
		tomb := dtfc.State{ID: id, Deleted: true, Clock: epoch + 10, Node: "a"}
		out, err := s.Apply(tomb)
		require.NoError(t, err)
		assert.Equal(t, blobstore.Applied, out, "a tombstone for an ID never held is recorded")
		seq := s.LastSeq()

		old := dtfc.State{ID: id, Clock: epoch + 9, Node: "z", Size: int64(len(data))}
		out, err = s.Apply(old)
		require.NoError(t, err)
		assert.Equal(t, blobstore.Stale, out)
		res, err := commitState(t, s, data, old, true)
		require.NoError(t, err)
		assert.False(t, res.Applied)
		assert.False(t, res.Created)
		assert.Equal(t, tomb, res.State)

		st, err := s.Stat(id)
		require.NoError(t, err)
		assert.Equal(t, tomb, st)
		assertNoDataFiles(t, s.Dir())
		assert.Equal(t, seq, s.LastSeq())
	})

	t.Run("upload of bytes not held needs them", func(t *testing.T) {
		s := newStore(t)
		data := content(8, 3000)
		st := dtfc.State{ID: dtfc.Sum(data), Clock: epoch, Node: "peer", Size: int64(len(data)), ContentType: "image/png", Filename: "p.png"}
		out, err := s.Apply(st)
		require.NoError(t, err)
		assert.Equal(t, blobstore.NeedBytes, out)
		_, err = s.Stat(st.ID)
		assert.ErrorIs(t, err, blobstore.ErrNotFound, "NeedBytes records nothing")
		assert.Zero(t, s.LastSeq())

		res, err := commitState(t, s, data, st, true)
		require.NoError(t, err)
		assert.True(t, res.Applied)
		assert.True(t, res.Created)
		assert.Equal(t, st, res.State)
		got, err := s.Stat(st.ID)
		require.NoError(t, err)
		assert.Equal(t, st, got, "the remote state is kept as is")
		read, _ := readBlob(t, s, st.ID)
		assert.Equal(t, data, read)
		assertMode(t, blobPath(s.Dir(), st.ID), 0o644)
		changes, err := s.Changes(0, 10)
		require.NoError(t, err)
		require.Len(t, changes, 1)
		assert.Equal(t, st, changes[0].State)

		// Now held: a newer upload state applies without bytes.
		newer := st
		newer.Clock++
		newer.Filename = "q.png"
		out, err = s.Apply(newer)
		require.NoError(t, err)
		assert.Equal(t, blobstore.Applied, out)
		got, err = s.Stat(st.ID)
		require.NoError(t, err)
		assert.Equal(t, newer, got)
	})

	t.Run("CommitState older than local changes nothing", func(t *testing.T) {
		s := newStore(t)
		data := content(9, 2000)
		local := dtfc.State{ID: dtfc.Sum(data), Clock: epoch + 5, Node: "b", Size: int64(len(data))}
		res, err := commitState(t, s, data, local, true)
		require.NoError(t, err)
		require.True(t, res.Applied)
		p := blobPath(s.Dir(), local.ID)
		before, err := os.Stat(p)
		require.NoError(t, err)
		seq := s.LastSeq()

		older := local
		older.Clock--
		older.Filename = "older"
		res, err = commitState(t, s, data, older, true)
		require.NoError(t, err)
		assert.False(t, res.Applied)
		assert.False(t, res.Created)
		assert.Equal(t, local, res.State)
		after, err := os.Stat(p)
		require.NoError(t, err)
		assert.True(t, os.SameFile(before, after), "the blob file was replaced")
		assert.Equal(t, before.ModTime(), after.ModTime())
		got, err := s.Stat(local.ID)
		require.NoError(t, err)
		assert.Equal(t, local, got)
		assert.Equal(t, seq, s.LastSeq())
		assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")))
	})

	t.Run("equal clocks: the greater node wins", func(t *testing.T) {
		for _, order := range [][2]string{{"a", "b"}, {"b", "a"}} {
			t.Run(order[0]+" then "+order[1], func(t *testing.T) {
				s := newStore(t)
				data := []byte("tie")
				first := dtfc.State{ID: dtfc.Sum(data), Clock: epoch, Node: order[0], Size: 3, Filename: order[0]}
				second := first
				second.Node, second.Filename = order[1], order[1]
				res, err := commitState(t, s, data, first, true)
				require.NoError(t, err)
				require.True(t, res.Applied)
				out, err := s.Apply(second)
				require.NoError(t, err)
				if second.Node > first.Node {
					assert.Equal(t, blobstore.Applied, out)
				} else {
					assert.Equal(t, blobstore.Stale, out)
				}
				got, err := s.Stat(first.ID)
				require.NoError(t, err)
				assert.Equal(t, "b", got.Node)
				assert.Equal(t, "b", got.Filename)

				// Tombstones tie the same way.
				tomb := dtfc.State{ID: first.ID, Deleted: true, Clock: epoch, Node: "a"}
				out, err = s.Apply(tomb)
				require.NoError(t, err)
				assert.Equal(t, blobstore.Stale, out, "node a loses to node b at equal clocks")
				tomb.Node = "c"
				out, err = s.Apply(tomb)
				require.NoError(t, err)
				assert.Equal(t, blobstore.Applied, out, "node c wins over node b at equal clocks")
				assert.Empty(t, filesUnder(t, s.BlobDir()))
			})
		}
	})

	t.Run("the same state twice", func(t *testing.T) {
		s := newStore(t)
		data := []byte("twice")
		st := dtfc.State{ID: dtfc.Sum(data), Clock: epoch, Node: "n", Size: 5}
		res, err := commitState(t, s, data, st, true)
		require.NoError(t, err)
		assert.True(t, res.Applied)
		seq := s.LastSeq()
		res, err = commitState(t, s, data, st, true)
		require.NoError(t, err)
		assert.False(t, res.Applied, "a state is not newer than itself")
		out, err := s.Apply(st)
		require.NoError(t, err)
		assert.Equal(t, blobstore.Stale, out)
		assert.Equal(t, seq, s.LastSeq())

		tomb := dtfc.State{ID: st.ID, Deleted: true, Clock: epoch + 1, Node: "n"}
		out, err = s.Apply(tomb)
		require.NoError(t, err)
		assert.Equal(t, blobstore.Applied, out)
		seq = s.LastSeq()
		out, err = s.Apply(tomb)
		require.NoError(t, err)
		assert.Equal(t, blobstore.Stale, out)
		assert.Equal(t, seq, s.LastSeq())
	})

	t.Run("CommitState with a wrong size fails", func(t *testing.T) {
		for _, delta := range []int64{-1, 1} {
			t.Run(fmt.Sprint(delta), func(t *testing.T) {
				s := newStore(t)
				data := content(10, 1000)
				st := dtfc.State{ID: dtfc.Sum(data), Clock: epoch, Node: "n", Size: int64(len(data)) + delta}
				res, err := commitState(t, s, data, st, true)
				assert.Error(t, err)
				assert.False(t, res.Applied)
				assertNoDataFiles(t, s.Dir())
				_, err = s.Stat(st.ID)
				assert.ErrorIs(t, err, blobstore.ErrNotFound)
			})
		}
	})

	t.Run("CommitState of a tombstone fails", func(t *testing.T) {
		s := newStore(t)
		data := []byte("x")
		_, err := commitState(t, s, data, dtfc.State{ID: dtfc.Sum(data), Deleted: true, Clock: epoch, Node: "n"}, true)
		assert.Error(t, err)
		assertNoDataFiles(t, s.Dir())
	})
}

// TestCommitStateRejectsZeroID: a state without an ID (say, a peer's JSON
// that lacks "sha512") must not be recorded under the zero ID while its
// bytes are placed under their own.
func TestCommitStateRejectsZeroID(t *testing.T) {
	s := newStore(t)
	data := content(11, 100)
	id := dtfc.Sum(data)
	res := put(t, s, data, blobstore.Upload{})

	bad := dtfc.State{Clock: res.State.Clock + 100, Node: "peer", Size: int64(len(data))}
	_, err := commitState(t, s, data, bad, true)
	assert.Error(t, err, "CommitState accepted a state whose ID is zero")

	_, err = s.Stat(dtfc.ID{})
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "a record exists under the zero ID")
	st, err := s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, res.State, st)
	blobs, nbytes := s.Stats()
	assert.Equal(t, int64(1), blobs)
	assert.Equal(t, int64(len(data)), nbytes)
	changes, err := s.Changes(0, 10)
	require.NoError(t, err)
	if assert.Len(t, changes, 1) {
		assert.Equal(t, id, changes[0].State.ID)
	}
}

// TestReadFromAfterCommit: once committed, a blob file is never written
// again; Write refuses, and so must ReadFrom.
func TestReadFromAfterCommit(t *testing.T) {
	s := newStore(t)
	data := content(12, 1000)
	w, err := s.NewWriter(blobstore.WriterOptions{})
	require.NoError(t, err)
	defer func() { assert.NoError(t, w.Close()) }()
	_, err = w.Write(data)
	require.NoError(t, err)
	res, err := w.Commit(blobstore.Upload{})
	require.NoError(t, err)

	_, err = w.Write([]byte("extra"))
	assert.Error(t, err, "Write after Commit")
	_, err = w.ReadFrom(&chunkReader{data: []byte("extra bytes appended to a committed blob"), size: 10})
	assert.Error(t, err, "ReadFrom after Commit")

	onDisk, err := os.ReadFile(blobPath(s.Dir(), res.State.ID))
	require.NoError(t, err)
	assert.Equal(t, data, onDisk, "the committed blob file was modified")
}

func TestChangeFeed(t *testing.T) {
	s := newStore(t)
	assert.Zero(t, s.LastSeq())
	changes, err := s.Changes(0, 10)
	require.NoError(t, err)
	assert.Empty(t, changes)

	ch := s.Changed()
	assert.False(t, isClosed(ch))
	a := put(t, s, []byte("a"), blobstore.Upload{})
	waitClosed(t, ch, "Changed after an upload")
	assert.Equal(t, uint64(1), s.LastSeq())

	b := put(t, s, []byte("b"), blobstore.Upload{})
	c := put(t, s, []byte("c"), blobstore.Upload{})
	ch = s.Changed()
	a2 := put(t, s, []byte("a"), blobstore.Upload{Filename: "again"})
	waitClosed(t, ch, "Changed after a re-upload")

	changes, err = s.Changes(0, 100)
	require.NoError(t, err)
	require.Len(t, changes, 3, "a changed twice appears once")
	assert.Equal(t, []dtfc.State{b.State, c.State, a2.State}, []dtfc.State{changes[0].State, changes[1].State, changes[2].State})
	assert.NotEqual(t, a.State, a2.State)
	assert.True(t, slices.IsSortedFunc(changes, func(x, y blobstore.Change) int { return int(x.Seq) - int(y.Seq) }))
	assert.Equal(t, s.LastSeq(), changes[2].Seq)
	assert.Equal(t, uint64(4), s.LastSeq())

	// Paging.
	page, err := s.Changes(0, 2)
	require.NoError(t, err)
	assert.Equal(t, changes[:2], page)
	page, err = s.Changes(changes[0].Seq, 100)
	require.NoError(t, err)
	assert.Equal(t, changes[1:], page)
	page, err = s.Changes(s.LastSeq(), 100)
	require.NoError(t, err)
	assert.Empty(t, page)

	// A delete moves its ID to the end of the feed.
	ch = s.Changed()
	tomb, err := s.Delete(b.State.ID, false)
	require.NoError(t, err)
	waitClosed(t, ch, "Changed after a delete")
	changes, err = s.Changes(0, 100)
	require.NoError(t, err)
	require.Len(t, changes, 3)
	assert.Equal(t, c.State, changes[0].State)
	assert.Equal(t, a2.State, changes[1].State)
	assert.Equal(t, tomb, changes[2].State)

	// Apply enters the feed.
	ch = s.Changed()
	remote := dtfc.State{ID: dtfc.Sum([]byte("remote")), Deleted: true, Clock: epoch, Node: "peer"}
	_, err = s.Apply(remote)
	require.NoError(t, err)
	waitClosed(t, ch, "Changed after Apply")
	seq := s.LastSeq()

	// A cache fill does not.
	ch = s.Changed()
	fill := []byte("cache fill")
	st := dtfc.State{ID: dtfc.Sum(fill), Clock: epoch + 1, Node: "peer", Size: int64(len(fill))}
	res, err := commitState(t, s, fill, st, false)
	require.NoError(t, err)
	assert.True(t, res.Applied)
	assert.True(t, res.Created)
	assert.Equal(t, seq, s.LastSeq())
	assert.False(t, isClosed(ch), "a cache fill notified the feed")
	changes, err = s.Changes(0, 100)
	require.NoError(t, err)
	for _, c := range changes {
		assert.NotEqual(t, st.ID, c.State.ID, "a cache fill is in the feed")
	}
	got, err := s.Stat(st.ID)
	require.NoError(t, err)
	assert.Equal(t, st, got)
}

func TestResultSeqAndCountChanges(t *testing.T) {
	s := newStore(t)
	count := func(since uint64, deletesOnly bool) int64 {
		t.Helper()
		n, err := s.CountChanges(since, deletesOnly)
		require.NoError(t, err)
		return n
	}
	assert.Zero(t, count(0, false))

	a := put(t, s, []byte("a"), blobstore.Upload{})
	assert.Equal(t, uint64(1), a.Seq)
	b := put(t, s, []byte("b"), blobstore.Upload{})
	assert.Equal(t, uint64(2), b.Seq)
	assert.Equal(t, s.LastSeq(), b.Seq)
	_, err := s.Delete(dtfc.Sum([]byte("c")), true)
	require.NoError(t, err)
	_, err = s.Delete(b.State.ID, false)
	require.NoError(t, err)

	// Feed: a(1), c(3, deleted), b(4, deleted).
	assert.Equal(t, int64(3), count(0, false))
	assert.Equal(t, int64(2), count(0, true))
	assert.Equal(t, int64(2), count(1, false))
	assert.Equal(t, int64(1), count(3, false))
	assert.Equal(t, int64(1), count(3, true))
	assert.Zero(t, count(4, false))

	a2 := put(t, s, []byte("a"), blobstore.Upload{})
	assert.Equal(t, uint64(5), a2.Seq)
	assert.Equal(t, int64(3), count(0, false), "a changed twice counts once")
	changes, err := s.Changes(0, 10)
	require.NoError(t, err)
	require.NotEmpty(t, changes)
	assert.Equal(t, a2.Seq, changes[len(changes)-1].Seq)

	// Not in the feed: a cache fill, a stale state.
	fill := []byte("fill")
	st := dtfc.State{ID: dtfc.Sum(fill), Clock: epoch, Node: "peer", Size: int64(len(fill))}
	res, err := commitState(t, s, fill, st, false)
	require.NoError(t, err)
	assert.True(t, res.Applied)
	assert.Zero(t, res.Seq)
	res, err = commitState(t, s, fill, st, true)
	require.NoError(t, err)
	assert.False(t, res.Applied)
	assert.Zero(t, res.Seq)
	assert.Equal(t, int64(3), count(0, false))
}

func TestValues(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	v, err := s.Value("cursor/peer1")
	require.NoError(t, err)
	assert.Nil(t, v)
	require.NoError(t, s.SetValue("cursor/peer1", []byte{1, 2, 3}))
	v, err = s.Value("cursor/peer1")
	require.NoError(t, err)
	assert.Equal(t, []byte{1, 2, 3}, v)
	require.NoError(t, s.Close())

	s = openStore(t, dir, blobstore.Options{})
	v, err = s.Value("cursor/peer1")
	require.NoError(t, err)
	assert.Equal(t, []byte{1, 2, 3}, v)
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	opts := blobstore.Options{Wall: fixedWall} // clocks differ only by their counter
	s, err := blobstore.Open(dir, opts)
	require.NoError(t, err)
	node := s.NodeID()
	require.NotEmpty(t, node)
	var ids []dtfc.ID
	var maxClock dtfc.Timestamp
	for i := range 5 {
		res := put(t, s, content(20+i, 100*i), blobstore.Upload{Filename: fmt.Sprint(i)})
		ids = append(ids, res.State.ID)
		maxClock = max(maxClock, res.State.Clock)
	}
	tomb, err := s.Delete(ids[1], false)
	require.NoError(t, err)
	maxClock = max(maxClock, tomb.Clock)
	require.NoError(t, s.SetValue("k", []byte("v")))

	states := map[dtfc.ID]dtfc.State{}
	for _, id := range ids {
		st, err := s.Stat(id)
		require.NoError(t, err)
		states[id] = st
	}
	blobs, nbytes := s.Stats()
	changes, err := s.Changes(0, 100)
	require.NoError(t, err)
	seq := s.LastSeq()
	digests, err := s.Digests()
	require.NoError(t, err)
	require.NoError(t, s.Close())

	s = openStore(t, dir, opts)
	assert.Equal(t, node, s.NodeID())
	for _, id := range ids {
		st, err := s.Stat(id)
		require.NoError(t, err)
		assert.Equal(t, states[id], st)
	}
	b2, n2 := s.Stats()
	assert.Equal(t, blobs, b2)
	assert.Equal(t, nbytes, n2)
	assert.Equal(t, int64(4), b2)
	changes2, err := s.Changes(0, 100)
	require.NoError(t, err)
	assert.Equal(t, changes, changes2)
	assert.Equal(t, seq, s.LastSeq())
	digests2, err := s.Digests()
	require.NoError(t, err)
	assert.Equal(t, digests, digests2)
	v, err := s.Value("k")
	require.NoError(t, err)
	assert.Equal(t, []byte("v"), v)
	for i, id := range ids {
		if i == 1 {
			continue
		}
		data, _ := readBlob(t, s, id)
		assert.Equal(t, content(20+i, 100*i), data)
	}

	assert.Greater(t, s.Clock().Now(), maxClock, "the clock went back after reopen")
	res := put(t, s, []byte("after reopen"), blobstore.Upload{})
	assert.Greater(t, res.State.Clock, maxClock)
	assert.Greater(t, s.LastSeq(), seq)
}

// TestLastSeqDoesNotGoBackAfterReopen: replication cursors are compared
// with LastSeq, so it must not move backwards over a restart. Purging the
// tombstone that holds the latest feed entry removes that entry.
func TestLastSeqDoesNotGoBackAfterReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	put(t, s, []byte("kept"), blobstore.Upload{})
	gone := put(t, s, []byte("deleted then purged"), blobstore.Upload{})
	tomb, err := s.Delete(gone.State.ID, false)
	require.NoError(t, err)
	n, err := s.PurgeTombstones(tomb.Clock+1, forgetAll)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	before := s.LastSeq()
	require.Equal(t, uint64(3), before)
	require.NoError(t, s.Close())

	s = openStore(t, dir, blobstore.Options{})
	assert.Equal(t, before, s.LastSeq(), "LastSeq after reopen")
	res := put(t, s, []byte("next"), blobstore.Upload{})
	changes, err := s.Changes(before, 10)
	require.NoError(t, err)
	if assert.Len(t, changes, 1) {
		assert.Equal(t, res.State, changes[0].State)
		assert.Equal(t, s.LastSeq(), changes[0].Seq)
	}
}

func TestCrashRecovery(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	kept := map[dtfc.ID][]byte{}
	for i := range 3 {
		data := content(30+i, 1000*(i+1))
		kept[put(t, s, data, blobstore.Upload{}).State.ID] = data
	}
	delData := content(40, 500)
	delID := put(t, s, delData, blobstore.Upload{}).State.ID
	_, err = s.Delete(delID, false)
	require.NoError(t, err)
	blobs, nbytes := s.Stats()

	// (a) a valid blob that no record accounts for (renamed into place,
	// never committed)
	orphan := content(41, 700)
	orphanID := dtfc.Sum(orphan)
	writeBlobFile(t, dir, orphanID, orphan)
	// (b) a deleted ID whose file came back (tombstone committed, unlink
	// lost)
	writeBlobFile(t, dir, delID, delData)
	// (c) stray temp files
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", "blob-123"), []byte("partial"), 0o600))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tmp", "strange", "dir"), 0o755))
	// (d) a file that is not a blob in a shard directory
	some := blobPath(dir, orphanID)
	require.NoError(t, os.WriteFile(filepath.Join(filepath.Dir(some), "not-a-blob"), []byte("x"), 0o644))

	require.NoError(t, s.Close())
	markUnclean(t, dir)

	s = openStore(t, dir, blobstore.Options{})
	var want []string
	for id := range kept {
		h := id.String()
		want = append(want, filepath.Join(h[0:2], h[2:4], h))
	}
	assert.ElementsMatch(t, want, filesUnder(t, s.BlobDir()), "only recorded blobs remain")
	_, err = os.Stat(blobPath(dir, orphanID))
	assert.ErrorIs(t, err, fs.ErrNotExist, "orphan removed")
	_, err = os.Stat(blobPath(dir, delID))
	assert.ErrorIs(t, err, fs.ErrNotExist, "deleted ID's file removed")
	entries, err := os.ReadDir(filepath.Join(dir, "tmp"))
	require.NoError(t, err)
	assert.Empty(t, entries, "tmp/ is empty")
	for id, data := range kept {
		got, _ := readBlob(t, s, id)
		assert.Equal(t, data, got)
	}
	b2, n2 := s.Stats()
	assert.Equal(t, blobs, b2)
	assert.Equal(t, nbytes, n2)
	st, err := s.Stat(delID)
	require.NoError(t, err)
	assert.True(t, st.Deleted)
	_, err = s.Stat(orphanID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)

	// The store works, and an upload of the orphan's bytes is a creation.
	res := put(t, s, orphan, blobstore.Upload{})
	assert.True(t, res.Created)
}

// TestCleanCloseSweepsTemp: temp files of a previous process go even after a
// clean shutdown.
func TestCleanCloseSweepsTemp(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", "blob-9"), []byte("x"), 0o600))
	openStore(t, dir, blobstore.Options{})
	assert.Empty(t, filesUnder(t, filepath.Join(dir, "tmp")))
}

func writeBlobFile(t testing.TB, dir string, id dtfc.ID, data []byte) {
	t.Helper()
	p := blobPath(dir, id)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, data, 0o644))
}

// markUnclean sets the store's clean flag to "0", as a crash leaves it.
func markUnclean(t testing.TB, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, &bolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("sys"))
		if b == nil {
			return errors.New(`no "sys" bucket`)
		}
		if string(b.Get([]byte("clean"))) != "1" {
			return errors.New(`Close did not set "clean" to "1"`)
		}
		return b.Put([]byte("clean"), []byte("0"))
	})
	require.NoError(t, errors.Join(err, db.Close()))
}

func TestOpenTwiceFails(t *testing.T) {
	s := newStore(t)
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		s2, err := blobstore.Open(s.Dir(), blobstore.Options{})
		if err == nil {
			s2.Close()
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		require.Error(t, err, "a second Open of an open directory succeeded")
		assert.Contains(t, err.Error(), "in use")
		assert.Contains(t, err.Error(), s.Dir())
		assert.Less(t, time.Since(start), 5*time.Second)
	case <-time.After(deadline):
		t.Fatalf("second Open still blocked after %v", deadline)
	}
	// The first store is unaffected.
	put(t, s, []byte("still works"), blobstore.Upload{})
}

// feedStates gives a store the given states: uploads through CommitState,
// tombstones through Apply.
func feedStates(t testing.TB, s *blobstore.Store, states []dtfc.State, data map[dtfc.ID][]byte) {
	t.Helper()
	for _, st := range states {
		if st.Deleted {
			out, err := s.Apply(st)
			require.NoError(t, err)
			require.Equal(t, blobstore.Applied, out)
			continue
		}
		res, err := commitState(t, s, data[st.ID], st, true)
		require.NoError(t, err)
		require.True(t, res.Applied)
	}
}

func testStates(n int) ([]dtfc.State, map[dtfc.ID][]byte) {
	var states []dtfc.State
	data := map[dtfc.ID][]byte{}
	for i := range n {
		if i%4 == 3 {
			states = append(states, dtfc.State{ID: dtfc.Sum(fmt.Appendf(nil, "tomb %d", i)), Deleted: true, Clock: epoch + dtfc.Timestamp(i), Node: "node-y"})
			continue
		}
		d := content(100+i, 50+i)
		st := dtfc.State{ID: dtfc.Sum(d), Clock: epoch + dtfc.Timestamp(i), Node: "node-x", Size: int64(len(d)), ContentType: "a/b"}
		data[st.ID] = d
		states = append(states, st)
	}
	return states, data
}

func xorDigests(ds [256]blobstore.Digest) blobstore.Digest {
	var out blobstore.Digest
	for _, d := range ds {
		for i := range out.Sum {
			out.Sum[i] ^= d.Sum[i]
		}
		out.Count += d.Count
	}
	return out
}

func TestDigests(t *testing.T) {
	states, data := testStates(60)
	a, b := newStore(t), newStore(t)
	feedStates(t, a, states, data)
	reversed := slices.Clone(states)
	slices.Reverse(reversed)
	feedStates(t, b, reversed, data) // order does not matter

	da, err := a.Digests()
	require.NoError(t, err)
	db, err := b.Digests()
	require.NoError(t, err)
	assert.Equal(t, da, db)
	assert.Equal(t, uint64(len(states)), xorDigests(da).Count)
	for i := range 256 {
		sa, err := a.SubDigests(byte(i))
		require.NoError(t, err)
		sb, err := b.SubDigests(byte(i))
		require.NoError(t, err)
		assert.Equal(t, sa, sb, "SubDigests(%d)", i)
		assert.Equal(t, da[i], xorDigests(sa), "SubDigests(%d) add up to Digests()[%d]", i, i)
	}

	// One differing state: exactly its bucket and sub-bucket differ.
	x := states[0]
	newer := dtfc.State{ID: x.ID, Deleted: true, Clock: x.Clock + 1000, Node: "node-z"}
	out, err := b.Apply(newer)
	require.NoError(t, err)
	require.Equal(t, blobstore.Applied, out)
	db, err = b.Digests()
	require.NoError(t, err)
	for i := range 256 {
		if i == int(x.ID[0]) {
			assert.NotEqual(t, da[i], db[i], "bucket %d", i)
			assert.Equal(t, da[i].Count, db[i].Count, "a replaced state keeps the count")
		} else {
			assert.Equal(t, da[i], db[i], "bucket %d", i)
		}
	}
	sa, err := a.SubDigests(x.ID[0])
	require.NoError(t, err)
	sb, err := b.SubDigests(x.ID[0])
	require.NoError(t, err)
	for i := range 256 {
		if i == int(x.ID[1]) {
			assert.NotEqual(t, sa[i], sb[i], "sub-bucket %d", i)
		} else {
			assert.Equal(t, sa[i], sb[i], "sub-bucket %d", i)
		}
	}
	assert.Equal(t, db[x.ID[0]], xorDigests(sb))

	// The same state applied to a converges again.
	out, err = a.Apply(newer)
	require.NoError(t, err)
	require.Equal(t, blobstore.Applied, out)
	da, err = a.Digests()
	require.NoError(t, err)
	assert.Equal(t, da, db)
}

func TestStates(t *testing.T) {
	states, data := testStates(80)
	s := newStore(t)
	feedStates(t, s, states, data)
	byID := map[dtfc.ID]dtfc.State{}
	for _, st := range states {
		byID[st.ID] = st
	}

	collect := func(prefix []byte) []dtfc.State {
		var out []dtfc.State
		require.NoError(t, s.States(prefix, func(st dtfc.State) error {
			out = append(out, st)
			return nil
		}))
		return out
	}
	x := states[1].ID
	for _, prefix := range [][]byte{nil, {}, x[:1], x[:2], x[:], {x[0], x[1] ^ 0xff, 0}} {
		t.Run(fmt.Sprintf("%x", prefix), func(t *testing.T) {
			var want []dtfc.State
			for _, st := range states {
				if bytes.HasPrefix(st.ID[:], prefix) {
					want = append(want, st)
				}
			}
			slices.SortFunc(want, func(a, b dtfc.State) int { return bytes.Compare(a.ID[:], b.ID[:]) })
			got := collect(prefix)
			assert.Equal(t, want, got, "visited in ID order, exactly the IDs with the prefix")
		})
	}

	boom := errors.New("stop")
	calls := 0
	err := s.States(nil, func(dtfc.State) error { calls++; return boom })
	assert.ErrorIs(t, err, boom)
	assert.Equal(t, 1, calls)
}

func TestPurgeTombstones(t *testing.T) {
	s := newStore(t)
	present := put(t, s, []byte("present"), blobstore.Upload{})
	var tombs []dtfc.State
	for i := range 5 {
		st := dtfc.State{ID: dtfc.Sum(fmt.Appendf(nil, "gone %d", i)), Deleted: true, Clock: epoch + dtfc.Timestamp(10*i), Node: "peer"}
		out, err := s.Apply(st)
		require.NoError(t, err)
		require.Equal(t, blobstore.Applied, out)
		tombs = append(tombs, st)
	}

	n, err := s.PurgeTombstones(epoch, forgetAll)
	require.NoError(t, err)
	assert.Zero(t, n, "nothing is older than the first tombstone")

	// Clocks epoch, +10, +20 are before epoch+25.
	n, err = s.PurgeTombstones(epoch+25, forgetAll)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	for i, st := range tombs {
		got, err := s.Stat(st.ID)
		if i < 3 {
			assert.ErrorIs(t, err, blobstore.ErrNotFound, "tombstone %d purged", i)
		} else if assert.NoError(t, err) {
			assert.Equal(t, st, got, "tombstone %d kept", i)
		}
	}
	// Exactly at the horizon is not before it.
	n, err = s.PurgeTombstones(tombs[3].Clock, forgetAll)
	require.NoError(t, err)
	assert.Zero(t, n)

	got, err := s.Stat(present.State.ID)
	require.NoError(t, err)
	assert.Equal(t, present.State, got)
	_, _ = readBlob(t, s, present.State.ID)

	// A local delete's tombstone goes with a later horizon; the present
	// blob stays.
	local, err := s.Delete(dtfc.Sum([]byte("forced")), true)
	require.NoError(t, err)
	n, err = s.PurgeTombstones(local.Clock+1, forgetAll)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	_, err = s.Stat(local.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	got, err = s.Stat(present.State.ID)
	require.NoError(t, err)
	assert.Equal(t, present.State, got)
	blobs, _ := s.Stats()
	assert.Equal(t, int64(1), blobs)

	// Only the present blob is left: in the feed and in the digests.
	changes, err := s.Changes(0, 100)
	require.NoError(t, err)
	require.Len(t, changes, 1)
	assert.Equal(t, present.State, changes[0].State)
	ds, err := s.Digests()
	require.NoError(t, err)
	assert.Equal(t, uint64(1), xorDigests(ds).Count)
}

func TestEvict(t *testing.T) {
	const size = 1 << 10
	fill := func(t *testing.T, s *blobstore.Store) []dtfc.ID {
		var ids []dtfc.ID
		for i := range 10 {
			ids = append(ids, put(t, s, content(200+i, size), blobstore.Upload{}).State.ID)
		}
		return ids
	}
	read := func(t *testing.T, s *blobstore.Store, ids ...dtfc.ID) {
		for _, id := range ids {
			_, _ = readBlob(t, s, id)
		}
	}
	assertHeld := func(t *testing.T, s *blobstore.Store, ids []dtfc.ID, want ...int) {
		t.Helper()
		for i, id := range ids {
			_, statErr := s.Stat(id)
			_, fileErr := os.Stat(s.Path(id))
			if slices.Contains(want, i) {
				assert.NoError(t, statErr, "blob %d kept", i)
				assert.NoError(t, fileErr, "blob %d kept", i)
			} else {
				assert.ErrorIs(t, statErr, blobstore.ErrNotFound, "blob %d evicted without a tombstone", i)
				assert.ErrorIs(t, fileErr, fs.ErrNotExist, "blob %d's file removed", i)
			}
		}
	}

	t.Run("least recently used first", func(t *testing.T) {
		s := openStore(t, t.TempDir(), blobstore.Options{TrackAccess: true})
		ids := fill(t, s)
		read(t, s, ids[0], ids[1], ids[2]) // the oldest uploads become the most recent
		seq := s.LastSeq()

		evicted, err := s.Evict(5*size, 0, allAcked)
		require.NoError(t, err)
		var got []dtfc.ID
		for _, st := range evicted {
			got = append(got, st.ID)
		}
		assert.Equal(t, ids[3:8], got, "evicted in least-recently-used order")
		_, nbytes := s.Stats()
		assert.LessOrEqual(t, nbytes, int64(5*size))
		assertHeld(t, s, ids, 0, 1, 2, 8, 9)
		assert.Equal(t, seq, s.LastSeq(), "eviction is not a change")

		// Within budget: nothing to do.
		evicted, err = s.Evict(5*size, 0, allAcked)
		require.NoError(t, err)
		assert.Empty(t, evicted)

		// A reserve makes room for what comes.
		evicted, err = s.Evict(5*size, 2*size, allAcked)
		require.NoError(t, err)
		assert.Len(t, evicted, 2)
		assertHeld(t, s, ids, 0, 1, 2)
	})

	t.Run("an open blob is never evicted", func(t *testing.T) {
		s := openStore(t, t.TempDir(), blobstore.Options{TrackAccess: true})
		ids := fill(t, s)
		b, err := s.Open(ids[0])
		require.NoError(t, err)
		read(t, s, ids[1:]...) // ids[0] is now the least recently used
		evicted, err := s.Evict(2*size, 0, allAcked)
		require.NoError(t, err)
		assert.Len(t, evicted, 8)
		assertHeld(t, s, ids, 0, 9)
		data, err := io.ReadAll(b)
		require.NoError(t, err)
		assert.Equal(t, content(200, size), data)
		require.NoError(t, b.Close())

		// Closed, it goes.
		evicted, err = s.Evict(size, 0, allAcked)
		require.NoError(t, err)
		require.Len(t, evicted, 1)
		assert.Equal(t, ids[0], evicted[0].ID)
	})

	t.Run("order survives a restart", func(t *testing.T) {
		dir := t.TempDir()
		s, err := blobstore.Open(dir, blobstore.Options{TrackAccess: true})
		require.NoError(t, err)
		ids := fill(t, s)
		read(t, s, ids[0])
		require.NoError(t, s.Close())
		s = openStore(t, dir, blobstore.Options{TrackAccess: true})
		_, err = s.Evict(9*size, 0, allAcked)
		require.NoError(t, err)
		assertHeld(t, s, ids, 0, 2, 3, 4, 5, 6, 7, 8, 9)
	})

	t.Run("without TrackAccess nothing is evicted", func(t *testing.T) {
		s := newStore(t)
		ids := fill(t, s)
		read(t, s, ids...)
		evicted, err := s.Evict(size, 0, allAcked)
		require.NoError(t, err)
		assert.Empty(t, evicted)
		blobs, nbytes := s.Stats()
		assert.Equal(t, int64(10), blobs)
		assert.Equal(t, int64(10*size), nbytes)
		assertHeld(t, s, ids, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	})
}

func TestScrub(t *testing.T) {
	s := newStore(t)
	var states []dtfc.State
	var total int64
	for i := range 6 {
		data := content(300+i, 10_000*i+1)
		states = append(states, put(t, s, data, blobstore.Upload{Filename: fmt.Sprint(i)}).State)
		total += int64(len(data))
	}
	// A tombstone is not scrubbed.
	_, err := s.Delete(dtfc.Sum([]byte("tombstone")), true)
	require.NoError(t, err)

	bad := states[3]
	p := s.Path(bad.ID)
	require.NoError(t, os.Chmod(p, 0o644|0o200))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	require.NoError(t, err)
	var one [1]byte
	_, err = f.ReadAt(one[:], 100)
	require.NoError(t, err)
	one[0] ^= 0x01
	_, err = f.WriteAt(one[:], 100)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	corrupt, err := os.ReadFile(p)
	require.NoError(t, err)
	seq := s.LastSeq()

	var reported []dtfc.State
	require.NoError(t, s.Scrub(t.Context(), 0, func(st dtfc.State) { reported = append(reported, st) }))
	assert.Equal(t, []dtfc.State{bad}, reported)

	q := filesUnder(t, filepath.Join(s.Dir(), "quarantine"))
	if assert.Len(t, q, 1) {
		assert.True(t, strings.HasPrefix(q[0], bad.ID.String()), "quarantined as %s", q[0])
		moved, err := os.ReadFile(filepath.Join(s.Dir(), "quarantine", q[0]))
		require.NoError(t, err)
		assert.Equal(t, corrupt, moved, "the corrupt bytes are kept for inspection")
	}
	_, err = os.Stat(p)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	_, err = s.Stat(bad.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	_, err = s.Open(bad.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	for i, st := range states {
		if i == 3 {
			continue
		}
		data, got := readBlob(t, s, st.ID)
		assert.Equal(t, st, got)
		assert.Equal(t, st.ID, dtfc.Sum(data))
	}
	blobs, nbytes := s.Stats()
	assert.Equal(t, int64(5), blobs)
	assert.Equal(t, total-bad.Size, nbytes)
	assert.Equal(t, seq, s.LastSeq(), "a quarantine is not a change to replicate")

	p1 := s.ScrubProgress()
	assert.False(t, p1.Running)
	assert.Equal(t, int64(6), p1.Checked)
	assert.Equal(t, total, p1.CheckedBytes)
	assert.Equal(t, int64(1), p1.Corrupt)
	assert.Equal(t, int64(1), p1.TotalCorrupt)
	assert.Equal(t, int64(1), p1.Passes)
	assert.False(t, p1.PassStarted.IsZero())
	assert.False(t, p1.PassFinished.Before(p1.PassStarted))

	// A clean second pass.
	reported = nil
	require.NoError(t, s.Scrub(t.Context(), 0, func(st dtfc.State) { reported = append(reported, st) }))
	assert.Empty(t, reported)
	p2 := s.ScrubProgress()
	assert.Equal(t, int64(5), p2.Checked)
	assert.Zero(t, p2.Corrupt)
	assert.Equal(t, int64(1), p2.TotalCorrupt)
	assert.Equal(t, int64(2), p2.Passes)

	// The bytes come back from a peer.
	res := put(t, s, content(303, 30_001), blobstore.Upload{})
	assert.True(t, res.Created)
}

func TestScrubMissingFile(t *testing.T) {
	s := newStore(t)
	res := put(t, s, []byte("vanishes"), blobstore.Upload{})
	require.NoError(t, os.Remove(s.Path(res.State.ID)))
	var reported []dtfc.State
	require.NoError(t, s.Scrub(t.Context(), 0, func(st dtfc.State) { reported = append(reported, st) }))
	assert.Equal(t, []dtfc.State{res.State}, reported)
	_, err := s.Stat(res.State.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound)
	blobs, nbytes := s.Stats()
	assert.Zero(t, blobs)
	assert.Zero(t, nbytes)
}

func TestScrubRateLimitCancel(t *testing.T) {
	s := newStore(t)
	for i := range 3 {
		put(t, s, content(400+i, 64<<10), blobstore.Upload{})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// At 1 KiB/s the pass would take minutes.
	err := s.Scrub(ctx, 1<<10, func(dtfc.State) { t.Error("nothing is corrupt") })
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.False(t, s.ScrubProgress().Running)
	blobs, _ := s.Stats()
	assert.Equal(t, int64(3), blobs, "a cancelled scrub drops nothing")

	// Cancelled before it starts.
	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	assert.ErrorIs(t, s.Scrub(ctx, 0, nil), context.Canceled)
}

func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a 2 MiB tmpfs at %s: %v: %s", mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	// Open first: bbolt needs room for meta.db.
	s := openStore(t, mnt, blobstore.Options{})
	big := content(500, 4<<20)
	modes := []struct {
		name  string
		write func(w *blobstore.Writer) error
	}{
		{"ReadFrom", func(w *blobstore.Writer) error {
			_, err := w.ReadFrom(onlyReader{bytes.NewReader(big)})
			return err
		}},
		{"Write", func(w *blobstore.Writer) error {
			_, err := w.Write(big)
			return err
		}},
	}
	for i, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			held := filesUnder(t, s.BlobDir())
			w, err := s.NewWriter(blobstore.WriterOptions{})
			require.NoError(t, err)
			err = mode.write(w)
			assert.ErrorIs(t, err, blobstore.ErrNoSpace)
			_, err = w.Commit(blobstore.Upload{})
			assert.ErrorIs(t, err, blobstore.ErrNoSpace)
			require.NoError(t, w.Close())
			assert.Equal(t, held, filesUnder(t, s.BlobDir()), "no new file under blobs/")
			assert.Empty(t, filesUnder(t, filepath.Join(mnt, "tmp")), "files under tmp/")
			_, err = s.Stat(dtfc.Sum(big))
			assert.ErrorIs(t, err, blobstore.ErrNotFound)

			// The space came back: small uploads work.
			small := content(501+i, 10<<10)
			res := put(t, s, small, blobstore.Upload{})
			assert.True(t, res.Created)
			got, _ := readBlob(t, s, res.State.ID)
			assert.Equal(t, small, got)
		})
	}
	blobs, _ := s.Stats()
	assert.Equal(t, int64(len(modes)), blobs)
}

func TestClosedStore(t *testing.T) {
	s, err := blobstore.Open(t.TempDir(), blobstore.Options{TrackAccess: true})
	require.NoError(t, err)
	res := put(t, s, []byte("before close"), blobstore.Upload{})
	pending, err := s.NewWriter(blobstore.WriterOptions{})
	require.NoError(t, err)
	_, err = pending.Write([]byte("in flight"))
	require.NoError(t, err)

	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close twice")

	_, err = s.NewWriter(blobstore.WriterOptions{})
	assert.ErrorIs(t, err, blobstore.ErrClosed, "NewWriter")
	_, err = pending.Commit(blobstore.Upload{})
	assert.ErrorIs(t, err, blobstore.ErrClosed, "Commit")
	require.NoError(t, pending.Close())
	assert.Empty(t, filesUnder(t, filepath.Join(s.Dir(), "tmp")), "the writer's temp file is removed on Close")
	_, err = s.Delete(res.State.ID, false)
	assert.ErrorIs(t, err, blobstore.ErrClosed, "Delete")
	_, err = s.Delete(res.State.ID, true)
	assert.ErrorIs(t, err, blobstore.ErrClosed, "Delete force")
	_, err = s.Apply(dtfc.State{ID: res.State.ID, Deleted: true, Clock: res.State.Clock + 1, Node: "x"})
	assert.ErrorIs(t, err, blobstore.ErrClosed, "Apply")
	_, err = s.PurgeTombstones(res.State.Clock+1, forgetAll)
	assert.ErrorIs(t, err, blobstore.ErrClosed, "PurgeTombstones")
	_, err = s.ForgetState(res.State)
	assert.ErrorIs(t, err, blobstore.ErrClosed, "ForgetState")
	_, err = s.Evict(1, 0, allAcked)
	assert.ErrorIs(t, err, blobstore.ErrClosed, "Evict")
	// The blob file is untouched by all of the above.
	_, err = os.Stat(blobPath(s.Dir(), res.State.ID))
	assert.NoError(t, err)
}

// TestSetValueAfterClose: SetValue is a write like the others and must
// fail with ErrClosed after Close, not block forever.
func TestSetValueAfterClose(t *testing.T) {
	s, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	done := make(chan error, 1)
	go func() {
		var err error
		for range 32 { // the failure is a coin toss per call
			if err = s.SetValue("k", []byte("v")); !errors.Is(err, blobstore.ErrClosed) {
				break
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, blobstore.ErrClosed)
	case <-time.After(deadline):
		t.Fatalf("SetValue after Close blocked for %v", deadline)
	}
}

func TestForget(t *testing.T) {
	s := newStore(t)
	res := put(t, s, []byte("forget me"), blobstore.Upload{})
	seq := s.LastSeq()
	forgot, err := s.ForgetState(res.State)
	require.NoError(t, err)
	require.True(t, forgot)
	_, err = s.Stat(res.State.ID)
	assert.ErrorIs(t, err, blobstore.ErrNotFound, "no tombstone")
	assertNoDataFiles(t, s.Dir())
	changes, err := s.Changes(0, 10)
	require.NoError(t, err)
	assert.Empty(t, changes)
	assert.Equal(t, seq, s.LastSeq())
	blobs, _ := s.Stats()
	assert.Zero(t, blobs)
	forgot, err = s.ForgetState(res.State)
	require.NoError(t, err, "forgetting an unknown ID")
	assert.False(t, forgot)
}

func TestOutcomeString(t *testing.T) {
	assert.Equal(t, "stale", blobstore.Stale.String())
	assert.Equal(t, "applied", blobstore.Applied.String())
	assert.Equal(t, "need-bytes", blobstore.NeedBytes.String())
}

// forgetAll lets PurgeTombstones and PurgeLifts forget whatever is old
// enough (no peer holds anything back).
func forgetAll(uint64, dtfc.Timestamp) bool { return true }

// allAcked lets Evict evict whatever the read order says (every change
// accepted by a replica).
const allAcked = math.MaxUint64
