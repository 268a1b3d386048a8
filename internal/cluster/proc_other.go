//go:build !linux

package cluster

import "syscall"

// sysProcAttr has nothing to add outside Linux: a node whose test process
// dies without running its Cleanup keeps running.
func sysProcAttr() *syscall.SysProcAttr { return nil }
