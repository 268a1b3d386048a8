package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dtfc/dtfc"
)

// Deadlines of the node lifecycle.
const (
	// healthTimeout bounds the wait for a started node's /health.
	healthTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop; a node's shutdown grace is 30 s
	// by default, so this leaves it room.
	stopTimeout = 45 * time.Second
	// killTimeout bounds the wait for a killed process to be reaped.
	killTimeout = 10 * time.Second
	// cleanupGrace is how long Cleanup lets a node stop gracefully before
	// it is killed.
	cleanupGrace = 10 * time.Second
)

// Node is one dtfc process of a Cluster. Its fields describe it and stay
// the same across restarts.
type Node struct {
	// Index is the node's position in Cluster.Nodes.
	Index int
	// Role is "replica" or "cache".
	Role dtfc.Role
	// URL is the node's own URL (its --me), what clients use:
	// http://127.0.0.1:<Port>. Other nodes know it by a proxy's URL unless
	// the cluster is Direct (see Cluster.PeerURL).
	URL string
	// Port is the port the node listens on, the same across restarts.
	Port int
	// Basedir is the node's --basedir.
	Basedir string
	// LogPath is the file receiving the node's stderr and stdout, appended
	// to across restarts.
	LogPath string
	// PeerList is the node's --peerlist file.
	PeerList string
	// Config is the node's --config file, or "" if it has none (no secret
	// and no auth token).
	Config string
	// ClockFile is the node's DTFC_TEST_CLOCK_FILE: the offset of its
	// wall clock from the machine's (see SetClock).
	ClockFile string

	c *Cluster

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{} // closed when the current process has exited
	state *os.ProcessState
	// wanted is true from a start until a Kill or Stop: a process that
	// exits while wanted crashed.
	wanted bool
}

// args is the node's command line, after the binary.
func (n *Node) args() []string {
	a := []string{"serve",
		"--host", "127.0.0.1",
		"--port", strconv.Itoa(n.Port),
		"--me", n.URL,
		"--basedir", n.Basedir,
		"--peerlist", n.PeerList,
		"--role", string(n.Role),
		// Defaults for tests, before the caller's flags: the last of a
		// repeated flag wins, so Options.Args and NodeArgs override them.
		"--anti-entropy-interval", "2s",
		"--scrub-interval", "0",
	}
	if n.Config != "" {
		a = append(a, "--config", n.Config)
	}
	if n.c.opts.Join && n.Index > 0 {
		a = append(a, "--join", n.c.Nodes[0].URL)
	}
	a = append(a, n.c.opts.Args...)
	return append(a, n.c.opts.NodeArgs[n.Index]...)
}

// Running reports whether the node's process has been started and has not
// exited.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// PID is the process ID of the node's current (or last) process, 0 if it
// was never started.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Start (re)starts the node on the same port and basedir and waits until
// its /health answers 200. It fails the test if the node is running, or
// does not become healthy within 30 s.
func (n *Node) Start() {
	t := n.c.t
	t.Helper()
	if err := n.startHealthy(); err != nil {
		t.Fatalf("cluster: %v\n%s", err, n.logTail(40))
	}
}

// startHealthy starts the process and waits until it serves. A node keeps
// its port across restarts, and while it was down another process (a
// connection's ephemeral port, another package's test server) may have
// taken it: a start that fails to bind is tried again once the port is
// free, within healthTimeout.
func (n *Node) startHealthy() error {
	deadline := time.Now().Add(healthTimeout)
	for {
		off := n.logSize()
		if err := n.start(); err != nil {
			return err
		}
		err := n.waitHealthy(time.Until(deadline))
		if err == nil || !strings.Contains(n.logFrom(off), "address already in use") {
			return err
		}
		if err := waitPortFree(n.Port, deadline); err != nil {
			return fmt.Errorf("node %d: %w", n.Index, err)
		}
		n.appendLog(fmt.Sprintf("=== cluster harness: port %d was taken; it is free again, starting node %d once more\n", n.Port, n.Index))
	}
}

// waitPortFree waits until a listener can bind 127.0.0.1:port, or the
// deadline passes.
func waitPortFree(port int, deadline time.Time) error {
	for {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			ln.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d stayed taken: %v", port, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logSize is the length of the node's log file now (0 if it has none).
func (n *Node) logSize() int64 {
	fi, err := os.Stat(n.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logFrom returns what the node's log holds from byte off on.
func (n *Node) logFrom(off int64) string {
	s := n.Log()
	if off > int64(len(s)) {
		return ""
	}
	return s[off:]
}

// start starts the process without waiting for it to serve.
func (n *Node) start() error {
	if n.Running() {
		return fmt.Errorf("node %d is already running (pid %d)", n.Index, n.PID())
	}
	f, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("node %d: log file: %w", n.Index, err)
	}
	// The child gets its own copy of the descriptor; ours closes once the
	// process started.
	defer f.Close()
	cmd := exec.Command(n.c.bin, n.args()...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "DTFC_TEST_CLOCK_FILE="+n.ClockFile)
	cmd.SysProcAttr = sysProcAttr()
	fmt.Fprintf(f, "=== cluster harness: starting node %d: %s\n", n.Index, strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %d: starting %s: %w", n.Index, n.c.bin, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.done, n.state, n.wanted = cmd, done, nil, true
	n.mu.Unlock()
	go func() {
		_ = cmd.Wait() // the outcome is in ProcessState
		n.mu.Lock()
		n.state = cmd.ProcessState
		n.mu.Unlock()
		close(done)
	}()
	return nil
}

// waitHealthy polls /health until it answers 200, the process exits, or
// the timeout passes.
func (n *Node) waitHealthy(timeout time.Duration) error {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, n.URL+"/health", nil)
		res, err := n.c.hc.Do(req)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				rcancel()
				return nil
			}
			err = fmt.Errorf("/health answered %s", res.Status)
		}
		rcancel()
		last = err
		select {
		case <-done:
			return fmt.Errorf("node %d exited before serving: %s", n.Index, n.exitState())
		case <-ctx.Done():
			return fmt.Errorf("node %d not healthy after %v: %v", n.Index, timeout, last)
		case <-tick.C:
		}
	}
}

