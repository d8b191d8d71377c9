package snapshottest

import (
	mrand "math/rand"
	"os"
	"path/filepath"
	"testing"
)

// RandomFiles writes files (name relative to dir -> size) of pseudo-random,
// incompressible content drawn from seed, so byte counts on a wire or in
// a store mean something. The same seed gives the same bytes.
func RandomFiles(tb testing.TB, dir string, seed int64, files map[string]int) {
	tb.Helper()
	rng := mrand.New(mrand.NewSource(seed))
	for name, size := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		b := make([]byte, size)
		rng.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}
