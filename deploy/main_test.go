package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/dtfc/dtfc/internal/cluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		cluster.RemoveBinary()
		os.Exit(code)
	}))
}

// artifactDir is where a test writes files worth keeping (screenshots):
// $DTFC_ARTIFACTS if set, else the test's artifact directory (kept with
// go test -artifacts, removed otherwise).
func artifactDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("DTFC_ARTIFACTS"); d != "" {
		d, err := filepath.Abs(filepath.Join(d, t.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.ArtifactDir()
}

// need skips the test unless the program is installed, saying how to
// install it.
func need(t *testing.T, program, install string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		t.Skipf("%s is not installed: %s", program, install)
	}
	return path
}

// repoFile returns the path of a file of the repository, from this
// package's directory.
func repoFile(parts ...string) string {
	return filepath.Join(append([]string{".."}, parts...)...)
}

// readRepoFile returns a file of the repository as a string.
func readRepoFile(t *testing.T, parts ...string) string {
	t.Helper()
	b, err := os.ReadFile(repoFile(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "\r\n", "\n")
}
