//go:build !(linux || darwin || freebsd)

package diskspace

import "errors"

// Of is not implemented on this system: it always returns an error.
func Of(dir string) (avail, total uint64, err error) {
	return 0, 0, errors.New("statfs is not supported on this platform")
}
