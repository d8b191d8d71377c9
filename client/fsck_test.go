package client_test

import (
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
)

// packSet is the store's indexed packs.
func packSet(tb testing.TB, st *store.Store) map[chunk.ID]int64 {
	tb.Helper()
	ps, err := st.PackSizes()
	if err != nil {
		tb.Fatal(err)
	}
	return ps
}

// newPacks is what after has and before lacks.
func newPacks(before, after map[chunk.ID]int64) []chunk.ID {
	var out []chunk.ID
	for id := range after {
		if _, ok := before[id]; !ok {
			out = append(out, id)
		}
	}
	slices.SortFunc(out, func(a, b chunk.ID) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// packFiles lists the pack files on disk with their sizes.
func packFiles(tb testing.TB, st *store.Store) map[string]int64 {
	tb.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(filepath.Join(st.Dir(), "packs"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = fi.Size()
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// damageFixture is a closed store to copy and damage: image img at v1
// (tag t1) then v2 (tag t2), and image big whose one large file filled a
// pack with data alone.
type damageFixture struct {
	dir      string
	v1, v2   chunk.ID
	v2Pack   chunk.ID // every blob new in v2: its trees and changed chunks
	dataPack chunk.ID // only data chunks of big
	v2Tree   store.PackEntry
	v2Data   store.PackEntry
}

func newDamageFixture(t *testing.T) *damageFixture {
	t.Helper()
	f := &damageFixture{dir: filepath.Join(t.TempDir(), "store")}
	if err := store.Init(f.dir); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	f.v1, _ = commit(t, st, src, "img")
	if err := st.CreateTag("t1", f.v1); err != nil {
		t.Fatal(err)
	}
	before := packSet(t, st)
	snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 400, "usr/lib/liba.so": 80000})
	f.v2, _ = commit(t, st, src, "img")
	if err := st.CreateTag("t2", f.v2); err != nil {
		t.Fatal(err)
	}
	ps := newPacks(before, packSet(t, st))
	if len(ps) != 1 {
		t.Fatalf("v2 wrote %d packs; want 1", len(ps))
	}
	f.v2Pack = ps[0]
	ents, err := st.PackEntries(f.v2Pack)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		switch e.Type {
		case store.TypeTree:
			f.v2Tree = e
		case store.TypeData:
			f.v2Data = e
		}
	}
	if f.v2Tree.ID.IsZero() || f.v2Data.ID.IsZero() {
		t.Fatalf("v2's pack holds %d entries, not both trees and data", len(ents))
	}

	// More than a pack's worth (16 MiB) of incompressible data: the
	// first pack of this commit holds data chunks alone.
	big := filepath.Join(t.TempDir(), "big")
	snapshottest.RandomFiles(t, big, 3, map[string]int{"srv/data.img": 24 << 20})
	before = packSet(t, st)
	commit(t, st, big, "big")
	for _, id := range newPacks(before, packSet(t, st)) {
		ents, err := st.PackEntries(id)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(ents, func(e store.PackEntry) bool { return e.Type != store.TypeData }) {
			f.dataPack = id
		}
	}
	if f.dataPack.IsZero() {
		t.Fatal("no pack of big holds data alone")
	}
	return f
}

// open copies the fixture's store and opens the copy, first applying
// damage to it (the store is closed, so no cache hides the damage).
func (f *damageFixture) open(t *testing.T, damage func(dir string)) *store.Store {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	if err := os.CopyFS(dir, os.DirFS(f.dir)); err != nil {
		t.Fatal(err)
	}
	if damage != nil {
		damage(dir)
	}
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// packPath is where pack id lives in store directory dir.
func packPath(dir string, id chunk.ID) string {
	h := id.String()
	return filepath.Join(dir, "packs", h[:2], h+".pack")
}

func removePack(t *testing.T, dir string, id chunk.ID) {
	t.Helper()
	if err := os.Remove(packPath(dir, id)); err != nil {
		t.Fatal(err)
	}
}

// flipByte flips one bit of the byte at off in pack id.
func flipByte(t *testing.T, dir string, id chunk.ID, off int64) {
	t.Helper()
	f, err := os.OpenFile(packPath(dir, id), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// firstHeaderID is the offset of the id of the first entry of pack id's
// header (ARCHITECTURE.md "Packs": header uint32le(len(header))
// "SIMPEND1" at the end; header = uvarint(n) entry{n}, entry = type:u8
// id:[32] ...).
func firstHeaderID(t *testing.T, dir string, id chunk.ID) int64 {
	t.Helper()
	b, err := os.ReadFile(packPath(dir, id))
	if err != nil {
		t.Fatal(err)
	}
	tail := b[len(b)-12:]
	if string(tail[4:]) != "SIMPEND1" {
		t.Fatalf("pack %s ends in %q", id.Short(), tail)
	}
	hoff := len(b) - 12 - int(binary.LittleEndian.Uint32(tail))
	n, k := binary.Uvarint(b[hoff:])
	if k <= 0 || n == 0 {
		t.Fatalf("pack %s: header count %d (%d bytes)", id.Short(), n, k)
	}
	return int64(hoff + k + 1)
}

// middle is the offset of the middle of e's frame.
func middle(e store.PackEntry) int64 { return int64(e.FrameOff) + int64(e.FrameLen)/2 }

// TestFsckClean: a store with images, tags, reflogs, a layout and a copy
// has nothing to report, with and without reading the data; so has an
// empty one.
func TestFsckClean(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "store"))
	for _, readData := range []bool{false, true} {
		if rep, err := client.Fsck(st, readData); err != nil || len(rep.Problems)+len(rep.Warnings)+len(rep.Broken) != 0 || rep.Commits != 0 {
			t.Errorf("empty store, readData %v: %v %+v; want nothing", readData, err, rep)
		}
	}
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	v1, _ := commit(t, st, src, "img")
	if err := st.CreateTag("t1", v1); err != nil {
		t.Fatal(err)
	}
	snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 10})
	commit(t, st, src, "img")
	snapshottest.RandomFiles(t, src, 3, map[string]int{"etc/motd": 20})
	commit(t, st, src, "img")
	if err := client.CopyImage(st, "img", "img2"); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.CommitFiles(t.Context(), st, catalog.LayoutImage("img"),
		map[string][]byte{catalog.LayoutFile: []byte("part root rest ext4 /\n")}, "layout"); err != nil {
		t.Fatal(err)
	}
	for _, readData := range []bool{false, true} {
		rep, err := client.Fsck(st, readData)
		if err != nil {
			t.Fatalf("readData %v: %v %+v", readData, err, rep)
		}
		if len(rep.Problems)+len(rep.Warnings)+len(rep.Broken) != 0 {
			t.Errorf("readData %v: problems %q, warnings %q, broken %q; want none", readData, rep.Problems, rep.Warnings, rep.Broken)
		}
		if rep.Commits != 4 {
			t.Errorf("readData %v: Commits = %d; want 4 (three of img, one layout)", readData, rep.Commits)
		}
		if rep.Stats.Packs == 0 || rep.Stats.Blobs == 0 {
			t.Errorf("readData %v: stats %+v; want packs and blobs counted", readData, rep.Stats)
		}
	}
}

// TestFsckDamage damages a pack in each way and checks that Fsck reports
// the store damaged and names the refs that lost something, and only
// those.
func TestFsckDamage(t *testing.T) {
	f := newDamageFixture(t)
	tests := []struct {
		name       string
		damage     func(t *testing.T, dir string)
		readData   bool
		wantBroken []string // refs named
		notBroken  []string // refs not named
	}{
		{"pack deleted", func(t *testing.T, dir string) { removePack(t, dir, f.v2Pack) }, false,
			[]string{"image img", "tag t2"}, []string{"tag t1", "image big"}},
		{"pack deleted, reading data", func(t *testing.T, dir string) { removePack(t, dir, f.v2Pack) }, true,
			[]string{"image img", "tag t2"}, []string{"tag t1", "image big"}},
		{"byte flipped in a tree frame", func(t *testing.T, dir string) { flipByte(t, dir, f.v2Pack, middle(f.v2Tree)) }, false,
			[]string{"image img", "tag t2"}, []string{"tag t1", "image big"}},
		{"byte flipped in a data frame, reading data", func(t *testing.T, dir string) { flipByte(t, dir, f.v2Pack, middle(f.v2Data)) }, true,
			[]string{"image img", "tag t2"}, []string{"tag t1", "image big"}},
		{"byte flipped in a blob id of a pack header, reading data", func(t *testing.T, dir string) {
			flipByte(t, dir, f.v2Pack, firstHeaderID(t, dir, f.v2Pack)+16)
		}, true, []string{"image img", "tag t2"}, []string{"tag t1", "image big"}},
		{"data-only pack deleted, reading data", func(t *testing.T, dir string) { removePack(t, dir, f.dataPack) }, true,
			[]string{"image big"}, []string{"image img", "tag t1", "tag t2"}},
		{"data-only pack deleted", func(t *testing.T, dir string) { removePack(t, dir, f.dataPack) }, false,
			[]string{"image big"}, []string{"image img", "tag t1", "tag t2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := f.open(t, func(dir string) { tt.damage(t, dir) })
			rep, err := client.Fsck(st, tt.readData)
			if !errors.Is(err, client.ErrDamaged) {
				t.Fatalf("err = %v; want ErrDamaged", err)
			}
			if len(rep.Problems) == 0 {
				t.Error("no problem reported")
			}
			broken := strings.Join(rep.Broken, "; ")
			for _, ref := range tt.wantBroken {
				if !strings.Contains(broken, ref) {
					t.Errorf("broken %q does not name %s", rep.Broken, ref)
				}
			}
			for _, ref := range tt.notBroken {
				if strings.Contains(broken, ref) {
					t.Errorf("broken %q names %s, which lost nothing", rep.Broken, ref)
				}
			}
			// What the damage did not touch still checks out.
			if !slices.Contains(tt.notBroken, "tag t1") {
				return
			}
			dir := filepath.Join(t.TempDir(), "co")
			if _, err := client.Checkout(t.Context(), st, f.v1, dir, client.CheckoutOptions{NoSync: true}); err != nil {
				t.Errorf("checkout of t1 on the damaged store: %v", err)
			}
		})
	}
	// The undamaged copy is clean: the damage, not the copy, is seen.
	fsckClean(t, f.open(t, nil))
}

// gcFixture is a store with history to keep and data to free:
//
//	img:     v1 (tag rel-1) → v2 → v3 (head)
//	rb:      r1 → r2, then reset to r1 (r2 is reachable by the reflog only)
//	img@layout
//	gone:    g1, tagged keep-g1, then the image removed
//	tmp:     t1 (srv/tmp, srv/shared), then the image removed
//	keeper:  k1 (srv/shared, stored in t1's pack)
type gcFixture struct {
	st          *store.Store
	refs        map[string]chunk.ID // what must survive, by how it is reached
	want        map[string]string   // ref → reference directory
	tmp         chunk.ID
	tmpChunk    chunk.ID // only in tmp
	sharedChunk chunk.ID // in tmp's pack, reached by keeper
	keptChunk   chunk.ID // only in g1
}

// randomFile writes one file of size pseudo-random bytes from seed.
func randomFile(tb testing.TB, dir, name string, seed int64, size int) {
	tb.Helper()
	snapshottest.RandomFiles(tb, dir, seed, map[string]int{name: size})
}

// firstChunk is the first chunk of file p in commit id.
func firstChunk(tb testing.TB, st *store.Store, id chunk.ID, p string) chunk.ID {
	tb.Helper()
	n, err := snapshot.Lookup(st, treeOf(tb, st, id), p)
	if err != nil {
		tb.Fatal(err)
	}
	return n.Content[0].ID
}

func newGCFixture(t *testing.T, dir string) *gcFixture {
	t.Helper()
	g := &gcFixture{st: openStore(t, dir), refs: map[string]chunk.ID{}, want: map[string]string{}}
	st := g.st
	keep := func(ref string, id chunk.ID, want string) {
		g.refs[ref], g.want[ref] = id, want
	}
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, baseFiles)
	v1, ref := snap(t, st, src, "img")
	keep("tag rel-1", v1, ref)
	if err := st.CreateTag("rel-1", v1); err != nil {
		t.Fatal(err)
	}
	snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 222, "usr/bin/big": 1<<20 + 7})
	v2, ref := snap(t, st, src, "img")
	keep("history of img", v2, ref)
	snapshottest.RandomFiles(t, src, 3, map[string]int{"etc/motd": 333, "usr/lib/libb.so": 99000})
	v3, ref := snap(t, st, src, "img")
	keep("image img", v3, ref)

	rb := filepath.Join(t.TempDir(), "rb")
	randomFile(t, rb, "etc/motd", 4, 100)
	r1, ref := snap(t, st, rb, "rb")
	keep("image rb", r1, ref)
	randomFile(t, rb, "srv/r2", 5, 200000)
	r2, ref := snap(t, st, rb, "rb")
	keep("reflog of rb", r2, ref)
	if err := st.SetImage("rb", r2, r1, "reset", "back to r1"); err != nil {
		t.Fatal(err)
	}

	lay, err := catalog.CommitFiles(t.Context(), st, catalog.LayoutImage("img"),
		map[string][]byte{catalog.LayoutFile: []byte("part root rest ext4 /\n")}, "layout")
	if err != nil {
		t.Fatal(err)
	}
	g.refs["image img@layout"] = lay

	gone := filepath.Join(t.TempDir(), "gone")
	randomFile(t, gone, "srv/gone", 10, 300000)
	g1, ref := snap(t, st, gone, "gone")
	keep("tag keep-g1", g1, ref)
	g.keptChunk = firstChunk(t, st, g1, "srv/gone")
	if err := st.CreateTag("keep-g1", g1); err != nil {
		t.Fatal(err)
	}
	if err := client.RemoveImage(st, "gone"); err != nil {
		t.Fatal(err)
	}

	tmp := filepath.Join(t.TempDir(), "tmp")
	randomFile(t, tmp, "srv/tmp", 11, 300000)
	randomFile(t, tmp, "srv/shared", 12, 200000)
	g.tmp, _ = commit(t, st, tmp, "tmp")
	g.tmpChunk = firstChunk(t, st, g.tmp, "srv/tmp")
	g.sharedChunk = firstChunk(t, st, g.tmp, "srv/shared")
	keeper := filepath.Join(t.TempDir(), "keeper")
	randomFile(t, keeper, "srv/shared", 12, 200000)
	k1, ref := snap(t, st, keeper, "keeper")
	keep("image keeper", k1, ref)
	if got := firstChunk(t, st, k1, "srv/shared"); got != g.sharedChunk {
		t.Fatalf("setup: keeper's srv/shared is %s, tmp's %s; want them shared", got.Short(), g.sharedChunk.Short())
	}
	if err := client.RemoveImage(st, "tmp"); err != nil {
		t.Fatal(err)
	}
	return g
}

