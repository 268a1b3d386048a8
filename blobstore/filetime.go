package blobstore

import (
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/dtfc/dtfc"
)

// A blob file's modification time records the clock of the state that
// holds it: milliseconds as the time's, the logical counter (below 2^16)
// as the nanoseconds within the millisecond. It is set before a new file
// is renamed into blobs/ and again whenever a newer state takes a file
// already there, so that when meta.db is lost each file still says when
// the operation that made it live happened (Rebuild keeps the time, and
// package peer weighs it against the deletes its peers forgot). A file
// written by an older dtfc has its write time instead, a little later
// than its state; a file system with coarser times rounds it down.
//
// It is a hint, not a record: setting it is not fsynced on its own (it
// rides on the fsync of the directory or of the next metadata commit),
// and a failure to set it is logged, never an error of the write.

// fileTimeLimit bounds the clocks a modification time records: past it
// (about the year 2200) the nanoseconds os.Chtimes passes would overflow.
const fileTimeLimit = int64(7_258_118_400_000) // 2200-01-01 in Unix ms

// fileTime returns the modification time that records clock c, and false
// for a clock no file time records.
func fileTime(c dtfc.Timestamp) (time.Time, bool) {
	ms := int64(c >> 16)
	if c == 0 || ms >= fileTimeLimit {
		return time.Time{}, false
	}
	return time.UnixMilli(ms).Add(time.Duration(c & 0xffff)), true
}

// fileClock returns the clock modification time tm records: exact for a
// time fileTime made, the millisecond for any other.
func fileClock(tm time.Time) dtfc.Timestamp {
	ns := tm.UnixNano()
	if ns <= 0 || tm.UnixMilli() >= fileTimeLimit {
		return 0
	}
	ms, sub := ns/1e6, ns%1e6
	if sub > 0xffff {
		sub = 0
	}
	return dtfc.Timestamp(uint64(ms)<<16 | uint64(sub))
}

// stampFile sets the modification time of the file at path to the one
// that records clock c.
func (s *Store) stampFile(path string, c dtfc.Timestamp) {
	tm, ok := fileTime(c)
	if !ok {
		return
	}
	if err := os.Chtimes(path, time.Time{}, tm); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("could not date a blob file by its state's clock", "path", path, "err", err)
	}
}

// fileStateClock returns the clock the modification time of the file at
// path records, or 0 if there is none this node can trust: no file, or a
// time further ahead of the node's clock than a peer's clock may be (a
// clock that ran ahead once must not make a file newer than every
// delete).
func (s *Store) fileStateClock(path string) dtfc.Timestamp {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0
	}
	c := fileClock(fi.ModTime())
	if c == 0 || s.checkClock(c) != nil {
		return 0
	}
	return c
}
