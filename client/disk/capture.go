package disk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/systemimager/sim/client/layout"
)

// Where Capture reads the running system (variables for tests).
var (
	MountinfoPath = "/proc/self/mountinfo"
	FstabPath     = "/etc/fstab"
)

// Captured is a golden client's disks read back as a layout, and what
// the layout cannot say (UUIDs, gaps, metadata versions sim does not
// make, …): one note a line, printed as comments above it.
type Captured struct {
	Layout *layout.Layout
	Notes  []string
}

// capturer holds what one Capture has read so far.
type capturer struct {
	ctx    context.Context
	mounts []mountEnt
	fstab  []fstabEnt
	notes  []string
	// byDev maps a device (symlinks resolved) to the layout name a raid
	// or vg line uses for it, and where its partition is.
	byDev map[string]string
	parts map[string]*layout.Partition // partition name → its entry in l
	names map[string]bool              // partition and array names taken
	l     *layout.Layout
}

func (c *capturer) note(format string, a ...any) {
	c.notes = append(c.notes, fmt.Sprintf(format, a...))
}

// Capture reads a golden client's disks ds back into a layout (what
// si_mkautoinstallscript did): each disk's GPT or msdos partitions in
// order, each filesystem recognised by its superblock with its label;
// the md arrays over them (mdadm --detail --export), LVM volume groups
// and logical volumes (lvm's JSON reports), btrfs subvolumes as they are
// mounted; mount points from /proc/self/mountinfo, options from
// /etc/fstab. Sizes are exact MiB; each disk's last partition, and the
// largest LV of a full VG, become "rest" so the layout fits larger
// disks. What a layout cannot express fails with an error naming it
// (logical msdos partitions, md levels or LV kinds sim does not make, an
// array or VG reaching a disk not captured); what it expresses only
// approximately is a note.
func Capture(ctx context.Context, ds []Info) (*Captured, error) {
	if len(ds) == 0 {
		return nil, errors.New("capture: no disk")
	}
	c := &capturer{ctx: ctx, mounts: readMountinfo(MountinfoPath), fstab: readFstab(FstabPath),
		byDev: map[string]string{}, parts: map[string]*layout.Partition{}, names: map[string]bool{},
		l: &layout.Layout{Bootloader: "grub"}}
	for i, d := range ds {
		disk, err := c.disk(d)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			c.l.Disk, c.l.Table, c.l.Partitions = disk.Spec, disk.Table, disk.Partitions
		} else {
			c.l.Others = append(c.l.Others, disk)
		}
	}
	// Pointers into the slices, now that they no longer grow.
	for i := range c.l.Partitions {
		c.parts[c.l.Partitions[i].Name] = &c.l.Partitions[i]
	}
	for j := range c.l.Others {
		for i := range c.l.Others[j].Partitions {
			c.parts[c.l.Others[j].Partitions[i].Name] = &c.l.Others[j].Partitions[i]
		}
	}
	if err := c.arrays(); err != nil {
		return nil, err
	}
	if err := c.lvm(); err != nil {
		return nil, err
	}
	// Members and PVs no array or VG claimed: a stopped array or an
	// unknown VG would make a layout that does not say what they are.
	for _, p := range c.parts {
		if p.FS == layout.FSRaid && !c.used(p.Name) {
			return nil, fmt.Errorf("capture: partition %s (%s) is an md RAID member but no running array has it (assemble it first: mdadm --assemble --scan)", p.Name, c.devOf(p.Name))
		}
		if p.FS == layout.FSLVM && !c.used(p.Name) {
			c.note("%s: an LVM physical volume of no volume group: captured as none", c.devOf(p.Name))
			p.FS = layout.FSNone
		}
	}
	for _, v := range c.volumes() {
		c.mountOf(v.p, v.dev, v.ref)
	}
	if err := c.l.Validate(); err != nil {
		return &Captured{Layout: c.l, Notes: c.notes}, fmt.Errorf("captured layout needs editing: %w", err)
	}
	return &Captured{Layout: c.l, Notes: c.notes}, nil
}

// used says whether an array or VG uses the named partition or array.
func (c *capturer) used(name string) bool {
	for _, r := range c.l.RAIDs {
		for _, m := range append(append([]string(nil), r.Members...), r.Spares...) {
			if m == name {
				return true
			}
		}
	}
	for _, g := range c.l.VGs {
		for _, pv := range g.PVs {
			if pv == name {
				return true
			}
		}
	}
	return false
}

