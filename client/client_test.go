package client_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

// openStore creates a store at dir (as `sim init` does) and opens it; it
// is closed when the test ends.
func openStore(tb testing.TB, dir string) *store.Store {
	tb.Helper()
	if err := store.Init(dir); err != nil {
		tb.Fatal(err)
	}
	st, err := store.Open(dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// A checkout that destroyed a store inside its target (the
		// failure TestCheckoutStoreInside looks for) leaves badger
		// unable to close: it would hang instead of failing.
		if _, err := os.Stat(filepath.Join(dir, "index")); err != nil {
			tb.Errorf("store %s lost its index: not closing it", dir)
			return
		}
		st.Close()
	})
	return st
}

// settle waits out the stat cache's racy window, so that the next commit
// may cache what was just written (a file whose ctime is too close to its
// read is read again next time). Waiting longer never changes the result.
func settle() { time.Sleep(2 * snapshot.RacyWindow) }

// commit commits src as the next head of image.
func commit(tb testing.TB, st *store.Store, src, image string, exclude ...string) (chunk.ID, *store.Commit) {
	tb.Helper()
	id, c, err := client.Commit(tb.Context(), st, src, client.CommitOptions{Image: image, Message: "test", Exclude: exclude})
	if err != nil {
		tb.Fatalf("commit %s as %s: %v", src, image, err)
	}
	return id, c
}

// checkout checks id out into dir (no syncfs: tests need no durability).
func checkout(tb testing.TB, st *store.Store, id chunk.ID, dir string, opts client.CheckoutOptions) *snapshot.CheckoutStats {
	tb.Helper()
	opts.NoSync = true
	stats, err := client.Checkout(tb.Context(), st, id, dir, opts)
	if err != nil {
		tb.Fatalf("checkout %s into %s: %v", id.Short(), dir, err)
	}
	return stats
}

// snap commits src as image and keeps a reference copy of it: a checkout
// into a fresh directory, first shown equal to src. src may then change.
func snap(tb testing.TB, st *store.Store, src, image string) (chunk.ID, string) {
	tb.Helper()
	id, _ := commit(tb, st, src, image)
	ref := filepath.Join(tb.TempDir(), "ref")
	checkout(tb, st, id, ref, client.CheckoutOptions{})
	snapshottest.Equal(tb, src, ref)
	return id, ref
}

