package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	gosync "sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/initrd"
)

// bootParams are the sim.* words of the kernel command line.
type bootParams struct {
	server, image, node, disk, transport string
	after                                string // poweroff (default), reboot, shell, none
	onError                              string // shell (default), poweroff, reboot
}

func parseCmdline(s string) (bootParams, error) {
	p := bootParams{after: "poweroff", onError: "shell", transport: "http"}
	for _, w := range strings.Fields(s) {
		k, v, ok := strings.Cut(w, "=")
		if !ok || !strings.HasPrefix(k, "sim.") {
			continue
		}
		switch k {
		case "sim.server":
			p.server = v
		case "sim.image":
			p.image = v
		case "sim.node":
			p.node = v
		case "sim.disk":
			p.disk = v
		case "sim.transport":
			if v != "auto" {
				p.transport = v
			}
		case "sim.after":
			if v != "poweroff" && v != "reboot" && v != "shell" && v != "none" {
				return p, fmt.Errorf("sim.after=%s: want poweroff, reboot, shell or none", v)
			}
			p.after = v
		case "sim.onerror":
			if v != "poweroff" && v != "reboot" && v != "shell" {
				return p, fmt.Errorf("sim.onerror=%s: want shell, poweroff or reboot", v)
			}
			p.onError = v
		default:
			return p, fmt.Errorf("unknown boot parameter %s", k)
		}
	}
	if p.server == "" {
		return p, fmt.Errorf("no sim.server=URL on the kernel command line")
	}
	return p, nil
}

// initMain is sim as the initramfs's /init (PID 1): mount the kernel
// filesystems, load the modules, bring the network up with DHCP, run the
// install, then power off (or reboot, or give a shell). PID 1 must never
// exit (the kernel panics), so every path ends in reboot(2) or a shell.
func initMain() {
	os.Setenv("PATH", "/bin:/sbin")
	os.Setenv("HOME", "/root")
	say := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "sim init: "+format+"\n", a...) }
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}, {"tmpfs", "/run", "tmpfs"}, {"tmpfs", "/tmp", "tmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && err != unix.EBUSY {
			say("mount %s: %v", m.dst, err)
		}
	}
	teeConsoles()
	start := time.Now()
	cmdline, _ := os.ReadFile("/proc/cmdline")
	p, perr := parseCmdline(string(cmdline))
	loadModules(say)
	if _, err := os.Stat("/sys/firmware/efi"); err == nil {
		os.MkdirAll("/sys/firmware/efi/efivars", 0o755)
		unix.Mount("efivarfs", "/sys/firmware/efi/efivars", "efivarfs", 0, "")
	}
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "\n*** SIM INSTALL FAILED: %v\n*** after %.1fs; the disk is not marked installed.\n", err, time.Since(start).Seconds())
		finish(p.onError, say)
	}
	if perr != nil {
		p.onError = "shell"
		fail(perr)
	}
	mac, err := dhcp(say)
	if err != nil {
		fail(err)
	}
	say("network up in %.1fs", time.Since(start).Seconds())
	args := []string{"install", "--from", p.server, "--transport", p.transport}
	if p.node != "" {
		args = append(args, "--node", p.node)
	} else {
		args = append(args, "--mac", mac)
	}
	if p.image != "" {
		args = append(args, "--image", p.image)
	}
	if p.disk != "" {
		args = append(args, "--disk", p.disk)
	}
	say("sim %s", strings.Join(args, " "))
	why := &reasonWriter{w: os.Stderr, prefix: "sim: "}
	e := &env{stdout: os.Stdout, stderr: why, storeDir: "/run/sim/store"}
	if code := run(context.Background(), args, e); code != 0 {
		reason := strings.TrimPrefix(why.last, "sim: ")
		if reason == "" {
			reason = fmt.Sprintf("sim install exited with status %d (the reason is above)", code)
		}
		fail(errors.New(reason))
	}
	fmt.Fprintf(os.Stderr, "\n*** SIM INSTALL DONE in %.1fs since the kernel started init\n", time.Since(start).Seconds())
	finish(p.after, say)
}

