package install

import (
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/layout"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

func write(t *testing.T, p, s string, mode os.FileMode) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

// TestEffective: overrides laid over an image in the store (snapshot.
// Overlay), checked out, give SystemImager's override semantics on disk;
// the node's hosts line is in the tree; no overrides is the image itself.
func TestEffective(t *testing.T) {
	base := t.TempDir()
	st := openStore(t, filepath.Join(base, "store"))
	img, ov := filepath.Join(base, "img"), filepath.Join(base, "ov")
	write(t, filepath.Join(img, "etc/motd"), "image motd\n", 0o644)
	write(t, filepath.Join(img, "etc/keep"), "kept\n", 0o644)
	write(t, filepath.Join(img, "etc/link"), "was a file\n", 0o644)
	write(t, filepath.Join(img, "etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n", 0o644)
	os.MkdirAll(filepath.Join(img, "opt/dir"), 0o700)
	write(t, filepath.Join(img, "was-dir/x"), "x", 0o644)
	// A hard link whose first name the override replaces stands alone.
	write(t, filepath.Join(img, "a/first"), "linked\n", 0o644)
	os.MkdirAll(filepath.Join(img, "b"), 0o755)
	if err := os.Link(filepath.Join(img, "a/first"), filepath.Join(img, "b/second")); err != nil {
		t.Fatal(err)
	}

	write(t, filepath.Join(ov, "etc/motd"), "override motd\n", 0o600)
	write(t, filepath.Join(ov, "opt/dir/new"), "new\n", 0o755)
	write(t, filepath.Join(ov, "srv/deep/file"), "deep\n", 0o640)
	write(t, filepath.Join(ov, "was-dir"), "now a file\n", 0o644)
	write(t, filepath.Join(ov, "a/first"), "replaced\n", 0o644)
	os.Symlink("motd", filepath.Join(ov, "etc/link"))
	os.Chmod(filepath.Join(ov, "opt/dir"), 0o755)
	unix.Mkfifo(filepath.Join(ov, "etc/fifo"), 0o640)
	mt := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	os.Chtimes(filepath.Join(ov, "etc/motd"), mt, mt)

	imgID, _, err := client.Commit(t.Context(), st, img, client.CommitOptions{Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	ovID, _, err := client.Commit(t.Context(), st, ov, client.CommitOptions{Image: "site@override"})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := Effective(st, imgID, nil, ""); err != nil || id != imgID {
		t.Errorf("no overrides: %s %v; want the image %s", id.Short(), err, imgID.Short())
	}
	eff, err := Effective(st, imgID, []Doc{{Name: "site", Commit: ovID}}, "n9")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := Effective(st, imgID, []Doc{{Name: "site", Commit: ovID}}, "n9"); again != eff {
		t.Errorf("not deterministic: %s then %s", eff.Short(), again.Short())
	}
	if head, _ := st.ImageHead(EffectiveRef); head != eff {
		t.Errorf("%s = %s; want %s", EffectiveRef, head.Short(), eff.Short())
	}
	dst := filepath.Join(base, "root")
	if _, err := client.Checkout(t.Context(), st, eff, dst, client.CheckoutOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(dst, p)); return string(b) }
	for p, want := range map[string]string{"etc/motd": "override motd\n", "etc/keep": "kept\n", "opt/dir/new": "new\n",
		"srv/deep/file": "deep\n", "was-dir": "now a file\n", "a/first": "replaced\n", "b/second": "linked\n",
		"etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tn9\n"} {
		if got := read(p); got != want {
			t.Errorf("%s = %q; want %q", p, got, want)
		}
	}
	fi, _ := os.Stat(filepath.Join(dst, "etc/motd"))
	if fi.Mode().Perm() != 0o600 || !fi.ModTime().Equal(mt) {
		t.Errorf("motd mode %v mtime %v; want 0600 %v", fi.Mode(), fi.ModTime(), mt)
	}
	if l, err := os.Readlink(filepath.Join(dst, "etc/link")); err != nil || l != "motd" {
		t.Errorf("link = %q %v", l, err)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "etc/fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo of the override: %v %v", fi, err)
	}
	// An existing directory keeps its own metadata.
	if fi, _ := os.Stat(filepath.Join(dst, "opt/dir")); fi.Mode().Perm() != 0o700 {
		t.Errorf("existing dir mode changed to %v", fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dst, "was-dir/x")); err == nil {
		t.Error("a directory the override replaced by a file kept its contents")
	}
}

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
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

func TestConfigure(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n::1\tlocalhost ip6-localhost\n", 0o644)
	write(t, filepath.Join(root, "lib/systemd/system/systemd-networkd.service"), "[Unit]\n", 0o644)
	l, _ := layout.Parse("part root rest ext4 /\npart sw 1GiB swap\n")
	ext, _ := l.Plan("/dev/vda", 4<<30)
	parts := []disk.Part{{Extent: ext[0], Dev: "/dev/vda1", UUID: "r-u-u-i-d"}, {Extent: ext[1], Dev: "/dev/vda2", UUID: "s-w-a-p"}}
	c := &Config{Node: "n9", Hostname: "n9", MAC: "52:54:00:00:00:09", IP: "198.18.0.9/15", Gateway: "198.18.0.1"}
	if err := configure(root, c, parts); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(root, p)); return string(b) }
	if read("etc/hostname") != "n9\n" {
		t.Errorf("hostname %q", read("etc/hostname"))
	}
	if h := read("etc/hosts"); strings.Contains(h, "golden") || !strings.Contains(h, "127.0.1.1\tn9\n") || !strings.Contains(h, "::1\tlocalhost") {
		t.Errorf("hosts:\n%s", h)
	}
	if f := read("etc/fstab"); !strings.Contains(f, "UUID=r-u-u-i-d\t/\text4\terrors=remount-ro\t0\t1") || !strings.Contains(f, "UUID=s-w-a-p\tnone\tswap") {
		t.Errorf("fstab:\n%s", f)
	}
	if n := read("etc/systemd/network/10-sim.network"); !strings.Contains(n, "MACAddress=52:54:00:00:00:09") || !strings.Contains(n, "Address=198.18.0.9/15") || !strings.Contains(n, "Gateway=198.18.0.1") {
		t.Errorf("network:\n%s", n)
	}
	if l, err := os.Readlink(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")); err != nil || l != "/lib/systemd/system/systemd-networkd.service" {
		t.Errorf("networkd not enabled: %q %v", l, err)
	}
	// DHCP without a static address; no networkd: nothing written.
	c.IP = ""
	configure(root, c, parts)
	if n := read("etc/systemd/network/10-sim.network"); !strings.Contains(n, "DHCP=yes") {
		t.Errorf("network (DHCP):\n%s", n)
	}
	bare := t.TempDir()
	if err := configure(bare, c, parts); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bare, "etc/systemd/network")); err == nil {
		t.Error("networkd configuration written into an image without networkd")
	}
}

