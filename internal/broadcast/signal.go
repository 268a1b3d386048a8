// Package broadcast wakes every waiter at once: the close-and-replace
// channel, written once.
package broadcast

import "sync"

// Signal tells every goroutine waiting on it that something changed. A
// waiter takes the channel from Wait before it looks at the state it
// watches, so that no change can slip between its look and its wait;
// Notify closes that channel, and the next Wait returns a new one.
//
// The zero value is ready to use; a Signal is safe for concurrent use and
// must not be copied after first use.
type Signal struct {
	mu sync.Mutex
	ch chan struct{} // nil until a Wait: a Notify with no waiter closes nothing
}

// Wait returns a channel that is closed at the next Notify.
func (s *Signal) Wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Notify wakes every goroutine waiting on a channel Wait returned.
func (s *Signal) Notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}
