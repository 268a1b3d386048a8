package peer

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestRedactedEndpoint: an endpoint's user information (a credential)
// never reaches /_status.
func TestRedactedEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"":                                  "",
		"http://127.0.0.1:7070":             "http://127.0.0.1:7070",
		"https://key:secret@s3.example/":    "https://s3.example/",
		"https://onlykey@s3.example:9000":   "https://s3.example:9000",
		"http://[::1]:7070/path?x=1":        "http://[::1]:7070/path?x=1",
		"http://key:sec%zzret@bad.example/": "(not a URL)",
	} {
		got := redactedEndpoint(in)
		assert.Equal(t, want, got, in)
		assert.NotContains(t, got, "secret", in)
	}
}
