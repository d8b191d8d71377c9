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

// rhelMarkers turn Debian's tree (corpus v1) into a RHEL-style one where
// the installer looks: the release files, SELinux enforcing,
// NetworkManager installed and enabled, grub2-install/grub2-mkconfig
// (wrappers that record how they were called: no rpm, no real GRUB
// here), GRUB's BIOS modules, a BLS entry and /etc/kernel/cmdline naming
// the golden client's root.
var rhelMarkers = map[string]string{
	"etc/redhat-release":                                  "Rocky Linux release 9.4 (Blue Onyx)\n",
	"etc/os-release":                                      "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.4\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
	"etc/selinux/config":                                  "SELINUX=enforcing\nSELINUXTYPE=targeted\n",
	"usr/sbin/NetworkManager":                             "#!/bin/sh\nexit 0\n",
	"usr/lib/systemd/system/NetworkManager.service":       "[Unit]\nDescription=Network Manager\n[Service]\nExecStart=/usr/sbin/NetworkManager --no-daemon\n",
	"usr/sbin/grub2-install":                              "#!/bin/sh\necho \"grub2-install $*\" >>/var/log/sim-grub2-calls\n",
	"usr/sbin/grub2-mkconfig":                             "#!/bin/sh\necho \"grub2-mkconfig $*\" >>/var/log/sim-grub2-calls\n[ \"$1\" = -o ] && mkdir -p \"$(dirname \"$2\")\" && echo '# blscfg' >\"$2\"\n",
	"usr/lib/grub/i386-pc/modinfo.sh":                     "# grub2-pc-modules\n",
	"etc/kernel/cmdline":                                  "root=/dev/mapper/rl-root ro crashkernel=auto\n",
	"boot/loader/entries/0123-5.14.0-427.el9.x86_64.conf": "title Rocky Linux (5.14.0-427.el9.x86_64) 9.4\nversion 5.14.0-427.el9.x86_64\nlinux /boot/vmlinuz-5.14.0-427.el9.x86_64\ninitrd /boot/initramfs-5.14.0-427.el9.x86_64.img\noptions root=/dev/mapper/rl-root ro crashkernel=auto rhgb quiet\ngrub_class rocky\n",
}

