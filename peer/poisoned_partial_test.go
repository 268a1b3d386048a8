package peer_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPoisonedPartialBlamesNoHolder: a transfer in pieces took a piece
// from a holder that lied; the prefix (checkpointed every 32 MiB, or at
// Suspend when all holders were cut) covered that piece before the node
// was killed or the transfer cut. The checkpoint is consistent with the
// bytes kept (checkKept passes), but those bytes are wrong. The next miss
// continues from it from an honest holder: its readers are cut (the
// whole blob does not hash to its name), but the honest holder is not
// blamed, and the blob is fetched again from the start, so that the next
// read is served. A review found on 2026-12-07 that the honest holder was
// backed off as a liar and nothing fetched the blob again.
func TestPoisonedPartialBlamesNoHolder(t *testing.T) {
	nodes := startCluster(t, nodeOpts{}, nodeOpts{})
	holder, reader := nodes[0], nodes[1]
	data := randomBytes(t, 6<<20)
	id := holder.put(data)

	// What a liar's piece left in the kept prefix.
	lied := bytes.Clone(data)
	lied[1<<20] ^= 0xff
	keepPartial(t, reader, id, lied, 5<<20)

	_, body, err := get(reader.URL + "/" + id.String())
	require.False(t, err == nil && bytes.Equal(data, body), "the kept prefix is wrong: this read cannot be whole")
	// The blob fetched again from the start, without the kept bytes.
	reader.eventuallyHolds(id, true)
	resp, body, err := get(reader.URL + "/" + id.String())
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode)
	assert.True(t, bytes.Equal(data, body))

	for _, p := range reader.status().Cluster.Peers {
		if p.URL == holder.URL {
			assert.NotContains(t, p.LastError, "do not match", "the honest holder is blamed for bytes it never sent")
		}
	}
}
