package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/layout"
)

const raidLayout = `sim-layout 1
# A mirrored OS disk: GRUB on both, the root on md0 (metadata at the end),
# LVM on md1 for swap and /scratch, which a reinstall keeps (and md1 and
# the VG with it).
disk /dev/vda
part bios0 1MiB    bios_grub
part sys0  1200MiB raid
part pv0   rest    raid
disk /dev/vdb
part bios1 1MiB    bios_grub
part sys1  1200MiB raid
part pv1   rest    raid
raid md0 1 sys0,sys1 ext4 / metadata=1.0 label=root
raid md1 1 pv0,pv1 lvm
vg data md1
lv data/swap    32MiB swap
lv data/scratch rest  xfs /scratch label=scratch keep
`

// raidReport says on the serial console where / and /scratch come from,
// what md and LVM see, and powers off: every boot of the RAID node.
var raidReport = fmt.Sprintf(`#!/bin/sh
# The first boot finishes the initial resync, so either member alone is
# whole afterwards.
mdadm --wait /dev/md0 /dev/md1 >/dev/null 2>&1
md=$(grep -A1 '^md' /proc/mdstat | tr -s ' \n' ' ')
lvs=$(lvs --noheadings -o vg_name,lv_name 2>/dev/null | tr -s ' \n' ' ')
# The first boot (nothing in /scratch yet) reads the disks back as a
# layout and keeps what mdadm and lvm report, for the host to read off
# the root; then leaves a file for the reinstall to keep.
if [ ! -e /scratch/kept ]; then
	d=/var/lib/sim-capture
	mkdir -p $d
	/usr/local/sbin/sim layout capture >$d/layout 2>$d/layout.err
	echo $? >$d/layout.rc
	mdadm --detail --export /dev/md0 >$d/md0.export
	mdadm --detail --export /dev/md1 >$d/md1.export
	mdadm --examine --export /dev/vda2 >$d/vda2.examine
	lvm %s >$d/pvs.json
	lvm %s >$d/vgs.json
	lvm %s >$d/lvs.json
	echo "week 3" >/scratch/kept
	sync
fi
echo "SIM-RAID root=$(findmnt -no SOURCE /) scratch=$(findmnt -no SOURCE /scratch) mdstat=[$md] lvs=[$lvs] kept=[$(cat /scratch/kept)]" >/dev/ttyS0
/bin/systemctl poweroff --no-block
`, strings.Join(disk.PVSArgs, " "), strings.Join(disk.VGSArgs, " "), strings.Join(disk.LVSArgs, " "))

const raidUnit = `[Unit]
Description=sim test: report md and LVM on the serial console, then power off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/sim-raid-report

[Install]
WantedBy=multi-user.target
`