// paths lists every path of commit id's tree, sorted.
func paths(tb testing.TB, st *store.Store, id chunk.ID) []string {
	tb.Helper()
	c, err := st.Commit(id)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	if err := snapshot.Walk(st, c.Tree, func(p string, _ *snapshot.Node) error {
		out = append(out, p)
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func treeOf(tb testing.TB, st *store.Store, id chunk.ID) chunk.ID {
	tb.Helper()
	c, err := st.Commit(id)
	if err != nil {
		tb.Fatal(err)
	}
	return c.Tree
}

func writeFile(tb testing.TB, p, content string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

func readFile(tb testing.TB, p string) string {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// dirNames lists a directory's entries, sorted.
func dirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// fsckClean fails the test unless the store checks clean, data included.
func fsckClean(tb testing.TB, st *store.Store) *client.FsckReport {
	tb.Helper()
	rep, err := client.Fsck(st, true)
	if err != nil {
		tb.Fatalf("fsck: %v", err)
	}
	if len(rep.Problems) > 0 || len(rep.Broken) > 0 {
		tb.Fatalf("fsck: problems %q, broken %q; want none", rep.Problems, rep.Broken)
	}
	return rep
}

// baseFiles is a small system-like tree: a few config files, libraries
// and one multi-chunk binary.
var baseFiles = map[string]int{
	"etc/motd":            300,
	"etc/hostname":        10,
	"etc/ssh/sshd_config": 3000,
	"usr/lib/liba.so":     70000,
	"usr/lib/libb.so":     90000,
	"usr/bin/big":         1 << 20,
	"var/log/syslog":      5000,
}

// TestCommitStatCache commits one directory through a series of changes:
// the first commit reads every file, an unchanged one reads none and gives
// the same tree, and each change re-reads exactly the files it touched,
// giving the tree a commit without any cache gives.
func TestCommitStatCache(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	steps := []struct {
		name     string
		change   func(t *testing.T)
		wantRead int64
		sameTree bool // as the previous commit
	}{
		{"first commit", nil, int64(len(baseFiles)), false},
		{"unchanged", nil, 0, true},
		{"unchanged again", nil, 0, true},
		{"one file rewritten", func(t *testing.T) {
			snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 310})
		}, 1, false},
		{"same size and mtime, other content", func(t *testing.T) {
			p := filepath.Join(src, "usr/lib/liba.so")
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			snapshottest.RandomFiles(t, src, 3, map[string]int{"usr/lib/liba.so": 70000})
			if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}, 1, false},
		{"one file added", func(t *testing.T) {
			snapshottest.RandomFiles(t, src, 4, map[string]int{"usr/bin/new": 1234})
		}, 1, false},
		{"mode changed", func(t *testing.T) {
			if err := os.Chmod(filepath.Join(src, "usr/bin/new"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, 1, false},
		{"one file removed", func(t *testing.T) {
			if err := os.Remove(filepath.Join(src, "etc/hostname")); err != nil {
				t.Fatal(err)
			}
		}, 0, false},
		{"unchanged after all that", nil, 0, true},
	}
	var prev chunk.ID
	for i, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.change != nil {
				s.change(t)
			}
			if s.change != nil || i == 0 {
				settle()
			}
			_, c := commit(t, st, src, "img")
			if c.Stats.ReadFiles != s.wantRead {
				t.Errorf("ReadFiles = %d; want %d", c.Stats.ReadFiles, s.wantRead)
			}
			if i > 0 && (c.Tree == prev) != s.sameTree {
				t.Errorf("tree %s, previous %s: same = %v; want %v", c.Tree.Short(), prev.Short(), c.Tree == prev, s.sameTree)
			}
			// The cache never changes the outcome: a commit that
			// reads everything (a new image) gives the same tree.
			_, fresh := commit(t, st, src, fmt.Sprintf("fresh-%d", i))
			if fresh.Stats.ReadFiles != fresh.Stats.Files {
				t.Errorf("a new image read %d of %d files; want all", fresh.Stats.ReadFiles, fresh.Stats.Files)
			}
			if fresh.Tree != c.Tree {
				t.Errorf("tree with the stat cache %s; without %s", c.Tree.Short(), fresh.Tree.Short())
			}
			prev = c.Tree
		})
	}
}

// TestCommitExclude: excluded paths are left out of the tree, and only
// they.
func TestCommitExclude(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, map[string]int{
		"etc/motd":                   10,
		"etc/app.pyc":                10,
		"usr/lib/py/mod.pyc":         10,
		"usr/lib/py/mod.py":          10,
		"proc/1/status":              10,
		"tmp/x":                      10,
		"usr/tmp":                    10, // a file named tmp
		"var/cache/apt/pkgcache.bin": 10,
		"var/cache/apt/keep.deb":     10,
	})
	all := []string{"etc", "etc/app.pyc", "etc/motd", "proc", "proc/1", "proc/1/status", "tmp", "tmp/x",
		"usr", "usr/lib", "usr/lib/py", "usr/lib/py/mod.py", "usr/lib/py/mod.pyc", "usr/tmp",
		"var", "var/cache", "var/cache/apt", "var/cache/apt/keep.deb", "var/cache/apt/pkgcache.bin"}
	without := func(drop ...string) []string {
		var out []string
		for _, p := range all {
			if !slices.Contains(drop, p) {
				out = append(out, p)
			}
		}
		return out
	}
	tests := []struct {
		name    string
		exclude []string
		want    []string
	}{
		{"none", nil, all},
		{"name at any depth", []string{"*.pyc"}, without("etc/app.pyc", "usr/lib/py/mod.pyc")},
		{"anchored contents", []string{"/proc/*"}, without("proc/1", "proc/1/status")},
		{"anchored without leading slash", []string{"var/cache/apt/*.bin"}, without("var/cache/apt/pkgcache.bin")},
		{"directories only", []string{"tmp/"}, without("tmp", "tmp/x")},
		{"a whole subtree", []string{"/var/cache"}, without("var/cache", "var/cache/apt", "var/cache/apt/keep.deb", "var/cache/apt/pkgcache.bin")},
		{"comments and blanks", []string{"# nothing", "", "usr/lib/py/mod.py"}, without("usr/lib/py/mod.py")},
		{"several", []string{"*.pyc", "/proc/*", "tmp/"}, without("etc/app.pyc", "usr/lib/py/mod.pyc", "proc/1", "proc/1/status", "tmp", "tmp/x")},
	}
	st := storetest.New(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, c := commit(t, st, src, "img-"+strings.ReplaceAll(tt.name, " ", "-"), tt.exclude...)
			if got := paths(t, st, id); !slices.Equal(got, tt.want) {
				t.Errorf("paths = %q\nwant %q", got, tt.want)
			}
			if wantFiles := countFiles(t, src, tt.want); c.Stats.Files != wantFiles {
				t.Errorf("Stats.Files = %d; want %d", c.Stats.Files, wantFiles)
			}
		})
	}
}

