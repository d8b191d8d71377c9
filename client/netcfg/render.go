package netcfg

import (
	"crypto/sha1"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// The network stacks sim writes.
const (
	Networkd       = "systemd-networkd"
	NetworkManager = "NetworkManager"
	Ifupdown       = "ifupdown"
	Netplan        = "netplan"
)

// Where each stack's files go (relative to the root).
const (
	NetworkdDir  = "etc/systemd/network"
	NMDir        = "etc/NetworkManager/system-connections"
	Interfaces   = "etc/network/interfaces"
	NetplanFile  = "etc/netplan/10-sim.yaml"
	ResolvConf   = "etc/resolv.conf"
	networkdWant = "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
)

// Owned are the patterns (relative to the root) of every file Render may
// write: what an update of a running node keeps as the node's.
var Owned = []string{NetworkdDir + "/10-sim*", NMDir + "/sim-*", Interfaces, NetplanFile, networkdWant}

// ErrUnknownStack is wrapped by Render when the image has none of the
// stacks sim knows and the spec has static addresses.
var ErrUnknownStack = errors.New("unknown network stack")

// File is one file Render writes: Content with Mode, or, with Link, a
// symlink to Link.
type File struct {
	Path    string // relative to the root
	Content string
	Mode    os.FileMode
	Link    string
}

func exists(root, rel string) bool {
	_, err := os.Lstat(filepath.Join(root, rel))
	return err == nil
}

func anyOf(root string, rels ...string) string {
	for _, r := range rels {
		if exists(root, r) {
			return "/" + r
		}
	}
	return ""
}

const wants = "etc/systemd/system/multi-user.target.wants/"

// Detect names the network stack the image in root uses, and why: netplan
// when it has netplan (Ubuntu: it renders for networkd or
// NetworkManager); else the one whose service is enabled
// (NetworkManager, systemd-networkd, ifupdown's networking); else the
// one installed (NetworkManager, ifupdown with /etc/network/interfaces,
// systemd-networkd). "" when none.
func Detect(root string) (stack, why string) {
	if p := anyOf(root, "usr/sbin/netplan", "usr/bin/netplan"); p != "" {
		return Netplan, p
	}
	if exists(root, wants+"NetworkManager.service") {
		return NetworkManager, "/" + wants + "NetworkManager.service"
	}
	if exists(root, wants+"systemd-networkd.service") {
		return Networkd, "/" + wants + "systemd-networkd.service"
	}
	ifup := anyOf(root, "sbin/ifup", "usr/sbin/ifup")
	if exists(root, wants+"networking.service") && ifup != "" {
		return Ifupdown, "/" + wants + "networking.service"
	}
	if p := anyOf(root, "usr/sbin/NetworkManager", "sbin/NetworkManager"); p != "" {
		return NetworkManager, p
	}
	if ifup != "" && exists(root, Interfaces) {
		return Ifupdown, ifup
	}
	if p := networkdUnit(root); p != "" {
		return Networkd, p
	}
	return "", ""
}

func networkdUnit(root string) string {
	return anyOf(root, "lib/systemd/system/systemd-networkd.service", "usr/lib/systemd/system/systemd-networkd.service")
}

// Render is spec in stack for the image in root: the files to write.
// An unmanaged spec (replicant, no links) writes nothing; so does a
// nameless DHCP NIC on ifupdown (the image's own interfaces says more
// than sim knows). A static address sim cannot write is an error naming
// the stack: never silently dropped.
func Render(root, stack string, s *Spec) ([]File, error) {
	if !s.Managed() {
		return nil, nil
	}
	if err := s.Check(); err != nil {
		return nil, err
	}
	switch stack {
	case Networkd:
		return renderNetworkd(root, s), nil
	case NetworkManager:
		return renderNM(s), nil
	case Ifupdown:
		return renderIfupdown(root, s)
	case Netplan:
		return renderNetplan(s), nil
	case "":
		if s.Static() {
			return nil, fmt.Errorf("%w: the image has none of systemd-networkd, NetworkManager, ifupdown, netplan, and the node has a static address (%s): install one in the image, or give the node the replicant policy", ErrUnknownStack, firstAddr(s))
		}
		return nil, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownStack, stack)
}

func firstAddr(s *Spec) string {
	for _, l := range s.Links {
		if len(l.Addrs) > 0 {
			return l.Addrs[0]
		}
	}
	return ""
}

func split(addrs []string) (v4, v6 []string) {
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a); err == nil && p.Addr().Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	return
}

// configured: the link carries addresses (neither a bond's slave nor a
// bare VLAN trunk).
func (l *Link) configured() bool { return len(l.Addrs) > 0 || l.DHCP }