func (c *capturer) devOf(name string) string {
	for dev, n := range c.byDev {
		if n == name {
			return dev
		}
	}
	return name
}

// resolve is dev with symlinks resolved (/dev/mapper/vg-lv → /dev/dm-1),
// dev itself when it cannot be.
func resolve(dev string) string {
	if r, err := filepath.EvalSymlinks(dev); err == nil {
		return r
	}
	return dev
}

// disk reads one disk's partition table.
func (c *capturer) disk(d Info) (layout.Disk, error) {
	out := layout.Disk{Spec: d.Path, Table: layout.TableGPT}
	dk, err := diskfs.Open(d.Path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return out, fmt.Errorf("open %s: %w", d.Path, err)
	}
	defer dk.Close()
	pt, err := dk.GetPartitionTable()
	if err != nil {
		return out, fmt.Errorf("%s: no partition table sim reads (GPT or msdos): %w", d.Path, err)
	}
	type found struct {
		index      int
		start, end uint64 // sectors, inclusive
		name       string // GPT name
		fs         layout.FS
	}
	var fp []found
	switch t := pt.(type) {
	case *gpt.Table:
		for i, p := range t.Partitions {
			if p.Type == gpt.Unused {
				continue
			}
			idx := p.Index
			if idx == 0 {
				idx = i + 1
			}
			f := found{index: idx, start: p.Start, end: p.End, name: p.Name}
			switch p.Type {
			case gpt.BIOSBoot:
				f.fs = layout.FSBiosGrub
			case gpt.EFISystemPartition:
				f.fs = layout.FSESP
			}
			fp = append(fp, f)
		}
	case *mbr.Table:
		out.Table = layout.TableMsdos
		for i, p := range t.Partitions {
			if p.Type == mbr.Empty || p.Size == 0 {
				continue
			}
			switch p.Type {
			case mbr.ExtendedCHS, mbr.ExtendedLBA, mbr.LinuxExtended:
				return out, fmt.Errorf("%s: partition %d is an extended partition: logical partitions cannot be expressed (sim's msdos tables have up to 4 primary partitions)", d.Path, i+1)
			}
			f := found{index: i + 1, start: uint64(p.Start), end: uint64(p.Start) + uint64(p.Size) - 1}
			if p.Type == mbr.EFISystem {
				f.fs = layout.FSESP
			}
			fp = append(fp, f)
		}
	default:
		return out, fmt.Errorf("%s: a %s partition table: sim reads GPT and msdos", d.Path, pt.Type())
	}
	if len(fp) == 0 {
		return out, fmt.Errorf("%s: no partitions", d.Path)
	}
	sort.Slice(fp, func(i, j int) bool { return fp[i].start < fp[j].start })
	next := uint64(layout.Align) // where the layout places the next partition
	for n, f := range fp {
		dev := PartPath(d.Path, f.index)
		if out.Table == layout.TableMsdos && f.index != n+1 {
			c.note("%s: msdos partition %d becomes partition %d (a layout numbers its partitions in order)", dev, f.index, n+1)
		}
		start, bytes := f.start*d.Sector, (f.end-f.start+1)*d.Sector
		if start != next {
			c.note("%s: starts at %s, the layout places it at %s (gaps between partitions are not kept)", dev, layout.FormatBytes(start), layout.FormatBytes(next))
		}
		if bytes%layout.Align != 0 {
			c.note("%s: %d bytes, not whole MiB: captured as %s", dev, bytes, layout.FormatBytes(bytes/layout.Align*layout.Align))
		}
		next = start + bytes
		p := layout.Partition{Name: f.name, Size: layout.Size{Kind: layout.Fixed, Bytes: bytes / layout.Align * layout.Align}}
		pr, _ := ProbeDevice(dev)
		p.FS = pr.FS
		switch {
		case f.fs == layout.FSBiosGrub:
			p.FS = layout.FSBiosGrub
		case f.fs == layout.FSESP && pr.FS == layout.FSVfat:
			p.FS = layout.FSESP
		}
		if err := c.fsInfo(&p, pr, dev); err != nil {
			return out, err
		}
		p.Name = c.name(p, f.name, dev, n+1, d)
		c.byDev[resolve(dev)] = p.Name
		out.Partitions = append(out.Partitions, p)
	}
	out.Partitions[len(out.Partitions)-1].Size = layout.Size{Kind: layout.Rest}
	return out, nil
}