// finish ends PID 1 the way asked: a shell first if wanted, then the
// power action.
func finish(action string, say func(string, ...any)) {
	if action == "shell" || action == "none" {
		say("starting a shell; exit it to power off")
		c := exec.Command("/bin/sh")
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		c.Run()
		action = "poweroff"
	}
	unix.Sync()
	time.Sleep(300 * time.Millisecond) // let teeConsoles write the last lines
	if action == "reboot" {
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// loadModules loads the initrd's module list in order (dependencies
// first). A module for absent hardware loads and idles; one that fails
// is reported and skipped.
func loadModules(say func(string, ...any)) {
	b, err := os.ReadFile("/" + initrd.ModuleList)
	if err != nil {
		say("no module list: %v", err)
		return
	}
	n := 0
	for _, m := range strings.Fields(string(b)) {
		f, err := os.Open(m)
		if err != nil {
			say("module %s: %v", m, err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		// EEXIST: built in or loaded; ENODEV: nothing for it here
		// (efivarfs on a BIOS machine).
		if err != nil && err != unix.EEXIST && err != unix.ENODEV {
			say("module %s: %v", filepath.Base(m), err)
			continue
		}
		n++
	}
	say("%d modules loaded", n)
}

// dhcp brings every NIC up and runs busybox udhcpc on each until one gets
// a lease; it returns that NIC's MAC.
func dhcp(say func(string, ...any)) (string, error) {
	exec.Command("ip", "link", "set", "lo", "up").Run()
	var nics []string
	for i := 0; i < 50; i++ { // drivers probe asynchronously
		ents, _ := os.ReadDir("/sys/class/net")
		nics = nics[:0]
		for _, e := range ents {
			if e.Name() != "lo" {
				nics = append(nics, e.Name())
			}
		}
		if len(nics) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(nics) == 0 {
		return "", fmt.Errorf("no network interface found (is the NIC's driver in the initrd?)")
	}
	sort.Strings(nics)
	for _, n := range nics {
		exec.Command("ip", "link", "set", n, "up").Run()
		c := exec.Command("udhcpc", "-i", n, "-s", "/etc/udhcpc.script", "-q", "-f", "-n", "-t", "6", "-T", "2")
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		if err := c.Run(); err != nil {
			say("%s: no DHCP lease (%v)", n, err)
			continue
		}
		mac, _ := os.ReadFile("/sys/class/net/" + n + "/address")
		lease, _ := os.ReadFile("/run/sim-lease")
		say("%s: %s", n, strings.TrimSpace(string(lease)))
		return strings.TrimSpace(string(mac)), nil
	}
	return "", fmt.Errorf("no DHCP lease on any of %s", strings.Join(nics, " "))
}

// teeConsoles sends init's output (and its children's: fds 1 and 2) to
// every active console, not only /dev/console, which is just the last
// console= of the command line: with "console=ttyS0 console=tty0" a
// serial-only machine would see the kernel's messages but not why the
// install stopped.
func teeConsoles() {
	b, err := os.ReadFile("/sys/class/tty/console/active")
	if err != nil {
		return
	}
	var outs []*os.File
	for _, n := range strings.Fields(string(b)) {
		if f, err := os.OpenFile("/dev/"+n, os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
			outs = append(outs, f)
		}
	}
	if len(outs) < 2 {
		for _, f := range outs {
			f.Close()
		}
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		return
	}
	unix.Dup2(int(w.Fd()), 1)
	unix.Dup2(int(w.Fd()), 2)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			for _, f := range outs {
				f.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
}

// reasonWriter passes output through and remembers the last line that starts
// with prefix (the error `run` prints), for the closing banner.
type reasonWriter struct {
	mu     gosync.Mutex // the install's heartbeat logs from another goroutine
	w      io.Writer
	prefix string
	buf    []byte
	last   string
}

func (l *reasonWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		if line := string(l.buf[:i]); strings.HasPrefix(line, l.prefix) {
			l.last = line
		}
		l.buf = l.buf[i+1:]
	}
	return l.w.Write(p)
}