// checkRefs checks every ref that must survive out and compares it with
// its reference copy.
func (g *gcFixture) checkRefs(t *testing.T) {
	t.Helper()
	for _, ref := range slices.Sorted(maps.Keys(g.refs)) {
		id := g.refs[ref]
		dir := filepath.Join(t.TempDir(), "co")
		if _, err := client.Checkout(t.Context(), g.st, id, dir, client.CheckoutOptions{NoSync: true}); err != nil {
			t.Errorf("%s (%s): %v", ref, id.Short(), err)
			continue
		}
		if want, ok := g.want[ref]; ok {
			snapshottest.Equal(t, want, dir)
		}
	}
}

// TestGC: gc frees what RemoveImage orphaned and nothing that an image,
// tag or reflog reaches; a second gc has nothing to do; the store is
// clean after each, and after reopening.
func TestGC(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	g := newGCFixture(t, dir)
	st := g.st
	if has, _ := st.Has(g.tmpChunk); !has {
		t.Fatal("setup: tmp's chunk is not in the store")
	}
	gs, err := client.GC(st)
	if err != nil {
		t.Fatal(err)
	}
	// tmp's pack holds its dead chunk and trees and keeper's live
	// chunk: it is rewritten.
	if gs.CommitsRemoved != 1 || gs.BlobsRemoved < 2 || gs.BytesFreed <= 0 || gs.PacksRewritten < 1 {
		t.Errorf("gc: %+v; want 1 commit, at least 2 blobs (a chunk, a tree) removed, a pack rewritten, bytes freed", gs)
	}
	if _, err := st.Commit(g.tmp); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("tmp's commit after gc: %v; want ErrNotFound", err)
	}
	if has, _ := st.Has(g.tmpChunk); has {
		t.Error("tmp's chunk survived gc")
	}
	if has, _ := st.Has(g.keptChunk); !has {
		t.Error("the chunk only tag keep-g1 reaches was removed")
	}
	if has, _ := st.Has(g.sharedChunk); !has {
		t.Error("the chunk keeper shares with tmp was removed")
	}
	fsckClean(t, st)
	g.checkRefs(t)

	again, err := client.GC(st)
	if err != nil {
		t.Fatal(err)
	}
	if again != (store.GCStats{}) {
		t.Errorf("second gc: %+v; want nothing done", again)
	}

	// gc dropped the stat caches (they may name removed chunks): the
	// next commit reads everything.
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, map[string]int{"a": 10, "b": 20})
	settle()
	commit(t, st, src, "new")
	if _, c := commit(t, st, src, "new"); c.Stats.ReadFiles != 0 {
		t.Fatalf("setup: unchanged re-commit read %d files", c.Stats.ReadFiles)
	}
	if _, err := client.GC(st); err != nil {
		t.Fatal(err)
	}
	if _, c := commit(t, st, src, "new"); c.Stats.ReadFiles != 2 {
		t.Errorf("commit after gc read %d files; want 2 (caches dropped)", c.Stats.ReadFiles)
	}

	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	g.st, err = store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.st.Close() })
	fsckClean(t, g.st)
	g.checkRefs(t)
}

