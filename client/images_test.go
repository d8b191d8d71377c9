package client_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

// heads maps every image of st to its head.
func heads(tb testing.TB, st *store.Store) map[string]chunk.ID {
	tb.Helper()
	ims, err := st.Images()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]chunk.ID{}
	for _, im := range ims {
		out[im.Name] = im.Head
	}
	return out
}

func equalHeads(a, b map[string]chunk.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// imageStore is a store with two system images, debian (with a layout)
// and rocky (without), and one unrelated layout, hpc@layout.
type imageStore struct {
	dir                        string
	st                         *store.Store
	debian, rocky, lay, hpcLay chunk.ID
}

func newImageStore(t *testing.T) *imageStore {
	t.Helper()
	s := &imageStore{dir: filepath.Join(t.TempDir(), "store")}
	s.st = openStore(t, s.dir)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, map[string]int{"etc/motd": 100, "usr/bin/tool": 5000})
	s.debian, _ = commit(t, s.st, src, "debian")
	snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 100})
	s.rocky, _ = commit(t, s.st, src, "rocky")
	var err error
	s.lay, err = catalog.CommitFiles(t.Context(), s.st, catalog.LayoutImage("debian"),
		map[string][]byte{catalog.LayoutFile: []byte("part root rest ext4 /\n")}, "layout")
	if err != nil {
		t.Fatal(err)
	}
	s.hpcLay, err = catalog.CommitFiles(t.Context(), s.st, catalog.LayoutImage("hpc"),
		map[string][]byte{catalog.LayoutFile: []byte("part root rest xfs /\n")}, "layout")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// clone is an open copy of the store, which must be closed: a fixture
// made once for many subtests.
func (s *imageStore) clone(t *testing.T) *imageStore {
	t.Helper()
	c := *s
	c.dir = filepath.Join(t.TempDir(), "store")
	if err := os.CopyFS(c.dir, os.DirFS(s.dir)); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c.st = st
	return &c
}

