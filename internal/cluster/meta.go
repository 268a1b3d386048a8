package cluster

import (
	"context"
	binenc "encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// MetaPath is where node n keeps its metadata (meta.db).
func (n *Node) MetaPath() string { return filepath.Join(n.Basedir, "meta.db") }

// Ways DamageMeta damages a meta.db, as an operator, a failing medium
// or a bad copy might.
const (
	MetaRemoved   = "remove"   // the file deleted
	MetaTruncated = "truncate" // cut to half the pages it uses
	MetaFlipped   = "flip"     // one byte in every 97 inverted, past the meta pages
	MetaZeroed    = "zero"     // every other page in use, and the root bucket's, zeroed
)

// DamageMeta damages the stopped node's meta.db in one of the Meta*
// ways (all but MetaRemoved within the pages bbolt uses, so the damage
// is real). It fails the test if the node is running.
func (n *Node) DamageMeta(how string) {
	t := n.c.t
	t.Helper()
	if n.Running() {
		t.Fatalf("cluster: DamageMeta: node %d is running", n.Index)
	}
	if err := DamageMeta(n.MetaPath(), how); err != nil {
		t.Fatalf("cluster: DamageMeta %s: node %d: %v", how, n.Index, err)
	}
	n.appendLog(fmt.Sprintf("=== cluster harness: meta.db damaged (%s)\n", how))
}

// DamageMeta damages the meta.db at path in one of the Meta* ways.
func DamageMeta(path, how string) error {
	if how == MetaRemoved {
		return os.Remove(path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	ps, root, hwm, err := metaExtent(b)
	if err != nil {
		return err
	}
	switch how {
	case MetaTruncated:
		return os.Truncate(path, hwm/2*ps)
	case MetaFlipped:
		for off := 2*ps + 7; off < hwm*ps; off += 97 {
			b[off] ^= 0xFF
		}
	case MetaZeroed:
		for p := int64(2); p < hwm; p++ {
			if p%2 == 0 || p == root {
				clear(b[p*ps : (p+1)*ps])
			}
		}
	default:
		return fmt.Errorf("unknown damage %q", how)
	}
	return os.WriteFile(path, b, 0o600)
}

// metaExtent reads bbolt's two meta pages and returns the page size, the
// root bucket's page and the high-water mark (pages in use) of the newer
// valid one.
func metaExtent(b []byte) (pageSize, root, hwm int64, err error) {
	if len(b) <= 2*4096 {
		return 0, 0, 0, errors.New("meta.db is too small to damage")
	}
	pageSize = int64(binenc.LittleEndian.Uint32(b[16+8:]))
	if !slices.Contains([]int64{4096, 8192, 16384, 65536}, pageSize) {
		return 0, 0, 0, fmt.Errorf("meta.db's page size %d", pageSize)
	}
	var txid uint64
	for i := range int64(2) {
		m := b[i*pageSize+16:]
		if binenc.LittleEndian.Uint32(m) != 0xED0CDAED {
			continue
		}
		if tx := binenc.LittleEndian.Uint64(m[48:]); tx >= txid {
			txid = tx
			root = int64(binenc.LittleEndian.Uint64(m[16:]))
			hwm = int64(binenc.LittleEndian.Uint64(m[40:]))
		}
	}
	if hwm <= 4 || hwm*pageSize > int64(len(b)) {
		return 0, 0, 0, fmt.Errorf("meta.db's high-water mark %d pages of %d bytes, file %d bytes", hwm, pageSize, len(b))
	}
	return pageSize, root, hwm, nil
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
