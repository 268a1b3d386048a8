package cluster

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// VerifyTestMain runs a package's tests that start clusters, then checks
// that nothing was left running (goleak) and removes the built binary.
// Toxiproxy's per-connection pipes are the one exception: they can stay
// blocked on a channel send after their proxy stopped (seen after a node
// closed connections on bodies it refused, and on loaded machines).
func VerifyTestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).read"),
		goleak.Cleanup(func(code int) {
			RemoveBinary()
			os.Exit(code)
		}))
}
