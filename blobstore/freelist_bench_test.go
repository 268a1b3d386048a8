package blobstore_test

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkFreeListCommit measures what the choice of metaOptions weighs:
// a small commit to a bbolt file with the free list stored or not, on a
// fresh file and on one where 99% of 10^6 records of a record's size were
// deleted (a mass forget: about 10^5 free pages). Stored, every commit
// writes the whole list.
func BenchmarkFreeListCommit(b *testing.B) {
	for _, records := range []int{0, 1_000_000} {
		for _, stored := range []bool{true, false} {
			b.Run(fmt.Sprintf("records=%d/stored=%v", records, stored), func(b *testing.B) {
				db, err := bolt.Open(filepath.Join(b.TempDir(), "meta.db"), 0o600,
					&bolt.Options{NoFreelistSync: !stored, FreelistType: bolt.FreelistMapType})
				if err != nil {
					b.Fatal(err)
				}
				defer db.Close()
				val := make([]byte, 300)
				key := func(i int) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 64), uint64(i))[:64] }
				batch := func(from int, f func(bk *bolt.Bucket, i int) error) {
					err := db.Update(func(tx *bolt.Tx) error {
						bk, err := tx.CreateBucketIfNotExists([]byte("meta"))
						for i := from; err == nil && i < from+10000 && i < records; i++ {
							err = f(bk, i)
						}
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				for i := 0; i < records; i += 10000 {
					batch(i, func(bk *bolt.Bucket, i int) error { return bk.Put(key(i), val) })
				}
				for i := 0; i < records; i += 10000 {
					batch(i, func(bk *bolt.Bucket, i int) error {
						if i%100 == 0 {
							return nil
						}
						return bk.Delete(key(i))
					})
				}
				batch(0, func(*bolt.Bucket, int) error { return nil })
				free := db.Stats().FreePageN + db.Stats().PendingPageN
				i := 0
				for b.Loop() {
					i++
					err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put(key(records+i), val) })
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(free), "freepages")
			})
		}
	}
}
