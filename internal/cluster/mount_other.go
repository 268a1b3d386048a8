//go:build !linux

package cluster

import "errors"

var errNoTmpfs = errors.New("mounting a tmpfs is only supported on Linux")

func mount(dir, size string) error { return errNoTmpfs }

func unmount(dir string) error { return errNoTmpfs }
