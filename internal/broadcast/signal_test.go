package broadcast

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestSignal(t *testing.T) {
	var s Signal
	s.Notify() // no waiter: nothing to close, no panic
	a, b := s.Wait(), s.Wait()
	if a != b {
		t.Fatal("two Waits before a Notify return different channels")
	}
	if closed(a) {
		t.Fatal("channel closed before Notify")
	}
	s.Notify()
	if !closed(a) {
		t.Fatal("Notify did not close the channel")
	}
	c := s.Wait()
	if closed(c) {
		t.Fatal("the channel after a Notify is already closed")
	}
	s.Notify()
	s.Notify()
	if !closed(c) {
		t.Fatal("second Notify did not close the new channel")
	}
}

func TestSignalConcurrent(t *testing.T) {
	var s Signal
	const waiters = 16
	var wg sync.WaitGroup
	for range waiters {
		ch := s.Wait()
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Error("waiter not woken")
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				s.Wait()
				s.Notify()
			}
		}()
	}
	s.Notify()
	wg.Wait()
}
