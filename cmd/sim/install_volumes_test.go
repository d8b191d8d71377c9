package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// volLab is a store with the corpus v1 image served by a sim serve, and
// loop disks, for the installs onto layouts of several disks, btrfs
// subvolumes, arrays and LVM.
type volLab struct {
	t     *testing.T
	dir   string
	store string
	url   string
}

func newVolLab(t *testing.T, tools ...string) *volLab {
	t.Helper()
	if testing.Short() {
		t.Skip("loop-device install: skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("loop-device install: needs root (losetup, mkfs, mount)")
	}
	for _, tool := range append([]string{"losetup", "mkfs.ext4", "mkfs.xfs", "mkswap", "blkid", "chroot"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("loop-device install: no %s", tool)
		}
	}
	v1 := filepath.Join(corpus(t), "v1")
	dir := t.TempDir()
	m := &volLab{t: t, dir: dir, store: filepath.Join(dir, "store")}
	ok(t, m.store, "init")
	ok(t, m.store, "commit", v1, "--image", "deb")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	srv := simProcess("--store", m.store, "serve", "--listen", addr)
	var slog bytes.Buffer
	srv.Stderr = &slog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", slog.String())
		}
	})
	m.url = "http://" + addr
	for i := 0; ; i++ {
		if r, err := http.Get(m.url + "/v1/refs"); err == nil {
			r.Body.Close()
			break
		}
		if i > 200 {
			t.Fatalf("sim serve did not come up: %s", slog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m
}

// loop attaches a sparse file of size as a loop device with partitions,
// detached when the test ends (after its unmounts: cleanups run last
// registered first).
func (m *volLab) loop(size string) string {
	m.t.Helper()
	f := filepath.Join(m.dir, fmt.Sprintf("disk%d.raw", time.Now().UnixNano()))
	if out, err := exec.Command("truncate", "-s", size, f).CombinedOutput(); err != nil {
		m.t.Fatalf("%v %s", err, out)
	}
	out, err := exec.Command("losetup", "-f", "--show", "-P", f).Output()
	if err != nil {
		m.t.Skipf("losetup: %v (no loop devices here?)", err)
	}
	dev := strings.TrimSpace(string(out))
	m.t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			m.t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	return dev
}

// mount mounts dev on a fresh directory (read-only unless rw), with
// data (subvol=…), until the test ends; EBUSY right after an unmount is
// retried briefly.
func (m *volLab) mount(dev, fs, data string, at string) string {
	m.t.Helper()
	if at == "" {
		var err error
		if at, err = os.MkdirTemp(m.dir, "mnt-"); err != nil {
			m.t.Fatal(err)
		}
	}
	var err error
	for i := 0; i < 200; i++ {
		if err = unix.Mount(dev, at, fs, unix.MS_RDONLY, data); err != unix.EBUSY {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		m.t.Fatalf("mount %s (%s %s) on %s: %v", dev, fs, data, at, err)
	}
	m.t.Cleanup(func() { unix.Unmount(at, 0) })
	return at
}

// waitFree waits until nothing holds dev or its partitions (an unmount
// reaches the host's other mount namespaces a moment later), so the next
// install can open it exclusively.
func (m *volLab) waitFree(dev string) {
	m.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		busy := false
		parts, _ := filepath.Glob(dev + "p*")
		for _, p := range append(parts, dev) {
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_EXCL, 0)
			if err != nil {
				busy = true
				break
			}
			unix.Close(fd)
		}
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s still busy 20 s after its filesystems were unmounted", dev)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func probe(dev, tag string) string {
	out, _ := exec.Command("blkid", "-p", "-o", "value", "-s", tag, dev).Output()
	return strings.TrimSpace(string(out))
}

// treeDiff is `sim diff IMAGE DIR` minus the paths the installer writes
// on purpose (the node's identity and store).
func (m *volLab) treeDiff(image, dir string, expected ...string) []string {
	m.t.Helper()
	r := sim(m.t, m.store, "diff", image, dir)
	allowed := append([]string{"/etc/fstab", "/etc/hostname", "/etc/hosts", "/var/lib/sim", "/etc/systemd/system/sim-agent.service",
		"/etc/systemd/system/multi-user.target.wants/sim-agent.service", "/etc/systemd/network",
		"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"}, expected...)
	var out []string
next:
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		p := f[1]
		for _, e := range allowed {
			// The path itself, under it, or a directory above it whose
			// mtime changed because the installer wrote there.
			if p == e || strings.HasPrefix(p, e+"/") || (strings.HasSuffix(line, "(mtime)") && strings.HasPrefix(e, p+"/")) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

// TestInstallLoopBtrfs installs corpus v1 onto two loop disks: the root
// and /home as btrfs subvolumes on the first, an xfs /data and a kept
// ext4 /scratch on the second, keeping the image's NFS and tmpfs fstab
// lines; then checks the tree is the image's exactly, fstab names every
// filesystem by UUID (subvolumes with subvol=), and a reinstall keeps
// /scratch. Then the errors that name the line and the disk at fault.
func TestInstallLoopBtrfs(t *testing.T) {
	m := newVolLab(t, "mkfs.btrfs", "btrfs")
	if fs, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(fs), "\tbtrfs\n") {
		t.Skip("no btrfs in /proc/filesystems")
	}
	a, b := m.loop("1500M"), m.loop("1200M")
	layoutText := fmt.Sprintf(`sim-layout 1
bootloader none
disk %s
part sys rest btrfs label=sys
subvol sys @ /
subvol sys @home /home options=noatime
disk %s
part data 400MiB xfs /data label=data
part swap 16MiB swap
part scratch rest ext4 /scratch keep
`, a, b)
	writeFiles(t, m.dir, map[string]string{
		"layout":              layoutText,
		"ov/etc/fstab":        "UUID=0ld-root / ext4 defaults 0 1\nnfs1:/export/apps /apps nfs ro,hard 0 0\ntmpfs /tmp tmpfs mode=1777 0 0\n/data/shared /srv/shared none bind 0 0\n",
		"ov/home/alice/notes": "alice's notes\n",
	})
	ok(t, m.store, "layout", "set", "deb", filepath.Join(m.dir, "layout"))
	ok(t, m.store, "override", "set", "site", filepath.Join(m.dir, "ov"))
	ok(t, m.store, "node", "add", "b1", "--mac", "52:54:00:5e:02:01", "--image", "deb", "--override", "site")
	install := func() {
		t.Helper()
		start := time.Now()
		r := sim(t, filepath.Join(m.dir, "unused"), "install", "--from", m.url, "--node", "b1", "--target", filepath.Join(m.dir, "target"), "--json")
		if r.code != 0 {
			t.Fatalf("install: %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		t.Logf("FIGURE installed corpus v1 onto btrfs subvolumes and a second disk in %.1f s", time.Since(start).Seconds())
	}
	install()
	for d, want := range map[string]string{a + "p1": "btrfs", b + "p1": "xfs", b + "p2": "swap", b + "p3": "ext4"} {
		if got := probe(d, "TYPE"); got != want {
			t.Errorf("%s: TYPE %q, want %s", d, got, want)
		}
	}
	root := m.mount(a+"p1", "btrfs", "subvol=@", "")
	m.mount(a+"p1", "btrfs", "subvol=@home", filepath.Join(root, "home"))
	if d := m.treeDiff("deb", root, "/home/alice", "/data", "/scratch"); len(d) > 0 {
		t.Errorf("installed tree differs from the image beyond identity and override files:\n%s", strings.Join(d, "\n"))
	}
	if got := readFile(t, filepath.Join(root, "home/alice/notes")); got != "alice's notes\n" {
		t.Errorf("/home/alice/notes in subvolume @home: %q", got)
	}
	// The top level holds the two subvolumes and nothing else.
	top := m.mount(a+"p1", "btrfs", "subvolid=5", "")
	if ents, err := os.ReadDir(top); err != nil || len(ents) != 2 || ents[0].Name() != "@" || ents[1].Name() != "@home" {
		t.Errorf("btrfs top level: %v %v; want @ and @home", ents, err)
	}
	fstab := readFile(t, filepath.Join(root, "etc/fstab"))
	sys := probe(a+"p1", "UUID")
	for _, want := range []string{
		"UUID=" + sys + "\t/\tbtrfs\tsubvol=@\t0\t0\n",
		"UUID=" + sys + "\t/home\tbtrfs\tsubvol=@home,noatime\t0\t0\n",
		"UUID=" + probe(b+"p1", "UUID") + "\t/data\txfs\t",
		"UUID=" + probe(b+"p3", "UUID") + "\t/scratch\text4\t",
		"UUID=" + probe(b+"p2", "UUID") + "\tnone\tswap\t",
		"\nnfs1:/export/apps /apps nfs ro,hard 0 0\n", "\ntmpfs /tmp tmpfs mode=1777 0 0\n", "\n/data/shared /srv/shared none bind 0 0\n",
	} {
		if !strings.Contains(fstab, want) {
			t.Errorf("fstab lacks %q:\n%s", want, fstab)
		}
	}
	if strings.Contains(fstab, "0ld-root") {
		t.Errorf("fstab keeps the image's old root:\n%s", fstab)
	}
	// /scratch is kept by a reinstall: a file written there survives.
	scratchUUID := probe(b+"p3", "UUID")
	for _, d := range []string{top, filepath.Join(root, "home"), root} {
		unix.Unmount(d, 0)
	}
	sc := filepath.Join(m.dir, "scratch")
	os.MkdirAll(sc, 0o755)
	if err := unix.Mount(b+"p3", sc, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(sc, "results.dat"), []byte("four hours of compute\n"), 0o644)
	unix.Unmount(sc, 0)
	m.waitFree(a)
	m.waitFree(b)
	install()
	if got := probe(b+"p3", "UUID"); got != scratchUUID {
		t.Errorf("reinstall: /scratch UUID %s, was %s (reformatted)", got, scratchUUID)
	}
	sc2 := m.mount(b+"p3", "ext4", "", "")
	if got := readFile(t, filepath.Join(sc2, "results.dat")); got != "four hours of compute\n" {
		t.Errorf("reinstall: /scratch/results.dat %q", got)
	}
	unix.Unmount(sc2, 0)

	// Errors name the line and the disk at fault, before any disk is
	// written.
	for _, c := range []struct{ layout, want string }{
		{fmt.Sprintf("bootloader none\ndisk %s\npart root rest ext4 /\ndisk /dev/sim-no-such-disk\npart d rest xfs /d\n", a),
			"layout line 4: disk /dev/sim-no-such-disk"},
		{fmt.Sprintf("bootloader none\ndisk %s\npart root rest ext4 /\ndisk %s\npart d 2GiB xfs /d\n", a, b),
			"layout line 4: disk " + b + " too small for the layout"},
		{fmt.Sprintf("bootloader none\ndisk %s\npart root rest ext4 /\ndisk %s\npart d 1GiB xfs /d\npart e 1MiB xfs /e\n", a, b),
			"layout line 6 (disk " + b + "): partition \"e\": 1MiB is below the xfs minimum"},
	} {
		f := filepath.Join(m.dir, "bad-layout")
		os.WriteFile(f, []byte(c.layout), 0o644)
		ok(t, m.store, "layout", "set", "deb", f)
		r := sim(t, filepath.Join(m.dir, "unused"), "install", "--from", m.url, "--node", "b1", "--target", filepath.Join(m.dir, "target"))
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("install with layout\n%s: exit %d, stderr %s; want %q", c.layout, r.code, r.stderr, c.want)
		}
	}
	if got := probe(b+"p3", "UUID"); got != scratchUUID {
		t.Errorf("a failed install touched %s", b)
	}
}
