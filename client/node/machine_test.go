package node_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		f := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(f), 0o755)
		mode := os.FileMode(0o644)
		if strings.HasPrefix(c, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(f, []byte(c), mode); err != nil {
			t.Fatal(err)
		}
	}
}

func commitTree(t *testing.T, st *store.Store, dir string) chunk.ID {
	t.Helper()
	id, _, err := client.Commit(context.Background(), st, dir, client.CommitOptions{Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, _ := os.ReadFile(p)
	return string(b)
}

// TestMachine: a node updates (staged, then applied: the image's changes,
// the preserved paths kept, the image's and the node's exclude lists
// honoured, /boot changed → reboot required), an update whose health check
// fails rolls itself back exactly, a rollback by hand goes back, and a
// drift scan finds exactly what was changed by hand.
func TestMachine(t *testing.T) {
	sh := "/bin/busybox"
	if _, err := os.Stat(sh); err != nil || os.Geteuid() != 0 {
		t.Skip("needs root (chroot) and a static /bin/busybox for the health checks")
	}
	srvSt := storetest.New(t)
	src := t.TempDir()
	base := map[string]string{"etc/motd": "one\n", "etc/keep": "image\n", "boot/vmlinuz": "k1", "usr/bin/tool": "v1",
		"etc/sim/update.exclude": "/opt/site\n"}
	writeTree(t, src, base)
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	b, _ := os.ReadFile(sh)
	os.WriteFile(filepath.Join(src, "bin/sh"), b, 0o755)
	a := commitTree(t, srvSt, src)
	writeTree(t, src, map[string]string{"etc/motd": "two\n", "boot/vmlinuz": "k2", "usr/bin/new": "new", "opt/site/x": "image's"})
	os.Remove(filepath.Join(src, "usr/bin/tool"))
	c := commitTree(t, srvSt, src)
	writeTree(t, src, map[string]string{"etc/sim/health.d/10-ok": "#!/bin/sh\nexit 0\n",
		"etc/sim/health.d/20-bad": "#!/bin/sh\necho \"node $SIM_NODE: bad $SIM_COMMIT\"\nexit 4\n"})
	bad := commitTree(t, srvSt, src)
	fl := fleet.New(srvSt, nil)
	defer fl.Close()
	srv := &simsync.Server{Store: srvSt}
	fl.Mount(srv)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	r, _ := simsync.NewRemote(hs.URL, "")

	root := t.TempDir()
	st := storetest.New(t) // the node store (outside the root here)
	if _, err := node.Checkout(t.Context(), node.CheckoutOptions{Store: st, Remote: r, Ref: a.String(), Dir: root, Checkout: client.CheckoutOptions{NoSync: true}}); err != nil {
		t.Fatal(err)
	}
	writeTree(t, root, map[string]string{"etc/machine-id": "node's own\n", "var/log/x": "log\n", "opt/site/x": "the node's", "etc/keep": "node's\n"})
	os.WriteFile(filepath.Join(root, node.LocalExclude[1:]), []byte("/etc/keep\n"), 0o644)
	m, err := node.Open(st, root, "n1", r)
	if err != nil {
		t.Fatal(err)
	}
	target := func(id chunk.ID) *node.Target { return &node.Target{Version: node.Version{Image: "img", Commit: id}} }

	out, err := m.Update(t.Context(), target(c), node.UpdateOptions{Health: []string{"test -f /usr/bin/new"}})
	if err != nil || out.State != node.Idle || !out.RebootRequired {
		t.Fatalf("update to c: %+v %v", out, err)
	}
	for p, want := range map[string]string{"etc/motd": "two\n", "usr/bin/new": "new", "usr/bin/tool": "", "etc/machine-id": "node's own\n",
		"var/log/x": "log\n", "opt/site/x": "the node's", "etc/keep": "node's\n"} {
		if got := read(t, filepath.Join(root, p)); got != want {
			t.Errorf("after the update: %s = %q; want %q", p, got, want)
		}
	}
	if s, _ := m.Status(); s.Current.Commit != c || s.Previous == nil || s.Previous.Commit != a || !s.RebootRequired {
		t.Errorf("node.json after the update: %+v", s)
	}

	// The bad image's check fails: rolled back to c, exactly.
	out, err = m.Update(t.Context(), target(bad), node.UpdateOptions{})
	if err != nil || out.State != node.RolledBack || !strings.Contains(out.Error, "20-bad") || !strings.Contains(out.Error, "exit status 4") ||
		!strings.Contains(out.Health, "node n1: bad "+bad.String()) {
		t.Fatalf("update to bad: %+v %v", out, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/sim/health.d")); err == nil {
		t.Error("the bad image's files are still there after its rollback")
	}
	if s, _ := m.Status(); s.Current.Commit != c || s.Previous.Commit != a || s.Status != node.RolledBack {
		t.Errorf("node.json after the failed check: %+v", s)
	}
	d, err := m.Drift(t.Context())
	if err != nil || d.Count() != 0 {
		t.Errorf("drift after the rollback: %+v %v", d, err)
	}

	// Drift: one of each kind.
	writeTree(t, root, map[string]string{"etc/added": "x", "etc/motd": "edited\n"})
	os.Remove(filepath.Join(root, "usr/bin/new"))
	os.Chmod(filepath.Join(root, "boot/vmlinuz"), 0o600)
	unix.Setxattr(filepath.Join(root, "etc/sim/update.exclude"), "user.t", []byte("1"), 0)
	d, err = m.Drift(t.Context())
	want := &node.Drift{Commit: c, Added: []string{"/etc/added"}, Modified: []string{"/etc/motd"}, Removed: []string{"/usr/bin/new"},
		Metadata: []string{"/boot/vmlinuz", "/etc/sim/update.exclude"}}
	if err != nil || !reflect.DeepEqual(d, want) {
		t.Errorf("drift = %+v %v; want %+v", d, err, want)
	}

	// By hand, offline: back to a.
	m.Remote = nil
	out, err = m.Rollback(t.Context(), "", "")
	if err != nil || out.State != node.RolledBack || out.To.Commit != a {
		t.Fatalf("rollback: %+v %v", out, err)
	}
	if got := read(t, filepath.Join(root, "usr/bin/tool")); got != "v1" {
		t.Errorf("after the rollback: tool %q", got)
	}
	if got := read(t, filepath.Join(root, "etc/machine-id")); got != "node's own\n" {
		t.Errorf("the rollback touched the machine id: %q", got)
	}
	if j, _ := node.LoadJournal(st.Dir()); j != nil {
		t.Errorf("journal left: %+v", j)
	}
}
