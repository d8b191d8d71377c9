package install

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/catalog"
)

// Actions after a successful install (sim.after=, a node's or group's
// --after): power off (the default), reboot through the firmware, kexec
// straight into the installed system (no firmware reboot), or a shell.
const (
	AfterPoweroff = "poweroff"
	AfterReboot   = "reboot"
	AfterKexec    = "kexec"
	AfterShell    = "shell"
)

// CheckAfter accepts an after-install action ("" too: not set).
func CheckAfter(a string) error { return catalog.CheckAfter(a) }

// BootEntry is what a bootloader would start: a kernel and an initrd
// (paths on the host, under the root they were found in) and the
// kernel command line.
type BootEntry struct {
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline"`
	// From says where it was read (a BLS entry, grub.cfg, /vmlinuz).
	From string `json:"from"`
}

// FindBootEntry finds the default boot entry of the system mounted at
// root, the way its bootloader would: the newest Boot Loader
// Specification entry (/boot/loader/entries, RHEL family: GRUB's blscfg
// reads those), else the first menuentry of GRUB's grub.cfg (what
// grub-mkconfig made, with root=UUID= of the installed root), else the
// /vmlinuz and /initrd.img links (Debian) with root=UUID= from fstab.
func FindBootEntry(root string) (*BootEntry, error) {
	var tried []string
	if e, err := blsEntry(root); e != nil || err != nil {
		return e, err
	}
	tried = append(tried, "/boot/loader/entries/*.conf")
	for _, cfg := range []string{"boot/grub/grub.cfg", "boot/grub2/grub.cfg"} {
		p := filepath.Join(root, cfg)
		if _, err := os.Stat(p); err != nil {
			tried = append(tried, "/"+cfg)
			continue
		}
		e, err := grubEntry(root, p)
		if err != nil {
			return nil, err
		}
		if e != nil {
			return e, nil
		}
		tried = append(tried, "/"+cfg+" (no menuentry with a linux line)")
	}
	if e, err := linkEntry(root); e != nil || err != nil {
		return e, err
	}
	tried = append(tried, "/vmlinuz")
	return nil, fmt.Errorf("no kernel to boot found in %s (looked at %s)", root, strings.Join(tried, ", "))
}

// bootPath resolves a path as a bootloader names it (relative to the
// filesystem it is on: / or a separate /boot) to one under root.
func bootPath(root, p string) (string, error) {
	p = strings.TrimPrefix(p, "($root)")
	for _, c := range []string{filepath.Join(root, p), filepath.Join(root, "boot", p)} {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s: not in %s nor in %s/boot", p, root, root)
}

func blsEntry(root string) (*BootEntry, error) {
	ents, _ := filepath.Glob(filepath.Join(root, "boot/loader/entries/*.conf"))
	if len(ents) == 0 {
		return nil, nil
	}
	// Newest first, as blscfg sorts: by version, here by name in
	// version order (entries are MACHINEID-VERSION.conf).
	sort.Slice(ents, func(i, j int) bool { return versionLess(ents[j], ents[i]) })
	b, err := os.ReadFile(ents[0])
	if err != nil {
		return nil, err
	}
	e := &BootEntry{From: strings.TrimPrefix(ents[0], root)}
	var kernel, initrd string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		v = strings.TrimSpace(v)
		switch k {
		case "linux":
			kernel = v
		case "initrd":
			if initrd == "" {
				initrd = strings.Fields(v + " ")[0]
			}
		case "options":
			e.Cmdline = strings.TrimSpace(e.Cmdline + " " + v)
		}
	}
	if kernel == "" {
		return nil, fmt.Errorf("%s: no linux line", e.From)
	}
	if strings.Contains(e.Cmdline, "$kernelopts") {
		// RHEL 8: the options are in grubenv.
		opts := grubenvValue(root, "kernelopts")
		if opts == "" {
			return nil, fmt.Errorf("%s: options $kernelopts, and no kernelopts in grubenv", e.From)
		}
		e.Cmdline = strings.TrimSpace(strings.ReplaceAll(e.Cmdline, "$kernelopts", opts))
	}
	if e.Kernel, err = bootPath(root, kernel); err != nil {
		return nil, fmt.Errorf("%s: %w", e.From, err)
	}
	if initrd != "" {
		if e.Initrd, err = bootPath(root, initrd); err != nil {
			return nil, fmt.Errorf("%s: %w", e.From, err)
		}
	}
	return e, nil
}

func grubenvValue(root, key string) string {
	for _, p := range []string{"boot/grub2/grubenv", "boot/grub/grubenv"} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, key+"="); ok {
				return v
			}
		}
	}
	return ""
}

// grubEntry reads the first menuentry (at any submenu depth: the default
// entry 0 is the first top-level one) of a grub.cfg that has a linux
// line.
func grubEntry(root, cfg string) (*BootEntry, error) {
	f, err := os.Open(cfg)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	in := false
	var kernel, initrd, args string
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		if len(w) == 0 {
			continue
		}
		switch {
		case w[0] == "menuentry":
			in = true
			kernel, initrd, args = "", "", ""
		case in && (w[0] == "linux" || w[0] == "linuxefi" || w[0] == "linux16") && len(w) > 1:
			kernel, args = w[1], strings.Join(w[2:], " ")
		case in && (w[0] == "initrd" || w[0] == "initrdefi" || w[0] == "initrd16") && len(w) > 1:
			initrd = w[1]
		case in && w[0] == "}":
			if kernel != "" {
				e := &BootEntry{Cmdline: args, From: strings.TrimPrefix(cfg, root)}
				if e.Kernel, err = bootPath(root, kernel); err != nil {
					return nil, fmt.Errorf("%s: %w", e.From, err)
				}
				if initrd != "" {
					if e.Initrd, err = bootPath(root, initrd); err != nil {
						return nil, fmt.Errorf("%s: %w", e.From, err)
					}
				}
				return e, nil
			}
			in = false
		}
	}
	return nil, sc.Err()
}

