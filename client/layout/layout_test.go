package layout

import (
	"errors"
	"strings"
	"testing"
)

const example = `sim-layout 1
# a BIOS+UEFI disk
disk first
part bios 1MiB  bios_grub
part esp  256MiB esp  /boot/efi label=ESP
part swap 512M swap
part root rest  ext4 /          label=root options=noatime,errors=remount-ro
`

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Size
		err  string
	}{
		{"512MiB", Size{Kind: Fixed, Bytes: 512 << 20}, ""},
		{"512M", Size{Kind: Fixed, Bytes: 512 << 20}, ""},
		{"1.5G", Size{Kind: Fixed, Bytes: 3 << 29}, ""},
		{"2GB", Size{Kind: Fixed, Bytes: 2e9}, ""},
		{"4096", Size{Kind: Fixed, Bytes: 4096}, ""},
		{"20%", Size{Kind: Percent, Percent: 20}, ""},
		{"rest", Size{Kind: Rest}, ""},
		{"*", Size{Kind: Rest}, ""},
		{"0%", Size{}, "bad percentage"},
		{"101%", Size{}, "bad percentage"},
		{"12XB", Size{}, "unknown unit"},
		{"-5M", Size{}, "bad size"},
		{"0", Size{}, "out of range"},
		{"", Size{}, "bad size"},
	} {
		got, err := ParseSize(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseSize(%q) error = %v; want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestParse(t *testing.T) {
	l, err := Parse(example)
	if err != nil {
		t.Fatal(err)
	}
	if l.Disk != "first" || l.Bootloader != "grub" || len(l.Partitions) != 4 {
		t.Fatalf("got %+v", l)
	}
	r := l.Partitions[3]
	if r.Mount != "/" || r.Label != "root" || r.Options != "noatime,errors=remount-ro" || r.Size.Kind != Rest || r.FS != FSExt4 {
		t.Errorf("root = %+v", r)
	}
	// Format is parseable and a fixed point.
	l2, err := Parse(l.Format())
	if err != nil {
		t.Fatal(err)
	}
	if l2.Format() != l.Format() {
		t.Errorf("Format not stable:\n%s\n%s", l.Format(), l2.Format())
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"part root rest ext4 /\nfoo bar", "line 2 \"foo bar\": unknown keyword"},
		{"sim-layout 2\npart root rest ext4 /", "line 1 \"sim-layout 2\": unsupported layout version"},
		{"disk sda\npart root rest ext4 /", "bad disk \"sda\""},
		{"disk /dev/vda\ndisk /dev/vdb\npart root rest ext4 /", "layout line 1 (disk /dev/vda): disk /dev/vda has no partitions"},
		{"part root rest ext5 /", "unknown filesystem \"ext5\""},
		{"part root huge ext4 /", "bad size \"huge\""},
		{"part r/oot rest ext4 /", "bad partition name"},
		{"part root rest ext4", "needs a mount point"},
		{"part root rest ext4 /\npart home rest ext4 /home", "more than one partition sized \"rest\""},
		{"part root rest ext4 /\npart root 1G ext4 /home", "partition \"root\" named twice"},
		{"part root rest ext4 /\npart home 1G ext4 /", "mount point / used twice"},
		{"part home rest ext4 /home", "no partition is mounted at /"},
		{"part root rest ext4 /\npart sw 1G swap /swap", "cannot have mount point"},
		{"part root rest ext4 /\npart e 1G esp /boot/efi label=ABCDEFGHIJKL", "at most 11"},
		{"part root rest vfat /", "root filesystem cannot be vfat"},
		{"part root rest ext4 /x/../y", "bad mount point"},
		{"part root rest ext4 / colour=red", "unexpected \"colour=red\""},
		{"part a 60% ext4 /\npart b 50% ext4 /b", "add up to 110%"},
		{"", "no partitions"},
		{"part root rest ext4 / label=", "bad label"},
		{"disk first bsd\npart root rest ext4 /", "line 1 \"disk first bsd\": unknown partition table \"bsd\""},
		{"disk first msdos extra\npart root rest ext4 /", "line 1 \"disk first msdos extra\": want: disk"},
		{"disk /dev/sda msdos\npart a 1G ext4 /\npart b 1G ext3 /b\npart c 1G ext2 /c\npart d 1G swap\npart e rest xfs /e", "disk /dev/sda: an msdos table holds at most 4 (primary) partitions, the layout has 5"},
		{"disk first msdos\npart bios 1MiB bios_grub\npart root rest ext4 /", "partition \"bios\": bios_grub is for GPT disks"},
		{"part root rest ext3", "partition \"root\" (ext3) needs a mount point"},
		{"part root rest ext4 / keep", "partition \"root\": the root filesystem cannot be kept"},
		{"part root rest ext4 /\npart sw 1G swap keep", "partition \"sw\" (swap) cannot be kept"},
		{"part root rest ext4 /\npart esp 100M esp /boot/efi keep", "partition \"esp\" (esp) cannot be kept"},
		{"part root rest ext4 /\npart s 1G xfs /s keep=yes", "line 2 \"part s 1G xfs /s keep=yes\": unexpected \"keep=yes\""},
	} {
		_, err := Parse(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) error = %v; want %q", c.in, err, c.want)
		}
	}
}

