package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	noteSources(root)
	return path, nil
}

// noteSources looks at every Go source file of the module, and at go.mod
// and go.sum, from the test process: go test remembers what a test
// looked at (its test log) and reruns it, rather than answer from its
// cache, once one of them changed. Without this, the binary built here
// was not among a test's inputs, and a change to the daemon's code left
// the packages that run it cached with the old build's results.
func noteSources(root string) {
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) || name == "go.mod" || name == "go.sum" {
			os.Stat(path)
		}
		return nil
	})
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
