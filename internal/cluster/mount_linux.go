package cluster

import (
	"errors"
	"syscall"
)

// mount mounts a tmpfs of the given size on dir.
func mount(dir, size string) error {
	return syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size="+size+",mode=0755")
}

// unmount unmounts dir, lazily if it is still busy.
func unmount(dir string) error {
	err := syscall.Unmount(dir, 0)
	if errors.Is(err, syscall.EBUSY) {
		err = syscall.Unmount(dir, syscall.MNT_DETACH)
	}
	return err
}
