package disk

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/layout"
)

// Info is one whole disk the kernel knows.
type Info struct {
	Path   string // /dev/NAME
	Name   string
	Size   uint64 // bytes
	Sector uint64 // logical sector size
}

// SysBlock is where disks are listed (a variable for tests).
var SysBlock = "/sys/block"

// skipped are block devices that are never install targets.
var skipped = []string{"loop", "ram", "sr", "zram", "fd", "md", "dm-", "nbd", "mtdblock"}

// List returns the whole disks in name order: real devices (with a
// device/ link), writable, non-empty, not loop/ram/optical/virtual.
func List() ([]Info, error) {
	ents, err := os.ReadDir(SysBlock)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var out []Info
next:
	for _, e := range ents {
		n := e.Name()
		for _, p := range skipped {
			if strings.HasPrefix(n, p) {
				continue next
			}
		}
		d := filepath.Join(SysBlock, n)
		if _, err := os.Stat(filepath.Join(d, "device")); err != nil {
			continue
		}
		if readInt(filepath.Join(d, "removable")) != 0 {
			continue
		}
		if i, ok := info(n); ok {
			out = append(out, i)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// info reads one whole disk from /sys/block; false when it is missing,
// read-only or empty.
func info(n string) (Info, bool) {
	d := filepath.Join(SysBlock, n)
	if readInt(filepath.Join(d, "ro")) != 0 {
		return Info{}, false
	}
	sectors := readInt(filepath.Join(d, "size"))
	if sectors == 0 {
		return Info{}, false
	}
	ss := readInt(filepath.Join(d, "queue", "logical_block_size"))
	if ss == 0 {
		ss = 512
	}
	return Info{Path: "/dev/" + n, Name: n, Size: sectors * 512, Sector: ss}, true
}

func readInt(p string) uint64 {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// Find picks the disk a layout names: "first" or "largest" of List, or a
// path, which may name any writable whole disk (a loop device too: a
// path is deliberate).
func Find(spec string) (Info, error) {
	if spec == "first" || spec == "largest" {
		ds, err := List()
		if err != nil {
			return Info{}, err
		}
		if len(ds) == 0 {
			return Info{}, errors.New("no disk found (no writable, non-removable disk in /sys/block; is the storage driver loaded?)")
		}
		best := ds[0]
		if spec == "largest" {
			for _, d := range ds[1:] {
				if d.Size > best.Size {
					best = d
				}
			}
		}
		return best, nil
	}
	real, err := filepath.EvalSymlinks(spec)
	if err != nil {
		return Info{}, fmt.Errorf("disk %s: %w", spec, err)
	}
	n := filepath.Base(real)
	if _, err := os.Stat(filepath.Join(SysBlock, n)); err != nil || !strings.HasPrefix(real, "/dev/") {
		return Info{}, fmt.Errorf("disk %s is not a whole disk (no %s/%s; a partition?)", spec, SysBlock, n)
	}
	i, ok := info(n)
	if !ok {
		return Info{}, fmt.Errorf("disk %s is read-only or empty", spec)
	}
	return i, nil
}

// PartPath is the device of partition n of disk: vda3, nvme0n1p3.
func PartPath(disk string, n int) string {
	if c := disk[len(disk)-1]; c >= '0' && c <= '9' {
		return disk + "p" + strconv.Itoa(n)
	}
	return disk + strconv.Itoa(n)
}

// Part is a planned partition made real: its device and filesystem UUID.
type Part struct {
	layout.Extent
	Dev  string
	UUID string // filesystem UUID as fstab and blkid write it; "" for bios_grub and none
	Kept bool   // a keep partition the disk already had: not formatted
	// Kind is "" for a partition, else KindRAID, KindLV or KindSubvol.
	Kind   string `json:"kind,omitempty"`
	VG     string `json:"vg,omitempty"`     // an LV's volume group
	Subvol string `json:"subvol,omitempty"` // a subvolume's name (mounted with subvol=)
}

var typeGUID = map[layout.FS]gpt.Type{
	layout.FSESP: gpt.EFISystemPartition, layout.FSBiosGrub: gpt.BIOSBoot, layout.FSSwap: gpt.LinuxSwap,
	layout.FSVfat: gpt.MicrosoftBasicData, layout.FSExt2: gpt.LinuxFilesystem, layout.FSExt3: gpt.LinuxFilesystem,
	layout.FSExt4: gpt.LinuxFilesystem, layout.FSXfs: gpt.LinuxFilesystem, layout.FSNone: gpt.LinuxFilesystem,
	layout.FSBtrfs: gpt.LinuxFilesystem, layout.FSRaid: gpt.LinuxRAID, layout.FSLVM: gpt.LinuxLVM,
}

var typeMBR = map[layout.FS]mbr.Type{
	layout.FSESP: mbr.EFISystem, layout.FSSwap: mbr.LinuxSwap, layout.FSVfat: mbr.Fat32LBA,
	layout.FSExt2: mbr.Linux, layout.FSExt3: mbr.Linux, layout.FSExt4: mbr.Linux, layout.FSXfs: mbr.Linux,
	layout.FSNone: mbr.Linux, layout.FSBtrfs: mbr.Linux, layout.FSRaid: mbr.Type(0xfd), layout.FSLVM: mbr.LinuxLVM,
}

// mbrBootable is the extent an msdos table marks active (some old BIOSes
// boot only a disk with an active partition): the one mounted at /boot,
// else the root; -1 when neither is planned.
func mbrBootable(ext []layout.Extent) int {
	at := -1
	for i, e := range ext {
		if e.Mount == "/boot" {
			return i
		}
		if e.Mount == "/" {
			at = i
		}
	}
	return at
}

// Partition writes a fresh partition table of kind table (layout.TableGPT,
// or "" for it, or layout.TableMsdos) with the extents on d and waits until
// the kernel shows every partition's device node.
func Partition(d Info, ext []layout.Extent, table string) ([]Part, error) {
	var t partition.Table
	switch table {
	case layout.TableGPT, "":
		g := &gpt.Table{LogicalSectorSize: int(d.Sector), PhysicalSectorSize: int(d.Sector), ProtectiveMBR: true}
		for _, e := range ext {
			g.Partitions = append(g.Partitions, &gpt.Partition{
				Index: e.Index, Start: e.StartSector(d.Sector), End: e.EndSector(d.Sector),
				Type: typeGUID[e.FS], Name: e.Name,
			})
		}
		t = g
	case layout.TableMsdos:
		if len(ext) > 4 {
			return nil, fmt.Errorf("disk %s: an msdos table holds at most 4 partitions, the layout has %d", d.Path, len(ext))
		}
		m := &mbr.Table{LogicalSectorSize: int(d.Sector), PhysicalSectorSize: int(d.Sector)}
		boot := mbrBootable(ext)
		for i, e := range ext {
			start, n := e.StartSector(d.Sector), e.Bytes/d.Sector
			if start+n > 1<<32-1 {
				return nil, fmt.Errorf("disk %s: partition %q ends past the 2 TiB an msdos table can address (with %d-byte sectors); use gpt", d.Path, e.Name, d.Sector)
			}
			ty, ok := typeMBR[e.FS]
			if !ok {
				return nil, fmt.Errorf("disk %s: partition %q: %s has no msdos partition type", d.Path, e.Name, e.FS)
			}
			m.Partitions = append(m.Partitions, &mbr.Partition{
				Index: e.Index, Bootable: i == boot, Type: ty, Start: uint32(start), Size: uint32(n),
			})
		}
		// A GPT left from an earlier install would still be found by
		// blkid and parted: clear its primary header and its backup.
		if err := wipeGPT(d); err != nil {
			return nil, err
		}
		t = m
	default:
		return nil, fmt.Errorf("disk %s: unknown partition table %q (want gpt or msdos)", d.Path, table)
	}
	dk, err := diskfs.Open(d.Path, diskfs.WithOpenMode(diskfs.ReadWriteExclusive))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", d.Path, err)
	}
	defer dk.Close()
	parts := make([]Part, len(ext))
	for i, e := range ext {
		parts[i] = Part{Extent: e, Dev: PartPath(d.Path, e.Index)}
	}
	if err := dk.Partition(t); err != nil {
		return nil, fmt.Errorf("write %s partition table on %s: %w", t.Type(), d.Path, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	blkpgAt := time.Now().Add(time.Second)
	for _, p := range parts {
		for {
			if fi, err := os.Stat(p.Dev); err == nil && fi.Mode()&os.ModeDevice != 0 {
				break
			}
			// The kernel knows the partition but nothing made its node
			// (no udev, /dev not a devtmpfs): make it.
			if err := mknodFromSys(p.Dev); err == nil {
				break
			}
			// Some kernels answer BLKRRPART on a loop device without
			// rescanning: tell the kernel about the partition directly.
			if time.Now().After(blkpgAt) {
				if err := blkpgAdd(d.Path, p); err != nil {
					return nil, fmt.Errorf("partition %s: add it to the kernel: %w", p.Dev, err)
				}
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("partition %s did not appear after writing the table on %s", p.Dev, d.Path)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return parts, nil
}

// MarkKept sets Kept and UUID on the parts Kept found.
func MarkKept(parts []Part, kept map[int]string) {
	for i := range parts {
		if u, ok := kept[parts[i].Index]; ok {
			parts[i].Kept, parts[i].UUID = true, u
		}
	}
}

// Kept says which of ext's partitions marked keep d already has: on a
// GPT disk one of the same name, first and last sector; on an msdos disk
// the same number and sectors; in both with the same filesystem. Their
// indices map to the filesystem UUID read from them. A disk without a
// table, or of the other kind, keeps nothing.
func Kept(d Info, ext []layout.Extent, table string) (map[int]string, error) {
	want := false
	for _, e := range ext {
		want = want || e.Keep
	}
	if !want {
		return nil, nil
	}
	dk, err := diskfs.Open(d.Path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", d.Path, err)
	}
	pt, err := dk.GetPartitionTable()
	dk.Close()
	if err != nil {
		return nil, nil // no table: a fresh disk
	}
	type span struct{ start, end uint64 }
	have := map[string]span{} // GPT: by name; msdos: by "#N"
	switch t := pt.(type) {
	case *gpt.Table:
		if table == layout.TableMsdos {
			return nil, nil
		}
		for _, p := range t.Partitions {
			if p.Type != gpt.Unused && p.Name != "" {
				have[p.Name] = span{p.Start, p.End}
			}
		}
	case *mbr.Table:
		if table != layout.TableMsdos {
			return nil, nil
		}
		for i, p := range t.Partitions {
			if p.Type != mbr.Empty && p.Size > 0 {
				have["#"+strconv.Itoa(i+1)] = span{uint64(p.Start), uint64(p.Start) + uint64(p.Size) - 1}
			}
		}
	}
	out := map[int]string{}
	for _, e := range ext {
		if !e.Keep {
			continue
		}
		key := e.Name
		if table == layout.TableMsdos {
			key = "#" + strconv.Itoa(e.Index)
		}
		s, ok := have[key]
		if !ok || s.start != e.StartSector(d.Sector) || s.end != e.EndSector(d.Sector) {
			continue
		}
		dev := PartPath(d.Path, e.Index)
		if sniff(dev) != e.FS {
			continue
		}
		u, err := readUUID(dev, e.FS)
		if err != nil {
			return nil, fmt.Errorf("kept partition %q (%s): %w", e.Name, dev, err)
		}
		out[e.Index] = u
	}
	return out, nil
}

// wipeGPT zeroes sectors 1 to 33 (a GPT header and entries) and the last
// 33 sectors (its backup) of d, so an msdos table written after them is
// the disk's only one (mbr.Table rewrites all four entries of sector 0).
func wipeGPT(d Info) error {
	f, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", d.Path, err)
	}
	defer f.Close()
	n := int64(34 * d.Sector)
	if int64(d.Size) < 2*n {
		return nil
	}
	z := make([]byte, n)
	if _, err := f.WriteAt(z[:n-int64(d.Sector)], int64(d.Sector)); err != nil {
		return fmt.Errorf("clear the GPT of %s: %w", d.Path, err)
	}
	if _, err := f.WriteAt(z, int64(d.Size)-n); err != nil {
		return fmt.Errorf("clear the backup GPT of %s: %w", d.Path, err)
	}
	return f.Sync()
}

// blkpgAdd adds partition p of disk to the kernel's view (BLKPG, what
// partx -a does), unless the kernel already has it.
func blkpgAdd(disk string, p Part) error {
	if _, err := os.Stat(filepath.Join("/sys/class/block", filepath.Base(p.Dev))); err == nil {
		return nil
	}
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	bp := unix.BlkpgPartition{Start: int64(p.Start), Length: int64(p.Bytes), Pno: int32(p.Index)}
	arg := unix.BlkpgIoctlArg{Op: unix.BLKPG_ADD_PARTITION, Datalen: int32(unsafe.Sizeof(bp)), Data: (*byte)(unsafe.Pointer(&bp))}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg)))
	if errno != 0 && errno != unix.EBUSY {
		return errno
	}
	return nil
}

// mknodFromSys creates block device node dev from /sys/class/block/NAME/dev.
func mknodFromSys(dev string) error {
	b, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "dev"))
	if err != nil {
		return err
	}
	var maj, min uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err != nil {
		return err
	}
	os.Remove(dev) // a stale regular file or wrong node
	return unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(maj, min)))
}