// countFiles counts the paths of ps that are not directories in src.
func countFiles(tb testing.TB, src string, ps []string) int64 {
	tb.Helper()
	var n int64
	for _, p := range ps {
		fi, err := os.Lstat(filepath.Join(src, p))
		if err != nil {
			tb.Fatal(err)
		}
		if !fi.IsDir() {
			n++
		}
	}
	return n
}

// TestCommitRefused: a bad image name or exclude pattern is refused
// before anything is stored.
func TestCommitRefused(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, map[string]int{"etc/motd": 100})
	tests := []struct {
		name    string
		image   string
		exclude []string
	}{
		{"empty name", "", nil},
		{"slash", "a/b", nil},
		{"dot dot", "a..b", nil},
		{"leading dot", ".img", nil},
		{"leading dash", "-img", nil},
		{"space", "my img", nil},
		{"too long", strings.Repeat("a", 129), nil},
		{"bad pattern", "img", []string{"[unclosed"}},
	}
	st := storetest.New(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := client.Commit(t.Context(), st, src, client.CommitOptions{Image: tt.image, Exclude: tt.exclude})
			if err == nil {
				t.Fatalf("commit as %q with exclude %q: no error", tt.image, tt.exclude)
			}
			ims, err := st.Images()
			if err != nil {
				t.Fatal(err)
			}
			if len(ims) != 0 {
				t.Errorf("images after a refused commit: %v; want none", ims)
			}
			if commits, _ := st.Commits(); len(commits) != 0 {
				t.Errorf("%d commits after a refused commit; want 0", len(commits))
			}
		})
	}
	// The longest valid name is accepted.
	commit(t, st, src, strings.Repeat("a", 128))
}

