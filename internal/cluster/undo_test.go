package cluster_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/internal/cluster"
)

// TestUndo checks the faults that undo one thing only: Uncut leaves a
// link's delay alone, FreeDisk brings a node back from its tmpfs with
// everything it held, and Delay slows a link until it is set to zero.
func TestUndo(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2})
	hc := client(t)

	c.Cut(0, 1)
	c.Delay(0, 1, 200*time.Millisecond)
	first := randomBytes(20 << 10)
	put(t, hc, c.Nodes[0].URL, "first", first)
	c.Uncut(0, 1)
	start := time.Now()
	c.WaitConverged(t, converge)
	assert.Greater(t, time.Since(start), 400*time.Millisecond, "the delay outlives the cut")
	c.Delay(0, 1, 0)
	requireEverywhere(t, c, hc, first)

	if err := c.CanFillDisk(); err != nil {
		t.Skipf("the rest needs a tmpfs: %v", err)
	}
	c.FillDisk(1, "4m")
	require.True(t, c.OnTmpfs(1))
	big := randomBytes(8 << 20)
	status := func() int {
		req, err := http.NewRequest(http.MethodPut, c.Nodes[1].URL+"/big", bytes.NewReader(big))
		require.NoError(t, err)
		res, err := hc.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	assert.Equal(t, http.StatusInsufficientStorage, status())
	c.FreeDisk(1)
	assert.False(t, c.OnTmpfs(1))
	require.True(t, c.Nodes[1].Running())
	requireEverywhere(t, c, hc, first) // kept across the move
	assert.Equal(t, http.StatusCreated, status(), "room again")
	c.WaitConverged(t, converge)
	requireEverywhere(t, c, hc, big)
	c.CheckNoTemp(t)
}