// fsInfo takes the label and UUID of what dev holds into p, and notes
// what a layout cannot carry.
func (c *capturer) fsInfo(p *layout.Partition, pr Probe, dev string) error {
	if pr.FS == layout.FSBtrfs && pr.Devices > 1 {
		return fmt.Errorf("%s: btrfs spanning %d devices: btrfs over several devices cannot be expressed in a layout", dev, pr.Devices)
	}
	if pr.Label != "" {
		if err := labelOK(p.FS, pr.Label); err == nil {
			p.Label = pr.Label
		} else {
			c.note("%s: label %q cannot be written in a layout: left out (%v)", dev, pr.Label, err)
		}
	}
	if pr.UUID != "" {
		c.note("%s: %s UUID=%s (sim gives every filesystem a new UUID and writes fstab by it)", dev, pr.FS, pr.UUID)
	}
	return nil
}

// labelOK says whether a layout line with label l parses for fs.
func labelOK(fs layout.FS, l string) error {
	mount := " /x"
	if !fs.Mountable() {
		mount = ""
	}
	if _, err := layout.Parse("part x rest ext4 /\npart y 8MiB " + string(fs) + mount + " label=" + l + "\n"); err != nil {
		var pe *layout.ParseError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	return nil
}

// name picks a partition's layout name: its GPT name when it is a valid
// one, else its label, else one from what it is (root, boot, swap, …),
// else pN; a disk's second "root" becomes root2 and so on.
func (c *capturer) name(p layout.Partition, gptName, dev string, n int, d Info) string {
	try := []string{}
	if gptName != "" {
		try = append(try, gptName)
	}
	if p.Label != "" {
		try = append(try, strings.ToLower(p.Label))
	}
	if m := c.mountFor(resolve(dev)); m != nil {
		if m.mount == "/" {
			try = append(try, "root")
		} else {
			try = append(try, filepath.Base(m.mount))
		}
	}
	switch p.FS {
	case layout.FSSwap, layout.FSESP, layout.FSBiosGrub:
		try = append(try, map[layout.FS]string{layout.FSSwap: "swap", layout.FSESP: "esp", layout.FSBiosGrub: "bios"}[p.FS])
	}
	try = append(try, "p"+strconv.Itoa(n))
	for _, t := range try {
		if !validName(t) {
			continue
		}
		for k := 1; ; k++ {
			cand := t
			if k > 1 {
				cand = t + strconv.Itoa(k)
			}
			if !validName(cand) {
				break
			}
			if !c.names[cand] {
				c.names[cand] = true
				if gptName != "" && cand != gptName {
					c.note("%s: GPT name %q is not a valid or unique layout name: captured as %s", dev, gptName, cand)
				}
				return cand
			}
		}
	}
	cand := fmt.Sprintf("%s-p%d", d.Name, n)
	c.names[cand] = true
	return cand
}

func validName(n string) bool {
	_, err := layout.Parse("part " + n + " rest ext4 /")
	return err == nil
}

// MdDetail is one array as mdadm --detail --export reports it.
type MdDetail struct {
	Level    string // raid1, raid5, linear, …
	Devices  int    // active devices the array has (MD_DEVICES)
	Metadata string // 1.2, 1.0, 0.90, imsm, …
	Name     string // MD_NAME (HOST:NAME)
	UUID     string
	// Members are the active members in role order; Spares the spares.
	Members, Spares []string
	// Faulty are members marked faulty.
	Faulty []string
}

// ParseMdadmExport reads mdadm --detail --export output: KEY=VALUE
// lines, MD_DEVICE_<dev>_ROLE (a number, spare or faulty) and
// MD_DEVICE_<dev>_DEV for each member.
func ParseMdadmExport(text string) (MdDetail, error) {
	kv := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			kv[k] = strings.Trim(v, `'"`)
		}
	}
	d := MdDetail{Level: kv["MD_LEVEL"], Metadata: kv["MD_METADATA"], Name: kv["MD_NAME"], UUID: kv["MD_UUID"]}
	if d.Level == "" {
		return d, errors.New("no MD_LEVEL (not mdadm --detail --export output?)")
	}
	if n, err := strconv.Atoi(kv["MD_DEVICES"]); err == nil {
		d.Devices = n
	} else {
		return d, fmt.Errorf("bad MD_DEVICES %q", kv["MD_DEVICES"])
	}
	type member struct {
		dev  string
		role int
	}
	var active []member
	for k, dev := range kv {
		key, ok := strings.CutSuffix(k, "_DEV")
		if !ok || !strings.HasPrefix(key, "MD_DEVICE_") {
			continue
		}
		role := kv[key+"_ROLE"]
		switch {
		case role == "spare":
			d.Spares = append(d.Spares, dev)
		case role == "faulty":
			d.Faulty = append(d.Faulty, dev)
		default:
			n, err := strconv.Atoi(role)
			if err != nil {
				return d, fmt.Errorf("member %s: bad role %q", dev, role)
			}
			active = append(active, member{dev, n})
		}
	}
	sort.Slice(active, func(i, j int) bool { return active[i].role < active[j].role })
	for _, m := range active {
		d.Members = append(d.Members, m.dev)
	}
	sort.Strings(d.Spares)
	sort.Strings(d.Faulty)
	return d, nil
}

