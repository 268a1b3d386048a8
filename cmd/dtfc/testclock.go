package main

import (
	"os"
	"strings"
	"sync"
	"time"
)

// testClockEnv names a file holding an offset (a Go duration such as
// "90s" or "-2m") added to this process's wall clock: the hybrid logical
// clock, the max_clock_offset check and the retention horizons read it.
// It exists for tests of clock skew with real processes (a Go binary
// reads the time through the vDSO, so libfaketime cannot move it); the
// file is re-read when it changes, so a test can step a running node's
// clock ahead and back. Unset, the wall clock is time.Now.
const testClockEnv = "DTFC_TEST_CLOCK_FILE"

// wallClock returns the wall clock of this process: time.Now, or with
// DTFC_TEST_CLOCK_FILE set, time.Now plus the offset in that file.
func wallClock() func() time.Time {
	path := os.Getenv(testClockEnv)
	if path == "" {
		return time.Now
	}
	tc := &testClock{path: path}
	return tc.now
}

// testClock reads its offset from a file, at most every 20 ms.
type testClock struct {
	path string

	mu      sync.Mutex
	checked time.Time
	offset  time.Duration
}

func (tc *testClock) now() time.Time {
	now := time.Now()
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if now.Sub(tc.checked) >= 20*time.Millisecond {
		tc.checked = now
		// A missing or unreadable file means no offset; a half-written
		// one keeps the previous offset.
		b, err := os.ReadFile(tc.path)
		switch {
		case err != nil:
			tc.offset = 0
		default:
			if d, err := time.ParseDuration(strings.TrimSpace(string(b))); err == nil {
				tc.offset = d
			}
		}
	}
	return now.Add(tc.offset)
}
