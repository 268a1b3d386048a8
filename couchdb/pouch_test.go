package couchdb_test

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The CouchDB-API server of these tests: pouchdb-server (CouchDB's HTTP API
// over PouchDB with a LevelDB store), installed with npm into a cache
// directory outside the repository. .ci/run installs it; locally:
//
//	npm install --prefix ~/.cache/dtfc-node-tools pouchdb-server@4.2.0
//
// Fidelity, checked by hand and by these tests, for what the migration
// uses: attachments (stubs with digest "md5-<base64>" and length, streamed
// GET, standalone and inline PUT), _changes (normal and longpoll with
// heartbeat, limit, include_docs, last_seq), _local documents (revisions
// "0-N", 409 on a stale _rev) and 409 on stale document updates all behave
// as in CouchDB. Deviations: sequences are integers (CouchDB 2+ has opaque
// strings: the migrator treats both as opaque JSON), att_encoding_info is
// ignored (nothing is stored compressed), documents are answered with
// Content-Type text/plain, and a body needs Content-Type application/json
// to be parsed. A standalone attachment PUT is slow (about 3 MB/s), so the
// tests create attachments inline with _bulk_docs.
const pouchVersion = "4.2.0"

// nodeTools is the directory npm installed the Node.js tools into.
func nodeTools() string {
	if d := os.Getenv("DTFC_NODE_TOOLS"); d != "" {
		return d
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "dtfc-node-tools")
	}
	return filepath.Join(os.TempDir(), "dtfc-node-tools")
}

// pouchBinary returns the pouchdb-server executable, or a message saying
// how to install it.
func pouchBinary() (string, string) {
	install := fmt.Sprintf("npm install --prefix %s pouchdb-server@%s", nodeTools(), pouchVersion)
	if _, err := exec.LookPath("node"); err != nil {
		return "", "node is not installed (Node.js 18 or later, with npm); then: " + install
	}
	bin := filepath.Join(nodeTools(), "node_modules", ".bin", "pouchdb-server")
	if _, err := os.Stat(bin); err != nil {
		return "", "pouchdb-server is not installed; run: " + install + " (or set DTFC_NODE_TOOLS to where it is)"
	}
	return bin, ""
}

// pouch is a pouchdb-server process on a loopback port. It keeps its port
// (and, unless in memory, its data directory) across restarts.
type pouch struct {
	URL  string
	Port int

	bin      string
	dir      string
	inMemory bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// newPouch prepares a server in dir; start starts it.
func newPouch(dir string, inMemory bool) (*pouch, error) {
	bin, msg := pouchBinary()
	if bin == "" {
		return nil, errors.New(msg)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	return &pouch{URL: "http://127.0.0.1:" + strconv.Itoa(port), Port: port, bin: bin, dir: dir, inMemory: inMemory}, nil
}

// startPouch starts a pouchdb-server for t, stopped in t.Cleanup; the
// test is skipped, saying how to install it, if it is not installed.
func startPouch(t *testing.T, inMemory bool) *pouch {
	t.Helper()
	if _, msg := pouchBinary(); msg != "" {
		t.Skip(msg)
	}
	p, err := newPouch(t.TempDir(), inMemory)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("pouchdb-server: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(p.dir, "stdout.log"))
			t.Logf("pouchdb-server output:\n%s", tail(string(b), 3000))
		}
	})
	p.Start(t)
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Start (re)starts the server and waits until it answers.
func (p *pouch) Start(t testing.TB) {
	t.Helper()
	if err := p.start(); err != nil {
		t.Fatalf("pouchdb-server: %v", err)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL) and waits for its exit.
func (p *pouch) Stop(t testing.TB) {
	t.Helper()
	if err := p.stop(); err != nil {
		t.Fatalf("pouchdb-server: %v", err)
	}
}

func (p *pouch) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return errors.New("already running")
	}
	args := []string{"--host", "127.0.0.1", "--port", strconv.Itoa(p.Port),
		"--config", filepath.Join(p.dir, "config.json"), "--no-stdout-logs"}
	if p.inMemory {
		args = append(args, "--in-memory")
	} else {
		args = append(args, "--dir", filepath.Join(p.dir, "data"))
	}
	out, err := os.OpenFile(filepath.Join(p.dir, "stdout.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(p.bin, args...)
	// It writes log.txt into its working directory.
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			p.cmd = nil
			return fmt.Errorf("exited at start: %s", cmd.ProcessState)
		default:
		}
		resp, err := hc.Get(p.URL + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("did not answer within 60 s")
}

func (p *pouch) stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("pid %d did not exit after SIGKILL", p.cmd.Process.Pid)
	}
}

// shared is one in-memory pouchdb-server for the tests that need no
// restart, each in its own database; TestMain stops it.
var shared struct {
	once sync.Once
	p    *pouch
	err  error
	dir  string
}

func sharedPouch(t *testing.T) *pouch {
	t.Helper()
	if _, msg := pouchBinary(); msg != "" {
		t.Skip(msg)
	}
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "dtfc-pouch-"); shared.err != nil {
			return
		}
		if shared.p, shared.err = newPouch(shared.dir, true); shared.err == nil {
			shared.err = shared.p.start()
		}
	})
	if shared.err != nil {
		t.Fatalf("pouchdb-server: %v", shared.err)
	}
	return shared.p
}

func stopShared() {
	if shared.p != nil {
		shared.p.stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}
