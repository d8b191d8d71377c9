package store

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestNodeDocs: two Stores on one prefix (two frontends, two caches). A
// document one writes is the other's on its next Load; of two conflicting
// ones the newest by its time wins, whoever wrote last; a writer leaves
// one entry per node; names with ':' and '/' round-trip; a leftover of a
// dead writer is deleted once long superseded, a recent one kept; a local
// store has none.
func TestNodeDocs(t *testing.T) {
	if backends[0].newStore(t).NodeDocs("nodes") != nil {
		t.Fatal("a local store has per-node documents in a bucket")
	}
	s3b := backends[1]
	a := s3b.newStore(t)
	b := s3b.open(t, a.Location())
	defer b.Close()
	da, db := a.NodeDocs("nodes"), b.NodeDocs("nodes")
	if a.NodeDocs("nodes") != da || a.NodeDocs("installs") == da {
		t.Fatal("a Store's NodeDocs: want one value per kind")
	}
	load := func(d *NodeDocs) map[string]string {
		t.Helper()
		docs, err := d.Load(0)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, x := range docs {
			m[x.Node] = fmt.Sprintf("%s@%d", x.Data, x.Time.Sub(t0Docs)/time.Second)
		}
		return m
	}
	put := func(d *NodeDocs, node string, sec int, data string) {
		t.Helper()
		if err := d.Put(node, t0Docs.Add(time.Duration(sec)*time.Second), []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	entries := func(node string) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		objs, err := a.Remote().List(ctx, "fleet/nodes/"+node+"/", 0)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, o := range objs {
			out = append(out, o.Key)
		}
		return out
	}

	steps := []struct {
		what string
		do   func()
		want map[string]string // what each of a and b loads
	}{
		{"a writes n1", func() { put(da, "n1", 10, "a1") }, map[string]string{"n1": "a1@10"}},
		{"a writes n1 again and a MAC-named one", func() { put(da, "n1", 20, "a2"); put(da, "52:54:00:00:00:01", 5, "mac") },
			map[string]string{"n1": "a2@20", "52:54:00:00:00:01": "mac@5"}},
		// b heard n1 earlier than a did (its report came late): a's stays.
		{"b writes an older n1", func() { put(db, "n1", 15, "b-old") }, map[string]string{"n1": "a2@20", "52:54:00:00:00:01": "mac@5"}},
		{"b writes a newer n1", func() { put(db, "n1", 30, "b-new") }, map[string]string{"n1": "b-new@30", "52:54:00:00:00:01": "mac@5"}},
		{"a slash in a name", func() { put(db, "10.0.0.1:80/x", 1, "addr") },
			map[string]string{"n1": "b-new@30", "52:54:00:00:00:01": "mac@5", "10.0.0.1:80/x": "addr@1"}},
	}
	for _, s := range steps {
		s.do()
		for name, d := range map[string]*NodeDocs{"a": da, "b": db} {
			if got := load(d); fmt.Sprint(got) != fmt.Sprint(s.want) {
				t.Errorf("%s: %s loads %v; want %v", s.what, name, got, s.want)
			}
		}
	}
	// Each writer keeps one entry of n1: a's newest (superseded by b's,
	// a's own Load deleted it) and b's.
	if e := entries("n1"); len(e) != 1 || !strings.HasSuffix(e[0], "-"+b.rem.writer) {
		t.Errorf("entries of n1: %v; want b's alone", e)
	}
	// A writer that died leaves an entry: kept while recent (a Load of the
	// others may still be reading it), deleted once NodeDocLeftover older
	// than the node's newest.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, sec := range []int{25, 30 - int(NodeDocLeftover/time.Second) - 1} {
		if err := a.Remote().Put(ctx, fmt.Sprintf("fleet/nodes/n1/%016x-deadbeefdeadbeef", ^uint64(t0Docs.Add(time.Duration(sec)*time.Second).UnixNano())), []byte("dead")); err != nil {
			t.Fatal(err)
		}
	}
	load(db)
	e := entries("n1")
	if len(e) != 2 || !strings.HasSuffix(e[0], "-"+b.rem.writer) || !strings.HasSuffix(e[1], "-deadbeefdeadbeef") {
		t.Errorf("entries of n1 after a Load: %v; want b's and the dead writer's recent one", e)
	}
	if got := load(da)["n1"]; got != "b-new@30" {
		t.Errorf("n1 with a dead writer's older entries: %s; want b-new@30", got)
	}
	// Bad data in the prefix is not a node's.
	if err := a.Remote().Put(ctx, "fleet/nodes/junk", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := load(db); len(got) != 3 {
		t.Errorf("with a stray key: %v", got)
	}
}

var t0Docs = time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
