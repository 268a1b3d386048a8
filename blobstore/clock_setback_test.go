package blobstore_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// TestClockPersistedAcrossSetBack: a store whose last change was an
// upload, a delete, a block or a lift, reopened with its wall clock set a
// year back, issues clocks greater than that change's (API.md,
// Consistency 10: a node never issues a clock reading that goes
// backwards).
func TestClockPersistedAcrossSetBack(t *testing.T) {
	for _, last := range []string{"upload", "delete", "block", "lift"} {
		t.Run(last, func(t *testing.T) {
			dir := t.TempDir()
			s, err := blobstore.Open(dir, blobstore.Options{})
			require.NoError(t, err)
			id := put(t, s, content(1, 3000), blobstore.Upload{}).State.ID
			var c dtfc.Timestamp
			switch last {
			case "upload":
				st, err := s.Stat(id)
				require.NoError(t, err)
				c = st.Clock
			case "delete":
				st, err := s.Delete(id, false)
				require.NoError(t, err)
				c = st.Clock
			case "block", "lift":
				d, err := s.SetDeny(id, http.StatusForbidden, "x", false)
				require.NoError(t, err)
				c = d.Clock
				if last == "lift" {
					d, err = s.SetDeny(id, 0, "", true)
					require.NoError(t, err)
					c = d.Clock
				}
			}
			require.NoError(t, s.Close())
			back := openStore(t, dir, blobstore.Options{Wall: func() time.Time { return time.Now().Add(-365 * 24 * time.Hour) }})
			require.Greater(t, back.Clock().Now(), c, "after a restart with the clock set back, a clock lower than the last %s's was issued", last)
		})
	}
}
