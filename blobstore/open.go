package blobstore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/dtfc/dtfc"
)

// openNoFollow opens dir/rel refusing a symlink as the file or as any
// directory between dir and it.
func openNoFollow(dir, rel string) (*os.File, error) {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	p := dir
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			return nil, &os.PathError{Op: "open", Path: p, Err: syscall.ELOOP}
		}
	}
	path := filepath.Join(dir, rel)
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openBlob opens the blob file of id for reading.
func (s *Store) openBlob(id dtfc.ID) (*os.File, error) {
	return s.opener.open(shardPath(id))
}

// checkRealDir refuses a shard directory component that is not a real
// directory (a planted symlink would send writes out of the store).
func checkRealDir(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("blobstore: %s is not a directory (a symlink?); refusing to write through it", p)
	}
	return nil
}
