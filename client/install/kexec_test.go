package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindBootEntry reads the default boot entry of real trees laid out
// the ways installed systems have them: what a kexec after the install
// boots, and what would be refused.
func TestFindBootEntry(t *testing.T) {
	debianCfg := `set default="0"
function load_video {
  insmod all_video
}
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-1234' {
	load_video
	insmod ext2
	search --no-floppy --fs-uuid --set=root 1234
	echo	'Loading Linux 6.1.0-37-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-37-amd64 root=UUID=1234 ro  console=ttyS0,115200 console=tty0
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-6.1.0-37-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-1234' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-37-amd64 (recovery mode)' {
		linux	/boot/vmlinuz-6.1.0-37-amd64 root=UUID=1234 ro single
		initrd	/boot/initrd.img-6.1.0-37-amd64
	}
}
`
	cases := []struct {
		name    string
		files   map[string]string
		links   map[string]string
		kernel  string // under root; "" = want an error
		initrd  string
		cmdline string
		from    string
		err     string
	}{
		{name: "debian grub.cfg",
			files:  map[string]string{"boot/grub/grub.cfg": debianCfg, "boot/vmlinuz-6.1.0-37-amd64": "K", "boot/initrd.img-6.1.0-37-amd64": "I"},
			kernel: "boot/vmlinuz-6.1.0-37-amd64", initrd: "boot/initrd.img-6.1.0-37-amd64",
			cmdline: "root=UUID=1234 ro console=ttyS0,115200 console=tty0", from: "/boot/grub/grub.cfg"},
		{name: "separate /boot (paths relative to it)",
			files: map[string]string{"boot/grub/grub.cfg": strings.ReplaceAll(debianCfg, "/boot/", "/"),
				"boot/vmlinuz-6.1.0-37-amd64": "K", "boot/initrd.img-6.1.0-37-amd64": "I"},
			kernel: "boot/vmlinuz-6.1.0-37-amd64", initrd: "boot/initrd.img-6.1.0-37-amd64",
			cmdline: "root=UUID=1234 ro console=ttyS0,115200 console=tty0", from: "/boot/grub/grub.cfg"},
		{name: "BLS, newest version wins",
			files: map[string]string{
				"boot/loader/entries/abc-5.14.0-70.el9.x86_64.conf":  "title Rocky (5.14.0-70)\nlinux /vmlinuz-5.14.0-70\ninitrd /initramfs-5.14.0-70.img\noptions root=UUID=old ro\n",
				"boot/loader/entries/abc-5.14.0-362.el9.x86_64.conf": "title Rocky (5.14.0-362)\nversion 5.14.0-362\nlinux /vmlinuz-5.14.0-362\ninitrd /initramfs-5.14.0-362.img $tuned_initrd\noptions root=UUID=5678 ro crashkernel=auto\n",
				"boot/vmlinuz-5.14.0-362":                            "K", "boot/initramfs-5.14.0-362.img": "I", "boot/vmlinuz-5.14.0-70": "K", "boot/initramfs-5.14.0-70.img": "I",
				"boot/grub2/grub.cfg": "blscfg\n"},
			kernel: "boot/vmlinuz-5.14.0-362", initrd: "boot/initramfs-5.14.0-362.img",
			cmdline: "root=UUID=5678 ro crashkernel=auto", from: "/boot/loader/entries/abc-5.14.0-362.el9.x86_64.conf"},
		{name: "BLS with $kernelopts (RHEL 8)",
			files: map[string]string{
				"boot/loader/entries/abc-4.18.0.conf": "linux /vmlinuz-4.18.0\ninitrd /initramfs-4.18.0.img\noptions $kernelopts $tuned_params\n",
				"boot/grub2/grubenv":                  "# GRUB Environment Block\nkernelopts=root=UUID=9abc ro resume=/dev/sda2\n#########\n",
				"boot/vmlinuz-4.18.0":                 "K", "boot/initramfs-4.18.0.img": "I"},
			kernel: "boot/vmlinuz-4.18.0", initrd: "boot/initramfs-4.18.0.img",
			cmdline: "root=UUID=9abc ro resume=/dev/sda2 $tuned_params", from: "/boot/loader/entries/abc-4.18.0.conf"},
		{name: "/vmlinuz links and fstab",
			files:  map[string]string{"boot/vmlinuz-6.1.0-37-amd64": "K", "boot/initrd.img-6.1.0-37-amd64": "I", "etc/fstab": "# sim\nUUID=4321 / ext4 errors=remount-ro 0 1\nUUID=1111 /boot/efi vfat umask=0077 0 1\n"},
			links:  map[string]string{"vmlinuz": "boot/vmlinuz-6.1.0-37-amd64", "initrd.img": "boot/initrd.img-6.1.0-37-amd64"},
			kernel: "boot/vmlinuz-6.1.0-37-amd64", initrd: "boot/initrd.img-6.1.0-37-amd64", cmdline: "root=UUID=4321 ro", from: "/vmlinuz"},
		{name: "grub.cfg names a kernel that is not there",
			files: map[string]string{"boot/grub/grub.cfg": debianCfg},
			err:   "/boot/vmlinuz-6.1.0-37-amd64: not in"},
		{name: "BLS entry without linux line",
			files: map[string]string{"boot/loader/entries/x.conf": "title broken\noptions root=UUID=1\n"},
			err:   "/boot/loader/entries/x.conf: no linux line"},
		{name: "links without fstab root",
			files: map[string]string{"boot/vmlinuz-6": "K"}, links: map[string]string{"vmlinuz": "boot/vmlinuz-6"},
			err: "no / in"},
		{name: "nothing to boot",
			files: map[string]string{"etc/hostname": "n1\n"},
			err:   "no kernel to boot found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for p, body := range c.files {
				os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
				if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for p, to := range c.links {
				if err := os.Symlink(to, filepath.Join(root, p)); err != nil {
					t.Fatal(err)
				}
			}
			e, err := FindBootEntry(root)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("FindBootEntry = %+v, %v; want error with %q", e, err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Kernel != filepath.Join(root, c.kernel) || e.Initrd != filepath.Join(root, c.initrd) || e.Cmdline != c.cmdline || e.From != c.from {
				t.Errorf("got %+v\nwant kernel %s initrd %s cmdline %q from %s", e, c.kernel, c.initrd, c.cmdline, c.from)
			}
			// What the installer's PID 1 loads, copied out of the root.
			dir := filepath.Join(t.TempDir(), "kexec")
			if _, err := PrepareKexec(root, dir); err != nil {
				t.Fatal(err)
			}
			for f, want := range map[string]string{KexecKernel: "K", KexecInitrd: "I", KexecCmdline: c.cmdline + "\n"} {
				if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || string(b) != want {
					t.Errorf("%s: %q, %v; want %q", f, b, err, want)
				}
			}
		})
	}
}

