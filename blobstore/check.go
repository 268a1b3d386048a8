package blobstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"hash/maphash"
	"io"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
)

// Why meta.db is checked before it is opened for writing, and how.
//
// A damaged bbolt file does not fail politely. bbolt trusts every page
// number and offset it reads; a wrong page id panics ("assertion failed:
// Page expected to be ...") and a page beyond the end of a truncated file
// faults on the memory map (SIGBUS). Where that happens on a goroutine of
// bbolt's own (tx.Check; the walk that rebuilds an unstored free list),
// it kills the process with a Go trace, and a recover cannot reach it.
// A free list that names a page in use makes bbolt hand that page out
// again, overwriting live records.
//
// So the check goes in two steps, and bbolt only sees a file the first
// step found well-formed:
//
//  1. walkBolt reads the file with ReadAt (no memory map, nothing to
//     fault) and checks every structure bbolt's walks would touch: the
//     meta pages and their checksums, the high-water mark against the
//     file's size, and for every page reachable from the root its id, its
//     type, its element table, every key and value inside the page, key
//     order, nested and inline buckets, no page reached twice (no cycle);
//     then, as bbolt's tx.Check does, that the stored free list and the
//     pages in use are disjoint and together every page.
//  2. On a goroutine with debug.SetPanicOnFault(true) and a recover, the
//     file is opened read-only, every key and value of every bucket is
//     read, and the store's own invariants are checked (records decode, the
//     per-range digests, the change feed and the tombstone index agree
//     with the records). Should step 1 have missed a bad page, the fault
//     or panic it causes on this goroutine becomes an error, not a crash.
//
// tx.Check itself is not run: step 1 checks all it does, and it walks the
// file again on a goroutine of its own (a fifth of the check's time).
//
// Nothing is written: a damaged file is left exactly as found.

// Errors that say why Open refused a store's metadata. They are matched
// with errors.Is; the error itself is a *MetaError.
var (
	// ErrMetaDamaged means meta.db exists but is not sound: bbolt's
	// structures or the store's records are inconsistent, or a rebuild
	// of the metadata was interrupted.
	ErrMetaDamaged = errors.New("blobstore: metadata damaged")
	// ErrMetaMissing means meta.db is missing (or empty) while the store
	// holds blob files: opening would make a new, empty store that knows
	// none of them.
	ErrMetaMissing = errors.New("blobstore: metadata missing")
	// ErrMetaForeign means meta.db belongs to another node than the one
	// named by the store's node-id file.
	ErrMetaForeign = errors.New("blobstore: metadata of another node")
)

// MetaError tells why Open refused a store's metadata. Open writes no
// file in the store (no blob file moves, meta.db is not touched) before it
// returns one.
type MetaError struct {
	// Kind is ErrMetaDamaged, ErrMetaMissing or ErrMetaForeign.
	Kind error
	// Path is the metadata file, <dir>/meta.db.
	Path string
	// Detail says what was found.
	Detail string
}

func (e *MetaError) Error() string {
	switch e.Kind {
	case ErrMetaMissing:
		return fmt.Sprintf("blobstore: the metadata is missing: %s: %s", e.Path, e.Detail)
	case ErrMetaForeign:
		return fmt.Sprintf("blobstore: the metadata is another node's: %s: %s", e.Path, e.Detail)
	}
	return fmt.Sprintf("blobstore: the metadata is damaged: %s: %s", e.Path, e.Detail)
}

// Is makes errors.Is(err, e.Kind) true.
func (e *MetaError) Is(target error) bool { return target == e.Kind }

func damaged(path, format string, args ...any) *MetaError {
	return &MetaError{Kind: ErrMetaDamaged, Path: path, Detail: fmt.Sprintf(format, args...)}
}

// metaContents is what checkMeta learnt of a sound meta.db.
type metaContents struct {
	// empty: the file holds none of the store's buckets (created, never
	// initialised).
	empty bool
	// node is the store's node ID ("" if empty).
	node string
	// rebuilding: an unfinished Rebuild wrote it.
	rebuilding bool
	// blobs, bytes count the records of present blobs.
	blobs, bytes int64
	// unconfirmed counts the unconfirmed entries.
	unconfirmed int64
	// warning describes something worth logging that is not damage.
	warning string
	took    time.Duration
}

