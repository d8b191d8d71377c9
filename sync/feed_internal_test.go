package sync

import (
	"errors"
	"math"
	"runtime/debug"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

// TestFeedReads: a data frame stays in the feed until each of its blobs
// was read as often as the trees name it (a directory appearing twice
// counts twice, whether its tree arrives before or after its parents),
// and goes then: the next read finds it gone (the store, which the test
// leaves empty, does not have it either).
func TestFeedReads(t *testing.T) {
	x, y := []byte("content of x, in three files or more"), []byte("y, once")
	xid, yid := chunk.Sum(x), chunk.Sum(y)
	file := func(name string, id chunk.ID, n int) snapshot.Node {
		return snapshot.Node{Name: name, Kind: snapshot.KindFile, Mode: 0o644, Size: uint64(n), Content: []snapshot.Extent{{ID: id, Len: uint64(n)}}}
	}
	sub := &snapshot.Tree{Self: snapshot.Node{Kind: snapshot.KindDir, Mode: 0o755}, Entries: []snapshot.Node{file("c", xid, len(x))}}
	subID := chunk.Sum(sub.Encode())
	dir := func(name string) snapshot.Node {
		return snapshot.Node{Name: name, Kind: snapshot.KindDir, Mode: 0o755, Subtree: subID}
	}
	tests := []struct {
		name       string
		dirs       []string // entries of the root naming sub
		subFirst   bool     // sub's tree arrives before the root's
		wantXReads int
	}{
		{"one directory", []string{"d"}, false, 3},
		{"the directory twice", []string{"d", "e"}, false, 4},
		{"the directory twice, its tree first", []string{"d", "e"}, true, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := &snapshot.Tree{Self: snapshot.Node{Kind: snapshot.KindDir, Mode: 0o755},
				Entries: []snapshot.Node{file("a", xid, len(x)), file("b", xid, len(x))}}
			for _, d := range tt.dirs {
				root.Entries = append(root.Entries, dir(d))
			}
			root.Entries = append(root.Entries, file("z", yid, len(y)))
			rootID := chunk.Sum(root.Encode())
			f := NewFeed(storetest.New(t), 0)
			defer f.Close()
			f.admit(chunk.Sum([]byte("commit")), &store.Commit{Tree: rootID})
			offerTree := func(id chunk.ID, tr *snapshot.Tree) {
				b := tr.Encode()
				f.offer(b, []FrameEntry{{Type: store.TypeTree, ID: id, Len: uint32(len(b))}}, map[chunk.ID]*snapshot.Tree{id: tr}, false)
			}
			if tt.subFirst {
				offerTree(subID, sub)
				offerTree(rootID, root)
			} else {
				offerTree(rootID, root)
				offerTree(subID, sub)
			}
			raw := append(append([]byte(nil), x...), y...)
			if !f.offer(raw, []FrameEntry{{Type: store.TypeData, ID: xid, Len: uint32(len(x))},
				{Type: store.TypeData, ID: yid, Off: uint32(len(x)), Len: uint32(len(y))}}, nil, false) {
				t.Fatal("data frame not kept")
			}
			f.Finish(nil) // nothing more comes: a read the feed cannot serve fails
			read := func(id chunk.ID, want []byte) error {
				b, err := f.Get(id)
				if err == nil && string(b) != string(want) {
					t.Fatalf("Get(%s) = %q; want %q", id.Short(), b, want)
				}
				return err
			}
			if err := read(yid, y); err != nil {
				t.Fatal(err)
			}
			for i := range tt.wantXReads {
				if err := read(xid, x); err != nil {
					t.Fatalf("read %d of x (of %d the trees name): %v", i+1, tt.wantXReads, err)
				}
			}
			if err := read(xid, x); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("a read of x beyond what the trees name: %v; want the frame gone (not found)", err)
			}
			if st := f.Stats(); st.Hits != int64(tt.wantXReads+1) || st.Kept != 1 {
				t.Errorf("stats %+v; want %d hits, 1 frame kept", st, tt.wantXReads+1)
			}
		})
	}
}

// TestFeedMemoryLimit: under a Go memory limit a Feed keeps a quarter of
// it, not DefaultFeedBytes; an explicit bound stays as given.
func TestFeedMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	st := storetest.New(t)
	debug.SetMemoryLimit(math.MaxInt64)
	if f := NewFeed(st, 0); f.max != DefaultFeedBytes {
		t.Errorf("no limit: %d, want DefaultFeedBytes", f.max)
	}
	debug.SetMemoryLimit(200 << 20)
	if f := NewFeed(st, 0); f.max != 50<<20 {
		t.Errorf("GOMEMLIMIT 200 MiB: %d, want 50 MiB", f.max)
	}
	if f := NewFeed(st, 300<<20); f.max != 300<<20 {
		t.Errorf("an explicit bound: %d, want it", f.max)
	}
}