// TestCheckoutTargets checks out into each kind of target directory.
func TestCheckoutTargets(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	id, _ := commit(t, st, src, "img")
	other := filepath.Join(t.TempDir(), "other")
	snapshottest.RandomFiles(t, other, 9, map[string]int{"etc/motd": 10})
	otherID, _ := commit(t, st, other, "other")

	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		force   bool
		wantErr error // nil: success, and dir is the image
	}{
		{"missing", func(*testing.T, string) {}, false, nil},
		{"missing parents", func(*testing.T, string) {}, false, nil},
		{"empty", func(t *testing.T, dir string) {
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
		{"foreign", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "home/user/thesis.tex"), "precious")
		}, false, client.ErrNotOurs},
		{"foreign, only a hidden file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ".keep"), "")
		}, false, client.ErrNotOurs},
		{"foreign, forced", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "home/user/thesis.tex"), "precious")
			writeFile(t, filepath.Join(dir, "etc/motd"), "old motd")
		}, true, nil},
		{"checked out before (another image)", func(t *testing.T, dir string) {
			checkout(t, st, otherID, dir, client.CheckoutOptions{})
			writeFile(t, filepath.Join(dir, "home/user/notes"), "made on the node")
		}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "node")
			if tt.name == "missing parents" {
				dir = filepath.Join(t.TempDir(), "a", "b", "node")
			}
			tt.prepare(t, dir)
			before, _ := snapshottest.Diff(src, dir)
			stats, err := client.Checkout(t.Context(), st, id, dir, client.CheckoutOptions{Force: tt.force, NoSync: true})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v; want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), dir) {
					t.Errorf("error %q does not name the directory %s", err, dir)
				}
				// Refused: nothing was written or removed.
				if after, _ := snapshottest.Diff(src, dir); !slices.Equal(after, before) {
					t.Errorf("a refused checkout changed the directory:\nbefore %q\nafter  %q", before, after)
				}
				if _, err := client.LastCheckout(st, dir); err == nil {
					t.Error("a refused checkout left a checkout record")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			snapshottest.Equal(t, src, dir)
			if stats.Written == 0 {
				t.Errorf("stats %+v: nothing written", stats)
			}
			rec, err := client.LastCheckout(st, dir)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Commit != id || rec.Dir != dir {
				t.Errorf("record = %+v; want commit %s, dir %s", rec, id.Short(), dir)
			}
			// Now it is ours: a checkout without --force is accepted
			// and writes nothing.
			again := checkout(t, st, id, dir, client.CheckoutOptions{})
			if again.Written != 0 || again.Removed != 0 || again.BytesWritten != 0 {
				t.Errorf("second checkout of the same commit: %+v; want nothing written or removed", again)
			}
			if again.Unchanged < int64(len(baseFiles)) {
				t.Errorf("second checkout: Unchanged = %d; want at least %d", again.Unchanged, len(baseFiles))
			}
		})
	}
}

// TestCheckoutUpdate moves a directory from v1 to v2 and back: only the
// entries that differ are written or removed, and the rollback gives
// exactly v1.
func TestCheckoutUpdate(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	v1, ref1 := snap(t, st, src, "img")
	// v2: two files rewritten, one added, one removed, one directory added.
	snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 333, "usr/lib/libb.so": 91000, "opt/tool/bin/tool": 4444})
	if err := os.Remove(filepath.Join(src, "var/log/syslog")); err != nil {
		t.Fatal(err)
	}
	v2, ref2 := snap(t, st, src, "img")

	dir := filepath.Join(t.TempDir(), "node")
	first := checkout(t, st, v1, dir, client.CheckoutOptions{})
	snapshottest.Equal(t, ref1, dir)
	var size1 int64
	for _, n := range baseFiles {
		size1 += int64(n)
	}
	if first.Written != int64(len(baseFiles)) || first.BytesWritten != size1 || first.Removed != 0 {
		t.Errorf("install: %+v; want %d files and %d bytes written, none removed", first, len(baseFiles), size1)
	}

	steps := []struct {
		name                    string
		id                      chunk.ID
		want                    string
		written, removed, bytes int64
		minUnchanged            int64
	}{
		{"update to v2", v2, ref2, 3, 1, 333 + 91000 + 4444, int64(len(baseFiles)) - 3},
		{"v2 again", v2, ref2, 0, 0, 0, int64(len(baseFiles))},
		{"roll back to v1", v1, ref1, 3, 1, 300 + 90000 + 5000, int64(len(baseFiles)) - 3},
		{"v1 again", v1, ref1, 0, 0, 0, int64(len(baseFiles))},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			stats := checkout(t, st, s.id, dir, client.CheckoutOptions{})
			snapshottest.Equal(t, s.want, dir)
			if stats.Written != s.written || stats.Removed != s.removed || stats.BytesWritten != s.bytes {
				t.Errorf("stats %+v; want written %d, removed %d, bytes written %d", stats, s.written, s.removed, s.bytes)
			}
			if stats.Unchanged < s.minUnchanged {
				t.Errorf("Unchanged = %d; want at least %d", stats.Unchanged, s.minUnchanged)
			}
			if rec, err := client.LastCheckout(st, dir); err != nil || rec.Commit != s.id {
				t.Errorf("LastCheckout = %+v, %v; want commit %s", rec, err, s.id.Short())
			}
		})
	}
}