// SysBlockMD lists the running md arrays (a variable for tests).
var SysBlockMD = "/sys/block"

// arrays captures the running md arrays whose members are on the
// captured disks.
func (c *capturer) arrays() error {
	mds, _ := filepath.Glob(filepath.Join(SysBlockMD, "md*", "md"))
	sort.Slice(mds, func(i, j int) bool { return mdNum(mds[i]) < mdNum(mds[j]) })
	for _, sys := range mds {
		name := filepath.Base(filepath.Dir(sys))
		dev := "/dev/" + name
		if st, err := os.ReadFile(filepath.Join(sys, "array_state")); err == nil && strings.TrimSpace(string(st)) == "inactive" {
			continue // assembled from no member yet, or stopped
		}
		out, err := runTool(c.ctx, nil, "mdadm", "--detail", "--export", dev)
		if err != nil {
			return fmt.Errorf("array %s: %w", name, err)
		}
		det, err := ParseMdadmExport(out)
		if err != nil {
			return fmt.Errorf("array %s: mdadm --detail --export: %w", name, err)
		}
		if len(det.Members)+len(det.Spares) == 0 {
			// An mdadm that exports no MD_DEVICE_ lines: the kernel's
			// own list (dev-*/slot: the role, "none" for a spare).
			det.Members, det.Spares = sysMembers(sys)
		}
		if err := c.array(name, dev, det); err != nil {
			return err
		}
	}
	return nil
}

// sysMembers reads an array's members from /sys/block/mdN/md/dev-*:
// active ones in slot order, then spares.
func sysMembers(sys string) (members, spares []string) {
	devs, _ := filepath.Glob(filepath.Join(sys, "dev-*"))
	type m struct {
		dev  string
		slot int
	}
	var act []m
	for _, d := range devs {
		dev := "/dev/" + strings.TrimPrefix(filepath.Base(d), "dev-")
		b, _ := os.ReadFile(filepath.Join(d, "slot"))
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			act = append(act, m{dev, n})
		} else {
			spares = append(spares, dev)
		}
	}
	sort.Slice(act, func(i, j int) bool { return act[i].slot < act[j].slot })
	for _, a := range act {
		members = append(members, a.dev)
	}
	return members, spares
}

func mdNum(sys string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(sys)), "md"))
	return n
}

// raidLevels are the md levels a layout can make.
var raidLevels = map[string]int{"raid0": 0, "raid1": 1, "raid5": 5, "raid6": 6, "raid10": 10}

