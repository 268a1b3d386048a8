//go:build !(linux || darwin || freebsd)

package server

import "errors"

// statfs is not implemented here: the status shows no disk figures.
func statfs(string) (free, total uint64, err error) {
	return 0, 0, errors.New("statfs is not supported on this platform")
}
