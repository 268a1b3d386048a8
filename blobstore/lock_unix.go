//go:build unix

package blobstore

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockDir takes an exclusive advisory lock (flock) on the directory
// itself, waiting up to wait for another holder to let go. A running
// store holds it until Close, and Rebuild for its whole run, so neither
// can start on a directory the other uses. It locks the directory rather
// than meta.db because meta.db may be missing or about to be moved aside.
// The lock goes with the process: a kill -9 releases it.
func lockDir(dir string, wait time.Duration) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, &os.PathError{Op: "flock", Path: dir, Err: err}
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, errDirLocked
		}
		time.Sleep(50 * time.Millisecond)
	}
}
