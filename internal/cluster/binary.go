package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// binary is the dtfc binary built once per test process.
var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Binary builds ./cmd/dtfc of the enclosing module once per test process and
// returns the path of the binary. The module root is found by walking up
// from the working directory to the nearest go.mod. With the environment
// variable DTFC_TEST_RACE_BINARY=1 the binary is built with -race. The
// binary lives in a directory under os.TempDir that RemoveBinary deletes; a
// TestMain may call it after m.Run.
func Binary(t testing.TB) string {
	t.Helper()
	binary.once.Do(func() {
		binary.path, binary.err = build()
	})
	if binary.err != nil {
		t.Fatalf("cluster: building dtfc: %v", binary.err)
	}
	return binary.path
}

// RemoveBinary deletes the binary built by Binary, if any. Call it only
// once no test of the process needs the binary any more (from TestMain,
// after m.Run).
func RemoveBinary() {
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
}

func build() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "dtfc-cluster-bin-")
	if err != nil {
		return "", err
	}
	binary.dir = dir
	path := filepath.Join(dir, "dtfc")
	args := []string{"build", "-o", path}
	if os.Getenv("DTFC_TEST_RACE_BINARY") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/dtfc")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %v in %s: %v\n%s", args, root, err, out)
	}
	return path, nil
}

// moduleRoot walks up from the working directory to the directory holding
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod in the working directory or any parent")
		}
		dir = parent
	}
}