// TestGCRefusesDamaged: on a store where a tree cannot be read, gc
// removes nothing, not even what is unreachable.
func TestGCRefusesDamaged(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, st *store.Store, g *gcFixture) // on the closed store's files
	}{
		{"pack of the head deleted", func(t *testing.T, st *store.Store, g *gcFixture) {
			removePack(t, st.Dir(), g.headPack(t))
		}},
		{"byte flipped in a tree frame", func(t *testing.T, st *store.Store, g *gcFixture) {
			flipByte(t, st.Dir(), g.headPack(t), middle(g.headTree(t)))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "store")
			g := newGCFixture(t, dir)
			tt.damage(t, g.st, g)
			// Reopen, so that nothing cached hides the damage.
			if err := g.st.Close(); err != nil {
				t.Fatal(err)
			}
			st, err := store.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := client.Fsck(st, false); !errors.Is(err, client.ErrDamaged) {
				t.Fatalf("setup: fsck %v; want ErrDamaged", err)
			}
			files := packFiles(t, st)
			commits, err := st.Commits()
			if err != nil {
				t.Fatal(err)
			}
			gs, err := client.GC(st)
			if err == nil {
				t.Fatalf("gc on a damaged store: %+v, no error", gs)
			}
			if gs != (store.GCStats{}) {
				t.Errorf("refused gc: %+v; want nothing done", gs)
			}
			if got := packFiles(t, st); !maps.Equal(got, files) {
				t.Errorf("refused gc changed the pack files:\n got %v\nwant %v", got, files)
			}
			if got, _ := st.Commits(); len(got) != len(commits) {
				t.Errorf("refused gc: %d commits; want %d", len(got), len(commits))
			}
			if has, _ := st.Has(g.tmpChunk); !has {
				t.Error("refused gc removed tmp's chunk")
			}
		})
	}
}

// headPack is the pack holding img's head's root tree.
func (g *gcFixture) headPack(t *testing.T) chunk.ID {
	t.Helper()
	loc, err := g.st.Lookup(treeOf(t, g.st, g.refs["image img"]))
	if err != nil {
		t.Fatal(err)
	}
	return loc.Pack
}

// headTree is the pack entry of img's head's root tree.
func (g *gcFixture) headTree(t *testing.T) store.PackEntry {
	t.Helper()
	id := treeOf(t, g.st, g.refs["image img"])
	loc, err := g.st.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	return store.PackEntry{ID: id, Loc: loc}
}
