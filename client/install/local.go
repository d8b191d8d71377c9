package install

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/store"
)

// A local reinstall (sim node reinstall --local; SystemImager's
// si_updateclient --autoinstall) puts the netboot installer into a
// running node's own bootloader for one boot: no PXE, no media.

// InstallerDir is where the installer's kernel and initrd are staged on
// the node (under its root), beside its own kernels.
const InstallerDir = "boot/sim-installer"

// OneshotEntry is the GRUB menu entry id of the staged installer.
const OneshotEntry = "sim-reinstall"

// StageInstaller writes the installer's kernel and initrd into
// root/InstallerDir (each through a temporary name: a half-written one is
// never booted) and returns their paths.
func StageInstaller(root string, kernel, initrd io.Reader) (string, string, error) {
	dir := filepath.Join(root, InstallerDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("stage the installer: %w", err)
	}
	k, i := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	for _, f := range []struct {
		path string
		r    io.Reader
	}{{k, kernel}, {i, initrd}} {
		err := store.WriteFileAtomic(f.path, 0o600, func(w io.Writer) error { _, err := io.Copy(w, f.r); return err })
		if err != nil {
			return "", "", fmt.Errorf("stage the installer: %s: %w", f.path, err)
		}
	}
	return k, i, nil
}

// InstallerCmdline is the kernel command line of a local reinstall: the
// running system's console= words (the installer speaks where the node
// does), the server as the node reaches it, the node's name and its own
// token (the installer keeps it: a node token naming the node), its
// server's CA and after-install action when given.
func InstallerCmdline(running, server, node, token string, ca []byte, after string) (string, error) {
	var w []string
	for _, f := range strings.Fields(running) {
		if strings.HasPrefix(f, "console=") {
			w = append(w, f)
		}
	}
	if server == "" || node == "" {
		return "", errors.New("installer command line: no server or node name")
	}
	if strings.ContainsAny(server+node+token, " \t\n\"'\\;") {
		return "", fmt.Errorf("installer command line: server %q, node %q or the token holds a space or quote", server, node)
	}
	w = append(w, "sim.server="+server, "sim.node="+node)
	if token != "" {
		w = append(w, "sim.token="+token)
	}
	if len(ca) > 0 {
		// sim.ca= takes one certificate (base64 of its DER).
		blk, _ := pem.Decode(ca)
		if blk == nil {
			return "", errors.New("installer command line: the node's ca.pem holds no PEM certificate")
		}
		w = append(w, "sim.ca="+base64.StdEncoding.EncodeToString(blk.Bytes))
	}
	if after != "" {
		if err := CheckAfter(after); err != nil {
			return "", err
		}
		w = append(w, "sim.after="+after)
	}
	return strings.Join(w, " "), nil
}

// Oneshot is what WriteGrubOneshot set up.
type Oneshot struct {
	Custom  string `json:"custom"`  // the custom.cfg holding the entry
	Grubenv string `json:"grubenv"` // where next_entry is set
	Kernel  string `json:"kernel"`  // the kernel as GRUB names it
	UUID    string `json:"uuid,omitempty"`
}

// Markers of sim's block in custom.cfg: a site's own entries there are
// kept, sim's block is replaced.
const (
	customBegin = "### sim reinstall: begin (sim node reinstall --local; the next install removes it)"
	customEnd   = "### sim reinstall: end"
)

