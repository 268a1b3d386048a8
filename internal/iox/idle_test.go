package iox

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeDeadline struct {
	set []time.Time
	err error
}

func (f *fakeDeadline) SetReadDeadline(t time.Time) error {
	f.set = append(f.set, t)
	return f.err
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

var errIdle = errors.New("idle")

func TestIdleReader(t *testing.T) {
	wrapped := fmt.Errorf("read tcp: %w", os.ErrDeadlineExceeded)
	other := errors.New("other")
	for _, tc := range []struct {
		name      string
		idle      time.Duration
		timeout   error
		setErr    error
		readErr   error
		wantSets  int
		wantError error
	}{
		{"no deadline", 0, nil, nil, nil, 0, nil},
		{"deadline per read", time.Minute, nil, nil, nil, 1, nil},
		{"cannot set a deadline", time.Minute, nil, errors.New("unsupported"), nil, 1, nil},
		{"timeout kept", time.Minute, nil, nil, wrapped, 1, wrapped},
		{"timeout replaced", time.Minute, errIdle, nil, wrapped, 1, errIdle},
		{"other error kept", time.Minute, errIdle, nil, other, 1, other},
		{"EOF kept", time.Minute, errIdle, nil, io.EOF, 1, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDeadline{err: tc.setErr}
			var r io.Reader = strings.NewReader("x")
			if tc.readErr != nil {
				r = errReader{tc.readErr}
			}
			ir := &IdleReader{R: r, Deadline: d, Idle: tc.idle, TimeoutErr: tc.timeout}
			before := time.Now()
			_, err := ir.Read(make([]byte, 1))
			if err != tc.wantError {
				t.Fatalf("error %v, want %v", err, tc.wantError)
			}
			if len(d.set) != tc.wantSets {
				t.Fatalf("%d deadlines set, want %d", len(d.set), tc.wantSets)
			}
			for _, s := range d.set {
				if s.Before(before.Add(tc.idle)) {
					t.Fatalf("deadline %v is before now+idle", s)
				}
			}
		})
	}
}

// TestIdleReaderHTTP stalls a real request body: the read fails after the
// idle time with TimeoutErr.
func TestIdleReaderHTTP(t *testing.T) {
	got := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ir := &IdleReader{R: r.Body, Deadline: http.NewResponseController(w), Idle: 100 * time.Millisecond, TimeoutErr: errIdle}
		_, err := io.Copy(io.Discard, ir)
		got <- err
	}))
	defer srv.Close()
	pr, pw := io.Pipe()
	hc := &http.Client{Transport: &http.Transport{}}
	sent := make(chan struct{})
	defer func() {
		pw.Close()
		<-sent
		hc.CloseIdleConnections()
	}()
	go func() {
		defer close(sent)
		req, _ := http.NewRequest(http.MethodPut, srv.URL, pr)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if _, err := pw.Write([]byte("some bytes, then silence")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != errIdle {
			t.Fatalf("error %v, want errIdle", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled body never timed out")
	}
}
