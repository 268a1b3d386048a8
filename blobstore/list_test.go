package blobstore_test

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// listAll pages through s with limit and returns every state listed and
// the number of pages it took; each page is checked to be at most limit
// long and in order after the previous one.
func listAll(t *testing.T, s *blobstore.Store, limit int) ([]dtfc.State, int) {
	t.Helper()
	var all []dtfc.State
	var after dtfc.ID
	for pages := 1; ; pages++ {
		page, next, err := s.List(after, limit)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page), limit)
		for _, st := range page {
			require.Positive(t, bytes.Compare(st.ID[:], after[:]), "page after %s lists %s", after, st.ID)
			after = st.ID
		}
		all = append(all, page...)
		if next.IsZero() {
			return all, pages
		}
		require.GreaterOrEqual(t, bytes.Compare(next[:], after[:]), 0, "next goes back")
		after = next
		require.Less(t, pages, 100000, "the listing does not end")
	}
}

func sortedIDs(states []dtfc.State) []dtfc.ID {
	var ids []dtfc.ID
	for _, st := range states {
		ids = append(ids, st.ID)
	}
	slices.SortFunc(ids, func(a, b dtfc.ID) int { return bytes.Compare(a[:], b[:]) })
	return ids
}

// TestList pages through a store in ID order: live uploads only, with
// their states; no tombstone (deleted, forced, blocked) and no blocked
// upload whose bytes are set aside; a continuation from any ID, listed or
// not, goes on after it.
func TestList(t *testing.T) {
	s := newStore(t)
	var live []dtfc.State
	for i := range 23 {
		res := put(t, s, content(i, 100+i), blobstore.Upload{Filename: fmt.Sprintf("f%d.txt", i), ContentType: "text/plain"})
		live = append(live, res.State)
	}
	// Deleted after its upload; deleted without ever being held; blocked.
	deleted := put(t, s, content(100, 10), blobstore.Upload{}).State
	_, err := s.Delete(deleted.ID, false)
	require.NoError(t, err)
	_, err = s.Delete(dtfc.Sum([]byte("known elsewhere")), true)
	require.NoError(t, err)
	blocked := put(t, s, content(101, 10), blobstore.Upload{}).State
	_, err = s.SetDeny(blocked.ID, 451, "test", false)
	require.NoError(t, err)
	// An upload newer than a block made elsewhere: its bytes are set
	// aside, its record is the block's tombstone, and it is not listed
	// while blocked.
	aside := put(t, s, content(102, 10), blobstore.Upload{}).State
	_, err = s.ApplyDeny(blobstore.Deny{ID: aside.ID, Status: 451, Clock: aside.Clock - 1, Node: "peer"})
	require.NoError(t, err)
	st, err := s.Stat(aside.ID)
	require.NoError(t, err)
	require.True(t, st.Deleted, "the set-aside upload's record is the block's tombstone")

	want := sortedIDs(live)
	for _, limit := range []int{1, 5, 23, 24, 1000} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			got, pages := listAll(t, s, limit)
			assert.Equal(t, want, sortedIDs(got))
			// A full last page, or records that are not listed after
			// the last live one, end with an empty page.
			full := (len(want) + limit - 1) / limit
			assert.Contains(t, []int{full, full + 1}, pages, "pages")
			for _, st := range got {
				cur, err := s.Stat(st.ID)
				require.NoError(t, err)
				assert.Equal(t, cur, st)
			}
		})
	}

	// From a listed ID and from one between two listed IDs.
	page, next, err := s.List(want[10], 3)
	require.NoError(t, err)
	assert.Equal(t, want[11:14], sortedIDs(page))
	assert.Equal(t, want[13], next)
	between := want[10]
	between[dtfc.IDLen-1]++
	page, _, err = s.List(between, 2)
	require.NoError(t, err)
	assert.Equal(t, want[11:13], sortedIDs(page))
	// After the last: nothing, and the listing is complete.
	page, next, err = s.List(want[len(want)-1], 10)
	require.NoError(t, err)
	assert.Empty(t, page)
	assert.True(t, next.IsZero())

	// Lifting the block brings the set-aside upload back into the list.
	_, err = s.ApplyDeny(blobstore.Deny{ID: aside.ID, Lifted: true, Clock: s.Clock().Now(), Node: "peer"})
	require.NoError(t, err)
	got, _ := listAll(t, s, 1000)
	assert.Contains(t, sortedIDs(got), aside.ID)
}

// TestListSkipBudget: a run of tombstones longer than the budget does not
// make one call read it all: the page ends early (empty here) with a next
// to go on from, and the listing still reaches the blob after the run.
func TestListSkipBudget(t *testing.T) {
	s := newStore(t)
	// Tombstones whose IDs sort first (first byte 0), written in parallel
	// so the committer batches them.
	n := 2*blobstore.ListSkipBudget + 10
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				var id dtfc.ID
				id[1], id[2], id[63] = byte(i>>8), byte(i), 1
				_, err := s.Delete(id, true)
				errs <- err
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var data []byte
	for i := 0; ; i++ {
		if data = content(1000+i, 10); dtfc.Sum(data)[0] != 0 {
			break
		}
	}
	blob := put(t, s, data, blobstore.Upload{}).State

	page, next, err := s.List(dtfc.ID{}, 10)
	require.NoError(t, err)
	assert.Empty(t, page, "the first budget of tombstones")
	require.False(t, next.IsZero())
	assert.Zero(t, next[0], "next is within the tombstones")
	got, pages := listAll(t, s, 10)
	assert.Equal(t, []dtfc.ID{blob.ID}, sortedIDs(got))
	assert.Equal(t, 3, pages, "two pages of skipped tombstones, then the blob")
}

// TestListCache: a cache lists what it holds, its fills included; an
// evicted blob is no longer listed.
func TestListCache(t *testing.T) {
	s := openStore(t, t.TempDir(), blobstore.Options{TrackAccess: true})
	data := content(7, 1000)
	fill := dtfc.State{ID: dtfc.Sum(data), Clock: s.Clock().Now(), Node: "replica", Size: int64(len(data))}
	_, err := commitState(t, s, data, fill, false)
	require.NoError(t, err)
	got, _ := listAll(t, s, 10)
	assert.Equal(t, []dtfc.State{fill}, got)

	evicted, err := s.Evict(1, 0, 0)
	require.NoError(t, err)
	require.Len(t, evicted, 1)
	got, _ = listAll(t, s, 10)
	assert.Empty(t, got)
}
