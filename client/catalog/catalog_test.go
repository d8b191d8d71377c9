package catalog

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/store"
)

func openStore(t testing.TB) *store.Store {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	if err := store.Init(dir); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestRegistryRoundTrip(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	r, err := LoadRegistry(st)
	if err != nil || len(r.Nodes) != 0 || !r.Commit.IsZero() {
		t.Fatalf("empty registry: %+v %v", r, err)
	}
	r.Groups["compute"] = &Group{Name: "compute", Image: "debian", Overrides: []string{"site"}, Scripts: []string{"a"}}
	if err := r.AddNode(&Node{Name: "n01", MAC: "52-54-00-AB-CD-EF", IP: "198.18.0.11/24", Groups: []string{"compute"}, Overrides: []string{"n01"}, Scripts: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	id1, err := r.Save(ctx, st, "add n01")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := LoadRegistry(st)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Commit != id1 || r2.Nodes["n01"].MAC != "52:54:00:ab:cd:ef" {
		t.Fatalf("reloaded %+v", r2.Nodes["n01"])
	}
	if n := r2.ByMAC("52:54:00:AB:CD:EF"); n == nil || n.Name != "n01" {
		t.Errorf("ByMAC: %v", n)
	}
	res, err := r2.Resolve(r2.Nodes["n01"])
	if err != nil {
		t.Fatal(err)
	}
	if res.Image != "debian" || strings.Join(res.Overrides, ",") != "site,n01" || strings.Join(res.Scripts, ",") != "a,b" {
		t.Errorf("resolved %+v", res)
	}
	// A second node with the same MAC or IP is refused, naming the owner.
	if err := r2.AddNode(&Node{Name: "n02", MAC: "52:54:00:ab:cd:ef"}); err == nil || !strings.Contains(err.Error(), "already node n01's") {
		t.Errorf("duplicate MAC: %v", err)
	}
	if err := r2.AddNode(&Node{Name: "n02", IP: "198.18.0.11/16"}); err == nil || !strings.Contains(err.Error(), "already node n01's") {
		t.Errorf("duplicate IP: %v", err)
	}
	// Versioned: a second save is a child commit.
	delete(r2.Nodes, "n01")
	id2, err := r2.Save(ctx, st, "rm n01")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := st.Commit(id2)
	if len(c.Parents) != 1 || c.Parents[0] != id1 {
		t.Errorf("registry history: parents %v, want [%s]", c.Parents, id1.Short())
	}
}

func TestNodeCheck(t *testing.T) {
	for _, c := range []struct {
		n    Node
		want string
	}{
		{Node{Name: "N1"}, "invalid node name"},
		{Node{Name: "-a"}, "invalid node name"},
		{Node{Name: "a", MAC: "52:54:00:12:34"}, "invalid MAC address \"52:54:00:12:34\""},
		{Node{Name: "a", MAC: "zz:54:00:12:34:56"}, "invalid MAC"},
		{Node{Name: "a", IP: "198.18.0.1"}, "invalid IP \"198.18.0.1\""},
		{Node{Name: "a", IP: "fe80::1/64"}, "invalid IP"},
		{Node{Name: "a", Image: "bad/name"}, "invalid image name"},
		{Node{Name: "a", Groups: []string{".."}}, "invalid group name"},
		{Node{Name: "a", Gateway: "x"}, "invalid gateway"},
	} {
		if err := c.n.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v; want %q", c.n, err, c.want)
		}
	}
	if err := (&Node{Name: "node-7", MAC: "52:54:00:12:34:56", IP: "10.0.0.7/8"}).Check(); err != nil {
		t.Error(err)
	}
}

func TestLayoutFor(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	img, err := CommitFiles(ctx, st, "debian", map[string][]byte{"etc/hostname": []byte("x\n")}, "image")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LayoutFor(st, "debian"); err == nil || !strings.Contains(err.Error(), "no layout set") {
		t.Errorf("no layout: %v", err)
	}
	l1, _ := CommitFiles(ctx, st, LayoutImage("debian"), map[string][]byte{LayoutFile: []byte("part root rest ext4 /\n")}, "v1")
	l2, _ := CommitFiles(ctx, st, LayoutImage("debian"), map[string][]byte{LayoutFile: []byte("part root rest xfs /\n")}, "v2")
	for ref, want := range map[string]string{"debian": l2.String(), img.String(): l2.String(), l1.String(): l1.String(), "debian@layout~1": l1.String()} {
		got, err := LayoutFor(st, ref)
		if err != nil || got.String() != want {
			t.Errorf("LayoutFor(%s) = %s, %v; want %s", ref, got.Short(), err, want[:12])
		}
	}
	b, err := ReadFile(st, l1, LayoutFile)
	if err != nil || string(b) != "part root rest ext4 /\n" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	if _, err := CommitFiles(ctx, st, "x@script", map[string][]byte{"../evil": nil}, ""); err == nil {
		t.Error("path with .. accepted")
	}
}