// TestInstallLoopRHEL installs a RHEL-style tree (Debian's with the
// RHEL markers laid over it) onto a loop device through `sim install`,
// the node's network a bond, a VLAN and a static NIC with IPv6, and
// checks the installer's actions on its files: NetworkManager keyfiles
// (not networkd's), grub2-* called with the disk and /boot/grub2, the
// BLS entry at the new root's UUID, /.autorelabel. And an image of no
// network stack the installer knows, given a static IP, fails the
// install naming why.
func TestInstallLoopRHEL(t *testing.T) {
	if testing.Short() {
		t.Skip("loop-device install: skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("loop-device install: needs root (losetup, mkfs, mount, chroot)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "blkid", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("loop-device install: no %s", tool)
		}
	}
	v1 := filepath.Join(corpus(t), "v1")
	dir := t.TempDir()
	s := filepath.Join(dir, "store")
	ok(t, s, "init")
	ok(t, s, "commit", v1, "--image", "rocky", "-m", "Debian's tree, RHEL markers from the override")
	writeFiles(t, dir, map[string]string{
		"layout":        "sim-layout 1\nbootloader grub\npart bios 1MiB bios_grub\npart root rest ext4 / label=root\n",
		"tiny-layout":   "sim-layout 1\nbootloader none\npart root rest ext4 /\n",
		"tiny/etc/motd": "no network stack in here\n",
		"net.spec": "# n21's network\nnic eth0 mac=52:54:00:5e:02:21 ip=198.18.2.21/24 ip=2001:db8::21/64 gw=198.18.2.1\n" +
			"nic eth1 mac=52:54:00:5e:03:21\nnic eth2 mac=52:54:00:5e:04:21\nbond bond0 slaves=eth1,eth2 mode=active-backup mtu=9000\n" +
			"vlan bond0.42 link=bond0 id=42 ip=198.19.42.21/24\ndns 198.18.2.1\nsearch cluster.example\n",
	})
	for p, b := range rhelMarkers {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(p, "usr/sbin/") {
			mode = 0o755
		}
		f := filepath.Join(dir, "rhel", p)
		os.MkdirAll(filepath.Dir(f), 0o755)
		if err := os.WriteFile(f, []byte(b), mode); err != nil {
			t.Fatal(err)
		}
	}
	wants := filepath.Join(dir, "rhel/etc/systemd/system/multi-user.target.wants")
	os.MkdirAll(wants, 0o755)
	if err := os.Symlink("/usr/lib/systemd/system/NetworkManager.service", filepath.Join(wants, "NetworkManager.service")); err != nil {
		t.Fatal(err)
	}
	ok(t, s, "override", "set", "rhel", filepath.Join(dir, "rhel"))
	ok(t, s, "layout", "set", "rocky", filepath.Join(dir, "layout"))
	ok(t, s, "node", "add", "n21", "--image", "rocky", "--override", "rhel", "--net-file", filepath.Join(dir, "net.spec"))
	ok(t, s, "commit", filepath.Join(dir, "tiny"), "--image", "tiny")
	ok(t, s, "layout", "set", "tiny", filepath.Join(dir, "tiny-layout"))
	ok(t, s, "node", "add", "n22", "--image", "tiny", "--mac", "52:54:00:5e:02:22", "--ip", "198.18.2.22/24")

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
	// n21 is recognised by its spec's first NIC's MAC.
	if resp, err := http.Get(url + "/v1/install/ipxe?mac=52:54:00:5e:02:21"); err != nil {
		t.Fatal(err)
	} else {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		if !strings.Contains(b.String(), "sim.node=n21") {
			t.Errorf("iPXE script for n21's first NIC:\n%s", b.String())
		}
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

	t.Run("rhel", func(t *testing.T) {
		dev := loop("1200M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n21", "--disk", dev, "--target", filepath.Join(dir, "target"))
		if r.code != 0 {
			t.Fatalf("install: %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr+r.stdout, "network (NetworkManager)") || !strings.Contains(r.stderr+r.stdout, "SELinux relabel at first boot") {
			t.Errorf("the install did not say what it configured:\n%s\n%s", r.stdout, r.stderr)
		}
		mnt := filepath.Join(dir, "inspect")
		os.MkdirAll(mnt, 0o755)
		var merr error
		for i := 0; i < 40; i++ {
			if merr = unix.Mount(dev+"p2", mnt, "ext4", unix.MS_RDONLY, ""); merr != unix.EBUSY {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if merr != nil {
			t.Fatalf("mount %sp2: %v", dev, merr)
		}
		defer unix.Unmount(mnt, 0)
		read := func(p string) string {
			b, err := os.ReadFile(filepath.Join(mnt, p))
			if err != nil {
				t.Errorf("%s: %v", p, err)
			}
			return string(b)
		}
		out, _ := exec.Command("blkid", "-p", "-o", "value", "-s", "UUID", dev+"p2").Output()
		uuid := strings.TrimSpace(string(out))
		if uuid == "" {
			t.Fatal("no UUID on the root")
		}
		if got := read("var/log/sim-grub2-calls"); got != "grub2-install --target=i386-pc "+dev+"\ngrub2-mkconfig -o /boot/grub2/grub.cfg\n" {
			t.Errorf("grub2 calls:\n%s", got)
		}
		if got := read("boot/grub2/grub.cfg"); got != "# blscfg\n" {
			t.Errorf("grub.cfg %q", got)
		}
		if got := read("boot/loader/entries/0123-5.14.0-427.el9.x86_64.conf"); !strings.Contains(got, "\noptions root=UUID="+uuid+" ro crashkernel=auto rhgb quiet\n") {
			t.Errorf("BLS entry not at the new root %s:\n%s", uuid, got)
		}
		if got := read("etc/kernel/cmdline"); got != "root=UUID="+uuid+" ro crashkernel=auto\n" {
			t.Errorf("/etc/kernel/cmdline %q", got)
		}
		if _, err := os.Stat(filepath.Join(mnt, ".autorelabel")); err != nil {
			t.Errorf("no /.autorelabel on an SELinux image: %v", err)
		}
		nm := filepath.Join(mnt, "etc/NetworkManager/system-connections")
		for f, want := range map[string][]string{
			"sim-eth0.nmconnection":     {"mac-address=52:54:00:5E:02:21", "address1=198.18.2.21/24", "gateway=198.18.2.1", "address1=2001:db8::21/64", "dns=198.18.2.1;", "dns-search=cluster.example;"},
			"sim-eth1.nmconnection":     {"master=bond0", "slave-type=bond"},
			"sim-eth2.nmconnection":     {"master=bond0", "mac-address=52:54:00:5E:04:21"},
			"sim-bond0.nmconnection":    {"type=bond", "mode=active-backup", "mtu=9000"},
			"sim-bond0.42.nmconnection": {"type=vlan", "id=42", "parent=bond0", "address1=198.19.42.21/24"},
		} {
			b, err := os.ReadFile(filepath.Join(nm, f))
			fi, serr := os.Stat(filepath.Join(nm, f))
			if err != nil || serr != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v %v (NetworkManager ignores keyfiles others can read)", f, err, fi)
				continue
			}
			for _, w := range want {
				if !strings.Contains(string(b), "\n"+w+"\n") {
					t.Errorf("%s lacks %q:\n%s", f, w, b)
				}
			}
		}
		if ents, _ := filepath.Glob(filepath.Join(mnt, "etc/systemd/network/10-sim*")); len(ents) > 0 {
			t.Errorf("networkd files on a NetworkManager image: %v", ents)
		}
		if got := read("etc/hostname"); got != "n21\n" {
			t.Errorf("hostname %q", got)
		}
	})

	t.Run("unknown-stack", func(t *testing.T) {
		dev := loop("300M")
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n22", "--disk", dev, "--target", filepath.Join(dir, "target-tiny"))
		if r.code == 0 {
			t.Fatalf("a static IP on an image with no network stack installed:\n%s", r.stdout)
		}
		if !strings.Contains(r.stderr, "node n22") || !strings.Contains(r.stderr, "unknown network stack") || !strings.Contains(r.stderr, "198.18.2.22/24") {
			t.Errorf("the error does not name the node, the cause and the address:\n%s", r.stderr)
		}
	})
}
