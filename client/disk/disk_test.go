package disk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/client/layout"
)

func TestPartPath(t *testing.T) {
	for _, c := range [][3]string{{"/dev/vda", "3", "/dev/vda3"}, {"/dev/nvme0n1", "2", "/dev/nvme0n1p2"}, {"/dev/mmcblk0", "1", "/dev/mmcblk0p1"}, {"/dev/sdb", "12", "/dev/sdb12"}} {
		n := map[string]int{"1": 1, "2": 2, "3": 3, "12": 12}[c[1]]
		if got := PartPath(c[0], n); got != c[2] {
			t.Errorf("PartPath(%s, %d) = %s; want %s", c[0], n, got, c[2])
		}
	}
}

func TestFstabAndOrder(t *testing.T) {
	parts := planVda(t, "part bios 1MiB bios_grub\npart esp 100MiB esp /boot/efi\npart home 1GiB xfs /home/users\npart sw 1GiB swap\npart root rest ext4 / options=noatime\npart var 1GiB ext4 /var\n")
	var order []string
	for _, p := range MountOrder(parts) {
		order = append(order, p.Mount)
	}
	if got := strings.Join(order, " "); got != "/ /var /boot/efi /home/users" {
		t.Errorf("mount order %s", got)
	}
	fs := Fstab(parts)
	for _, want := range []string{
		"UUID=Uroot\t/\text4\tnoatime\t0\t1\n",
		"UUID=Uesp\t/boot/efi\tvfat\tumask=0077\t0\t2\n",
		"UUID=Uhome\t/home/users\txfs\tdefaults\t0\t0\n",
		"UUID=Usw\tnone\tswap\tsw\t0\t0\n",
	} {
		if !strings.Contains(fs, want) {
			t.Errorf("fstab lacks %q:\n%s", want, fs)
		}
	}
	if strings.Contains(fs, "bios") {
		t.Errorf("fstab names the bios_grub partition:\n%s", fs)
	}
}

func TestListAndFind(t *testing.T) {
	sys := t.TempDir()
	old := SysBlock
	SysBlock = sys
	defer func() { SysBlock = old }()
	mk := func(name, size string, ro, removable string, device bool) {
		d := filepath.Join(sys, name)
		os.MkdirAll(filepath.Join(d, "queue"), 0o755)
		os.WriteFile(filepath.Join(d, "size"), []byte(size+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "ro"), []byte(ro), 0o644)
		os.WriteFile(filepath.Join(d, "removable"), []byte(removable), 0o644)
		if device {
			os.MkdirAll(filepath.Join(d, "device"), 0o755)
		}
	}
	mk("vdb", "8388608", "0", "0", true) // 4 GiB
	mk("vda", "2097152", "0", "0", true) // 1 GiB
	mk("loop0", "2097152", "0", "0", false)
	mk("sr0", "2097152", "1", "1", true)
	mk("sdz", "2097152", "0", "1", true) // USB stick
	ds, err := List()
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].Name != "vda" || ds[1].Name != "vdb" || ds[1].Size != 4<<30 || ds[0].Sector != 512 {
		t.Fatalf("List = %+v", ds)
	}
	if d, _ := Find("first"); d.Name != "vda" {
		t.Errorf("first = %s", d.Name)
	}
	if d, _ := Find("largest"); d.Name != "vdb" {
		t.Errorf("largest = %s", d.Name)
	}
	if _, err := Find("/dev/nosuchdisk"); err == nil {
		t.Error("missing disk found")
	}
}

func TestFstabKeepsImageLines(t *testing.T) {
	parts := planVda(t, "part root rest ext4 /\npart data 1GiB xfs /data\npart sw 1GiB swap\n")
	image := "# /etc/fstab of the golden client\n" +
		"UUID=old-root / ext4 errors=remount-ro 0 1\n" +
		"LABEL=oldswap none swap sw 0 0\n" +
		"/dev/sda3 /scratch ext4 defaults 0 2\n" +
		"nfs1:/export/home  /home  nfs  rw,hard,vers=4.2  0 0\n" +
		"10.0.0.5@o2ib:/lustre /lustre lustre defaults,_netdev 0 0\n" +
		"/data/apps /opt/apps none bind 0 0\n" +
		"/dev/sdb1 /srv/x none rbind 0 0\n" +
		"nfs2:/data /data nfs defaults 0 0\n" + // the layout mounts /data
		"tmpfs /tmp tmpfs size=2G 0 0\n" +
		"\n"
	fs := FstabWith(parts, []byte(image))
	for _, c := range []struct {
		line string
		kept bool
	}{
		{"nfs1:/export/home  /home  nfs  rw,hard,vers=4.2  0 0\n", true},
		{"10.0.0.5@o2ib:/lustre /lustre lustre defaults,_netdev 0 0\n", true},
		{"/data/apps /opt/apps none bind 0 0\n", true},
		{"/dev/sdb1 /srv/x none rbind 0 0\n", true},
		{"tmpfs /tmp tmpfs size=2G 0 0\n", true},
		{"UUID=old-root", false},
		{"LABEL=oldswap", false},
		{"/dev/sda3 /scratch", false},
		{"nfs2:/data", false},
		{"golden client", false},
	} {
		if strings.Contains(fs, c.line) != c.kept {
			t.Errorf("fstab kept=%v for %q:\n%s", !c.kept, c.line, fs)
		}
	}
	// The layout's lines come first, the image's after them in order.
	if i, j := strings.Index(fs, "UUID=Udata\t/data\t"), strings.Index(fs, "/data/apps /opt/apps"); i < 0 || j < i {
		t.Errorf("order:\n%s", fs)
	}
	if strings.Index(fs, "nfs1:") > strings.Index(fs, "10.0.0.5@o2ib") {
		t.Errorf("image order not kept:\n%s", fs)
	}
	if FstabWith(parts, nil) != Fstab(parts) || strings.Contains(Fstab(parts), "kept from") {
		t.Error("no image fstab: FstabWith differs from Fstab")
	}
}

