// Package diskspace reads how much room a filesystem has: statfs, written
// once for the store, the status page and the soak.
package diskspace