// WriteGrubOneshot makes GRUB boot the staged installer (StageInstaller)
// once: a menu entry in GRUB's custom.cfg (which grub-mkconfig's
// 41_custom sources at boot, so grub.cfg needs no regenerating) and
// next_entry in grubenv (which grub.cfg's header boots once and clears:
// grub-reboot's mechanism). GRUB finds the files by the UUID of the
// filesystem holding /boot (fstab's), with paths relative to it.
func WriteGrubOneshot(root, cmdline string) (*Oneshot, error) {
	grubDir, err := findGrub(root)
	if err != nil {
		return nil, err
	}
	// The paths as GRUB sees them: relative to /boot's filesystem when
	// /boot is a mount of its own.
	rel := "/" + InstallerDir
	fsMount := "/"
	var sb, sr unix.Stat_t
	if unix.Stat(filepath.Join(root, "boot"), &sb) == nil && unix.Stat(root, &sr) == nil && sb.Dev != sr.Dev {
		rel = strings.TrimPrefix(rel, "/boot")
		fsMount = "/boot"
	}
	env, err := followLinks(root, filepath.Join(grubDir, "grubenv"))
	if err != nil {
		return nil, err
	}
	o := &Oneshot{Custom: filepath.Join(grubDir, "custom.cfg"), Grubenv: env, Kernel: rel + "/vmlinuz"}
	o.UUID = fstabUUID(root, fsMount)
	var e strings.Builder
	fmt.Fprintf(&e, "%s\nmenuentry 'sim reinstall' --id %s {\n", customBegin, OneshotEntry)
	fmt.Fprintf(&e, "\tinsmod part_gpt\n\tinsmod part_msdos\n\tinsmod ext2\n\tinsmod xfs\n\tinsmod btrfs\n")
	if o.UUID != "" {
		fmt.Fprintf(&e, "\tsearch --no-floppy --fs-uuid --set=root %s\n", o.UUID)
	}
	fmt.Fprintf(&e, "\techo 'sim: booting the installer (reinstall)'\n\tlinux %s/vmlinuz %s\n\tinitrd %s/initrd.img\n}\n%s\n", rel, cmdline, rel, customEnd)
	old, err := os.ReadFile(o.Custom)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	body := withoutBlock(string(old)) + e.String()
	// Mode 0600: the entry carries the node's token.
	if err := store.WriteFileAtomic(o.Custom, 0o600, func(w io.Writer) error { _, err := io.WriteString(w, body); return err }); err != nil {
		return nil, fmt.Errorf("write %s: %w", o.Custom, err)
	}
	if err := SetGrubenv(o.Grubenv, "next_entry", OneshotEntry); err != nil {
		return nil, err
	}
	return o, nil
}

// findGrub is the directory of the grub.cfg the node boots: Debian's
// /boot/grub, the RHEL family's /boot/grub2 (BIOS, and UEFI from RHEL 9
// on, where the ESP holds only a stub that loads it), or the ESP's
// EFI/<vendor> (RHEL 8 and Fedora before 34 on UEFI keep the real
// grub.cfg, and grubenv, there). A grub.cfg that only hands over to
// another (configfile, no menu of its own) is passed by. BLS entries
// (/boot/loader/entries, blscfg) need nothing here: grub.cfg still reads
// custom.cfg and next_entry beside them.
func findGrub(root string) (string, error) {
	cands := []string{filepath.Join(root, "boot/grub"), filepath.Join(root, "boot/grub2")}
	for _, esp := range []string{"boot/efi/EFI", "efi/EFI"} {
		if ds, err := os.ReadDir(filepath.Join(root, esp)); err == nil {
			for _, d := range ds {
				if d.IsDir() && !strings.EqualFold(d.Name(), "BOOT") {
					cands = append(cands, filepath.Join(root, esp, d.Name()))
				}
			}
		}
	}
	var seen []string
	var lastErr error
	for _, dir := range cands {
		cfg, err := os.ReadFile(filepath.Join(dir, "grub.cfg"))
		if err != nil {
			continue
		}
		seen = append(seen, strings.TrimPrefix(filepath.Join(dir, "grub.cfg"), root))
		switch {
		case !bytes.Contains(cfg, []byte("custom.cfg")) && bytes.Contains(cfg, []byte("configfile")):
			continue // a stub handing over to the real grub.cfg
		case !bytes.Contains(cfg, []byte("custom.cfg")):
			lastErr = fmt.Errorf("%s/grub.cfg does not read custom.cfg (no 41_custom): GRUB would not see the entry", dir)
		case !bytes.Contains(cfg, []byte("next_entry")):
			lastErr = fmt.Errorf("%s/grub.cfg has no next_entry handling: GRUB cannot boot an entry once", dir)
		default:
			return dir, nil
		}
	}
	if lastErr != nil {
		return "", lastErr
	}
	if len(seen) > 0 {
		return "", fmt.Errorf("GRUB's %s only hand over to another grub.cfg this root lacks: reinstall with --kexec, or netboot the node (sim node reinstall without --local)", strings.Join(seen, ", "))
	}
	for _, l := range []string{"boot/efi/loader/loader.conf", "efi/loader/loader.conf", "boot/loader/loader.conf"} {
		if _, err := os.Stat(filepath.Join(root, l)); err == nil {
			return "", fmt.Errorf("the node boots with systemd-boot (/%s), not GRUB: reinstall --local writes GRUB entries only; use --kexec, or netboot the node (sim node reinstall without --local)", l)
		}
	}
	return "", fmt.Errorf("no GRUB here (no grub.cfg in %s/boot/grub, boot/grub2 or the ESP's EFI/*): reinstall with --kexec, or netboot the node (sim node reinstall without --local)", root)
}