// TestImageOps: copying, renaming and removing a system image takes its
// layout along; a copy or rename between a system image and a catalog
// document is refused; refused operations change no ref.
func TestImageOps(t *testing.T) {
	tests := []struct {
		name string
		op   func(st *store.Store) error
		// want is the images afterwards (nil: the operation is
		// refused and nothing changes), from the fixture's ids.
		want func(s *imageStore) map[string]chunk.ID
	}{
		{"copy", func(st *store.Store) error { return client.CopyImage(st, "debian", "hpc2") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"debian": s.debian, "debian@layout": s.lay, "rocky": s.rocky, "hpc@layout": s.hpcLay,
					"hpc2": s.debian, "hpc2@layout": s.lay}
			}},
		{"copy without a layout", func(st *store.Store) error { return client.CopyImage(st, "rocky", "rocky2") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"debian": s.debian, "debian@layout": s.lay, "rocky": s.rocky, "hpc@layout": s.hpcLay,
					"rocky2": s.rocky}
			}},
		{"copy of a layout alone", func(st *store.Store) error { return client.CopyImage(st, "debian@layout", "rocky@layout") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"debian": s.debian, "debian@layout": s.lay, "rocky": s.rocky, "hpc@layout": s.hpcLay,
					"rocky@layout": s.lay}
			}},
		{"rename", func(st *store.Store) error { return client.RenameImage(st, "debian", "deb12") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"deb12": s.debian, "deb12@layout": s.lay, "rocky": s.rocky, "hpc@layout": s.hpcLay}
			}},
		{"rename without a layout", func(st *store.Store) error { return client.RenameImage(st, "rocky", "rocky9") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"debian": s.debian, "debian@layout": s.lay, "rocky9": s.rocky, "hpc@layout": s.hpcLay}
			}},
		{"remove", func(st *store.Store) error { return client.RemoveImage(st, "debian") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"rocky": s.rocky, "hpc@layout": s.hpcLay}
			}},
		{"remove without a layout", func(st *store.Store) error { return client.RemoveImage(st, "rocky") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"debian": s.debian, "debian@layout": s.lay, "hpc@layout": s.hpcLay}
			}},
		{"remove a layout alone", func(st *store.Store) error { return client.RemoveImage(st, "debian@layout") },
			func(s *imageStore) map[string]chunk.ID {
				return map[string]chunk.ID{"debian": s.debian, "rocky": s.rocky, "hpc@layout": s.hpcLay}
			}},
		{"copy a system image to a layout name", func(st *store.Store) error { return client.CopyImage(st, "debian", "x@layout") }, nil},
		{"copy a system image to the nodes registry", func(st *store.Store) error { return client.CopyImage(st, "rocky", catalog.NodesImage) }, nil},
		{"copy a system image to an override", func(st *store.Store) error { return client.CopyImage(st, "rocky", "x@override") }, nil},
		{"copy a layout to a system image name", func(st *store.Store) error { return client.CopyImage(st, "debian@layout", "x") }, nil},
		{"rename a system image to a layout name", func(st *store.Store) error { return client.RenameImage(st, "debian", "x@layout") }, nil},
		{"rename a layout to a system image name", func(st *store.Store) error { return client.RenameImage(st, "hpc@layout", "hpc") }, nil},
		{"copy onto an existing image", func(st *store.Store) error { return client.CopyImage(st, "debian", "rocky") }, nil},
		{"rename onto an existing image", func(st *store.Store) error { return client.RenameImage(st, "debian", "rocky") }, nil},
		{"copy a missing image", func(st *store.Store) error { return client.CopyImage(st, "nope", "nope2") }, nil},
		{"rename a missing image", func(st *store.Store) error { return client.RenameImage(st, "nope", "nope2") }, nil},
		{"remove a missing image", func(st *store.Store) error { return client.RemoveImage(st, "nope") }, nil},
		{"copy to a bad name", func(st *store.Store) error { return client.CopyImage(st, "debian", "a/b") }, nil},
		{"rename to a bad name", func(st *store.Store) error { return client.RenameImage(st, "debian", "a..b") }, nil},
		// hpc@layout exists without an image hpc: the image cannot
		// take its layout along, so nothing may move (or debian's
		// layout would be left behind without its image).
		{"rename onto a name whose layout exists", func(st *store.Store) error { return client.RenameImage(st, "debian", "hpc") }, nil},
		{"copy onto a name whose layout exists", func(st *store.Store) error { return client.CopyImage(st, "debian", "hpc") }, nil},
	}
	fixture := newImageStore(t)
	if err := fixture.st.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := fixture.clone(t)
			before := heads(t, s.st)
			err := tt.op(s.st)
			got := heads(t, s.st)
			if tt.want == nil {
				if err == nil {
					t.Errorf("accepted; want an error")
				}
				if !equalHeads(got, before) {
					t.Errorf("a refused operation changed the images:\n got %v\nwant %v", got, before)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.want(s); !equalHeads(got, want) {
				t.Errorf("images:\n got %v\nwant %v", got, want)
			}
			// No layout is left without its image.
			for name := range got {
				if base, ok := cutLayout(name); ok && base != "hpc" {
					if _, has := got[base]; !has {
						t.Errorf("layout %s without its image %s", name, base)
					}
				}
			}
			fsckClean(t, s.st)
		})
	}
}

func cutLayout(name string) (string, bool) {
	const suffix = "@layout"
	if len(name) > len(suffix) && name[len(name)-len(suffix):] == suffix {
		return name[:len(name)-len(suffix)], true
	}
	return "", false
}

