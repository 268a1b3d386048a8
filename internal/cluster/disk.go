package cluster

import (
	"fmt"
	"os"
	"path/filepath"
)

// FillDisk restarts node i with its basedir on a tmpfs of the given size
// ("64m", "1g": tmpfs's size= syntax), so that a test can fill the node's
// disk. What the basedir held is copied onto the tmpfs first, so the node
// keeps its identity and its blobs; the path stays the same. It needs root
// (and a kernel that lets it mount): otherwise the test is skipped, with
// the reason. The tmpfs is unmounted at cleanup, once the node has
// stopped.
func (c *Cluster) FillDisk(i int, size string) {
	t := c.t
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("cluster: FillDisk needs root to mount a tmpfs (running as uid %d)", os.Geteuid())
	}
	// Try a mount on a scratch directory first, so that a skip leaves
	// the node as it was.
	probe := filepath.Join(c.dir, fmt.Sprintf("tmpfs-probe-%d", i))
	if err := os.MkdirAll(probe, 0o755); err != nil {
		t.Fatalf("cluster: FillDisk: %v", err)
	}
	if err := mount(probe, size); err != nil {
		t.Skipf("cluster: FillDisk: cannot mount a tmpfs of size %q: %v", size, err)
	}
	if err := unmount(probe); err != nil {
		t.Fatalf("cluster: FillDisk: unmounting %s: %v", probe, err)
	}

	n := c.Nodes[i]
	if n.Running() {
		n.Stop()
	}
	aside := n.Basedir + ".before-tmpfs"
	if err := os.Rename(n.Basedir, aside); err != nil {
		t.Fatalf("cluster: FillDisk: %v", err)
	}
	if err := os.Mkdir(n.Basedir, 0o755); err != nil {
		t.Fatalf("cluster: FillDisk: %v", err)
	}
	if err := mount(n.Basedir, size); err != nil {
		t.Fatalf("cluster: FillDisk: mounting a tmpfs on %s: %v", n.Basedir, err)
	}
	c.mu.Lock()
	c.mounts = append(c.mounts, n.Basedir)
	c.mu.Unlock()
	if err := CopyDir(aside, n.Basedir); err != nil {
		t.Fatalf("cluster: FillDisk: copying node %d's basedir onto a tmpfs of size %s (too small?): %v", i, size, err)
	}
	if err := os.RemoveAll(aside); err != nil {
		t.Fatalf("cluster: FillDisk: %v", err)
	}
	n.Start()
}