// array adds one running array (mdN, its device and mdadm's detail).
func (c *capturer) array(name, dev string, det MdDetail) error {
	var refs, spares []string
	outside := ""
	for _, m := range det.Members {
		if r, ok := c.byDev[resolve(m)]; ok {
			refs = append(refs, r)
		} else {
			outside = m
		}
	}
	for _, m := range det.Spares {
		if r, ok := c.byDev[resolve(m)]; ok {
			spares = append(spares, r)
		} else {
			outside = m
		}
	}
	if len(refs)+len(spares) == 0 {
		c.note("array %s is on disks not captured: left out", name)
		return nil
	}
	if outside != "" {
		return fmt.Errorf("array %s: member %s is not on a captured disk (capture its disk too)", name, outside)
	}
	lvl, ok := raidLevels[det.Level]
	if !ok {
		return fmt.Errorf("array %s: level %s cannot be expressed in a layout (raid0, raid1, raid5, raid6, raid10)", name, det.Level)
	}
	if len(det.Members) < det.Devices {
		c.note("array %s is degraded: %d of %d members present; the layout lists those", name, len(det.Members), det.Devices)
	}
	if len(det.Faulty) > 0 {
		c.note("array %s: faulty members %s left out", name, strings.Join(det.Faulty, ", "))
	}
	r := layout.RAID{Partition: layout.Partition{Name: name}, Level: lvl, Members: refs, Spares: spares}
	switch det.Metadata {
	case "1.2":
	case "1.0":
		r.Metadata = "1.0"
	case "0.90":
		r.Metadata = "1.0"
		c.note("array %s: metadata 0.90 captured as 1.0 (also at the end of the members; sim makes 1.0 and 1.2)", name)
	case "1.1":
		c.note("array %s: metadata 1.1 captured as 1.2 (both at the start; sim makes 1.0 and 1.2)", name)
	default:
		return fmt.Errorf("array %s: metadata %s (external or firmware RAID) cannot be expressed in a layout", name, det.Metadata)
	}
	if parts, _ := filepath.Glob(filepath.Join(SysBlockMD, name, name+"p*")); len(parts) > 0 {
		return fmt.Errorf("array %s is partitioned (%s): a partitioned array cannot be expressed in a layout", name, filepath.Base(parts[0]))
	}
	if !mdRe.MatchString(name) {
		return fmt.Errorf("array %s: a layout names arrays md0 … md127", name)
	}
	for _, m := range append(append([]string(nil), refs...), spares...) {
		c.parts[m].FS = layout.FSRaid
		c.parts[m].Label = ""
	}
	pr, _ := ProbeDevice(dev)
	if pr.FS == layout.FSRaid {
		return fmt.Errorf("array %s is itself an md member: nested arrays cannot be expressed in a layout", name)
	}
	if pr.FS == layout.FSESP || pr.FS == layout.FSBiosGrub {
		pr.FS = layout.FSNone
	}
	r.FS = pr.FS
	if err := c.fsInfo(&r.Partition, pr, dev); err != nil {
		return err
	}
	c.names[name] = true
	c.byDev[resolve(dev)] = name
	c.l.RAIDs = append(c.l.RAIDs, r)
	return nil
}

var mdRe = regexp.MustCompile(`^md([0-9]|[1-9][0-9]|1[01][0-9]|12[0-7])$`)

// LVMState is what lvm's JSON reports (pvs, vgs, lvs) say.
type LVMState struct {
	PVs []LVMPV
	VGs []LVMVG
	LVs []LVMLV
}

// LVMPV is one physical volume.
type LVMPV struct{ Name, VG string }

// LVMVG is one volume group (sizes in bytes).
type LVMVG struct {
	Name               string
	Size, Free, Extent uint64
}

// LVMLV is one logical volume.
type LVMLV struct {
	VG, Name string
	Size     uint64
	Layout   string // linear, striped, raid,raid1, thin,pool, …
	Role     string // public, private, snapshot, …
}

// The lvm report commands Capture runs (their JSON is ParseLVM's input).
var (
	PVSArgs = []string{"pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pv_name,vg_name"}
	VGSArgs = []string{"vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,vg_size,vg_free,vg_extent_size"}
	LVSArgs = []string{"lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,lv_name,lv_size,lv_layout,lv_role"}
)

