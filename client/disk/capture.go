package disk

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/systemimager/sim/client/layout"
)

// Capture reads a golden client's disk back into a layout (what
// si_mkautoinstallscript did): its GPT partitions in order, each
// filesystem recognised by its superblock, mount points and options from
// /proc/self/mountinfo. Sizes are exact MiB; the last partition becomes
// "rest" so the layout fits larger disks. MBR disks, RAID and LVM are not
// read.
func Capture(d Info) (*layout.Layout, error) {
	dk, err := diskfs.Open(d.Path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", d.Path, err)
	}
	defer dk.Close()
	pt, err := dk.GetPartitionTable()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Path, err)
	}
	t, ok := pt.(*gpt.Table)
	if !ok {
		return nil, fmt.Errorf("%s: not a GPT disk (sim layouts are GPT)", d.Path)
	}
	mounts := mountsByDev()
	l := &layout.Layout{Disk: d.Path, Table: layout.TableGPT, Bootloader: "grub"}
	for i, p := range t.Partitions {
		if p.Type == gpt.Unused {
			continue
		}
		dev := PartPath(d.Path, p.Index)
		if p.Index == 0 {
			dev = PartPath(d.Path, i+1)
		}
		fs := sniff(dev)
		switch p.Type {
		case gpt.BIOSBoot:
			fs = layout.FSBiosGrub
		case gpt.EFISystemPartition:
			fs = layout.FSESP
		}
		name := p.Name
		if name == "" || !validName(name) {
			name = fmt.Sprintf("p%d", i+1)
		}
		sz := (p.End - p.Start + 1) * uint64(d.Sector)
		part := layout.Partition{Name: name, FS: fs, Size: layout.Size{Kind: layout.Fixed, Bytes: sz / layout.Align * layout.Align}}
		if m, ok := mounts[dev]; ok && fs.Mountable() {
			part.Mount = m[0]
			if m[1] != "" && m[1] != "rw" && m[1] != "defaults" {
				part.Options = m[1]
			}
		}
		if fs.Mountable() && part.Mount == "" {
			// Not mounted now (a disk read from a rescue system): a
			// partition named root (as sim and many installers name it)
			// is /, the rest go somewhere harmless, to edit before use.
			part.Mount = "/mnt/" + name
			if name == "root" && fs != layout.FSVfat && fs != layout.FSESP {
				part.Mount = "/"
			}
		}
		l.Partitions = append(l.Partitions, part)
	}
	if len(l.Partitions) == 0 {
		return nil, fmt.Errorf("%s: no partitions", d.Path)
	}
	l.Partitions[len(l.Partitions)-1].Size = layout.Size{Kind: layout.Rest}
	if err := l.Validate(); err != nil {
		return l, fmt.Errorf("captured layout of %s needs editing: %w", d.Path, err)
	}
	return l, nil
}

func validName(n string) bool {
	_, err := layout.Parse("part " + n + " rest ext4 /")
	return err == nil
}

// sniff recognises a filesystem by its superblock magic.
func sniff(dev string) layout.FS {
	f, err := os.Open(dev)
	if err != nil {
		return layout.FSNone
	}
	defer f.Close()
	b := make([]byte, 4096)
	n, _ := f.ReadAt(b, 0)
	b = b[:n]
	switch {
	case len(b) >= 1122 && b[1080] == 0x53 && b[1081] == 0xEF:
		return extKind(b[1024:])
	case len(b) >= 4 && string(b[:4]) == "XFSB":
		return layout.FSXfs
	case len(b) >= 90 && string(b[82:87]) == "FAT32":
		return layout.FSVfat
	case len(b) >= 4096 && (string(b[4086:4096]) == "SWAPSPACE2" || string(b[4086:4096]) == "SWAP-SPACE"):
		return layout.FSSwap
	}
	return layout.FSNone
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

// mountsByDev maps a device path to its mount point and options.
func mountsByDev() map[string][2]string {
	out := map[string][2]string{}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// id parent maj:min root mountpoint options ... - fstype source superopts
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) || f[3] != "/" {
			continue
		}
		src := f[sep+2]
		if r, err := filepath.EvalSymlinks(src); err == nil {
			src = r
		}
		if _, seen := out[src]; !seen {
			opts := f[5]
			opts = strings.TrimPrefix(strings.TrimPrefix(opts, "rw,"), "rw")
			out[src] = [2]string{f[4], opts}
		}
	}
	return out
}
