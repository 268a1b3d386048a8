package deploy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestClusterScript runs scripts/cluster.sh as the README tells a new
// user to: three nodes, the second and third joining the first, each
// knowing the two others when it returns; then stop.
func TestClusterScript(t *testing.T) {
	dir := t.TempDir()
	// Three consecutive free ports: try a few bases.
	var base int
	for range 20 {
		p := freePort(t)
		if p+2 < 65536 && portFree(p+1) && portFree(p+2) {
			base = p
			break
		}
	}
	require.NotZero(t, base, "no three consecutive free ports")
	env := append(os.Environ(), "DTFC_CLUSTER_DIR="+dir, "DTFC_BASE_PORT="+strconv.Itoa(base))
	run := func(args ...string) string {
		cmd := exec.Command("../scripts/cluster.sh", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "cluster.sh %v:\n%s", args, out)
		return string(out)
	}
	t.Cleanup(func() {
		out := run("stop")
		t.Logf("cluster.sh stop: %s", out)
	})
	t.Logf("cluster.sh start:\n%s", run("start"))
	for i := range 3 {
		url := fmt.Sprintf("http://127.0.0.1:%d", base+i)
		resp, err := http.Get(url + "/_members")
		require.NoError(t, err)
		var ans struct {
			Members []struct {
				URL     string `json:"url"`
				Removed bool   `json:"removed"`
			} `json:"members"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&ans))
		resp.Body.Close()
		require.Len(t, ans.Members, 3, "node %s's members: %+v", url, ans.Members)
		for _, m := range ans.Members {
			require.False(t, m.Removed)
		}
	}
	_, err := os.Stat(filepath.Join(dir, "node0.pid"))
	require.NoError(t, err)
}

// portFree reports whether nothing listens on loopback port p.
func portFree(p int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
