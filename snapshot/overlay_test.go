package snapshot_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store/storetest"
)

// TestOverlay lays two layers over a base and compares the checkout with
// the same layering done by hand on disk (cp -a semantics for what the
// layers hold): later layers win, directories merge keeping the first
// metadata, a hard link whose first name a later layer replaced stands
// alone, and a layer's own hard links stay links.
func TestOverlay(t *testing.T) {
	st := storetest.New(t)
	dir := t.TempDir()
	mk := func(root string, files map[string]string) chunk.ID {
		for p, c := range files {
			f := filepath.Join(dir, root, p)
			os.MkdirAll(filepath.Dir(f), 0o755)
			if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return commit(t, st, filepath.Join(dir, root), snapshot.CommitOptions{}).Root
	}
	os.MkdirAll(filepath.Join(dir, "base/keep"), 0o700)
	base := mk("base", map[string]string{"etc/a": "base a", "etc/b": "base b", "usr/x": "linked", "d/sub/f": "deep"})
	if err := os.Link(filepath.Join(dir, "base/usr/x"), filepath.Join(dir, "base/usr/y")); err != nil {
		t.Fatal(err)
	}
	base = commit(t, st, filepath.Join(dir, "base"), snapshot.CommitOptions{}).Root
	l1 := mk("l1", map[string]string{"etc/a": "l1 a", "new/n": "l1 n", "keep/k": "k"})
	os.MkdirAll(filepath.Join(dir, "l1/m"), 0o755)
	os.WriteFile(filepath.Join(dir, "l1/m/one"), []byte("one"), 0o644)
	if err := os.Link(filepath.Join(dir, "l1/m/one"), filepath.Join(dir, "l1/m/two")); err != nil {
		t.Fatal(err)
	}
	l1 = commit(t, st, filepath.Join(dir, "l1"), snapshot.CommitOptions{}).Root
	l2 := mk("l2", map[string]string{"usr/x": "l2 x", "d": "d is a file now", "etc/a": "l2 a"})

	w := st.NewWriter()
	got, err := snapshot.Overlay(st, w, base, l1, l2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	again, _ := snapshot.Overlay(st, &snapshot.MemSaver{Next: st}, base, l1, l2)
	if again != got {
		t.Errorf("not deterministic: %s then %s", got.Short(), again.Short())
	}
	co := filepath.Join(dir, "co")
	checkout(t, st, got, co, snapshot.CheckoutOptions{})

	// The same by hand on a copy of the base.
	want := filepath.Join(dir, "want")
	checkout(t, st, base, want, snapshot.CheckoutOptions{})
	os.RemoveAll(filepath.Join(want, "d"))
	for p, c := range map[string]string{"etc/a": "l2 a", "new/n": "l1 n", "keep/k": "k", "usr/x": "l2 x", "d": "d is a file now", "m/one": "one"} {
		os.MkdirAll(filepath.Dir(filepath.Join(want, p)), 0o755)
		if err := os.WriteFile(filepath.Join(want, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Link(filepath.Join(want, "m/one"), filepath.Join(want, "m/two"))
	// usr/y was the second name of the old usr/x: it keeps "linked".
	os.Remove(filepath.Join(want, "usr/y"))
	os.WriteFile(filepath.Join(want, "usr/y"), []byte("linked"), 0o644)
	for _, p := range []string{"etc/a", "new/n", "keep/k", "usr/x", "usr/y", "d", "m/one", "m/two"} {
		fi, _ := os.Stat(filepath.Join(co, p))
		os.Chtimes(filepath.Join(want, p), fi.ModTime(), fi.ModTime())
	}
	for _, p := range []string{"new", "m", "usr", "etc", "keep", ""} {
		fi, _ := os.Stat(filepath.Join(co, p))
		os.Chtimes(filepath.Join(want, p), fi.ModTime(), fi.ModTime())
	}
	if fi, _ := os.Stat(filepath.Join(co, "keep")); fi.Mode().Perm() != 0o700 {
		t.Errorf("keep/: mode %v; want the base's 0700", fi.Mode().Perm())
	}
	os.Chmod(filepath.Join(want, "keep"), 0o700)
	snapshottest.Equal(t, want, co)
	var x, y os.FileInfo
	x, _ = os.Stat(filepath.Join(co, "m/one"))
	y, _ = os.Stat(filepath.Join(co, "m/two"))
	if !os.SameFile(x, y) {
		t.Error("the layer's own hard link was broken")
	}
}
