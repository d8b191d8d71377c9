package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

func newNetbootCommand(e *env) *cobra.Command {
	var out, server, extra, loader, ipxeFrom, grubFrom, iface, dhcpRange string
	var perNode bool
	c := &cobra.Command{
		Use:   "netboot pxe|grub|dnsmasq|ipxe --server URL --out DIR",
		Short: "Write netboot configurations (pxelinux, GRUB for UEFI, dnsmasq, iPXE) for sites with DHCP/TFTP",
		Long: `Write the files a site's DHCP/TFTP setup needs to boot nodes into the sim
installer (copy vmlinuz and initrd.img from sim initrd build next to them):

  pxe      DIR/pxelinux.cfg/default (BIOS; with --per-node one
           pxelinux.cfg/01-<mac> per registered node with a MAC)
  grub     DIR/grub/grub.cfg and DIR/grubnetx64.efi (UEFI network boot:
           GRUB built with grub-mkimage from --grub-from, Debian's
           grub-efi-amd64-bin; with --per-node, grub/grub.cfg-01-<mac>
           per node)
           Per-node files of nodes whose last install succeeded boot the
           local disk (LOCALBOOT 0; GRUB chainloads the disk's
           \EFI\BOOT\BOOTX64.EFI) until sim node
           reinstall: write them again after installs. sim serve's iPXE
           script does this by itself.
  dnsmasq  DIR/dnsmasq.conf: DHCP+TFTP for the install network, BIOS
           and UEFI clients told which loader to fetch, one dhcp-host line
           per node with a MAC and IP. --loader pxelinux (default):
           pxelinux.0 and grubnetx64.efi with the files of netboot pxe and
           grub; --loader ipxe: the firmware's PXE fetches iPXE
           (undionly.kpxe, snponly.efi), iPXE asks again and gets
           boot.ipxe (netboot ipxe writes both)
  ipxe     DIR/boot.ipxe, chaining to sim serve's per-node script (which
           boots installed nodes from their disk by itself), and iPXE's
           loaders for firmware that has only PXE (from --ipxe-from,
           Debian's ipxe package: undionly.kpxe for BIOS, snponly.efi and
           ipxe.efi for UEFI)

The kernel command line carries sim.server=URL and, per node,
sim.node=NAME (else the server identifies the node by its MAC).`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if out == "" || server == "" {
				return usageError{errors.New("netboot: --out DIR and --server URL are required")}
			}
			if !isURL(server) {
				return usageError{fmt.Errorf("netboot: --server %q: want an http:// or https:// URL", server)}
			}
			kind := args[0]
			if kind != "pxe" && kind != "grub" && kind != "dnsmasq" && kind != "ipxe" {
				return usageError{fmt.Errorf("netboot: %q: want pxe, grub, dnsmasq or ipxe", kind)}
			}
			if loader != "pxelinux" && loader != "ipxe" {
				return usageError{fmt.Errorf("netboot: --loader %q: want pxelinux or ipxe", loader)}
			}
			rng, err := parseDHCPRange(dhcpRange)
			if err != nil {
				return usageError{fmt.Errorf("netboot: --dhcp-range %q: %w", dhcpRange, err)}
			}
			if !ifaceRE.MatchString(iface) {
				return usageError{fmt.Errorf("netboot: --interface %q: not an interface name", iface)}
			}
			dir := e.path(out)
			var nodes []*catalog.Node
			// Installed nodes boot their disk (until sim node reinstall).
			installed := map[string]bool{}
			if perNode || kind == "dnsmasq" {
				err := e.withStore(func(st *store.Store) error {
					reg, err := catalog.LoadRegistry(st)
					if err != nil {
						return err
					}
					last, err := install.LastStatuses(st)
					if err != nil {
						return fmt.Errorf("install reports: %w", err)
					}
					for _, k := range sortedNames(reg) {
						n := reg.Nodes[k]
						nodes = append(nodes, n)
						var done time.Time
						if s, ok := last[k]; ok && s.State == install.Done {
							done = s.Time
						}
						installed[k] = !n.NetbootsToInstall(done)
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			args0 := "console=ttyS0,115200 console=tty0 sim.server=" + server
			if extra != "" {
				args0 += " " + extra
			}
			files := map[string]string{}
			switch kind {
			case "pxe":
				files["pxelinux.cfg/default"] = pxeEntry(args0)
				for _, n := range nodes {
					switch {
					case n.MAC != "" && installed[n.Name]:
						files["pxelinux.cfg/01-"+strings.ReplaceAll(n.MAC, ":", "-")] = pxeLocal(n.Name)
					case n.MAC != "":
						files["pxelinux.cfg/01-"+strings.ReplaceAll(n.MAC, ":", "-")] = pxeEntry(args0 + " sim.node=" + n.Name)
					}
				}
			case "grub":
				files["grub/grub.cfg"] = grubEntry(args0)
				for _, n := range nodes {
					switch {
					case n.MAC != "" && installed[n.Name]:
						files["grub/grub.cfg-01-"+strings.ReplaceAll(n.MAC, ":", "-")] = grubLocal(n.Name)
					case n.MAC != "":
						files["grub/grub.cfg-01-"+strings.ReplaceAll(n.MAC, ":", "-")] = grubEntry(args0 + " sim.node=" + n.Name)
					}
				}
				// The loader itself, as netboot ipxe copies iPXE's: an
				// error when asked for by --grub-from, a note when the
				// default modules are not installed.
				from := grubFrom
				if from == "" {
					from = "/usr/lib/grub/x86_64-efi"
				}
				b, err := grubNetLoader(from)
				switch {
				case err == nil:
					files["grubnetx64.efi"] = string(b)
				case grubFrom != "":
					return fmt.Errorf("netboot grub --grub-from: %w", err)
				default:
					fmt.Fprintf(e.stderr, "sim netboot: grubnetx64.efi not written: %v\n", err)
				}
			case "dnsmasq":
				var b strings.Builder
				fmt.Fprintf(&b, "# sim netboot dnsmasq --loader %s: dnsmasq as DHCP and TFTP server for the\n# install network (no DNS: port=0).\n", loader)
				if loader == "ipxe" {
					b.WriteString(`# tftp-root holds what sim netboot ipxe writes: iPXE's loaders and
# boot.ipxe. The firmware's PXE gets iPXE (BIOS undionly.kpxe, UEFI
# snponly.efi, which drives the NIC through the firmware's own driver);
# iPXE asks again, with user class iPXE, and gets boot.ipxe, which chains
# to sim serve's script for the node.
`)
				} else {
					b.WriteString(`# Put vmlinuz, initrd.img, pxelinux.0 + ldlinux.c32 (BIOS) into
# tftp-root, with the files sim netboot pxe and sim netboot grub write
# (the latter builds grubnetx64.efi, GRUB for UEFI).
`)
				}
				fmt.Fprintf(&b, "port=0\ninterface=%s\nbind-interfaces\ndhcp-range=%s\nenable-tftp\ntftp-root=%s\n", iface, rng, dir)
				b.WriteString("dhcp-match=set:efi64,option:client-arch,7\ndhcp-match=set:efi64,option:client-arch,9\n")
				if loader == "ipxe" {
					b.WriteString("dhcp-userclass=set:ipxe,iPXE\ndhcp-boot=tag:ipxe,boot.ipxe\n" +
						"dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\ndhcp-boot=tag:!ipxe,tag:efi64,snponly.efi\n")
				} else {
					b.WriteString("dhcp-boot=tag:!efi64,pxelinux.0\ndhcp-boot=tag:efi64,grubnetx64.efi\n")
				}
				for _, n := range nodes {
					if n.MAC != "" && n.IP != "" {
						fmt.Fprintf(&b, "dhcp-host=%s,%s,%s\n", n.MAC, strings.Split(n.IP, "/")[0], n.Name)
					}
				}
				files["dnsmasq.conf"] = b.String()
			case "ipxe":
				q := "mac=${net0/mac}"
				if extra != "" {
					// The server's script carries them (only sim.*).
					a, err := install.CheckAppend(extra)
					if err != nil {
						return usageError{fmt.Errorf("netboot ipxe --%w", err)}
					}
					q += "&append=" + url.QueryEscape(a)
				}
				files["boot.ipxe"] = fmt.Sprintf("#!ipxe\n# sim netboot: ask sim serve for this node's script\ndhcp\nchain %s/v1/install/ipxe?%s\n", server, q)
				// iPXE itself, for firmware whose PXE is not iPXE: a
				// missing loader is an error when asked for by
				// --ipxe-from, a note when the default is not installed.
				from := ipxeFrom
				if from == "" {
					from = "/usr/lib/ipxe"
				}
				var missing []string
				for _, f := range ipxeLoaders {
					b, err := os.ReadFile(filepath.Join(from, f))
					if err != nil {
						missing = append(missing, f)
						continue
					}
					files[f] = string(b)
				}
				switch {
				case len(missing) > 0 && ipxeFrom != "":
					return fmt.Errorf("netboot ipxe --ipxe-from %s: %s missing (Debian's ipxe package has them in /usr/lib/ipxe)", ipxeFrom, strings.Join(missing, ", "))
				case len(missing) == len(ipxeLoaders):
					fmt.Fprintf(e.stderr, "sim netboot: no iPXE loaders in %s (apt-get install ipxe): firmware without iPXE needs them to reach boot.ipxe\n", from)
				case len(missing) > 0:
					fmt.Fprintf(e.stderr, "sim netboot: %s lacks %s\n", from, strings.Join(missing, ", "))
				}
			}
			for name, content := range files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, p)
			}
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "write into `DIR`")
	c.Flags().StringVar(&server, "server", "", "the sim server's `URL` as nodes reach it")
	c.Flags().StringVar(&extra, "append", "", "more kernel `ARGS` (e.g. sim.transport=bittorrent sim.after=reboot)")
	c.Flags().BoolVar(&perNode, "per-node", false, "also one file per registered node with a MAC")
	c.Flags().StringVar(&loader, "loader", "pxelinux", "dnsmasq: what the firmware's PXE fetches: `pxelinux` (and GRUB for UEFI) or ipxe")
	c.Flags().StringVar(&ipxeFrom, "ipxe-from", "", "ipxe: copy iPXE's loaders from `DIR` (default /usr/lib/ipxe, Debian's ipxe)")
	c.Flags().StringVar(&grubFrom, "grub-from", "", "grub: build grubnetx64.efi from GRUB's x86_64-efi modules in `DIR` (default /usr/lib/grub/x86_64-efi, Debian's grub-efi-amd64-bin)")
	c.Flags().StringVar(&iface, "interface", "eth1", "dnsmasq: the install network's `INTERFACE`")
	c.Flags().StringVar(&dhcpRange, "dhcp-range", "198.18.0.100,198.18.0.200,255.254.0.0", "dnsmasq: `FIRST,LAST,NETMASK` of the addresses handed out")
	return c
}

// ipxeLoaders are the iPXE builds netboot ipxe copies: BIOS (UNDI, the
// PXE ROM's driver), UEFI through the firmware's network driver (SNP),
// and UEFI with iPXE's own drivers.
var ipxeLoaders = []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"}

// parseDHCPRange checks FIRST,LAST,NETMASK and gives dnsmasq's form
// (with a lease time of an hour).
func parseDHCPRange(s string) (string, error) {
	w := strings.Split(s, ",")
	if len(w) != 3 {
		return "", errors.New("want FIRST,LAST,NETMASK")
	}
	var ips [3]net.IP
	for i, a := range w {
		if ips[i] = net.ParseIP(strings.TrimSpace(a)).To4(); ips[i] == nil {
			return "", fmt.Errorf("%q is not an IPv4 address", a)
		}
	}
	m := net.IPMask(ips[2])
	if ones, bits := m.Size(); bits == 0 || ones == 0 {
		return "", fmt.Errorf("%s is not a netmask", w[2])
	}
	if !ips[0].Mask(m).Equal(ips[1].Mask(m)) {
		return "", fmt.Errorf("%s and %s are not in one %s network", w[0], w[1], w[2])
	}
	if bytes.Compare(ips[0], ips[1]) > 0 {
		return "", fmt.Errorf("%s comes after %s", w[0], w[1])
	}
	return fmt.Sprintf("%s,%s,%s,1h", ips[0], ips[1], ips[2]), nil
}

// ifaceRE is a Linux interface name: what dnsmasq.conf's interface= may
// hold without a newline or space changing the configuration.
var ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}$`)

func pxeEntry(args string) string {
	return "# sim netboot (pxelinux, BIOS)\nDEFAULT sim\nLABEL sim\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND " + args + "\n"
}

// pxeLocal and grubLocal boot an installed node from its disk: pxelinux
// hands back to the BIOS's next device; GRUB's exit, to the firmware's
// next boot entry.
func pxeLocal(node string) string {
	return "# sim netboot: " + node + " is installed and boots its disk (sim node reinstall " + node + ", then sim netboot pxe --per-node again, installs it again)\nDEFAULT local\nLABEL local\n  LOCALBOOT 0\n"
}

// grubLocal chainloads the installed disk's loader rather than exiting:
// Debian's GRUB 2.06 exit returns success to the firmware, on which EDK2
// stops at its boot menu instead of trying the next boot entry (as iPXE's
// plain exit did). The installer puts GRUB at the removable-media path of
// the ESP (grub-install --removable), which search finds on any disk.
// exit 1 is for a node whose disks have none (a GRUB that takes an exit
// code hands the firmware an error, so it tries its next entry; 2.06
// ignores the code).
func grubLocal(node string) string {
	return "# sim netboot: " + node + " is installed and boots its disk (sim node reinstall " + node + ", then sim netboot grub --per-node again, installs it again)\n" +
		"set timeout=0\nmenuentry 'local disk' {\n" +
		"  if search --no-floppy --set=root --file " + espLoader + "; then\n" +
		"    chainloader " + espLoader + "\n    boot\n  fi\n" +
		"  echo 'sim netboot: no " + espLoader + " on any disk'\n  exit 1\n}\n"
}

// espLoader is where the installer puts the UEFI GRUB of an installed node.
const espLoader = "/EFI/BOOT/BOOTX64.EFI"

// grubEntry's paths are absolute: GRUB opens a path without a device on
// $root, which a network boot sets to the TFTP server, so /vmlinuz is
// the tftp root's (where pxelinux's vmlinuz is too).
func grubEntry(args string) string {
	return "# sim netboot (GRUB, UEFI)\nset timeout=0\nmenuentry 'sim install' {\n  linux /vmlinuz " + args + "\n  initrd /initrd.img\n}\n"
}

// grubNetModules go into grubnetx64.efi: the network (efinet, tftp), the
// menu, loading Linux, and what the local-boot entry needs to find and
// chainload an installed disk's loader.
var grubNetModules = []string{"efinet", "tftp", "net", "normal", "configfile", "echo", "test",
	"linux", "gzio", "chain", "search", "search_fs_file", "part_gpt", "part_msdos", "fat",
	"efi_gop", "efi_uga", "all_video"}

// grubNetLoader builds GRUB's UEFI network loader from the modules in
// from with grub-mkimage. Its prefix (tftp)/grub makes GRUB look for
// grub/grub.cfg-01-<mac> (then by IP, then grub/grub.cfg) on the server
// it was loaded from: the names sim netboot grub writes.
func grubNetLoader(from string) ([]byte, error) {
	if _, err := os.Stat(filepath.Join(from, "efinet.mod")); err != nil {
		return nil, fmt.Errorf("%s: no GRUB x86_64-efi modules (Debian's grub-efi-amd64-bin has them in /usr/lib/grub/x86_64-efi)", from)
	}
	tmp, err := os.CreateTemp("", "grubnetx64-*.efi")
	if err != nil {
		return nil, err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	args := append([]string{"-O", "x86_64-efi", "-d", from, "-p", "(tftp)/grub", "-o", tmp.Name()}, grubNetModules...)
	if out, err := exec.Command("grub-mkimage", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("grub-mkimage (Debian's grub-common): %v: %s", err, bytes.TrimSpace(out))
	}
	return os.ReadFile(tmp.Name())
}

func sortedNames(r *catalog.Registry) []string {
	var ks []string
	for k := range r.Nodes {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