// checkMeta checks the metadata file at path (which exists and is not
// empty) without writing to it. A damaged file is a *MetaError of kind
// ErrMetaDamaged; a file another process holds is an error saying so.
func checkMeta(path string) (metaContents, error) {
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return metaContents{}, fmt.Errorf("blobstore: check metadata: %w", err)
	}
	geo, err := walkBolt(f)
	f.Close()
	if err != nil {
		return metaContents{}, damaged(path, "%v", err)
	}
	mc, err := readMetaProtected(path)
	if err != nil {
		return mc, err
	}
	mc.warning = geo.warning
	mc.took = time.Since(start)
	return mc, nil
}

// readMetaProtected is step 2 of the check (see the top of this file): it
// opens path read-only on a goroutine where faults are panics and panics
// are recovered, reads everything and checks the store's invariants and
// bbolt's.
func readMetaProtected(path string) (mc metaContents, err error) {
	err = protect(func() error {
		var err error
		mc, err = readMeta(path)
		return err
	})
	if errors.Is(err, errPanicked) {
		return mc, damaged(path, "reading it failed: %v", err)
	}
	return mc, err
}

// errPanicked marks the error protect makes of a panic.
var errPanicked = errors.New("panic")

// protect runs f on a goroutine of its own where a memory fault is a
// panic (debug.SetPanicOnFault: only that goroutine) and a panic is
// recovered into an error wrapping errPanicked: a fault on the memory map
// of a damaged file (beyond its end, at a wild page number) fails f
// instead of killing the process.
func protect(f func() error) (err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		debug.SetPanicOnFault(true)
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%w: %v", errPanicked, r)
			}
		}()
		err = f()
	}()
	<-done
	return err
}

func readMeta(path string) (mc metaContents, err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return mc, fmt.Errorf("blobstore: %s is in use by another process", path)
	}
	if err != nil {
		return mc, damaged(path, "bbolt cannot open it: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		if err := readAll(tx); err != nil {
			return err
		}
		var err error
		mc, err = checkRecords(tx)
		return err
	})
	if err != nil {
		var me *MetaError
		if errors.As(err, &me) {
			return mc, me
		}
		return mc, damaged(path, "%v", err)
	}
	return mc, nil
}

// readWhole names the buckets checkRecords reads every key and value of.
var readWhole = map[string]bool{
	string(bucketMeta): true, string(bucketFeed): true, string(bucketTombs): true,
	string(bucketDeny): true, string(bucketUnconfirmed): true,
}

// readAll reads every key and value of every other bucket, nested ones
// too, so that a bad page is met here, on the protected goroutine.
func readAll(tx *bolt.Tx) error {
	var sum byte
	var walk func(b *bolt.Bucket) error
	walk = func(b *bolt.Bucket) error {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			for _, x := range k {
				sum ^= x
			}
			if v == nil {
				child := b.Bucket(k)
				if child == nil {
					return fmt.Errorf("key %x: neither a value nor a bucket", k)
				}
				if err := walk(child); err != nil {
					return err
				}
				continue
			}
			for _, x := range v {
				sum ^= x
			}
		}
		return nil
	}
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if readWhole[string(name)] {
			return nil
		}
		return walk(b)
	})
	_ = sum
	return err
}