// ParseLVM reads the JSON of PVSArgs, VGSArgs and LVSArgs.
func ParseLVM(pvs, vgs, lvs []byte) (LVMState, error) {
	type report struct {
		Report []struct {
			PV []map[string]string `json:"pv"`
			VG []map[string]string `json:"vg"`
			LV []map[string]string `json:"lv"`
		} `json:"report"`
	}
	var st LVMState
	read := func(what string, b []byte) (report, error) {
		var r report
		// lvm may print warnings before the JSON.
		if i := bytes.IndexByte(b, '{'); i > 0 {
			b = b[i:]
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return r, fmt.Errorf("lvm %s report: %w", what, err)
		}
		return r, nil
	}
	num := func(what, s string) (uint64, error) {
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("lvm %s report: bad size %q", what, s)
		}
		return n, nil
	}
	r, err := read("pvs", pvs)
	if err != nil {
		return st, err
	}
	for _, x := range r.Report {
		for _, p := range x.PV {
			st.PVs = append(st.PVs, LVMPV{Name: p["pv_name"], VG: p["vg_name"]})
		}
	}
	if r, err = read("vgs", vgs); err != nil {
		return st, err
	}
	for _, x := range r.Report {
		for _, g := range x.VG {
			v := LVMVG{Name: g["vg_name"]}
			for _, f := range []struct {
				key string
				to  *uint64
			}{{"vg_size", &v.Size}, {"vg_free", &v.Free}, {"vg_extent_size", &v.Extent}} {
				if *f.to, err = num("vgs", g[f.key]); err != nil {
					return st, err
				}
			}
			st.VGs = append(st.VGs, v)
		}
	}
	if r, err = read("lvs", lvs); err != nil {
		return st, err
	}
	for _, x := range r.Report {
		for _, v := range x.LV {
			lv := LVMLV{VG: v["vg_name"], Name: v["lv_name"], Layout: v["lv_layout"], Role: v["lv_role"]}
			if lv.Size, err = num("lvs", v["lv_size"]); err != nil {
				return st, err
			}
			st.LVs = append(st.LVs, lv)
		}
	}
	return st, nil
}

// ReadLVM runs the three reports and parses them; ok is false when
// there is no lvm tool.
func ReadLVM(ctx context.Context) (st LVMState, ok bool, err error) {
	if _, err := exec.LookPath("lvm"); err != nil {
		return st, false, nil
	}
	var out [3][]byte
	for i, args := range [][]string{PVSArgs, VGSArgs, LVSArgs} {
		s, err := lvm(ctx, nil, args...)
		if err != nil {
			return st, true, err
		}
		out[i] = []byte(s)
	}
	st, err = ParseLVM(out[0], out[1], out[2])
	return st, true, err
}

// lvm captures the volume groups over captured partitions and arrays.
func (c *capturer) lvm() error {
	wantPV := false
	for _, p := range c.parts {
		wantPV = wantPV || p.FS == layout.FSLVM
	}
	for _, r := range c.l.RAIDs {
		wantPV = wantPV || r.FS == layout.FSLVM
	}
	if !wantPV {
		return nil
	}
	st, ok, err := ReadLVM(c.ctx)
	if !ok {
		return errors.New("capture: the disks hold LVM physical volumes but there is no lvm tool here (install lvm2)")
	}
	if err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	return c.addLVM(st)
}

