package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
)

// TestMetalPXEDnsmasq is a site's PXE as most machines have it: UEFI
// firmware with its own PXE client (OVMF's, qemu's iPXE ROM switched
// off), a real dnsmasq on the install network serving DHCP and TFTP with
// what `sim netboot dnsmasq --loader ipxe` and `sim netboot ipxe` write.
// The firmware gets snponly.efi (iPXE over the firmware's NIC driver),
// iPXE asks again with its user class and gets boot.ipxe, which chains to
// sim serve's script for the node; the node installs and powers off; its
// next boot, the network first again, gets exit from the script and the
// firmware goes on to the installed disk. The VM is on a tap in a
// bridge of a network namespace of its own (198.18.0.0/24), with dnsmasq
// and sim serve in that namespace.
func TestMetalPXEDnsmasq(t *testing.T) {
	needMetal(t)
	t.Parallel()
	if _, err := os.Stat("/usr/lib/ipxe/snponly.efi"); err != nil {
		t.Skipf("PXE through dnsmasq: no iPXE loaders (make metal-deps: ipxe): %v", err)
	}
	const tap = "simpxetap0"
	m, tftp, dlog := newPXESite(t, "simpxe", tap, func(m *metalLab, tftp string) {
		ok(t, m.store, "netboot", "ipxe", "--server", m.url, "--out", tftp)
		ok(t, m.store, "netboot", "dnsmasq", "--server", m.url, "--out", tftp, "--loader", "ipxe",
			"--interface", "br0", "--dhcp-range", "198.18.0.100,198.18.0.150,255.255.255.0")
	})

	v := m.newVM("pxe-dnsmasq", 6, "3G", true) // n6's MAC
	con := m.tapBoot(v, tap, 20*time.Minute, "SIM INSTALL FAILED")
	// What dnsmasq handed out: snponly.efi to the firmware, boot.ipxe to iPXE.
	st := m.pxeInstalled(con, "n6", "OVMF's PXE, dnsmasq and iPXE", dlog,
		"sent "+filepath.Join(tftp, "snponly.efi"), "sent "+filepath.Join(tftp, "boot.ipxe"), "tags: ipxe")
	m.enrolled("n6")
	t.Logf("FIGURE PXE install (UEFI/OVMF's PXE → dnsmasq → snponly.efi → boot.ipxe → sim serve): %.1f s from power-on to installed and powered off; server sent %.1f MB",
		v.elapsed.Seconds(), float64(st.Bytes)/1e6)

	con = m.tapBoot(v, tap, 10*time.Minute, "sim.server=")
	m.bootedDisk(con, "n6", st)
	t.Logf("FIGURE PXE local boot (UEFI, dnsmasq): %.1f s from power-on (PXE, iPXE exit, the disk's GRUB, Debian) to the installed system's report", v.elapsed.Seconds())
}

// tapBoot boots the UEFI VM v from the network first, on tap in m's
// namespace (OVMF's own PXE: qemu's iPXE ROM is off), then its disk,
// until it powers off or the timeout; a console showing fail stops it.
func (m *metalLab) tapBoot(v *vm, tap string, timeout time.Duration, fail string) string {
	args := []string{"netns", "exec", m.netns, "qemu-system-x86_64",
		"-accel", "tcg", "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot", "-machine", "q35",
		"-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
		"-drive", "if=pflash,format=raw,file=" + v.vars,
		// IPv6 PXE would only time out before the disk.
		"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + v.mac + ",romfile=,bootindex=1",
		"-drive", "file=" + v.disk + ",format=raw,if=none,id=d0",
		"-device", "virtio-blk-pci,drive=d0,bootindex=2"}
	return m.watchVM(v, append([]string{"ip"}, args...), timeout, fail)
}

// pxeInstalled checks a network install through how: con shows node's
// install done with the kernel line of node's own entry (sim.node=),
// dnsmasq's log has each of logged, and the server's status for node is
// done, which it returns.
func (m *metalLab) pxeInstalled(con, node, how string, dlog *watchBuf, logged ...string) install.Status {
	t := m.t
	t.Helper()
	if !strings.Contains(con, "SIM INSTALL DONE") {
		t.Fatalf("install through %s did not finish; console tail:\n%s", how, tail(con, 4000))
	}
	if !strings.Contains(con, "sim.node="+node) {
		t.Errorf("the installer's kernel did not come from %s's entry (no sim.node=%s):\n%s", node, node, tail(con, 3000))
	}
	d := dlog.String()
	for _, w := range logged {
		if !strings.Contains(d, w) {
			t.Errorf("dnsmasq's log lacks %q:\n%s", w, tail(d, 4000))
		}
	}
	st := m.statuses()[node]
	if st.State != install.Done {
		t.Fatalf("%s: server status %+v; want done", node, st)
	}
	return st
}