func (s *Spec) fileName(l *Link) string {
	if l.Name == "" {
		return "10-sim"
	}
	return "10-sim-" + l.Name
}

func renderNetworkd(root string, s *Spec) []File {
	var out []File
	for i := range s.Links {
		l := &s.Links[i]
		var b strings.Builder
		if l.Kind() != KindNIC {
			fmt.Fprintf(&b, "# written by sim install\n[NetDev]\nName=%s\nKind=%s\n", l.Name, l.Kind())
			if l.MTU != 0 {
				fmt.Fprintf(&b, "MTUBytes=%d\n", l.MTU)
			}
			if l.Kind() == KindBond {
				b.WriteString("\n[Bond]\n")
				if l.BondMode != "" {
					fmt.Fprintf(&b, "Mode=%s\n", l.BondMode)
				}
				b.WriteString("MIIMonitorSec=100ms\n")
			} else {
				fmt.Fprintf(&b, "\n[VLAN]\nId=%d\n", l.VLAN)
			}
			out = append(out, File{Path: NetworkdDir + "/" + s.fileName(l) + ".netdev", Content: b.String(), Mode: 0o644})
			b.Reset()
		}
		b.WriteString("# written by sim install\n[Match]\n")
		switch {
		case l.MAC != "":
			fmt.Fprintf(&b, "MACAddress=%s\n", l.MAC)
		case l.Name != "":
			fmt.Fprintf(&b, "Name=%s\n", l.Name)
		default:
			b.WriteString("Name=en* eth*\n")
		}
		if l.MTU != 0 && l.Kind() == KindNIC {
			fmt.Fprintf(&b, "\n[Link]\nMTUBytes=%d\n", l.MTU)
		}
		b.WriteString("\n[Network]\n")
		if m := s.Master(l.Name); m != "" {
			fmt.Fprintf(&b, "Bond=%s\n", m)
		}
		if l.DHCP {
			b.WriteString("DHCP=yes\n")
		}
		for _, a := range l.Addrs {
			fmt.Fprintf(&b, "Address=%s\n", a)
		}
		if l.Gateway != "" {
			fmt.Fprintf(&b, "Gateway=%s\n", l.Gateway)
		}
		if l.Gateway6 != "" {
			fmt.Fprintf(&b, "Gateway=%s\n", l.Gateway6)
		}
		if l.configured() {
			for _, d := range s.DNS {
				fmt.Fprintf(&b, "DNS=%s\n", d)
			}
			if len(s.Search) > 0 {
				fmt.Fprintf(&b, "Domains=%s\n", strings.Join(s.Search, " "))
			}
		} else if s.Master(l.Name) == "" {
			b.WriteString("LinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n")
		}
		for _, v := range s.VLANsOn(l.Name) {
			fmt.Fprintf(&b, "VLAN=%s\n", v)
		}
		out = append(out, File{Path: NetworkdDir + "/" + s.fileName(l) + ".network", Content: b.String(), Mode: 0o644})
	}
	if unit := networkdUnit(root); unit != "" {
		out = append(out, File{Path: networkdWant, Link: unit})
	}
	return out
}

