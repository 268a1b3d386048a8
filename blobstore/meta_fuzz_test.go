package blobstore

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// metaTemplate is a closed store's meta.db, made once per process for
// FuzzOpenDamagedMeta.
var metaTemplate struct {
	once sync.Once
	b    []byte
	err  error
}

// FuzzOpenDamagedMeta damages a real store's meta.db at the offsets and
// with the bytes the fuzzer picks (each 4-byte chunk of the input: a
// 16-bit page-relative offset selector, a page selector and the byte
// XORed there), then opens the store. Whatever the damage, Open must
// return (a store or an error): never crash the process (a fault or
// panic on one of bbolt's own goroutines would) and never hang.
func FuzzOpenDamagedMeta(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0xff})
	f.Add([]byte{16, 0, 2, 0x80, 8, 0, 3, 0x01})
	f.Add([]byte{0x10, 0, 4, 0xff, 0x20, 0, 5, 0xff, 0x30, 0, 6, 0xff})
	f.Add([]byte{0x18, 0, 1, 0x40})
	f.Fuzz(func(t *testing.T, damage []byte) {
		metaTemplate.once.Do(func() {
			fx := newMetaFixture(t, 120, 30)
			metaTemplate.b, metaTemplate.err = os.ReadFile(fx.meta())
		})
		if metaTemplate.err != nil {
			t.Fatal(metaTemplate.err)
		}
		b := append([]byte(nil), metaTemplate.b...)
		pages := len(b) / 4096
		for ; len(damage) >= 4; damage = damage[4:] {
			off := int(binary.BigEndian.Uint16(damage))%4096 + int(damage[2])%pages*4096
			b[off] ^= damage[3]
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "meta.db"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir, Options{})
		if err != nil {
			var me *MetaError
			if !errors.As(err, &me) {
				t.Logf("not a MetaError: %v", err)
			}
			return
		}
		s.Close()
	})
}
