// Package pouchtest runs pouchdb-server, the CouchDB-API server of the
// tests (couchdb's and server's CouchDB sessions), on a loopback port.
// It is installed by npm into a cache outside the repository (.ci/run);
// a test without it is skipped, saying how to install it.
package pouchtest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dtfc/dtfc/internal/testproc"
)

// Version is the pouchdb-server the tests were checked with.
const Version = "4.2.0"

// NodeTools is the directory npm installed the Node.js tools into
// ($DTFC_NODE_TOOLS, else ~/.cache/dtfc-node-tools).
func NodeTools() string {
	if d := os.Getenv("DTFC_NODE_TOOLS"); d != "" {
		return d
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "dtfc-node-tools")
	}
	return filepath.Join(os.TempDir(), "dtfc-node-tools")
}

// Binary returns the pouchdb-server executable, or a message saying how
// to install it.
func Binary() (bin, missing string) {
	install := fmt.Sprintf("npm install --prefix %s pouchdb-server@%s", NodeTools(), Version)
	if _, err := exec.LookPath("node"); err != nil {
		return "", "node is not installed (Node.js 18 or later, with npm); then: " + install
	}
	bin = filepath.Join(NodeTools(), "node_modules", ".bin", "pouchdb-server")
	if _, err := os.Stat(bin); err != nil {
		return "", "pouchdb-server is not installed; run: " + install + " (or set DTFC_NODE_TOOLS to where it is)"
	}
	return bin, ""
}

// Server is a pouchdb-server process on a loopback port. It keeps its
// port (and, unless in memory, its data directory) across restarts.
type Server struct {
	URL  string
	Port int
	Dir  string // its config, data and stdout.log

	bin      string
	inMemory bool
	proc     testproc.Proc
}

// New prepares a server in dir; Launch starts it.
func New(dir string, inMemory bool) (*Server, error) {
	bin, msg := Binary()
	if bin == "" {
		return nil, errors.New(msg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	return &Server{URL: "http://127.0.0.1:" + strconv.Itoa(port), Port: port, Dir: dir, bin: bin, inMemory: inMemory}, nil
}

// ForTest starts a server for t, stopped in t.Cleanup (its output logged
// if t failed); t is skipped, saying how to install it, without it.
func ForTest(t testing.TB, inMemory bool) *Server {
	t.Helper()
	if _, msg := Binary(); msg != "" {
		t.Skip(msg)
	}
	p, err := New(t.TempDir(), inMemory)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Shutdown(); err != nil {
			t.Errorf("pouchdb-server: %v", err)
		}
		if t.Failed() {
			t.Logf("pouchdb-server output:\n%s", p.Output(3000))
		}
	})
	p.Start(t)
	return p
}

// Output returns the last n bytes the server wrote.
func (p *Server) Output(n int) string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "stdout.log"))
	if len(b) > n {
		return "..." + string(b[len(b)-n:])
	}
	return string(b)
}

// Start (re)starts the server and waits until it answers, failing t if
// it cannot.
func (p *Server) Start(t testing.TB) {
	t.Helper()
	if err := p.Launch(); err != nil {
		t.Fatalf("pouchdb-server: %v", err)
	}
}

// Stop stops the server, failing t if it cannot.
func (p *Server) Stop(t testing.TB) {
	t.Helper()
	if err := p.Shutdown(); err != nil {
		t.Fatalf("pouchdb-server: %v", err)
	}
}

// Launch starts the server and waits (at most 60 s) until it answers.
func (p *Server) Launch() error {
	args := []string{"--host", "127.0.0.1", "--port", strconv.Itoa(p.Port),
		"--config", filepath.Join(p.Dir, "config.json"), "--no-stdout-logs"}
	if p.inMemory {
		args = append(args, "--in-memory")
	} else {
		args = append(args, "--dir", filepath.Join(p.Dir, "data"))
	}
	out, err := os.OpenFile(filepath.Join(p.Dir, "stdout.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(p.bin, args...)
	cmd.Dir = p.Dir // it writes log.txt into its working directory
	cmd.Stdout, cmd.Stderr = out, out
	return p.proc.Launch(cmd, 60*time.Second, func(hc *http.Client) bool {
		resp, err := hc.Get(p.URL + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// Shutdown stops the server (SIGTERM, then SIGKILL) and waits for its
// exit. It does nothing if it is not running.
func (p *Server) Shutdown() error { return p.proc.Shutdown() }
