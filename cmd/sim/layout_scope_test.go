package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

// TestLayoutScopes: a layout per group and per node wins over the
// image's (node > group > image), in what the install server answers and
// in sim layout show --node; an old commit of an image installs with the
// layout that was current while it was the image's head.
func TestLayoutScopes(t *testing.T) {
	dir := t.TempDir()
	s := filepath.Join(dir, "store")
	ok(t, s, "init")
	writeFiles(t, dir, map[string]string{
		"tree1/etc/motd": "one\n",
		"tree2/etc/motd": "two\n",
		"l-image1":       "part root rest ext4 / label=image1\n",
		"l-image2":       "part root rest ext4 / label=image2\n",
		"l-group":        "part root rest xfs / label=group\n",
		"l-node":         "disk /dev/vda\npart r0 rest raid\ndisk /dev/vdb\npart r1 rest raid\nraid md0 1 r0,r1 ext4 / label=node\n",
	})
	ok(t, s, "commit", filepath.Join(dir, "tree1"), "--image", "img", "-m", "first")
	st0, err := store.Open(s)
	if err != nil {
		t.Fatal(err)
	}
	firstID, err := st0.ImageHead("img")
	st0.Close()
	if err != nil {
		t.Fatal(err)
	}
	first := firstID.String()
	ok(t, s, "layout", "set", "img", filepath.Join(dir, "l-image1"))
	ok(t, s, "commit", filepath.Join(dir, "tree2"), "--image", "img", "-m", "second")
	ok(t, s, "layout", "set", "img", filepath.Join(dir, "l-image2"))
	ok(t, s, "group", "add", "compute", "--image", "img")
	ok(t, s, "group", "add", "login", "--image", "img")
	ok(t, s, "node", "add", "n1", "--group", "compute")
	ok(t, s, "node", "add", "n2", "--group", "compute")
	ok(t, s, "node", "add", "n3", "--group", "login")

	// Errors name what is at fault, and store nothing.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"layout", "set", "--group", "nosuch", filepath.Join(dir, "l-group")}, `no group "nosuch"`},
		{[]string{"layout", "set", "--node", "n9", filepath.Join(dir, "l-group")}, `no node "n9"`},
		{[]string{"layout", "set", "--node", "n1", "--group", "compute", filepath.Join(dir, "l-group")}, "give one"},
		{[]string{"layout", "set", "--node", "n1", "img", filepath.Join(dir, "l-group")}, "give only FILE"},
		{[]string{"layout", "show"}, "give REF or --node N"},
	} {
		if r := sim(t, s, c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("sim %v: %d %s; want %q", c.args, r.code, r.stderr, c.want)
		}
	}
	ok(t, s, "layout", "set", "--group", "compute", filepath.Join(dir, "l-group"))
	ok(t, s, "layout", "set", "--node", "n2", filepath.Join(dir, "l-node"))

	st, err := store.Open(s)
	if err != nil {
		t.Fatal(err)
	}
	label := func(node, image string) string {
		t.Helper()
		cfg, err := install.ConfigFor(st, node, "", image)
		if err != nil {
			t.Fatalf("ConfigFor(%s, %s): %v", node, image, err)
		}
		i := strings.Index(cfg.Layout, "label=")
		if i < 0 {
			t.Fatalf("layout without a label: %s", cfg.Layout)
		}
		return strings.Fields(cfg.Layout[i+len("label="):])[0]
	}
	for _, c := range []struct{ node, image, want string }{
		{"n1", "", "group"},   // its group's
		{"n2", "", "node"},    // its own, over its group's
		{"n3", "", "image2"},  // its group has none: the image's
		{"", "img", "image2"}, // an unregistered node: the image's
		{"", first, "image1"}, // the first commit: the layout current then
		{"n3", first, "image1"},
	} {
		if got := label(c.node, c.image); got != c.want {
			t.Errorf("node %q image %q: layout %s, want %s", c.node, c.image, got, c.want)
		}
	}
	if id, err := catalog.LayoutFor(st, "img"); err != nil || id.IsZero() {
		t.Errorf("LayoutFor(img): %v", err)
	}
	st.Close()
	r := sim(t, s, "layout", "show", "--node", "n2")
	if r.code != 0 || !strings.Contains(r.stderr, "node n2 installs the layout of node n2") || !strings.Contains(r.stdout, "raid md0 1 r0,r1 ext4 / label=node") {
		t.Errorf("layout show --node n2: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	r = sim(t, s, "layout", "show", "--node", "n1")
	if r.code != 0 || !strings.Contains(r.stderr, "installs the layout of group compute") {
		t.Errorf("layout show --node n1: %d %s", r.code, r.stderr)
	}
	if out := ok(t, s, "layout", "show", first); !strings.Contains(out, "label=image1") {
		t.Errorf("layout show FIRST-COMMIT:\n%s", out)
	}
	// The catalog documents stay out of sim images.
	if out := ok(t, s, "images"); strings.Contains(out, "sim@") {
		t.Errorf("sim images lists catalog documents:\n%s", out)
	}
}
