package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/layout"
)

// TestRHELTree: on a RHEL-style tree, configure and bootConfig point the
// BLS entries, /etc/kernel/cmdline and grubenv at the new root, ask for
// an SELinux relabel, and the GRUB programs are the grub2-* ones.
func TestRHELTree(t *testing.T) {
	root := t.TempDir()
	entry := "title Rocky Linux (5.14.0-427.el9.x86_64) 9.4 (Blue Onyx)\nversion 5.14.0-427.el9.x86_64\nlinux /boot/vmlinuz-5.14.0-427.el9.x86_64\n" +
		"initrd /boot/initramfs-5.14.0-427.el9.x86_64.img $tuned_initrd\noptions root=UUID=0ld-golden-root ro crashkernel=auto resume=UUID=0ld-swap rhgb quiet\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rocky\n"
	rhel8 := "title RHEL 8\nlinux /vmlinuz-4.18.0\noptions $kernelopts $tuned_params\n"
	for p, b := range map[string]string{
		"etc/redhat-release":      "Rocky Linux release 9.4 (Blue Onyx)\n",
		"etc/os-release":          "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
		"etc/selinux/config":      "# This file controls the state of SELinux\nSELINUX=enforcing\nSELINUXTYPE=targeted\n",
		"usr/sbin/grub2-install":  "#!/bin/sh\n",
		"usr/sbin/grub2-mkconfig": "#!/bin/sh\n",
		"etc/kernel/cmdline":      "root=/dev/mapper/rl-root ro crashkernel=auto\n",
		"boot/grub2/grubenv":      "# GRUB Environment Block\nsaved_entry=abc-5.14.0\nkernelopts=root=/dev/sda2 ro quiet\n" + strings.Repeat("#", 900),
		"boot/loader/entries/abc-5.14.0-427.el9.x86_64.conf": entry,
		"boot/loader/entries/abc-4.18.0.conf":                rhel8,
	} {
		write(t, filepath.Join(root, p), b, 0o644)
	}
	if f := Family(root); f != "rhel" {
		t.Errorf("Family %q", f)
	}
	if i, m, c := GrubTools(root); i != "grub2-install" || m != "grub2-mkconfig" || c != "/boot/grub2/grub.cfg" {
		t.Errorf("GrubTools: %s %s %s", i, m, c)
	}
	l, _ := layout.Parse("part root rest xfs /\n")
	ext, _ := l.Plan("/dev/vda", 4<<30)
	parts := []disk.Part{{Extent: ext[0], Dev: "/dev/vda1", UUID: "11111111-2222-3333-4444-555555555555"}}
	did, err := bootConfig(root, parts)
	if err != nil {
		t.Fatal(err)
	}
	if did != "3 boot entries at the new root, SELinux relabel at first boot" {
		t.Errorf("bootConfig said %q", did)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(root, p)); return string(b) }
	got := read("boot/loader/entries/abc-5.14.0-427.el9.x86_64.conf")
	if want := strings.Replace(entry, "root=UUID=0ld-golden-root", "root=UUID="+parts[0].UUID, 1); got != want {
		t.Errorf("BLS entry:\n%s\nwant:\n%s", got, want)
	}
	if got := read("boot/loader/entries/abc-4.18.0.conf"); got != rhel8 {
		t.Errorf("an entry with $kernelopts changed:\n%s", got)
	}
	if got := read("etc/kernel/cmdline"); got != "root=UUID="+parts[0].UUID+" ro crashkernel=auto\n" {
		t.Errorf("/etc/kernel/cmdline %q", got)
	}
	env := read("boot/grub2/grubenv")
	if len(env) != 1024 || !strings.Contains(env, "\nkernelopts=root=UUID="+parts[0].UUID+" ro quiet\n") || !strings.Contains(env, "\nsaved_entry=abc-5.14.0\n") {
		t.Errorf("grubenv (%d bytes):\n%s", len(env), env)
	}
	if _, err := os.Stat(filepath.Join(root, ".autorelabel")); err != nil {
		t.Errorf("no /.autorelabel: %v", err)
	}
	// Again: nothing left to change.
	if ents, err := BootEntries(root, parts[0].UUID); err != nil || len(ents) != 0 {
		t.Errorf("again: %v %v", ents, err)
	}
	// SELinux disabled, or absent: no relabel.
	for _, cfg := range []string{"SELINUX=disabled\n", ""} {
		r := t.TempDir()
		if cfg != "" {
			write(t, filepath.Join(r, "etc/selinux/config"), cfg, 0o644)
		}
		if did, err := bootConfig(r, parts); err != nil || did != "" {
			t.Errorf("%q: %q %v", cfg, did, err)
		}
		if _, err := os.Stat(filepath.Join(r, ".autorelabel")); err == nil {
			t.Errorf("%q: /.autorelabel written", cfg)
		}
	}
	for in, want := range map[string]string{"ro quiet": "root=UUID=u ro quiet", "": "root=UUID=u", "root=/dev/sda1": "root=UUID=u", "x root=LABEL=r y": "x root=UUID=u y", "xroot=1 ro": "root=UUID=u xroot=1 ro"} {
		if got := withRoot(in, "u"); got != want {
			t.Errorf("withRoot(%q) = %q, want %q", in, got, want)
		}
	}
}