// raid installs node n12 onto two disks (raidLayout), checks the
// installed root from the host (md0's metadata 1.0 is at the end, so a
// member reads as the filesystem): fstab by UUID, mdadm.conf; then boots
// the installed system with both disks, with the second only and with
// the first only, each time reading md and LVM from its console. The
// image is the bootable one with mdadm and lvm2 laid over it as an
// override, their files copied from this machine's packages (the
// bootable image has neither; a site's image would).
func (m *metalLab) raid() {
	t := m.t
	ov := filepath.Join(m.dir, "ov-md")
	os.MkdirAll(ov, 0o755)
	for _, pkg := range []string{"mdadm", "lvm2", "dmsetup", "libdevmapper-event1.02.1", "libaio1", "libedit2", "libbsd0", "liblvm2cmd2.03", "dmeventd"} {
		out, err := exec.Command("dpkg", "-L", pkg).Output()
		if err != nil {
			t.Skipf("raid: package %s is not installed here (make metal-deps): %v", pkg, err)
		}
		for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			fi, err := os.Lstat(f)
			if err != nil || fi.IsDir() || strings.HasPrefix(f, "/usr/share/doc") || strings.HasPrefix(f, "/usr/share/man") {
				continue
			}
			// At its real directory: /lib and /sbin are symlinks into
			// /usr here and in the image, and must stay so.
			real, err := filepath.EvalSymlinks(filepath.Dir(f))
			if err != nil {
				continue
			}
			dst := filepath.Join(ov, real, filepath.Base(f))
			os.MkdirAll(filepath.Dir(dst), 0o755)
			if out, err := exec.Command("cp", "-a", f, dst).CombinedOutput(); err != nil {
				t.Fatalf("cp %s: %v %s", f, err, out)
			}
		}
	}
	// sim itself, for the installed system to capture its own layout.
	os.MkdirAll(filepath.Join(ov, "usr/local/sbin"), 0o755)
	if out, err := exec.Command("cp", filepath.Join(m.dir, "sim"), filepath.Join(ov, "usr/local/sbin/sim")).CombinedOutput(); err != nil {
		t.Fatalf("cp sim: %v %s", err, out)
	}
	writeFiles(t, ov, map[string]string{
		"usr/local/sbin/sim-raid-report":      raidReport,
		"etc/systemd/system/sim-raid.service": raidUnit,
	})
	os.Chmod(filepath.Join(ov, "usr/local/sbin/sim-raid-report"), 0o755)
	os.MkdirAll(filepath.Join(ov, "etc/systemd/system/multi-user.target.wants"), 0o755)
	if err := os.Symlink("/etc/systemd/system/sim-raid.service", filepath.Join(ov, "etc/systemd/system/multi-user.target.wants/sim-raid.service")); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, m.dir, map[string]string{"raid-layout": raidLayout})
	ok(t, m.store, "commit", bootableRoot, "--image", "debian-md", "-m", "bootable, for md")
	ok(t, m.store, "layout", "set", "debian-md", filepath.Join(m.dir, "raid-layout"))
	ok(t, m.store, "override", "set", "mdtools", ov)
	ok(t, m.store, "node", "add", "n12", "--mac", "52:54:00:5e:00:0c", "--image", "debian-md", "--override", "mdtools")
	ok(t, m.store, "sign", "debian-md", "debian-md@layout", "mdtools@override", "--key", m.signKey)
	tok := lastLine(ok(t, m.store, "token", "add", "n12", "--role", "node"))

	v := m.newVM("raid", 12, "2500M", false)
	second := filepath.Join(m.dir, "raid-b.raw")
	if out, err := exec.Command("truncate", "-s", "2500M", second).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	v.extra = []string{second}
	con := m.boot(v, "sim.server="+m.url+" sim.onerror=poweroff sim.token="+tok, 20*time.Minute)
	if !strings.Contains(con, "SIM INSTALL DONE") {
		t.Fatalf("raid: install did not finish; console tail:\n%s", tail(con, 5000))
	}
	st := m.statuses()["n12"]
	if st.State != install.Done {
		t.Errorf("raid: server status %+v; want done", st)
	}
	t.Logf("FIGURE raid install (RAID1 + LVM on RAID1, two disks, BIOS): %.1f s from power-on to powered off", v.elapsed.Seconds())
	for _, want := range []string{"raid: running: 2 md arrays", "lvm: running: 1 volume groups, 2 logical volumes"} {
		if !strings.Contains(con, want) {
			t.Errorf("raid: console lacks %q", want)
		}
	}

	// From the host: either member's partition 2 is the root filesystem.
	for _, d := range []string{v.disk, second} {
		f := readRaidRoot(t, m.dir, d, "etc/fstab", "etc/mdadm/mdadm.conf", "etc/hostname")
		fstab, conf, host := f["etc/fstab"], f["etc/mdadm/mdadm.conf"], f["etc/hostname"]
		for _, want := range []string{"\t/\text4\t", "\t/scratch\txfs\t", "\tnone\tswap\t"} {
			if !strings.Contains(string(fstab), want) {
				t.Errorf("%s: fstab lacks %q:\n%s", d, want, fstab)
			}
		}
		if strings.Count(string(conf), "\nARRAY /dev/md") != 2 {
			t.Errorf("%s: mdadm.conf has not two arrays:\n%s", d, conf)
		}
		if string(host) != "n12\n" {
			t.Errorf("%s: hostname %q", d, host)
		}
	}

	bootDisk := func(name string, disks ...string) {
		t.Helper()
		b := &vm{name: "raid-" + name, disk: disks[0], extra: disks[1:], mac: v.mac}
		con := m.boot(b, "", 8*time.Minute)
		i := strings.Index(con, "SIM-RAID ")
		if i < 0 {
			t.Errorf("raid %s: the installed system did not report; console tail:\n%s", name, tail(con, 4000))
			return
		}
		line := con[i:]
		if j := strings.IndexByte(line, '\n'); j > 0 {
			line = line[:j]
		}
		t.Logf("raid %s: booted in %.1f s: %s", name, b.elapsed.Seconds(), line)
		for _, want := range []string{"root=/dev/md0", "scratch=/dev/mapper/data-scratch", "md0 : active raid1", "md1 : active raid1", "data scratch", "data swap"} {
			if !strings.Contains(line, want) {
				t.Errorf("raid %s: report lacks %q: %s", name, want, line)
			}
		}
		if want := map[bool]string{true: "[2/2] [UU]", false: "[2/1]"}[len(disks) == 2]; !strings.Contains(line, want) {
			t.Errorf("raid %s: report lacks %q: %s", name, want, line)
		}
		if !strings.Contains(line, "kept=[week 3]") {
			t.Errorf("raid %s: /scratch lacks the file written on the first boot: %s", name, line)
		}
	}
	bootDisk("both", v.disk, second)

	// What the installed system captured of itself is the layout it was
	// installed from (keep aside: a disk does not say what to keep).
	names := []string{"layout", "layout.err", "layout.rc", "md0.export", "md1.export", "vda2.examine", "pvs.json", "vgs.json", "lvs.json"}
	got := readRaidRoot(t, m.dir, v.disk, func() (p []string) {
		for _, n := range names {
			p = append(p, "var/lib/sim-capture/"+n)
		}
		return p
	}()...)
	if dir := os.Getenv("SIM_CAPTURE_TESTDATA"); dir != "" {
		// How client/disk/testdata/vm-raid was made.
		for _, n := range names[3:] {
			writeFiles(t, dir, map[string]string{n: got["var/lib/sim-capture/"+n]})
		}
	}
	want, err := layout.Parse(raidLayout)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want.LVs {
		want.LVs[i].Keep = false
	}
	var captured []string
	for _, l := range strings.Split(got["var/lib/sim-capture/layout"], "\n") {
		if !strings.HasPrefix(l, "#") && l != "" {
			captured = append(captured, l)
		}
	}
	if rc := strings.TrimSpace(got["var/lib/sim-capture/layout.rc"]); rc != "0" || strings.Join(captured, "\n")+"\n" != want.Format() {
		t.Errorf("raid: sim layout capture in the installed system (exit %s, %s):\n%s\nwant:\n%s", rc, got["var/lib/sim-capture/layout.err"], got["var/lib/sim-capture/layout"], want.Format())
	} else {
		t.Logf("raid: the installed system captured its layout:\n%s", got["var/lib/sim-capture/layout"])
	}

	// A reinstall keeps /scratch (the LV, its VG and md1 under it) and
	// makes the rest afresh; both disks alone still boot with the file.
	con = m.boot(v, "sim.server="+m.url+" sim.onerror=poweroff sim.token="+tok, 20*time.Minute)
	if !strings.Contains(con, "SIM INSTALL DONE") {
		t.Fatalf("raid reinstall: install did not finish; console tail:\n%s", tail(con, 5000))
	}
	t.Logf("FIGURE raid reinstall keeping data/scratch: %.1f s from power-on to powered off", v.elapsed.Seconds())
	for _, want := range []string{"logical volume data/scratch: kept", "mkfs: running: 2 kept"} {
		if !strings.Contains(con, want) {
			t.Errorf("raid reinstall: console lacks %q; tail:\n%s", want, tail(con, 4000))
		}
	}
	// Each disk alone, both at once: they share nothing (two VMs, one
	// image file each).
	var wg gosync.WaitGroup
	for name, d := range map[string]string{"second-only": second, "first-only": v.disk} {
		wg.Add(1)
		go func() { defer wg.Done(); bootDisk(name, d) }()
	}
	wg.Wait()
}

// readRaidRoot reads files off disk image d's partition 2 (md0's member
// with metadata 1.0 at its end: the root filesystem itself, at 2 MiB
// after 1 MiB of GPT and the 1 MiB bios_grub), mounted read-only.
func readRaidRoot(t *testing.T, dir, d string, files ...string) map[string]string {
	t.Helper()
	out, err := exec.Command("losetup", "-f", "--show", "-r", "-o", "2097152", "--sizelimit", "1258291200", d).Output()
	if err != nil {
		t.Fatalf("losetup %s: %v", d, err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	mnt := filepath.Join(dir, "inspect-"+filepath.Base(d))
	os.MkdirAll(mnt, 0o755)
	if err := unix.Mount(dev, mnt, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatalf("mount %s (partition 2 of %s: md0's member, the root): %v", dev, d, err)
	}
	defer unix.Unmount(mnt, 0)
	got := map[string]string{}
	for _, f := range files {
		b, _ := os.ReadFile(filepath.Join(mnt, f))
		got[f] = string(b)
	}
	return got
}
