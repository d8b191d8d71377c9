package store

import (
	"math"
	"runtime/debug"
	"testing"
)

// TestMemoryShare: caches take their share of a process's Go memory
// limit, and are bounded only by their own defaults without one.
func TestMemoryShare(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	debug.SetMemoryLimit(math.MaxInt64)
	if got := MemoryShare(4); got != math.MaxInt64 {
		t.Errorf("no limit: %d, want MaxInt64", got)
	}
	for _, c := range []struct{ limit, n, want int64 }{
		{200 << 20, 4, 50 << 20},
		{200 << 20, 8, 25 << 20},
		{8 << 20, 8, 4 << 20}, // never under 4 MiB
		{200 << 20, 0, math.MaxInt64},
	} {
		debug.SetMemoryLimit(c.limit)
		if got := MemoryShare(c.n); got != c.want {
			t.Errorf("limit %d, 1/%d: %d, want %d", c.limit, c.n, got, c.want)
		}
	}
	debug.SetMemoryLimit(200 << 20)
	dir := t.TempDir()
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.frames.max != 25<<20 {
		t.Errorf("frame cache under a 200 MiB limit: %d bytes, want 25 MiB", st.frames.max)
	}
}
