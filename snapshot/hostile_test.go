package snapshot_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

// putTree stores a tree as given, bypassing every check a commit makes,
// the way a hostile or broken peer could.
func putTree(t *testing.T, st *store.Store, tr *snapshot.Tree) chunk.ID {
	t.Helper()
	b := tr.Encode()
	id := chunk.Sum(b)
	w := st.NewWriter()
	if _, err := w.Put(store.TypeTree, id, b); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return id
}

func dirNode() snapshot.Node { return snapshot.Node{Kind: snapshot.KindDir, Mode: 0o755} }

func fileNode(name string) snapshot.Node {
	return snapshot.Node{Name: name, Kind: snapshot.KindFile, Mode: 0o644}
}

// TestHostileTrees: trees naming paths outside the target, or malformed,
// are refused with a clear error and nothing is written outside it.
func TestHostileTrees(t *testing.T) {
	st := storetest.New(t)
	empty := putTree(t, st, &snapshot.Tree{Self: dirNode()})
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("keep"), 0o644)

	sub := dirNode()
	sub.Name, sub.Subtree = "sub", empty
	linkOut := fileNode("evil")
	linkOut.Link = "../../victim"
	for _, tc := range []struct {
		name    string
		entries []snapshot.Node
		want    string
	}{
		{"dotdot name", []snapshot.Node{fileNode("..")}, "invalid file name"},
		{"dot name", []snapshot.Node{fileNode(".")}, "invalid file name"},
		{"slash in name", []snapshot.Node{fileNode("../victim")}, "invalid file name"},
		{"absolute name", []snapshot.Node{fileNode("/etc/passwd")}, "invalid file name"},
		{"empty name", []snapshot.Node{fileNode("")}, "invalid file name"},
		{"NUL in name", []snapshot.Node{fileNode("a\x00b")}, "invalid file name"},
		{"duplicate", []snapshot.Node{fileNode("a"), fileNode("a")}, "not sorted or duplicated"},
		{"unsorted", []snapshot.Node{fileNode("b"), fileNode("a")}, "not sorted"},
		{"hardlink out", []snapshot.Node{linkOut}, "invalid file name"},
		{"bad mode", []snapshot.Node{{Name: "m", Kind: snapshot.KindFile, Mode: 0o170000}}, "out of range"},
		{"size mismatch", []snapshot.Node{{Name: "s", Kind: snapshot.KindFile, Size: 10}}, "extents add up to 0, size is 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := putTree(t, st, &snapshot.Tree{Self: dirNode(), Entries: tc.entries})
			dst := filepath.Join(t.TempDir(), "dst")
			_, _, err := snapshot.Checkout(context.Background(), st, root, dst, snapshot.CheckoutOptions{NoSync: true})
			if err == nil || !errors.Is(err, snapshot.ErrBadTree) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("checkout: %v; want ErrBadTree with %q", err, tc.want)
			}
			if b, _ := os.ReadFile(victim); string(b) != "keep" {
				t.Fatalf("victim changed: %q", b)
			}
		})
	}

	// A symlinked parent planted in the target (or left by an older
	// image) is replaced by a real directory, never followed.
	t.Run("symlinked parent", func(t *testing.T) {
		f := fileNode("victim")
		leaf := putTree(t, st, &snapshot.Tree{Self: dirNode(), Entries: []snapshot.Node{f}})
		d := dirNode()
		d.Name, d.Subtree = "dir", leaf
		root := putTree(t, st, &snapshot.Tree{Self: dirNode(), Entries: []snapshot.Node{d}})
		dst := t.TempDir()
		os.Symlink(outside, filepath.Join(dst, "dir"))
		if _, _, err := snapshot.Checkout(context.Background(), st, root, dst, snapshot.CheckoutOptions{NoSync: true}); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "keep" {
			t.Fatalf("wrote through a symlinked parent: victim is %q", b)
		}
		if fi, err := os.Lstat(filepath.Join(dst, "dir")); err != nil || !fi.IsDir() {
			t.Errorf("dir is %v, %v; want a real directory", fi, err)
		}
	})

	// A hardlink whose first name runs through a symlink stands alone.
	t.Run("hardlink through symlink", func(t *testing.T) {
		lnk := snapshot.Node{Name: "a", Kind: snapshot.KindSymlink, Mode: 0o777, Target: outside}
		h := fileNode("b")
		h.Link = "a/victim"
		root := putTree(t, st, &snapshot.Tree{Self: dirNode(), Entries: []snapshot.Node{lnk, h}})
		dst := filepath.Join(t.TempDir(), "dst")
		if _, _, err := snapshot.Checkout(context.Background(), st, root, dst, snapshot.CheckoutOptions{NoSync: true}); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(filepath.Join(dst, "b"))
		vi, _ := os.Stat(victim)
		if err != nil || os.SameFile(fi, vi) {
			t.Errorf("b linked to a file outside the target")
		}
	})
}

