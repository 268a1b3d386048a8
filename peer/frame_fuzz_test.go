package peer

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dtfc/dtfc"
)

// TestFrameRoundTrip: a frame's state line reads back as the state sent
// (bounded), the bytes after it untouched.
func TestFrameRoundTrip(t *testing.T) {
	data := []byte("some bytes\nwith a newline")
	st := dtfc.State{ID: dtfc.Sum(data), Clock: 7, Node: "n", Size: int64(len(data)), ContentType: "text/plain", Filename: strings.Repeat("é", 200)}
	br := bufio.NewReaderSize(strings.NewReader(frameHead(st)+string(data)), maxFrameHead)
	got, err := readFrameHead(br)
	require.NoError(t, err)
	assert.Equal(t, bounded(st), got)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, data, rest)
	_, err = readFrameHead(bufio.NewReaderSize(strings.NewReader(""), maxFrameHead))
	assert.Equal(t, io.EOF, err, "the end of the body")
}

// FuzzReadFrameHead: whatever a peer sends, reading a frame's state line
// never panics, and a state it accepts is one a PUT would accept and a
// batch can take.
func FuzzReadFrameHead(f *testing.F) {
	data := []byte("blob")
	st := dtfc.State{ID: dtfc.Sum(data), Clock: 1, Node: "n", Size: 4}
	f.Add([]byte(frameHead(st) + "blob"))
	tomb := st
	tomb.Deleted = true
	f.Add([]byte(frameHead(tomb)))
	big := st
	big.Size = maxBatchBlobSize + 1
	f.Add([]byte(frameHead(big)))
	f.Add([]byte("\n"))
	f.Add([]byte("eyJ9\n"))
	f.Add(bytes.Repeat([]byte("A"), maxFrameHead+1))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readFrameHead(bufio.NewReaderSize(bytes.NewReader(in), maxFrameHead))
		if err != nil {
			if !errors.Is(err, io.EOF) && len(in) == 0 {
				t.Fatalf("an empty body: %v, want io.EOF", err)
			}
			return
		}
		if validState(got) != nil || got.Deleted || got.Size > maxBatchBlobSize {
			t.Fatalf("accepted %+v", got)
		}
	})
}
