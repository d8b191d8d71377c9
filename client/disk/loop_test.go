package disk

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/layout"
)

// loopDisk attaches a sparse file of size bytes as a loop device with
// partition scanning and detaches it in t.Cleanup. It skips when not root
// or without losetup.
func loopDisk(t *testing.T, size int64) Info {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop-device partitioning: needs root (losetup, mkfs, mount)")
	}
	for _, tool := range []string{"losetup", "blkid", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("loop-device partitioning: no %s", tool)
		}
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "-f", "--show", "-P", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v: %s", img, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	d, err := Find(dev)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// blkid is one tag of a device as blkid -p (probing the device itself,
// not its cache) reports it.
func blkid(t *testing.T, dev, tag string) string {
	t.Helper()
	out, _ := exec.Command("blkid", "-p", "-o", "value", "-s", tag, dev).Output()
	return strings.TrimSpace(string(out))
}

// TestPartitionMsdosLoop writes a GPT and then, over it, an msdos table
// with ext2, ext3 and swap on a loop device: the disk ends with a dos
// table only, the partitions have the MBR types and the filesystems their
// kinds and UUIDs, and ext3 mounts and holds a file.
func TestPartitionMsdosLoop(t *testing.T) {
	d := loopDisk(t, 256<<20)
	gptL, err := layout.Parse("disk /dev/x gpt\npart bios 1MiB bios_grub\npart root rest ext4 /\n")
	if err != nil {
		t.Fatal(err)
	}
	ext, err := gptL.Plan(d.Path, d.Size)
	if err != nil {
		t.Fatal(err)
	}
	gparts, err := Partition(d, ext, gptL.Table)
	if err != nil {
		t.Fatal(err)
	}
	if err := Mkfs(&gparts[1]); err != nil {
		t.Fatal(err)
	}
	if got := sniff(gparts[1].Dev); got != layout.FSExt4 {
		t.Errorf("capture reads the ext4 %s as %s", gparts[1].Dev, got)
	}
	if got := blkid(t, d.Path, "PTTYPE"); got != "gpt" {
		t.Fatalf("after the GPT: PTTYPE %q", got)
	}

	l, err := layout.Parse("disk /dev/x msdos\npart boot 64MiB ext2 /boot label=boot\npart root rest ext3 / label=root\npart swap 16MiB swap\n")
	if err != nil {
		t.Fatal(err)
	}
	ext, err = l.Plan(d.Path, d.Size)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := Partition(d, ext, l.Table)
	if err != nil {
		t.Fatal(err)
	}
	if got := blkid(t, d.Path, "PTTYPE"); got != "dos" {
		t.Fatalf("after the msdos table: PTTYPE %q, want dos", got)
	}
	// blkid -p reads each partition's entry from the table itself.
	for _, c := range []struct {
		p                           Part
		typ, flags, offset, sectors string
	}{
		{parts[0], "0x83", "0x80", "2048", "131072"},
		{parts[1], "0x83", "", "133120", ""},
		{parts[2], "0x82", "", "", "32768"},
	} {
		if got := blkid(t, c.p.Dev, "PART_ENTRY_SCHEME"); got != "dos" {
			t.Errorf("%s (%s): scheme %q, want dos", c.p.Dev, c.p.Name, got)
		}
		if got := blkid(t, c.p.Dev, "PART_ENTRY_TYPE"); got != c.typ {
			t.Errorf("%s (%s): type %q, want %s", c.p.Dev, c.p.Name, got, c.typ)
		}
		if got := blkid(t, c.p.Dev, "PART_ENTRY_FLAGS"); got != c.flags {
			t.Errorf("%s (%s): flags %q, want %q (only /boot active)", c.p.Dev, c.p.Name, got, c.flags)
		}
		if got := blkid(t, c.p.Dev, "PART_ENTRY_OFFSET"); c.offset != "" && got != c.offset {
			t.Errorf("%s (%s): offset %q, want %s", c.p.Dev, c.p.Name, got, c.offset)
		}
		if got := blkid(t, c.p.Dev, "PART_ENTRY_SIZE"); c.sectors != "" && got != c.sectors {
			t.Errorf("%s (%s): size %q sectors, want %s", c.p.Dev, c.p.Name, got, c.sectors)
		}
	}
	for i := range parts {
		if err := Mkfs(&parts[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		p          Part
		typ, label string
	}{{parts[0], "ext2", "boot"}, {parts[1], "ext3", "root"}, {parts[2], "swap", ""}} {
		if got := blkid(t, c.p.Dev, "TYPE"); got != c.typ {
			t.Errorf("%s (%s): TYPE %q, want %q", c.p.Dev, c.p.Name, got, c.typ)
		}
		if got := blkid(t, c.p.Dev, "UUID"); got != c.p.UUID {
			t.Errorf("%s (%s): UUID %q, Mkfs said %q", c.p.Dev, c.p.Name, got, c.p.UUID)
		}
		if got := sniff(c.p.Dev); got != layout.FS(c.typ) {
			t.Errorf("%s (%s): capture reads it as %s, want %s", c.p.Dev, c.p.Name, got, c.typ)
		}
		if got := blkid(t, c.p.Dev, "LABEL"); got != c.label {
			t.Errorf("%s (%s): LABEL %q, want %q", c.p.Dev, c.p.Name, got, c.label)
		}
	}
	target := t.TempDir()
	dir, err := Mount(parts[1], target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Unmount([]string{dir}); err != nil {
		t.Fatal(err)
	}
	fs := Fstab(parts)
	for _, want := range []string{"UUID=" + parts[0].UUID + "\t/boot\text2\tdefaults\t0\t2\n", "UUID=" + parts[1].UUID + "\t/\text3\terrors=remount-ro\t0\t1\n"} {
		if !strings.Contains(fs, want) {
			t.Errorf("fstab lacks %q:\n%s", want, fs)
		}
	}
}

// TestPartitionMsdosErrors: what an msdos table cannot hold fails naming
// the disk and the partition.
func TestPartitionMsdosErrors(t *testing.T) {
	d := Info{Path: "/dev/big", Size: 3 << 40, Sector: 512}
	l, err := layout.Parse("disk /dev/big msdos\npart root 1GiB ext4 /\npart data rest xfs /data\n")
	if err != nil {
		t.Fatal(err)
	}
	ext, err := l.Plan(d.Path, d.Size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Partition(d, ext, l.Table); err == nil || !strings.Contains(err.Error(), `disk /dev/big: partition "data" ends past the 2 TiB`) {
		t.Errorf("3 TiB msdos: %v", err)
	}
	if _, err := Partition(d, ext, "bsd"); err == nil || !strings.Contains(err.Error(), `disk /dev/big: unknown partition table "bsd"`) {
		t.Errorf("bsd table: %v", err)
	}
}

// TestKeepLoop: a partition marked keep survives a second partitioning of
// the same disk with the same layout (same UUID, its file still there)
// while the others are reformatted; it is not kept when its place or
// filesystem changes; on GPT and on msdos.
func TestKeepLoop(t *testing.T) {
	for _, table := range []string{layout.TableGPT, layout.TableMsdos} {
		t.Run(table, func(t *testing.T) {
			d := loopDisk(t, 256<<20)
			run := func(text string) []Part {
				t.Helper()
				l, err := layout.Parse("disk /dev/x " + table + "\n" + text)
				if err != nil {
					t.Fatal(err)
				}
				ext, err := l.Plan(d.Path, d.Size)
				if err != nil {
					t.Fatal(err)
				}
				kept, err := Kept(d, ext, l.Table)
				if err != nil {
					t.Fatal(err)
				}
				parts, err := Partition(d, ext, l.Table)
				if err != nil {
					t.Fatal(err)
				}
				MarkKept(parts, kept)
				for i := range parts {
					if err := Mkfs(&parts[i]); err != nil {
						t.Fatal(err)
					}
				}
				return parts
			}
			probe := func(p Part) string {
				target := t.TempDir()
				dir, err := Mount(p, target)
				if err != nil {
					t.Fatal(err)
				}
				defer Unmount([]string{dir})
				b, _ := os.ReadFile(filepath.Join(dir, "results"))
				return string(b)
			}
			const keep = "part root 64MiB ext4 /\npart scratch rest ext3 /scratch keep\n"
			first := run(keep)
			if first[1].Kept {
				t.Fatal("a fresh disk's scratch marked kept")
			}
			target := t.TempDir()
			dir, err := Mount(first[1], target)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
			if err := os.WriteFile(filepath.Join(dir, "results"), []byte("week 3"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := Unmount([]string{dir}); err != nil {
				t.Fatal(err)
			}

			second := run(keep)
			if !second[1].Kept || second[1].UUID != first[1].UUID || blkid(t, second[1].Dev, "UUID") != first[1].UUID {
				t.Errorf("reinstall: scratch kept=%v UUID %s (blkid %s), first install's %s", second[1].Kept, second[1].UUID, blkid(t, second[1].Dev, "UUID"), first[1].UUID)
			}
			if second[0].Kept || second[0].UUID == first[0].UUID {
				t.Errorf("reinstall: root not reformatted (UUID %s both times)", first[0].UUID)
			}
			if got := probe(second[1]); got != "week 3" {
				t.Errorf("reinstall: scratch's file %q, want \"week 3\"", got)
			}

			// Another filesystem at the same place: made anew.
			third := run("part root 64MiB ext4 /\npart scratch rest ext4 /scratch keep\n")
			if third[1].Kept || probe(third[1]) != "" {
				t.Errorf("ext3 scratch kept as ext4: kept=%v", third[1].Kept)
			}
			// Moved (a larger root): made anew.
			fourth := run("part root 96MiB ext4 /\npart scratch rest ext4 /scratch keep\n")
			if fourth[1].Kept {
				t.Error("scratch kept though it moved")
			}
		})
	}
}