// checkRecords checks the store's own invariants, which bbolt knows
// nothing of: it has no checksum on its pages, so a flipped bit in a
// record is found only here. Every record decodes; the per-range digests
// (what anti-entropy compares) are those of the records; the change feed
// holds exactly one entry per record that says it is in the feed, and
// the tombstone index one per tombstone; the feed's sequence is ahead of
// its entries. Each bucket is read once, in order: the feed and the index
// are compared with the records through an order-independent sum of a
// hash of each entry.
func checkRecords(tx *bolt.Tx) (metaContents, error) {
	var mc metaContents
	sys, meta := tx.Bucket(bucketSys), tx.Bucket(bucketMeta)
	if sys == nil && meta == nil {
		mc.empty = true
		return mc, nil
	}
	for _, b := range [][]byte{bucketSys, bucketMeta, bucketFeed, bucketTombs, bucketDigest} {
		if tx.Bucket(b) == nil {
			return mc, fmt.Errorf("the bucket %q is missing", b)
		}
	}
	node := sys.Get(keyNode)
	if len(node) == 0 {
		return mc, errors.New("it names no node identity")
	}
	mc.node = string(node)
	mc.rebuilding = sys.Get(keyRebuilding) != nil

	want, err := sumRecords(meta, &mc)
	if err != nil {
		return mc, err
	}
	if err := checkDigests(tx.Bucket(bucketDigest), &want.digests); err != nil {
		return mc, err
	}
	if err := sumDenyFeed(tx.Bucket(bucketDeny), &want.feed); err != nil {
		return mc, err
	}
	if err := checkFeed(tx.Bucket(bucketFeed), want.feed); err != nil {
		return mc, err
	}
	if err := checkTombs(tx.Bucket(bucketTombs), want.tombs); err != nil {
		return mc, err
	}
	if err := countUnconfirmed(tx.Bucket(bucketUnconfirmed), &mc); err != nil {
		return mc, err
	}
	return mc, nil
}

// recordSums is what the records say the other buckets hold.
type recordSums struct {
	digests     [256]Digest // per range, as anti-entropy compares them
	feed, tombs entrySum    // the change-feed entries, the tombstone index
}

// sumRecords decodes every record of meta, counting the blobs in mc.
func sumRecords(meta *bolt.Bucket, mc *metaContents) (*recordSums, error) {
	want := &recordSums{}
	c := meta.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != dtfc.IDLen {
			return nil, fmt.Errorf("a record's key is %d bytes long, not %d", len(k), dtfc.IDLen)
		}
		rec, err := decodeRecord(k, v)
		if err != nil {
			return nil, fmt.Errorf("the record of %x: %w", k, err)
		}
		d := &want.digests[k[0]]
		sum := digestOf(&rec.State)
		for i := range d.Sum {
			d.Sum[i] ^= sum[i]
		}
		d.Count++
		var n [8]byte
		if rec.Deleted {
			binary.BigEndian.PutUint64(n[:], uint64(rec.Clock))
			want.tombs.add(n[:], k)
		} else {
			mc.blobs++
			if !rec.Evicted { // the count is of the bytes held
				mc.bytes += rec.Size
			}
		}
		if rec.Seq != 0 {
			binary.BigEndian.PutUint64(n[:], rec.Seq)
			want.feed.add(n[:], k)
		}
	}
	return want, nil
}

// checkDigests compares the stored per-range digests with the records'.
func checkDigests(stored *bolt.Bucket, digests *[256]Digest) error {
	for i := range digests {
		var d Digest
		if v := stored.Get([]byte{byte(i)}); v != nil {
			if len(v) != 40 {
				return fmt.Errorf("the digest of range %02x is %d bytes long", i, len(v))
			}
			copy(d.Sum[:], v[:32])
			d.Count = binary.BigEndian.Uint64(v[32:])
		}
		if d != digests[i] {
			return fmt.Errorf("the digest of range %02x does not match its records (%d stored, %d found): a record or the digest was altered", i, d.Count, digests[i].Count)
		}
	}
	return nil
}

// sumDenyFeed adds to feedWant the deny entries of the bucket deny (if
// any): they are in the feed too ('D' and the ID), those made before they
// entered it excepted (Seq 0: given one at open).
func sumDenyFeed(deny *bolt.Bucket, feedWant *entrySum) error {
	if deny == nil {
		return nil
	}
	return deny.ForEach(func(k, v []byte) error {
		var d denyRecord
		if len(k) != dtfc.IDLen || json.Unmarshal(v, &d) != nil || d.ID != dtfc.ID(k) {
			return fmt.Errorf("the deny entry of %x is malformed", k)
		}
		if d.Seq != 0 {
			feedWant.add(u64(d.Seq), denyFeedKey(d.ID))
		}
		return nil
	})
}

