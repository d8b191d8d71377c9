package initrd

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// DefaultModules are loaded at boot, dependencies first: virtual and
// common physical NICs, disk controllers, and every filesystem a layout
// can hold (plus the FAT code pages vfat mounts need).
var DefaultModules = []string{
	"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "e1000", "e1000e", "igb", "ixgbe", "r8169", "tg3", "bnx2",
	"ahci", "ata_piix", "sd_mod", "nvme", "megaraid_sas", "mpt3sas",
	"crc32c_generic", "ext4", "xfs", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859-1", "efivarfs",
	"btrfs", "md_mod", "raid0", "raid1", "raid10", "raid456", "dm_mod",
}

// DefaultTools are the host programs copied in (with their libraries):
// the mkfs of each filesystem a layout can hold, mdadm for md arrays,
// lvm (the one binary behind pvcreate, vgcreate, lvcreate, vgchange) for
// LVM and btrfs for subvolumes.
var DefaultTools = []string{"mkfs.ext4", "mkfs.vfat", "mkfs.xfs", "mkswap", "mkfs.btrfs", "btrfs", "mdadm", "lvm"}

// BusyboxApplets get a /bin symlink each.
var BusyboxApplets = []string{"sh", "ip", "udhcpc", "chroot", "mount", "umount", "cat", "ls", "dmesg", "ps",
	"poweroff", "reboot", "sleep", "mkdir", "echo", "sync", "grep", "free", "df", "ping", "wget", "vi", "less", "kill"}

// Options say what goes in.
type Options struct {
	Sim         string // the static sim binary; becomes /init
	Busybox     string // a static busybox
	Kernel      string // vmlinuz to copy beside the initramfs
	ModulesFrom string // root holding lib/modules/VERSION
	// FirmwareFrom is the root whose lib/firmware holds the firmware the
	// included modules ask for (modinfo's firmware= lines: bnx2, tg3,
	// rtl_nic...); "" is ModulesFrom, NoFirmware none.
	FirmwareFrom string
	Version      string // kernel version; default from the kernel file name
	Modules      []string
	Tools        []string
	ToolsFrom    string // root the tools and their libraries come from; default /
	Out          string // directory: vmlinuz, initrd.img
	Level        zstd.EncoderLevel
	// Files are baked in as they are (a node's token, a CA, trusted
	// keys: see TokenFile, CAFile, TrustDir). With a file of mode 0600
	// among them (a token), initrd.img itself is written mode 0600.
	Files []File
}

// File is one file baked into the initramfs.
type File struct {
	Name string // relative, e.g. TokenFile
	Data []byte
	Mode uint32 // permission bits
}

// Where the installer (client/boot) looks for what sim initrd build
// --token-file, --ca and --trust bake in: a node's API token, the CA of
// a private-CA https server, public keys every installed commit must be
// signed by.
const (
	TokenFile = "etc/sim/token"
	CAFile    = "etc/sim/ca.pem"
	TrustDir  = "etc/sim/trust"
)

// Result reports what was written.
type Result struct {
	Kernel      string   `json:"kernel"`
	Initrd      string   `json:"initrd"`
	Version     string   `json:"version"`
	KernelBytes int64    `json:"kernel_bytes"`
	InitrdBytes int64    `json:"initrd_bytes"` // compressed
	CpioBytes   int64    `json:"cpio_bytes"`   // uncompressed
	Modules     []string `json:"modules"`      // in load order
	Missing     []string `json:"missing_modules,omitempty"`
	Firmware    []string `json:"firmware,omitempty"` // files under lib/firmware
	// MissingFirmware are files modules name that the firmware root
	// lacks (many are optional: a driver names every chip's).
	MissingFirmware []string `json:"missing_firmware,omitempty"`
	FirmwareBytes   int64    `json:"firmware_bytes,omitempty"`
	Files           int      `json:"files"`
	SimBytes        int64    `json:"sim_bytes"`
	ModuleBytes     int64    `json:"module_bytes"`
	LibToolBytes    int64    `json:"tool_bytes"`
}

// NoFirmware as Options.FirmwareFrom leaves firmware out.
const NoFirmware = "-"

// ModuleList is where init finds the modules to load, one path a line.
const ModuleList = "etc/sim-modules"

