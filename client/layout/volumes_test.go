package layout

import (
	"strings"
	"testing"
)

// hpc is the README's worked example: two disks, RAID1 for the system,
// LVM on a second RAID1, a kept /scratch on each disk's own partition
// would need two; here one disk has it.
const hpc = `sim-layout 1
disk /dev/vda
bootloader grub
part bios0 1MiB bios_grub
part sys0  4GiB raid
part vg0   rest raid
disk /dev/vdb
part bios1 1MiB bios_grub
part sys1  4GiB raid
part vg1   20GiB raid
part scratch rest xfs /scratch keep
raid md0 1 sys0,sys1 ext4 / metadata=1.0 label=root
raid md1 1 vg0,vg1 lvm
vg data md1
lv data/swap 1GiB swap
lv data/home 30% ext4 /home
lv data/srv rest btrfs
subvol data/srv @srv /srv
subvol data/srv @log /var/log options=noatime
`

func TestParseVolumes(t *testing.T) {
	l, err := Parse(hpc)
	if err != nil {
		t.Fatal(err)
	}
	ds := l.AllDisks()
	if len(ds) != 2 || ds[0].Spec != "/dev/vda" || ds[1].Spec != "/dev/vdb" || len(ds[0].Partitions) != 3 || len(ds[1].Partitions) != 4 {
		t.Fatalf("disks: %+v", ds)
	}
	if ds[1].Line != 7 || ds[1].Partitions[3].Line != 11 || !ds[1].Partitions[3].Keep {
		t.Errorf("second disk lines: %+v", ds[1])
	}
	if len(l.RAIDs) != 2 || l.RAIDs[0].Level != 1 || l.RAIDs[0].Metadata != "1.0" || l.RAIDs[0].Mount != "/" || l.RAIDs[1].FS != FSLVM {
		t.Errorf("raids: %+v", l.RAIDs)
	}
	if len(l.LVs) != 3 || l.LVs[1].Size.Percent != 30 || l.LVs[2].Size.Kind != Rest || l.LVs[0].Dev() != "/dev/mapper/data-swap" {
		t.Errorf("lvs: %+v", l.LVs)
	}
	if len(l.Subvols) != 2 || l.Subvols[1].Options != "noatime" || l.Subvols[0].On != "data/srv" {
		t.Errorf("subvols: %+v", l.Subvols)
	}
	if (LV{VG: "a-b", Partition: Partition{Name: "c"}}).Dev() != "/dev/mapper/a--b-c" {
		t.Error("device-mapper name escaping")
	}
	f := l.Format()
	l2, err := Parse(f)
	if err != nil || l2.Format() != f {
		t.Fatalf("Format round trip: %v\n%s\n---\n%s", err, f, l2.Format())
	}
	ext, err := ds[1].Plan("/dev/vdb", 64<<30)
	if err != nil || len(ext) != 4 || ext[3].Bytes != 64<<30-2<<20-24<<30-1<<20 {
		t.Errorf("plan of the second disk: %v %+v", err, ext)
	}
}

