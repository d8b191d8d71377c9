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
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
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

	sinstall "github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/initrd"
	"github.com/systemimager/sim/store/sign"
)

// Params are the sim.* words of the kernel command line.
type Params struct {
	Server, Image, Node, Disk, Transport string
	After                                string // poweroff (default), reboot, kexec, shell, none
	// AfterSet: sim.after= was given (else the node's or group's
	// --after decides, the server says which).
	AfterSet bool
	OnError  string // shell (default), poweroff, reboot
	// Token is sim.token=: the boot token. An enroll token (sim token
	// add boot --role enroll), shared by the fleet: the server mints
	// each node its own token with its config, and only that one stays
	// on the node. Or a node's own token (sim token add NODE --role
	// node), kept as it is. It reads a server whose reads are closed;
	// the status reports go with the node's own.
	Token string
	// CA is sim.ca=: a certificate (base64 of its DER or PEM) the https
	// server's chain may end at, as PEM.
	CA []byte
	// Trust is sim.trust=KEY[,KEY...]: public keys (base64, 32 bytes) the
	// node trusts; with any, it requires every commit it installs to be
	// signed by one.
	Trust []sign.PublicKey
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
			// auto: the server chooses per fetch (sync/auto).
			p.Transport = v
		case "sim.after":
			if v != "poweroff" && v != "reboot" && v != "kexec" && v != "shell" && v != "none" {
				return p, fmt.Errorf("sim.after=%s: want poweroff, reboot, kexec, shell or none", v)
			}
			p.After, p.AfterSet = v, true
		case "sim.onerror":
			if v != "poweroff" && v != "reboot" && v != "shell" {
				return p, fmt.Errorf("sim.onerror=%s: want shell, poweroff or reboot", v)
			}
			p.OnError = v
		case "sim.token":
			if v == "" || len(v) > 4096 || strings.ContainsAny(v, "\x00\r\n") {
				return p, errors.New("sim.token=: want the token (sim token add boot --role enroll, or a node's own: sim token add NODE --role node)")
			}
			p.Token = v
		case "sim.ca":
			ca, err := decodeCA(v)
			if err != nil {
				return p, fmt.Errorf("sim.ca=: %w", err)
			}
			p.CA = append(p.CA, ca...)
		case "sim.trust":
			for _, kv := range strings.Split(v, ",") {
				k, err := sign.DecodeKey(kv)
				if err != nil {
					return p, fmt.Errorf("sim.trust=: %w", err)
				}
				p.Trust = append(p.Trust, sign.PublicKey{Name: fmt.Sprintf("boot-%d", len(p.Trust)+1), Key: k})
			}
		default:
			return p, fmt.Errorf("unknown boot parameter %s", k)
		}
	}
	if p.Server == "" {
		return p, fmt.Errorf("no sim.server=URL on the kernel command line")
	}
	return p, nil
}

// decodeCA reads sim.ca=: base64 (standard or URL alphabet) of a
// certificate in DER or PEM; it returns PEM.
func decodeCA(v string) ([]byte, error) {
	var b []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err = enc.DecodeString(v); err == nil {
			break
		}
	}
	if err != nil {
		return nil, errors.New("not base64")
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	if _, err := x509.ParseCertificate(b); err != nil {
		return nil, fmt.Errorf("not a certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b}), nil
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
	// The installer decides the action (the command line's, else the
	// node's or group's) and, for kexec, copies the installed kernel
	// out before it unmounts the disk.
	args = append(args, "--kexec-dir", kexecDir)
	if p.AfterSet && p.After != "none" {
		args = append(args, "--after", p.After)
	}
	// The token goes by file, so the console shows its path only.
	cred, err := Credentials(p, "/", "/run/sim")
	if err != nil {
		fail(err)
	}
	args = append(args, cred...)
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
	after := p.After
	if b, err := os.ReadFile(filepath.Join(kexecDir, sinstall.KexecAfter)); err == nil && !(p.AfterSet && p.After == "none") {
		after = strings.TrimSpace(string(b))
	}
	finish(after, say)
}

// kexecDir is where the installer leaves its decided after-install
// action and, for kexec, the installed system's kernel, initrd and
// command line (tmpfs: the disk is unmounted by then).
const kexecDir = "/run/sim/kexec"

// Credentials gathers what the install authenticates and verifies with:
// the files baked into the initrd under root (initrd.TokenFile, CAFile,
// TrustDir/*.pub) and the kernel command line's sim.token=, sim.ca=,
// sim.trust=, the latter written under run (mode 0600 for the token).
// It returns the `sim install` arguments that pass them on (--token-file,
// --ca, --trust), by file.
func Credentials(p Params, root, run string) ([]string, error) {
	var c []string
	add := func(a ...string) { c = append(c, a...) }
	if err := os.MkdirAll(run, 0o700); err != nil {
		return c, err
	}
	token := filepath.Join(root, initrd.TokenFile)
	if p.Token != "" {
		token = filepath.Join(run, "token")
		if err := os.WriteFile(token, []byte(p.Token+"\n"), 0o600); err != nil {
			return c, fmt.Errorf("sim.token=: %w", err)
		}
	}
	if _, err := os.Stat(token); err == nil {
		add("--token-file", token)
	}
	ca, _ := os.ReadFile(filepath.Join(root, initrd.CAFile))
	ca = append(ca, p.CA...)
	if len(ca) > 0 {
		f := filepath.Join(run, "ca.pem")
		if err := os.WriteFile(f, ca, 0o644); err != nil {
			return c, fmt.Errorf("sim.ca=: %w", err)
		}
		add("--ca", f)
	}
	baked, _ := filepath.Glob(filepath.Join(root, initrd.TrustDir, "*.pub"))
	sort.Strings(baked)
	for _, f := range baked {
		add("--trust", f)
	}
	for i, k := range p.Trust {
		f := filepath.Join(run, fmt.Sprintf("trust-%d.pub", i+1))
		if err := os.WriteFile(f, []byte(k.Line()+"\n"), 0o644); err != nil {
			return c, fmt.Errorf("sim.trust=: %w", err)
		}
		add("--trust", f)
	}
	return c, nil
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
	if action == "kexec" {
		// The installed system's kernel, straight from this one: no
		// firmware, no second POST, no netboot.
		if err := sinstall.KexecDir(kexecDir); err != nil {
			say("%v; rebooting through the firmware instead", err)
			action = "reboot"
		} else {
			say("kexec into the installed system")
		}
	}
	unix.Sync()
	time.Sleep(300 * time.Millisecond) // let teeConsoles write the last lines
	if action == "kexec" {
		sinstall.KexecReboot()
		say("kexec failed; rebooting through the firmware instead")
		action = "reboot"
	}
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
