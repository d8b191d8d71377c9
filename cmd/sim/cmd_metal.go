package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/layout"
	"github.com/systemimager/sim/client/netcfg"
	"github.com/systemimager/sim/store"
)

func newLayoutCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "layout",
		Short: "Disk layouts stored with images (set, show, capture)",
		Long: `A layout says how a node's disks are partitioned and formatted when it installs
an image: one or more disks (GPT or msdos), partitions by size, percent or
rest; esp, vfat, ext2/3/4, xfs, btrfs (and its subvolumes), swap,
bios_grub; md arrays (raid 0, 1, 5, 6, 10, spares), LVM volume groups and
logical volumes; mount points, labels, mount options, keep. It is
stored in the store as image IMAGE@layout, so every change is a commit
(sim log IMAGE@layout shows its history).`,
	}
	var setGroup, setNode string
	set := &cobra.Command{
		Use:   "set IMAGE FILE | set --group G FILE | set --node N FILE",
		Short: "Check FILE and store it as IMAGE's (or group G's, or node N's) layout: a new commit",
		Long: `Check FILE and store it as a layout: IMAGE's (a new commit on IMAGE@layout),
or, with --group G, every member of group G's, or, with --node N, node N's
own (sim@group+G@layout, sim@node+N@layout). A node installs its own layout
if it has one, else that of the first of its groups that has one, else its
image's.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			if setGroup != "" && setNode != "" {
				return usageError{fmt.Errorf("--group and --node: give one")}
			}
			var target, what, file string
			switch {
			case setGroup != "" || setNode != "":
				if len(args) != 1 {
					return usageError{fmt.Errorf("with --group or --node, give only FILE")}
				}
				file = args[0]
			case len(args) != 2:
				return usageError{fmt.Errorf("give IMAGE FILE (or --group G FILE, --node N FILE)")}
			default:
				file = args[1]
				if err := store.CheckName("image", args[0]); err != nil {
					return usageError{err}
				}
				if catalog.IsSpecial(args[0]) {
					return usageError{fmt.Errorf("%s is a catalog document, not a system image", args[0])}
				}
				target, what = catalog.LayoutImage(args[0]), args[0]
			}
			b, err := os.ReadFile(e.path(file))
			if err != nil {
				return err
			}
			l, err := layout.Parse(string(b))
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			return e.withStore(func(st *store.Store) error {
				switch {
				case setGroup != "" || setNode != "":
					reg, err := catalog.LoadRegistry(st)
					if err != nil {
						return err
					}
					if setGroup != "" {
						if reg.Groups[setGroup] == nil {
							return fmt.Errorf("no group %q (sim group add %s)", setGroup, setGroup)
						}
						target, what = catalog.GroupLayoutImage(setGroup), "group "+setGroup
					} else {
						if reg.Nodes[setNode] == nil {
							return fmt.Errorf("no node %q (sim node add %s)", setNode, setNode)
						}
						target, what = catalog.NodeLayoutImage(setNode), "node "+setNode
					}
				default:
					if _, err := st.ImageHead(args[0]); err != nil {
						return fmt.Errorf("image %s: %w", args[0], err)
					}
				}
				// The file as written (comments kept), since it parsed.
				id, err := catalog.CommitFiles(c.Context(), st, target,
					map[string][]byte{catalog.LayoutFile: b}, "layout of "+what)
				if err != nil {
					return err
				}
				nparts := 0
				for _, d := range l.AllDisks() {
					nparts += len(d.Partitions)
				}
				fmt.Fprintf(e.stderr, "layout of %s: %d partitions on %d disks (the first %s, at least %s), %d arrays, %d logical volumes; commit %s on %s\n",
					what, nparts, len(l.AllDisks()), l.Disk, layout.FormatBytes(l.MinBytes()/layout.Align*layout.Align+layout.Align), len(l.RAIDs), len(l.LVs), id.Short(), target)
				return nil
			})
		},
	}
	set.Flags().StringVar(&setGroup, "group", "", "store the layout of group `G` (its members install it)")
	set.Flags().StringVar(&setNode, "node", "", "store node `N`'s own layout")
	c.AddCommand(set)
	var size, showNode string
	show := &cobra.Command{
		Use:   "show REF | show --node N",
		Short: "Print the layout of an image (or of a commit of IMAGE@layout)",
		Long: `Print the layout REF uses: REF is an image, a tag or commit of it (then its
image's current layout), or a commit of IMAGE@layout (that version).
--disk-size SIZE also prints where each partition would go on such a disk.`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(c *cobra.Command, args []string) error {
			if (showNode == "") == (len(args) == 0) {
				return usageError{fmt.Errorf("give REF or --node N")}
			}
			return e.withStore(func(st *store.Store) error {
				var id chunk.ID
				var err error
				if showNode != "" {
					a, err := install.Assignment(st, showNode, "", "")
					if err != nil {
						return err
					}
					reg, err := catalog.LoadRegistry(st)
					if err != nil {
						return err
					}
					var from string
					if id, from, err = catalog.LayoutForNode(st, reg.Nodes[showNode], a.Image); err != nil {
						return err
					}
					fmt.Fprintf(e.stderr, "node %s installs the layout of %s\n", showNode, from)
				} else if id, err = catalog.LayoutFor(st, args[0]); err != nil {
					return err
				}
				b, err := catalog.ReadFile(st, id, catalog.LayoutFile)
				if err != nil {
					return err
				}
				l, err := layout.Parse(string(b))
				if err != nil {
					return fmt.Errorf("stored layout %s: %w", id.Short(), err)
				}
				var ext []layout.Extent
				if size != "" {
					sz, err := layout.ParseSize(size)
					if err != nil || sz.Kind != layout.Fixed {
						return usageError{fmt.Errorf("--disk-size %q: want a size like 20GiB", size)}
					}
					if ext, err = l.Plan("(--disk-size)", sz.Bytes); err != nil {
						return err
					}
				}
				if e.json {
					return e.printJSON(struct {
						Commit  string          `json:"commit"`
						Layout  *layout.Layout  `json:"layout"`
						Text    string          `json:"text"`
						Extents []layout.Extent `json:"extents,omitempty"`
					}{id.String(), l, string(b), ext})
				}
				fmt.Fprintf(e.stdout, "# layout commit %s\n%s", id, b)
				for _, x := range ext {
					fmt.Fprintf(e.stdout, "# %d %-10s start %s size %s\n", x.Index, x.Name, layout.FormatBytes(x.Start), layout.FormatBytes(x.Bytes))
				}
				return nil
			})
		},
	}
	show.Flags().StringVar(&size, "disk-size", "", "also place the partitions on a disk of `SIZE`")
	show.Flags().StringVar(&showNode, "node", "", "the layout node `N` installs (its own, its group's or its image's)")
	e.addJSONFlag(show)
	c.AddCommand(show, newLayoutCaptureCommand(e))
	return c
}

type nodeOptions struct {
	mac, ip, gw, image, disk, after        string
	groups, overrides, scripts, preScripts []string
	net                                    []string
	netFile                                string
	replicant                              bool
}

// netSpec is the node's network spec from --net, --net-file and
// --replicant (nil: none given, MAC/IP/gateway say it all).
func (o *nodeOptions) netSpec(readFile func(string) ([]byte, error)) (*netcfg.Spec, error) {
	if len(o.net) == 0 && o.netFile == "" && !o.replicant {
		return nil, nil
	}
	text := strings.Join(o.net, "\n")
	if o.netFile != "" {
		b, err := readFile(o.netFile)
		if err != nil {
			return nil, fmt.Errorf("--net-file: %w", err)
		}
		text = string(b) + "\n" + text
	}
	if o.replicant {
		text += "\nreplicant"
	}
	if o.ip != "" {
		return nil, errors.New("--ip and a network spec (--net, --net-file): give the address in the spec (nic NAME ip=…)")
	}
	return netcfg.Parse(text)
}

func (o *nodeOptions) add(c *cobra.Command, node bool) {
	f := c.Flags()
	if node {
		f.StringVar(&o.mac, "mac", "", "the node's boot NIC `MAC` (how it is recognised)")
		f.StringVar(&o.ip, "ip", "", "static `IP/PREFIX` for the installed system (default DHCP)")
		f.StringVar(&o.gw, "gateway", "", "default gateway `IP` with --ip")
		f.StringArrayVar(&o.groups, "group", nil, "member of `GROUP` (repeatable, in order)")
		f.StringVar(&o.disk, "disk", "", "install on `DISK` (overrides the layout's first disk)")
		f.StringArrayVar(&o.net, "net", nil, "a network spec `LINE`: 'nic eth0 mac=M ip=CIDR gw=IP mtu=N', 'bond bond0 slaves=eth1,eth2 mode=802.3ad', 'vlan bond0.100 link=bond0 id=100 ip=CIDR', 'dns IP…', 'search DOMAIN…' (repeatable; README \"Network specs\")")
		f.StringVar(&o.netFile, "net-file", "", "read the node's network spec from `FILE` (the --net lines, one a line)")
		f.BoolVar(&o.replicant, "replicant", false, "leave the image's network configuration as it is (SystemImager's replicant)")
	}
	f.StringVar(&o.image, "image", "", "install `IMAGE` (a node without one takes its first group's)")
	f.StringArrayVar(&o.overrides, "override", nil, "lay override `NAME` over the image (repeatable, in order)")
	f.StringArrayVar(&o.scripts, "script", nil, "run post-install script `NAME` (repeatable, in order)")
	f.StringVar(&o.after, "after", "", "after a successful install: `ACTION` poweroff, reboot, kexec (boot the installed system without a firmware reboot) or shell (default: the kernel command line's sim.after=, else poweroff)")
	f.StringArrayVar(&o.preScripts, "pre-script", nil, "run script `NAME` in the installer before the disk is partitioned (repeatable, in order; SIM_DISK names the disk)")
}

func newNodeCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "node",
		Short: "Register nodes (name, MAC, IP, image, groups, overrides, scripts)",
		Long: `Nodes and groups live in the store as image sim@nodes (one JSON document per
node and group), so every change is a commit. A node's name is its hostname.
Where a NAME goes, a range may: n[001-500], rack1-n[01-40], n1-n16,n20.`,
	}
	var o nodeOptions
	add := &cobra.Command{
		Use:   "add NAME|RANGE",
		Short: "Add or replace nodes: a range gets consecutive MACs and IPs from --mac and --ip",
		Long: `Add or replace a node, or every node of a range in one commit. With a range,
--mac and --ip are the first node's: the next node gets the next MAC and
the next address (n[001-500] --mac 52:54:00:00:01:00 --ip 198.18.1.1/22),
which must stay inside the prefix.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			names, err := fleet.ExpandNodes(args[0])
			if err != nil {
				return usageError{err}
			}
			if len(names) == 0 {
				return usageError{fmt.Errorf("node add: %q names no node", args[0])}
			}
			spec, err := o.netSpec(func(p string) ([]byte, error) { return os.ReadFile(e.path(p)) })
			if err != nil {
				return usageError{err}
			}
			var nodes []*catalog.Node
			for i, name := range names {
				n := &catalog.Node{Name: name, MAC: o.mac, IP: o.ip, Gateway: o.gw, Image: o.image, Groups: o.groups,
					Overrides: o.overrides, Scripts: o.scripts, PreScripts: o.preScripts, Disk: o.disk, Network: spec, After: o.after}
				if spec != nil && i > 0 {
					if n.Network, err = spec.Shift(i); err != nil {
						return usageError{fmt.Errorf("node %s: %w", name, err)}
					}
				}
				if n.Network != nil {
					// The spec's first IPv4 address is the node's IP
					// (hosts, dnsmasq, the duplicate check).
					n.IP, n.Gateway = n.Network.Primary()
				}
				if n.MAC == "" && n.Network != nil {
					// Recognised by its spec's first NIC with a MAC.
					for _, l := range n.Network.Links {
						if l.MAC != "" {
							n.MAC = l.MAC
							break
						}
					}
				} else if i > 0 && n.MAC != "" {
					if n.MAC, err = catalog.MACPlus(o.mac, i); err != nil {
						return usageError{fmt.Errorf("node %s: %w", name, err)}
					}
				}
				if i > 0 && n.IP != "" && n.Network == nil {
					if n.IP, err = catalog.AddrPlus(o.ip, i); err != nil {
						return usageError{fmt.Errorf("node %s: %w", name, err)}
					}
				}
				if err := n.Check(); err != nil {
					return usageError{err}
				}
				if n.Disk != "" {
					if err := layout.CheckDisk(n.Disk); err != nil {
						return usageError{fmt.Errorf("node %s: %w", n.Name, err)}
					}
				}
				nodes = append(nodes, n)
			}
			return e.addNodes(c.Context(), nodes, "node add "+args[0])
		},
	}
	o.add(add, true)
	var imp nodeOptions
	var prefix int
	importCmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Add the nodes of a CSV (name,mac[,ip[,gateway[,after]]]) or a dnsmasq leases file, in one commit",
		Long: `Add or replace the nodes a site already lists: a CSV with one
name,mac[,ip[,gateway[,after]]] per line (# comments are skipped; a header
line "name,..." names the columns, in any order: name, mac, ip, gateway,
after), or the DHCP server's leases (dnsmasq's dnsmasq.leases:
"EXPIRY MAC IP HOSTNAME CLIENT-ID"; what SystemImager's si_mkdhcpstatic
read), which carry no prefix: --prefix gives it. The after column is the
node's after-install action (poweroff, reboot, kexec, shell: as sim node
add --after); an empty one takes --after. --group, --image, --override,
--script and --after apply to every node. A bad line fails the whole
import, naming the file, the line and the node; "-" reads stdin.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := catalog.CheckAfter(imp.after); err != nil {
				return usageError{fmt.Errorf("node import --after: %w", err)}
			}
			if len(imp.net) > 0 || imp.netFile != "" || imp.replicant {
				// One spec for every node would give them all the same
				// addresses: refuse rather than drop it.
				return usageError{errors.New("node import: --net, --net-file and --replicant are per node (sim node add NAME|RANGE --net …), not per file")}
			}
			var r io.Reader = os.Stdin
			name := "stdin"
			if args[0] != "-" {
				f, err := os.Open(e.path(args[0]))
				if err != nil {
					return err
				}
				defer f.Close()
				r, name = f, args[0]
			}
			nodes, err := catalog.ParseNodeList(r, name, prefix)
			if err != nil {
				return usageError{err}
			}
			if len(nodes) == 0 {
				return usageError{fmt.Errorf("%s lists no node", name)}
			}
			for _, n := range nodes {
				n.Image, n.Groups, n.Overrides, n.Scripts, n.PreScripts, n.Disk = imp.image, imp.groups, imp.overrides, imp.scripts, imp.preScripts, imp.disk
				if n.After == "" {
					// The file's own after column wins over --after.
					n.After = imp.after
				}
			}
			return e.addNodes(c.Context(), nodes, fmt.Sprintf("node import %s (%d nodes)", filepath.Base(name), len(nodes)))
		},
	}
	imp.add(importCmd, true)
	importCmd.Flags().IntVar(&prefix, "prefix", 0, "prefix `BITS` of addresses given without one (leases; default: none, such a line is refused)")
	for _, f := range []string{"mac", "ip", "gateway"} {
		importCmd.Flags().MarkHidden(f) // from the file
	}
	rm := &cobra.Command{
		Use:   "rm NAME|RANGE",
		Short: "Remove nodes",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			names, err := fleet.ExpandNodes(args[0])
			if err != nil {
				return usageError{err}
			}
			return e.withStore(func(st *store.Store) error {
				reg, err := catalog.LoadRegistry(st)
				if err != nil {
					return err
				}
				var missing []string
				for _, n := range names {
					if reg.Nodes[n] == nil {
						missing = append(missing, n)
					}
				}
				if len(missing) > 0 {
					return fmt.Errorf("no node %s", strings.Join(missing, ", "))
				}
				for _, n := range names {
					delete(reg.Nodes, n)
				}
				_, err = reg.Save(c.Context(), st, "node rm "+args[0])
				return err
			})
		},
	}
	var local, kexec bool
	var reinstallAfter string
	var reinstallTimeout time.Duration
	reinstall := &cobra.Command{
		Use:   "reinstall NAME|RANGE [--local [--kexec]]",
		Short: "Install nodes again: at their next netboot, or now from their own disk (--local)",
		Long: `After a successful install, a node's netboot (sim serve's iPXE script,