// TestFindBootEntryBootable reads the bootable test image's own kernel
// (make bootable): its /vmlinuz link and initrd are real files.
func TestFindBootEntryBootable(t *testing.T) {
	root := "/var/cache/sim/bootable/root"
	if d := os.Getenv("SIM_BOOTABLE"); d != "" {
		root = filepath.Join(d, "root")
	}
	if _, err := os.Stat(filepath.Join(root, "vmlinuz")); err != nil {
		t.Skipf("no bootable image with /vmlinuz in %s (make bootable)", root)
	}
	// Its fstab names no root until sim installs it: a copy of its
	// links and the files they name, with one.
	tmp := t.TempDir()
	for _, l := range []string{"vmlinuz", "initrd.img"} {
		to, err := os.Readlink(filepath.Join(root, l))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(tmp, filepath.Dir(to)), 0o755)
		if err := copyFile(filepath.Join(root, to), filepath.Join(tmp, to), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(to, filepath.Join(tmp, l)); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(tmp, "etc"), 0o755)
	os.WriteFile(filepath.Join(tmp, "etc/fstab"), []byte("UUID=abcd / ext4 defaults 0 1\n"), 0o644)
	e, err := FindBootEntry(tmp)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(e.Kernel)
	if err != nil || len(b) < 1<<20 || string(b[0x202:0x206]) != "HdrS" {
		t.Fatalf("%s: not a bzImage (%d bytes, %v)", e.Kernel, len(b), err)
	}
	if e.Cmdline != "root=UUID=abcd ro" {
		t.Errorf("cmdline %q", e.Cmdline)
	}
}