func TestParseTablesAndExt(t *testing.T) {
	for _, c := range []struct {
		in, table string
		fs        []FS
	}{
		{"part root rest ext4 /", TableGPT, []FS{FSExt4}},
		{"disk first gpt\npart root rest ext2 /", TableGPT, []FS{FSExt2}},
		{"disk /dev/sda msdos\npart boot 256MiB ext2 /boot\npart root rest ext3 /\npart sw 1G swap", TableMsdos, []FS{FSExt2, FSExt3, FSSwap}},
		{"disk largest msdos\npart esp 100MiB esp /boot/efi\npart root rest ext4 /", TableMsdos, []FS{FSESP, FSExt4}},
	} {
		l, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if l.Table != c.table {
			t.Errorf("Parse(%q): table %q, want %q", c.in, l.Table, c.table)
		}
		for i, f := range c.fs {
			if l.Partitions[i].FS != f || (f != FSSwap && !l.Partitions[i].FS.Mountable()) {
				t.Errorf("Parse(%q): partition %d is %s, want mountable %s", c.in, i, l.Partitions[i].FS, f)
			}
		}
		// Format keeps the table (and writes gpt, the default, as before).
		f := l.Format()
		if strings.Contains(f, " msdos\n") != (c.table == TableMsdos) || strings.Contains(f, " gpt") {
			t.Errorf("Format of %q:\n%s", c.in, f)
		}
		l2, err := Parse(f)
		if err != nil || l2.Table != l.Table || l2.Format() != f {
			t.Errorf("Format of %q does not parse back: %v\n%s", c.in, err, f)
		}
	}
	l, err := Parse("part root 20G ext4 /\npart scratch rest xfs /scratch label=scratch keep\n")
	if err != nil {
		t.Fatal(err)
	}
	if l.Partitions[0].Keep || !l.Partitions[1].Keep {
		t.Errorf("keep: %+v", l.Partitions)
	}
	if f := l.Format(); !strings.Contains(f, "part scratch rest xfs /scratch label=scratch keep\n") {
		t.Errorf("Format drops keep:\n%s", f)
	} else if l2, err := Parse(f); err != nil || !l2.Partitions[1].Keep {
		t.Errorf("Format of keep does not parse back: %v", err)
	}
	if !FSExt2.Ext() || !FSExt3.Ext() || !FSExt4.Ext() || FSXfs.Ext() {
		t.Error("Ext() wrong")
	}
}

func TestPlan(t *testing.T) {
	l, err := Parse(example)
	if err != nil {
		t.Fatal(err)
	}
	const MiB = 1 << 20
	for _, c := range []struct {
		name  string
		size  uint64
		sizes []uint64 // bytes per partition
		err   string
	}{
		{"4GiB", 4 << 30, []uint64{1 * MiB, 256 * MiB, 512 * MiB, 4096*MiB - 2*MiB - 769*MiB}, ""},
		{"odd size", 4<<30 + 12345, []uint64{1 * MiB, 256 * MiB, 512 * MiB, 4096*MiB - 1*MiB - 769*MiB - 1*MiB}, ""},
		{"too small", 700 * MiB, nil, "too small for the layout: it has 700.0 MiB"},
		{"tiny", 1000, nil, "too small"},
	} {
		ext, err := l.Plan("/dev/vda", c.size)
		if c.err != "" {
			var ts *TooSmallError
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.As(err, &ts) {
				t.Errorf("%s: err = %v; want %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		at := uint64(MiB)
		for i, e := range ext {
			if e.Bytes != c.sizes[i] || e.Start != at || e.Index != i+1 {
				t.Errorf("%s: part %d = start %d bytes %d; want start %d bytes %d", c.name, i, e.Start, e.Bytes, at, c.sizes[i])
			}
			at += e.Bytes
		}
		if at+34*4096 > c.size {
			t.Errorf("%s: partitions end at %d, into the backup GPT of a %d-byte disk", c.name, at, c.size)
		}
	}
}

func TestPlanPercent(t *testing.T) {
	l, err := Parse("part root 50% ext4 /\npart data 25% xfs /data\npart swap rest swap")
	if err != nil {
		t.Fatal(err)
	}
	const size = 10 << 30
	ext, err := l.Plan("d", size)
	if err != nil {
		t.Fatal(err)
	}
	start, end := Usable(size)
	u := end - start
	if ext[0].Bytes != u/2/Align*Align || ext[1].Bytes != u/4/Align*Align || ext[2].Bytes != u-ext[0].Bytes-ext[1].Bytes {
		t.Errorf("got %d %d %d of %d", ext[0].Bytes, ext[1].Bytes, ext[2].Bytes, u)
	}
	for _, e := range ext {
		if e.Start%Align != 0 || e.Bytes%Align != 0 {
			t.Errorf("%s not aligned: %d+%d", e.Name, e.Start, e.Bytes)
		}
	}
	// xfs below its minimum on a small disk.
	if _, err := l.Plan("d", 800<<20); err == nil {
		t.Error("xfs 25% of 800 MiB accepted")
	}
	l2, _ := Parse("part root rest ext4 /\npart x 100MiB xfs /x")
	if _, err := l2.Plan("d", 1<<30); err == nil || !strings.Contains(err.Error(), "below the xfs minimum") {
		t.Errorf("100 MiB xfs: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(example)
	f.Add("part a 1% ext4 /\npart b rest swap")
	f.Add(hpc)
	f.Add("part b rest btrfs\nsubvol b @ /\n")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			return
		}
		l2, err := Parse(l.Format())
		if err != nil {
			t.Fatalf("Format of a parsed layout does not parse: %v\n%s", err, l.Format())
		}
		if l2.Format() != l.Format() {
			t.Fatalf("Format not stable:\n%s\n---\n%s", l.Format(), l2.Format())
		}
		for _, d := range l.AllDisks() {
			d.Plan("d", 1<<34)
		}
	})
}