func TestParseVolumeErrors(t *testing.T) {
	two := "disk /dev/vda\npart a 1G raid\ndisk /dev/vdb\npart b 1G raid\n"
	for _, c := range []struct{ in, want string }{
		{"disk /dev/vda\npart root rest ext4 /\ndisk /dev/vda\npart x 1G xfs /x", "line 3 \"disk /dev/vda\": disk /dev/vda named twice (first on line 1)"},
		{"disk /dev/vda\npart root rest ext4 /\ndisk /dev/vdb\npart root 1G xfs /x", "layout line 4 (disk /dev/vdb): partition \"root\" named twice (first at layout line 2 (disk /dev/vda))"},
		{"disk /dev/vda\npart root rest ext4 /\ndisk /dev/vdb\npart x 1G xfs /x\npart y rest ext4 /y\npart z rest ext4 /z", "layout line 6 (disk /dev/vdb): more than one partition sized \"rest\" on disk /dev/vdb"},
		{"disk /dev/vda\npart root rest ext4 /\ndisk /dev/vdb msdos\npart b 1MiB bios_grub", "layout line 4 (disk /dev/vdb): partition \"b\": bios_grub is for GPT"},
		{"disk /dev/vda\npart root rest ext4 /\ndisk /dev/vdb\n", "layout line 3 (disk /dev/vdb): disk /dev/vdb has no partitions"},
		{two + "raid md0 7 a,b ext4 /", "line 5 \"raid md0 7 a,b ext4 /\": bad RAID level \"7\""},
		{two + "raid m0 1 a,b ext4 /", "bad array name \"m0\""},
		{two + "raid md0 5 a,b ext4 /", "layout line 5: array md0: RAID 5 needs at least 3 members, it has 2"},
		{two + "raid md0 1 a,c ext4 /", "layout line 5: array md0: no partition or array \"c\""},
		{two + "part c 1G raid\nraid md0 0 a,b ext4 / spares=c", "layout line 6: array md0: RAID 0 has no redundancy"},
		{two + "raid md0 1 a,a ext4 /", "\"a\" is already used by array md0"},
		{two + "raid md0 1 a,b ext4 /\nraid md1 1 a,b ext4 /x", "layout line 6: array md1: \"a\" is already used by array md0"},
		{two + "raid md0 1 a,b esp /boot/efi", "cannot be on an md array"},
		{two + "raid md0 1 a,b ext4 / metadata=0.9", "bad metadata \"0.9\""},
		{"disk /dev/vda\npart root rest ext4 /\npart r 1G raid", "layout line 3 (disk /dev/vda): \"r\" (raid) is in no raid line"},
		{"part root rest ext4 /\npart p 1G lvm", "\"p\" (lvm) is in no vg line"},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nvg v p", "layout line 4: volume group v named twice"},
		{"part root rest ext4 /\npart p 1G xfs /p\nvg v p", "layout line 3: volume group v: \"p\" is xfs, not lvm"},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nlv w/x 1G ext4 /x", "layout line 4: logical volume w/x: no volume group w"},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nlv v/x rest ext4 /x\nlv v/y rest ext4 /y", "layout line 5: more than one logical volume of v sized \"rest\""},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nlv v/x 60% ext4 /x\nlv v/y 50% ext4 /y", "percentages of volume group v add up to 110%"},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nlv v/x 1G ext4", "layout line 4: logical volume v/x (ext4) needs a mount point"},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nlv v/x 1G btrfs /x keep", "layout line 4: logical volume v/x (btrfs) cannot be kept"},
		{"part a 1G raid\npart b 1G raid\nraid md0 1 a,b ext4 / keep", "array \"md0\": the root filesystem cannot be kept"},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nlv v/x 1G vfat /x", "cannot be on LVM"},
		{"part root rest ext4 /\npart p 1G lvm\nvg v p\nlv vx 1G ext4 /x", "bad logical volume \"vx\""},
		{"part root rest ext4 /\npart b 1G btrfs", "layout line 2: b (btrfs) needs a mount point or a subvol line"},
		{"part root rest ext4 /\npart b 1G btrfs\nsubvol root @x /x", "layout line 3: subvolume @x: \"root\" is not a btrfs"},
		{"part root rest ext4 /\npart b 1G btrfs\nsubvol b @x /", "layout line 3: mount point / used twice"},
		{"part b rest btrfs\nsubvol b @x /x options=subvol=@y", "without subvol="},
		{"part b rest btrfs\nsubvol b @x /x", "no partition is mounted at /"},
		{"part b rest btrfs keep\nsubvol b @ /", "cannot be kept"},
	} {
		_, err := Parse(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) error = %v; want %q", c.in, err, c.want)
		}
	}
	// A btrfs root made only of subvolumes is a whole layout.
	if _, err := Parse("part b rest btrfs\nsubvol b @ /\nsubvol b @home /home"); err != nil {
		t.Error(err)
	}
}