func TestRunRefusesWithoutConfig(t *testing.T) {
	var got []Status
	_, err := Run(t.Context(), Options{Report: func(s Status) { got = append(got, s) }})
	if err == nil || len(got) != 1 || got[0].State != Failed {
		t.Errorf("Run without config: %v, statuses %+v", err, got)
	}
	// A layout that does not parse fails before any disk is touched.
	got = nil
	_, err = Run(t.Context(), Options{Config: &Config{Image: "x", Layout: "part root rest ext5 /"}, Report: func(s Status) { got = append(got, s) }})
	if err == nil || !strings.Contains(err.Error(), `step "layout"`) || !strings.Contains(err.Error(), "ext5") || got[len(got)-1].State != Failed {
		t.Errorf("bad layout: %v %+v", err, got)
	}
}

func TestHeartbeat(t *testing.T) {
	old := Heartbeat
	Heartbeat = 10 * time.Millisecond
	defer func() { Heartbeat = old }()
	var mu gosync.Mutex
	var got []Status
	// A layout on a missing disk fails at "layout"; the reports are slow
	// enough for heartbeats to come in between, and none may follow the
	// failure.
	_, err := Run(t.Context(), Options{Config: &Config{Image: "x", Layout: "disk /dev/sim-no-such-disk\npart root rest ext4 /"},
		Report: func(s Status) {
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
			if s.Step == "start" {
				time.Sleep(50 * time.Millisecond)
			}
		}})
	if err == nil {
		t.Fatal("install on a missing disk succeeded")
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	beats := 0
	for _, s := range got {
		if s.Message == "still working" {
			beats++
		}
	}
	if beats == 0 {
		t.Errorf("no heartbeat in %+v", got)
	}
	if last := got[len(got)-1]; last.State != Failed {
		t.Errorf("last status %+v; want failed", last)
	}
}

// TestCheckSignedEffective: under a policy that requires signatures, the
// node's effective commit (unsigned, made on the node) passes when the
// image and overrides it was made from are signed and its tree is theirs
// laid over each other; an unsigned override, or a commit dressed as an
// effective one with another tree, is refused, and the checkout with it.
func TestCheckSignedEffective(t *testing.T) {
	base := t.TempDir()
	st := openStore(t, filepath.Join(base, "store"))
	img, ov, evil := filepath.Join(base, "img"), filepath.Join(base, "ov"), filepath.Join(base, "evil")
	write(t, filepath.Join(img, "etc/motd"), "image\n", 0o644)
	write(t, filepath.Join(img, "etc/hosts"), "127.0.0.1\tlocalhost\n", 0o644)
	write(t, filepath.Join(ov, "etc/motd"), "override\n", 0o644)
	write(t, filepath.Join(evil, "etc/motd"), "evil\n", 0o644)
	commit := func(dir, image string) chunk.ID {
		id, _, err := client.Commit(t.Context(), st, dir, client.CommitOptions{Image: image})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	imgID, ovID, unsignedOv, evilID := commit(img, "img"), commit(ov, "site@override"), commit(evil, "x@override"), commit(evil, "evil")
	admin, _ := sign.Generate("admin")
	for _, id := range []chunk.ID{imgID, ovID} {
		raw, _ := st.CommitRaw(id)
		if err := st.PutSignature(id, admin.Sign(raw)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.TrustKey(admin.Public()); err != nil {
		t.Fatal(err)
	}
	if err := st.SetRequireSignature(true); err != nil {
		t.Fatal(err)
	}
	good, err := Effective(st, imgID, []Doc{{Name: "site", Commit: ovID}}, "n1")
	if err != nil || good == imgID {
		t.Fatalf("effective: %s %v", good.Short(), err)
	}
	bad, err := Effective(st, imgID, []Doc{{Name: "x", Commit: unsignedOv}}, "n1")
	if err != nil {
		t.Fatal(err)
	}
	// Dressed as an effective commit of the signed image and override,
	// with the evil image's tree.
	ec, _ := st.Commit(evilID)
	forged, err := st.PutCommitShallow(&store.Commit{Tree: ec.Tree, Parents: []chunk.ID{imgID, ovID}, Time: ec.Time, Author: effectiveAuthor,
		Host: "n1", Message: "img + overrides site for n1", Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		id   chunk.ID
		want string // "" passes
	}{
		{"signed image", imgID, ""},
		{"effective of signed commits", good, ""},
		{"unsigned image", evilID, "it is not signed"},
		{"unsigned override", bad, "made from " + unsignedOv.Short()},
		{"forged tree", forged, "not what its signed parents give"},
	} {
		err := CheckSigned(st, tc.id, false)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
		dst := filepath.Join(base, "co", strings.ReplaceAll(tc.name, " ", "-"))
		_, err = client.Checkout(t.Context(), st, tc.id, dst, client.CheckoutOptions{NoSync: true,
			Verify: func(id chunk.ID) error { return CheckSigned(st, id, false) }})
		if (err == nil) != (tc.want == "") {
			t.Errorf("%s: checkout: %v", tc.name, err)
		}
	}
	// Without Verify the store's own check applies: the effective commit
	// itself is unsigned.
	if _, err := client.Checkout(t.Context(), st, good, filepath.Join(base, "plain"), client.CheckoutOptions{NoSync: true}); err == nil {
		t.Error("checkout without Verify accepted an unsigned commit")
	}
}