// checkFeed checks that the change feed holds exactly the entries want
// sums, and that its sequence is ahead of them.
func checkFeed(feed *bolt.Bucket, want entrySum) error {
	var have entrySum
	var last uint64
	fc := feed.Cursor()
	for k, v := fc.First(); k != nil; k, v = fc.Next() {
		if len(k) != 8 || (len(v) != dtfc.IDLen && (len(v) != 1+dtfc.IDLen || v[0] != 'D')) {
			return fmt.Errorf("a change-feed entry is malformed (key %x)", k)
		}
		have.add(k, v)
		last = decU64(k)
	}
	if have != want {
		return fmt.Errorf("the change feed (%d entries) does not match the records in it (%d)", have.n, want.n)
	}
	if feed.Sequence() < last {
		return fmt.Errorf("the change feed's sequence (%d) is behind its last entry (%d)", feed.Sequence(), last)
	}
	return nil
}

// checkTombs checks that the tombstone index holds exactly the entries
// want sums.
func checkTombs(tombs *bolt.Bucket, want entrySum) error {
	var have entrySum
	tc := tombs.Cursor()
	for k, v := tc.First(); k != nil; k, v = tc.Next() {
		if len(k) != 8+dtfc.IDLen || len(v) != 0 {
			return fmt.Errorf("a tombstone index entry is malformed (key %x)", k)
		}
		have.add(k[:8], k[8:])
	}
	if have != want {
		return fmt.Errorf("the tombstone index (%d entries) does not match the tombstones (%d)", have.n, want.n)
	}
	return nil
}

// countUnconfirmed decodes the entries of the bucket ub (if any),
// counting them in mc.
func countUnconfirmed(ub *bolt.Bucket, mc *metaContents) error {
	if ub == nil {
		return nil
	}
	return ub.ForEach(func(k, v []byte) error {
		if len(k) != dtfc.IDLen {
			return fmt.Errorf("an unconfirmed entry's key is %d bytes long", len(k))
		}
		if _, err := decodeUnconfirmed(k, v); err != nil {
			return fmt.Errorf("the unconfirmed entry of %x: %w", k, err)
		}
		mc.unconfirmed++
		return nil
	})
}

// entrySum summarises a set of (a, b) byte pairs independently of their
// order: their count, and the sum and the XOR of a 64-bit hash of each.
// Two sets that differ by an altered entry differ here (but for a 2^-64
// chance).
type entrySum struct{ n, sum, xor uint64 }

func (e *entrySum) add(a, b []byte) {
	var buf [96]byte // a pair is at most 8+65 bytes: no allocation
	v := maphash.Bytes(entrySeed, append(append(buf[:0], a...), b...))
	e.n++
	e.sum += v
	e.xor ^= v
}

// entrySeed keys entrySum's hash: sums are compared within one process.
var entrySeed = maphash.MakeSeed()

// bbolt's file format (go.etcd.io/bbolt/internal/common), which walkBolt
// reads without bbolt. Its integers are in the machine's byte order.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16 // id u64, flags u16, count u16, overflow u32
	boltElem         = 16 // branch: pos u32, ksize u32, pgid u64; leaf: flags u32, pos u32, ksize u32, vsize u32
	boltBucketHeader = 16 // root pgid u64, sequence u64
	boltMetaSize     = 64 // magic, version, pageSize, flags, root (16), freelist, pgid, txid, checksum
	boltBranch       = 0x01
	boltLeaf         = 0x02
	boltFreelist     = 0x10
	boltBucketLeaf   = 0x01
	boltNoFreelist   = ^uint64(0)
)

var boltEndian = binary.NativeEndian

// boltMeta is one of a bbolt file's two meta pages.
type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	hwm      uint64 // pages in use
	txid     uint64
	valid    bool
}

