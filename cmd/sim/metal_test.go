package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

// The bare-metal tests boot real VMs (qemu under TCG: KVM is unusable on
// the test machines) from the netboot initrd, let them install the
// bootable Debian image (testdata/mkbootable.sh) and then boot the
// installed disks on their own. They need root, qemu-system-x86_64,
// OVMF, busybox-static, a Debian kernel in /boot and the mkfs tools
// (make metal-deps installs them), and the image (make bootable).

// bootableRoot is testdata/mkbootable.sh's output ($SIM_BOOTABLE/root).
var bootableRoot = func() string {
	if d := os.Getenv("SIM_BOOTABLE"); d != "" {
		return filepath.Join(d, "root")
	}
	return "/var/cache/sim/bootable/root"
}()

type metalLab struct {
	t       *testing.T
	dir     string
	store   string
	netboot string
	port    int
	url     string // as the VMs reach it (qemu user networking: host loopback is 10.0.2.2)
	// netns, when set, is the network namespace sim serve runs in (on
	// url's address), with a bridge for VMs on taps (pxe_dnsmasq_test.go).
	netns string
	// tokens are the nodes' own tokens (sim token add NODE --role
	// node), given to each VM as sim.token=: the server takes status
	// reports only with them.
	tokens map[string]string
	// enroll is the fleet's boot token (sim token add boot --role
	// enroll), the one a shared kernel command line carries: the server
	// mints each node that installs with it a token of its own
	// (node-NAME), which is what the node keeps.
	enroll string
	// signKey is the admin's private key: every VM trusts its public
	// half, so every commit a VM installs or updates to is signed.
	signKey string
}

// token is the kernel command line word giving node its token.
func (m *metalLab) token(node string) string { return "sim.token=" + m.tokens[node] }

// enrollToken is the kernel command line word giving a node the fleet's
// enroll token.
func (m *metalLab) enrollToken() string { return "sim.token=" + m.enroll }

// enrolled checks that the server minted node its own token (node-NAME,
// role node, for node).
func (m *metalLab) enrolled(node string) {
	m.t.Helper()
	var toks []store.Token
	decodeJSON(m.t, ok(m.t, m.store, "token", "list", "--json"), &toks)
	for _, tk := range toks {
		if tk.Name == "node-"+node {
			if tk.Role != "node" || tk.Node != node {
				m.t.Errorf("%s's minted token: %+v; want role node for %s", node, tk, node)
			}
			return
		}
	}
	m.t.Errorf("no token node-%s after %s installed with the enroll token: %+v", node, node, toks)
}

func needMetal(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("bare-metal VM tests: skipped in -short mode (several minutes of qemu TCG)")
	}
	if os.Geteuid() != 0 {
		t.Skip("bare-metal VM tests: need root")
	}
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.ext4", "mkfs.vfat", "mkfs.xfs", "mkswap", "mkfs.btrfs", "btrfs", "mdadm", "lvm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("bare-metal VM tests: no %s (make metal-deps)", tool)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("bare-metal VM tests: no /bin/busybox (make metal-deps: busybox-static)")
	}
	if ks, _ := filepath.Glob("/boot/vmlinuz-*"); len(ks) == 0 {
		t.Skip("bare-metal VM tests: no /boot/vmlinuz-* (make metal-deps: linux-image-amd64)")
	}
	if _, err := os.Stat(filepath.Join(bootableRoot, "boot")); err != nil {
		t.Skipf("bare-metal VM tests: no bootable image in %s (make bootable)", bootableRoot)
	}
}

const testLayout = `sim-layout 1
# BIOS and UEFI on one disk
disk first
part bios 1MiB   bios_grub
part esp  100MiB esp  /boot/efi label=ESP
part swap 64MiB  swap
part root rest   ext4 /         label=root options=errors=remount-ro
`

// The override makes the installed system say who it is on the serial
// console and power off: what the test checks after booting the disk. It
// powers off on the first boot only: the fleet subtest boots a disk again
// and keeps it running.
const helloUnit = `[Unit]
Description=sim test: report identity on the serial console, then power off (first boot)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "SIM-HELLO host=$(hostname) post=$(cat /etc/sim-post-marker) override=$(cat /etc/sim-override-marker)" >/dev/ttyS0'
ExecStartPost=/bin/sh -c 'test -e /var/lib/sim-hello-booted || { touch /var/lib/sim-hello-booted; /bin/systemctl poweroff --no-block; }'

[Install]
WantedBy=multi-user.target
`

func newMetalLab(t *testing.T) *metalLab { return newMetalLabIn(t, "", "") }

