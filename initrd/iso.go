package initrd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ISO writes a hybrid BIOS+UEFI boot image (CD, or dd to a USB stick) that
// boots kernel and initrd with cmdline, as SystemImager's autoinstall CD
// did: the same installer without netboot. It uses the build host's
// grub-mkrescue (with grub-pc-bin, grub-efi-amd64-bin, xorriso and
// mtools), whose image boots both firmware kinds.
func ISO(kernel, initrdPath, out, cmdline string) error {
	for _, t := range []string{"grub-mkrescue", "xorriso", "mformat"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("iso: no %s (apt-get install grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools)", t)
		}
	}
	if strings.ContainsAny(cmdline, "\n'\"") {
		return fmt.Errorf("iso: kernel command line %q: no quotes or newlines", cmdline)
	}
	stage, err := os.MkdirTemp("", "sim-iso-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := os.MkdirAll(filepath.Join(stage, "boot/grub"), 0o755); err != nil {
		return err
	}
	for src, dst := range map[string]string{kernel: "boot/vmlinuz", initrdPath: "boot/initrd.img"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("iso: %w", err)
		}
		if err := os.WriteFile(filepath.Join(stage, dst), b, 0o644); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`# sim install medium
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry 'sim install' {
	linux /boot/vmlinuz %s
	initrd /boot/initrd.img
}
`, cmdline)
	if err := os.WriteFile(filepath.Join(stage, "boot/grub/grub.cfg"), []byte(cfg), 0o644); err != nil {
		return err
	}
	tmp := out + ".tmp"
	c := exec.Command("grub-mkrescue", "-o", tmp, stage)
	if b, err := c.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("grub-mkrescue: %v: %s", err, strings.TrimSpace(string(b)))
	}
	return os.Rename(tmp, out)
}
