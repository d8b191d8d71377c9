package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

// TestInstallLoop runs `sim install` by hand (as from a rescue system)
// onto loop devices: the whole sequence but GRUB, natively and in
// seconds, then inspects the result; and checks that failures (a disk
// too small, a failing post-install script) leave no disk marked
// installed. The VM tests (metal_test.go) add the initrd and GRUB.
func TestInstallLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("loop-device install: skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("loop-device install: needs root (losetup, mkfs, mount)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "mkfs.vfat", "mkfs.xfs", "mkswap", "blkid", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("loop-device install: no %s", tool)
		}
	}
	v1 := filepath.Join(corpus(t), "v1")
	// The ESP only where this kernel can mount FAT (test containers may
	// lack the module).
	esp, fatFstab := "", "\t/boot/efi\tvfat\t"
	if fs, _ := os.ReadFile("/proc/filesystems"); strings.Contains(string(fs), "\tvfat\n") {
		esp = "part esp 100MiB esp /boot/efi\n"
	} else {
		t.Log("no vfat in /proc/filesystems: installing without an ESP")
		fatFstab = "\t/\t"
	}
	dir := t.TempDir()
	s := filepath.Join(dir, "store")
	ok(t, s, "init")
	ok(t, s, "commit", v1, "--image", "deb")
	writeFiles(t, dir, map[string]string{
		"layout":          "sim-layout 1\nbootloader none\npart root rest ext4 / label=root\n" + esp + "part data 300MiB xfs /data label=data\npart swap 8MiB swap\n",
		"ov/etc/motd":     "override motd\n",
		"ov/opt/site/new": "new file\n",
		"ok.sh":           "#!/bin/sh\nset -e\necho \"post $SIM_NODE $SIM_IMAGE\" > /etc/sim-post-marker\ntest -f /opt/site/new\n",
		"fail.sh":         "#!/bin/sh\necho failing on purpose >&2\nexit 3\n",
		// Pre-install scripts run in the installer (here: this machine)
		// before the disk is partitioned.
		"pre.sh":     "#!/bin/sh\nset -e\necho \"pre $SIM_NODE $SIM_DISK\" > " + filepath.Join(dir, "pre-marker") + "\n",
		"prefail.sh": "#!/bin/sh\necho disk check failed on purpose >&2\nexit 4\n",
	})
	ok(t, s, "layout", "set", "deb", filepath.Join(dir, "layout"))
	ok(t, s, "override", "set", "site", filepath.Join(dir, "ov"))
	ok(t, s, "script", "set", "ok", filepath.Join(dir, "ok.sh"))
	ok(t, s, "script", "set", "fail", filepath.Join(dir, "fail.sh"))
	ok(t, s, "script", "set", "pre", filepath.Join(dir, "pre.sh"))
	ok(t, s, "script", "set", "prefail", filepath.Join(dir, "prefail.sh"))
	ok(t, s, "node", "add", "n7", "--mac", "52:54:00:5e:01:07", "--image", "deb", "--override", "site", "--script", "ok", "--pre-script", "pre")
	ok(t, s, "node", "add", "n10", "--mac", "52:54:00:5e:01:10", "--image", "deb", "--pre-script", "prefail")
	ok(t, s, "node", "add", "n8", "--mac", "52:54:00:5e:01:08", "--image", "deb", "--script", "fail")
	// Trust: the admin signs the image and everything an install of n7
	// fetches; each node reports with its own token.
	keys := t.TempDir()
	ok(t, s, "key", "gen", "admin", "--dir", keys)
	ok(t, s, "key", "gen", "eve", "--dir", keys)
	ok(t, s, "sign", "deb", "deb@layout", "site@override", "ok@script", "pre@script", "--key", filepath.Join(keys, "admin.key"))
	tokenFile := func(node string) string {
		f := filepath.Join(dir, node+".token")
		os.WriteFile(f, []byte(lastLine(ok(t, s, "token", "add", node, "--role", "node"))+"\n"), 0o600)
		return f
	}
	n7tok, n8tok, n10tok := tokenFile("n7"), tokenFile("n8"), tokenFile("n10")
	// An image whose layout is signed but not the image itself.
	ok(t, s, "commit", v1, "--image", "deb-unsigned", "-m", "unsigned")
	ok(t, s, "layout", "set", "deb-unsigned", filepath.Join(dir, "layout"))
	ok(t, s, "sign", "deb-unsigned@layout", "--key", filepath.Join(keys, "admin.key"))

	// An old BIOS machine's layout: an msdos table, ext2 /boot, ext3 root.
	ok(t, s, "commit", v1, "--image", "deb-mbr", "-m", "for msdos")
	writeFiles(t, dir, map[string]string{"layout-mbr": "sim-layout 1\ndisk first msdos\nbootloader none\npart boot 64MiB ext2 /boot label=boot\npart root rest ext3 / label=root\npart swap 8MiB swap\n"})
	ok(t, s, "layout", "set", "deb-mbr", filepath.Join(dir, "layout-mbr"))
	// Its fstab (from an override: what the image's own would be) has an
	// NFS home and a bind mount, which the installed fstab keeps, and an
	// old root, which it drops.
	writeFiles(t, dir, map[string]string{"ov-mbr/etc/fstab": "UUID=0ld-root / ext4 defaults 0 1\nnfs1:/export/home /home nfs rw,hard 0 0\n/srv/apps /opt/apps none bind 0 0\n"})
	ok(t, s, "override", "set", "mbr-fstab", filepath.Join(dir, "ov-mbr"))
	ok(t, s, "node", "add", "n9", "--mac", "52:54:00:5e:01:09", "--image", "deb-mbr", "--override", "mbr-fstab")
	n9tok := tokenFile("n9")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	srv := simProcess("--store", s, "serve", "--listen", addr)
	var slog bytes.Buffer
	srv.Stderr = &slog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Signal(syscall.SIGTERM); srv.Wait() }()
	url := "http://" + addr
	for i := 0; ; i++ {
		if r, err := http.Get(url + "/v1/refs"); err == nil {
			r.Body.Close()
			break
		}
		if i > 100 {
			t.Fatalf("sim serve did not come up: %s", slog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	loop := func(size string) string {
		f := filepath.Join(dir, fmt.Sprintf("disk%d.raw", time.Now().UnixNano()))
		if out, err := exec.Command("truncate", "-s", size, f).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		out, err := exec.Command("losetup", "-f", "--show", "-P", f).Output()
		if err != nil {
			t.Skipf("losetup: %v (no loop devices here?)", err)
		}
		dev := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
		return dev
	}
	// mountRO mounts partition part (p1, p2, ...) of dev read-only.
	mountRO := func(t *testing.T, dev, part, fs string) string {
		mnt := filepath.Join(dir, "inspect"+filepath.Base(dev)+part)
		os.MkdirAll(mnt, 0o755)
		// The host's shared mounts may hold the just-unmounted filesystem
		// a moment longer in another mount namespace (a lab of the other
		// tests): retry briefly on EBUSY.
		var err error
		for i := 0; i < 40; i++ {
			if err = unix.Mount(dev+part, mnt, fs, unix.MS_RDONLY, ""); err != unix.EBUSY {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("mount %s%s: %v", dev, part, err)
		}
		t.Cleanup(func() { unix.Unmount(mnt, 0) })
		return mnt
	}
	rootOf := func(t *testing.T, dev string) string { return mountRO(t, dev, "p1", "ext4") }
	target := filepath.Join(dir, "target")

	t.Run("msdos", func(t *testing.T) {
		dev := loop("1200M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n9", "--disk", dev, "--target", filepath.Join(dir, "target-mbr"), "--json",
			"--token-file", n9tok)
		if r.code != 0 {
			t.Fatalf("install: %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		probe := func(d, tag string) string {
			out, _ := exec.Command("blkid", "-p", "-o", "value", "-s", tag, d).Output()
			return strings.TrimSpace(string(out))
		}
		if got := probe(dev, "PTTYPE"); got != "dos" {
			t.Errorf("%s: partition table %q, want dos", dev, got)
		}
		for d, want := range map[string]string{dev + "p1": "ext2", dev + "p2": "ext3", dev + "p3": "swap"} {
			if got := probe(d, "TYPE"); got != want {
				t.Errorf("%s: TYPE %q, want %s", d, got, want)
			}
		}
		mnt := mountRO(t, dev, "p2", "ext3")
		if b, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(b) != "n9\n" {
			t.Errorf("hostname %q %v", b, err)
		}
		fstab, err := os.ReadFile(filepath.Join(mnt, "etc/fstab"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"UUID=" + probe(dev+"p2", "UUID") + "\t/\text3\t", "UUID=" + probe(dev+"p1", "UUID") + "\t/boot\text2\t", "\tnone\tswap\t",
			"\nnfs1:/export/home /home nfs rw,hard 0 0\n", "\n/srv/apps /opt/apps none bind 0 0\n"} {
			if !strings.Contains(string(fstab), m) {
				t.Errorf("fstab lacks %q:\n%s", m, fstab)
			}
		}
		if strings.Contains(string(fstab), "0ld-root") {
			t.Errorf("fstab keeps the image's old root:\n%s", fstab)
		}
	})

	t.Run("install", func(t *testing.T) {
		dev := loop("1200M")
		start := time.Now()
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n7", "--disk", dev, "--target", target, "--json",
			"--token-file", n7tok, "--trust", filepath.Join(keys, "admin.pub"))
		if r.code != 0 {
			t.Fatalf("install: %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		var res install.Result
		decodeJSON(t, r.stdout, &res)
		t.Logf("installed corpus v1 on %s in %.1fs, %.1f MB received", dev, time.Since(start).Seconds(), float64(res.Bytes)/1e6)
		if got := readFile(t, filepath.Join(dir, "pre-marker")); got != "pre n7 "+dev+"\n" {
			t.Errorf("the pre-install script wrote %q, want %q", got, "pre n7 "+dev+"\n")
		}
		// The disk read back as a layout (nothing mounted: the partition
		// named root becomes /).
		capt := ok(t, s, "layout", "capture", dev)
		for _, want := range []string{"part root ", " ext4 / label=root\n", "part data 300MiB xfs /mnt/data label=data", "part swap rest swap"} {
			if !strings.Contains(capt, want) {
				t.Errorf("layout capture lacks %q:\n%s", want, capt)
			}
		}
		root := rootOf(t, dev)
		read := func(p string) string {
			b, err := os.ReadFile(filepath.Join(root, p))
			if err != nil {
				t.Errorf("%s: %v", p, err)
			}
			return string(b)
		}
		if got := read("etc/hostname"); got != "n7\n" {
			t.Errorf("hostname %q", got)
		}
		if got := read("etc/hosts"); !strings.Contains(got, "127.0.1.1\tn7\n") {
			t.Errorf("hosts:\n%s", got)
		}
		if got := read("etc/motd"); got != "override motd\n" {
			t.Errorf("motd (override) %q", got)
		}
		if got := read("etc/sim-post-marker"); got != "post n7 deb\n" {
			t.Errorf("post-install marker %q", got)
		}
		fstab := read("etc/fstab")
		for _, m := range []string{"\t/\text4\t", fatFstab, "\t/data\txfs\t", "\tnone\tswap\t"} {
			if !strings.Contains(fstab, m) {
				t.Errorf("fstab lacks %q:\n%s", m, fstab)
			}
		}
		// Every UUID fstab names is the one on the partition.
		for _, line := range strings.Split(fstab, "\n") {
			if u, ok := strings.CutPrefix(strings.Fields(line + " x")[0], "UUID="); ok {
				out, err := exec.Command("blkid", "-U", u).Output()
				if err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), dev+"p") {
					t.Errorf("fstab UUID %s: blkid says %q %v", u, out, err)
				}
			}
		}
		var inst install.Installed
		decodeJSON(t, read("var/lib/sim/installed.json"), &inst)
		if inst.Node != "n7" || inst.Image != "deb" || inst.Commit != res.Installed.Commit || inst.Disk != dev {
			t.Errorf("installed.json %+v", inst)
		}
		if _, err := os.Stat(filepath.Join(root, "data")); err != nil {
			t.Errorf("/data mount point: %v", err)
		}
		var st map[string]install.Status
		resp, err := http.Get(url + "/v1/install/status")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st["n7"].State != install.Done || st["n7"].Bytes != res.Bytes {
			t.Errorf("server status of n7: %+v", st["n7"])
		}
		// sim nodes, forwarded to the running server, shows it too.
		if out := ok(t, s, "nodes"); !strings.Contains(out, "done done") {
			t.Errorf("sim nodes:\n%s", out)
		}
		// The node store on the new root knows its base for later updates.
		unix.Unmount(root, 0)
		if err := unix.Mount(dev+"p1", root, "ext4", 0, ""); err != nil {
			t.Fatal(err)
		}
		nst, err := store.Open(filepath.Join(root, "var/lib/sim"))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := client.LastCheckout(nst, "/")
		pol, perr := nst.Policy()
		nst.Close()
		// What was checked out is the image with the override laid over it.
		if inst.Effective.IsZero() || inst.Effective == inst.Commit || len(inst.Overrides) != 1 || inst.Overrides[0].Name != "site" {
			t.Errorf("installed.json: effective %s, overrides %+v; want the image with override site", inst.Effective.Short(), inst.Overrides)
		}
		if err != nil || rec.Commit != inst.Effective {
			t.Errorf("checkout record of / in the node store: %+v %v; want commit %s", rec, err, inst.Effective.Short())
		}
		// The agent is on the node, enabled, where updates leave it.
		if !inst.Agent {
			t.Error("installed.json: no agent")
		}
		for _, p := range []string{"var/lib/sim/bin/sim", "etc/systemd/system/sim-agent.service", "etc/systemd/system/multi-user.target.wants/sim-agent.service"} {
			if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
				t.Errorf("agent: %v", err)
			}
		}
		// It keeps the trust policy and its token for later updates.
		if perr != nil || !pol.Require || len(pol.Keys) != 1 || pol.Keys[0].Name != "admin" {
			t.Errorf("node store policy: %+v %v", pol, perr)
		}
		tf := filepath.Join(root, "var/lib/sim", install.TokenName)
		if b, err := os.ReadFile(tf); err != nil || strings.TrimSpace(string(b)) != strings.TrimSpace(readFile(t, n7tok)) {
			t.Errorf("node token in its store: %q %v", b, err)
		}
		if fi, err := os.Stat(tf); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("node token file mode: %v %v", fi, err)
		}
		// The per-node iPXE script: n7 is installed, so its disk; n8
		// (never installed) the installer.
		ipxe := func(mac string) string {
			resp, err := http.Get(url + "/v1/install/ipxe?mac=" + mac)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(b)
		}
		if b := ipxe("52-54-00-5e-01-07"); !strings.Contains(b, "sanboot --no-describe --drive 0x80") || strings.Contains(b, "kernel ") {
			t.Errorf("ipxe script of the installed n7:\n%s", b)
		}
		if b := ipxe("52-54-00-5e-01-08"); !strings.Contains(b, "sim.server="+url+" sim.node=n8") || !strings.Contains(b, "initrd --name initrd.img "+url+"/v1/install/initrd") || !strings.Contains(b, "kernel "+url+"/v1/install/kernel initrd=initrd.img ") {
			t.Errorf("ipxe script of n8:\n%s", b)
		}
		if resp, err := http.Get(url + "/v1/install/kernel"); err != nil || resp.StatusCode != 404 {
			t.Errorf("kernel without --netboot: %v %v", resp.StatusCode, err)
		}
	})

	t.Run("untrusted-signer", func(t *testing.T) {
		// A node that trusts only eve refuses the admin's image: at the
		// layout, before anything is written to the disk, and says so
		// to the server with its token.
		dev := loop("1200M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n8", "--disk", dev, "--target", target,
			"--token-file", n8tok, "--trust", filepath.Join(keys, "eve.pub"))
		if r.code != 1 || !strings.Contains(r.stderr, `install failed at step "layout"`) || !strings.Contains(r.stderr, "refusing commit") ||
			!strings.Contains(r.stderr, "trusted: eve") {
			t.Fatalf("untrusted signer: exit %d\n%s", r.code, r.stderr)
		}
		b := make([]byte, 8)
		if f, err := os.Open(dev); err == nil {
			f.ReadAt(b, 512)
			f.Close()
		}
		if string(b) == "EFI PART" {
			t.Error("the disk was partitioned for an image the node does not trust")
		}
		var st map[string]install.Status
		resp, err := http.Get(url + "/v1/install/status")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st["n8"].State != install.Failed || st["n8"].Step != "layout" {
			t.Errorf("server status of n8: %+v", st["n8"])
		}
	})

	t.Run("unsigned-image", func(t *testing.T) {
		// Its layout is signed, the image is not: refused before the
		// disk is touched, not after it was partitioned.
		dev := loop("1200M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n8", "--image", "deb-unsigned", "--disk", dev, "--target", target,
			"--token-file", n8tok, "--trust", filepath.Join(keys, "admin.pub"))
		if r.code != 1 || !strings.Contains(r.stderr, `install failed at step "layout"`) || !strings.Contains(r.stderr, "image deb-unsigned") ||
			!strings.Contains(r.stderr, "it is not signed") {
			t.Fatalf("unsigned image: exit %d\n%s", r.code, r.stderr)
		}
		b := make([]byte, 8)
		if f, err := os.Open(dev); err == nil {
			f.ReadAt(b, 512)
			f.Close()
		}
		if string(b) == "EFI PART" {
			t.Error("the disk was partitioned for an unsigned image")
		}
	})

	t.Run("pre-script-fails", func(t *testing.T) {
		// A failing pre-install script stops the install before the disk
		// is touched.
		dev := loop("1200M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n10", "--disk", dev, "--target", target, "--token-file", n10tok)
		if r.code != 1 || !strings.Contains(r.stderr, `install failed at step "pre-scripts"`) || !strings.Contains(r.stderr, "pre-install script prefail: exit status 4") ||
			!strings.Contains(r.stderr, "disk check failed on purpose") {
			t.Fatalf("failing pre-install script: exit %d\n%s", r.code, r.stderr)
		}
		b := make([]byte, 8)
		if f, err := os.Open(dev); err == nil {
			f.ReadAt(b, 512)
			f.Close()
		}
		if string(b) == "EFI PART" {
			t.Error("the disk was partitioned although the pre-install script failed")
		}
	})

	t.Run("script-fails", func(t *testing.T) {
		dev := loop("1200M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n8", "--disk", dev, "--target", target, "--token-file", n8tok)
		if r.code != 1 || !strings.Contains(r.stderr, `install failed at step "scripts"`) || !strings.Contains(r.stderr, "failing on purpose") {
			t.Fatalf("failing script: exit %d\n%s", r.code, r.stderr)
		}
		root := rootOf(t, dev)
		if _, err := os.Stat(filepath.Join(root, "var/lib/sim/installed.json")); err == nil {
			t.Error("a failed install left installed.json")
		}
		if m, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(m), target) {
			t.Errorf("mounts left under %s after a failure", target)
		}
	})

	t.Run("too-small", func(t *testing.T) {
		dev := loop("300M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n7", "--disk", dev, "--target", target, "--token-file", n7tok)
		if r.code != 1 || !strings.Contains(r.stderr, "disk "+dev+" too small for the layout") || !strings.Contains(r.stderr, `step "layout"`) {
			t.Fatalf("too small: exit %d\n%s", r.code, r.stderr)
		}
	})

	t.Run("unknown-node", func(t *testing.T) {
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--mac", "52:54:00:00:99:99", "--disk", "/dev/null", "--target", target)
		if r.code != 1 || !strings.Contains(r.stderr, "no node has MAC 52:54:00:00:99:99") {
			t.Fatalf("unknown MAC: exit %d\n%s", r.code, r.stderr)
		}
	})
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