// newMetalLabIn is newMetalLab with sim serve in the network namespace
// netns on addr (an address of one of its interfaces), where VMs on taps
// reach it; "" for the host's loopback, which VMs on qemu's user
// networking reach as 10.0.2.2.
func newMetalLabIn(t *testing.T, netns, addr string) *metalLab {
	needMetal(t)
	dir := t.TempDir()
	m := &metalLab{t: t, dir: dir, store: filepath.Join(dir, "store"), netboot: filepath.Join(dir, "netboot"), netns: netns}
	ok(t, m.store, "init")
	ok(t, m.store, "commit", bootableRoot, "--image", "debian", "-m", "bootable")
	writeFiles(t, dir, map[string]string{
		"layout":                     testLayout,
		"tiny-layout":                "part root 100MiB ext4 /\npart data 300MiB xfs /data\n",
		"ov/etc/sim-override-marker": "override-ok\n",
		"ov/etc/systemd/system/sim-hello.service": helloUnit,
		// The journal (the agent's log too) on the serial console: its
		// unit's "console" is the kernel's last console=, tty0, here, and
		// a tty opened once is hung up when getty starts.
		"ov/etc/systemd/journald.conf.d/serial.conf": "[Journal]\nForwardToConsole=yes\nTTYPath=/dev/ttyS0\nMaxLevelConsole=info\n",
		"post.sh": "#!/bin/sh\nset -e\necho \"post-ok $SIM_NODE\" > /etc/sim-post-marker\n",
	})
	os.MkdirAll(filepath.Join(dir, "ov/etc/systemd/system/multi-user.target.wants"), 0o755)
	if err := os.Symlink("/etc/systemd/system/sim-hello.service", filepath.Join(dir, "ov/etc/systemd/system/multi-user.target.wants/sim-hello.service")); err != nil {
		t.Fatal(err)
	}
	ok(t, m.store, "layout", "set", "debian", filepath.Join(dir, "layout"))
	ok(t, m.store, "override", "set", "site", filepath.Join(dir, "ov"))
	ok(t, m.store, "script", "set", "marker", filepath.Join(dir, "post.sh"))
	ok(t, m.store, "group", "add", "compute", "--image", "debian", "--override", "site", "--script", "marker")
	m.tokens = map[string]string{}
	for i := 1; i <= 7; i++ {
		n := fmt.Sprintf("n%d", i)
		ok(t, m.store, "node", "add", n, "--mac", fmt.Sprintf("52:54:00:5e:00:%02x", i), "--group", "compute")
		m.tokens[n] = lastLine(ok(t, m.store, "token", "add", n, "--role", "node"))
	}
	m.tokens["n11"] = lastLine(ok(t, m.store, "token", "add", "n11", "--role", "node")) // no such node registered
	m.enroll = lastLine(ok(t, m.store, "token", "add", "boot", "--role", "enroll"))
	// Every VM's initrd trusts the admin's key: the image and what goes
	// with it are signed.
	keys := t.TempDir()
	ok(t, m.store, "key", "gen", "admin", "--dir", keys)
	m.signKey = filepath.Join(keys, "admin.key")
	ok(t, m.store, "sign", "debian", "debian@layout", "site@override", "marker@script", "--key", m.signKey)

	// /init must be a static sim: build one (the test binary is not sim).
	bin := filepath.Join(dir, "sim")
	b := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	b.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := ok(t, m.store, "initrd", "build", "-o", m.netboot, "--sim", bin, "--json", "--trust", filepath.Join(keys, "admin.pub"))
	var ir struct {
		InitrdBytes int64 `json:"initrd_bytes"`
		CpioBytes   int64 `json:"cpio_bytes"`
		Version     string
	}
	decodeJSON(t, out, &ir)
	t.Logf("FIGURE initrd: %.1f MB compressed (%.1f MB cpio), kernel %s", float64(ir.InitrdBytes)/1e6, float64(ir.CpioBytes)/1e6, ir.Version)

	if netns != "" {
		m.startServerIn(netns, addr)
		return m
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := simProcess("--store", m.store, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", m.port), "--netboot", m.netboot)
	var slog bytes.Buffer
	srv.Stderr = &slog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", slog.String())
		}
	})
	for i := 0; ; i++ {
		if r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/refs", m.port)); err == nil {
			r.Body.Close()
			break
		}
		if i > 100 {
			t.Fatal("sim serve did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.url = fmt.Sprintf("http://10.0.2.2:%d", m.port)
	return m
}

// startServerIn runs sim serve in netns on addr:7480 and waits until it
// says it serves.
func (m *metalLab) startServerIn(netns, addr string) {
	t := m.t
	m.port = 7480
	self := simProcess()
	srv := exec.Command("ip", append([]string{"netns", "exec", netns, self.Path}, "--store", m.store, "serve",
		"--listen", fmt.Sprintf("%s:%d", addr, m.port), "--netboot", m.netboot)...)
	srv.Env = self.Env
	slog := &watchBuf{want: []string{"serving "}, hit: make(chan string, 1)}
	srv.Stderr = slog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("server log:\n%s", slog.String())
		}
	})
	select {
	case <-slog.hit:
	case err := <-exited:
		exited <- err
		t.Fatalf("sim serve in %s: %v\n%s", netns, err, slog.String())
	case <-time.After(time.Minute):
		t.Fatalf("sim serve in %s did not come up in a minute:\n%s", netns, slog.String())
	}
	m.url = fmt.Sprintf("http://%s:%d", addr, m.port)
}

