package peer

import "time"

// SetCatchUpTimes sets how long a peer counts as catching a node up
// after its last full offer, and the least bound of a deferral, for the
// Clusters made until restore is called.
func SetCatchUpTimes(window, minBound time.Duration) (restore func()) {
	oldWindow, oldBound := catchUpWindow, catchUpMinBound
	catchUpWindow, catchUpMinBound = window, minBound
	return func() { catchUpWindow, catchUpMinBound = oldWindow, oldBound }
}

// SetStallTimeout sets stallTimeout until restore is called.
func SetStallTimeout(d time.Duration) (restore func()) {
	old := stallTimeout
	stallTimeout = d
	return func() { stallTimeout = old }
}