// NewUUID is a random (version 4) UUID.
func NewUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Mkfs makes p's filesystem and sets p.UUID (a kept partition, with
// its UUID set, is left as it is). Output of the tool is in the
// error when it fails.
func Mkfs(p *Part) error {
	if p.Kept || p.Kind == KindSubvol {
		return nil
	}
	var cmd []string
	switch p.FS {
	case layout.FSESP, layout.FSVfat:
		var id [4]byte
		rand.Read(id[:])
		vol := fmt.Sprintf("%X", id[:])
		p.UUID = vol[:4] + "-" + vol[4:]
		cmd = []string{"mkfs.vfat", "-F", "32", "-i", vol}
		if p.Label != "" {
			cmd = append(cmd, "-n", p.Label)
		}
	case layout.FSExt2, layout.FSExt3, layout.FSExt4:
		// mkfs.ext4 -t makes any of the three: the initrd needs one tool.
		p.UUID = NewUUID()
		cmd = []string{"mkfs.ext4", "-t", string(p.FS), "-q", "-F", "-U", p.UUID}
		if p.Label != "" {
			cmd = append(cmd, "-L", p.Label)
		}
	case layout.FSXfs:
		p.UUID = NewUUID()
		cmd = []string{"mkfs.xfs", "-q", "-f", "-m", "uuid=" + p.UUID}
		if p.Label != "" {
			cmd = append(cmd, "-L", p.Label)
		}
	case layout.FSBtrfs:
		p.UUID = NewUUID()
		cmd = []string{"mkfs.btrfs", "-q", "-f", "-U", p.UUID}
		if p.Label != "" {
			cmd = append(cmd, "-L", p.Label)
		}
	case layout.FSSwap:
		p.UUID = NewUUID()
		cmd = []string{"mkswap", "-U", p.UUID}
		if p.Label != "" {
			cmd = append(cmd, "-L", p.Label)
		}
	default:
		return nil
	}
	cmd = append(cmd, p.Dev)
	out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(cmd, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mountType is the kernel's name for a layout filesystem.
func mountType(f layout.FS) string {
	if f == layout.FSESP {
		return "vfat"
	}
	return string(f)
}

// MountOrder is the mountable partitions, parents before children.
func MountOrder(parts []Part) []Part {
	var m []Part
	for _, p := range parts {
		if p.FS.Mountable() && p.Mount != "" {
			m = append(m, p)
		}
	}
	depth := func(p string) int {
		if p == "/" {
			return 0
		}
		return strings.Count(p, "/")
	}
	sort.SliceStable(m, func(i, j int) bool { return depth(m[i].Mount) < depth(m[j].Mount) })
	return m
}

// Mount mounts p at target+p.Mount (created if missing).
func Mount(p Part, target string) (string, error) {
	dir := filepath.Join(target, p.Mount)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	data := ""
	if p.Subvol != "" {
		data = "subvol=" + p.Subvol
	}
	if err := unix.Mount(p.Dev, dir, mountType(p.FS), 0, data); err != nil {
		if p.Subvol != "" {
			return "", fmt.Errorf("mount %s (btrfs subvolume %s) on %s: %w", p.Dev, p.Subvol, dir, err)
		}
		return "", fmt.Errorf("mount %s (%s) on %s: %w", p.Dev, p.FS, dir, err)
	}
	return dir, nil
}

// Unmount unmounts dirs in reverse order, lazily as a last resort.
func Unmount(dirs []string) error {
	var first error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Unmount(dirs[i], 0); err != nil {
			if first == nil {
				first = fmt.Errorf("unmount %s: %w", dirs[i], err)
			}
			unix.Unmount(dirs[i], unix.MNT_DETACH)
		}
	}
	return first
}

// Fstab is the fstab for parts, every filesystem by UUID.
func Fstab(parts []Part) string { return FstabWith(parts, nil) }

// localSpec says whether an fstab device names a local block device (one
// a layout makes): UUID=, LABEL=, PARTUUID=, PARTLABEL=, ID= or a /dev path.
func localSpec(spec string) bool {
	for _, p := range []string{"UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "ID=", "/dev/"} {
		if strings.HasPrefix(spec, p) {
			return true
		}
	}
	return false
}

// KeptFstabLines are the lines of an image's fstab that FstabWith keeps:
// filesystems no layout makes (NFS, Lustre, tmpfs, proc, …: a device
// that is not a local block device) and bind mounts, unless parts mount
// something at the same mount point. Comments, blank lines, swap and local
// devices are dropped: the layout says what is on the disks.
func KeptFstabLines(image []byte, parts []Part) []string {
	mounted := map[string]bool{}
	for _, p := range parts {
		if p.FS.Mountable() && p.Mount != "" {
			mounted[p.Mount] = true
		}
	}
	var out []string
	for _, line := range strings.Split(string(image), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || strings.HasPrefix(f[0], "#") || f[2] == "swap" || mounted[f[1]] {
			continue
		}
		bind := len(f) >= 4 && (strings.Contains(","+f[3]+",", ",bind,") || strings.Contains(","+f[3]+",", ",rbind,"))
		if localSpec(f[0]) && !bind {
			continue
		}
		out = append(out, strings.TrimSpace(line))
	}
	return out
}

// FstabWith is the fstab for parts, every filesystem by UUID, then the
// image's own lines KeptFstabLines keeps from image (its /etc/fstab), in
// their order, after the layout's (a bind mount or NFS under /data comes
// after /data).
func FstabWith(parts []Part, image []byte) string {
	var b strings.Builder
	b.WriteString("# written by sim install from the image's layout; filesystems by UUID\n")
	for _, p := range MountOrder(parts) {
		opts := p.Options
		pass := 2
		switch {
		case p.FS == layout.FSESP || p.FS == layout.FSVfat:
			if opts == "" {
				opts = "umask=0077"
			}
		case p.FS == layout.FSXfs, p.FS == layout.FSBtrfs:
			pass = 0 // fsck.xfs and fsck.btrfs do nothing; both check themselves on mount
		}
		if p.Subvol != "" {
			opts = strings.TrimSuffix("subvol="+p.Subvol+","+opts, ",")
		}
		if p.Mount == "/" && p.FS.Ext() {
			// Debian's own root line; xfs and btrfs have no errors=
			// option (an xfs root with it does not mount) and no fsck.
			pass = 1
			if opts == "" {
				opts = "errors=remount-ro"
			}
		}
		if opts == "" {
			opts = "defaults"
		}
		fmt.Fprintf(&b, "UUID=%s\t%s\t%s\t%s\t0\t%d\n", p.UUID, p.Mount, mountType(p.FS), opts, pass)
	}
	for _, p := range parts {
		if p.FS == layout.FSSwap {
			opts := p.Options
			if opts == "" {
				opts = "sw"
			}
			fmt.Fprintf(&b, "UUID=%s\tnone\tswap\t%s\t0\t0\n", p.UUID, opts)
		}
	}
	if kept := KeptFstabLines(image, parts); len(kept) > 0 {
		b.WriteString("# kept from the image's fstab: filesystems the layout does not make\n")
		for _, l := range kept {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
