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
func MakeArrays(ctx context.Context, l *layout.Layout, parts []Part, hostname string, log io.Writer) ([]Part, error) {
	var out []Part
	for _, r := range l.RAIDs {
		var devs []string
		for _, n := range append(append([]string(nil), r.Members...), r.Spares...) {
			p, ok := byName(parts, n)
			if !ok {
				return nil, fmt.Errorf("array %s: no partition %q", r.Name, n)
			}
			// A superblock left by an earlier install would make
			// mdadm ask; there is nobody to answer.
			runTool(ctx, nil, "mdadm", "--zero-superblock", p.Dev)
			devs = append(devs, p.Dev)
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

// MakeLVM creates l's physical volumes, volume groups and logical volumes
// (fixed and percentage sizes in layout order, then each VG's "rest"),
// over the partitions and arrays in vols, and returns the LVs as Parts.
func MakeLVM(ctx context.Context, l *layout.Layout, vols []Part, log io.Writer) ([]Part, error) {
	for _, g := range l.VGs {
		var pvs []string
		for _, n := range g.PVs {
			p, ok := byName(vols, n)
			if !ok {
				return nil, fmt.Errorf("volume group %s: no partition or array %q", g.Name, n)
			}
			if _, err := lvm(ctx, log, "pvcreate", "-ff", "-y", p.Dev); err != nil {
				return nil, fmt.Errorf("volume group %s: %w", g.Name, err)
			}
			pvs = append(pvs, p.Dev)
		}
		if _, err := lvm(ctx, log, append([]string{"vgcreate", "-y", g.Name}, pvs...)...); err != nil {
			return nil, fmt.Errorf("volume group %s: %w", g.Name, err)
		}
	}
	out := make([]Part, len(l.LVs))
	create := func(i int) error {
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
