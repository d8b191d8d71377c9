package disk

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/mbr"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/layout"
)

// TestCaptureLoop makes a GPT and an msdos disk on loop devices with
// sim's own partitioning and mkfs (labels on every filesystem), mounts
// one filesystem with options, captures the disk and checks the round
// trip: the captured layout plans to the very partitions it was made
// from (place, size, filesystem, label, mount), the labels and UUIDs are
// what blkid -p reads, and the mounted one has its mount point and
// options.
func TestCaptureLoop(t *testing.T) {
	cases := []struct {
		name, text string
		mounted    string // the partition mounted (at a temp dir, noatime)
	}{
		{"msdos", `disk /dev/x msdos
part boot 64MiB ext2 /mnt/boot label=boot
part swp  16MiB swap label=swp
part data 40MiB ext3 /mnt/data label=data
part root rest  ext4 / label=root
`, "data"},
		{"gpt", `disk /dev/x
part bios 1MiB bios_grub
part esp  40MiB esp /mnt/esp label=ESP
part scratch 300MiB xfs /mnt/scratch label=scratch
part vol  130MiB btrfs /mnt/vol label=vol
part swap 8MiB swap
part root rest ext4 / label=root
`, "scratch"},
	}
	fs, _ := os.ReadFile("/proc/filesystems")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := loopDisk(t, 700<<20)
			for _, tool := range []string{"mkfs.xfs", "mkfs.btrfs", "mkfs.vfat", "mkswap"} {
				if _, err := exec.LookPath(tool); err != nil {
					t.Skipf("no %s", tool)
				}
			}
			l, err := layout.Parse(c.text)
			if err != nil {
				t.Fatal(err)
			}
			ext, err := l.Plan(d.Path, d.Size)
			if err != nil {
				t.Fatal(err)
			}
			parts, err := Partition(d, ext, l.Table)
			if err != nil {
				t.Fatal(err)
			}
			var mounted Part
			for i := range parts {
				if err := Mkfs(&parts[i]); err != nil {
					t.Fatal(err)
				}
				if parts[i].Name == c.mounted {
					mounted = parts[i]
				}
			}
			dir := t.TempDir()
			if !strings.Contains(string(fs), "\t"+string(mounted.FS)+"\n") {
				t.Skipf("this kernel cannot mount %s", mounted.FS)
			}
			if err := unix.Mount(mounted.Dev, dir, string(mounted.FS), unix.MS_NOATIME, ""); err != nil {
				t.Fatalf("mount %s: %v", mounted.Dev, err)
			}
			t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
			// Options come from the kernel here: this machine's fstab
			// does not list the loop device.
			old := FstabPath
			FstabPath = filepath.Join(t.TempDir(), "no-fstab")
			defer func() { FstabPath = old }()

			cp, err := Capture(context.Background(), []Info{d})
			if err != nil {
				t.Fatalf("capture: %v\n%+v", err, cp)
			}
			got := cp.Layout.Format()
			t.Logf("captured:\n# %s\n%s", strings.Join(cp.Notes, "\n# "), got)
			back, err := layout.Parse(got)
			if err != nil {
				t.Fatalf("captured layout does not parse: %v\n%s", err, got)
			}
			if back.Table != l.Table {
				t.Errorf("table %s, want %s", back.Table, l.Table)
			}
			ext2, err := back.Plan(d.Path, d.Size)
			if err != nil {
				t.Fatal(err)
			}
			if len(ext2) != len(ext) {
				t.Fatalf("%d partitions captured, want %d:\n%s", len(ext2), len(ext), got)
			}
			for i := range ext {
				w, g := ext[i], ext2[i]
				wantMount := w.Mount
				if w.Name == c.mounted {
					wantMount = dir
				}
				if g.Name != w.Name || g.Start != w.Start || g.Bytes != w.Bytes || g.FS != w.FS || g.Label != w.Label || g.Mount != wantMount {
					t.Errorf("partition %d: captured %s %d+%d %s label=%q at %q; made %s %d+%d %s label=%q at %q",
						i+1, g.Name, g.Start, g.Bytes, g.FS, g.Label, g.Mount, w.Name, w.Start, w.Bytes, w.FS, w.Label, wantMount)
				}
				if w.Name == c.mounted && !strings.Contains(","+g.Options+",", ",noatime,") {
					t.Errorf("%s: options %q lack noatime (it is mounted with it)", w.Name, g.Options)
				}
				if w.FS != layout.FSBiosGrub {
					if lb := blkid(t, parts[i].Dev, "LABEL"); lb != w.Label {
						t.Errorf("%s: blkid LABEL %q, the layout's %q", parts[i].Dev, lb, w.Label)
					}
					u := blkid(t, parts[i].Dev, "UUID")
					if !strings.Contains(strings.Join(cp.Notes, "\n"), "UUID="+u+" ") {
						t.Errorf("%s: notes lack its UUID %s:\n%s", parts[i].Dev, u, strings.Join(cp.Notes, "\n"))
					}
				}
			}
		})
	}
}

// TestCaptureRefusesLogical captures an msdos disk with an extended
// partition: the error names the disk and the partition.
func TestCaptureRefusesLogical(t *testing.T) {
	d := loopDisk(t, 64<<20)
	dk, err := diskfs.Open(d.Path, diskfs.WithOpenMode(diskfs.ReadWriteExclusive))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &mbr.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, Partitions: []*mbr.Partition{
		{Index: 1, Type: mbr.Linux, Start: 2048, Size: 20480},
		{Index: 2, Type: mbr.ExtendedLBA, Start: 22528, Size: 40960},
	}}
	if err := dk.Partition(tbl); err != nil {
		t.Fatal(err)
	}
	dk.Close()
	_, err = Capture(context.Background(), []Info{d})
	if err == nil || !strings.Contains(err.Error(), d.Path+": partition 2 is an extended partition") {
		t.Fatalf("capture of a disk with an extended partition: %v", err)
	}
}

// TestProbeEmpty: a device of zeros holds nothing.
func TestProbeEmpty(t *testing.T) {
	f := filepath.Join(t.TempDir(), "zero")
	if err := os.WriteFile(f, make([]byte, 256<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := ProbeDevice(f)
	if err != nil || !reflect.DeepEqual(p, Probe{FS: layout.FSNone}) {
		t.Errorf("probe of zeros: %+v %v", p, err)
	}
}