// nmUUID is a stable UUID for a connection: the same spec writes the
// same files (an unchanged identity changes nothing).
func nmUUID(id string) string {
	h := sha1.Sum([]byte("sim-netcfg:" + id))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

func renderNM(s *Spec) []File {
	var out []File
	for i := range s.Links {
		l := &s.Links[i]
		id := "sim-" + l.Name
		if l.Name == "" {
			id = "sim-net"
		}
		typ := map[string]string{KindNIC: "ethernet", KindBond: "bond", KindVLAN: "vlan"}[l.Kind()]
		ib := l.IPoIB()
		if ib {
			typ = "infiniband"
		}
		var b strings.Builder
		fmt.Fprintf(&b, "# written by sim install\n[connection]\nid=%s\nuuid=%s\ntype=%s\n", id, nmUUID(id), typ)
		if l.Name != "" && (l.Kind() != KindNIC || l.MAC == "" || ib) {
			fmt.Fprintf(&b, "interface-name=%s\n", l.Name)
		}
		b.WriteString("autoconnect=true\nautoconnect-priority=100\n")
		master := s.Master(l.Name)
		if master != "" {
			fmt.Fprintf(&b, "master=%s\nslave-type=bond\n", master)
		}
		if ib {
			b.WriteString("\n[infiniband]\ntransport-mode=datagram\n")
			if l.MTU != 0 {
				fmt.Fprintf(&b, "mtu=%d\n", l.MTU)
			}
		} else if l.MAC != "" || l.MTU != 0 {
			b.WriteString("\n[ethernet]\n")
			if l.MAC != "" {
				fmt.Fprintf(&b, "mac-address=%s\n", strings.ToUpper(l.MAC))
			}
			if l.MTU != 0 {
				fmt.Fprintf(&b, "mtu=%d\n", l.MTU)
			}
		}
		switch l.Kind() {
		case KindBond:
			b.WriteString("\n[bond]\n")
			mode := l.BondMode
			if mode == "" {
				mode = "balance-rr"
			}
			fmt.Fprintf(&b, "miimon=100\nmode=%s\n", mode)
		case KindVLAN:
			fmt.Fprintf(&b, "\n[vlan]\nid=%d\nparent=%s\n", l.VLAN, l.Parent)
		}
		if master == "" {
			v4, v6 := split(l.Addrs)
			for _, fam := range []struct {
				name  string
				addrs []string
				gw    string
				four  bool
			}{{"ipv4", v4, l.Gateway, true}, {"ipv6", v6, l.Gateway6, false}} {
				fmt.Fprintf(&b, "\n[%s]\n", fam.name)
				switch {
				case len(fam.addrs) > 0:
					b.WriteString("method=manual\n")
				case l.DHCP:
					b.WriteString("method=auto\n")
				case fam.four:
					b.WriteString("method=disabled\n")
				default:
					b.WriteString("method=ignore\n")
				}
				for j, a := range fam.addrs {
					fmt.Fprintf(&b, "address%d=%s\n", j+1, a)
				}
				if fam.gw != "" {
					fmt.Fprintf(&b, "gateway=%s\n", fam.gw)
				}
				if l.configured() {
					var dns []string
					for _, d := range s.DNS {
						if a, err := netip.ParseAddr(d); err == nil && a.Is4() == fam.four {
							dns = append(dns, d)
						}
					}
					if len(dns) > 0 {
						fmt.Fprintf(&b, "dns=%s;\n", strings.Join(dns, ";"))
					}
					if len(s.Search) > 0 && fam.four {
						fmt.Fprintf(&b, "dns-search=%s;\n", strings.Join(s.Search, ";"))
					}
				}
			}
		}
		out = append(out, File{Path: NMDir + "/" + id + ".nmconnection", Content: b.String(), Mode: 0o600})
	}
	return out
}

func renderIfupdown(root string, s *Spec) ([]File, error) {
	if len(s.Links) == 1 && s.Links[0].Name == "" {
		if s.Static() {
			return nil, fmt.Errorf("ifupdown names its interfaces: give the node a network spec with the NIC's name (sim node add … --nic 'nic ens3 ip=%s'), or the replicant policy", firstAddr(s))
		}
		return nil, nil
	}
	var b strings.Builder
	b.WriteString("# written by sim install (the node's network spec)\nauto lo\niface lo inet loopback\n")
	for i := range s.Links {
		l := &s.Links[i]
		b.WriteString("\n")
		if l.MAC != "" {
			fmt.Fprintf(&b, "# %s: MAC %s\n", l.Name, l.MAC)
		}
		master := s.Master(l.Name)
		if master == "" {
			fmt.Fprintf(&b, "auto %s\n", l.Name)
		}
		v4, v6 := split(l.Addrs)
		method := "manual"
		switch {
		case len(v4) > 0:
			method = "static"
		case l.DHCP:
			method = "dhcp"
		}
		fmt.Fprintf(&b, "iface %s inet %s\n", l.Name, method)
		for _, a := range v4 {
			fmt.Fprintf(&b, "    address %s\n", a)
		}
		if l.Gateway != "" {
			fmt.Fprintf(&b, "    gateway %s\n", l.Gateway)
		}
		if l.MTU != 0 {
			fmt.Fprintf(&b, "    mtu %d\n", l.MTU)
		}
		if master != "" {
			fmt.Fprintf(&b, "    bond-master %s\n", master)
		}
		if l.Kind() == KindBond {
			fmt.Fprintf(&b, "    bond-slaves %s\n", strings.Join(l.Slaves, " "))
			if l.BondMode != "" {
				fmt.Fprintf(&b, "    bond-mode %s\n", l.BondMode)
			}
			b.WriteString("    bond-miimon 100\n")
		}
		if l.Kind() == KindVLAN {
			fmt.Fprintf(&b, "    vlan-raw-device %s\n", l.Parent)
		}
		if l.configured() {
			if len(s.DNS) > 0 {
				fmt.Fprintf(&b, "    dns-nameservers %s\n", strings.Join(s.DNS, " "))
			}
			if len(s.Search) > 0 {
				fmt.Fprintf(&b, "    dns-search %s\n", strings.Join(s.Search, " "))
			}
		}
		if len(v6) > 0 {
			fmt.Fprintf(&b, "iface %s inet6 static\n", l.Name)
			for _, a := range v6 {
				fmt.Fprintf(&b, "    address %s\n", a)
			}
			if l.Gateway6 != "" {
				fmt.Fprintf(&b, "    gateway %s\n", l.Gateway6)
			}
		} else if l.DHCP {
			fmt.Fprintf(&b, "iface %s inet6 auto\n", l.Name)
		}
	}
	out := []File{{Path: Interfaces, Content: b.String(), Mode: 0o644}}
	// Without resolvconf, dns-nameservers says nothing: resolv.conf
	// itself then, unless something manages it (a symlink).
	if len(s.DNS) > 0 && !exists(root, "sbin/resolvconf") && !exists(root, "usr/sbin/resolvconf") {
		if fi, err := os.Lstat(filepath.Join(root, ResolvConf)); err != nil || fi.Mode().IsRegular() {
			var r strings.Builder
			r.WriteString("# written by sim install\n")
			if len(s.Search) > 0 {
				fmt.Fprintf(&r, "search %s\n", strings.Join(s.Search, " "))
			}
			for _, d := range s.DNS {
				fmt.Fprintf(&r, "nameserver %s\n", d)
			}
			out = append(out, File{Path: ResolvConf, Content: r.String(), Mode: 0o644})
		}
	}
	return out, nil
}

func yamlList(v []string) string {
	q := make([]string, len(v))
	for i, s := range v {
		q[i] = `"` + s + `"`
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func renderNetplan(s *Spec) []File {
	sections := map[string]*strings.Builder{KindNIC: {}, KindBond: {}, KindVLAN: {}}
	for i := range s.Links {
		l := &s.Links[i]
		b := sections[l.Kind()]
		name := l.Name
		if name == "" {
			name = "sim0"
		}
		fmt.Fprintf(b, "    %s:\n", name)
		if l.Kind() == KindNIC {
			switch {
			case l.MAC != "":
				fmt.Fprintf(b, "      match:\n        macaddress: \"%s\"\n", l.MAC)
				if l.Name != "" {
					fmt.Fprintf(b, "      set-name: %s\n", l.Name)
				}
			case l.Name == "":
				b.WriteString("      match:\n        name: \"e*\"\n")
			}
		}
		if l.Kind() == KindBond {
			fmt.Fprintf(b, "      interfaces: %s\n", yamlList(l.Slaves))
			b.WriteString("      parameters:\n")
			if l.BondMode != "" {
				fmt.Fprintf(b, "        mode: %s\n", l.BondMode)
			}
			b.WriteString("        mii-monitor-interval: 100\n")
		}
		if l.Kind() == KindVLAN {
			fmt.Fprintf(b, "      id: %d\n      link: %s\n", l.VLAN, l.Parent)
		}
		if l.MTU != 0 {
			fmt.Fprintf(b, "      mtu: %d\n", l.MTU)
		}
		if s.Master(l.Name) != "" {
			continue
		}
		if l.DHCP {
			b.WriteString("      dhcp4: true\n      dhcp6: true\n")
		} else {
			b.WriteString("      dhcp4: false\n      dhcp6: false\n")
		}
		if len(l.Addrs) > 0 {
			fmt.Fprintf(b, "      addresses: %s\n", yamlList(l.Addrs))
		}
		if l.Gateway != "" || l.Gateway6 != "" {
			b.WriteString("      routes:\n")
			if l.Gateway != "" {
				fmt.Fprintf(b, "        - to: default\n          via: %s\n", l.Gateway)
			}
			if l.Gateway6 != "" {
				fmt.Fprintf(b, "        - to: \"::/0\"\n          via: \"%s\"\n", l.Gateway6)
			}
		}
		if l.configured() && (len(s.DNS) > 0 || len(s.Search) > 0) {
			b.WriteString("      nameservers:\n")
			if len(s.DNS) > 0 {
				fmt.Fprintf(b, "        addresses: %s\n", yamlList(s.DNS))
			}
			if len(s.Search) > 0 {
				fmt.Fprintf(b, "        search: %s\n", yamlList(s.Search))
			}
		}
	}
	var b strings.Builder
	b.WriteString("# written by sim install\nnetwork:\n  version: 2\n")
	for _, k := range []struct{ kind, key string }{{KindNIC, "ethernets"}, {KindBond, "bonds"}, {KindVLAN, "vlans"}} {
		if sec := sections[k.kind].String(); sec != "" {
			fmt.Fprintf(&b, "  %s:\n%s", k.key, sec)
		}
	}
	return []File{{Path: NetplanFile, Content: b.String(), Mode: 0o600}}
}