// Build writes o.Out/vmlinuz and o.Out/initrd.img.
func Build(o Options) (*Result, error) {
	if o.Modules == nil {
		o.Modules = DefaultModules
	}
	if o.Tools == nil {
		o.Tools = DefaultTools
	}
	if o.ToolsFrom == "" {
		o.ToolsFrom = "/"
	}
	if o.ModulesFrom == "" {
		o.ModulesFrom = "/"
	}
	if o.Level == 0 {
		o.Level = zstd.SpeedBestCompression
	}
	if o.Version == "" {
		base := filepath.Base(o.Kernel)
		v, ok := strings.CutPrefix(base, "vmlinuz-")
		if !ok {
			return nil, fmt.Errorf("kernel %s: cannot tell its version from the name (want vmlinuz-VERSION, or give the version)", o.Kernel)
		}
		o.Version = v
	}
	res := &Result{Version: o.Version}
	if static, err := IsStatic(o.Sim); err != nil {
		return nil, err
	} else if !static {
		return nil, fmt.Errorf("%s is dynamically linked; /init must be static (build with CGO_ENABLED=0)", o.Sim)
	}
	if static, err := IsStatic(o.Busybox); err != nil {
		return nil, fmt.Errorf("busybox: %w (apt-get install busybox-static)", err)
	} else if !static {
		return nil, fmt.Errorf("%s is dynamically linked: use busybox-static", o.Busybox)
	}

	var ents []Entry
	dirs := map[string]bool{}
	addDir := func(d string) {
		for d != "." && d != "/" && d != "" && !dirs[d] {
			dirs[d] = true
			ents = append(ents, Entry{Name: d, Mode: ModeDir | 0o755})
			d = filepath.Dir(d)
		}
	}
	files := map[string]bool{}
	addFile := func(name string, data []byte, perm uint32) {
		if files[name] {
			return
		}
		files[name] = true
		addDir(filepath.Dir(name))
		ents = append(ents, Entry{Name: name, Mode: ModeFile | perm, Data: data})
	}
	addLink := func(name, target string) {
		files[name] = true
		addDir(filepath.Dir(name))
		ents = append(ents, Entry{Name: name, Mode: ModeLink | 0o777, Data: []byte(target)})
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "mnt", "root", "etc", "bin", "sbin"} {
		addDir(d)
	}
	ents = append(ents, Entry{Name: "dev/console", Mode: ModeChar | 0o600, Rmajor: 5, Rminor: 1},
		Entry{Name: "dev/null", Mode: ModeChar | 0o666, Rmajor: 1, Rminor: 3})

	sim, err := os.ReadFile(o.Sim)
	if err != nil {
		return nil, err
	}
	res.SimBytes = int64(len(sim))
	addFile("init", sim, 0o755)
	addLink("bin/sim", "/init")
	bb, err := os.ReadFile(o.Busybox)
	if err != nil {
		return nil, err
	}
	addFile("bin/busybox", bb, 0o755)
	for _, a := range BusyboxApplets {
		addLink("bin/"+a, "busybox")
	}
	addFile("etc/udhcpc.script", []byte(udhcpcScript), 0o755)
	addFile("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	addFile("etc/group", []byte("root:x:0:\n"), 0o644)

	// Tools: the program under its own name in /sbin, its libraries at
	// their host paths (where its loader looks for them).
	for _, t := range o.Tools {
		p, err := findTool(o.ToolsFrom, t)
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile(filepath.Join(o.ToolsFrom, p))
		if err != nil {
			return nil, err
		}
		addFile("sbin/"+t, b, 0o755)
		res.LibToolBytes += int64(len(b))
		libs, err := Deps(o.ToolsFrom, p)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			name := strings.TrimPrefix(l, "/")
			if files[name] {
				continue
			}
			b, err := os.ReadFile(filepath.Join(o.ToolsFrom, l))
			if err != nil {
				return nil, err
			}
			addFile(name, b, 0o755)
			res.LibToolBytes += int64(len(b))
		}
	}
	if b, err := os.ReadFile(filepath.Join(o.ToolsFrom, "etc/mke2fs.conf")); err == nil {
		addFile("etc/mke2fs.conf", b, 0o644)
	}

	// Modules, dependencies first; compressed ones are stored
	// decompressed (init loads them with finit_module, no modprobe).
	mods, missing, err := resolveModules(o.ModulesFrom, o.Version, o.Modules)
	if err != nil {
		return nil, err
	}
	res.Missing = missing
	var list strings.Builder
	var modBytes [][]byte
	for _, m := range mods {
		b, err := readModule(filepath.Join(o.ModulesFrom, "lib/modules", o.Version, m))
		if err != nil {
			return nil, err
		}
		name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, ".xz"), ".zst"), ".gz")
		addFile(filepath.Join("lib/modules", o.Version, name), b, 0o644)
		modBytes = append(modBytes, b)
		res.ModuleBytes += int64(len(b))
		res.Modules = append(res.Modules, strings.TrimSuffix(filepath.Base(name), ".ko"))
		fmt.Fprintf(&list, "/lib/modules/%s/%s\n", o.Version, name)
	}
	addFile(ModuleList, []byte(list.String()), 0o644)
	// Firmware the modules load at probe time (the kernel reads
	// /lib/firmware itself: no udev, no helper). Stored as the root has
	// it, compressed or not: the kernel's loader takes .xz and .zst.
	if fw := o.FirmwareFrom; fw != NoFirmware {
		if fw == "" {
			fw = o.ModulesFrom
		}
		seen := map[string]bool{}
		for _, b := range modBytes {
			for _, name := range ModuleFirmware(b) {
				if seen[name] {
					continue
				}
				seen[name] = true
				found := false
				for _, suf := range []string{"", ".zst", ".xz"} {
					rel := filepath.Join("lib/firmware", name+suf)
					data, err := os.ReadFile(filepath.Join(fw, rel))
					if err != nil {
						continue
					}
					addFile(rel, data, 0o644)
					res.Firmware = append(res.Firmware, name+suf)
					res.FirmwareBytes += int64(len(data))
					found = true
					break
				}
				if !found {
					res.MissingFirmware = append(res.MissingFirmware, name)
				}
			}
		}
	}
	private := false
	for _, f := range o.Files {
		name := filepath.Clean(f.Name)
		if filepath.IsAbs(name) || name == "." || strings.HasPrefix(name, "../") || files[name] || dirs[name] {
			return nil, fmt.Errorf("initrd: cannot bake in %q", f.Name)
		}
		addFile(name, f.Data, f.Mode&0o777)
		private = private || f.Mode&0o077 == 0
	}

	var cpio bytes.Buffer
	if err := WriteCpio(&cpio, ents); err != nil {
		return nil, err
	}
	res.CpioBytes = int64(cpio.Len())
	res.Files = len(ents)
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.Level), zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, err
	}
	z := enc.EncodeAll(cpio.Bytes(), nil)
	res.Initrd = filepath.Join(o.Out, "initrd.img")
	res.Kernel = filepath.Join(o.Out, "vmlinuz")
	mode := os.FileMode(0o644)
	if private {
		// It holds a secret (a node's token): as private as the token.
		mode = 0o600
	}
	if err := writeAtomic(res.Initrd, z, mode); err != nil {
		return nil, err
	}
	res.InitrdBytes = int64(len(z))
	k, err := os.ReadFile(o.Kernel)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(res.Kernel, k, 0o644); err != nil {
		return nil, err
	}
	res.KernelBytes = int64(len(k))
	return res, nil
}

