package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
)

// TestMetalPXE is a real PXE boot: qemu's own iPXE option ROM gets its
// address and boot.ipxe (what `sim netboot ipxe` writes) from qemu's
// built-in DHCP and TFTP, chains to sim serve's per-node script, which
// boots the installer; the node installs with the fleet's enroll token
// (baked into the initrd: a netbooted node's command line is the
// server's); and the next boot of the same VM, the same firmware boot
// order, goes to the installed disk by itself (the per-node script now
// says sanboot), never into the installer again.
func TestMetalPXE(t *testing.T) {
	needMetal(t)
	t.Parallel()
	m := newMetalLab(t)
	// The netboot initrd with the enroll token in it.
	tok := filepath.Join(m.dir, "enroll.token")
	if err := os.WriteFile(tok, []byte(strings.TrimPrefix(m.enrollToken(), "sim.token=")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, m.store, "initrd", "build", "-o", m.netboot, "--sim", filepath.Join(m.dir, "sim"),
		"--trust", strings.TrimSuffix(m.signKey, ".key")+".pub", "--token-file", tok)
	tftp := filepath.Join(m.dir, "tftp")
	out := ok(t, m.store, "netboot", "ipxe", "--server", m.url, "--out", tftp)
	if !strings.Contains(out, filepath.Join(tftp, "boot.ipxe")) {
		t.Fatalf("sim netboot ipxe wrote:\n%s", out)
	}
	v := m.newVM("pxe", 7, "3G", false) // n7's MAC
	con := m.pxeBoot(v, tftp, 15*time.Minute, "SIM INSTALL FAILED")
	if !strings.Contains(con, "SIM INSTALL DONE") {
		t.Fatalf("PXE install did not finish; console tail:\n%s", tail(con, 4000))
	}
	if !strings.Contains(con, "sim.node=n7") {
		t.Errorf("the installer's kernel did not come from n7's iPXE script (no sim.node=n7 on its command line):\n%s", tail(con, 3000))
	}
	st := m.statuses()["n7"]
	if st.State != install.Done || st.Step != "done" {
		t.Fatalf("n7: server status %+v; want done", st)
	}
	m.enrolled("n7")
	t.Logf("FIGURE PXE install (BIOS, iPXE ROM → TFTP → sim serve): %.1f s from power-on to installed and powered off; server sent %.1f MB",
		v.elapsed.Seconds(), float64(st.Bytes)/1e6)

	// The same VM, the same network-first boot: the per-node script
	// now boots the disk.
	con = m.pxeBoot(v, tftp, 6*time.Minute, "sim.server=")
	m.bootedDisk(con, "n7", st)
	if strings.Contains(con, "sim.server=") || strings.Contains(con, "SIM INSTALL") {
		t.Errorf("second network boot ran the installer again:\n%s", tail(con, 3000))
	}
	t.Logf("FIGURE PXE local boot: %.1f s from power-on (iPXE, sanboot, GRUB, Debian) to the installed system's report", v.elapsed.Seconds())
}

// TestMetalPXEUEFI is TestMetalPXE under UEFI (OVMF, q35): the same
// boot.ipxe from qemu's TFTP, run by qemu's iPXE EFI option ROM (iPXE's
// SNP LoadFile, which OVMF boots), chains to sim serve, whose script
// boots the installer; the install puts GRUB on the ESP at the removable
// path (\EFI\BOOT\BOOTX64.EFI, no NVRAM entry needed); the next boot,
// the network first again, gets exit (${platform} is efi), OVMF goes on
// to the disk, and the installed system reports.
func TestMetalPXEUEFI(t *testing.T) {
	if os.Getenv("SIM_UEFI_PXE") == "" {
		// Passed 2026-12-06 (223 s: install 98 s, local boot 105 s); opt-in
		// to hold make test's time, since TestMetalPXEDnsmasq runs the same
		// iPXE script and exit under UEFI.
		t.Skip("UEFI PXE through qemu's iPXE EFI ROM: SIM_UEFI_PXE=1 runs it (make test proves UEFI PXE with TestMetalPXEDnsmasq and TestMetalPXEGrub)")
	}
	t.Parallel()
	m := newMetalLab(t)
	tok := filepath.Join(m.dir, "enroll.token")
	if err := os.WriteFile(tok, []byte(strings.TrimPrefix(m.enrollToken(), "sim.token=")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, m.store, "initrd", "build", "-o", m.netboot, "--sim", filepath.Join(m.dir, "sim"),
		"--trust", strings.TrimSuffix(m.signKey, ".key")+".pub", "--token-file", tok)
	tftp := filepath.Join(m.dir, "tftp")
	ok(t, m.store, "netboot", "ipxe", "--server", m.url, "--out", tftp)
	v := m.newVM("pxe-uefi", 6, "3G", true) // n6's MAC
	con := m.pxeBoot(v, tftp, 15*time.Minute, "SIM INSTALL FAILED")
	if !strings.Contains(con, "SIM INSTALL DONE") {
		t.Fatalf("UEFI PXE install did not finish; console tail:\n%s", tail(con, 4000))
	}
	for _, w := range []string{"sim.node=n6", "EFI v"} {
		if !strings.Contains(con, w) {
			t.Errorf("console lacks %q (the installer from n6's script, booted by UEFI):\n%s", w, tail(con, 3000))
		}
	}
	st := m.statuses()["n6"]
	if st.State != install.Done {
		t.Fatalf("n6: server status %+v; want done", st)
	}
	t.Logf("FIGURE PXE install (UEFI/OVMF, iPXE EFI ROM → TFTP → sim serve): %.1f s from power-on to installed and powered off; server sent %.1f MB",
		v.elapsed.Seconds(), float64(st.Bytes)/1e6)
	con = m.pxeBoot(v, tftp, 8*time.Minute, "sim.server=")
	m.bootedDisk(con, "n6", st)
	t.Logf("FIGURE PXE local boot (UEFI): %.1f s from power-on (iPXE exit, OVMF, the disk's GRUB, Debian) to the installed system's report", v.elapsed.Seconds())
}

// bootedDisk checks that con, the console of node's network boot after
// its install (whose report was installed), went on to the installed disk:
// the installed system's report is there, and the server got no new
// install report.
func (m *metalLab) bootedDisk(con, node string, installed install.Status) {
	m.t.Helper()
	want := "SIM-HELLO host=" + node + " post=post-ok " + node + " override=override-ok"
	if !strings.Contains(con, want) {
		m.t.Fatalf("the network boot after the install did not boot the installed disk (%q); console tail:\n%s", want, tail(con, 4000))
	}
	if st := m.statuses()[node]; !st.Time.Equal(installed.Time) {
		m.t.Errorf("%s reported again on its local boot: %+v", node, st)
	}
}

// pxeBoot boots v from the network first (-boot n: qemu's iPXE ROM, its
// DHCP and TFTP from dir with boot.ipxe as the boot file) until it powers
// off or the timeout; a console showing fail stops it at once (the
// installer's failure shell would wait for the timeout).
func (m *metalLab) pxeBoot(v *vm, dir string, timeout time.Duration, fail string) string {
	args := []string{"-accel", "tcg", "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
		"-netdev", "user,id=n0,tftp=" + dir + ",bootfile=boot.ipxe"}
	if v.uefi {
		// OVMF: the NIC first, then the disk (bootindex: OVMF's boot
		// order follows it); qemu's iPXE EFI ROM offers the NIC's boot
		// (its LoadFile), and exit in the script hands back to OVMF,
		// which goes on to the disk's \EFI\BOOT\BOOTX64.EFI. OVMF's own
		// PXE entries for the NIC (IPv4 and IPv6, tried after iPXE's)
		// are switched off: they would only time out before the disk.
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
			"-drive", "if=pflash,format=raw,file="+v.vars,
			"-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
			"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
			"-device", "virtio-net-pci,netdev=n0,mac="+v.mac+",bootindex=1",
			"-drive", "file="+v.disk+",format=raw,if=none,id=d0",
			"-device", "virtio-blk-pci,drive=d0,bootindex=2")
	} else {
		args = append(args,
			"-drive", "file="+v.disk+",format=raw,if=virtio",
			"-device", "virtio-net-pci,netdev=n0,mac="+v.mac,
			"-boot", "n")
	}
	return m.watchVM(v, append([]string{"qemu-system-x86_64"}, args...), timeout, fail)
}

// watchVM runs the VM v's command line (qemu, or qemu under ip netns
// exec) until it ends or the timeout; a console showing fail, or a kernel
// panic, stops it at once. It returns the console.
func (m *metalLab) watchVM(v *vm, cmd []string, timeout time.Duration, fail string) string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	// A kernel panic (no initramfs, say) ends the VM at once too: it
	// would otherwise sit out the timeout.
	w := &watchBuf{want: []string{fail, kernelPanic}, hit: make(chan string, 1)}
	c.Stdout, c.Stderr = w, w
	start := time.Now()
	if err := c.Start(); err != nil {
		m.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	var err error
	failed := ""
	select {
	case err = <-done:
	case failed = <-w.hit:
		cancel()
		err = <-done
	}
	v.elapsed = time.Since(start)
	v.console = w.String()
	switch {
	case failed != "":
		m.t.Errorf("%s: console shows %q; tail:\n%s", v.name, failed, tail(v.console, 3000))
	case ctx.Err() != nil:
		m.t.Errorf("%s: VM still running after %v; console tail:\n%s", v.name, timeout, tail(v.console, 3000))
	case err != nil:
		m.t.Errorf("%s: qemu: %v\n%s", v.name, err, tail(v.console, 3000))
	}
	return v.console
}

// kernelPanic on a console ends a VM boot: nothing comes after it.
const kernelPanic = "Kernel panic - not syncing"

// watchBuf is a console that says (once) when any of want appears.
type watchBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	want []string
	hit  chan string
	seen bool
}

func (w *watchBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if !w.seen {
		// Only the tail can hold a new match.
		s := w.b.Bytes()
		if len(s) > len(p)+256 {
			s = s[len(s)-len(p)-256:]
		}
		for _, x := range w.want {
			if x != "" && bytes.Contains(s, []byte(x)) {
				w.seen = true
				w.hit <- x
				break
			}
		}
	}
	return len(p), nil
}

func (w *watchBuf) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
