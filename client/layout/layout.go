package layout

import (
	"bufio"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is the first line a layout file may carry ("sim-layout 1").
const Version = 1

// FS is what a partition holds.
type FS string

// Filesystems and special partitions a layout may name.
const (
	FSESP      FS = "esp"       // EFI system partition: vfat with the ESP type GUID
	FSVfat     FS = "vfat"      // plain FAT32
	FSExt2     FS = "ext2"      // ext2 (no journal)
	FSExt3     FS = "ext3"      // ext3
	FSExt4     FS = "ext4"      // ext4
	FSXfs      FS = "xfs"       // XFS
	FSSwap     FS = "swap"      // swap space
	FSBiosGrub FS = "bios_grub" // GRUB's BIOS boot partition (no filesystem)
	FSNone     FS = "none"      // left unformatted
	FSBtrfs    FS = "btrfs"     // btrfs, mounted itself and/or through its subvolumes
	FSRaid     FS = "raid"      // a member of an md array (a raid line)
	FSLVM      FS = "lvm"       // an LVM physical volume (of a vg line)
)

var knownFS = map[FS]bool{FSESP: true, FSVfat: true, FSExt2: true, FSExt3: true, FSExt4: true, FSXfs: true, FSSwap: true,
	FSBiosGrub: true, FSNone: true, FSBtrfs: true, FSRaid: true, FSLVM: true}

// Mountable says whether the filesystem gets a mount point and an fstab
// line (a btrfs volume may have none of its own: only its subvolumes).
func (f FS) Mountable() bool {
	return f == FSESP || f == FSVfat || f.Ext() || f == FSXfs || f == FSBtrfs
}

// Ext says whether the filesystem is ext2, ext3 or ext4 (made by mke2fs,
// with a lost+found).
func (f FS) Ext() bool { return f == FSExt2 || f == FSExt3 || f == FSExt4 }

// Partition table kinds a disk line may name.
const (
	TableGPT   = "gpt"   // GUID partition table (the default)
	TableMsdos = "msdos" // MBR: four primary partitions, disks up to 2 TiB, for old BIOS machines
)

// SizeKind says how a partition's size is given.
type SizeKind int

const (
	Fixed   SizeKind = iota // Bytes
	Percent                 // Percent of the usable disk
	Rest                    // whatever the others leave
)

// Size is a partition size as written.
type Size struct {
	Kind    SizeKind
	Bytes   uint64  // Fixed
	Percent float64 // Percent, 0 < p <= 100
}

func (s Size) String() string {
	switch s.Kind {
	case Percent:
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	case Rest:
		return "rest"
	}
	return FormatBytes(s.Bytes)
}

// Partition is one "part" line.
type Partition struct {
	Name    string // GPT partition name, unique in the layout
	Size    Size
	FS      FS
	Mount   string // absolute path, "" for none
	Label   string // filesystem label
	Options string // mount options, "defaults" when empty
	// Keep: when the disk already has this partition (same name on GPT,
	// same number on msdos, same place, same filesystem), its contents
	// are kept: not reformatted, its UUID read from it. On an array: it
	// is assembled, not created, when its members hold it; on an LV: its
	// volume group is kept (its other LVs made afresh), and the LV.
	Keep bool
	// Line is the layout line it was read from (0 when built in code).
	Line int
}

// Disk is one disk stanza: a "disk" line and the "part" lines after it.
type Disk struct {
	Spec       string // first, largest or a /dev path
	Table      string // TableGPT or TableMsdos
	Partitions []Partition
	Line       int // the disk line (0: none, the implicit first disk)
}

// Layout is a parsed layout file.
type Layout struct {
	// Disk is "first" (the first disk the kernel lists, by name), "largest",
	// or a device path such as /dev/vda or /dev/disk/by-id/….
	Disk string
	// Table is the partition table: TableGPT (the default) or TableMsdos.
	Table      string
	Partitions []Partition
	DiskLine   int // the first disk's line, 0 when it has none
	// Others are the second and later disk stanzas, in layout order.
	Others []Disk
	// RAIDs are md arrays over partitions (raid lines), VGs LVM volume
	// groups over partitions or arrays, LVs their logical volumes,
	// Subvols btrfs subvolumes, all in layout order.
	RAIDs   []RAID
	VGs     []VG
	LVs     []LV
	Subvols []Subvol
	// Bootloader is "grub" (BIOS and UEFI, from the image's own packages)
	// or "none".
	Bootloader string
}

// ParseError names the line at fault.
type ParseError struct {
	Line int
	Text string
	Err  error
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("layout line %d %q: %v", e.Line, e.Text, e.Err)
}
func (e *ParseError) Unwrap() error { return e.Err }

var (
	nameRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,35}$`)
	labelRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,16}$`)
	sizeRe  = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)
)

var units = map[string]uint64{
	"": 1, "B": 1,
	"K": 1 << 10, "KB": 1000, "KIB": 1 << 10,
	"M": 1 << 20, "MB": 1000 * 1000, "MIB": 1 << 20,
	"G": 1 << 30, "GB": 1000 * 1000 * 1000, "GIB": 1 << 30,
	"T": 1 << 40, "TB": 1000 * 1000 * 1000 * 1000, "TIB": 1 << 40,
}