and the per-node files of sim netboot pxe|grub --per-node) sends it to its
own disk, so a node set to boot from the network first does not reinstall
at every boot (SystemImager's si_netbootmond). reinstall makes the nodes'
next netboot install again; once that install succeeds they boot their
disk again.

--local reinstalls running nodes without PXE or media (SystemImager's
si_updateclient --autoinstall), through their agents (sim serve must run,
with --netboot DIR): each node downloads the installer's kernel and initrd
into /boot/sim-installer, adds a one-time GRUB entry (in custom.cfg, with
next_entry in grubenv: grub-reboot's way) that boots the installer with
its name, server and own token, and reboots; the installer installs and
the node then boots its disk. With --kexec the node kexecs straight into
the installer instead (no bootloader entry, no firmware reboot). A node
whose agent does not answer within --timeout is named; the others go on.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			names, err := fleet.ExpandNodes(args[0])
			if err != nil {
				return usageError{err}
			}
			if kexec && !local {
				return usageError{errors.New("node reinstall: --kexec goes with --local")}
			}
			if reinstallAfter != "" && !local {
				return usageError{errors.New("node reinstall: --after goes with --local (for a netboot, set the node's: sim node add --after)")}
			}
			if err := catalog.CheckAfter(reinstallAfter); err != nil {
				return usageError{fmt.Errorf("node reinstall --after: %w", err)}
			}
			return e.withStore(func(st *store.Store) error {
				reg, err := catalog.LoadRegistry(st)
				if err != nil {
					return err
				}
				for _, n := range names {
					if reg.Nodes[n] == nil {
						return fmt.Errorf("no node %q", n)
					}
				}
				if local {
					return e.reinstallLocal(c.Context(), names, fleet.Order{Kind: fleet.OrderReinstall, Kexec: kexec, After: reinstallAfter}, reinstallTimeout)
				}
				now := time.Now().UTC()
				for _, n := range names {
					reg.Nodes[n].Reinstall = &now
				}
				if _, err := reg.Save(c.Context(), st, "node reinstall "+args[0]); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%d nodes install again at their next netboot\n", len(names))
				return nil
			})
		},
	}
	reinstall.Flags().BoolVar(&local, "local", false, "reinstall the running nodes now, from their own disks, through their agents (no PXE)")
	reinstall.Flags().BoolVar(&kexec, "kexec", false, "with --local: kexec into the installer (no bootloader entry, no firmware reboot)")
	reinstall.Flags().StringVar(&reinstallAfter, "after", "", "with --local: the installer's after-install `ACTION` (poweroff, reboot, kexec, shell; default the node's)")
	reinstall.Flags().DurationVar(&reinstallTimeout, "timeout", 2*time.Minute, "with --local: how long to wait for the nodes' agents")
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "What a node is registered with, and what it gets once its groups are folded in",
		Long: `Show a node's record (MAC, IP, groups, image, overrides, scripts, disk, network
spec, a pending reinstall) and what its install gets: the image (its own or
its first group's), overrides and scripts in the order they apply (sim
layout show --node NAME: its layout, and where it comes from). --json: the
record and the resolved lists.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				reg, err := catalog.LoadRegistry(st)
				if err != nil {
					return err
				}
				n := reg.Nodes[args[0]]
				if n == nil {
					return fmt.Errorf("no node %q (sim nodes lists them)", args[0])
				}
				res, rerr := reg.Resolve(n)
				if e.json {
					out := struct {
						Node       *catalog.Node `json:"node"`
						Image      string        `json:"image,omitempty"`
						Overrides  []string      `json:"overrides,omitempty"`
						Scripts    []string      `json:"scripts,omitempty"`
						PreScripts []string      `json:"pre_scripts,omitempty"`
						Error      string        `json:"error,omitempty"`
					}{Node: n}
					if rerr != nil {
						out.Error = rerr.Error()
					} else {
						out.Image, out.Overrides, out.Scripts, out.PreScripts = res.Image, res.Overrides, res.Scripts, res.PreScripts
					}
					return e.printJSON(out)
				}
				w := e.stdout
				row := func(k, v string) {
					if v != "" {
						fmt.Fprintf(w, "  %-12s %s\n", k, v)
					}
				}
				fmt.Fprintf(w, "node %s\n", n.Name)
				row("mac", n.MAC)
				ip := n.IP
				if ip == "" && (n.Network == nil || !n.Network.Managed()) {
					ip = "dhcp"
				}
				if n.Gateway != "" {
					ip += " via " + n.Gateway
				}
				row("ip", ip)
				row("groups", strings.Join(n.Groups, ", "))
				row("disk", n.Disk)
				if rerr != nil {
					row("resolves", "error: "+rerr.Error())
				} else {
					img := res.Image
					if n.Image == "" {
						for _, g := range n.Groups {
							if gr := reg.Groups[g]; gr != nil && gr.Image == img {
								img += " (from group " + g + ")"
								break
							}
						}
					}
					row("image", img)
					row("overrides", strings.Join(res.Overrides, ", "))
					row("pre-scripts", strings.Join(res.PreScripts, ", "))
					row("scripts", strings.Join(res.Scripts, ", "))
					row("after", res.After)
				}
				if n.Reinstall != nil {
					row("reinstall", "asked "+n.Reinstall.Format(time.RFC3339)+" (its next netboot installs until an install succeeds)")
				}
				if n.Network != nil {
					if n.Network.Replicant {
						row("network", "replicant (the image's own configuration)")
					} else {
						fmt.Fprintln(w, "  network")
						for _, l := range strings.Split(strings.TrimRight(n.Network.String(), "\n"), "\n") {
							fmt.Fprintf(w, "    %s\n", l)
						}
					}
				}
				return nil
			})
		},
	}
	e.addJSONFlag(show)
	c.AddCommand(add, importCmd, rm, reinstall, show)
	return c
}

// addNodes adds (or replaces) nodes in one registry commit, checking
// their groups and references first; an error names the node at fault.
func (e *env) addNodes(ctx context.Context, nodes []*catalog.Node, msg string) error {
	return e.withStore(func(st *store.Store) error {
		reg, err := catalog.LoadRegistry(st)
		if err != nil {
			return err
		}
		checked := map[string]bool{}
		for _, n := range nodes {
			for _, g := range n.Groups {
				if reg.Groups[g] == nil {
					return fmt.Errorf("node %s: no group %q (sim group add %s)", n.Name, g, g)
				}
			}
			scripts := append(append([]string(nil), n.Scripts...), n.PreScripts...)
			key := n.Image + "\x00" + strings.Join(n.Overrides, ",") + "\x00" + strings.Join(scripts, ",")
			if !checked[key] {
				if err := catalog.CheckRefs(st, n.Image, n.Overrides, scripts); err != nil {
					return fmt.Errorf("node %s: %w", n.Name, err)
				}
				checked[key] = true
			}
			if err := reg.AddNode(n); err != nil {
				return err
			}
			if _, err := reg.Resolve(n); err != nil {
				return err
			}
		}
		_, err = reg.Save(ctx, st, msg)
		if err == nil && len(nodes) > 1 {
			fmt.Fprintf(e.stdout, "%d nodes: %s .. %s\n", len(nodes), nodes[0].Name, nodes[len(nodes)-1].Name)
		}
		return err
	})
}

func newGroupCommand(e *env) *cobra.Command {
	c := &cobra.Command{Use: "group", Short: "Groups of nodes sharing an image, overrides and scripts"}
	var o nodeOptions
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add or replace a group",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			g := &catalog.Group{Name: args[0], Image: o.image, Overrides: o.overrides, Scripts: o.scripts, PreScripts: o.preScripts, After: o.after}
			if err := catalog.CheckDocName("group", g.Name); err != nil {
				return usageError{err}
			}
			if err := catalog.CheckAfter(g.After); err != nil {
				return usageError{fmt.Errorf("group %s: %w", g.Name, err)}
			}
			return e.withStore(func(st *store.Store) error {
				if err := catalog.CheckRefs(st, g.Image, g.Overrides, append(append([]string(nil), g.Scripts...), g.PreScripts...)); err != nil {
					return fmt.Errorf("group %s: %w", g.Name, err)
				}
				reg, err := catalog.LoadRegistry(st)
				if err != nil {
					return err
				}
				reg.Groups[g.Name] = g
				_, err = reg.Save(c.Context(), st, "group add "+g.Name)
				return err
			})
		},
	}
	o.add(add, false)
	var force bool
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a group (refused while nodes are in it, unless --force)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				reg, err := catalog.LoadRegistry(st)
				if err != nil {
					return err
				}
				if err := reg.RemoveGroup(args[0], force); err != nil {
					return err
				}
				_, err = reg.Save(c.Context(), st, "group rm "+args[0])
				return err
			})
		},
	}
	rm.Flags().BoolVar(&force, "force", false, "also take the group off the nodes in it")
	c.AddCommand(add, rm)
	return c
}

func newHostsCommand(e *env) *cobra.Command {
	var domain string
	c := &cobra.Command{
		Use:   "hosts [--domain DOMAIN]",
		Short: "Print /etc/hosts lines for the nodes with a static IP",
		Long: `Print an /etc/hosts block for every node with a static IP, in address