// TestCheckoutExclude: excluded paths are neither written nor removed,
// and an extraneous directory that holds an excluded file keeps it (and
// stays), while the rest of it goes.
func TestCheckoutExclude(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, map[string]int{
		"etc/motd":            100,
		"etc/app.log":         100, // in the image, excluded
		"usr/bin/tool":        2000,
		"var/cache/pkg.bin":   3000, // in the image, excluded
		"var/lib/dpkg/status": 500,
	})
	id, ref := snap(t, st, src, "img")
	exclude := []string{"*.log", "/var/cache/"}

	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) // before the checkout with excludes
	}{
		{"fresh directory", func(*testing.T, string) {}},
		{"over a full checkout, changed on the node", func(t *testing.T, dir string) {
			checkout(t, st, id, dir, client.CheckoutOptions{})
			writeFile(t, filepath.Join(dir, "etc/app.log"), "local log")
			if err := os.Remove(filepath.Join(dir, "var/cache/pkg.bin")); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, "var/cache/local.bin"), "local cache")
			writeFile(t, filepath.Join(dir, "extra/debug.log"), "kept")
			writeFile(t, filepath.Join(dir, "extra/other"), "removed")
			writeFile(t, filepath.Join(dir, "extra/deep/er.log"), "kept too")
			writeFile(t, filepath.Join(dir, "extra/deep/gone"), "removed")
			writeFile(t, filepath.Join(dir, "junk/gone"), "removed")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "node")
			tt.prepare(t, dir)
			fresh := !exists(dir)
			checkout(t, st, id, dir, client.CheckoutOptions{Exclude: exclude})
			snapshottest.Equal(t, ref, dir, snapshottest.IgnorePaths("etc/app.log", "var/cache", "extra"))
			if fresh {
				for _, p := range []string{"etc/app.log", "var/cache/pkg.bin", "extra"} {
					if exists(filepath.Join(dir, p)) {
						t.Errorf("%s was written; it is excluded", p)
					}
				}
				return
			}
			wantContent := map[string]string{
				"etc/app.log":         "local log",
				"var/cache/local.bin": "local cache",
				"extra/debug.log":     "kept",
				"extra/deep/er.log":   "kept too",
			}
			for p, want := range wantContent {
				if got := readFile(t, filepath.Join(dir, p)); got != want {
					t.Errorf("%s = %q; want %q (excluded: left alone)", p, got, want)
				}
			}
			for _, p := range []string{"var/cache/pkg.bin", "extra/other", "extra/deep/gone", "junk"} {
				if exists(filepath.Join(dir, p)) {
					t.Errorf("%s is there; want it not written or removed", p)
				}
			}
			if got, want := dirNames(t, filepath.Join(dir, "extra")), []string{"debug.log", "deep"}; !slices.Equal(got, want) {
				t.Errorf("extra holds %q; want %q", got, want)
			}
			// Without the excludes the directory becomes the image again.
			checkout(t, st, id, dir, client.CheckoutOptions{})
			snapshottest.Equal(t, ref, dir)
		})
	}
}