func parseBoltMeta(page []byte) boltMeta {
	if len(page) < boltPageHeader+boltMetaSize {
		return boltMeta{}
	}
	m := page[boltPageHeader:]
	h := fnv.New64a()
	h.Write(m[:56])
	return boltMeta{
		pageSize: boltEndian.Uint32(m[8:]),
		root:     boltEndian.Uint64(m[16:]),
		freelist: boltEndian.Uint64(m[32:]),
		hwm:      boltEndian.Uint64(m[40:]),
		txid:     boltEndian.Uint64(m[48:]),
		valid: boltEndian.Uint32(m[0:]) == boltMagic && boltEndian.Uint32(m[4:]) == boltVersion &&
			boltEndian.Uint64(m[56:]) == h.Sum64(),
	}
}

// boltGeometry is what walkBolt learnt of a well-formed file.
type boltGeometry struct {
	pageSize int64
	hwm      uint64
	pages    int // pages reachable from the root
	warning  string
}

// walkBolt is step 1 of the check (see the top of this file).
func walkBolt(f *os.File) (boltGeometry, error) {
	var g boltGeometry
	fi, err := f.Stat()
	if err != nil {
		return g, err
	}
	size := fi.Size()
	first := make([]byte, 4096)
	if n, err := f.ReadAt(first, 0); err != nil && !(errors.Is(err, io.EOF) && n >= boltPageHeader+boltMetaSize) {
		return g, fmt.Errorf("it is too short to be a bbolt file (%d bytes)", size)
	}
	// As bbolt does: the page size from the first meta page, or failing
	// that from the second, looked for at every possible page size.
	m0 := parseBoltMeta(first)
	ps := int64(m0.pageSize)
	var m1 boltMeta
	if !m0.valid {
		for i := 0; i <= 14; i++ {
			at := int64(1024) << i
			if at+boltPageHeader+boltMetaSize > size {
				break
			}
			buf := make([]byte, boltPageHeader+boltMetaSize)
			if _, err := f.ReadAt(buf, at); err != nil {
				return g, fmt.Errorf("reading it: %w", err)
			}
			if m := parseBoltMeta(buf); m.valid && int64(m.pageSize) == at {
				m1, ps = m, at
				break
			}
		}
		if !m1.valid {
			return g, errors.New("neither of its two meta pages is valid (magic, version or checksum)")
		}
	} else {
		if ps < 1024 || ps > 1<<24 || ps&(ps-1) != 0 {
			return g, fmt.Errorf("its page size (%d) is not one bbolt writes", ps)
		}
		buf := make([]byte, boltPageHeader+boltMetaSize)
		if _, err := f.ReadAt(buf, ps); err == nil {
			m1 = parseBoltMeta(buf)
		}
	}
	m := m0
	switch {
	case !m0.valid:
		m = m1
		g.warning = "meta page 0 is invalid; bbolt uses the other, one transaction older (a crash during a commit can leave this)"
	case !m1.valid:
		g.warning = "meta page 1 is invalid; bbolt uses the other, one transaction older (a crash during a commit can leave this)"
	case m1.txid > m0.txid:
		m = m1
	}
	if m1.valid && m0.valid && m0.pageSize != m1.pageSize {
		return g, fmt.Errorf("its meta pages disagree on the page size (%d, %d)", m0.pageSize, m1.pageSize)
	}
	g.pageSize, g.hwm = ps, m.hwm
	if m.hwm < 3 || m.hwm > uint64(1<<62)/uint64(ps) {
		return g, fmt.Errorf("its high-water mark (%d pages) is impossible", m.hwm)
	}
	if used := int64(m.hwm) * ps; used > size {
		return g, fmt.Errorf("it is truncated: it uses %d pages (%d bytes) but the file has %d bytes", m.hwm, used, size)
	}
	w := newBoltWalker(f, ps, m.hwm)
	if m.freelist != boltNoFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return g, err
		}
	}
	if err := w.walk(m.root); err != nil {
		return g, err
	}
	if err := w.checkFree(); err != nil {
		return g, err
	}
	g.pages = w.pages
	return g, nil
}

