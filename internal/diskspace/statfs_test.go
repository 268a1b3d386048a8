package diskspace

import (
	"runtime"
	"testing"
)

func TestOf(t *testing.T) {
	switch runtime.GOOS {
	case "linux", "darwin", "freebsd":
	default:
		if _, _, err := Of(t.TempDir()); err == nil {
			t.Fatal("Of on an unsupported system returned no error")
		}
		return
	}
	avail, total, err := Of(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if total == 0 || avail > total {
		t.Fatalf("avail %d, total %d: want 0 < total and avail <= total", avail, total)
	}
	if _, _, err := Of("/no/such/directory/here"); err == nil {
		t.Fatal("Of on a missing directory returned no error")
	}
}
