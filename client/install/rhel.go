package install

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/systemimager/sim/client/disk"
)

// RHEL-family images (Rocky, Alma, RHEL, CentOS Stream, Fedora) differ
// from Debian's where the installer touches them: GRUB is grub2-install
// and grub2-mkconfig writing /boot/grub2/grub.cfg; the kernels' menu
// entries are Boot Loader Specification files in /boot/loader/entries
// (GRUB's blscfg reads them), each with its own root= on its options
// line, which grub2-mkconfig does not rewrite; and SELinux labels files
// by extended attributes an image's tree may not carry, so a relabel at
// first boot (/.autorelabel) makes them right.

// Family is "rhel" for a RHEL-family root (/etc/redhat-release, or
// os-release ID or ID_LIKE naming rhel, fedora or centos), else "".
func Family(root string) string {
	if _, err := os.Stat(filepath.Join(root, "etc/redhat-release")); err == nil {
		return "rhel"
	}
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(l, "=")
			if !ok || (k != "ID" && k != "ID_LIKE") {
				continue
			}
			for _, id := range strings.Fields(strings.Trim(v, `"'`)) {
				switch id {
				case "rhel", "fedora", "centos", "rocky", "almalinux":
					return "rhel"
				}
			}
		}
		return ""
	}
	return ""
}

// GrubTools are the image's GRUB programs and where its grub.cfg goes:
// grub2-* and /boot/grub2 where the image has grub2-install (RHEL),
// else grub-* and /boot/grub (Debian); "" when it has neither.
func GrubTools(root string) (install, mkconfig, cfg string) {
	has := func(p string) bool { _, err := os.Stat(filepath.Join(root, p)); return err == nil }
	for _, d := range []string{"usr/sbin/", "usr/bin/", "sbin/"} {
		if has(d + "grub2-install") {
			return "grub2-install", "grub2-mkconfig", "/boot/grub2/grub.cfg"
		}
	}
	for _, d := range []string{"usr/sbin/", "usr/bin/", "sbin/"} {
		if has(d + "grub-install") {
			return "grub-install", "grub-mkconfig", "/boot/grub/grub.cfg"
		}
	}
	return "", "", ""
}

// BLSDir holds an image's Boot Loader Specification entries.
const BLSDir = "boot/loader/entries"

// rootArg matches root= on a kernel command line.
var rootArg = regexp.MustCompile(`(^|\s)root=\S+`)

// withRoot is the command line cmdline with root=UUID=uuid in place of
// its root= (added when it has none).
func withRoot(cmdline, uuid string) string {
	want := "root=UUID=" + uuid
	if rootArg.MatchString(cmdline) {
		return rootArg.ReplaceAllString(cmdline, "${1}"+want)
	}
	if strings.TrimSpace(cmdline) == "" {
		return want
	}
	return want + " " + strings.TrimSpace(cmdline)
}

// BootEntries points the image's BLS entries (their options lines),
// /etc/kernel/cmdline (what new kernels' entries are made from) and the
// kernelopts of /boot/grub2/grubenv (RHEL 8's entries say options
// $kernelopts) at the root filesystem of UUID uuid. It returns the files
// it changed.
func BootEntries(root, uuid string) ([]string, error) {
	if uuid == "" {
		return nil, nil
	}
	var changed []string
	rewrite := func(rel string, edit func([]byte) []byte) error {
		p := filepath.Join(root, rel)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		nb := edit(b)
		if bytes.Equal(nb, b) {
			return nil
		}
		ch, err := writeFile(root, rel, string(nb), fi.Mode().Perm())
		if ch {
			changed = append(changed, "/"+rel)
		}
		return err
	}
	ents, _ := filepath.Glob(filepath.Join(root, BLSDir, "*.conf"))
	for _, e := range ents {
		rel, _ := filepath.Rel(root, e)
		err := rewrite(rel, func(b []byte) []byte {
			var out []string
			sc := bufio.NewScanner(bytes.NewReader(b))
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				l := sc.Text()
				if k, v, ok := strings.Cut(strings.TrimLeft(l, " \t"), " "); ok && k == "options" && !strings.Contains(v, "$kernelopts") {
					l = "options " + withRoot(strings.TrimSpace(v), uuid)
				}
				out = append(out, l)
			}
			return []byte(strings.Join(out, "\n") + "\n")
		})
		if err != nil {
			return changed, fmt.Errorf("BLS entry %s: %w", rel, err)
		}
	}
	if err := rewrite("etc/kernel/cmdline", func(b []byte) []byte {
		return []byte(withRoot(strings.TrimSpace(string(b)), uuid) + "\n")
	}); err != nil {
		return changed, fmt.Errorf("/etc/kernel/cmdline: %w", err)
	}
	// grubenv is a 1024-byte block: its lines, then '#' padding.
	if err := rewrite("boot/grub2/grubenv", func(b []byte) []byte {
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "kernelopts=") {
				l = "kernelopts=" + withRoot(strings.TrimPrefix(l, "kernelopts="), uuid)
			}
			if l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		body := "# GRUB Environment Block\n" + strings.Join(lines, "\n") + "\n"
		if len(body) > 1024 {
			return b // cannot fit: left as it was
		}
		return []byte(body + strings.Repeat("#", 1024-len(body)))
	}); err != nil {
		return changed, fmt.Errorf("grubenv: %w", err)
	}
	return changed, nil
}

// SELinuxMode is the SELINUX= of the image's /etc/selinux/config
// (enforcing, permissive, disabled), or "" without one.
func SELinuxMode(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "etc/selinux/config"))
	if err != nil {
		return ""
	}
	mode := ""
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "SELINUX="); ok {
			mode = strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return mode
}

// AutorelabelFile makes an SELinux system relabel its filesystems at its
// next boot (and reboot once).
const AutorelabelFile = ".autorelabel"

// selinuxRelabel asks for a relabel at first boot when the image has
// SELinux enforcing or permissive: the checkout writes the tree's files,
// not necessarily the labels this policy wants on them.
func selinuxRelabel(root string) (bool, error) {
	switch SELinuxMode(root) {
	case "enforcing", "permissive":
		_, err := writeFile(root, AutorelabelFile, "", 0o644)
		return err == nil, err
	}
	return false, nil
}

// bootConfig is the boot side of configure for the image's family: BLS
// entries at the new root, the SELinux relabel. It says what it did.
func bootConfig(root string, parts []disk.Part) (string, error) {
	var did []string
	var uuid string
	if rp, ok := rootPart(parts); ok {
		uuid = rp.UUID
	}
	ents, err := BootEntries(root, uuid)
	if err != nil {
		return "", err
	}
	if len(ents) > 0 {
		did = append(did, fmt.Sprintf("%d boot entries at the new root", len(ents)))
	}
	rel, err := selinuxRelabel(root)
	if err != nil {
		return "", fmt.Errorf("SELinux relabel: %w", err)
	}
	if rel {
		did = append(did, "SELinux relabel at first boot")
	}
	return strings.Join(did, ", "), nil
}

// FstabRootUUID is the UUID of the / line of root's /etc/fstab (what the
// installer wrote), or "".
func FstabRootUUID(root string) string {
	b, _ := os.ReadFile(filepath.Join(root, FstabFile))
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && f[1] == "/" {
			if u, ok := strings.CutPrefix(f[0], "UUID="); ok {
				return u
			}
		}
	}
	return ""
}
