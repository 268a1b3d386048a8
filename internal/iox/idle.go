// Package iox holds the small readers the HTTP handlers share.
package iox

import (
	"errors"
	"io"
	"os"
	"time"
)

// ReadDeadliner sets the read deadline of a connection (or of an HTTP/2
// stream): *http.ResponseController is one.
type ReadDeadliner interface {
	SetReadDeadline(time.Time) error
}

// IdleReader gives every Read a fresh deadline, so that a request body
// that stops arriving fails after Idle, however long the whole body takes
// (there is no server-wide ReadTimeout: uploads may take hours).
//
// The zero Idle sets no deadline. An error setting one (a connection that
// cannot take deadlines, as HTTP/2 through some proxies) is ignored: the
// read proceeds without it.
type IdleReader struct {
	// R is the body read.
	R io.Reader
	// Deadline takes the deadline of each read.
	Deadline ReadDeadliner
	// Idle is how long one read may wait for bytes.
	Idle time.Duration
	// TimeoutErr, if not nil, is returned in place of an error that is
	// os.ErrDeadlineExceeded (the deadline passed); nil returns that
	// error as it is.
	TimeoutErr error
}

// Read sets the deadline, then reads from R.
func (ir *IdleReader) Read(p []byte) (int, error) {
	if ir.Idle > 0 {
		_ = ir.Deadline.SetReadDeadline(time.Now().Add(ir.Idle))
	}
	n, err := ir.R.Read(p)
	if err != nil && ir.TimeoutErr != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = ir.TimeoutErr
	}
	return n, err
}
