package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Uncut undoes Cut(from, to) alone: the link's toxiproxy listens again on
// its address. Latency, bandwidth limits and corruption on the link stay
// as they are (Heal removes them all). A link that is not cut is left
// alone.
func (c *Cluster) Uncut(from, to int) {
	c.t.Helper()
	l := c.link(from, to)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !l.cut {
		return
	}
	l.restart(c.t, "uncutting")
}

// CanFillDisk reports why FillDisk would skip the test (not root, or no
// tmpfs can be mounted), or nil if it can run. It mounts and unmounts a
// scratch tmpfs to find out, so a caller can leave the full disk out of a
// test rather than skip the whole test.
func (c *Cluster) CanFillDisk() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("FillDisk needs root to mount a tmpfs (running as uid %d)", os.Geteuid())
	}
	probe, err := os.MkdirTemp(c.dir, "tmpfs-probe-")
	if err != nil {
		return err
	}
	defer os.Remove(probe)
	if err := mount(probe, "1m"); err != nil {
		return fmt.Errorf("cannot mount a tmpfs: %w", err)
	}
	return unmount(probe)
}

// OnTmpfs reports whether node i's basedir is on a tmpfs of FillDisk.
func (c *Cluster) OnTmpfs(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.mounts, c.Nodes[i].Basedir)
}

// FreeDisk undoes FillDisk(i): it stops the node if it runs, copies its
// basedir from the tmpfs back onto the ordinary disk (the same path), so
// the node keeps its identity, blobs and metadata, unmounts the tmpfs,
// and starts the node again if it was running. It fails the test if the
// node's basedir is not on a tmpfs of FillDisk.
func (c *Cluster) FreeDisk(i int) {
	t := c.t
	t.Helper()
	n := c.Nodes[i]
	if !c.OnTmpfs(i) {
		t.Fatalf("cluster: FreeDisk: node %d's basedir is not on a tmpfs of FillDisk", i)
	}
	running := n.Running()
	if running {
		n.Stop()
	}
	aside := n.Basedir + ".after-tmpfs"
	if err := os.Mkdir(aside, 0o755); err != nil {
		t.Fatalf("cluster: FreeDisk: %v", err)
	}
	if err := CopyDir(n.Basedir, aside); err != nil {
		t.Fatalf("cluster: FreeDisk: copying node %d's basedir off its tmpfs: %v", i, err)
	}
	if err := unmount(n.Basedir); err != nil {
		t.Fatalf("cluster: FreeDisk: unmounting %s: %v", n.Basedir, err)
	}
	c.mu.Lock()
	c.mounts = slices.DeleteFunc(c.mounts, func(m string) bool { return m == n.Basedir })
	c.mu.Unlock()
	// What is left is the empty mount point FillDisk made.
	if err := os.Remove(n.Basedir); err != nil {
		t.Fatalf("cluster: FreeDisk: %v", err)
	}
	if err := os.Rename(aside, n.Basedir); err != nil {
		t.Fatalf("cluster: FreeDisk: %v", err)
	}
	if running {
		n.Start()
	}
}

// DiskUsage returns the space node i's basedir would take on a tmpfs: its
// regular files, each rounded up to whole 4 KiB pages, and a page per
// directory (what FillDisk has to fit onto its tmpfs). Stop the node
// first for a figure that does not move.
func (c *Cluster) DiskUsage(i int) int64 {
	const page = 4096
	var total int64
	filepath.WalkDir(c.Nodes[i].Basedir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return nil // a file removed meanwhile
		}
		if d.IsDir() {
			total += page
		} else if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			total += (fi.Size() + page - 1) / page * page
		}
		return nil
	})
	return total
}
