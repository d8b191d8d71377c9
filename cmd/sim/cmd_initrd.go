package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/initrd"
	"github.com/systemimager/sim/store/sign"
	"github.com/systemimager/sim/sync/units"
)

func newInitrdCommand(e *env) *cobra.Command {
	c := &cobra.Command{Use: "initrd", Short: "The netboot initrd: a kernel and an initramfs whose /init is sim"}
	var o initrd.Options
	var modules, tools, trust []string
	var ca, tokenFile string
	var noFirmware bool
	build := &cobra.Command{
		Use:   "build -o DIR [--kernel VMLINUZ] [--modules-from ROOT]",
		Short: "Write DIR/vmlinuz and DIR/initrd.img (cpio newc, zstd)",
		Long: `Write DIR/vmlinuz and DIR/initrd.img, the netboot pair. The initramfs holds
this static sim binary as /init, a static busybox (shell, ip, udhcpc,
chroot), mkfs.ext4, mkfs.vfat, mkfs.xfs and mkswap with their libraries,
and the kernel modules for common NICs, disk controllers and filesystems
(with their dependencies) from ROOT/lib/modules/VERSION, with the firmware
files they name (bnx2, tg3, rtl_nic...) from ROOT/lib/firmware
(--firmware-from another root, e.g. one with Debian's firmware-* packages). Boot it with
sim.server=URL and sim.image=REF or sim.node=NAME on the kernel command line
(see sim netboot).

--trust FILE bakes in public keys: the installer then refuses any image,
layout, override or script not signed by one of them, whatever the server
says. --ca FILE bakes in the CA of a private-CA https server. --token-file
FILE bakes in a node's token (sim token add NODE --role node): a per-node
initrd, written mode 0600. The kernel command line's sim.trust=, sim.ca=
and sim.token= do the same without a rebuild.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if o.Out == "" {
				return usageError{errors.New("initrd build: -o DIR is required")}
			}
			o.Out = e.path(o.Out)
			if o.Kernel == "" {
				k, err := newestKernel(o.ModulesFrom)
				if err != nil {
					return err
				}
				o.Kernel = k
			}
			if o.Sim == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				o.Sim = exe
			}
			if len(modules) > 0 {
				o.Modules = append(append([]string{}, initrd.DefaultModules...), modules...)
			}
			if len(tools) > 0 {
				o.Tools = append(append([]string{}, initrd.DefaultTools...), tools...)
			}
			for i, f := range trust {
				k, err := sign.ReadPublicKey(e.path(f))
				if err != nil {
					return err
				}
				o.Files = append(o.Files, initrd.File{Name: fmt.Sprintf("%s/%02d-%s.pub", initrd.TrustDir, i, k.Name), Data: []byte(k.Line() + "\n"), Mode: 0o644})
			}
			if ca != "" {
				b, err := os.ReadFile(e.path(ca))
				if err != nil {
					return err
				}
				if _, err := certPool(b); err != nil {
					return fmt.Errorf("--ca %s: %w", ca, err)
				}
				o.Files = append(o.Files, initrd.File{Name: initrd.CAFile, Data: b, Mode: 0o644})
			}
			if tokenFile != "" {
				ts, err := readTokens(e.path(tokenFile))
				if err != nil {
					return err
				}
				o.Files = append(o.Files, initrd.File{Name: initrd.TokenFile, Data: []byte(ts[0] + "\n"), Mode: 0o600})
			}
			if noFirmware {
				if o.FirmwareFrom != "" {
					return usageError{errors.New("initrd build: --firmware-from and --no-firmware exclude each other")}
				}
				o.FirmwareFrom = initrd.NoFirmware
			} else if o.FirmwareFrom != "" {
				o.FirmwareFrom = e.path(o.FirmwareFrom)
				if fi, err := os.Stat(filepath.Join(o.FirmwareFrom, "lib/firmware")); err != nil || !fi.IsDir() {
					return usageError{fmt.Errorf("initrd build: --firmware-from %s: no lib/firmware directory there", o.FirmwareFrom)}
				}
			}
			res, err := initrd.Build(o)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(res)
			}
			fmt.Fprintf(e.stdout, "%s: kernel %s, %s\n%s: %s (%s uncompressed: sim %s, tools and libraries %s, %d modules %s; %d entries)\n",
				res.Kernel, res.Version, units.Bytes(res.KernelBytes), res.Initrd, units.Bytes(res.InitrdBytes), units.Bytes(res.CpioBytes),
				units.Bytes(res.SimBytes), units.Bytes(res.LibToolBytes), len(res.Modules), units.Bytes(res.ModuleBytes), res.Files)
			if len(res.Firmware) > 0 {
				fmt.Fprintf(e.stdout, "firmware: %d files, %s\n", len(res.Firmware), units.Bytes(res.FirmwareBytes))
			}
			if len(res.MissingFirmware) > 0 {
				miss := res.MissingFirmware
				more := ""
				if len(miss) > 4 {
					miss, more = miss[:4], fmt.Sprintf(" and %d more (--json lists them)", len(res.MissingFirmware)-4)
				}
				fmt.Fprintf(e.stderr, "note: %d firmware files the modules name are not in %s/lib/firmware (most are optional, one per chip; --firmware-from a root with Debian's firmware-* packages): %s%s\n",
					len(res.MissingFirmware), strings.TrimSuffix(firmwareRoot(o), "/"), strings.Join(miss, " "), more)
			}
			if len(res.Missing) > 0 {
				fmt.Fprintf(e.stderr, "note: not in this kernel (neither module nor built in): %s\n", strings.Join(res.Missing, " "))
			}
			return nil
		},
	}
	f := build.Flags()
	f.StringVarP(&o.Out, "out", "o", "", "write into `DIR`")
	f.StringVar(&o.Kernel, "kernel", "", "the kernel `VMLINUZ` (default: the newest ROOT/boot/vmlinuz-*)")
	f.StringVar(&o.ModulesFrom, "modules-from", "/", "take kernel modules from `ROOT`/lib/modules/VERSION")
	f.StringVar(&o.FirmwareFrom, "firmware-from", "", "take the firmware the modules name (bnx2, tg3, rtl_nic...) from `ROOT`/lib/firmware (default: the --modules-from root)")
	f.BoolVar(&noFirmware, "no-firmware", false, "leave firmware out")
	f.StringVar(&o.Version, "kernel-version", "", "the kernel's `VERSION` (default: from the file name vmlinuz-VERSION)")
	f.StringVar(&o.Sim, "sim", "", "the static sim `BINARY` to use as /init (default: this one)")
	f.StringVar(&o.Busybox, "busybox", "/bin/busybox", "a static busybox `BINARY`")
	f.StringArrayVar(&modules, "module", nil, "also load kernel module `NAME` (repeatable)")
	f.StringArrayVar(&tools, "tool", nil, "also copy host program `NAME` with its libraries (repeatable)")
	f.StringArrayVar(&trust, "trust", nil, "bake in the public key `FILE`: installs refuse commits not signed by it (repeatable)")
	f.StringVar(&ca, "ca", "", "bake in the CA certificates (PEM) `FILE` of a private-CA https server")
	f.StringVar(&tokenFile, "token-file", "", "bake in a node's token from `FILE` (a per-node initrd, mode 0600)")
	e.addJSONFlag(build)
	var from, out, server, extra string
	iso := &cobra.Command{
		Use:   "iso --from DIR --server URL -o FILE",
		Short: "Write a BIOS+UEFI boot image (CD or USB) that runs the installer without netboot",
		Long: `Write FILE, a hybrid ISO (boots from CD or, written with dd, from a USB
stick, on BIOS and UEFI machines) holding DIR/vmlinuz and DIR/initrd.img from
sim initrd build and a GRUB menu that boots them with sim.server=URL and
--append ARGS (e.g. sim.image=debian, sim.node=n01, sim.after=reboot). The
node still fetches the image from the server; only the boot is local.
Needs grub-mkrescue, grub-pc-bin, grub-efi-amd64-bin, xorriso and mtools.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if from == "" || out == "" || server == "" {
				return usageError{errors.New("initrd iso: --from DIR, --server URL and -o FILE are required")}
			}
			if !isURL(server) {
				return usageError{fmt.Errorf("initrd iso: --server %q: want an http:// or https:// URL", server)}
			}
			cmdline := "console=ttyS0,115200 console=tty0 sim.server=" + server
			if extra != "" {
				cmdline += " " + extra
			}
			if err := initrd.ISO(filepath.Join(e.path(from), "vmlinuz"), filepath.Join(e.path(from), "initrd.img"), e.path(out), cmdline); err != nil {
				return err
			}
			fi, err := os.Stat(e.path(out))
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: %s, boots: %s\n", out, units.Bytes(fi.Size()), cmdline)
			return nil
		},
	}
	f = iso.Flags()
	f.StringVar(&from, "from", "", "the `DIR` sim initrd build wrote")
	f.StringVarP(&out, "out", "o", "", "write the image to `FILE`")
	f.StringVar(&server, "server", "", "the sim server's `URL` as nodes reach it")
	f.StringVar(&extra, "append", "", "more kernel `ARGS` (sim.image=, sim.node=, sim.after=, …)")
	c.AddCommand(build, iso)
	return c
}

// newestKernel is the highest-sorting ROOT/boot/vmlinuz-*.
func newestKernel(root string) (string, error) {
	if root == "" {
		root = "/"
	}
	ks, _ := filepath.Glob(filepath.Join(root, "boot/vmlinuz-*"))
	if len(ks) == 0 {
		return "", fmt.Errorf("no %s/boot/vmlinuz-*: give --kernel (apt-get install linux-image-amd64)", strings.TrimRight(root, "/"))
	}
	sort.Strings(ks)
	return ks[len(ks)-1], nil
}

// certPool checks that pem holds at least one certificate.
func certPool(pem []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate in it")
	}
	return p, nil
}

// firmwareRoot is the root whose lib/firmware a build reads.
func firmwareRoot(o initrd.Options) string {
	if o.FirmwareFrom != "" {
		return o.FirmwareFrom
	}
	return o.ModulesFrom
}
