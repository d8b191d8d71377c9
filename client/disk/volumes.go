package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/layout"
)

// Kinds of Part besides a partition (Kind "").
const (
	KindRAID   = "raid"   // an md array
	KindLV     = "lv"     // an LVM logical volume
	KindSubvol = "subvol" // a btrfs subvolume (Dev and UUID are its volume's)
)

// lvmConfig makes lvm work where no udev runs (the installer): it
// creates the /dev/mapper nodes itself and waits for nobody.
const lvmConfig = "activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }"

// runTool runs a volume tool with stdin closed (no prompt can wait), its
// output to log; a failure is an error with the command and its output.
func runTool(ctx context.Context, log io.Writer, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "DM_DISABLE_UDEV=1", "LVM_SUPPRESS_FD_WARNINGS=1")
	cmd.WaitDelay = 2 * time.Second
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if log != nil && out.Len() > 0 {
		io.WriteString(log, out.String())
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func lvm(ctx context.Context, log io.Writer, args ...string) (string, error) {
	return runTool(ctx, log, append([]string{"lvm", args[0], "--config", lvmConfig}, args[1:]...)...)
}

// waitDev waits until dev is a block device node, making it from sysfs
// where nothing does (no udev).
func waitDev(ctx context.Context, dev string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(dev); err == nil && fi.Mode()&os.ModeDevice != 0 {
			return nil
		}
		if real, err := filepath.EvalSymlinks(dev); err == nil && real != dev {
			if fi, err := os.Stat(real); err == nil && fi.Mode()&os.ModeDevice != 0 {
				return nil
			}
		}
		mknodFromSys(dev)
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", dev)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Release stops what l's arrays and volume groups hold active: the VGs
// deactivated (vgchange -an), then the arrays stopped (mdadm --stop).
// It is run before partitioning (a rescue system may have assembled an
// old install's) and after the install; errors for what is not active
// are ignored, the first other one is returned.
func Release(ctx context.Context, l *layout.Layout, log io.Writer) error {
	var first error
	for _, g := range l.VGs {
		if _, err := lvm(ctx, nil, "vgs", g.Name); err != nil {
			continue // no such VG here
		}
		if _, err := lvm(ctx, log, "vgchange", "-an", g.Name); err != nil && first == nil {
			first = err
		}
	}
	for i := len(l.RAIDs) - 1; i >= 0; i-- {
		r := l.RAIDs[i]
		if _, err := os.Stat(filepath.Join("/sys/block", r.Name, "md")); err != nil {
			continue
		}
		if _, err := runTool(ctx, log, "mdadm", "--stop", r.Dev()); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// byName finds a part by its layout name (a partition or array).
func byName(parts []Part, name string) (Part, bool) {
	for _, p := range parts {
		if p.Name == name && (p.Kind == "" || p.Kind == KindRAID) {
			return p, true
		}
	}
	return Part{}, false
}

// MakeArrays creates l's md arrays (mdadm --create) over the partitions
// in parts, homehost the node's hostname, and returns them as Parts.
//
// An array the layout keeps (layout.KeptArrays) whose members already
// hold it — every member an md member of one array, of the layout's
// level, member count and metadata — is assembled instead (Kept, its
// filesystem not made again); one whose members hold none is created;
// any other is refused, naming what differs, since creating it would
// lose what the layout asks to keep.
func MakeArrays(ctx context.Context, l *layout.Layout, parts []Part, hostname string, log io.Writer) ([]Part, error) {
	var out []Part
	keep := l.KeptArrays()
	for _, r := range l.RAIDs {
		var devs []string
		for _, n := range append(append([]string(nil), r.Members...), r.Spares...) {
			p, ok := byName(parts, n)
			if !ok {
				return nil, fmt.Errorf("array %s: no partition %q", r.Name, n)
			}
			devs = append(devs, p.Dev)
		}
		if keep[r.Name] {
			p, ok, err := assembleKept(ctx, r, devs, log)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, p)
				continue
			}
		}
		for _, d := range devs {
			// A superblock left by an earlier install would make
			// mdadm ask; there is nobody to answer.
			runTool(ctx, nil, "mdadm", "--zero-superblock", d)
		}
		meta := r.Metadata
		if meta == "" {
			meta = "1.2"
		}
		args := []string{"mdadm", "--create", r.Dev(), "--run", "--level=" + strconv.Itoa(r.Level),
			"--raid-devices=" + strconv.Itoa(len(r.Members)), "--metadata=" + meta, "--name=" + r.Name}
		if len(r.Spares) > 0 {
			args = append(args, "--spare-devices="+strconv.Itoa(len(r.Spares)))
		}
		if hostname != "" {
			args = append(args, "--homehost="+hostname)
		}
		if _, err := runTool(ctx, log, append(args, devs...)...); err != nil {
			return nil, fmt.Errorf("array %s: %w", r.Name, err)
		}
		if err := waitDev(ctx, r.Dev()); err != nil {
			return nil, fmt.Errorf("array %s: %w", r.Name, err)
		}
		out = append(out, Part{Extent: layout.Extent{Partition: r.Partition}, Dev: r.Dev(), Kind: KindRAID})
	}
	return out, nil
}

// assembleKept assembles kept array r from its member devices devs when
// they hold it: false when none holds an md superblock (a fresh disk:
// the array is created), an error naming the array and what differs
// when they hold another array.
func assembleKept(ctx context.Context, r layout.RAID, devs []string, log io.Writer) (Part, bool, error) {
	have := 0
	uuid := ""
	for _, d := range devs {
		pr, _ := ProbeDevice(d)
		if pr.Member != "md" {
			continue
		}
		have++
		out, err := runTool(ctx, nil, "mdadm", "--examine", "--export", d)
		if err != nil {
			return Part{}, false, fmt.Errorf("array %s (keep): %w", r.Name, err)
		}
		ex := ParseExamine(out)
		if err := CheckKeptMember(r, d, ex, pr.MDMetadata, uuid); err != nil {
			return Part{}, false, err
		}
		uuid = ex.UUID
	}
	if have == 0 {
		return Part{}, false, nil
	}
	if have < len(devs) {
		fmt.Fprintf(log, "array %s (keep): %d of %d members hold it; assembling degraded\n", r.Name, have, len(devs))
	}
	args := append([]string{"mdadm", "--assemble", r.Dev(), "--run"}, devs...)
	if _, err := runTool(ctx, log, args...); err != nil {
		return Part{}, false, fmt.Errorf("array %s (keep): %w", r.Name, err)
	}
	if err := waitDev(ctx, r.Dev()); err != nil {
		return Part{}, false, fmt.Errorf("array %s (keep): %w", r.Name, err)
	}
	p := Part{Extent: layout.Extent{Partition: r.Partition}, Dev: r.Dev(), Kind: KindRAID, Kept: true}
	pr, _ := ProbeDevice(r.Dev())
	if r.FS == layout.FSLVM {
		if pr.FS != layout.FSLVM {
			return Part{}, false, fmt.Errorf("array %s (keep): holds %s, not an LVM physical volume; refusing to reformat it", r.Name, pr.FS)
		}
		return p, true, nil
	}
	u, err := readUUID(r.Dev(), r.FS)
	if err != nil {
		return Part{}, false, fmt.Errorf("array %s (keep): %w; refusing to reformat it", r.Name, err)
	}
	p.UUID = u
	fmt.Fprintf(log, "array %s: kept (assembled from %s, %s UUID %s)\n", r.Name, strings.Join(devs, ", "), r.FS, u)
	return p, true, nil
}

// CheckKeptMember says whether member dev of kept array r, of which
// mdadm --examine says ex and whose superblock has version meta, belongs
// to the array the layout describes (and to the array uuid the other
// members do, when not ""): an error naming the array, the member and
// what differs, else nil.
func CheckKeptMember(r layout.RAID, dev string, ex Examine, meta, uuid string) error {
	wantMeta := r.Metadata
	if wantMeta == "" {
		wantMeta = "1.2"
	}
	refuse := func(format string, a ...any) error {
		return fmt.Errorf("array %s (keep): member %s "+format+"; refusing to create the array anew (that would lose what keep keeps): fix the layout or drop keep", append([]any{r.Name, dev}, a...)...)
	}
	switch {
	case ex.Level != "raid"+strconv.Itoa(r.Level):
		return refuse("belongs to a %s array, the layout asks RAID %d", ex.Level, r.Level)
	case ex.Devices != len(r.Members):
		return refuse("belongs to an array of %d devices, the layout gives %d members", ex.Devices, len(r.Members))
	case meta != wantMeta:
		return refuse("has metadata %s, the layout asks %s", meta, wantMeta)
	case uuid != "" && ex.UUID != uuid:
		return refuse("belongs to array %s, another member to %s", ex.UUID, uuid)
	}
	return nil
}

// Examine is what mdadm --examine --export says of one member.
type Examine struct {
	Level   string // raid1, …
	Devices int    // the array's raid devices
	UUID    string // the array's
	Name    string
}

// ParseExamine reads mdadm --examine --export output (KEY=VALUE lines).
func ParseExamine(text string) Examine {
	kv := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			kv[k] = strings.Trim(v, `'"`)
		}
	}
	n, _ := strconv.Atoi(kv["MD_DEVICES"])
	return Examine{Level: kv["MD_LEVEL"], Devices: n, UUID: kv["MD_UUID"], Name: kv["MD_NAME"]}
}