// boltWalker visits the pages of a bbolt file through ReadAt, checking
// what bbolt would take on trust.
type boltWalker struct {
	r     io.ReaderAt
	ps    int64
	hwm   uint64
	seen  pageSet // the meta pages, and the pages visited
	free  pageSet // the stored free list's pages; nil if none is stored
	pages int
}

func newBoltWalker(r io.ReaderAt, ps int64, hwm uint64) *boltWalker {
	w := &boltWalker{r: r, ps: ps, hwm: hwm, seen: newPageSet(hwm)}
	w.seen.set(0)
	w.seen.set(1)
	return w
}

// page reads page id with its overflow pages, checking its header.
func (w *boltWalker) page(id uint64, from walkItem) ([]byte, error) {
	if id < 2 || id >= w.hwm {
		return nil, fmt.Errorf("%s points at page %d, outside the %d pages in use", from.origin(), id, w.hwm)
	}
	buf := make([]byte, w.ps)
	if _, err := w.r.ReadAt(buf, int64(id)*w.ps); err != nil {
		return nil, fmt.Errorf("reading page %d: %w", id, err)
	}
	if got := boltEndian.Uint64(buf); got != id {
		return nil, fmt.Errorf("page %d identifies itself as page %d (zeroed or overwritten)", id, got)
	}
	over := uint64(boltEndian.Uint32(buf[12:]))
	if id+over >= w.hwm {
		return nil, fmt.Errorf("page %d claims %d overflow pages, beyond the %d pages in use", id, over, w.hwm)
	}
	for i := id; i <= id+over; i++ {
		if w.seen.has(i) {
			return nil, fmt.Errorf("page %d is reached twice (%s; a cycle or crossed links)", i, from.origin())
		}
		w.seen.set(i)
	}
	w.pages++
	if over > 0 {
		buf = append(buf, make([]byte, int64(over)*w.ps)...)
		if _, err := w.r.ReadAt(buf[w.ps:], int64(id+1)*w.ps); err != nil {
			return nil, fmt.Errorf("reading page %d: %w", id, err)
		}
	}
	return buf, nil
}

// freelist checks the free list's page and reads its entries into
// w.free: each a page in use, none twice.
func (w *boltWalker) freelist(id uint64) error {
	p, err := w.page(id, walkItem{from: "the meta page's free list"})
	if err != nil {
		return err
	}
	if boltEndian.Uint16(p[8:]) != boltFreelist {
		return fmt.Errorf("page %d should hold the free list but does not", id)
	}
	count := uint64(boltEndian.Uint16(p[10:]))
	start := uint64(boltPageHeader)
	if count == 0xFFFF {
		count = boltEndian.Uint64(p[boltPageHeader:])
		start += 8
	}
	if count > uint64(len(p)) || start+count*8 > uint64(len(p)) {
		return fmt.Errorf("the free list on page %d claims %d entries, more than the page holds", id, count)
	}
	w.free = newPageSet(w.hwm)
	for i := range count {
		f := boltEndian.Uint64(p[start+i*8:])
		switch {
		case f < 2 || f >= w.hwm:
			return fmt.Errorf("the free list names page %d, outside the %d pages in use", f, w.hwm)
		case w.free.has(f):
			return fmt.Errorf("the free list names page %d twice", f)
		}
		w.free.set(f)
	}
	return nil
}

// checkFree checks, after the walk, what bbolt's own check does of a
// file whose free list is stored: no page is both free and reachable
// (bbolt would hand it out again and overwrite live data), and every page
// is one or the other (else it is lost to both).
func (w *boltWalker) checkFree() error {
	if w.free == nil {
		return nil
	}
	var lost uint64
	for id := uint64(2); id < w.hwm; id++ {
		switch seen, free := w.seen.has(id), w.free.has(id); {
		case seen && free:
			return fmt.Errorf("page %d is both in use and on the free list", id)
		case !seen && !free && lost == 0:
			lost = id
		}
	}
	if lost != 0 {
		return fmt.Errorf("page %d is neither in use nor on the free list", lost)
	}
	return nil
}

