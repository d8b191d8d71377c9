package snapshot_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

func commit(t testing.TB, st *store.Store, src string, opts snapshot.CommitOptions) *snapshot.CommitResult {
	t.Helper()
	w := st.NewWriter()
	res, err := snapshot.Commit(context.Background(), w, st.Config().Chunker, src, opts)
	if err != nil {
		w.Abort()
		t.Fatal(err)
	}
	if _, err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return res
}

func checkout(t testing.TB, st *store.Store, root chunk.ID, dir string, opts snapshot.CheckoutOptions) (*snapshot.CheckoutStats, *snapshot.StatCache) {
	t.Helper()
	opts.Params = st.Config().Chunker
	opts.NoSync = true
	stats, rec, err := snapshot.Checkout(context.Background(), st, root, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return stats, rec
}

// TestRoundTrip commits the tree with every special case, checks it out
// into an empty directory and compares every field; then re-commits the
// checkout and expects the very same tree id.
func TestRoundTrip(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	os.Mkdir(src, 0o755)
	snapshottest.Build(t, src)
	res := commit(t, st, src, snapshot.CommitOptions{})

	dst := filepath.Join(t.TempDir(), "dst")
	stats, _ := checkout(t, st, res.Root, dst, snapshot.CheckoutOptions{})
	snapshottest.Equal(t, src, dst)
	if stats.Written == 0 {
		t.Errorf("checkout wrote nothing: %+v", stats)
	}
	again := commit(t, st, dst, snapshot.CommitOptions{})
	if again.Root != res.Root {
		t.Errorf("re-commit of the checkout: tree %s, want %s", again.Root.Short(), res.Root.Short())
	}
}

// TestInPlace checks out a tree over a previous checkout of another tree
// and expects exactly the differences to be written.
func TestInPlace(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	os.Mkdir(src, 0o755)
	snapshottest.Build(t, src)
	v1 := commit(t, st, src, snapshot.CommitOptions{})

	// v2: one file changed, one removed, one added, one chmod.
	os.WriteFile(filepath.Join(src, "text.txt"), []byte("changed\n"), 0o644)
	os.Remove(filepath.Join(src, "random.bin"))
	os.WriteFile(filepath.Join(src, "dirs/a/new"), []byte("new\n"), 0o600)
	os.Chmod(filepath.Join(src, "modes/readonly"), 0o400)
	v2 := commit(t, st, src, snapshot.CommitOptions{})

	dst := filepath.Join(t.TempDir(), "dst")
	_, rec := checkout(t, st, v2.Root, dst, snapshot.CheckoutOptions{})
	snapshottest.Equal(t, src, dst)

	// Roll back to v1 in place, then forward again.
	ref := filepath.Join(t.TempDir(), "v1")
	_, _ = checkout(t, st, v1.Root, ref, snapshot.CheckoutOptions{})
	stats, rec := checkout(t, st, v1.Root, dst, snapshot.CheckoutOptions{Record: rec})
	snapshottest.Equal(t, ref, dst)
	// text.txt and random.bin rewritten, dirs/a/new removed.
	if stats.Written != 2 || stats.Removed != 1 {
		t.Errorf("rollback: %+v, want 2 written and 1 removed", stats)
	}
	stats, _ = checkout(t, st, v2.Root, dst, snapshot.CheckoutOptions{Record: rec})
	snapshottest.Equal(t, src, dst)
	if stats.Written != 2 || stats.Removed != 1 {
		t.Errorf("roll forward: %+v, want 2 written and 1 removed", stats)
	}

	// Without a record the files are re-hashed: same result, same writes.
	os.WriteFile(filepath.Join(dst, "empty"), []byte("local edit"), 0o644)
	stats, _ = checkout(t, st, v2.Root, dst, snapshot.CheckoutOptions{})
	snapshottest.Equal(t, src, dst)
	if stats.Written != 1 {
		t.Errorf("repair without record: %+v, want 1 written", stats)
	}
}

// TestStatCache re-commits unchanged and changed trees: only changed files
// are read, and the tree ids match a commit without the cache.
func TestStatCache(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	for _, n := range []string{"a", "b", "d/c"} {
		os.WriteFile(filepath.Join(src, n), []byte("content of "+n), 0o644)
	}
	// Files changed within the racy window of a commit are not cached.
	time.Sleep(2 * snapshot.RacyWindow)
	first := commit(t, st, src, snapshot.CommitOptions{})
	if first.Stats.ReadFiles != 3 || first.Cache.Len() != 3 {
		t.Fatalf("first commit read %d files, cached %d; want 3, 3", first.Stats.ReadFiles, first.Cache.Len())
	}
	again := commit(t, st, src, snapshot.CommitOptions{Cache: first.Cache})
	if again.Stats.ReadFiles != 0 || again.Root != first.Root {
		t.Errorf("unchanged re-commit read %d files (want 0), tree %s (want %s)", again.Stats.ReadFiles, again.Root.Short(), first.Root.Short())
	}
	// Same size, same mtime, new content: ctime still gives it away.
	fi, _ := os.Stat(filepath.Join(src, "b"))
	os.WriteFile(filepath.Join(src, "b"), []byte("CONTENT OF b"), 0o644)
	os.Chtimes(filepath.Join(src, "b"), fi.ModTime(), fi.ModTime())
	changed := commit(t, st, src, snapshot.CommitOptions{Cache: again.Cache})
	nocache := commit(t, st, src, snapshot.CommitOptions{})
	if changed.Stats.ReadFiles != 1 || changed.Root != nocache.Root || changed.Root == first.Root {
		t.Errorf("after editing b: read %d files (want 1), tree %s (uncached %s, before %s)",
			changed.Stats.ReadFiles, changed.Root.Short(), nocache.Root.Short(), first.Root.Short())
	}
	// Save and load keep it whole.
	p := filepath.Join(t.TempDir(), "cache")
	if err := again.Cache.Save(p); err != nil {
		t.Fatal(err)
	}
	loaded, err := snapshot.LoadStatCache(p)
	if err != nil || loaded.Len() != 3 {
		t.Fatalf("load: %v, %d entries", err, loaded.Len())
	}
}

// TestExclude covers the pattern rules on commit and checkout.
func TestExclude(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	for _, d := range []string{"proc/1", "etc/ssh", "var/tmp", "usr/lib/py/__pycache__"} {
		os.MkdirAll(filepath.Join(src, d), 0o755)
	}
	for _, f := range []string{"proc/1/status", "etc/motd", "etc/ssh/key", "var/tmp/x.pyc", "usr/lib/py/m.py", "usr/lib/py/__pycache__/m.pyc", "tmp"} {
		os.WriteFile(filepath.Join(src, f), []byte(f), 0o644)
	}
	m, err := snapshot.NewMatcher([]string{"/proc/*", "*.pyc", "__pycache__/", "etc/ssh/key", "tmp/"})
	if err != nil {
		t.Fatal(err)
	}
	res := commit(t, st, src, snapshot.CommitOptions{Exclude: m})
	var got []string
	snapshot.Walk(st, res.Root, func(p string, n *snapshot.Node) error {
		got = append(got, p)
		return nil
	})
	want := []string{"etc", "etc/motd", "etc/ssh", "proc", "tmp", "usr", "usr/lib", "usr/lib/py", "usr/lib/py/m.py", "var"}
	if len(got) != len(want) {
		t.Fatalf("committed %q, want %q", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("committed %q, want %q", got, want)
		}
	}
	// Checkout with an exclude leaves local paths alone.
	dst := filepath.Join(t.TempDir(), "dst")
	os.MkdirAll(filepath.Join(dst, "etc"), 0o755)
	os.WriteFile(filepath.Join(dst, "etc/local.conf"), []byte("node-local"), 0o600)
	os.WriteFile(filepath.Join(dst, "stray"), []byte("x"), 0o600)
	em, _ := snapshot.NewMatcher([]string{"/etc/local.conf"})
	checkout(t, st, res.Root, dst, snapshot.CheckoutOptions{Exclude: em})
	if b, err := os.ReadFile(filepath.Join(dst, "etc/local.conf")); err != nil || string(b) != "node-local" {
		t.Errorf("excluded file: %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(dst, "stray")); !os.IsNotExist(err) {
		t.Errorf("extraneous file survived: %v", err)
	}
}

// cancelAfter is a Source that cancels its context on the n-th read.
type cancelAfter struct {
	snapshot.Source
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Get(id chunk.ID) ([]byte, error) {
	if c.n--; c.n == 0 {
		c.cancel()
	}
	return c.Source.Get(id)
}

// TestCheckoutCancelled: a checkout whose context ends while it works
// fails with the context's error, wherever it was; it used to report
// success with the files its workers had skipped missing.
func TestCheckoutCancelled(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	files := map[string]int{}
	for i := 0; i < 60; i++ {
		files[filepath.Join("d", "f"+string(rune('a'+i%26))+string(rune('a'+i/26)))] = 20000
	}
	snapshottest.RandomFiles(t, src, 7, files)
	res := commit(t, st, src, snapshot.CommitOptions{})
	for _, n := range []int{1, 3, 10, 40} {
		ctx, cancel := context.WithCancel(context.Background())
		dst := filepath.Join(t.TempDir(), "dst")
		_, _, err := snapshot.Checkout(ctx, &cancelAfter{Source: st, n: n, cancel: cancel}, res.Root, dst,
			snapshot.CheckoutOptions{Params: st.Config().Chunker, NoSync: true})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled at read %d: err = %v, want context.Canceled", n, err)
		}
	}
}

// cancelSaver is a Saver that cancels its context on the n-th write.
type cancelSaver struct {
	snapshot.Saver
	n      int
	cancel context.CancelFunc
}

func (c *cancelSaver) Put(t store.Type, id chunk.ID, data []byte) (bool, error) {
	if c.n--; c.n == 0 {
		c.cancel()
	}
	return c.Saver.Put(t, id, data)
}

// TestCommitCancelled: a commit whose context ends while it reads fails
// with the context's error; it must never save a tree that names files
// whose content its readers skipped.
func TestCommitCancelled(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	files := map[string]int{}
	for i := 0; i < 60; i++ {
		files[filepath.Join("d", "f"+string(rune('a'+i%26))+string(rune('a'+i/26)))] = 20000
	}
	snapshottest.RandomFiles(t, src, 8, files)
	for _, n := range []int{1, 3, 10, 40} {
		ctx, cancel := context.WithCancel(context.Background())
		w := st.NewWriter()
		res, err := snapshot.Commit(ctx, &cancelSaver{Saver: w, n: n, cancel: cancel}, st.Config().Chunker, src, snapshot.CommitOptions{})
		cancel()
		w.Abort()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled at write %d: err = %v (result %v), want context.Canceled", n, err, res)
		}
	}
}

// TestRoundTripUmask: a fresh file is created with its mode only when the
// umask leaves that mode alone; under a umask that would strip bits (077
// takes group and other from 0644 and 0755) and under none (000), the
// checkout of the full special-case tree is still exact.
func TestRoundTripUmask(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	os.Mkdir(src, 0o755)
	snapshottest.Build(t, src)
	res := commit(t, st, src, snapshot.CommitOptions{})
	for _, mask := range []int{0o077, 0o000, 0o022} {
		old := syscall.Umask(mask)
		dst := filepath.Join(t.TempDir(), "dst")
		_, _ = checkout(t, st, res.Root, dst, snapshot.CheckoutOptions{})
		syscall.Umask(old)
		snapshottest.Equal(t, src, dst)
	}
}
