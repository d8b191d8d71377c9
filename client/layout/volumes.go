package layout

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// RAID is one "raid" line: an md array over partitions of FS raid.
type RAID struct {
	// Partition holds the array's name (mdN: its device is /dev/mdN),
	// filesystem, mount point, label and options; Size is unused.
	Partition
	Level    int      // 0, 1, 5, 6 or 10
	Members  []string // partition names, active devices
	Spares   []string // partition names, hot spares
	Metadata string   // mdadm superblock format: "" (1.2) or 1.0 (at the end: the member reads as the filesystem)
}

// Dev is the array's device.
func (r RAID) Dev() string { return "/dev/" + r.Name }

// VG is one "vg" line: an LVM volume group over physical volumes
// (partitions or arrays of FS lvm).
type VG struct {
	Name string
	PVs  []string
	Line int
}

// LV is one "lv VG/NAME SIZE FS …" line. Its size is of the VG: fixed,
// a percentage of the VG, or rest (what the VG's other LVs leave).
type LV struct {
	Partition // Name is the LV's own name
	VG        string
}

// Dev is the LV's device as device-mapper names it.
func (v LV) Dev() string {
	esc := func(s string) string { return strings.ReplaceAll(s, "-", "--") }
	return "/dev/mapper/" + esc(v.VG) + "-" + esc(v.Name)
}

// Subvol is one "subvol ON NAME MOUNT" line: a btrfs subvolume of the
// btrfs volume ON (a partition, array or VG/LV), mounted with subvol=NAME.
type Subvol struct {
	On      string
	Name    string
	Mount   string
	Options string
	Line    int
}

// raidMin is the fewest active members each md level takes.
var raidMin = map[int]int{0: 2, 1: 2, 5: 3, 6: 4, 10: 2}

var (
	mdRe     = regexp.MustCompile(`^md[0-9]{1,3}$`)
	lvmRe    = regexp.MustCompile(`^[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,62}$`)
	subvolRe = regexp.MustCompile(`^[A-Za-z0-9@_.+-]+(/[A-Za-z0-9@_.+-]+)*$`)
)

// AllDisks is every disk stanza, the first (Disk, Table, Partitions) first.
func (l *Layout) AllDisks() []Disk {
	return append([]Disk{{Spec: l.Disk, Table: l.Table, Partitions: l.Partitions, Line: l.DiskLine}}, l.Others...)
}