// TestRenameKeepsReflog: a renamed image keeps its history, its layout
// too, and the old names are free again.
func TestRenameKeepsReflog(t *testing.T) {
	s := newImageStore(t)
	if err := client.RenameImage(s.st, "debian", "deb12"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"deb12", "deb12@layout"} {
		log, err := s.st.Reflog(name)
		if err != nil {
			t.Fatal(err)
		}
		var ops []string
		for _, e := range log {
			ops = append(ops, e.Op)
		}
		if want := []string{"create", "rename"}; !slices.Equal(ops, want) {
			t.Errorf("reflog of %s: ops %q; want %q", name, ops, want)
		}
	}
	for _, name := range []string{"debian", "debian@layout"} {
		if _, err := s.st.ImageHead(name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("ImageHead(%s) after the rename: %v; want ErrNotFound", name, err)
		}
		if log, _ := s.st.Reflog(name); len(log) != 0 {
			t.Errorf("reflog of %s after the rename: %d entries; want none", name, len(log))
		}
	}
	if _, err := catalog.CommitFiles(t.Context(), s.st, catalog.LayoutImage("debian"),
		map[string][]byte{catalog.LayoutFile: []byte("part root rest ext4 /\n")}, "again"); err != nil {
		t.Errorf("a new debian@layout after the rename: %v", err)
	}
}

// TestForgetImage: whatever drops an image's stat cache (ForgetImage,
// RenameImage, RemoveImage), the next commit of that name reads every
// file again; an image that keeps its cache reads none.
func TestForgetImage(t *testing.T) {
	files := map[string]int{"etc/motd": 100, "etc/fstab": 200, "usr/bin/tool": 70000}
	tests := []struct {
		name     string
		drop     func(st *store.Store) error
		image    string // committed again afterwards
		wantRead int64
		gone     bool // cache/stat-img is removed
	}{
		{"kept", func(*store.Store) error { return nil }, "img", 0, false},
		{"ForgetImage", func(st *store.Store) error { client.ForgetImage(st, "img"); return nil }, "img", 3, true},
		{"ForgetImage of another image", func(st *store.Store) error { client.ForgetImage(st, "other"); return nil }, "img", 0, false},
		{"ForgetImage of a missing image", func(st *store.Store) error { client.ForgetImage(st, "nope"); return nil }, "img", 0, false},
		{"RenameImage", func(st *store.Store) error { return client.RenameImage(st, "img", "img2") }, "img2", 3, true},
		{"RemoveImage", func(st *store.Store) error { return client.RemoveImage(st, "img") }, "img", 3, true},
		{"CopyImage keeps the source's", func(st *store.Store) error { return client.CopyImage(st, "img", "img2") }, "img", 0, false},
		{"a copy has none", func(st *store.Store) error { return client.CopyImage(st, "img", "img2") }, "img2", 3, false},
	}
	// One source for all: a new image's first commit reads every file
	// whatever caches other stores have.
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, files)
	settle()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := storetest.New(t)
			_, c := commit(t, st, src, "img")
			if c.Stats.ReadFiles != int64(len(files)) {
				t.Fatalf("first commit read %d files; want %d", c.Stats.ReadFiles, len(files))
			}
			commit(t, st, src, "other")
			if err := tt.drop(st); err != nil {
				t.Fatal(err)
			}
			// ARCHITECTURE.md "Store layout": cache/stat-<image>.
			if got := exists(filepath.Join(st.Dir(), "cache", "stat-img")); got == tt.gone {
				t.Errorf("cache/stat-img exists = %v; want %v", got, !tt.gone)
			}
			_, c = commit(t, st, src, tt.image)
			if c.Stats.ReadFiles != tt.wantRead {
				t.Errorf("next commit of %s read %d files; want %d", tt.image, c.Stats.ReadFiles, tt.wantRead)
			}
			// And an image that was not touched keeps its cache.
			if tt.name == "ForgetImage of another image" {
				return
			}
			if _, c := commit(t, st, src, "other"); c.Stats.ReadFiles != 0 {
				t.Errorf("image other read %d files; want 0", c.Stats.ReadFiles)
			}
		})
	}
}
