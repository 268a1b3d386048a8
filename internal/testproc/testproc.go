// Package testproc runs a server process for tests (pouchdb-server,
// versitygw): started and waited on until it answers, then stopped by
// its PID (SIGTERM, then SIGKILL) or killed outright.
package testproc

import (
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is one server process at a time; the zero value is stopped. Its
// methods are safe for concurrent use.
type Proc struct {
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exited
}

// Launch starts cmd and polls ready (every 50 ms, with a client whose
// requests give up after 2 s) until it reports true, for at most within.
// A process that exits first is an error; one that does not get ready in
// time is left running (Shutdown stops it) and is an error.
func (p *Proc) Launch(cmd *exec.Cmd, within time.Duration, ready func(hc *http.Client) bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return errors.New("already running")
	}
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
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			p.cmd = nil
			return fmt.Errorf("exited at start: %s", cmd.ProcessState)
		default:
		}
		if ready(hc) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("did not answer within %v", within)
}

// Shutdown stops the process (SIGTERM, then SIGKILL after 10 s) and waits
// for its exit. It does nothing if it is not running.
func (p *Proc) Shutdown() error { return p.stop(true) }

// Kill kills the process (SIGKILL: a crash, no wait for the connections
// in flight) and waits for its exit. It does nothing if it is not
// running.
func (p *Proc) Kill() error { return p.stop(false) }

func (p *Proc) stop(term bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	if term {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return nil
		case <-time.After(10 * time.Second):
		}
	}
	p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("pid %d did not exit after SIGKILL", p.cmd.Process.Pid)
	}
}
