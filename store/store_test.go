package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
)

func testStore(t testing.TB) *Store {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "s")
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func put(t testing.TB, s *Store, blobs ...[]byte) []chunk.ID {
	t.Helper()
	w := s.NewWriter()
	var ids []chunk.ID
	for _, b := range blobs {
		id := chunk.Sum(b)
		if _, err := w.Put(TypeData, id, b); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestPutGet(t *testing.T) { matrix(t, testPutGet) }

func testPutGet(t *testing.T, be backend) {
	s := be.newStore(t)
	big := []byte(strings.Repeat("0123456789", 600000)) // larger than a frame
	blobs := [][]byte{[]byte("a"), []byte(""), big, []byte("a")}
	ids := put(t, s, blobs...)
	for i, id := range ids {
		got, err := s.Get(id)
		if err != nil || string(got) != string(blobs[i]) {
			t.Errorf("blob %d: %d bytes, %v", i, len(got), err)
		}
	}
	has, err := s.HasMany([]chunk.ID{ids[0], chunk.Sum([]byte("nope"))})
	if err != nil || !has[0] || has[1] {
		t.Errorf("HasMany = %v, %v", has, err)
	}
	if _, err := s.Get(chunk.Sum([]byte("nope"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}
	// Putting the same blobs again adds nothing.
	w := s.NewWriter()
	if added, _ := w.Put(TypeData, ids[0], blobs[0]); added {
		t.Error("a stored blob was added again")
	}
	if st, _ := w.Flush(); st.Blobs != 0 || st.Packs != 0 {
		t.Errorf("second flush wrote %+v", st)
	}
	// A refused corrupt blob from a transport.
	w = s.NewWriter()
	if _, err := w.PutVerified(TypeData, ids[0], []byte("b")); err == nil {
		t.Error("PutVerified took bytes that do not match their id")
	}
	w.Abort()
	// A second store on the same location sees it all.
	s = be.reopen(t, s)
	for i, id := range ids {
		got, err := s.Get(id)
		if err != nil || string(got) != string(blobs[i]) {
			t.Errorf("reopened: blob %d: %d bytes, %v", i, len(got), err)
		}
	}
	var rep []Problem
	if _, err := s.Check(true, func(p Problem) { rep = append(rep, p) }); err != nil || len(rep) != 0 {
		t.Errorf("check: %v %v", rep, err)
	}
}

func TestRefs(t *testing.T) { matrix(t, testRefs) }

func testRefs(t *testing.T, be backend) {
	s := be.newStore(t)
	tree := put(t, s, []byte("tree"))[0]
	var ids []chunk.ID
	var parent []chunk.ID
	for i := 0; i < 3; i++ {
		id, err := s.PutCommit(&Commit{Tree: tree, Parents: parent, Image: "img", Message: fmt.Sprint(i), Time: time.Unix(int64(i), 0)})
		if err != nil {
			t.Fatal(err)
		}
		old := chunk.ID{}
		if i > 0 {
			old = ids[i-1]
		}
		if err := s.SetImage("img", old, id, "commit", ""); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		parent = []chunk.ID{id}
	}
	if err := s.SetImage("img", ids[0], ids[1], "commit", ""); !errors.Is(err, ErrConflict) {
		t.Errorf("stale compare-and-swap: %v", err)
	}
	if _, err := s.PutCommit(&Commit{Tree: chunk.Sum([]byte("no such tree"))}); err == nil {
		t.Error("a commit naming a missing tree was stored")
	}
	if err := s.CreateTag("rel-1.0", ids[1]); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref  string
		want chunk.ID
		err  string
	}{
		{"img", ids[2], ""},
		{"img~1", ids[1], ""},
		{"img^^", ids[0], ""},
		{"img~2", ids[0], ""},
		{"rel-1.0", ids[1], ""},
		{"rel-1.0~1", ids[0], ""},
		{ids[2].String(), ids[2], ""},
		{"blake3-" + ids[1].String(), ids[1], ""},
		{ids[0].String()[:7], ids[0], ""},
		{"img~3", chunk.ID{}, "has no parent"},
		{"nope", chunk.ID{}, "unknown ref"},
		{"ab", chunk.ID{}, "unknown ref"},
	} {
		got, err := s.Resolve(tc.ref)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Resolve(%q) = %v; want error %q", tc.ref, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Resolve(%q) = %s, %v; want %s", tc.ref, got.Short(), err, tc.want.Short())
		}
	}
	log, err := s.Reflog("img")
	if err != nil || len(log) != 3 || log[2].New != ids[2] || log[0].Op != "commit" {
		t.Errorf("reflog: %+v, %v", log, err)
	}
	if err := s.RenameImage("img", "img2"); err != nil {
		t.Fatal(err)
	}
	if log, _ := s.Reflog("img2"); len(log) != 4 {
		t.Errorf("reflog after rename has %d entries, want 4", len(log))
	}
	if _, err := s.ImageHead("img"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old name still resolves: %v", err)
	}
	if err := s.CreateTag("rel-1.0", ids[2]); !errors.Is(err, ErrExists) {
		t.Errorf("tag twice: %v", err)
	}
	s = be.reopen(t, s)
	if im, err := s.Images(); err != nil || len(im) != 1 || im[0].Name != "img2" || im[0].Head != ids[2] {
		t.Errorf("images after reopen: %+v %v", im, err)
	}
	if tg, err := s.Tags(); err != nil || len(tg) != 1 || tg[0].Commit != ids[1] {
		t.Errorf("tags after reopen: %+v %v", tg, err)
	}
	if err := s.DeleteTag("rel-1.0"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTag("rel-1.0", ids[2]); err != nil {
		t.Errorf("tag after delete: %v", err)
	}
	if id, err := s.Resolve("rel-1.0"); err != nil || id != ids[2] {
		t.Errorf("retagged: %s %v", id.Short(), err)
	}
	if err := s.DeleteImage("img2"); err != nil {
		t.Fatal(err)
	}
	if im, err := s.Images(); err != nil || len(im) != 0 {
		t.Errorf("images after delete: %+v %v", im, err)
	}
	if err := s.SetImage("img2", chunk.ID{}, ids[0], "commit", ""); err != nil {
		t.Errorf("recreate: %v", err)
	}
	if log, err := s.Reflog("img2"); err != nil || len(log) != 1 {
		t.Errorf("reflog of the recreated image: %+v %v", log, err)
	}
}

// TestReopenAfterCrashLeftovers: a temporary pack left by a killed
// writer is removed on open, and an unindexed pack is only a warning.
func TestReopenAfterCrashLeftovers(t *testing.T) {
	s := testStore(t)
	put(t, s, []byte("x"))
	dir := s.Dir()
	s.Close()
	os.WriteFile(filepath.Join(dir, "tmp", "pack-123"), []byte("partial"), 0o644)
	orphan := chunk.Sum([]byte("orphan"))
	os.MkdirAll(filepath.Dir(filepath.Join(dir, "packs", orphan.String()[:2], "x")), 0o755)
	os.WriteFile(filepath.Join(dir, "packs", orphan.String()[:2], orphan.String()+".pack"), []byte("SIMPACK1"), 0o644)
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := os.Stat(filepath.Join(dir, "tmp", "pack-123")); !os.IsNotExist(err) {
		t.Error("temporary pack survived open")
	}
	var probs []Problem
	if _, err := s2.Check(true, func(p Problem) { probs = append(probs, p) }); err != nil {
		t.Fatal(err)
	}
	if len(probs) != 1 || !probs[0].Warning || probs[0].Pack != orphan {
		t.Errorf("problems: %v", probs)
	}
}

func TestLocked(t *testing.T) {
	s := testStore(t)
	if _, err := Open(s.Dir()); !errors.Is(err, ErrLocked) {
		t.Errorf("second open: %v; want ErrLocked", err)
	}
}

func FuzzPackHeader(f *testing.F) {
	ents := []PackEntry{{ID: chunk.Sum([]byte("a")), Loc: Loc{Type: TypeData, FrameOff: 8, FrameLen: 10, Comp: compZstd, Off: 0, Len: 1}}}
	f.Add(encodePackHeader(ents))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodePackHeader(b, chunk.ID{}, 1<<20)
		if err != nil {
			return
		}
		for _, e := range got {
			if e.FrameOff+uint64(e.FrameLen) > 1<<20 {
				t.Fatalf("entry outside the pack accepted: %+v", e)
			}
		}
	})
}

// TestEmptyMemtableAfterKill: a process killed while badger created its
// memtable file leaves it empty; the store must still open.
func TestEmptyMemtableAfterKill(t *testing.T) {
	s := testStore(t)
	put(t, s, []byte("x"))
	dir := s.Dir()
	s.Close()
	os.WriteFile(filepath.Join(dir, "index", "00099.mem"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "index", "000099.vlog"), nil, 0o644)
	s2, err := Open(dir)
	if err != nil {
		t.Fatalf("open after an empty memtable file: %v", err)
	}
	s2.Close()
}
