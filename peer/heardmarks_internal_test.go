package peer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestHeardMarks(t *testing.T) {
	var h heardMarks
	all := func(string) bool { return true }
	h.heard("a", "x, y")
	by, ok := h.markedBy("x", all)
	assert.True(t, ok)
	assert.Equal(t, "a", by)
	_, ok = h.markedBy("z", all)
	assert.False(t, ok, "a marks no z")
	_, ok = h.markedBy("x", func(src string) bool { return src != "a" })
	assert.False(t, ok, "a source no longer listed is not heeded")

	h.heard("x", "x")
	h.heard("a", "y")
	_, ok = h.markedBy("x", all)
	assert.False(t, ok, "a's mark of x was lifted; x's word about itself counts for nothing")

	h.heard("a", "")
	_, ok = h.markedBy("y", all)
	assert.False(t, ok, "an empty header: a marks no one now")
	assert.NotContains(t, h.by, "a")

	h.heard("", "y")
	_, ok = h.markedBy("y", all)
	assert.False(t, ok, "no sender, nothing heard")

	many := make([]string, 2*maxHeardMarks)
	for i := range many {
		many[i] = fmt.Sprint("n", i)
	}
	h.heard("b", strings.Join(many, ","))
	assert.Len(t, h.by["b"], maxHeardMarks)
	for i := range maxHeardSources + 10 {
		h.heard(fmt.Sprint("s", i), "q")
	}
	assert.Len(t, h.by, maxHeardSources)
}