type vm struct {
	name, disk, vars string
	extra            []string // more disks, after disk (virtio: vdb, vdc, …)
	mac              string
	uefi             bool
	console          string
	elapsed          time.Duration
}

func (m *metalLab) newVM(name string, n int, size string, uefi bool) *vm {
	v := &vm{name: name, disk: filepath.Join(m.dir, name+".raw"), mac: fmt.Sprintf("52:54:00:5e:00:%02x", n), uefi: uefi}
	if out, err := exec.Command("truncate", "-s", size, v.disk).CombinedOutput(); err != nil {
		m.t.Fatalf("truncate: %v %s", err, out)
	}
	if uefi {
		v.vars = filepath.Join(m.dir, name+"-vars.fd")
		b, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
		if err != nil {
			m.t.Skipf("UEFI: no OVMF (make metal-deps): %v", err)
		}
		os.WriteFile(v.vars, b, 0o644)
	}
	return v
}

// boot runs the VM until it powers off (or the timeout), with the
// netboot kernel when append is not empty, else from its disk. It
// returns the serial console.
func (m *metalLab) boot(v *vm, appendArgs string, timeout time.Duration) string {
	return m.bootWith(v, appendArgs, "", timeout)
}

// bootISO boots the VM from a CD image (with its blank disk).
func (m *metalLab) bootISO(v *vm, iso string, timeout time.Duration) string {
	return m.bootWith(v, "", iso, timeout)
}