// followLinks follows the symlinks of path (under root) as the node
// would, to a file that may not exist yet: RHEL 8's /boot/grub2/grubenv
// is a link to ../efi/EFI/redhat/grubenv, and writing a new file in its
// place would leave GRUB reading the old one.
func followLinks(root, path string) (string, error) {
	for i := 0; i < 16; i++ {
		t, err := os.Readlink(path)
		if err != nil {
			return path, nil // not a link (or not there yet)
		}
		if filepath.IsAbs(t) {
			path = filepath.Join(root, t)
		} else {
			path = filepath.Join(filepath.Dir(path), t)
		}
		if rel, err := filepath.Rel(root, path); err != nil || strings.HasPrefix(rel, "..") {
			return "", fmt.Errorf("grubenv links out of the node's root (%s)", t)
		}
	}
	return "", fmt.Errorf("%s: too many symlinks", path)
}

// withoutBlock is custom.cfg without sim's block.
func withoutBlock(s string) string {
	i := strings.Index(s, customBegin)
	if i < 0 {
		return s
	}
	j := strings.Index(s[i:], customEnd)
	if j < 0 {
		return s[:i]
	}
	rest := s[i+j+len(customEnd):]
	return s[:i] + strings.TrimPrefix(rest, "\n")
}

// fstabUUID is the UUID= of the fstab line mounting mp.
func fstabUUID(root, mp string) string {
	b, _ := os.ReadFile(filepath.Join(root, "etc/fstab"))
	for _, line := range strings.Split(string(b), "\n") {
		w := strings.Fields(line)
		if len(w) >= 2 && w[1] == mp {
			if u, ok := strings.CutPrefix(w[0], "UUID="); ok {
				return u
			}
		}
	}
	return ""
}

// grubenvSize is the size of GRUB's environment block: GRUB rewrites it
// in place, so it must stay exactly this long.
const grubenvSize = 1024

const grubenvHeader = "# GRUB Environment Block\n"

// SetGrubenv sets key=value in the GRUB environment block at path (made
// if missing), keeping the other variables: what grub-editenv set does.
func SetGrubenv(path, key, value string) error {
	if strings.ContainsAny(key, "=\n") || key == "" {
		return fmt.Errorf("grubenv: bad variable name %q", key)
	}
	vars, err := ReadGrubenv(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var b strings.Builder
	b.WriteString(grubenvHeader)
	set := false
	for _, kv := range vars {
		if kv[0] == key {
			kv[1], set = value, true
		}
		fmt.Fprintf(&b, "%s=%s\n", kv[0], grubenvEscape(kv[1]))
	}
	if !set {
		fmt.Fprintf(&b, "%s=%s\n", key, grubenvEscape(value))
	}
	if b.Len() > grubenvSize {
		return fmt.Errorf("%s: the environment would exceed GRUB's %d bytes", path, grubenvSize)
	}
	out := b.String() + strings.Repeat("#", grubenvSize-b.Len())
	return store.WriteFileAtomic(path, 0o644, func(w io.Writer) error { _, err := io.WriteString(w, out); return err })
}

// ReadGrubenv reads a GRUB environment block's variables in order.
func ReadGrubenv(path string) ([][2]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(b, []byte(grubenvHeader)) {
		return nil, fmt.Errorf("%s: not a GRUB environment block", path)
	}
	var out [][2]string
	for _, line := range strings.Split(string(b[len(grubenvHeader):]), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		out = append(out, [2]string{k, grubenvUnescape(v)})
	}
	return out, nil
}

func grubenvEscape(v string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(v)
}

func grubenvUnescape(v string) string {
	return strings.NewReplacer(`\\`, `\`, `\n`, "\n").Replace(v)
}
