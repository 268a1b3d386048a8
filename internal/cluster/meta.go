package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// MetaPath is where node n keeps its metadata (meta.db).
func (n *Node) MetaPath() string { return filepath.Join(n.Basedir, "meta.db") }

// DamageMeta damages the stopped node's meta.db as an operator or a disk
// might: "remove" deletes it, "truncate" cuts it to half its size,
// "zero" overwrites its second half with zeros. It fails the test if the
// node is running.
func (n *Node) DamageMeta(how string) {
	t := n.c.t
	t.Helper()
	if n.Running() {
		t.Fatalf("cluster: DamageMeta: node %d is running", n.Index)
	}
	p := n.MetaPath()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("cluster: DamageMeta: node %d: %v", n.Index, err)
	}
	switch how {
	case "remove":
		err = os.Remove(p)
	case "truncate":
		err = os.Truncate(p, fi.Size()/2)
	case "zero":
		var f *os.File
		if f, err = os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			_, err = f.WriteAt(make([]byte, fi.Size()-fi.Size()/2), fi.Size()/2)
			err = errors.Join(err, f.Close())
		}
	default:
		err = fmt.Errorf("unknown damage %q", how)
	}
	if err != nil {
		t.Fatalf("cluster: DamageMeta %s: node %d: %v", how, n.Index, err)
	}
	n.appendLog(fmt.Sprintf("=== cluster harness: meta.db damaged (%s)\n", how))
}

// StartRefused starts the node expecting it to refuse to start: it
// returns the exit status and everything the process wrote. A process
// that serves instead (its /health answers) or has not exited within
// timeout fails the test (and is killed).
func (n *Node) StartRefused(timeout time.Duration) (int, string) {
	t := n.c.t
	t.Helper()
	if n.Running() {
		t.Fatalf("cluster: StartRefused: node %d is running", n.Index)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.c.bin, n.args()...)
	cmd.Env = append(os.Environ(), "DTFC_TEST_CLOCK_FILE="+n.ClockFile)
	cmd.SysProcAttr = sysProcAttr()
	out, err := cmd.CombinedOutput()
	n.appendLog("=== cluster harness: start expected to be refused\n" + string(out))
	if ctx.Err() != nil {
		t.Fatalf("cluster: node %d did not exit within %v of a start that should have been refused:\n%s", n.Index, timeout, out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("cluster: node %d: a start that should have been refused: %v\n%s", n.Index, err, out)
	}
	return ee.ExitCode(), string(out)
}

// RebuildMeta runs dtfc rebuild-meta on the stopped node's basedir and
// returns its output; it fails the test unless it exits 0.
func (n *Node) RebuildMeta() string {
	t := n.c.t
	t.Helper()
	out, err := exec.Command(n.c.bin, "rebuild-meta", "--basedir", n.Basedir).CombinedOutput()
	n.appendLog("=== cluster harness: dtfc rebuild-meta\n" + string(out))
	if err != nil {
		t.Fatalf("cluster: node %d: dtfc rebuild-meta: %v\n%s", n.Index, err, out)
	}
	return strings.TrimSpace(string(out))
}

// appendLog adds a line of the harness's to the node's log.
func (n *Node) appendLog(s string) {
	f, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	f.WriteString(s)
}
