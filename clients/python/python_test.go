package python

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// python is Debian's interpreter, which has python3-pytest and
// python3-django; the first python3 in PATH may be another one without them.
const python = "/usr/bin/python3"

// TestPythonClient runs clients/python/tests with pytest against dtfc nodes
// of a binary built here. It is skipped, saying what to install, without
// Python, pytest or Django.
func TestPythonClient(t *testing.T) {
	if _, err := os.Stat(python); err != nil {
		t.Skipf("the Python client's tests need %s: apt-get install python3 python3-pytest python3-django (%v)", python, err)
	}
	for _, m := range []struct{ module, pkg string }{{"pytest", "python3-pytest"}, {"django", "python3-django"}} {
		if out, err := exec.Command(python, "-c", "import "+m.module).CombinedOutput(); err != nil {
			t.Skipf("the Python client's tests need %s for %s: apt-get install %s (%v: %s)", m.module, python, m.pkg, err, strings.TrimSpace(string(out)))
		}
	}

	bin := filepath.Join(t.TempDir(), "dtfc")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dtfc")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/dtfc: %v\n%s", err, out)
	}

	timeout := 10 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-30*time.Second < timeout {
		timeout = time.Until(d) - 30*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The nodes' data (a few 20 MiB files) goes to a directory removed
	// after the test, not to pytest's kept /tmp/pytest-of-<user>.
	cmd := exec.CommandContext(ctx, python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", t.TempDir(), "tests")
	cmd.Env = append(os.Environ(), "DTFC_BIN="+bin, "PYTHONDONTWRITEBYTECODE=1")
	// On the deadline, SIGINT: pytest then tears its fixtures down, which
	// stops the dtfc nodes it started; SIGKILL only if it does not exit.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("pytest did not finish within %v:\n%s", timeout, out)
	}
	if err != nil {
		t.Fatalf("%s -m pytest -q clients/python/tests: %v\n%s", python, err, out)
	}
	t.Logf("%s -m pytest -q clients/python/tests:\n%s", python, out)
}
