// Package boot is sim as the netboot initramfs's /init (PID 1): mount the
// kernel filesystems, load the initrd's modules, bring the network up
// with DHCP, run the install, then power off, reboot or give a shell, as
// the kernel command line's sim.* words say (ARCHITECTURE.md "Netboot
// initrd"). It never returns: PID 1 must not exit.
//
// The install itself is the caller's (cmd/sim runs `sim install`), so
// this package knows nothing of transports or stores.
package boot

import (
	"bytes"
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

// Params are the sim.* words of the kernel command line.
type Params struct {
	Server, Image, Node, Disk, Transport string
	After                                string // poweroff (default), reboot, shell, none
	OnError                              string // shell (default), poweroff, reboot
}

// ParseCmdline reads the sim.* words of a kernel command line; other
// words are the kernel's and ignored.
func ParseCmdline(s string) (Params, error) {
	p := Params{After: "poweroff", OnError: "shell", Transport: "http"}
	for _, w := range strings.Fields(s) {
		k, v, ok := strings.Cut(w, "=")
		if !ok || !strings.HasPrefix(k, "sim.") {
			continue
		}
		switch k {
		case "sim.server":
			p.Server = v
		case "sim.image":
			p.Image = v
		case "sim.node":
			p.Node = v
		case "sim.disk":
			p.Disk = v
		case "sim.transport":
			// auto: until the server chooses per request, HTTP.
			if v != "auto" {
				p.Transport = v
			}
		case "sim.after":
			if v != "poweroff" && v != "reboot" && v != "shell" && v != "none" {
				return p, fmt.Errorf("sim.after=%s: want poweroff, reboot, shell or none", v)
			}
			p.After = v
		case "sim.onerror":
			if v != "poweroff" && v != "reboot" && v != "shell" {
				return p, fmt.Errorf("sim.onerror=%s: want shell, poweroff or reboot", v)
			}
			p.OnError = v
		default:
			return p, fmt.Errorf("unknown boot parameter %s", k)
		}
	}
	if p.Server == "" {
		return p, fmt.Errorf("no sim.server=URL on the kernel command line")
	}
	return p, nil
}

// Main is sim as the initramfs's /init (PID 1): mount the kernel
// filesystems, load the modules, bring the network up with DHCP, run
// install with the arguments of `sim install` (it returns the exit code
// and writes its messages to stderr, the last "sim: " line being the
// reason of a failure), then power off (or reboot, or give a shell). PID 1
// must never exit (the kernel panics), so every path ends in reboot(2) or
// a shell.
func Main(install func(args []string, stderr io.Writer) int) {
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
	p, perr := ParseCmdline(string(cmdline))
	loadModules(say)
	if _, err := os.Stat("/sys/firmware/efi"); err == nil {
		os.MkdirAll("/sys/firmware/efi/efivars", 0o755)
		unix.Mount("efivarfs", "/sys/firmware/efi/efivars", "efivarfs", 0, "")
	}
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "\n*** SIM INSTALL FAILED: %v\n*** after %.1fs; the disk is not marked installed.\n", err, time.Since(start).Seconds())
		finish(p.OnError, say)
	}
	if perr != nil {
		p.OnError = "shell"
		fail(perr)
	}
	mac, err := dhcp(say)
	if err != nil {
		fail(err)
	}
	say("network up in %.1fs", time.Since(start).Seconds())
	args := []string{"--store", "/run/sim/store", "install", "--from", p.Server, "--transport", p.Transport}
	if p.Node != "" {
		args = append(args, "--node", p.Node)
	} else {
		args = append(args, "--mac", mac)
	}
	if p.Image != "" {
		args = append(args, "--image", p.Image)
	}
	if p.Disk != "" {
		args = append(args, "--disk", p.Disk)
	}
	say("sim %s", strings.Join(args, " "))
	why := &ReasonWriter{W: os.Stderr, Prefix: "sim: "}
	if code := install(args, why); code != 0 {
		reason := strings.TrimPrefix(why.Last(), "sim: ")
		if reason == "" {
			reason = fmt.Sprintf("sim install exited with status %d (the reason is above)", code)
		}
		fail(errors.New(reason))
	}
	fmt.Fprintf(os.Stderr, "\n*** SIM INSTALL DONE in %.1fs since the kernel started init\n", time.Since(start).Seconds())
	finish(p.After, say)
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

// ReasonWriter passes output through to W and remembers the last line
// that starts with Prefix (the error sim prints), for the closing banner.
// It is safe for concurrent writes (the install's heartbeat logs from
// another goroutine).
type ReasonWriter struct {
	W      io.Writer
	Prefix string
	mu     gosync.Mutex
	buf    []byte
	last   string
}

func (l *ReasonWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		if line := string(l.buf[:i]); strings.HasPrefix(line, l.Prefix) {
			l.last = line
		}
		l.buf = l.buf[i+1:]
	}
	return l.W.Write(p)
}

// Last is the last whole line that started with Prefix.
func (l *ReasonWriter) Last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}
