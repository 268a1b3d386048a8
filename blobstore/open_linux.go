package blobstore

import (
	"errors"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// blobOpener opens blob files for reading without following symlinks
// anywhere below the blob directory: a symlink planted under blobs/ (by
// mistake or malice) can never make the node serve a file from outside
// the store. The descriptor is not registered with the network poller
// (that fails for regular files: one wasted syscall per read).
type blobOpener struct {
	dir   string
	dirfd int // -1 if openat2 is unavailable
}

func newBlobOpener(dir string) (*blobOpener, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	o := &blobOpener{dir: dir, dirfd: fd}
	// openat2 needs Linux 5.6; probe it once.
	probe, err := unix.Openat2(fd, ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH})
	if err != nil {
		unix.Close(fd)
		o.dirfd = -1
		return o, nil
	}
	unix.Close(probe)
	return o, nil
}

func (o *blobOpener) open(rel string) (*os.File, error) {
	if o.dirfd < 0 {
		return openNoFollow(o.dir, rel)
	}
	fd, err := unix.Openat2(o.dirfd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
		return openNoFollow(o.dir, rel)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(o.dir, rel), Err: err}
	}
	return os.NewFile(uintptr(fd), o.dir+sep+rel), nil
}

func (o *blobOpener) close() {
	if o.dirfd >= 0 {
		unix.Close(o.dirfd)
	}
}

// releaseMap drops from the process's resident set the pages of bbolt's
// memory map of meta.db (path). They stay in the page cache, and fault
// back in when read.
func releaseMap(db *bolt.DB, path string) {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() == 0 {
		return
	}
	unix.Syscall(unix.SYS_MADVISE, db.Info().Data, uintptr(fi.Size()), unix.MADV_DONTNEED)
}