// linkEntry is Debian's /vmlinuz and /initrd.img (or /boot/vmlinuz), with
// the root from fstab.
func linkEntry(root string) (*BootEntry, error) {
	var kernel string
	for _, p := range []string{"vmlinuz", "boot/vmlinuz"} {
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() {
			kernel = p
			break
		}
	}
	if kernel == "" {
		return nil, nil
	}
	e := &BootEntry{From: "/" + kernel}
	var err error
	if e.Kernel, err = resolveIn(root, kernel); err != nil {
		return nil, err
	}
	if ir, err := resolveIn(root, strings.Replace(kernel, "vmlinuz", "initrd.img", 1)); err == nil {
		e.Initrd = ir
	}
	rootdev := fstabRoot(root)
	if rootdev == "" {
		return nil, fmt.Errorf("%s: no / in %s/etc/fstab to put on the kernel command line", e.From, root)
	}
	e.Cmdline = "root=" + rootdev + " ro"
	return e, nil
}

// resolveIn follows symlinks of p as if root were /.
func resolveIn(root, p string) (string, error) {
	cur := p
	for i := 0; i < 16; i++ {
		full := filepath.Join(root, cur)
		fi, err := os.Lstat(full)
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return full, nil
		}
		t, err := os.Readlink(full)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir("/"+cur), t)
		}
		cur = t
	}
	return "", fmt.Errorf("%s: too many symlinks", p)
}

func fstabRoot(root string) string {
	b, _ := os.ReadFile(filepath.Join(root, "etc/fstab"))
	for _, line := range strings.Split(string(b), "\n") {
		w := strings.Fields(line)
		if len(w) >= 2 && !strings.HasPrefix(w[0], "#") && w[1] == "/" {
			return w[0]
		}
	}
	return ""
}

// versionLess orders names with embedded numbers numerically
// (5.14.0-70 < 5.14.0-362), as rpm's version compare roughly does.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := leadNum(a)
			nb, rb := leadNum(b)
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func leadNum(s string) (string, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	n := strings.TrimLeft(s[:i], "0")
	return n, s[i:]
}

// Files of a kexec directory (sim install --kexec-dir): what the
// installer's PID 1 loads once the disk is unmounted.
const (
	KexecKernel  = "kernel"
	KexecInitrd  = "initrd"
	KexecCmdline = "cmdline"
	KexecAfter   = "after"
)

// PrepareKexec copies the default boot entry of the system at root
// (FindBootEntry) into dir (kernel, initrd, cmdline), so it can be
// loaded after root is unmounted. It returns the entry.
func PrepareKexec(root, dir string) (*BootEntry, error) {
	e, err := FindBootEntry(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := copyFile(e.Kernel, filepath.Join(dir, KexecKernel), 0o600); err != nil {
		return nil, fmt.Errorf("kexec: %w", err)
	}
	os.Remove(filepath.Join(dir, KexecInitrd))
	if e.Initrd != "" {
		if err := copyFile(e.Initrd, filepath.Join(dir, KexecInitrd), 0o600); err != nil {
			return nil, fmt.Errorf("kexec: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, KexecCmdline), []byte(e.Cmdline+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("kexec: %w", err)
	}
	return e, nil
}

// KexecLoad loads kernel, initrd ("" for none) and cmdline with
// kexec_file_load(2) (no kexec-tools needed; the kernel checks the
// image). The caller then syncs and calls KexecReboot.
func KexecLoad(kernel, initrd, cmdline string) error {
	kf, err := os.Open(kernel)
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	defer kf.Close()
	ifd := -1
	flags := 0
	if initrd != "" {
		f, err := os.Open(initrd)
		if err != nil {
			return fmt.Errorf("kexec: %w", err)
		}
		defer f.Close()
		ifd = int(f.Fd())
	} else {
		flags |= unix.KEXEC_FILE_NO_INITRAMFS
	}
	if err := unix.KexecFileLoad(int(kf.Fd()), ifd, strings.TrimSpace(cmdline), flags); err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("kexec_file_load %s: %w (kernel without CONFIG_KEXEC_FILE)", kernel, err)
		}
		return fmt.Errorf("kexec_file_load %s: %w", kernel, err)
	}
	return nil
}

// KexecDir loads what PrepareKexec left in dir.
func KexecDir(dir string) error {
	cmd, err := os.ReadFile(filepath.Join(dir, KexecCmdline))
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	initrd := filepath.Join(dir, KexecInitrd)
	if _, err := os.Stat(initrd); err != nil {
		initrd = ""
	}
	return KexecLoad(filepath.Join(dir, KexecKernel), initrd, string(cmd))
}

// KexecReboot starts the loaded kernel (reboot(2) with
// LINUX_REBOOT_CMD_KEXEC): only returns on failure.
func KexecReboot() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC)
}