func (m *metalLab) bootWith(v *vm, appendArgs, iso string, timeout time.Duration) string {
	args := []string{"-accel", "tcg", "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
		"-drive", "file=" + v.disk + ",format=raw,if=virtio",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=" + v.mac}
	for _, d := range v.extra {
		args = append(args, "-drive", "file="+d+",format=raw,if=virtio")
	}
	if v.uefi {
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
			"-drive", "if=pflash,format=raw,file="+v.vars)
	}
	if iso != "" {
		args = append(args, "-cdrom", iso, "-boot", "d")
	} else if appendArgs != "" {
		args = append(args, "-kernel", filepath.Join(m.netboot, "vmlinuz"), "-initrd", filepath.Join(m.netboot, "initrd.img"),
			"-append", "console=ttyS0 "+appendArgs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	start := time.Now()
	err := c.Run()
	v.elapsed = time.Since(start)
	v.console = out.String()
	if ctx.Err() != nil {
		m.t.Errorf("%s: VM still running after %v; console tail:\n%s", v.name, timeout, tail(v.console, 3000))
	} else if err != nil {
		m.t.Errorf("%s: qemu: %v\n%s", v.name, err, tail(v.console, 3000))
	}
	return v.console
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func (m *metalLab) statuses() map[string]install.Status {
	st := map[string]install.Status{}
	if m.netns != "" {
		// The server is in its namespace: busybox's wget asks from there.
		out, err := exec.Command("ip", "netns", "exec", m.netns, "/bin/busybox", "wget", "-q", "-O", "-", m.url+"/v1/install/status").Output()
		if err != nil {
			m.t.Fatalf("install statuses from %s: %v", m.url, err)
		}
		if err := json.Unmarshal(out, &st); err != nil {
			m.t.Fatal(err)
		}
		return st
	}
	r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/install/status", m.port))
	if err != nil {
		m.t.Fatal(err)
	}
	defer r.Body.Close()
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		m.t.Fatal(err)
	}
	return st
}

// installAndBoot installs node n on v with the kernel command line's
// token word cred (m.token(n) or m.enrollToken()), then boots the disk
// alone and checks the node's identity on the console.
func (m *metalLab) installAndBoot(v *vm, node, cred string) {
	t := m.t
	con := m.boot(v, "sim.server="+m.url+" sim.onerror=poweroff "+cred, 15*time.Minute)
	if !strings.Contains(con, "SIM INSTALL DONE") {
		t.Fatalf("%s: install did not finish; console tail:\n%s", v.name, tail(con, 4000))
	}
	st := m.statuses()[node]
	if st.State != install.Done || st.Step != "done" {
		t.Errorf("%s: server status %+v; want done", node, st)
	}
	t.Logf("FIGURE %s install (%s): %.1f s from power-on to installed and powered off; server sent %.1f MB",
		node, map[bool]string{false: "BIOS", true: "UEFI"}[v.uefi], v.elapsed.Seconds(), float64(st.Bytes)/1e6)
	con = m.boot(v, "", 5*time.Minute)
	want := fmt.Sprintf("SIM-HELLO host=%s post=post-ok %s override=override-ok", node, node)
	if !strings.Contains(con, want) {
		t.Fatalf("%s: installed system did not report %q; console tail:\n%s", v.name, want, tail(con, 4000))
	}
	t.Logf("%s: booted from disk in %.1f s: %s", v.name, v.elapsed.Seconds(), want)
}

// The VM tests (TestMetal*) run in parallel with each other, after the
// package's other tests (go test's -parallel, GOMAXPROCS: two at a time
// here), each with a lab of its own (13 s to set up): a VM is one TCG
// vCPU, a core, and most of them boot one VM at a time, so two fill a
// 2-core machine where one after the other left a core idle for 20
// minutes. TestMetalVM: a BIOS and a UEFI node install and boot, and
// the BIOS node stays up for the fleet.
func TestMetalVM(t *testing.T) {
	needMetal(t)
	t.Parallel()
	m := newMetalLab(t)
	bios := "" // the BIOS node's disk, once installed and booted
	// One BIOS and one UEFI node side by side (a core each on a quiet
	// 2-core machine).
	t.Run("single", func(t *testing.T) {
		t.Run("bios", func(t *testing.T) {
			t.Parallel()
			mm := *m
			mm.t = t
			// n1 enrolls with the fleet's boot token: what its agent
			// speaks with in the fleet subtest is the token the server
			// minted for it.
			mm.installAndBoot(mm.newVM("bios", 1, "3G", false), "n1", mm.enrollToken())
			mm.enrolled("n1")
			bios = filepath.Join(mm.dir, "bios.raw")
		})
		t.Run("uefi", func(t *testing.T) {
			t.Parallel()
			mm := *m
			mm.t = t
			// n2 has a token of its own on its command line: kept as it is.
			mm.installAndBoot(mm.newVM("uefi", 2, "3G", true), "n2", mm.token("n2"))
		})
	})
	// The BIOS node boots from its disk again, and stays up: its agent
	// reports, takes a rollout and a rollback (fleet_metal_test.go).
	t.Run("fleet", func(t *testing.T) {
		if bios == "" {
			t.Skip("fleet: the BIOS node was not installed")
		}
		mm := *m
		mm.t = t
		mm.fleet(&vm{name: "bios", disk: bios, mac: "52:54:00:5e:00:01"}, "n1")
	})
}

// TestMetalFour: four VMs install at once with one kernel command line
// (the fleet's enroll token), and one of them boots.
func TestMetalFour(t *testing.T) {
	needMetal(t)
	t.Parallel()
	m := newMetalLab(t)
	t.Run("four-at-once", func(t *testing.T) {
		mm := *m
		mm.t = t
		var wg gosync.WaitGroup
		vms := make([]*vm, 4)
		start := time.Now()
		for i := range vms {
			vms[i] = mm.newVM(fmt.Sprintf("four%d", i), 3+i, "3G", false)
			wg.Add(1)
			// One kernel command line for all four, with the fleet's
			// enroll token: each gets a token of its own minted.
			go func(v *vm, node string) {
				defer wg.Done()
				mm.boot(v, "sim.server="+mm.url+" sim.onerror=poweroff "+mm.enrollToken(), 20*time.Minute)
			}(vms[i], fmt.Sprintf("n%d", 3+i))
		}
		wg.Wait()
		all := time.Since(start)
		st := mm.statuses()
		var bytes int64
		for i, v := range vms {
			node := fmt.Sprintf("n%d", 3+i)
			if !strings.Contains(v.console, "SIM INSTALL DONE") || st[node].State != install.Done {
				t.Errorf("%s (%s): not installed: status %+v; console tail:\n%s", v.name, node, st[node], tail(v.console, 2000))
			}
			bytes += st[node].Bytes
			mm.enrolled(node)
		}
		t.Logf("FIGURE 4 VMs at once: %.1f s until all installed and powered off; server sent %.1f MB per node", all.Seconds(), float64(bytes)/4e6)
		// One of them boots, to show the parallel installs are whole.
		con := mm.boot(vms[3], "", 5*time.Minute)
		if want := "SIM-HELLO host=n6 post=post-ok n6"; !strings.Contains(con, want) {
			t.Errorf("four3: installed system did not report %q:\n%s", want, tail(con, 3000))
		}
	})
}

// TestMetalRAID: two disks, the root on an md RAID1, LVM on a second
// RAID1; the installed system boots with either disk removed
// (metal_raid_test.go).
func TestMetalRAID(t *testing.T) {
	needMetal(t)
	t.Parallel()
	m := newMetalLab(t)
	t.Run("raid", func(t *testing.T) {
		mm := *m
		mm.t = t
		mm.raid()
	})
}

// TestMetalISO: the boot medium, and the failures, side by side (light on
// the server and mostly waiting).
func TestMetalISO(t *testing.T) {
	needMetal(t)
	t.Parallel()
	m := newMetalLab(t)
	t.Run("iso", func(t *testing.T) {
		t.Parallel()
		mm := *m
		mm.t = t
		if _, err := exec.LookPath("grub-mkrescue"); err != nil {
			t.Skip("iso: no grub-mkrescue (make metal-deps)")
		}
		iso := filepath.Join(mm.dir, "sim.iso")
		ok(t, mm.store, "initrd", "iso", "--from", mm.netboot, "--server", mm.url, "--append", "sim.node=n7 sim.onerror=poweroff "+mm.token("n7"), "-o", iso)
		v := mm.newVM("iso", 7, "3G", false)
		mm.bootISO(v, iso, 15*time.Minute)
		if !strings.Contains(v.console, "SIM INSTALL DONE") || mm.statuses()["n7"].State != install.Done {
			t.Fatalf("iso: install did not finish; console tail:\n%s", tail(v.console, 4000))
		}
		t.Logf("FIGURE n7 install from the ISO (BIOS, CD): %.1f s from power-on to installed and powered off", v.elapsed.Seconds())
	})
	t.Run("failures", func(t *testing.T) {
		t.Parallel()
		mm := *m
		mm.t = t
		cases := []struct {
			name, size, args string
			want             []string // on the console
			node, step       string   // the server's status (node "" = not reachable)
		}{
			{"too-small", "150M", "sim.node=n1 " + mm.token("n1"), []string{"disk /dev/vda too small for the layout", "SIM INSTALL FAILED"}, "n1", "layout"},
			// An unregistered machine with a node token: its failure is
			// reported as that node's (the token names it).
			{"unknown-image", "3G", "sim.image=nosuchimage " + mm.token("n11"), []string{"image nosuchimage", "unknown ref", "SIM INSTALL FAILED"}, "n11", "config"},
			{"unreachable", "3G", "", []string{"connection refused", "SIM INSTALL FAILED"}, "", ""},
		}
		var wg gosync.WaitGroup
		vms := make([]*vm, len(cases))
		for i, c := range cases {
			vms[i] = mm.newVM(c.name, 10+i, c.size, false)
			server := mm.url
			if c.name == "unreachable" {
				server = "http://10.0.2.2:1" // nothing listens there
			}
			wg.Add(1)
			go func(v *vm, args string) {
				defer wg.Done()
				mm.boot(v, "sim.server="+server+" sim.onerror=poweroff "+args, 5*time.Minute)
			}(vms[i], c.args)
		}
		wg.Wait()
		st := mm.statuses()
		for i, c := range cases {
			con := vms[i].console
			for _, w := range c.want {
				if !strings.Contains(con, w) {
					t.Errorf("%s: console lacks %q; tail:\n%s", c.name, w, tail(con, 2000))
				}
			}
			if strings.Contains(con, "SIM INSTALL DONE") {
				t.Errorf("%s: reported done", c.name)
			}
			if c.node != "" {
				if s := st[c.node]; s.State != install.Failed || s.Step != c.step {
					t.Errorf("%s: server status of %s = %+v; want failed at %s", c.name, c.node, s, c.step)
				}
			}
			if m := regexp.MustCompile(`\*\*\* SIM INSTALL FAILED: .*`).FindString(con); m != "" {
				t.Logf("%s: %s", c.name, strings.TrimSpace(m))
			}
		}
		// The too-small disk was never written: no GPT signature.
		b := make([]byte, 8)
		f, err := os.Open(vms[0].disk)
		if err == nil {
			f.ReadAt(b, 512)
			f.Close()
		}
		if string(b) == "EFI PART" {
			t.Error("too-small: the disk was partitioned although the layout cannot fit")
		}
	})
}