// TestCheckoutStoreInside: a node's store at DIR/var/lib/sim is never
// written or removed by a checkout into DIR, whatever the image has at
// /var; an image that would put something else where a directory above
// the store is fails the checkout, naming that path.
func TestCheckoutStoreInside(t *testing.T) {
	withVar := map[string]int{"etc/motd": 100, "var/log/syslog": 1000, "var/lib/dpkg/status": 2000, "usr/bin/tool": 70000}
	noVar := map[string]int{"etc/motd": 100, "usr/bin/tool": 70000}
	type image struct {
		files map[string]int
		extra func(t *testing.T, src string) // after the files
	}
	varLibFile := image{noVar, func(t *testing.T, src string) { writeFile(t, filepath.Join(src, "var/lib"), "a file") }}
	varSymlink := image{noVar, func(t *testing.T, src string) {
		if err := os.Symlink("/elsewhere", filepath.Join(src, "var")); err != nil {
			t.Fatal(err)
		}
	}}
	tests := []struct {
		name    string
		before  *image // checked out first, if set
		image   image
		ignore  string // what the comparison leaves out
		wantErr string // a path the error must name; "" for success
	}{
		{"image with /var, without /var/lib/sim", nil, image{withVar, nil}, "var/lib/sim", ""},
		{"image without /var", nil, image{noVar, nil}, "var", ""},
		{"image without /var over one with it", &image{withVar, nil}, image{noVar, nil}, "var", ""},
		{"image with its own /var/lib/sim", nil, image{withVar, func(t *testing.T, src string) {
			writeFile(t, filepath.Join(src, "var/lib/sim/config"), "not a store")
			writeFile(t, filepath.Join(src, "var/lib/sim/packs/junk"), "junk")
		}}, "var/lib/sim", ""},
		{"image with a file at /var/lib", nil, varLibFile, "", "var/lib"},
		{"image with a file at /var/lib over one with /var", &image{withVar, nil}, varLibFile, "", "var/lib"},
		{"image with a symlink at /var", nil, varSymlink, "", "var"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			dir := filepath.Join(tmp, "root")
			st := openStore(t, filepath.Join(dir, "var/lib/sim"))
			build := func(name string, im image) (chunk.ID, string) {
				src := filepath.Join(tmp, name)
				snapshottest.RandomFiles(t, src, 1, im.files)
				if im.extra != nil {
					im.extra(t, src)
				}
				id, _ := commit(t, st, src, name)
				return id, src
			}
			if tt.before != nil {
				id, src := build("before", *tt.before)
				checkout(t, st, id, dir, client.CheckoutOptions{Force: true})
				snapshottest.Equal(t, src, dir, snapshottest.IgnorePaths("var/lib/sim"))
			}
			id, src := build("image", tt.image)
			_, err := client.Checkout(t.Context(), st, id, dir, client.CheckoutOptions{Force: true, NoSync: true})
			// Whatever happened, the store is whole and usable.
			fsckClean(t, st)
			if _, err := st.Commit(id); err != nil {
				t.Errorf("store after the checkout: %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(st.Dir(), "config")); err != nil || !strings.Contains(string(b), "blake3-256") {
				t.Errorf("the store's config after the checkout: %q, %v", b, err)
			}
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("checkout succeeded; want an error naming %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), `"`+tt.wantErr+`"`) {
					t.Errorf("error %q does not name %q", err, tt.wantErr)
				}
				// The failed checkout left the directory ours: the
				// next one needs no --force, and makes it the image.
				id, src := build("after", image{withVar, nil})
				if _, err := client.Checkout(t.Context(), st, id, dir, client.CheckoutOptions{NoSync: true}); err != nil {
					t.Fatalf("checkout after the failed one: %v", err)
				}
				snapshottest.Equal(t, src, dir, snapshottest.IgnorePaths("var/lib/sim"))
				fsckClean(t, st)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			snapshottest.Equal(t, src, dir, snapshottest.IgnorePaths(tt.ignore))
			if tt.ignore == "var" {
				// What the image lacks is gone but for the way to
				// the store.
				if got := dirNames(t, filepath.Join(dir, "var")); !slices.Equal(got, []string{"lib"}) {
					t.Errorf("var holds %q; want only lib", got)
				}
				if got := dirNames(t, filepath.Join(dir, "var/lib")); !slices.Equal(got, []string{"sim"}) {
					t.Errorf("var/lib holds %q; want only sim", got)
				}
			}
			if exists(filepath.Join(dir, "var/lib/sim/packs/junk")) {
				t.Error("the image's var/lib/sim was written into the store")
			}
			// The store inside goes on working: a second checkout
			// of the same image writes nothing.
			again := checkout(t, st, id, dir, client.CheckoutOptions{})
			if again.Written != 0 {
				t.Errorf("second checkout wrote %d entries; want 0", again.Written)
			}
			fsckClean(t, st)
		})
	}
}