// crashed returns a description of the node's exit if its process exited
// without the harness stopping it, or "".
func (n *Node) crashed() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.wanted || n.state == nil {
		return ""
	}
	return fmt.Sprintf("node %d exited on its own: %s", n.Index, n.state)
}

// exitState describes how the last process ended.
func (n *Node) exitState() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state == nil {
		return "still running"
	}
	return n.state.String()
}

// signal sends sig to the current process and waits up to timeout for it
// to exit. It returns the exit state, or an error if the node was not
// running or did not exit in time.
func (n *Node) signal(sig syscall.Signal, timeout time.Duration) (*os.ProcessState, error) {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if done == nil || !n.Running() {
		return nil, fmt.Errorf("node %d is not running", n.Index)
	}
	n.mu.Lock()
	n.wanted = false
	n.mu.Unlock()
	// Signal only the process this harness started, by its PID; an
	// error means it exited meanwhile, which the wait below sees.
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(timeout):
		return nil, fmt.Errorf("node %d (pid %d) did not exit within %v of %v", n.Index, cmd.Process.Pid, timeout, sig)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state, nil
}

// Quit sends SIGQUIT to the node's process: the Go runtime writes every
// goroutine's stack to the node's log, and the process exits. For the
// diagnosis of a node that stopped making progress; it waits for the
// exit, and reports whether the node was running.
func (n *Node) Quit() bool {
	_, err := n.signal(syscall.SIGQUIT, killTimeout)
	if err != nil && n.Running() {
		n.signal(syscall.SIGKILL, killTimeout)
	}
	return err == nil
}

// Kill sends SIGKILL to the node's process and waits until it has exited.
func (n *Node) Kill() {
	t := n.c.t
	t.Helper()
	if _, err := n.signal(syscall.SIGKILL, killTimeout); err != nil {
		t.Fatalf("cluster: kill: %v", err)
	}
}

// Stop sends SIGTERM to the node's process, waits until it has exited, and
// fails the test unless it exited with status 0 (a graceful shutdown).
func (n *Node) Stop() {
	t := n.c.t
	t.Helper()
	st, err := n.signal(syscall.SIGTERM, stopTimeout)
	if err != nil {
		if n.Running() {
			n.signal(syscall.SIGKILL, killTimeout)
		}
		t.Fatalf("cluster: stop: %v\n%s", err, n.logTail(40))
	}
	if st.ExitCode() != 0 {
		t.Fatalf("cluster: stop: node %d: want exit status 0 after SIGTERM, got %s\n%s", n.Index, st, n.logTail(40))
	}
}

// shutdown stops the node for Cleanup: SIGTERM, then SIGKILL after
// cleanupGrace. It returns a complaint worth reporting, or "".
func (n *Node) shutdown() string {
	if !n.Running() {
		return ""
	}
	st, err := n.signal(syscall.SIGTERM, cleanupGrace)
	if err != nil {
		if _, kerr := n.signal(syscall.SIGKILL, killTimeout); kerr != nil && n.Running() {
			return fmt.Sprintf("node %d: %v; then %v", n.Index, err, kerr)
		}
		return fmt.Sprintf("node %d: %v; killed", n.Index, err)
	}
	if st.ExitCode() != 0 {
		return fmt.Sprintf("node %d: exited with %s after SIGTERM", n.Index, st)
	}
	return ""
}

// SetClock moves the node's wall clock offset from the machine's: the
// node (running or not) reads the time as now+offset from then on, within
// about 20 ms (cmd/dtfc's DTFC_TEST_CLOCK_FILE). Zero puts it back.
func (n *Node) SetClock(offset time.Duration) {
	t := n.c.t
	t.Helper()
	tmp := n.ClockFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(offset.String()+"\n"), 0o644); err != nil {
		t.Fatalf("cluster: node %d: clock: %v", n.Index, err)
	}
	if err := os.Rename(tmp, n.ClockFile); err != nil {
		t.Fatalf("cluster: node %d: clock: %v", n.Index, err)
	}
}

// Log returns everything the node wrote to stderr and stdout so far, over
// all its runs (for failure messages).
func (n *Node) Log() string {
	b, err := os.ReadFile(n.LogPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("(reading %s: %v)", n.LogPath, err)
	}
	return string(b)
}

// logTail returns the last lines of the node's log, headed by its name.
func (n *Node) logTail(lines int) string {
	s := strings.TrimRight(n.Log(), "\n")
	all := strings.Split(s, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return fmt.Sprintf("--- node %d (%s, %s) log, last %d lines:\n%s\n", n.Index, n.Role, n.URL, len(all), strings.Join(all, "\n"))
}