order ("198.18.1.1  n001.DOMAIN n001"): for the server, an override of
the nodes' /etc/hosts, or a site's DNS.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				reg, err := catalog.LoadRegistry(st)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "# sim nodes (registry %s)\n%s", short8(idOrEmpty(reg)), reg.Hosts(domain))
				return nil
			})
		},
	}
	c.Flags().StringVar(&domain, "domain", "", "also name each node NAME.`DOMAIN`")
	return c
}

func newNodesCommand(e *env) *cobra.Command {
	var watch bool
	c := &cobra.Command{
		Use:   "nodes [--watch]",
		Short: "List nodes: groups, image, assigned and current commit, state, last seen, drift, last install",
		Long: `List the nodes: the registered ones (sim node add) and those whose agent
reports to this server, each with its groups, image, the commit it is
assigned (its image's head) and the one it is on, its state (installing,
updating, idle, failed, offline, rolled-back, partial), when it was last
seen, how many paths drifted at its last scan, and its last install status.
Without a running server, what the server last knew (on an S3 store, what
every frontend put in the bucket).

--watch keeps the list live, like top: on a terminal it is redrawn in
place at every change a node reports (phase, bytes done of total, rate,
transport), with a summary line of how many nodes are in each state;
otherwise it prints one line per change. Ctrl-C ends it.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				if watch {
					if e.json {
						return usageError{errors.New("--watch and --json: pick one (GET /v1/events streams JSON)")}
					}
					return e.watchNodes(c.Context(), st)
				}
				rows, reg, err := e.nodeRows(st)
				if err != nil {
					return err
				}
				if e.json {
					groups := reg.Groups
					return e.printJSON(struct {
						Commit string                    `json:"registry_commit,omitempty"`
						Nodes  []nodeRow                 `json:"nodes"`
						Groups map[string]*catalog.Group `json:"groups"`
					}{idOrEmpty(reg), rows, groups})
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tGROUPS\tIMAGE\tASSIGNED\tCURRENT\tSTATE\tLAST SEEN\tDRIFT\tLAST INSTALL")
				for _, r := range rows {
					inst := "-"
					if r.Status != nil {
						inst = fmt.Sprintf("%s %s %s", r.Status.State, r.Status.Step, r.Status.Time.Local().Format("2006-01-02 15:04:05"))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, dash(strings.Join(r.Groups, ",")), dash(r.image()),
						dash(short8(r.Assigned)), dash(r.current()), r.state(), r.seen(time.Now()), r.drift(), inst)
				}
				return tw.Flush()
			})
		},
	}
	e.addJSONFlag(c)
	c.Flags().BoolVarP(&watch, "watch", "w", false, "stay, and show every change live (redrawn in place on a terminal)")
	return c
}

// nodeRow is one node as sim nodes shows it: its registry entry, its
// last install status, and what the fleet knows of it now.
type nodeRow struct {
	*catalog.Node
	Resolved *catalog.Resolved `json:"resolved,omitempty"`
	Status   *install.Status   `json:"status,omitempty"`
	// From the fleet: the commit it is assigned and the one it reports,
	// its state, when last heard of.
	Assigned       string     `json:"assigned,omitempty"`
	Current        string     `json:"current"`
	State          string     `json:"state"`
	LastSeen       *time.Time `json:"last_seen"`
	Drift          int        `json:"drift"`
	RebootRequired bool       `json:"reboot_required,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	// live is the fleet's whole state of the node (the live view shows
	// its phase and progress); not in the JSON, which keeps its shape.
	live fleet.NodeState
}

func (r nodeRow) image() string {
	if r.Resolved != nil {
		return r.Resolved.Image
	}
	return ""
}

func (r nodeRow) current() string {
	cur := short8(r.Current)
	if r.Current != "" && r.Current == r.Assigned {
		cur += " ="
	}
	return cur
}

func (r nodeRow) state() string {
	if r.RebootRequired {
		return r.State + " (reboot)"
	}
	return r.State
}

func (r nodeRow) seen(now time.Time) string {
	if r.LastSeen == nil {
		return "-"
	}
	return ago(now.Sub(*r.LastSeen))
}

func (r nodeRow) drift() string {
	if r.Drift < 0 {
		return "-"
	}
	return fmt.Sprint(r.Drift)
}

// nodeRows lists every node the registry or the fleet knows, in name
// order.
func (e *env) nodeRows(st *store.Store) ([]nodeRow, *catalog.Registry, error) {
	reg, err := catalog.LoadRegistry(st)
	if err != nil {
		return nil, nil, err
	}
	last, err := install.LastStatuses(st)
	if err != nil {
		return nil, nil, fmt.Errorf("install reports: %w", err)
	}
	live := map[string]fleet.NodeState{}
	for _, s := range e.knownNodes(st) {
		live[s.Name] = s
	}
	names := make([]string, 0, len(reg.Nodes))
	for n := range reg.Nodes {
		names = append(names, n)
	}
	for n := range live {
		if reg.Nodes[n] == nil {
			names = append(names, n)
		}
	}
	sort.Slice(names, func(i, j int) bool { return fleet.NodeLess(names[i], names[j]) })
	rows := []nodeRow{}
	for _, n := range names {
		r := nodeRow{Node: reg.Nodes[n], State: fleet.Unknown, Drift: -1}
		if r.Node == nil {
			r.Node = &catalog.Node{Name: n} // joined by name, not registered
		} else {
			r.Resolved, _ = reg.Resolve(r.Node)
			if r.Resolved != nil {
				r.Resolved.Node = nil
			}
		}
		if s, ok := last[n]; ok {
			r.Status = &s
		}
		if s, ok := live[n]; ok {
			r.live = s
			r.Assigned, r.Current, r.State, r.Drift = s.Assigned, s.Current, s.State, s.Drift
			r.RebootRequired, r.LastError = s.RebootRequired, s.LastError
			if !s.LastSeen.IsZero() {
				t := s.LastSeen
				r.LastSeen = &t
			}
		}
		if r.Assigned == "" && r.Resolved != nil && r.Resolved.Image != "" {
			if id, err := st.Resolve(r.Resolved.Image); err == nil {
				r.Assigned = id.String()
			}
		}
		rows = append(rows, r)
	}
	return rows, reg, nil
}

func short8(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// ago says how long ago, as an admin reads it.
func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func idOrEmpty(r *catalog.Registry) string {
	if r.Commit.IsZero() {
		return ""
	}
	return r.Commit.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newOverrideCommand(e *env) *cobra.Command {
	c := &cobra.Command{Use: "override", Short: "Override trees laid over a node's new root (SystemImager's overrides)"}
	c.AddCommand(&cobra.Command{
		Use:   "set NAME DIR",
		Short: "Commit DIR as override NAME (image NAME@override)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if err := catalog.CheckDocName("override", args[0]); err != nil {
				return usageError{err}
			}
			fi, err := os.Stat(e.path(args[1]))
			if err != nil {
				return err
			}
			if !fi.IsDir() {
				return usageError{fmt.Errorf("%s is not a directory", args[1])}
			}
			return e.withStore(func(st *store.Store) error {
				id, cm, err := commitDir(c, st, e.path(args[1]), catalog.OverrideImage(args[0]))
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "override %s: %d files, commit %s\n", args[0], cm, id)
				return nil
			})
		},
	})
	return c
}