// TestCheckoutIntoStore: a target that is the store, or inside what the
// store keeps (config, packs, index, tmp, cache), also when reached
// through a symlink, is refused and nothing is written; a directory
// beside those (an installer's staging area) is not the store's and is
// checked out, the store surviving.
func TestCheckoutIntoStore(t *testing.T) {
	tmp := t.TempDir()
	st := openStore(t, filepath.Join(tmp, "store"))
	src := filepath.Join(tmp, "src")
	snapshottest.RandomFiles(t, src, 1, map[string]int{"etc/motd": 100, "packs/x": 10, "config": 10, "index/MANIFEST": 10})
	id, _ := commit(t, st, src, "img")
	link := filepath.Join(tmp, "link")
	if err := os.Symlink(st.Dir(), link); err != nil {
		t.Fatal(err)
	}
	sd := st.Dir()
	tests := []struct {
		dir     string
		refused bool
	}{
		{sd, true},
		{sd + "/", true},
		{filepath.Join(tmp, ".", "store", "..", "store"), true},
		{link, true},
		{filepath.Join(sd, "cache"), true},
		{filepath.Join(sd, "cache", "co"), true},
		{filepath.Join(sd, "packs"), true},
		{filepath.Join(sd, "packs", "ab"), true},
		{filepath.Join(sd, "index"), true},
		{filepath.Join(sd, "tmp"), true},
		{filepath.Join(sd, "config"), true},
		{filepath.Join(link, "packs"), true},
		{filepath.Join(sd, "staging"), false},
		{filepath.Join(sd, "staging", "overrides", "x"), false},
		{filepath.Join(link, "staging2"), false},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			_, err := client.Checkout(t.Context(), st, id, tt.dir, client.CheckoutOptions{NoSync: true})
			if !tt.refused {
				if err != nil {
					t.Fatal(err)
				}
				snapshottest.Equal(t, src, tt.dir)
				fsckClean(t, st)
				return
			}
			if err == nil {
				t.Fatal("checkout into the store accepted")
			}
			for _, p := range []string{"etc", "packs/x", "cache/etc", "packs/etc", "packs/ab", "index/etc", "tmp/etc", "cache/co"} {
				if exists(filepath.Join(sd, p)) {
					t.Errorf("%s was written", p)
				}
			}
			if b, err := os.ReadFile(filepath.Join(sd, "config")); err != nil || !strings.Contains(string(b), "blake3") {
				t.Errorf("the store's config is gone or overwritten: %q, %v", b, err)
			}
			fsckClean(t, st)
		})
	}
}