// ParseSize reads "512MiB", "1.5G", "20%" or "rest". K/M/G/T alone are
// binary (as in parted and sgdisk); KB/MB/GB/TB are decimal.
func ParseSize(s string) (Size, error) {
	if strings.EqualFold(s, "rest") || s == "*" {
		return Size{Kind: Rest}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || v > 100 {
			return Size{}, fmt.Errorf("bad percentage %q: want more than 0 and at most 100", s)
		}
		return Size{Kind: Percent, Percent: v}, nil
	}
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		return Size{}, fmt.Errorf("bad size %q: want e.g. 512MiB, 20G, 25%% or rest", s)
	}
	mul, ok := units[strings.ToUpper(m[2])]
	if !ok {
		return Size{}, fmt.Errorf("bad size %q: unknown unit %q (B, KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB, TB)", s, m[2])
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return Size{}, fmt.Errorf("bad size %q: %v", s, err)
	}
	b := v * float64(mul)
	if b < 1 || b > 1<<62 {
		return Size{}, fmt.Errorf("bad size %q: out of range", s)
	}
	return Size{Kind: Fixed, Bytes: uint64(b)}, nil
}

// FormatBytes writes n in the largest binary unit that divides it exactly.
func FormatBytes(n uint64) string {
	for _, u := range []struct {
		s string
		v uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatUint(n/u.v, 10) + u.s
		}
	}
	return strconv.FormatUint(n, 10) + "B"
}