func newScriptCommand(e *env) *cobra.Command {
	c := &cobra.Command{Use: "script", Short: "Post-install scripts, run in a chroot of a node's new root"}
	c.AddCommand(&cobra.Command{
		Use:   "set NAME FILE",
		Short: "Store FILE as post-install script NAME (image NAME@script)",
		Long: `Store FILE as post-install script NAME. It runs as root, chrooted into the
new root after the image, the overrides, hostname and fstab are in place
and before the bootloader, with SIM_NODE, SIM_HOSTNAME, SIM_IMAGE,
SIM_COMMIT, SIM_MAC and SIM_IP set. A non-zero exit fails the install.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if err := catalog.CheckDocName("script", args[0]); err != nil {
				return usageError{err}
			}
			b, err := os.ReadFile(e.path(args[1]))
			if err != nil {
				return err
			}
			if !strings.HasPrefix(string(b), "#!") {
				return usageError{fmt.Errorf("%s: a script must start with #! (it is executed in the new root)", args[1])}
			}
			return e.withStore(func(st *store.Store) error {
				id, err := catalog.CommitFiles(c.Context(), st, catalog.ScriptImage(args[0]), map[string][]byte{catalog.ScriptFile: b}, "script "+args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "script %s: commit %s\n", args[0], id)
				return nil
			})
		},
	})
	return c
}

func newLayoutCaptureCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "capture [DISK...]",
		Short: "Print the layout of this machine's disks (default: every disk with a partition table), to edit and set",
		Long: `Read a golden client's disks and print them as a layout, for sim layout set:
GPT and msdos (MBR) partitions, filesystems by superblock with their labels,
the md arrays over them (mdadm --detail --export), LVM volume groups and
logical volumes (lvm's JSON reports), btrfs subvolumes as mounted, mount
points of what is mounted now and options from /etc/fstab. Each disk's last
partition, and the largest LV of a full volume group, become "rest". What a
layout cannot say (filesystem UUIDs: sim makes new ones; gaps; metadata
versions sim does not make) is printed as comments above it; what it cannot
express at all (logical msdos partitions, linear or external-metadata
arrays, thin or snapshot LVs, an array or VG reaching a disk not captured)
fails naming it. With no DISK, every disk with a partition table is read.
Run it on the golden client; it only reads.`,
		RunE: func(c *cobra.Command, args []string) error {
			var ds []disk.Info
			var skipped []string
			if len(args) == 0 {
				all, err := disk.List()
				if err != nil {
					return err
				}
				for _, d := range all {
					if disk.HasTable(d) {
						ds = append(ds, d)
					} else {
						skipped = append(skipped, d.Path)
					}
				}
				if len(ds) == 0 {
					return fmt.Errorf("no disk with a partition table (disks seen: %d)", len(all))
				}
			}
			for _, a := range args {
				d, err := disk.Find(a)
				if err != nil {
					return err
				}
				ds = append(ds, d)
			}
			cp, err := disk.Capture(c.Context(), ds)
			if cp != nil {
				var from []string
				for _, d := range ds {
					from = append(from, fmt.Sprintf("%s (%s)", d.Path, layout.FormatBytes(d.Size)))
				}
				fmt.Fprintf(e.stdout, "# captured from %s\n", strings.Join(from, ", "))
				for _, s := range skipped {
					fmt.Fprintf(e.stdout, "# %s: no partition table, left out\n", s)
				}
				for _, n := range cp.Notes {
					fmt.Fprintf(e.stdout, "# %s\n", n)
				}
				fmt.Fprint(e.stdout, cp.Layout.Format())
			}
			return err
		},
	}
}

// commitDir commits a directory as the head of image.
func commitDir(c *cobra.Command, st *store.Store, dir, image string) (string, int64, error) {
	id, cm, err := client.Commit(c.Context(), st, dir, client.CommitOptions{Image: image, Message: image})
	if err != nil {
		return "", 0, err
	}
	return id.String(), cm.Stats.Files, nil
}

// reinstallLocal orders each node's agent to put the installer into its
// bootloader for one boot (or kexec it) and reboot, and says what each
// did; nodes that did not answer or failed are named in the error.
func (e *env) reinstallLocal(ctx context.Context, names []string, o fleet.Order, timeout time.Duration) error {
	f := e.fleet()
	if f == nil {
		return errors.New("node reinstall --local: no sim serve is running on this store: the order goes to the nodes' agents through it (start it: sim serve --netboot DIR)")
	}
	res := f.AskOrder(ctx, names, o, timeout)
	var failed []string
	for _, n := range names {
		r := res[n]
		switch {
		case r == nil:
			failed = append(failed, n)
			fmt.Fprintf(e.stderr, "%s: no answer\n", n)
		case !r.OK:
			failed = append(failed, n)
			fmt.Fprintf(e.stderr, "%s\n", r.Error)
		default:
			fmt.Fprintf(e.stdout, "%s: %s\n", n, r.Message)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("node reinstall --local: %d of %d nodes not set to reinstall: %s", len(failed), len(names), strings.Join(failed, ", "))
	}
	return nil
}
