package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/slogtest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc/server"
)

func TestRecentKeepsWarningsAndErrors(t *testing.T) {
	var out bytes.Buffer
	r := server.NewRecent(3)
	log := slog.New(r.Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo})))

	log.Debug("debug: neither kept nor written")
	log.Info("info: written, not kept")
	assert.Empty(t, r.Entries())

	peerLog := log.With("component", "peer").WithGroup("req")
	peerLog.Warn("push failed", "peer", "http://a:1", "err", "dial tcp: refused")
	log.Error("disk trouble", slog.Group("disk", "free", 0), "msg with spaces", "a b")
	entries := r.Entries()
	require.Len(t, entries, 2)
	assert.Equal(t, "disk trouble", entries[0].Message, "newest first")
	assert.Equal(t, "ERROR", entries[0].Level)
	assert.Equal(t, `disk.free=0 msg with spaces="a b"`, entries[0].Attrs)
	assert.Equal(t, "WARN", entries[1].Level)
	assert.Equal(t, `component=peer req.peer=http://a:1 req.err="dial tcp: refused"`, entries[1].Attrs)
	assert.False(t, entries[1].Time.IsZero())

	// Every record still reaches the wrapped handler, as it would have.
	written := out.String()
	assert.NotContains(t, written, "debug:")
	for _, s := range []string{"info: written", "push failed", "component=peer", "disk trouble"} {
		assert.Contains(t, written, s)
	}

	t.Run("bounded", func(t *testing.T) {
		for i := range 10 {
			log.Warn("again", "i", i)
		}
		e := r.Entries()
		require.Len(t, e, 3, "the ring keeps its size")
		for i, want := range []string{"i=9", "i=8", "i=7"} {
			assert.Equal(t, want, e[i].Attrs)
		}
		assert.EqualValues(t, 12, r.Total())
	})

	t.Run("long records are cut", func(t *testing.T) {
		log.Error(strings.Repeat("é", 2000), "big", strings.Repeat("x", 5000))
		e := r.Entries()[0]
		assert.LessOrEqual(t, len(e.Message), 512)
		assert.LessOrEqual(t, len(e.Attrs), 1024)
		assert.True(t, strings.HasSuffix(e.Message, "…"))
		assert.True(t, strings.HasPrefix(e.Message, "éé"))
		assert.True(t, json.Valid(mustJSON(t, e)), "valid UTF-8 after the cut")
	})
}

// A warning is kept even when the wrapped handler would drop it (a node
// logging only errors still shows its warnings on the status page).
func TestRecentBelowWrappedLevel(t *testing.T) {
	var out bytes.Buffer
	r := server.NewRecent(0)
	log := slog.New(r.Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelError})))
	log.Warn("kept, not written")
	assert.Empty(t, out.String())
	require.Len(t, r.Entries(), 1)
	assert.True(t, log.Enabled(context.Background(), slog.LevelWarn))
	assert.False(t, log.Enabled(context.Background(), slog.LevelInfo))
}

func TestRecentConcurrent(t *testing.T) {
	r := server.NewRecent(16)
	log := slog.New(r.Handler(slog.DiscardHandler))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				log.Warn("w", "g", g, "i", i)
				if i%50 == 0 {
					r.Entries()
				}
			}
		})
	}
	wg.Wait()
	assert.Len(t, r.Entries(), 16)
	assert.EqualValues(t, 1600, r.Total())
}

// The wrapper is a well-behaved slog.Handler: what it passes on obeys
// the rules testing/slogtest checks.
func TestRecentHandlerConformance(t *testing.T) {
	var buf bytes.Buffer
	h := server.NewRecent(4).Handler(slog.NewJSONHandler(&buf, nil))
	results := func() []map[string]any {
		var ms []map[string]any
		for _, line := range bytes.Split(buf.Bytes(), []byte{'\n'}) {
			if len(line) == 0 {
				continue
			}
			var m map[string]any
			require.NoError(t, json.Unmarshal(line, &m))
			ms = append(ms, m)
		}
		return ms
	}
	require.NoError(t, slogtest.TestHandler(h, results))
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}
