package layout

import (
	"fmt"
)

// Align is where partitions start and how their sizes round: 1 MiB, what
// parted and sgdisk use, right for 512 B and 4 KiB sectors and SSD erase
// blocks.
const Align = 1 << 20

// minBytes is the smallest partition each filesystem's mkfs accepts
// (rounded up): FAT32 needs 65525 clusters, mkfs.xfs refuses under 300 MB.
var minBytes = map[FS]uint64{
	FSESP: 36 << 20, FSVfat: 36 << 20, FSExt2: 8 << 20, FSExt3: 8 << 20, FSExt4: 8 << 20, FSXfs: 300 << 20,
	FSSwap: 1 << 20, FSBiosGrub: 1 << 20, FSNone: 1 << 20,
	FSBtrfs: 128 << 20, FSRaid: 8 << 20, FSLVM: 8 << 20,
}

// Extent is one partition placed on a disk.
type Extent struct {
	Partition
	Index int    // partition number, 1-based, in layout order
	Start uint64 // first byte
	Bytes uint64 // length
}

// StartSector and EndSector (inclusive, as GPT stores it) in units of
// sector bytes.
func (e Extent) StartSector(sector uint64) uint64 { return e.Start / sector }
func (e Extent) EndSector(sector uint64) uint64   { return (e.Start+e.Bytes)/sector - 1 }

// TooSmallError says the disk cannot hold the layout.
type TooSmallError struct {
	Disk       string
	Have, Need uint64
}

func (e *TooSmallError) Error() string {
	return fmt.Sprintf("disk %s too small for the layout: it has %s, the layout needs at least %s",
		e.Disk, human(e.Have), human(e.Need))
}

func human(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB (%d bytes)", float64(n)/(1<<30), n)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB (%d bytes)", float64(n)/(1<<20), n)
	}
	return fmt.Sprintf("%d bytes", n)
}

// Usable is the byte range partitions may occupy on a disk of size bytes:
// from 1 MiB (after the protective MBR and the primary GPT) to the last
// whole MiB before the backup GPT (33 sectors at the end).
func Usable(size uint64) (start, end uint64) {
	start = Align
	if size < 2*Align+34*4096 {
		return start, start
	}
	end = (size - 34*4096) / Align * Align
	return start, end
}

func roundUp(n uint64) uint64 { return (n + Align - 1) / Align * Align }

// MinBytes is the smallest disk that holds l: fixed sizes rounded to MiB,
// every percentage and "rest" partition at its filesystem's minimum.
func (l *Layout) MinBytes() uint64 { return l.AllDisks()[0].MinBytes() }

// MinBytes is the smallest disk that holds d's partitions.
func (d Disk) MinBytes() uint64 {
	need := uint64(2*Align + 34*4096)
	for _, p := range d.Partitions {
		if p.Size.Kind == Fixed {
			need += max(roundUp(p.Size.Bytes), minBytes[p.FS])
		} else {
			need += minBytes[p.FS]
		}
	}
	return need
}

// Plan places l's partitions on a disk of size bytes, in layout order.
// Fixed sizes round up to whole MiB; percentages are of the usable space
// and round down to whole MiB; "rest" gets what is left. A partition below
// its filesystem's minimum, or a layout that does not fit, is a
// *TooSmallError naming disk.
func (l *Layout) Plan(disk string, size uint64) ([]Extent, error) {
	return l.AllDisks()[0].Plan(disk, size)
}

// Plan places d's partitions on disk, of size bytes (see Layout.Plan).
func (d Disk) Plan(disk string, size uint64) ([]Extent, error) {
	start, end := Usable(size)
	usable := end - start
	tooSmall := &TooSmallError{Disk: disk, Have: size, Need: d.MinBytes()}
	sizes := make([]uint64, len(d.Partitions))
	var used uint64
	restAt := -1
	for i, p := range d.Partitions {
		switch p.Size.Kind {
		case Fixed:
			sizes[i] = roundUp(p.Size.Bytes)
		case Percent:
			sizes[i] = uint64(float64(usable)*p.Size.Percent/100) / Align * Align
		case Rest:
			restAt = i
			continue
		}
		if sizes[i] < minBytes[p.FS] {
			if p.Size.Kind == Fixed {
				return nil, fmt.Errorf("%s: partition %q: %s is below the %s minimum of %s", at(p.Line, disk), p.Name, FormatBytes(sizes[i]), p.FS, FormatBytes(minBytes[p.FS]))
			}
			return nil, tooSmall
		}
		used += sizes[i]
	}
	if used > usable {
		return nil, tooSmall
	}
	if restAt >= 0 {
		sizes[restAt] = usable - used
		if sizes[restAt] < minBytes[d.Partitions[restAt].FS] {
			return nil, tooSmall
		}
	}
	out := make([]Extent, len(d.Partitions))
	next := start
	for i, p := range d.Partitions {
		out[i] = Extent{Partition: p, Index: i + 1, Start: next, Bytes: sizes[i]}
		next += sizes[i]
	}
	return out, nil
}