func splitNames(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// parseVolume reads a raid, vg, lv or subvol line (f[0] is the keyword).
func (l *Layout) parseVolume(f []string, line int) error {
	switch f[0] {
	case "raid":
		if len(f) < 5 {
			return errors.New("want: raid mdN LEVEL MEMBER,MEMBER… FS [MOUNTPOINT] [spares=P,…] [metadata=1.0|1.2] [label=L] [options=O]")
		}
		r := RAID{Partition: Partition{Name: f[1], Line: line}}
		if !mdRe.MatchString(r.Name) {
			return fmt.Errorf("bad array name %q: want mdN (md0 … md127)", r.Name)
		}
		lv, err := strconv.Atoi(strings.TrimPrefix(f[2], "raid"))
		if _, ok := raidMin[lv]; err != nil || !ok {
			return fmt.Errorf("bad RAID level %q: want 0, 1, 5, 6 or 10", f[2])
		}
		r.Level = lv
		r.Members = splitNames(f[3])
		r.FS = FS(strings.ToLower(f[4]))
		if !knownFS[r.FS] || r.FS == FSRaid || r.FS == FSESP || r.FS == FSBiosGrub {
			return fmt.Errorf("array %s: filesystem %q cannot be on an md array (ext2, ext3, ext4, xfs, btrfs, vfat, swap, lvm, none)", r.Name, f[4])
		}
		err = parseOpts(&r.Partition, f[5:], func(a string) (bool, error) {
			switch {
			case strings.HasPrefix(a, "spares="):
				r.Spares = splitNames(strings.TrimPrefix(a, "spares="))
				return true, nil
			case strings.HasPrefix(a, "metadata="):
				r.Metadata = strings.TrimPrefix(a, "metadata=")
				if r.Metadata != "1.0" && r.Metadata != "1.2" {
					return false, fmt.Errorf("bad metadata %q: want 1.0 or 1.2", r.Metadata)
				}
				return true, nil
			}
			return false, nil
		})
		if err != nil {
			return err
		}
		l.RAIDs = append(l.RAIDs, r)
	case "vg":
		if len(f) != 3 {
			return errors.New("want: vg NAME PV,PV… (partitions or arrays of filesystem lvm)")
		}
		if !lvmRe.MatchString(f[1]) {
			return fmt.Errorf("bad volume group name %q: letters, digits, _ . + -", f[1])
		}
		l.VGs = append(l.VGs, VG{Name: f[1], PVs: splitNames(f[2]), Line: line})
	case "lv":
		if len(f) < 4 {
			return errors.New("want: lv VG/NAME SIZE FS [MOUNTPOINT] [label=L] [options=O]")
		}
		vg, name, ok := strings.Cut(f[1], "/")
		if !ok || !lvmRe.MatchString(vg) || !lvmRe.MatchString(name) {
			return fmt.Errorf("bad logical volume %q: want VG/NAME (letters, digits, _ . + -)", f[1])
		}
		v := LV{Partition: Partition{Name: name, Line: line}, VG: vg}
		var err error
		if v.Size, err = ParseSize(f[2]); err != nil {
			return err
		}
		v.FS = FS(strings.ToLower(f[3]))
		if !knownFS[v.FS] || v.FS == FSRaid || v.FS == FSLVM || v.FS == FSESP || v.FS == FSBiosGrub || v.FS == FSVfat {
			return fmt.Errorf("logical volume %s: filesystem %q cannot be on LVM (ext2, ext3, ext4, xfs, btrfs, swap, none)", f[1], f[3])
		}
		if err := parseOpts(&v.Partition, f[4:], nil); err != nil {
			return err
		}
		l.LVs = append(l.LVs, v)
	case "subvol":
		if len(f) < 4 || len(f) > 5 {
			return errors.New("want: subvol VOLUME NAME MOUNTPOINT [options=O]")
		}
		s := Subvol{On: f[1], Name: f[2], Mount: f[3], Line: line}
		if !subvolRe.MatchString(s.Name) {
			return fmt.Errorf("bad subvolume name %q: letters, digits, @ _ . + -, / between", s.Name)
		}
		if err := checkMount(s.Mount); err != nil {
			return err
		}
		if len(f) == 5 {
			o, ok := strings.CutPrefix(f[4], "options=")
			if !ok || o == "" || strings.Contains(o, "subvol") {
				return fmt.Errorf("unexpected %q (want options=O, without subvol=: sim writes that)", f[4])
			}
			s.Options = o
		}
		l.Subvols = append(l.Subvols, s)
	}
	return nil
}

// at names where a volume was written: "layout line N" (and the disk).
func at(line int, disk string) string {
	s := "layout"
	if line > 0 {
		s += " line " + strconv.Itoa(line)
	}
	if disk != "" {
		s += " (disk " + disk + ")"
	}
	return s
}

// Validate checks what no single line can: unique names and mount points,
// one root, at most one "rest" per disk and per VG, every array member
// and physical volume used once, mount points only where they make sense.
// Errors name the line and, for a partition, its disk.
func (l *Layout) Validate() error {
	if l.Table == "" {
		l.Table = TableGPT
	}
	if l.Disk == "" {
		l.Disk = "first"
	}
	names := map[string]string{} // partition and array names → where
	mounts := map[string]bool{}
	root := 0
	kinds := map[string]FS{} // partition and array names → FS
	volume := func(p Partition, what, where string) error {
		if prev, ok := names[p.Name]; ok && what != "lv" {
			return fmt.Errorf("%s: %s %q named twice (first at %s)", where, what, p.Name, prev)
		}
		if what != "lv" {
			names[p.Name] = where
			kinds[p.Name] = p.FS
		}
		desc := fmt.Sprintf("%s %q", what, p.Name)
		if p.FS.Mountable() {
			if p.Mount == "" && p.FS != FSBtrfs {
				return fmt.Errorf("%s: %s (%s) needs a mount point", where, desc, p.FS)
			}
		} else if p.Mount != "" {
			return fmt.Errorf("%s: %s (%s) cannot have mount point %s", where, desc, p.FS, p.Mount)
		} else if p.Label != "" && p.FS != FSSwap {
			return fmt.Errorf("%s: %s (%s) cannot have a label", where, desc, p.FS)
		}
		if p.Mount != "" {
			if err := checkMount(p.Mount); err != nil {
				return fmt.Errorf("%s: %s: %w", where, desc, err)
			}
			if mounts[p.Mount] {
				return fmt.Errorf("%s: mount point %s used twice", where, p.Mount)
			}
			mounts[p.Mount] = true
			if p.Mount == "/" {
				root++
				if p.FS == FSVfat || p.FS == FSESP {
					return fmt.Errorf("%s: %s: the root filesystem cannot be %s", where, desc, p.FS)
				}
			}
		}
		if p.Keep {
			switch {
			case !p.FS.Mountable() || p.FS == FSESP || p.FS == FSBtrfs:
				return fmt.Errorf("%s: %s (%s) cannot be kept: keep is for data filesystems", where, desc, p.FS)
			case p.Mount == "/":
				return fmt.Errorf("%s: %s: the root filesystem cannot be kept (the image is installed onto it)", where, desc)
			}
		}
		if p.Options != "" && !p.FS.Mountable() && p.FS != FSSwap {
			return fmt.Errorf("%s: %s (%s) cannot have mount options", where, desc, p.FS)
		}
		if (p.FS == FSVfat || p.FS == FSESP) && len(p.Label) > 11 {
			return fmt.Errorf("%s: %s: FAT labels have at most 11 characters, %q has %d", where, desc, p.Label, len(p.Label))
		}
		if p.FS == FSXfs && len(p.Label) > 12 {
			return fmt.Errorf("%s: %s: XFS labels have at most 12 characters", where, desc)
		}
		return nil
	}
	total := 0
	for _, d := range l.AllDisks() {
		where := at(d.Line, d.Spec)
		if d.Table == "" {
			d.Table = TableGPT
		}
		if d.Table != TableGPT && d.Table != TableMsdos {
			return fmt.Errorf("%s: disk %s: unknown partition table %q (want gpt or msdos)", where, d.Spec, d.Table)
		}
		if len(d.Partitions) == 0 {
			if len(l.Others) == 0 {
				return errors.New("layout: no partitions")
			}
			return fmt.Errorf("%s: disk %s has no partitions", where, d.Spec)
		}
		total += len(d.Partitions)
		if len(d.Partitions) > 128 {
			return fmt.Errorf("%s: disk %s: more than 128 partitions (GPT's limit)", where, d.Spec)
		}
		if d.Table == TableMsdos && len(d.Partitions) > 4 {
			return fmt.Errorf("%s: disk %s: an msdos table holds at most 4 (primary) partitions, the layout has %d", where, d.Spec, len(d.Partitions))
		}
		rest := 0
		var pct float64
		for _, p := range d.Partitions {
			pw := at(p.Line, d.Spec)
			if d.Table == TableMsdos && p.FS == FSBiosGrub {
				return fmt.Errorf("%s: partition %q: bios_grub is for GPT disks; on an msdos disk GRUB goes into the gap before the first partition", pw, p.Name)
			}
			if p.Size.Kind == Rest {
				if rest++; rest > 1 {
					return fmt.Errorf("%s: more than one partition sized \"rest\" on disk %s", pw, d.Spec)
				}
			}
			if p.Size.Kind == Percent {
				if pct += p.Size.Percent; pct > 100 {
					return fmt.Errorf("%s: percentages add up to %g%%, more than 100%% of disk %s", pw, pct, d.Spec)
				}
			}
			if err := volume(p, "partition", pw); err != nil {
				return err
			}
		}
	}
	used := map[string]string{} // member or PV name → its array or VG
	use := func(name, by, where string, want FS) error {
		fs, ok := kinds[name]
		if !ok {
			return fmt.Errorf("%s: %s: no partition or array %q", where, by, name)
		}
		if fs != want {
			return fmt.Errorf("%s: %s: %q is %s, not %s", where, by, name, fs, want)
		}
		if prev, ok := used[name]; ok {
			return fmt.Errorf("%s: %s: %q is already used by %s", where, by, name, prev)
		}
		used[name] = by
		return nil
	}
	for _, r := range l.RAIDs {
		where := at(r.Line, "")
		by := "array " + r.Name
		if r.Level == 0 && len(r.Spares) > 0 {
			return fmt.Errorf("%s: %s: RAID 0 has no redundancy to rebuild onto spares", where, by)
		}
		if len(r.Members) < raidMin[r.Level] {
			return fmt.Errorf("%s: %s: RAID %d needs at least %d members, it has %d", where, by, r.Level, raidMin[r.Level], len(r.Members))
		}
		for _, m := range append(append([]string(nil), r.Members...), r.Spares...) {
			if err := use(m, by, where, FSRaid); err != nil {
				return err
			}
		}
		if err := volume(r.Partition, "array", where); err != nil {
			return err
		}
	}
	vgs := map[string]bool{}
	for _, g := range l.VGs {
		where := at(g.Line, "")
		if vgs[g.Name] {
			return fmt.Errorf("%s: volume group %s named twice", where, g.Name)
		}
		vgs[g.Name] = true
		if len(g.PVs) == 0 {
			return fmt.Errorf("%s: volume group %s has no physical volumes", where, g.Name)
		}
		for _, pv := range g.PVs {
			if err := use(pv, "volume group "+g.Name, where, FSLVM); err != nil {
				return err
			}
		}
	}
	for name, fs := range kinds {
		if (fs == FSRaid || fs == FSLVM) && used[name] == "" {
			what := map[FS]string{FSRaid: "in no raid line", FSLVM: "in no vg line"}[fs]
			return fmt.Errorf("%s: %q (%s) is %s", names[name], name, fs, what)
		}
	}
	lvNames := map[string]bool{}
	rest, pct := map[string]int{}, map[string]float64{}
	btrfs := map[string]bool{}
	for _, v := range l.LVs {
		where := at(v.Line, "")
		full := v.VG + "/" + v.Name
		if !vgs[v.VG] {
			return fmt.Errorf("%s: logical volume %s: no volume group %s (a vg line)", where, full, v.VG)
		}
		if lvNames[full] {
			return fmt.Errorf("%s: logical volume %s named twice", where, full)
		}
		lvNames[full] = true
		switch v.Size.Kind {
		case Rest:
			if rest[v.VG]++; rest[v.VG] > 1 {
				return fmt.Errorf("%s: more than one logical volume of %s sized \"rest\"", where, v.VG)
			}
		case Percent:
			if pct[v.VG] += v.Size.Percent; pct[v.VG] > 100 {
				return fmt.Errorf("%s: percentages of volume group %s add up to %g%%, more than 100%%", where, v.VG, pct[v.VG])
			}
		}
		if err := volume(v.Partition, "lv", where); err != nil {
			return fmt.Errorf("%s", strings.Replace(err.Error(), fmt.Sprintf("lv %q", v.Name), "logical volume "+full, 1))
		}
		if v.FS == FSBtrfs {
			btrfs[full] = true
		}
	}
	for n, fs := range kinds {
		if fs == FSBtrfs {
			btrfs[n] = true
		}
	}
	subs := map[string]int{}
	for _, s := range l.Subvols {
		where := at(s.Line, "")
		if !btrfs[s.On] {
			return fmt.Errorf("%s: subvolume %s: %q is not a btrfs partition, array or VG/LV", where, s.Name, s.On)
		}
		subs[s.On]++
		if mounts[s.Mount] {
			return fmt.Errorf("%s: mount point %s used twice", where, s.Mount)
		}
		mounts[s.Mount] = true
		if s.Mount == "/" {
			root++
		}
	}
	for _, v := range l.Volumes() {
		if v.FS == FSBtrfs && v.Mount == "" && subs[v.Ref] == 0 {
			return fmt.Errorf("%s: %s (btrfs) needs a mount point or a subvol line", at(v.Line, ""), v.Ref)
		}
	}
	if total == 0 {
		return errors.New("layout: no partitions")
	}
	if root == 0 {
		return errors.New("layout: no partition is mounted at /")
	}
	return nil
}

// Volume is anything a filesystem can be made on: a partition, an array
// or a logical volume.
type Volume struct {
	Partition
	Kind string // "part", "raid" or "lv"
	Ref  string // how raid, vg and subvol lines name it: NAME, mdN, VG/NAME
}

// Volumes is every partition, array and LV, in that order.
func (l *Layout) Volumes() []Volume {
	var out []Volume
	for _, d := range l.AllDisks() {
		for _, p := range d.Partitions {
			out = append(out, Volume{Partition: p, Kind: "part", Ref: p.Name})
		}
	}
	for _, r := range l.RAIDs {
		out = append(out, Volume{Partition: r.Partition, Kind: "raid", Ref: r.Name})
	}
	for _, v := range l.LVs {
		out = append(out, Volume{Partition: v.Partition, Kind: "lv", Ref: v.VG + "/" + v.Name})
	}
	return out
}

// Simple says whether l is one disk of plain partitions (what sim
// installed before arrays, LVM and btrfs subvolumes).
func (l *Layout) Simple() bool {
	return len(l.Others) == 0 && len(l.RAIDs) == 0 && len(l.VGs) == 0 && len(l.Subvols) == 0
}

// KeptArrays are the arrays an install assembles instead of creating
// when their members hold them: those marked keep, and those under a
// volume group with a kept LV (re-creating them would lose the LV).
func (l *Layout) KeptArrays() map[string]bool {
	out := map[string]bool{}
	for _, r := range l.RAIDs {
		if r.Keep {
			out[r.Name] = true
		}
	}
	for _, g := range l.VGs {
		if !l.KeepsVG(g.Name) {
			continue
		}
		for _, pv := range g.PVs {
			for _, r := range l.RAIDs {
				if r.Name == pv {
					out[pv] = true
				}
			}
		}
	}
	return out
}

// KeepsVG says whether the volume group has a kept LV (so an install
// keeps the VG when its PVs hold it).
func (l *Layout) KeepsVG(vg string) bool {
	for _, v := range l.LVs {
		if v.VG == vg && v.Keep {
			return true
		}
	}
	return false
}