// Parse reads a layout file:
//
//	sim-layout 1
//	disk first                      # first | largest | /dev/…, then gpt (default) | msdos
//	bootloader grub                 # grub | none
//	part bios 1MiB  bios_grub
//	part esp  256MiB esp  /boot/efi label=ESP
//	part swap 512MiB swap
//	part root rest  ext4 /          label=root options=noatime,errors=remount-ro
//
// '#' starts a comment. Every error names its line.
func Parse(text string) (*Layout, error) {
	l := &Layout{Disk: "first", Table: TableGPT, Bootloader: "grub"}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 4096), 1<<20)
	n := 0
	seenDisk, seenBoot := false, false
	for sc.Scan() {
		n++
		raw := sc.Text()
		line := raw
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		fail := func(format string, a ...any) error {
			return &ParseError{Line: n, Text: strings.TrimSpace(raw), Err: fmt.Errorf(format, a...)}
		}
		switch f[0] {
		case "sim-layout":
			if len(f) != 2 || f[1] != strconv.Itoa(Version) {
				return nil, fail("unsupported layout version (this sim reads sim-layout %d)", Version)
			}
		case "disk":
			if len(f) != 2 && len(f) != 3 {
				return nil, fail("want: disk first|largest|/dev/PATH [gpt|msdos]")
			}
			if err := CheckDisk(f[1]); err != nil {
				return nil, fail("%v", err)
			}
			table := TableGPT
			if len(f) == 3 {
				if f[2] != TableGPT && f[2] != TableMsdos {
					return nil, fail("unknown partition table %q (want gpt or msdos)", f[2])
				}
				table = f[2]
			}
			// The first disk line names the first disk (part lines
			// before it are its too); each later one starts a disk.
			if !seenDisk {
				l.Disk, l.Table, l.DiskLine, seenDisk = f[1], table, n, true
				break
			}
			for _, d := range l.AllDisks() {
				if d.Spec == f[1] {
					return nil, fail("disk %s named twice (first on line %d)", f[1], d.Line)
				}
			}
			l.Others = append(l.Others, Disk{Spec: f[1], Table: table, Line: n})
		case "bootloader":
			if len(f) != 2 || (f[1] != "grub" && f[1] != "none") {
				return nil, fail("want: bootloader grub|none")
			}
			if seenBoot {
				return nil, fail("second bootloader line")
			}
			l.Bootloader, seenBoot = f[1], true
		case "part":
			p, err := parsePart(f[1:])
			if err != nil {
				return nil, fail("%v", err)
			}
			p.Line = n
			if k := len(l.Others); k > 0 {
				l.Others[k-1].Partitions = append(l.Others[k-1].Partitions, p)
			} else {
				l.Partitions = append(l.Partitions, p)
			}
		case "raid", "vg", "lv", "subvol":
			if err := l.parseVolume(f, n); err != nil {
				return nil, fail("%v", err)
			}
		default:
			return nil, fail("unknown keyword %q (want sim-layout, disk, bootloader, part, raid, vg, lv or subvol)", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("layout: %w", err)
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return l, nil
}

// CheckDisk accepts "first", "largest" or an absolute /dev path.
func CheckDisk(d string) error {
	if d == "first" || d == "largest" {
		return nil
	}
	if !strings.HasPrefix(d, "/dev/") || strings.Contains(d, "..") || len(d) <= len("/dev/") {
		return fmt.Errorf("bad disk %q: want first, largest or a /dev/ path", d)
	}
	return nil
}

func parsePart(f []string) (Partition, error) {
	if len(f) < 3 {
		return Partition{}, errors.New("want: part NAME SIZE FS [MOUNTPOINT] [label=L] [options=O] [keep]")
	}
	p := Partition{Name: f[0]}
	if !nameRe.MatchString(p.Name) {
		return p, fmt.Errorf("bad partition name %q: letters, digits, _ . - (at most 36)", p.Name)
	}
	var err error
	if p.Size, err = ParseSize(f[1]); err != nil {
		return p, err
	}
	p.FS = FS(strings.ToLower(f[2]))
	if !knownFS[p.FS] {
		return p, fmt.Errorf("unknown filesystem %q (esp, vfat, ext2, ext3, ext4, xfs, btrfs, swap, raid, lvm, bios_grub, none)", f[2])
	}
	if err := parseOpts(&p, f[3:], nil); err != nil {
		return p, err
	}
	return p, nil
}

// parseOpts reads what follows a volume's filesystem: a mount point, -,
// label=, options=, keep, and the words extra accepts (false: not its).
func parseOpts(p *Partition, f []string, extra func(string) (bool, error)) error {
	for _, a := range f {
		if extra != nil {
			if ok, err := extra(a); err != nil {
				return err
			} else if ok {
				continue
			}
		}
		switch {
		case strings.HasPrefix(a, "/"):
			if p.Mount != "" {
				return fmt.Errorf("second mount point %q", a)
			}
			p.Mount = a
		case a == "-":
		case a == "keep":
			p.Keep = true
		case strings.HasPrefix(a, "label="):
			p.Label = strings.TrimPrefix(a, "label=")
			if !labelRe.MatchString(p.Label) {
				return fmt.Errorf("bad label %q: 1-16 of letters, digits, _ . -", p.Label)
			}
		case strings.HasPrefix(a, "options="):
			p.Options = strings.TrimPrefix(a, "options=")
			if p.Options == "" || strings.ContainsAny(p.Options, " \t") {
				return fmt.Errorf("bad mount options %q", p.Options)
			}
		default:
			return fmt.Errorf("unexpected %q (want a mount point, label=, options=, keep)", a)
		}
	}
	return nil
}

func checkMount(m string) error {
	if !strings.HasPrefix(m, "/") || (len(m) > 1 && strings.HasSuffix(m, "/")) {
		return fmt.Errorf("bad mount point %q: want an absolute path without a trailing slash", m)
	}
	for _, c := range strings.Split(m[1:], "/") {
		if m != "/" && (c == "" || c == "." || c == "..") {
			return fmt.Errorf("bad mount point %q", m)
		}
	}
	if strings.ContainsAny(m, " \t\n\\") {
		return fmt.Errorf("bad mount point %q: no spaces or backslashes", m)
	}
	return nil
}

// Format writes l back in the file format (canonical spacing).
func (l *Layout) Format() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sim-layout %d\n", Version)
	for i, d := range l.AllDisks() {
		fmt.Fprintf(&b, "disk %s", d.Spec)
		if d.Table == TableMsdos {
			b.WriteString(" " + TableMsdos)
		}
		b.WriteByte('\n')
		if i == 0 {
			fmt.Fprintf(&b, "bootloader %s\n", l.Bootloader)
		}
		for _, p := range d.Partitions {
			fmt.Fprintf(&b, "part %s %s %s", p.Name, p.Size, p.FS)
			formatOpts(&b, p)
			b.WriteByte('\n')
		}
	}
	for _, r := range l.RAIDs {
		fmt.Fprintf(&b, "raid %s %d %s %s", r.Name, r.Level, strings.Join(r.Members, ","), r.FS)
		if len(r.Spares) > 0 {
			fmt.Fprintf(&b, " spares=%s", strings.Join(r.Spares, ","))
		}
		if r.Metadata != "" {
			fmt.Fprintf(&b, " metadata=%s", r.Metadata)
		}
		formatOpts(&b, r.Partition)
		b.WriteByte('\n')
	}
	for _, g := range l.VGs {
		fmt.Fprintf(&b, "vg %s %s\n", g.Name, strings.Join(g.PVs, ","))
	}
	for _, v := range l.LVs {
		fmt.Fprintf(&b, "lv %s/%s %s %s", v.VG, v.Name, v.Size, v.FS)
		formatOpts(&b, v.Partition)
		b.WriteByte('\n')
	}
	for _, s := range l.Subvols {
		fmt.Fprintf(&b, "subvol %s %s %s", s.On, s.Name, s.Mount)
		if s.Options != "" {
			fmt.Fprintf(&b, " options=%s", s.Options)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func formatOpts(b *strings.Builder, p Partition) {
	if p.Mount != "" {
		fmt.Fprintf(b, " %s", p.Mount)
	}
	if p.Label != "" {
		fmt.Fprintf(b, " label=%s", p.Label)
	}
	if p.Options != "" {
		fmt.Fprintf(b, " options=%s", p.Options)
	}
	if p.Keep {
		b.WriteString(" keep")
	}
}