// FuzzDecodeTree: decoding never panics, and what decodes re-encodes to
// the same bytes.
func FuzzDecodeTree(f *testing.F) {
	n := fileNode("f")
	n.Xattrs = []snapshot.Xattr{{Name: "user.a", Value: []byte{0, 1}}}
	f.Add((&snapshot.Tree{Self: dirNode(), Entries: []snapshot.Node{n}}).Encode())
	f.Add([]byte("SIMTREE1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := snapshot.DecodeTree(b)
		if err != nil {
			return
		}
		if got := tr.Encode(); string(got) != string(b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

// memSource is a Source of blobs in memory.
type memSource map[chunk.ID][]byte

func (m memSource) Get(id chunk.ID) ([]byte, error) {
	if b, ok := m[id]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("blob %s: %w", id.Short(), store.ErrNotFound)
}

// FuzzCheckoutTree: any tree that decodes, checked out over a target an
// older image left symlinks in (to a directory outside, to a file
// outside, absolute and relative), writes nothing outside the target:
// the file and the directory beside it are untouched and nothing else
// appears beside it. The tree may name a known chunk and a known empty
// subtree.
func FuzzCheckoutTree(f *testing.F) {
	hello := []byte("hello, world\n")
	hid := chunk.Sum(hello)
	emptyTree := (&snapshot.Tree{Self: dirNode()}).Encode()
	eid := chunk.Sum(emptyTree)
	file := func(name string) snapshot.Node {
		n := fileNode(name)
		n.Size, n.Content = uint64(len(hello)), []snapshot.Extent{{Len: uint64(len(hello)), ID: hid}}
		return n
	}
	sub := func(name string) snapshot.Node { d := dirNode(); d.Name, d.Subtree = name, eid; return d }
	link := func(name, target string) snapshot.Node {
		return snapshot.Node{Name: name, Kind: snapshot.KindSymlink, Mode: 0o777, Target: target}
	}
	hard := file("h")
	hard.Link = "a"
	for _, entries := range [][]snapshot.Node{
		{sub("a"), sub("b"), file("c")},
		{file("a"), file("b"), link("c", "/etc"), hard},
		{link("a", "../victim"), link("b", "/"), sub("c")},
		{{Name: "a", Kind: snapshot.KindFifo, Mode: 0o644}, {Name: "b", Kind: snapshot.KindChar, Mode: 0o600, Major: 1, Minor: 3}, file("c")},
	} {
		f.Add((&snapshot.Tree{Self: dirNode(), Entries: entries}).Encode())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := snapshot.DecodeTree(b); err != nil {
			return
		}
		src := memSource{hid: hello, eid: emptyTree, chunk.Sum(b): b}
		dir := t.TempDir()
		victim, vd, target := filepath.Join(dir, "victim"), filepath.Join(dir, "vd"), filepath.Join(dir, "root")
		os.WriteFile(victim, []byte("keep"), 0o644)
		os.Mkdir(vd, 0o755)
		os.Mkdir(target, 0o755)
		for name, to := range map[string]string{"a": "../vd", "b": vd, "c": "../victim", "h": victim} {
			os.Symlink(to, filepath.Join(target, name))
		}
		snapshot.Checkout(context.Background(), src, chunk.Sum(b), target, snapshot.CheckoutOptions{NoSync: true, Workers: 1})
		if got, err := os.ReadFile(victim); err != nil || string(got) != "keep" {
			t.Fatalf("the file outside the target is %q (%v)", got, err)
		}
		if ents, err := os.ReadDir(vd); err != nil || len(ents) != 0 {
			t.Fatalf("the directory outside the target holds %v (%v)", ents, err)
		}
		if fi, err := os.Lstat(victim); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
			t.Fatalf("the file outside the target changed: %v %v", fi, err)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 3 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("beside the target: %v", names)
		}
	})
}
