package archive_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/archive"
)

// fake starts an in-process S3 server (gofakes3) with one bucket and
// returns an archive of it under prefix.
func fake(t *testing.T, prefix string, partSize int64) (*archive.Archive, *s3mem.Backend) {
	t.Helper()
	be := s3mem.New()
	require.NoError(t, be.CreateBucket("b"))
	srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(srv.Close)
	secret := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secret, []byte("s3cr3t\n"), 0o600))
	a, err := archive.New(t.Context(), archive.Config{Bucket: "b", Prefix: prefix, Endpoint: srv.URL, PathStyle: true,
		AccessKeyID: "AKIDTEST", SecretAccessKeyFile: secret, PartSize: partSize})
	require.NoError(t, err)
	return a, be
}

func blob(t *testing.T, n int) ([]byte, dtfc.ID, *os.File) {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	p := filepath.Join(t.TempDir(), "blob")
	require.NoError(t, os.WriteFile(p, b, 0o644))
	f, err := os.Open(p)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return b, dtfc.Sum(b), f
}

func TestBlobRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		part int64
	}{{"single", 1000, 0}, {"empty", 0, 0}, {"multipart", 3*5<<20 + 7, 5 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := fake(t, "pre/fix", tc.part)
			ctx := t.Context()
			data, id, f := blob(t, tc.size)
			has, err := a.HasBlob(ctx, id)
			require.NoError(t, err)
			assert.False(t, has)
			require.NoError(t, a.PutBlob(ctx, id, f, int64(len(data))))
			// Written once: a second put of the same blob is success.
			require.NoError(t, a.PutBlob(ctx, id, f, int64(len(data))))
			has, err = a.HasBlob(ctx, id)
			require.NoError(t, err)
			assert.True(t, has)
			body, size, err := a.OpenBlob(ctx, id, 0)
			require.NoError(t, err)
			got, err := io.ReadAll(body)
			body.Close()
			require.NoError(t, err)
			assert.Equal(t, int64(len(data)), size)
			assert.True(t, bytes.Equal(data, got))
			if len(data) > 10 {
				body, size, err = a.OpenBlob(ctx, id, 10)
				require.NoError(t, err)
				got, _ = io.ReadAll(body)
				body.Close()
				assert.Equal(t, int64(len(data)), size)
				assert.True(t, bytes.Equal(data[10:], got))
			}
		})
	}
}

func TestMissingBlob(t *testing.T) {
	a, _ := fake(t, "", 0)
	_, _, err := a.OpenBlob(t.Context(), dtfc.Sum([]byte("x")), 0)
	assert.ErrorIs(t, err, archive.ErrNotFound)
}

func TestNewestStateWins(t *testing.T) {
	a, _ := fake(t, "p", 0)
	ctx := t.Context()
	id := dtfc.Sum([]byte("some blob"))
	_, err := a.NewestState(ctx, id)
	require.ErrorIs(t, err, archive.ErrNotFound)
	up := dtfc.State{ID: id, Clock: 100 << 16, Node: "aaaa", Size: 9}
	del := dtfc.State{ID: id, Clock: 200 << 16, Node: "aaaa", Deleted: true}
	tie := dtfc.State{ID: id, Clock: 200 << 16, Node: "bbbb", Size: 9} // same clock, greater node
	old := dtfc.State{ID: id, Clock: 50 << 16, Node: "zzzz", Size: 9}
	for _, st := range []dtfc.State{del, up, old} {
		require.NoError(t, a.PutState(ctx, st))
	}
	// Write once: the same record again is ErrExists.
	require.ErrorIs(t, a.PutState(ctx, up), archive.ErrExists)
	got, err := a.NewestState(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, del, got, "the tombstone is the newest record, whatever order they were written in")
	require.NoError(t, a.PutState(ctx, tie))
	got, err = a.NewestState(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, tie, got, "equal clocks: the greater node identity wins")
}

func TestLogs(t *testing.T) {
	a, _ := fake(t, "p", 0)
	ctx := t.Context()
	e := func(s string) []archive.LogEntry {
		return []archive.LogEntry{{ID: dtfc.Sum([]byte(s)), Clock: 1, Node: "n"}}
	}
	require.NoError(t, a.AppendLog(ctx, "w1", 1, e("a")))
	require.NoError(t, a.AppendLog(ctx, "w1", 2, e("b")))
	require.NoError(t, a.AppendLog(ctx, "w2", 1, e("c")))
	require.ErrorIs(t, a.AppendLog(ctx, "w1", 2, e("x")), archive.ErrExists)
	ws, err := a.Writers(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"w1", "w2"}, ws)
	var seqs []uint64
	var ids []dtfc.ID
	require.NoError(t, a.ReadLog(ctx, "w1", 0, 0, func(seq uint64, es []archive.LogEntry) error {
		seqs = append(seqs, seq)
		ids = append(ids, es[0].ID)
		return nil
	}))
	assert.Equal(t, []uint64{1, 2}, seqs)
	assert.Equal(t, []dtfc.ID{dtfc.Sum([]byte("a")), dtfc.Sum([]byte("b"))}, ids)
	seqs = nil
	require.NoError(t, a.ReadLog(ctx, "w1", 1, 0, func(seq uint64, _ []archive.LogEntry) error {
		seqs = append(seqs, seq)
		return nil
	}))
	assert.Equal(t, []uint64{2}, seqs)
	stop := errors.New("stop")
	assert.ErrorIs(t, a.ReadLog(ctx, "w1", 0, 0, func(uint64, []archive.LogEntry) error { return stop }), stop)
}

func TestCheck(t *testing.T) {
	a, _ := fake(t, "p", 0)
	require.NoError(t, a.Check(t.Context()))
	be := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(srv.Close)
	// The standard chain: credentials from the environment.
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	b, err := archive.New(context.Background(), archive.Config{Bucket: "nope", Endpoint: srv.URL, PathStyle: true})
	require.NoError(t, err)
	assert.ErrorIs(t, b.Check(t.Context()), archive.ErrNoBucket)
}

// TestCounters: the blob bytes the server accepted are counted once
// (whole, or part by part), a blob already there is not counted again,
// and the bytes read through OpenBlob are counted as read; counters
// given in the configuration are the ones counted into.
func TestCounters(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		part int64
	}{{"single", 100_000, 0}, {"multipart", 2*5<<20 + 11, 5 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := fake(t, "c", tc.part)
			ctx := t.Context()
			data, id, f := blob(t, tc.size)
			require.NoError(t, a.PutBlob(ctx, id, f, int64(tc.size)))
			assert.EqualValues(t, tc.size, a.Counters().Written())
			require.NoError(t, a.PutBlob(ctx, id, f, int64(tc.size)), "already there")
			assert.EqualValues(t, tc.size, a.Counters().Written(), "not counted twice")
			assert.Zero(t, a.Counters().Read())
			body, _, err := a.OpenBlob(ctx, id, 10)
			require.NoError(t, err)
			got, err := io.ReadAll(body)
			require.NoError(t, err)
			body.Close()
			assert.Equal(t, data[10:], got)
			assert.EqualValues(t, tc.size-10, a.Counters().Read())
		})
	}
	c := &archive.Counters{}
	a, err := archive.New(t.Context(), archive.Config{Bucket: "b", Counters: c})
	require.NoError(t, err)
	assert.Same(t, c, a.Counters())
}