// addLVM adds the VGs and LVs of st whose PVs are captured.
func (c *capturer) addLVM(st LVMState) error {
	pvsOf := map[string][]string{}
	outside := map[string]string{}
	for _, pv := range st.PVs {
		if pv.VG == "" {
			continue
		}
		if ref, ok := c.byDev[resolve(pv.Name)]; ok {
			pvsOf[pv.VG] = append(pvsOf[pv.VG], ref)
		} else {
			outside[pv.VG] = pv.Name
		}
	}
	for _, g := range st.VGs {
		refs := pvsOf[g.Name]
		if len(refs) == 0 {
			c.note("volume group %s is on disks not captured: left out", g.Name)
			continue
		}
		if o := outside[g.Name]; o != "" {
			return fmt.Errorf("volume group %s: physical volume %s is not on a captured disk (capture its disk too)", g.Name, o)
		}
		for _, ref := range refs {
			if p, ok := c.parts[ref]; ok {
				p.FS, p.Label = layout.FSLVM, ""
			}
		}
		c.l.VGs = append(c.l.VGs, layout.VG{Name: g.Name, PVs: refs})
		var lvs []layout.LV
		largest := -1
		for _, v := range st.LVs {
			if v.VG != g.Name {
				continue
			}
			full := g.Name + "/" + v.Name
			if strings.Contains(v.Role, "snapshot") || strings.Contains(v.Role, "private") ||
				(v.Layout != "linear" && v.Layout != "striped") {
				return fmt.Errorf("logical volume %s (%s, %s) cannot be expressed in a layout (plain linear LVs only)", full, v.Layout, v.Role)
			}
			if v.Layout == "striped" {
				c.note("logical volume %s is striped: captured as linear (sim makes linear LVs)", full)
			}
			lv := layout.LV{VG: g.Name, Partition: layout.Partition{Name: v.Name, Size: layout.Size{Kind: layout.Fixed, Bytes: v.Size}}}
			dev := lv.Dev()
			pr, err := ProbeDevice(dev)
			if err != nil {
				c.note("logical volume %s: %v (not active?): its filesystem was not read", full, err)
			}
			switch pr.FS {
			case layout.FSRaid, layout.FSLVM, layout.FSESP, layout.FSVfat, layout.FSBiosGrub:
				c.note("logical volume %s holds %s, which a layout cannot put on an LV: captured as none", full, pr.FS)
				pr = Probe{FS: layout.FSNone}
			}
			lv.FS = pr.FS
			if err := c.fsInfo(&lv.Partition, pr, dev); err != nil {
				return err
			}
			c.byDev[resolve(dev)] = full
			if largest < 0 || v.Size >= lvs[largest].Size.Bytes {
				largest = len(lvs)
			}
			lvs = append(lvs, lv)
		}
		// A full VG: its largest LV takes what the others leave (so the
		// layout fits larger disks), made last as "rest" is.
		if largest >= 0 && g.Free < max(g.Extent, 1) {
			lv := lvs[largest]
			lv.Size = layout.Size{Kind: layout.Rest}
			lvs = append(append(lvs[:largest:largest], lvs[largest+1:]...), lv)
		}
		c.l.LVs = append(c.l.LVs, lvs...)
	}
	return nil
}

// vol is a captured volume a filesystem may be on.
type vol struct {
	p        *layout.Partition
	dev, ref string
}

func (c *capturer) volumes() []vol {
	var out []vol
	for dev, ref := range c.byDev {
		var p *layout.Partition
		if q, ok := c.parts[ref]; ok {
			p = q
		}
		for i := range c.l.RAIDs {
			if c.l.RAIDs[i].Name == ref {
				p = &c.l.RAIDs[i].Partition
			}
		}
		for i := range c.l.LVs {
			if c.l.LVs[i].VG+"/"+c.l.LVs[i].Name == ref {
				p = &c.l.LVs[i].Partition
			}
		}
		if p != nil {
			out = append(out, vol{p, dev, ref})
		}
	}
	// Layout order for the subvol lines: partitions, arrays, LVs.
	rank := map[string]int{}
	for i, v := range c.l.Volumes() {
		rank[v.Ref] = i
	}
	sort.Slice(out, func(i, j int) bool { return rank[out[i].ref] < rank[out[j].ref] })
	return out
}

// mountOf sets p's mount point and options from what is mounted (a btrfs
// volume's subvolume mounts become subvol lines), else a place to edit.
func (c *capturer) mountOf(p *layout.Partition, dev, ref string) {
	if p.FS == layout.FSSwap {
		p.Options = c.swapOptions(dev)
		return
	}
	if !p.FS.Mountable() {
		return
	}
	top := false
	for _, m := range c.mounts {
		if m.src != dev {
			continue
		}
		sub := ""
		if m.fstype == "btrfs" {
			sub = strings.TrimPrefix(superOpt(m.super, "subvol"), "/")
		} else if m.root != "/" {
			continue // a bind mount of a directory in it
		}
		if sub != "" {
			dup := false
			for _, s := range c.l.Subvols {
				dup = dup || s.Mount == m.mount
			}
			if !dup {
				c.l.Subvols = append(c.l.Subvols, layout.Subvol{On: ref, Name: sub, Mount: m.mount, Options: c.options(m, p.FS)})
			}
			continue
		}
		if !top {
			p.Mount, p.Options, top = m.mount, c.options(m, p.FS), true
		}
	}
	if top || p.Mount != "" {
		return
	}
	if p.FS == layout.FSBtrfs {
		for _, s := range c.l.Subvols {
			if s.On == ref {
				return // mounted through its subvolumes only
			}
		}
		c.note("%s: btrfs not mounted: its subvolumes are not read (mount it to capture them)", dev)
	}
	// Not mounted now (a disk read from a rescue system): a volume
	// named or labelled root (as sim and many installers name it) is /,
	// the rest go somewhere harmless, to edit before use.
	name := p.Name
	if p.FS != layout.FSVfat && p.FS != layout.FSESP && (name == "root" || p.Label == "root") && !c.rootTaken() {
		p.Mount = "/"
		return
	}
	p.Mount = "/mnt/" + strings.ReplaceAll(ref, "/", "-")
	c.note("%s: not mounted: mount point %s is a placeholder to edit", dev, p.Mount)
}

