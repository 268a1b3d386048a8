package blobstore

import (
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/internal/sleep"
)

// ScrubProgress describes the scrubber's current or last pass.
type ScrubProgress = api.ScrubProgress

type scrubState struct {
	mu sync.Mutex
	p  ScrubProgress
}

// ScrubProgress returns the scrubber's progress.
func (s *Store) ScrubProgress() ScrubProgress {
	s.scrubber.mu.Lock()
	defer s.scrubber.mu.Unlock()
	return s.scrubber.p
}

func (s *Store) scrubUpdate(f func(*ScrubProgress)) {
	s.scrubber.mu.Lock()
	f(&s.scrubber.p)
	s.scrubber.mu.Unlock()
}

// Scrub re-hashes every blob once, reading at most bytesPerSec bytes per
// second (0: no limit). A blob whose bytes do not hash to its ID, or whose
// file is missing, is moved to quarantine/ and its record forgotten (so
// anti-entropy and reads treat it as missing and fetch it again); then
// onCorrupt is called with its former state, outside any lock, so the
// caller can repair it from a peer at once.
func (s *Store) Scrub(ctx context.Context, bytesPerSec int64, onCorrupt func(dtfc.State)) error {
	s.scrubUpdate(func(p *ScrubProgress) {
		p.Running, p.PassStarted, p.Checked, p.CheckedBytes, p.Corrupt, p.Unreadable = true, time.Now(), 0, 0, 0, 0
	})
	defer s.scrubUpdate(func(p *ScrubProgress) { p.Running = false })
	lim := &rateLimit{perSec: bytesPerSec, start: time.Now()}
	buf := make([]byte, 1<<20)
	var after []byte
	for done := false; !done; {
		var batch []dtfc.State
		err := s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketMeta).Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); k != nil && string(k) == string(after) {
					k, v = c.Next()
				}
			}
			for n := 0; n < 256; n++ {
				if n > 0 {
					k, v = c.Next()
				}
				if k == nil {
					done = true
					return nil
				}
				rec, err := decodeRecord(k, v)
				if err != nil {
					return err
				}
				after = append(after[:0], k...)
				if !rec.Deleted && !rec.Evicted {
					batch = append(batch, rec.State)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, st := range batch {
			ok, judged, err := s.verify(ctx, st, buf, lim)
			if errors.Is(err, errUnreadable) {
				s.log.Warn("scrub: cannot read a blob; skipped", "id", st.ID.String(), "err", err)
				s.scrubUpdate(func(p *ScrubProgress) { p.Unreadable++ })
				continue
			}
			if err != nil {
				return err
			}
			s.scrubUpdate(func(p *ScrubProgress) { p.Checked++; p.CheckedBytes += st.Size })
			if !ok {
				if err := s.quarantine(st, judged, "scrub", onCorrupt); err != nil {
					return err
				}
			}
		}
	}
	s.scrubUpdate(func(p *ScrubProgress) { p.PassFinished = time.Now(); p.Passes++ })
	return nil
}

// errUnreadable marks a blob the scrubber could not read for a reason
// that says nothing of its bytes (too many open files, a permission, an
// I/O error): it is skipped and counted, never quarantined, since a cache
// never fetches a quarantined blob back.
var errUnreadable = errors.New("unreadable")