// TestCheckoutRecord: LastCheckout reports each checkout, MoveRecord
// re-keys it (an installer's mount point becomes the node's /), and the
// moved record lets the next checkout at the new path skip what is right.
func TestCheckoutRecord(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	v1, _ := commit(t, st, src, "img")
	snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 50})
	v2, _ := commit(t, st, src, "img")

	tmp := t.TempDir()
	if _, err := client.LastCheckout(st, filepath.Join(tmp, "never")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LastCheckout of a directory never checked out: %v; want ErrNotExist", err)
	}
	from := filepath.Join(tmp, "mnt", "target")
	checkout(t, st, v1, from, client.CheckoutOptions{})
	start := time.Now()
	checkout(t, st, v2, from, client.CheckoutOptions{})
	rec, err := client.LastCheckout(st, from)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Commit != v2 || rec.Dir != from || rec.Time.Before(start.Add(-time.Second)) {
		t.Errorf("record = %+v; want commit %s, dir %s, time after %v", rec, v2.Short(), from, start)
	}
	// LastCheckout takes the path as written, relative or not.
	if r2, err := client.LastCheckout(st, from+"/."); err != nil || r2.Commit != v2 {
		t.Errorf("LastCheckout(%s/.) = %+v, %v; want commit %s", from, r2, err, v2.Short())
	}

	to := filepath.Join(tmp, "root")
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
	if err := client.MoveRecord(st, from, to); err != nil {
		t.Fatal(err)
	}
	rec, err = client.LastCheckout(st, to)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Commit != v2 || rec.Dir != to {
		t.Errorf("moved record = %+v; want commit %s, dir %s", rec, v2.Short(), to)
	}
	if _, err := client.LastCheckout(st, from); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LastCheckout(old path) after the move: %v; want ErrNotExist", err)
	}
	if err := client.MoveRecord(st, from, to); err == nil {
		t.Error("moving a record that is no longer there: no error")
	}
	// The record came with its stat part: the directory is ours without
	// --force and nothing needs writing.
	stats := checkout(t, st, v2, to, client.CheckoutOptions{})
	if stats.Written != 0 || stats.BytesWritten != 0 {
		t.Errorf("checkout at the moved path: %+v; want nothing written", stats)
	}
	if stats.Unchanged < int64(len(baseFiles)) {
		t.Errorf("checkout at the moved path: Unchanged = %d; want at least %d (known from the record)", stats.Unchanged, len(baseFiles))
	}
	snapshottest.Equal(t, src, to)
}

// TestMoveRecordPaths: MoveRecord names directories as Checkout and
// LastCheckout do (any spelling of the same directory), and moving a
// record onto its own directory keeps it.
func TestMoveRecordPaths(t *testing.T) {
	st := storetest.New(t)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	id, _ := commit(t, st, src, "img")
	tests := []struct {
		name string
		// from and to name directory a (checked out) and b, in tmp,
		// which is the working directory.
		from, to func(tmp string) string
	}{
		{"onto itself", func(tmp string) string { return filepath.Join(tmp, "a") }, func(tmp string) string { return filepath.Join(tmp, "a") }},
		{"trailing slashes", func(tmp string) string { return filepath.Join(tmp, "a") + "/" }, func(tmp string) string { return filepath.Join(tmp, "b") + "/" }},
		{"dot components", func(tmp string) string { return tmp + "/./a" }, func(tmp string) string { return tmp + "/x/../b" }},
		{"relative", func(string) string { return "a" }, func(string) string { return "b" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Chdir(tmp)
			a := filepath.Join(tmp, "a")
			checkout(t, st, id, a, client.CheckoutOptions{})
			from, to := tt.from(tmp), tt.to(tmp)
			if err := client.MoveRecord(st, from, to); err != nil {
				t.Fatalf("MoveRecord(%q, %q): %v", from, to, err)
			}
			dst := filepath.Join(tmp, filepath.Base(filepath.Clean(to)))
			if dst != a {
				if err := os.Rename(a, dst); err != nil {
					t.Fatal(err)
				}
			}
			rec, err := client.LastCheckout(st, dst)
			if err != nil {
				t.Fatalf("LastCheckout(%s) after MoveRecord(%q, %q): %v", dst, from, to, err)
			}
			if rec.Commit != id || rec.Dir != dst {
				t.Errorf("record = %+v; want commit %s, dir %s", rec, id.Short(), dst)
			}
			if _, err := client.Checkout(t.Context(), st, id, dst, client.CheckoutOptions{NoSync: true}); err != nil {
				t.Errorf("checkout into %s after MoveRecord: %v; want the directory still ours", dst, err)
			}
		})
	}
}
