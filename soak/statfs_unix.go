//go:build linux || darwin || freebsd

package soak

import "syscall"

// freeBytes returns the bytes available on dir's filesystem, or -1.
func freeBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
