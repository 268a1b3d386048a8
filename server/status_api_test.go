package server

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/api"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/peer"
)

// TestStatusIsAPIStatus: the /_status the server encodes decodes into
// api.Status (what the client, the harness and the soak read) with no
// field unknown there and none lost on the way back.
func TestStatusIsAPIStatus(t *testing.T) {
	now := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	st := Status{
		Node: "http://a", Role: "replica", Blobs: 3, Bytes: 4, Uptime: "1s", Started: now, Unconfirmed: 1,
		Queues:       map[string]QueueStatus{"http://b": {Length: 2}},
		Disk:         &Disk{Dir: "/d", FreeBytes: 5, TotalBytes: 6},
		RecentErrors: []LogEntry{{Time: now, Level: "WARN", Message: "m", Attrs: "k=v"}},
		Cluster: &peer.Status{
			Peers: []peer.PeerStatus{{
				URL: "http://b", Role: "replica", ReportedRole: "cache", Node: "n", Self: true,
				Expired: true, ExpiredSince: now, ExpiredHorizon: now, ClockRefused: 1, Up: true, Contacted: true,
				LastContact: now, LastError: "e", LastErrorAt: now, Failures: 2, Queue: 2, LagSeconds: 1.5,
			}},
			Synced: true, Resyncing: true,
			Resync: peer.ResyncStatus{State: peer.ResyncRunning, Since: now, LastError: "r"},
			Scrub:  blobstore.ScrubProgress{Running: true, PassStarted: now, PassFinished: now, Checked: 1, CheckedBytes: 2, Corrupt: 3, Unreadable: 4, Passes: 5, TotalCorrupt: 6},
		},
	}
	b, err := json.Marshal(st)
	require.NoError(t, err)
	var got api.Status
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&got), "a field of /_status unknown to api.Status")
	back, err := json.Marshal(got)
	require.NoError(t, err)
	var want, have map[string]any
	require.NoError(t, json.Unmarshal(b, &want))
	require.NoError(t, json.Unmarshal(back, &have))
	assert.Equal(t, want, have, "what api.Status reads is what the server wrote")
}
