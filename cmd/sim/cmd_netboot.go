package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

func newNetbootCommand(e *env) *cobra.Command {
	var out, server, extra string
	var perNode bool
	c := &cobra.Command{
		Use:   "netboot pxe|grub|dnsmasq|ipxe --server URL --out DIR",
		Short: "Write netboot configurations (pxelinux, GRUB for UEFI, dnsmasq, iPXE) for sites with DHCP/TFTP",
		Long: `Write the files a site's DHCP/TFTP setup needs to boot nodes into the sim
installer (copy vmlinuz and initrd.img from sim initrd build next to them):

  pxe      DIR/pxelinux.cfg/default (BIOS; with --per-node one
           pxelinux.cfg/01-<mac> per registered node with a MAC)
  grub     DIR/grub/grub.cfg (UEFI network boot with grubnetx64.efi; with
           --per-node, grub/grub.cfg-01-<mac> per node)
           Per-node files of nodes whose last install succeeded boot the
           local disk (LOCALBOOT 0, GRUB's exit) until sim node
           reinstall: write them again after installs. sim serve's iPXE
           script does this by itself.
  dnsmasq  DIR/dnsmasq.conf: proxy-less DHCP+TFTP for a lab network, BIOS
           and UEFI clients told which loader to fetch, one dhcp-host line
           per node with a MAC and IP
  ipxe     DIR/boot.ipxe, chaining to sim serve's per-node script

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
			case "dnsmasq":
				var b strings.Builder
				fmt.Fprintf(&b, `# sim netboot: dnsmasq as DHCP and TFTP server for the install network.
# Put vmlinuz, initrd.img, pxelinux.0 + ldlinux.c32 (BIOS) and
# grubnetx64.efi (UEFI) into tftp-root, with the files sim netboot pxe and
# sim netboot grub write. Adjust interface and range to your network.
port=0
interface=eth1
dhcp-range=198.18.0.100,198.18.0.200,255.254.0.0,1h
enable-tftp
tftp-root=%s
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9
dhcp-boot=tag:!efi64,pxelinux.0
dhcp-boot=tag:efi64,grubnetx64.efi
`, dir)
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
	return c
}

func pxeEntry(args string) string {
	return "# sim netboot (pxelinux, BIOS)\nDEFAULT sim\nLABEL sim\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND " + args + "\n"
}

// pxeLocal and grubLocal boot an installed node from its disk: pxelinux
// hands back to the BIOS's next device; GRUB's exit, to the firmware's
// next boot entry.
func pxeLocal(node string) string {
	return "# sim netboot: " + node + " is installed and boots its disk (sim node reinstall " + node + ", then sim netboot pxe --per-node again, installs it again)\nDEFAULT local\nLABEL local\n  LOCALBOOT 0\n"
}

func grubLocal(node string) string {
	return "# sim netboot: " + node + " is installed and boots its disk (sim node reinstall " + node + ", then sim netboot grub --per-node again, installs it again)\nset timeout=0\nmenuentry 'local disk' {\n  exit\n}\n"
}

func grubEntry(args string) string {
	return "# sim netboot (GRUB, UEFI)\nset timeout=0\nmenuentry 'sim install' {\n  linux vmlinuz " + args + "\n  initrd initrd.img\n}\n"
}

func sortedNames(r *catalog.Registry) []string {
	var ks []string
	for k := range r.Nodes {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
