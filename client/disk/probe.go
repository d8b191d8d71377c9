package disk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/systemimager/sim/client/layout"
)

// Probe is what a device's first and last blocks say it holds, read from
// the superblocks themselves (as blkid -p does, without its cache; the
// installer has no blkid of its own).
type Probe struct {
	FS    layout.FS // layout.FSNone when nothing sim knows is there
	Label string    // filesystem label ("" for none)
	UUID  string    // filesystem UUID as blkid and fstab write it
	// Member is "md" for an md RAID member, "lvm" for an LVM physical
	// volume (FS is then layout.FSRaid or layout.FSLVM).
	Member string
	// MDMetadata is an md member's superblock version: "0.90", "1.0",
	// "1.1" or "1.2".
	MDMetadata string
	// Devices is how many devices a btrfs filesystem spans.
	Devices uint64
}

// mdMagic starts every md superblock (0.90 and 1.x).
const mdMagic = 0xa92b4efc

// ProbeDevice reads dev's superblocks: ext2/3/4, xfs, FAT32, swap,
// btrfs, md member (any metadata version) and LVM2 physical volume.
func ProbeDevice(dev string) (Probe, error) {
	f, err := os.Open(dev)
	if err != nil {
		return Probe{FS: layout.FSNone}, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Probe{FS: layout.FSNone}, fmt.Errorf("%s: %w", dev, err)
	}
	read := func(off, n int64) []byte {
		if off < 0 || off+n > size {
			return nil
		}
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil {
			return nil
		}
		return b
	}
	return probeBytes(read, size), nil
}

// probeBytes recognises a device of size bytes through read (nil when
// the range cannot be read).
func probeBytes(read func(off, n int64) []byte, size int64) Probe {
	p := Probe{FS: layout.FSNone}
	head := read(0, 4096)
	if head == nil {
		return p
	}
	// md first: a member with metadata 1.0 or 0.90 (at the end) also
	// reads as the filesystem it mirrors, and must not be taken for it.
	if v := mdVersion(read, size); v != "" {
		p.FS, p.Member, p.MDMetadata = layout.FSRaid, "md", v
		return p
	}
	for _, s := range []int64{0, 512, 1024, 1536} {
		if b := head[s : s+32]; string(b[:8]) == "LABELONE" && string(b[24:32]) == "LVM2 001" {
			p.FS, p.Member = layout.FSLVM, "lvm"
			return p
		}
	}
	hexUUID := func(u []byte) string {
		return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	}
	cstr := func(b []byte) string {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return strings.TrimRight(string(b), " ")
	}
	switch {
	case head[1080] == 0x53 && head[1081] == 0xEF:
		sb := head[1024:]
		p.FS = extKind(sb)
		p.UUID = hexUUID(sb[0x68:0x78])
		p.Label = cstr(sb[0x78:0x88])
	case string(head[:4]) == "XFSB":
		p.FS = layout.FSXfs
		p.UUID = hexUUID(head[32:48])
		p.Label = cstr(head[108:120])
	case string(head[82:87]) == "FAT32":
		p.FS = layout.FSVfat
		v := head[0x43:0x47]
		p.UUID = fmt.Sprintf("%02X%02X-%02X%02X", v[3], v[2], v[1], v[0])
		if l := cstr(head[0x47:0x52]); l != "NO NAME" {
			p.Label = l
		}
	case string(head[4086:4096]) == "SWAPSPACE2" || string(head[4086:4096]) == "SWAP-SPACE":
		p.FS = layout.FSSwap
		p.UUID = hexUUID(head[1036:1052])
		p.Label = cstr(head[1052:1068])
	default:
		if sb := read(0x10000, 4096); sb != nil && string(sb[0x40:0x48]) == "_BHRfS_M" {
			p.FS = layout.FSBtrfs
			p.UUID = hexUUID(sb[0x20:0x30])
			p.Devices = binary.LittleEndian.Uint64(sb[0x88:])
			p.Label = cstr(sb[0x12b : 0x12b+256])
		}
	}
	return p
}

// mdVersion finds an md superblock where each metadata version keeps it
// (1.1 at the start, 1.2 4 KiB in, 1.0 8 KiB before the end, 0.90 in the
// last 64 KiB-aligned 64 KiB) and returns its version, "" for none.
func mdVersion(read func(off, n int64) []byte, size int64) string {
	at := func(off int64) []byte {
		b := read(off, 8)
		if b == nil || binary.LittleEndian.Uint32(b) != mdMagic {
			return nil
		}
		return b
	}
	if b := at(4096); b != nil && binary.LittleEndian.Uint32(b[4:]) == 1 {
		return "1.2"
	}
	if b := at(0); b != nil && binary.LittleEndian.Uint32(b[4:]) == 1 {
		return "1.1"
	}
	if size >= 12<<10 {
		if b := at((size - 8192) &^ 4095); b != nil && binary.LittleEndian.Uint32(b[4:]) == 1 {
			return "1.0"
		}
	}
	if size >= 128<<10 {
		if b := at(size&^(64<<10-1) - 64<<10); b != nil && binary.LittleEndian.Uint32(b[4:]) == 0 {
			return "0.90"
		}
	}
	return ""
}

// sniff recognises a filesystem by its superblock magic (layout.FSNone
// for none or an unreadable device).
func sniff(dev string) layout.FS {
	p, _ := ProbeDevice(dev)
	return p.FS
}

// extKind tells ext2, ext3 and ext4 apart by the superblock sb's feature
// flags, as blkid does: ext4-only incompatible features (extents, 64bit,
// flex_bg, …) make ext4, a journal without them ext3, neither ext2.
func extKind(sb []byte) layout.FS {
	compat := binary.LittleEndian.Uint32(sb[0x5C:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	roCompat := binary.LittleEndian.Uint32(sb[0x64:])
	const (
		hasJournal   = 0x4
		ext3Incompat = 0x2 | 0x4 // filetype, recover
		ext2RoCompat = 0x1 | 0x2 | 0x4
	)
	switch {
	case incompat&^ext3Incompat != 0 || roCompat&^ext2RoCompat != 0:
		return layout.FSExt4
	case compat&hasJournal != 0:
		return layout.FSExt3
	}
	return layout.FSExt2
}

// readUUID reads the filesystem UUID of dev from its superblock, written
// as blkid and fstab write it; it fails unless dev holds fs.
func readUUID(dev string, fs layout.FS) (string, error) {
	p, err := ProbeDevice(dev)
	if err != nil {
		return "", err
	}
	want := fs
	if want == layout.FSESP {
		want = layout.FSVfat
	}
	if p.FS != want || p.UUID == "" {
		return "", fmt.Errorf("%s holds %s, not %s: cannot read its UUID", dev, p.FS, fs)
	}
	return p.UUID, nil
}
