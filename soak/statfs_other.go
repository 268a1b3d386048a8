//go:build !(linux || darwin || freebsd)

package soak

// freeBytes returns -1: unknown on this system.
func freeBytes(dir string) int64 { return -1 }