// newPXESite is a site's install network in a network namespace of its
// own: a bridge (br0, 198.18.0.1/24) with a tap for a VM, sim serve on
// the bridge's address with the enroll token in its netboot initrd,
// the netboot files write puts into the TFTP root (tftp: it holds the
// initrd's vmlinuz and initrd.img too), and a real dnsmasq running the
// dnsmasq.conf among them. It returns the lab, the TFTP root and
// dnsmasq's log.
func newPXESite(t *testing.T, ns, tap string, write func(m *metalLab, tftp string)) (*metalLab, string, *watchBuf) {
	t.Helper()
	for _, f := range []string{"/usr/sbin/dnsmasq", "/dev/net/tun"} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("PXE through dnsmasq: no %s (make metal-deps: dnsmasq-base)", f)
		}
	}
	const addr = "198.18.0.1"
	ipns := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %v: %v %s", ns, args, err, out)
		}
	}
	exec.Command("ip", "netns", "del", ns).Run() // a killed run's
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("PXE through dnsmasq: no network namespace: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ipns("link", "set", "lo", "up")
	ipns("link", "add", "br0", "type", "bridge", "forward_delay", "0")
	ipns("addr", "add", addr+"/24", "dev", "br0")
	ipns("link", "set", "br0", "up")
	ipns("tuntap", "add", "dev", tap, "mode", "tap")
	ipns("link", "set", tap, "master", "br0", "up")

	m := newMetalLabIn(t, ns, addr)
	// A netbooted node's command line is the server's: the fleet's
	// enroll token goes into the initrd (as TestMetalPXE's).
	tok := filepath.Join(m.dir, "enroll.token")
	if err := os.WriteFile(tok, []byte(strings.TrimPrefix(m.enrollToken(), "sim.token=")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, m.store, "initrd", "build", "-o", m.netboot, "--sim", filepath.Join(m.dir, "sim"),
		"--trust", strings.TrimSuffix(m.signKey, ".key")+".pub", "--token-file", tok)
	tftp := filepath.Join(m.dir, "tftp")
	if err := os.MkdirAll(tftp, 0o755); err != nil {
		t.Fatal(err)
	}
	// dnsmasq's TFTP serves only what everyone may read: the initrd with
	// the enroll token in it is written 0600 and copied as the README
	// says (an enroll token is for every booting node).
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		b, err := os.ReadFile(filepath.Join(m.netboot, f))
		if err == nil {
			err = os.WriteFile(filepath.Join(tftp, f), b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	write(m, tftp)
	dlog := &watchBuf{hit: make(chan string, 1)}
	dctx, dstop := context.WithCancel(context.Background())
	dm := exec.CommandContext(dctx, "ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--conf-file="+filepath.Join(tftp, "dnsmasq.conf"),
		"--user=root", "--pid-file="+filepath.Join(m.dir, "dnsmasq.pid"), "--dhcp-leasefile="+filepath.Join(m.dir, "dnsmasq.leases"),
		"--log-dhcp", "--log-facility=-")
	dm.Stdout, dm.Stderr = dlog, dlog
	if err := dm.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dstop()
		dm.Wait()
		if t.Failed() {
			t.Logf("dnsmasq log:\n%s", tail(dlog.String(), 6000))
		}
	})
	return m, tftp, dlog
}

// TestMetalPXEGrub is UEFI network boot through GRUB, the way sites
// without iPXE have it: OVMF's own PXE gets grubnetx64.efi (what `sim
// netboot grub` builds) from a real dnsmasq (`sim netboot dnsmasq
// --loader pxelinux`), GRUB reads grub/grub.cfg-01-<mac> (`--per-node`)
// from TFTP, loads the installer's kernel and initrd over TFTP, and the
// node installs. `sim netboot grub --per-node` run again then writes the
// node's local-boot entry, and its next boot, the network first again,
// chainloads the installed disk's GRUB instead of installing again.
func TestMetalPXEGrub(t *testing.T) {
	needMetal(t)
	t.Parallel()
	if _, err := os.Stat("/usr/lib/grub/x86_64-efi/efinet.mod"); err != nil {
		t.Skipf("GRUB network boot: no GRUB x86_64-efi modules (make metal-deps: grub-efi-amd64-bin): %v", err)
	}
	const tap = "simgrubtap0"
	m, tftp, dlog := newPXESite(t, "simgrub", tap, func(m *metalLab, tftp string) {
		ok(t, m.store, "netboot", "grub", "--server", m.url, "--out", tftp, "--per-node")
		ok(t, m.store, "netboot", "dnsmasq", "--server", m.url, "--out", tftp, "--loader", "pxelinux",
			"--interface", "br0", "--dhcp-range", "198.18.0.100,198.18.0.150,255.255.255.0")
	})
	v := m.newVM("pxe-grub", 6, "3G", true) // n6's MAC
	cfg := filepath.Join(tftp, "grub", "grub.cfg-01-"+strings.ReplaceAll(v.mac, ":", "-"))
	if b, err := os.ReadFile(cfg); err != nil || !strings.Contains(string(b), "sim.node=n6") {
		t.Fatalf("sim netboot grub --per-node: %s: %v %q; want n6's install entry", cfg, err, b)
	}
	con := m.tapBoot(v, tap, 20*time.Minute, "SIM INSTALL FAILED")
	var sent []string
	for _, f := range []string{"grubnetx64.efi", "grub/grub.cfg-01-" + strings.ReplaceAll(v.mac, ":", "-"), "vmlinuz", "initrd.img"} {
		sent = append(sent, "sent "+filepath.Join(tftp, f))
	}
	st := m.pxeInstalled(con, "n6", "OVMF's PXE, dnsmasq and GRUB", dlog, sent...)
	t.Logf("FIGURE PXE install (UEFI/OVMF's PXE → dnsmasq → grubnetx64.efi → TFTP kernel and initrd): %.1f s from power-on to installed and powered off", v.elapsed.Seconds())

	// The admin writes the per-node files again after installs: n6's
	// becomes its local boot.
	ok(t, m.store, "netboot", "grub", "--server", m.url, "--out", tftp, "--per-node")
	if b, err := os.ReadFile(cfg); err != nil || !strings.Contains(string(b), "chainloader "+espLoader) {
		t.Fatalf("sim netboot grub --per-node after n6's install: %s: %v %q; want its local boot", cfg, err, b)
	}
	con = m.tapBoot(v, tap, 10*time.Minute, "sim.server=")
	m.bootedDisk(con, "n6", st)
	t.Logf("FIGURE PXE local boot (UEFI, GRUB chainload): %.1f s from power-on (PXE, grubnetx64.efi, the disk's GRUB, Debian) to the installed system's report", v.elapsed.Seconds())
}