func (c *capturer) rootTaken() bool {
	for _, v := range c.l.Volumes() {
		if v.Mount == "/" {
			return true
		}
	}
	for _, s := range c.l.Subvols {
		if s.Mount == "/" {
			return true
		}
	}
	return false
}

// simDefaults are the options the installer writes when a layout gives
// none: capturing them back would only repeat them.
var simDefaults = map[string]bool{"defaults": true, "errors=remount-ro": true, "umask=0077": true, "sw": true}

// options are the mount options of m: the fstab line for its mount
// point, else what the kernel reports, without the defaults and
// without subvol= (a subvol line says it).
func (c *capturer) options(m mountEnt, fs layout.FS) string {
	raw := ""
	for _, f := range c.fstab {
		if f.mount == m.mount {
			raw = f.opts
			break
		}
	}
	if raw == "" {
		raw = m.opts
	}
	return cleanOptions(raw)
}

func cleanOptions(raw string) string {
	var keep []string
	for _, o := range strings.Split(raw, ",") {
		switch {
		case o == "" || o == "rw" || o == "relatime" || simDefaults[o]:
		case strings.HasPrefix(o, "subvol=") || strings.HasPrefix(o, "subvolid="):
		default:
			keep = append(keep, o)
		}
	}
	return strings.Join(keep, ",")
}

// swapOptions are the options of dev's swap line in fstab (by UUID,
// LABEL or path), without the defaults.
func (c *capturer) swapOptions(dev string) string {
	pr, _ := ProbeDevice(dev)
	for _, f := range c.fstab {
		if f.fstype != "swap" {
			continue
		}
		if (pr.UUID != "" && f.spec == "UUID="+pr.UUID) || (pr.Label != "" && f.spec == "LABEL="+pr.Label) ||
			(strings.HasPrefix(f.spec, "/dev/") && resolve(f.spec) == dev) {
			return cleanOptions(f.opts)
		}
	}
	return ""
}

// superOpt is the value of key in a comma-separated option list.
func superOpt(opts, key string) string {
	for _, o := range strings.Split(opts, ",") {
		if v, ok := strings.CutPrefix(o, key+"="); ok {
			return v
		}
	}
	return ""
}

// mountEnt is one /proc/self/mountinfo line.
type mountEnt struct {
	src, root, mount, opts, fstype, super string
}

// readMountinfo reads mountinfo, each source with symlinks resolved.
func readMountinfo(path string) []mountEnt {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []mountEnt
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
		if sep < 6 || sep+3 >= len(f) {
			continue
		}
		out = append(out, mountEnt{src: resolve(f[sep+2]), root: unescape(f[3]), mount: unescape(f[4]), opts: f[5], fstype: f[sep+1], super: f[sep+3]})
	}
	return out
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	if u, err := strconv.Unquote(`"` + strings.ReplaceAll(s, `"`, `\"`) + `"`); err == nil {
		return u
	}
	return s
}

// mountFor is the first mount of dev's top level, nil when none.
func (c *capturer) mountFor(dev string) *mountEnt {
	for i, m := range c.mounts {
		if m.src == dev && m.root == "/" {
			return &c.mounts[i]
		}
	}
	return nil
}

type fstabEnt struct{ spec, mount, fstype, opts string }

func readFstab(path string) []fstabEnt {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []fstabEnt
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		out = append(out, fstabEnt{spec: f[0], mount: unescape(f[1]), fstype: f[2], opts: f[3]})
	}
	return out
}

// HasTable says whether d has a partition table sim reads.
func HasTable(d Info) bool {
	dk, err := diskfs.Open(d.Path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return false
	}
	defer dk.Close()
	_, err = dk.GetPartitionTable()
	return err == nil
}
