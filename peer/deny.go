package peer

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// The deny list replicates like states (last writer wins per ID, pushed
// with the change feed, compared by digest in anti-entropy); these are
// its node-to-node handler and what applying a peer's entries does.

// denyStore is what the deny list's handlers need of the blob store.
type denyStore interface {
	DenyList() ([]blobstore.Deny, error)
	ForgottenLifts() ([]blobstore.Deny, error)
	ApplyDeny(d blobstore.Deny) (bool, error)
	ApplyDenyKept(d blobstore.Deny) (bool, error)
	DenyEntry(id dtfc.ID) (blobstore.Deny, bool, error)
	Missing(id dtfc.ID) (dtfc.State, bool)
}

func (c *Cluster) denyStore() denyStore { return c.store }

func (c *Cluster) hDenyList(w http.ResponseWriter, r *http.Request) {
	list, err := c.denyStore().DenyList()
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	if list == nil {
		list = []blobstore.Deny{}
	}
	lifts, err := c.denyStore().ForgottenLifts()
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, denyList{Entries: list, ForgottenLifts: lifts})
}

func (c *Cluster) applyDenyList(entries []blobstore.Deny) (int, error) {
	n := 0
	for _, d := range entries {
		if err := validDeny(d); err != nil {
			return n, err
		}
		ok, err := c.denyStore().ApplyDeny(d)
		if errors.Is(err, blobstore.ErrClockAhead) {
			c.refusedClock(err)
			continue
		}
		if err != nil {
			return n, err
		}
		if ok {
			n++
			c.denyApplied(d)
		}
	}
	return n, nil
}

// denyApplied follows a deny entry received from a peer: a block is
// logged; after a lift, bytes the block removed while an upload newer
// than it stayed recorded are fetched back, and the archives' newest
// states of the ID are applied again (relayAgain).
func (c *Cluster) denyApplied(d blobstore.Deny) {
	if d.Active() {
		c.log.Info("blocked by the deny list", "id", d.ID.String(), "status", d.Status, "reason", d.Reason)
		c.acked() // an upload waiting for ?replicas=N stops (WaitReplicas)
		return
	}
	if st, ok := c.denyStore().Missing(d.ID); ok {
		c.goRepair(st)
	}
	c.relayAgain(d.ID)
}

// Lifted follows a lift made on this node (DELETE /_deny/{id}) as one
// received: see denyApplied.
func (c *Cluster) Lifted(d blobstore.Deny) { c.denyApplied(d) }

func validDeny(d blobstore.Deny) error {
	if d.ID.IsZero() || d.Clock == 0 || (d.Active() && !ValidDenyStatus(d.Status)) || len(d.Reason) > 1000 || len(d.Node) > maxNodeLen {
		return fmt.Errorf("invalid deny entry for %s", d.ID)
	}
	return nil
}

// ValidDenyStatus reports whether status may answer reads of a denied ID.
func ValidDenyStatus(status int) bool {
	return status == http.StatusForbidden || status == http.StatusNotFound || status == http.StatusUnavailableForLegalReasons
}
