//go:build linux || darwin || freebsd

package diskspace

import "syscall"

// Of returns the bytes available to an unprivileged user on dir's
// filesystem (f_bavail, not f_bfree: the reserved blocks are root's) and
// the filesystem's size.
func Of(dir string) (avail, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	bsize := uint64(st.Bsize)
	return uint64(st.Bavail) * bsize, uint64(st.Blocks) * bsize, nil
}