// verify re-hashes one blob. A missing file, or something that is not a
// plain file where the blob should be (a planted symlink, a directory),
// counts as corrupt; a record changed meanwhile (deleted, replaced) is
// skipped as fine; any other failure to read is errUnreadable. It
// returns what it judged too, for quarantine: the file's FileInfo, nil
// if it was missing.
func (s *Store) verify(ctx context.Context, st dtfc.State, buf []byte, lim *rateLimit) (bool, fs.FileInfo, error) {
	f, err := s.openBlob(st.ID)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if s.checkDenied(st.ID) != nil {
			// Blocked: its bytes are not to be in blobs/ (a block newer
			// than the upload set them aside; see applyDeny).
			return true, nil, nil
		}
		cur, ok, rerr := s.record(st.ID)
		if rerr != nil {
			return false, nil, rerr
		}
		if ok && cur.Evicted {
			return true, nil, nil // a tier's: its bytes are in the archive
		}
		return !(ok && !cur.Deleted && cur.Clock == st.Clock), nil, nil
	case errors.Is(err, syscall.ELOOP), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EXDEV):
		s.log.Warn("scrub: the blob's path is not a plain file in the store", "id", st.ID.String(), "err", err)
		fi, lerr := os.Lstat(s.Path(st.ID))
		if lerr != nil {
			return false, nil, fmt.Errorf("%w: %w", errUnreadable, lerr)
		}
		return false, fi, nil
	case err != nil:
		return false, nil, fmt.Errorf("%w: %w", errUnreadable, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, nil, fmt.Errorf("%w: %w", errUnreadable, err)
	} else if !fi.Mode().IsRegular() {
		s.log.Warn("scrub: the blob's path is not a plain file", "id", st.ID.String(), "mode", fi.Mode().String())
		return false, fi, nil
	}
	h := sha512.New()
	for {
		if err := ctx.Err(); err != nil {
			return false, nil, err
		}
		n, rerr := f.Read(buf)
		h.Write(buf[:n])
		if err := lim.wait(ctx, n); err != nil {
			return false, nil, err
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return false, nil, fmt.Errorf("%w: %w", errUnreadable, rerr)
		}
	}
	var got dtfc.ID
	copy(got[:], h.Sum(nil))
	return got == st.ID, fi, nil
}

// quarantine moves a corrupt blob's file to quarantine/ (kept for
// inspection) and forgets its record, so reads and anti-entropy treat it
// as missing and fetch it again; onCorrupt, if set, is then called with
// its former state, outside any lock. how names who found it; judged is
// the file found corrupt (nil: the file was missing). Under the ID's
// lock, a record changed since, or a file other than the one judged (one
// put back since: the upload a block set aside, adopted at its lift
// under the same clock; a tier's read-back), leaves everything as it is:
// the file there may be the only good copy.
func (s *Store) quarantine(st dtfc.State, judged fs.FileInfo, how string, onCorrupt func(dtfc.State)) error {
	leave, err := s.enter()
	if err != nil {
		return err
	}
	unlock := s.locks.lock(st.ID)
	cur, ok, err := s.record(st.ID)
	if err == nil && ok && !cur.Deleted && cur.Clock == st.Clock && !sameJudged(s.Path(st.ID), judged) {
		s.log.Info("a blob found corrupt was replaced meanwhile; left for the next check", "by", how, "id", st.ID.String())
		ok = false
	}
	if err != nil || !ok || cur.Deleted || cur.Clock != st.Clock {
		unlock()
		leave()
		return err
	}
	dst := filepath.Join(s.dir, "quarantine", fmt.Sprintf("%s.%d", st.ID, time.Now().UnixNano()))
	if err := os.Rename(s.Path(st.ID), dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		unlock()
		leave()
		return fmt.Errorf("blobstore: quarantine %s: %w", st.ID, err)
	}
	err = s.forget(st.ID)
	unlock()
	leave()
	if err != nil {
		return err
	}
	s.log.Warn("found a corrupt blob; quarantined", "by", how, "id", st.ID.String(), "path", dst)
	s.scrubUpdate(func(p *ScrubProgress) { p.Corrupt++; p.TotalCorrupt++ })
	if onCorrupt != nil {
		onCorrupt(st)
	}
	return nil
}

// sameJudged reports whether path is still what was judged: the same
// file, or still missing if judged is nil.
func sameJudged(path string, judged fs.FileInfo) bool {
	now, err := os.Lstat(path)
	if judged == nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	return err == nil && os.SameFile(judged, now)
}

// rateLimit paces reads to perSec bytes per second on average.
type rateLimit struct {
	perSec int64
	start  time.Time
	done   int64
}

func (l *rateLimit) wait(ctx context.Context, n int) error {
	if l.perSec <= 0 {
		return nil
	}
	l.done += int64(n)
	due := l.start.Add(time.Duration(float64(l.done) / float64(l.perSec) * float64(time.Second)))
	d := time.Until(due)
	if d <= 0 {
		return nil
	}
	return sleep.For(ctx, d)
}