// pageSet is a set of page ids below a bound.
type pageSet []uint64

func newPageSet(n uint64) pageSet    { return make(pageSet, (n+63)/64) }
func (s pageSet) has(id uint64) bool { return s[id/64]&(1<<(id%64)) != 0 }
func (s pageSet) set(id uint64)      { s[id/64] |= 1 << (id % 64) }

// walkItem is a page (or an inline bucket's page) still to visit, with
// the key range its keys must fall in ([lo, hi); nil means unbounded).
type walkItem struct {
	id     uint64 // 0 for an inline page
	inline []byte // the inline page, if id is 0
	lo, hi []byte
	// Where the page was reached from, for errors: from, or if it is
	// empty element elem of the branch page parent (no string is made for
	// the many pages that are well).
	from   string
	parent uint64
	elem   int
}

func (it walkItem) origin() string {
	if it.from != "" {
		return it.from
	}
	return fmt.Sprintf("element %d of page %d", it.elem, it.parent)
}

// walk visits every page reachable from the root bucket's root page.
// It keeps its own stack: a corrupt tree cannot recurse it to death.
func (w *boltWalker) walk(root uint64) error {
	stack := []walkItem{{id: root, from: "the meta page"}}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		next, err := w.visit(it)
		if err != nil {
			return err
		}
		stack = append(stack, next...)
	}
	return nil
}

// visit checks the page of it: its elements lie within it, its keys are
// in order and within its parent's range. It returns the pages it points
// at, in the order they go on walk's stack.
func (w *boltWalker) visit(it walkItem) ([]walkItem, error) {
	pg := boltPage{p: it.inline, id: it.id}
	if it.id != 0 {
		var err error
		if pg.p, err = w.page(it.id, it); err != nil {
			return nil, err
		}
	}
	if it.id == 0 && it.inline == nil {
		// Page 0 is a meta page: id 0 means an inline bucket, and a
		// branch element damaged to 0 must not pass for one (found by
		// FuzzOpenDamagedMeta: a panic slicing the empty page).
		return nil, fmt.Errorf("%s points at page 0, a meta page", it.origin())
	}
	flags, count := boltEndian.Uint16(pg.p[8:]), int(boltEndian.Uint16(pg.p[10:]))
	if boltPageHeader+count*boltElem > len(pg.p) {
		return nil, fmt.Errorf("%s claims %d elements, more than it holds", pg.name(), count)
	}
	var (
		keys [][]byte
		next []walkItem
		err  error
	)
	switch {
	case flags == boltBranch && it.id != 0:
		keys, err = pg.branchKeys(count)
	case flags == boltLeaf:
		keys, next, err = pg.leaf(count)
	default:
		return nil, fmt.Errorf("%s is neither a branch nor a leaf page (flags %#x; reached from %s)", pg.name(), flags, it.origin())
	}
	if err != nil {
		return nil, err
	}
	if err := checkKeyOrder(pg.name(), keys, it.lo, it.hi); err != nil {
		return nil, err
	}
	if flags == boltBranch {
		next = pg.children(keys, it.hi)
	}
	return next, nil
}

// boltPage is a page being visited: its bytes, and its id (0 for an
// inline bucket's page).
type boltPage struct {
	p  []byte
	id uint64
}

// name names the page in errors.
func (pg boltPage) name() string {
	if pg.id == 0 {
		return "an inline bucket"
	}
	return fmt.Sprintf("page %d", pg.id)
}

func (pg boltPage) elem(i int) []byte { return pg.p[boltPageHeader+i*boltElem:] }

// span returns p[e+off : e+off+n] where e is element i's offset, or
// false if that leaves the page.
func (pg boltPage) span(i int, off, n uint64) ([]byte, bool) {
	p := pg.p
	e := uint64(boltPageHeader + i*boltElem)
	if off > uint64(len(p)) || n > uint64(len(p)) || e+off+n > uint64(len(p)) {
		return nil, false
	}
	return p[e+off : e+off+n], true
}