// planVda plans layout text on an 8 GiB /dev/vda: its parts, each with
// the UUID "U" + its name.
func planVda(t *testing.T, text string) []Part {
	t.Helper()
	l, err := layout.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	ext, err := l.Plan("/dev/vda", 8<<30)
	if err != nil {
		t.Fatal(err)
	}
	var parts []Part
	for _, e := range ext {
		parts = append(parts, Part{Extent: e, Dev: PartPath("/dev/vda", e.Index), UUID: "U" + e.Name})
	}
	return parts
}

func TestFstabVolumes(t *testing.T) {
	l, err := layout.Parse(`disk /dev/vda
part a rest raid
disk /dev/vdb
part b rest raid
raid md0 1 a,b lvm
vg vg md0
lv vg/root 20GiB ext4 /
lv vg/data rest btrfs
subvol vg/data @home /home options=compress=zstd
subvol vg/data @srv /srv
`)
	if err != nil {
		t.Fatal(err)
	}
	parts := []Part{
		{Extent: layout.Extent{Partition: l.RAIDs[0].Partition}, Dev: "/dev/md0", Kind: KindRAID},
		{Extent: layout.Extent{Partition: l.LVs[0].Partition}, Dev: l.LVs[0].Dev(), Kind: KindLV, VG: "vg", UUID: "r"},
		{Extent: layout.Extent{Partition: l.LVs[1].Partition}, Dev: l.LVs[1].Dev(), Kind: KindLV, VG: "vg", UUID: "d"},
	}
	if v, ok := volumeOf(parts, "vg/data"); !ok || v.Dev != "/dev/mapper/vg-data" {
		t.Fatalf("volumeOf(vg/data) = %+v %v", v, ok)
	}
	for _, s := range l.Subvols {
		parts = append(parts, Part{Extent: layout.Extent{Partition: layout.Partition{Name: s.Name, FS: layout.FSBtrfs, Mount: s.Mount, Options: s.Options}},
			Dev: "/dev/mapper/vg-data", UUID: "d", Kind: KindSubvol, Subvol: s.Name})
	}
	got := FstabWith(parts, []byte("UUID=x /home ext4 defaults 0 2\nnfs:/a /a nfs defaults 0 0\n"))
	want := "# written by sim install from the image's layout; filesystems by UUID\n" +
		"UUID=r\t/\text4\terrors=remount-ro\t0\t1\n" +
		"UUID=d\t/home\tbtrfs\tsubvol=@home,compress=zstd\t0\t0\n" +
		"UUID=d\t/srv\tbtrfs\tsubvol=@srv\t0\t0\n" +
		"# kept from the image's fstab: filesystems the layout does not make\n" +
		"nfs:/a /a nfs defaults 0 0\n"
	if got != want {
		t.Errorf("fstab:\n%s\nwant:\n%s", got, want)
	}
	// An xfs root: no errors= (xfs refuses it at mount), no fsck pass.
	xfs := Fstab([]Part{{Extent: layout.Extent{Partition: layout.Partition{Name: "root", FS: layout.FSXfs, Mount: "/"}}, UUID: "x"}})
	if !strings.Contains(xfs, "UUID=x\t/\txfs\tdefaults\t0\t0\n") {
		t.Errorf("xfs root fstab:\n%s", xfs)
	}
	// The unmounted btrfs volume and the array (a PV) are not mounted.
	if m := MountOrder(parts); len(m) != 3 || m[0].Mount != "/" {
		t.Errorf("MountOrder: %+v", m)
	}
}
