package cluster

import "syscall"

// sysProcAttr makes the kernel kill a node if the test process dies
// without its Cleanup running (a panic in another goroutine, a timeout):
// no dtfc process outlives the test binary.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