// branchKeys returns the keys of a branch page's count elements.
func (pg boltPage) branchKeys(count int) ([][]byte, error) {
	if count == 0 {
		return nil, fmt.Errorf("%s is a branch page without elements", pg.name())
	}
	keys := make([][]byte, count)
	for i := range count {
		e := pg.elem(i)
		k, ok := pg.span(i, uint64(boltEndian.Uint32(e)), uint64(boltEndian.Uint32(e[4:])))
		if !ok {
			return nil, fmt.Errorf("%s: the key of element %d lies outside the page", pg.name(), i)
		}
		keys[i] = k
	}
	return keys, nil
}

// leaf returns the keys of a leaf page's count elements, and the pages of
// the nested buckets among them.
func (pg boltPage) leaf(count int) (keys [][]byte, buckets []walkItem, err error) {
	keys = make([][]byte, count)
	for i := range count {
		e := pg.elem(i)
		pos, ks, vs := uint64(boltEndian.Uint32(e[4:])), uint64(boltEndian.Uint32(e[8:])), uint64(boltEndian.Uint32(e[12:]))
		k, ok := pg.span(i, pos, ks)
		if !ok {
			return nil, nil, fmt.Errorf("%s: the key of element %d lies outside the page", pg.name(), i)
		}
		v, ok := pg.span(i, pos+ks, vs)
		if !ok {
			return nil, nil, fmt.Errorf("%s: the value of element %d lies outside the page", pg.name(), i)
		}
		keys[i] = k
		if boltEndian.Uint32(e)&boltBucketLeaf == 0 {
			continue
		}
		b, err := pg.nestedBucket(k, v)
		if err != nil {
			return nil, nil, err
		}
		buckets = append(buckets, b)
	}
	return keys, buckets, nil
}

// nestedBucket returns the page of the nested bucket k, whose value v
// holds its header, then its own tree or, if it is inline, its page.
func (pg boltPage) nestedBucket(k, v []byte) (walkItem, error) {
	if len(v) < boltBucketHeader {
		return walkItem{}, fmt.Errorf("%s: bucket %q has a %d-byte header", pg.name(), k, len(v))
	}
	from := fmt.Sprintf("bucket %q on %s", k, pg.name())
	if r := boltEndian.Uint64(v); r != 0 {
		return walkItem{id: r, from: from}, nil
	}
	in := v[boltBucketHeader:]
	if len(in) < boltPageHeader {
		return walkItem{}, fmt.Errorf("%s: the inline page is %d bytes long", from, len(in))
	}
	if boltEndian.Uint16(in[8:]) != boltLeaf {
		return walkItem{}, fmt.Errorf("%s: the inline page is not a leaf page (flags %#x)", from, boltEndian.Uint16(in[8:]))
	}
	return walkItem{inline: in, from: from}, nil
}

// children returns the pages a branch page's elements point at, each
// with its key range, last first (so that walk visits them in order).
func (pg boltPage) children(keys [][]byte, hi []byte) []walkItem {
	var next []walkItem
	for i := len(keys) - 1; i >= 0; i-- {
		chi := hi
		if i+1 < len(keys) {
			chi = keys[i+1]
		}
		e := pg.elem(i)
		next = append(next, walkItem{id: boltEndian.Uint64(e[8:]), lo: keys[i], hi: chi, parent: pg.id, elem: i})
	}
	return next
}

// checkKeyOrder checks that the keys of the page name are in order, and
// within its parent's range [lo, hi) (nil: unbounded).
func checkKeyOrder(name string, keys [][]byte, lo, hi []byte) error {
	for i, k := range keys {
		switch {
		case i == 0 && lo != nil && bytes.Compare(k, lo) < 0:
			return fmt.Errorf("%s: its first key sorts before its parent's", name)
		case i > 0 && bytes.Compare(keys[i-1], k) >= 0:
			return fmt.Errorf("%s: keys %d and %d are out of order", name, i-1, i)
		case hi != nil && bytes.Compare(k, hi) >= 0:
			return fmt.Errorf("%s: key %d sorts after its parent's next key", name, i)
		}
	}
	return nil
}
