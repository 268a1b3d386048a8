package sleep

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFor(t *testing.T) {
	start := time.Now()
	if err := For(t.Context(), 20*time.Millisecond); err != nil {
		t.Fatalf("full wait: %v", err)
	}
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Fatalf("returned after %v, before the 20ms", took)
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(10*time.Millisecond, cancel)
	start = time.Now()
	if err := For(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > time.Minute {
		t.Fatalf("cancelled wait took %v", took)
	}
}
