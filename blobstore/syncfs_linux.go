package blobstore

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// canSyncFS reports whether syncFS may stand for the fsyncs of a batch
// (batch.go): syncfs(2) reports writeback errors only since Linux 5.8.
// Before, it answered success whatever the disk did, and a sync whose
// failure goes unseen is no sync.
func canSyncFS() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || major == 5 && minor >= 8
}

// syncFS makes everything written to the file system that holds dir
// durable (data, inodes, directory entries) with one syncfs(2): one
// flush of the disk's cache for all of it.
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	err = unix.Syncfs(fd)
	if err != nil {
		err = fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return errors.Join(err, unix.Close(fd))
}

// writebackErr reports a write-back error of f's data since f was opened,
// as its fdatasync would, but syncing nothing (sync_file_range's wait
// checks the file's error sequence): after a syncfs, whose own error
// tells only what failed while it ran, it tells whether f's bytes, which
// the kernel may have tried to write back earlier, reached the disk.
func writebackErr(f *os.File) error {
	return unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WAIT_AFTER)
}
