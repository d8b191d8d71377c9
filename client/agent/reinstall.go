package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
)

// prepareReinstall is sim node reinstall --local on the node: the
// server's netboot kernel and initrd staged in /boot/sim-installer, a
// command line naming this node with its own token, then either a
// one-time GRUB entry (grub-reboot's next_entry) or, with kexec, the
// installer loaded with kexec_file_load. The reboot comes after the
// result is sent (rebootForReinstall).
func (a *agent) prepareReinstall(ctx context.Context, o *fleet.Order) (string, error) {
	root := a.m.Root
	get := func(what string) (io.ReadCloser, error) {
		resp, err := a.remote.Get(ctx, "/v1/install/"+what)
		if err != nil {
			return nil, fmt.Errorf("the installer's %s: %w (does sim serve run with --netboot DIR?)", what, err)
		}
		return resp.Body, nil
	}
	kr, err := get("kernel")
	if err != nil {
		return "", err
	}
	defer kr.Close()
	ir, err := get("initrd")
	if err != nil {
		return "", err
	}
	defer ir.Close()
	kernel, initrd, err := install.StageInstaller(root, kr, ir)
	if err != nil {
		return "", err
	}
	running, _ := os.ReadFile("/proc/cmdline")
	ca, _ := os.ReadFile(filepath.Join(a.Store.Dir(), install.CAName))
	cmdline, err := install.InstallerCmdline(string(running), a.remote.URL, a.m.Name, a.remote.Token, ca, o.After)
	if err != nil {
		return "", err
	}
	if o.Kexec {
		if err := install.KexecLoad(kernel, initrd, cmdline); err != nil {
			return "", err
		}
		return fmt.Sprintf("installer staged in /%s and loaded for kexec; rebooting into it", install.InstallerDir), nil
	}
	os1, err := install.WriteGrubOneshot(root, cmdline)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("installer staged in /%s, one-time GRUB entry %s in %s (next_entry in %s); rebooting into it",
		install.InstallerDir, install.OneshotEntry, os1.Custom, os1.Grubenv), nil
}

// rebootForReinstall reboots the node (systemd's way when it runs:
// services stop cleanly, filesystems unmount), into the kexec-loaded
// installer with kexec.
func (a *agent) rebootForReinstall(kexec bool) {
	verb, cmd := "reboot", unix.LINUX_REBOOT_CMD_RESTART
	if kexec {
		verb, cmd = "kexec", unix.LINUX_REBOOT_CMD_KEXEC
	}
	if _, err := os.Stat("/run/systemd/system"); err == nil && a.m.Root == "/" {
		a.logf("reinstall: systemctl %s", verb)
		if out, err := exec.Command("systemctl", verb).CombinedOutput(); err == nil {
			return
		} else {
			a.logf("reinstall: systemctl %s: %v %s", verb, err, out)
		}
	}
	if a.m.Root != "/" {
		// A node agent on a root other than / (tests, a chroot) does
		// not own the machine: it must not reboot it.
		a.logf("reinstall: root is %s, not /: not rebooting", a.m.Root)
		return
	}
	a.logf("reinstall: reboot(2) %s", verb)
	unix.Sync()
	time.Sleep(200 * time.Millisecond)
	if err := unix.Reboot(cmd); err != nil {
		a.logf("reinstall: reboot: %v", err)
	}
}