func writeAtomic(p string, b []byte, mode os.FileMode) error {
	tmp := p + ".tmp"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func findTool(root, name string) (string, error) {
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("tool %s not found in %s (install e2fsprogs, dosfstools, xfsprogs, util-linux)", name, root)
}

// resolveModules reads modules.dep and returns module paths (relative to
// lib/modules/VERSION) with every dependency before its user. Names the
// kernel has neither as a module nor built in are returned as missing.
func resolveModules(root, version string, want []string) ([]string, []string, error) {
	base := filepath.Join(root, "lib/modules", version)
	f, err := os.Open(filepath.Join(base, "modules.dep"))
	if err != nil {
		return nil, nil, fmt.Errorf("kernel modules %s: %w (give --modules-from a root with that kernel's modules)", version, err)
	}
	defer f.Close()
	path := map[string]string{}
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, ds, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := modName(mod)
		path[n] = mod
		for _, d := range strings.Fields(ds) {
			deps[n] = append(deps[n], modName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(base, "modules.builtin")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				builtin[modName(l)] = true
			}
		}
	}
	var order, missing []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", n)
		case 2:
			return nil
		}
		state[n] = 1
		for _, d := range deps[n] {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, path[n])
		return nil
	}
	for _, w := range want {
		n := modName(w)
		if _, ok := path[n]; !ok {
			if !builtin[n] {
				missing = append(missing, w)
			}
			continue
		}
		if err := visit(n); err != nil {
			return nil, nil, err
		}
	}
	sort.Strings(missing)
	return order, missing, nil
}

// modName is the module's name as the kernel knows it: base name without
// .ko and compression suffixes, dashes as underscores.
func modName(p string) string {
	n := filepath.Base(p)
	if i := strings.Index(n, ".ko"); i >= 0 {
		n = n[:i]
	}
	return strings.ReplaceAll(n, "-", "_")
}

// ModuleFirmware lists the firmware files a kernel module names (the
// firmware= entries of its .modinfo section, what modinfo -F firmware
// prints), in order. A file that is no ELF object names none.
func ModuleFirmware(mod []byte) []string {
	f, err := elf.NewFile(bytes.NewReader(mod))
	if err != nil {
		return nil
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil
	}
	var out []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("firmware=")); ok && len(v) > 0 {
			name := filepath.Clean(string(v))
			// A name is a path under lib/firmware, never outside it.
			if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
				continue
			}
			out = append(out, name)
		}
	}
	return out
}

func readModule(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(p, ".xz"):
		r, err := xz.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return io.ReadAll(r)
	case strings.HasSuffix(p, ".zst"):
		d, err := zstd.NewReader(nil)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return d.DecodeAll(b, nil)
	case strings.HasSuffix(p, ".gz"):
		return nil, errors.New(p + ": gzip-compressed modules are not supported")
	}
	return b, nil
}

// udhcpcScript configures the interface udhcpc got a lease on.
const udhcpcScript = `#!/bin/sh
# sim initrd: apply a DHCP lease (busybox udhcpc calls this)
case "$1" in
deconfig)
	ip addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	if [ -n "$router" ]; then
		for r in $router; do ip route add default via "$r" dev "$interface" && break; done
	fi
	: >/etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
	echo "$interface $ip/${mask:-24} router $router" >/run/sim-lease
	;;
esac
exit 0
`