// MakeLVM creates l's physical volumes, volume groups and logical volumes
// (fixed and percentage sizes in layout order, then each VG's "rest"),
// over the partitions and arrays in vols, and returns the LVs as Parts.
//
// A volume group with a kept LV whose physical volumes already hold it
// is kept: its LVs that are not kept are removed and made afresh, the
// kept ones activated and not formatted (Kept). A kept LV smaller than
// the layout asks, or holding another filesystem, and PVs that hold
// another volume group, are refused, naming what differs.
func MakeLVM(ctx context.Context, l *layout.Layout, vols []Part, log io.Writer) ([]Part, error) {
	out := make([]Part, len(l.LVs))
	done := map[int]bool{} // LVs kept as they are
	for _, g := range l.VGs {
		var pvs []string
		for _, n := range g.PVs {
			p, ok := byName(vols, n)
			if !ok {
				return nil, fmt.Errorf("volume group %s: no partition or array %q", g.Name, n)
			}
			pvs = append(pvs, p.Dev)
		}
		if l.KeepsVG(g.Name) {
			kept, err := keepVG(ctx, l, g, pvs, log)
			if err != nil {
				return nil, err
			}
			if kept != nil {
				for i, p := range kept {
					out[i], done[i] = p, true
				}
				continue
			}
		}
		for _, d := range pvs {
			if _, err := lvm(ctx, log, "pvcreate", "-ff", "-y", d); err != nil {
				return nil, fmt.Errorf("volume group %s: %w", g.Name, err)
			}
		}
		if _, err := lvm(ctx, log, append([]string{"vgcreate", "-y", g.Name}, pvs...)...); err != nil {
			return nil, fmt.Errorf("volume group %s: %w", g.Name, err)
		}
	}
	create := func(i int) error {
		if done[i] {
			return nil
		}
		v := l.LVs[i]
		args := []string{"lvcreate", "-y", "-W", "y", "-Z", "y", "-n", v.Name}
		switch v.Size.Kind {
		case layout.Fixed:
			args = append(args, "-L", strconv.FormatUint(v.Size.Bytes, 10)+"b")
		case layout.Percent:
			args = append(args, "-l", strconv.FormatFloat(v.Size.Percent, 'f', -1, 64)+"%VG")
		case layout.Rest:
			args = append(args, "-l", "100%FREE")
		}
		if _, err := lvm(ctx, log, append(args, v.VG)...); err != nil {
			return fmt.Errorf("logical volume %s/%s: %w", v.VG, v.Name, err)
		}
		if err := waitDev(ctx, v.Dev()); err != nil {
			return fmt.Errorf("logical volume %s/%s: %w", v.VG, v.Name, err)
		}
		out[i] = Part{Extent: layout.Extent{Partition: v.Partition}, Dev: v.Dev(), Kind: KindLV, VG: v.VG}
		return nil
	}
	for i, v := range l.LVs {
		if v.Size.Kind != layout.Rest {
			if err := create(i); err != nil {
				return nil, err
			}
		}
	}
	for i, v := range l.LVs {
		if v.Size.Kind == layout.Rest {
			if err := create(i); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// keepVG keeps volume group g when its physical volumes pvs hold it:
// nil when none of them is a PV (a fresh disk: everything is made), else
// the kept LVs by their index in l.LVs, after removing the VG's other
// LVs; an error naming the VG or LV when what is there differs.
func keepVG(ctx context.Context, l *layout.Layout, g layout.VG, pvs []string, log io.Writer) (map[int]Part, error) {
	st, _, err := ReadLVM(ctx)
	if err != nil {
		return nil, fmt.Errorf("volume group %s (keep): %w", g.Name, err)
	}
	keepNames, have, err := CheckKeptVG(l, g, pvs, st, log)
	if err != nil || keepNames == nil {
		return nil, err
	}
	for name := range have {
		if keepNames[name] {
			continue
		}
		if _, err := lvm(ctx, log, "lvremove", "-f", g.Name+"/"+name); err != nil {
			return nil, fmt.Errorf("volume group %s (keep): %w", g.Name, err)
		}
	}
	out := map[int]Part{}
	for i, v := range l.LVs {
		if v.VG != g.Name || !keepNames[v.Name] {
			continue
		}
		full := g.Name + "/" + v.Name
		if _, err := lvm(ctx, log, "lvchange", "-ay", full); err != nil {
			return nil, fmt.Errorf("logical volume %s (keep): %w", full, err)
		}
		if err := waitDev(ctx, v.Dev()); err != nil {
			return nil, fmt.Errorf("logical volume %s (keep): %w", full, err)
		}
		u, err := readUUID(v.Dev(), v.FS)
		if err != nil {
			return nil, fmt.Errorf("logical volume %s (keep): %w; refusing to reformat it", full, err)
		}
		fmt.Fprintf(log, "logical volume %s: kept (%s, %s UUID %s)\n", full, human(have[v.Name].Size), v.FS, u)
		out[i] = Part{Extent: layout.Extent{Partition: v.Partition}, Dev: v.Dev(), Kind: KindLV, VG: v.VG, Kept: true, UUID: u}
	}
	return out, nil
}

// CheckKeptVG decides, from what lvm reports (st), whether volume group
// g of l, over physical volume devices pvs, is kept: keep nil when none
// of pvs is a PV (everything is made afresh); else the names of the LVs
// kept and every LV the VG has now; an error naming the VG or LV and
// what differs when the PVs hold another VG, the VG spans other PVs, or
// a kept LV is smaller than the layout asks.
func CheckKeptVG(l *layout.Layout, g layout.VG, pvs []string, st LVMState, log io.Writer) (keep map[string]bool, have map[string]LVMLV, err error) {
	if log == nil {
		log = io.Discard
	}
	want := map[string]bool{}
	for _, d := range pvs {
		want[resolve(d)] = true
	}
	var mine []string
	for _, pv := range st.PVs {
		in := want[resolve(pv.Name)]
		switch {
		case in && pv.VG == "":
			// A PV of no VG holds no LV: nothing to lose.
		case in && pv.VG != g.Name:
			return nil, nil, fmt.Errorf("volume group %s (keep): %s holds volume group %s; refusing to re-create it (that would lose the kept LVs): fix the layout or drop keep", g.Name, pv.Name, pv.VG)
		case !in && pv.VG == g.Name:
			return nil, nil, fmt.Errorf("volume group %s (keep): it also spans %s, which the layout does not give it; refusing to change it", g.Name, pv.Name)
		case in && pv.VG == g.Name:
			mine = append(mine, pv.Name)
		}
	}
	if len(mine) == 0 {
		return nil, nil, nil
	}
	if len(mine) < len(pvs) {
		return nil, nil, fmt.Errorf("volume group %s (keep): only %s of its physical volumes %s hold it; refusing to change it", g.Name, strings.Join(mine, ", "), strings.Join(pvs, ", "))
	}
	var vg LVMVG
	for _, x := range st.VGs {
		if x.Name == g.Name {
			vg = x
		}
	}
	have = map[string]LVMLV{}
	for _, v := range st.LVs {
		if v.VG == g.Name {
			have[v.Name] = v
		}
	}
	// Check every kept LV before removing anything.
	keep = map[string]bool{}
	for _, v := range l.LVs {
		if v.VG != g.Name || !v.Keep {
			continue
		}
		full := g.Name + "/" + v.Name
		h, ok := have[v.Name]
		if !ok {
			fmt.Fprintf(log, "logical volume %s (keep): not in volume group %s yet: made afresh\n", full, g.Name)
			continue
		}
		need := uint64(0)
		switch v.Size.Kind {
		case layout.Fixed:
			need = v.Size.Bytes
		case layout.Percent:
			if vg.Extent > 0 {
				need = uint64(float64(vg.Size)*v.Size.Percent/100) / vg.Extent * vg.Extent
			}
		}
		if h.Size < need {
			return nil, nil, fmt.Errorf("logical volume %s (keep): it has %s, the layout asks %s: too small to keep; refusing to re-create it (that would lose its data): fix the layout or drop keep", full, human(h.Size), human(need))
		}
		keep[v.Name] = true
	}
	return keep, have, nil
}

// human is n bytes in MiB or GiB.
func human(n uint64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// volumeOf finds the btrfs volume a subvol line names: a partition or
// array by name, an LV as VG/NAME.
func volumeOf(vols []Part, ref string) (Part, bool) {
	for _, p := range vols {
		if p.Kind == KindSubvol {
			continue
		}
		if r := p.Name; (p.Kind == KindLV && p.VG+"/"+r == ref) || (p.Kind != KindLV && r == ref) {
			return p, true
		}
	}
	return Part{}, false
}

// MakeSubvols creates l's btrfs subvolumes (btrfs subvolume create, the
// volume's top level mounted in a scratch directory) on the volumes
// Mkfs made, and returns them as Parts to mount and write into fstab.
func MakeSubvols(ctx context.Context, l *layout.Layout, vols []Part, log io.Writer) ([]Part, error) {
	var out []Part
	tops := map[string]string{} // volume → its scratch mount
	defer func() {
		for _, dir := range tops {
			unix.Unmount(dir, 0)
			os.Remove(dir)
		}
	}()
	for _, s := range l.Subvols {
		v, ok := volumeOf(vols, s.On)
		if !ok || v.FS != layout.FSBtrfs {
			return nil, fmt.Errorf("subvolume %s: no btrfs volume %q", s.Name, s.On)
		}
		top, ok := tops[s.On]
		if !ok {
			dir, err := os.MkdirTemp("", "sim-btrfs-")
			if err != nil {
				return nil, err
			}
			if err := unix.Mount(v.Dev, dir, "btrfs", 0, "subvolid=5"); err != nil {
				os.Remove(dir)
				return nil, fmt.Errorf("subvolume %s: mount %s: %w", s.Name, v.Dev, err)
			}
			top, tops[s.On] = dir, dir
		}
		p := filepath.Join(top, s.Name)
		if _, err := os.Stat(p); err != nil {
			os.MkdirAll(filepath.Dir(p), 0o755)
			if _, err := runTool(ctx, log, "btrfs", "subvolume", "create", p); err != nil {
				return nil, fmt.Errorf("subvolume %s on %s: %w", s.Name, s.On, err)
			}
		}
		out = append(out, Part{Extent: layout.Extent{Partition: layout.Partition{Name: s.Name, FS: layout.FSBtrfs, Mount: s.Mount, Options: s.Options, Line: s.Line}},
			Dev: v.Dev, UUID: v.UUID, Kind: KindSubvol, Subvol: s.Name})
	}
	return out, nil
}

// MdadmConf is the mdadm.conf for the arrays now running (mdadm --detail
// --scan): the installed system's initramfs and mdadm assemble them by it.
func MdadmConf(ctx context.Context) (string, error) {
	scan, err := runTool(ctx, nil, "mdadm", "--detail", "--scan")
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(scan) == "" {
		return "", errors.New("mdadm --detail --scan: no arrays")
	}
	return "# written by sim install: the arrays of the layout (mdadm --detail --scan)\nHOMEHOST <system>\nMAILADDR root\n" + scan, nil
}
