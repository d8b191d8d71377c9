// Package netcfg is a node's network as sim describes it (Spec: NICs,
// bonds, VLANs, static IPv4/IPv6 addresses, DHCP, MTU, DNS, or
// SystemImager's "replicant": leave the image's configuration alone) and
// its rendering in the network stack an image uses: systemd-networkd,
// NetworkManager keyfiles, ifupdown's /etc/network/interfaces, netplan.
package netcfg

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// Spec is a node's network. The zero Spec (no links) leaves the network
// to the image, as does Replicant.
type Spec struct {
	// Replicant leaves the image's network configuration exactly as it
	// is (SystemImager's IP_ASSIGNMENT_METHOD=replicant).
	Replicant bool     `json:"replicant,omitempty"`
	Links     []Link   `json:"links,omitempty"`
	DNS       []string `json:"dns,omitempty"`
	Search    []string `json:"search,omitempty"`
}

// Link is one interface: a NIC (matched by MAC, else by name), a bond of
// NICs, or a VLAN on another link.
type Link struct {
	// Name is the interface name (eth0, bond0, bond0.100); "" only in
	// the one-NIC spec of a node record without a network spec (any
	// en*/eth* interface, or its MAC).
	Name     string   `json:"name"`
	MAC      string   `json:"mac,omitempty"`
	Slaves   []string `json:"slaves,omitempty"` // a bond of these NICs
	BondMode string   `json:"bond_mode,omitempty"`
	VLAN     int      `json:"vlan,omitempty"` // a VLAN of this ID on Parent
	Parent   string   `json:"parent,omitempty"`
	Addrs    []string `json:"addrs,omitempty"` // IPv4 and IPv6, CIDR
	DHCP     bool     `json:"dhcp,omitempty"`  // DHCPv4 and IPv6 autoconfiguration
	Gateway  string   `json:"gateway,omitempty"`
	Gateway6 string   `json:"gateway6,omitempty"`
	MTU      int      `json:"mtu,omitempty"`
}

// Kinds of a Link.
const (
	KindNIC  = "nic"
	KindBond = "bond"
	KindVLAN = "vlan"
)

// Kind is KindNIC, KindBond or KindVLAN.
func (l *Link) Kind() string {
	switch {
	case len(l.Slaves) > 0:
		return KindBond
	case l.VLAN != 0:
		return KindVLAN
	}
	return KindNIC
}

// IPoIB says whether the link is an InfiniBand NIC (ib0, ib1, …): named,
// not matched by MAC (an IPoIB hardware address is 20 bytes), and an
// infiniband connection for NetworkManager.
func (l *Link) IPoIB() bool {
	if l.Kind() != KindNIC || !strings.HasPrefix(l.Name, "ib") || len(l.Name) < 3 {
		return false
	}
	_, err := strconv.Atoi(l.Name[2:])
	return err == nil
}

// Static says whether the spec gives any link a static address: what an
// image whose network stack sim does not know cannot be given.
func (s *Spec) Static() bool {
	for _, l := range s.Links {
		if len(l.Addrs) > 0 {
			return true
		}
	}
	return false
}

// Primary is the first IPv4 address of the spec (CIDR) and its link's
// gateway: what /etc/hosts, dnsmasq's dhcp-host and the duplicate check
// of a node record take as the node's IP. "" when it has none.
func (s *Spec) Primary() (ip, gw string) {
	for _, l := range s.Links {
		for _, a := range l.Addrs {
			if p, err := netip.ParsePrefix(a); err == nil && p.Addr().Is4() {
				return a, l.Gateway
			}
		}
	}
	return "", ""
}

// Managed says whether sim writes the node's network config at all.
func (s *Spec) Managed() bool { return s != nil && !s.Replicant && len(s.Links) > 0 }

// Master is the bond link name enslaves, or "".
func (s *Spec) Master(name string) string {
	for _, l := range s.Links {
		for _, m := range l.Slaves {
			if m == name && name != "" {
				return l.Name
			}
		}
	}
	return ""
}

// VLANsOn are the VLAN links whose parent is name.
func (s *Spec) VLANsOn(name string) []string {
	var out []string
	for _, l := range s.Links {
		if l.Kind() == KindVLAN && l.Parent == name {
			out = append(out, l.Name)
		}
	}
	return out
}

// Legacy is the spec of a node record with only mac/ip/gateway: one NIC
// (by MAC, else any en*/eth*), static with ip, else DHCP.
func Legacy(mac, ip, gw string) *Spec {
	l := Link{MAC: mac, Gateway: gw}
	if ip != "" {
		l.Addrs = []string{ip}
	} else {
		l.DHCP = true
		l.Gateway = ""
	}
	return &Spec{Links: []Link{l}}
}

var ifaceRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$`)

// BondModes are the Linux bonding modes a bond may name.
var BondModes = []string{"balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb"}

// Check validates the spec and normalises its MACs; errors name the link
// and the value at fault.
func (s *Spec) Check() error {
	names := map[string]*Link{}
	gw4, gw6 := "", ""
	for i := range s.Links {
		l := &s.Links[i]
		at := "link " + strconv.Quote(l.Name)
		if l.Name == "" {
			if len(s.Links) > 1 {
				return fmt.Errorf("network: link %d has no name (every link of a multi-link spec is named: eth0, bond0, bond0.100)", i+1)
			}
			at = "the node's NIC"
		} else if !ifaceRe.MatchString(l.Name) {
			return fmt.Errorf("network: invalid interface name %q: letters, digits, . _ - :, at most 15", l.Name)
		}
		if names[l.Name] != nil {
			return fmt.Errorf("network: %s given twice", at)
		}
		names[l.Name] = l
		if l.MAC != "" && l.IPoIB() {
			return fmt.Errorf("network: %s: IPoIB links are matched by name, not mac=", at)
		}
		if l.MAC != "" {
			hw, err := net.ParseMAC(l.MAC)
			if err != nil || len(hw) != 6 {
				return fmt.Errorf("network: %s: invalid MAC %q", at, l.MAC)
			}
			l.MAC = hw.String()
		}
		if len(l.Slaves) > 0 && l.VLAN != 0 {
			return fmt.Errorf("network: %s is both a bond and a VLAN", at)
		}
		if l.Kind() != KindNIC && l.MAC != "" {
			return fmt.Errorf("network: %s: mac= is for NICs (a bond takes its first slave's)", at)
		}
		if l.Kind() == KindVLAN {
			if l.VLAN < 1 || l.VLAN > 4094 {
				return fmt.Errorf("network: %s: VLAN id %d: want 1-4094", at, l.VLAN)
			}
			if l.Parent == "" {
				return fmt.Errorf("network: %s: a VLAN needs its parent link (link=)", at)
			}
		} else if l.Parent != "" {
			return fmt.Errorf("network: %s: link= is for VLANs (give id= too)", at)
		}
		if l.BondMode != "" {
			if l.Kind() != KindBond {
				return fmt.Errorf("network: %s: mode= is for bonds", at)
			}
			ok := false
			for _, m := range BondModes {
				ok = ok || m == l.BondMode
			}
			if !ok {
				return fmt.Errorf("network: %s: bond mode %q: want one of %s", at, l.BondMode, strings.Join(BondModes, ", "))
			}
		}
		if l.MTU != 0 && (l.MTU < 68 || l.MTU > 65535) {
			return fmt.Errorf("network: %s: MTU %d: want 68-65535", at, l.MTU)
		}
		for _, a := range l.Addrs {
			if _, err := netip.ParsePrefix(a); err != nil {
				return fmt.Errorf("network: %s: invalid address %q: want an address with its prefix, like 198.18.0.11/24 or 2001:db8::11/64", at, a)
			}
		}
		for _, g := range []struct {
			v    string
			v4   bool
			seen *string
		}{{l.Gateway, true, &gw4}, {l.Gateway6, false, &gw6}} {
			if g.v == "" {
				continue
			}
			a, err := netip.ParseAddr(g.v)
			if err != nil || a.Is4() != g.v4 {
				return fmt.Errorf("network: %s: invalid %s gateway %q", at, map[bool]string{true: "IPv4", false: "IPv6"}[g.v4], g.v)
			}
			if *g.seen != "" {
				return fmt.Errorf("network: %s: a second default gateway (%s has one)", at, *g.seen)
			}
			*g.seen = l.Name
			if *g.seen == "" {
				*g.seen = "the node's NIC"
			}
		}
	}
	for _, l := range s.Links {
		for _, m := range l.Slaves {
			sl := names[m]
			if sl == nil {
				return fmt.Errorf("network: bond %q: slave %q is no link of the spec (add: nic %s mac=…)", l.Name, m, m)
			}
			if sl.Kind() != KindNIC {
				return fmt.Errorf("network: bond %q: slave %q is not a NIC", l.Name, m)
			}
			if len(sl.Addrs) > 0 || sl.DHCP || sl.Gateway != "" || sl.Gateway6 != "" {
				return fmt.Errorf("network: bond %q: slave %q has addresses of its own (give them to the bond)", l.Name, m)
			}
			if o := s.Master(m); o != l.Name {
				return fmt.Errorf("network: NIC %q is a slave of both %q and %q", m, o, l.Name)
			}
		}
		if l.Kind() == KindVLAN && names[l.Parent] == nil {
			return fmt.Errorf("network: VLAN %q: its link %q is no link of the spec", l.Name, l.Parent)
		}
	}
	for _, d := range s.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return fmt.Errorf("network: invalid DNS server %q", d)
		}
	}
	for _, d := range s.Search {
		if d == "" || strings.ContainsAny(d, " \t,;") {
			return fmt.Errorf("network: invalid search domain %q", d)
		}
	}
	return nil
}

// Parse reads the text form of a spec (README "Network specs"): lines
// (or ';'-separated statements), '#' comments:
//
//	nic eth0 mac=52:54:00:12:34:56 ip=198.18.0.11/24 ip=2001:db8::11/64 gw=198.18.0.1 mtu=9000
//	nic eth1 mac=52:54:00:12:34:57
//	nic eth2 mac=52:54:00:12:34:58
//	bond bond0 slaves=eth1,eth2 mode=802.3ad mtu=9000
//	vlan bond0.100 link=bond0 id=100 ip=198.19.0.11/24
//	nic ib0 dhcp
//	dns 198.18.0.1 2001:db8::53
//	search cluster.example
//	replicant
func Parse(text string) (*Spec, error) {
	s := &Spec{}
	n := 0
	for _, line := range strings.Split(strings.ReplaceAll(text, ";", "\n"), "\n") {
		n++
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		at := func(format string, a ...any) error {
			return fmt.Errorf("network spec line %d (%q): %s", n, strings.TrimSpace(line), fmt.Sprintf(format, a...))
		}
		switch f[0] {
		case "replicant":
			if len(f) != 1 {
				return nil, at("replicant takes no arguments")
			}
			s.Replicant = true
		case "dns":
			for _, v := range f[1:] {
				s.DNS = append(s.DNS, strings.Split(v, ",")...)
			}
		case "search":
			for _, v := range f[1:] {
				s.Search = append(s.Search, strings.Split(v, ",")...)
			}
		case KindNIC, KindBond, KindVLAN:
			if len(f) < 2 || strings.Contains(f[1], "=") {
				return nil, at("%s needs an interface name first", f[0])
			}
			l := Link{Name: f[1]}
			for _, kv := range f[2:] {
				k, v, _ := strings.Cut(kv, "=")
				var err error
				switch k {
				case "mac":
					l.MAC = v
				case "ip", "addr":
					l.Addrs = append(l.Addrs, v)
				case "gw", "gateway":
					l.Gateway = v
				case "gw6", "gateway6":
					l.Gateway6 = v
				case "dhcp":
					l.DHCP = true
				case "mtu":
					l.MTU, err = strconv.Atoi(v)
				case "slaves":
					l.Slaves = strings.Split(v, ",")
				case "mode":
					l.BondMode = v
				case "link":
					l.Parent = v
				case "id":
					l.VLAN, err = strconv.Atoi(v)
				default:
					return nil, at("unknown key %q (mac ip gw gw6 dhcp mtu slaves mode link id)", k)
				}
				if err != nil {
					return nil, at("%s=%q is not a number", k, v)
				}
			}
			switch {
			case f[0] == KindBond && len(l.Slaves) == 0:
				return nil, at("a bond needs slaves=NIC,NIC")
			case f[0] == KindVLAN && (l.VLAN == 0 || l.Parent == ""):
				return nil, at("a vlan needs link=PARENT and id=N")
			case f[0] == KindNIC && (len(l.Slaves) > 0 || l.VLAN != 0):
				return nil, at("slaves= and id= are for bond and vlan lines")
			}
			s.Links = append(s.Links, l)
		default:
			return nil, at("unknown statement %q (nic, bond, vlan, dns, search, replicant)", f[0])
		}
	}
	if err := s.Check(); err != nil {
		return nil, err
	}
	return s, nil
}

// String is the spec's text form, which Parse reads back.
func (s *Spec) String() string {
	var b strings.Builder
	for _, l := range s.Links {
		fmt.Fprintf(&b, "%s %s", l.Kind(), l.Name)
		if l.MAC != "" {
			fmt.Fprintf(&b, " mac=%s", l.MAC)
		}
		if len(l.Slaves) > 0 {
			fmt.Fprintf(&b, " slaves=%s", strings.Join(l.Slaves, ","))
		}
		if l.BondMode != "" {
			fmt.Fprintf(&b, " mode=%s", l.BondMode)
		}
		if l.VLAN != 0 {
			fmt.Fprintf(&b, " link=%s id=%d", l.Parent, l.VLAN)
		}
		for _, a := range l.Addrs {
			fmt.Fprintf(&b, " ip=%s", a)
		}
		if l.Gateway != "" {
			fmt.Fprintf(&b, " gw=%s", l.Gateway)
		}
		if l.Gateway6 != "" {
			fmt.Fprintf(&b, " gw6=%s", l.Gateway6)
		}
		if l.DHCP {
			b.WriteString(" dhcp")
		}
		if l.MTU != 0 {
			fmt.Fprintf(&b, " mtu=%d", l.MTU)
		}
		b.WriteString("\n")
	}
	if len(s.DNS) > 0 {
		fmt.Fprintf(&b, "dns %s\n", strings.Join(s.DNS, " "))
	}
	if len(s.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(s.Search, " "))
	}
	if s.Replicant {
		b.WriteString("replicant\n")
	}
	return b.String()
}

// Shift returns a copy of s for the i-th node of a range: every static
// address and every MAC moved on by i (the range's first node has s).
func (s *Spec) Shift(i int) (*Spec, error) {
	c := *s
	c.Links = make([]Link, len(s.Links))
	for j, l := range s.Links {
		l.Addrs = append([]string(nil), l.Addrs...)
		for k, a := range l.Addrs {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("network: link %q: invalid address %q", l.Name, a)
			}
			ad := p.Addr()
			for n := 0; n < i; n++ {
				ad = ad.Next()
			}
			if !ad.IsValid() || !p.Masked().Contains(ad) {
				return nil, fmt.Errorf("network: link %q: %s plus %d is outside %s", l.Name, a, i, p.Masked())
			}
			if ad.Is4() && p.Bits() <= 30 && i > 0 {
				if b := ad.As4(); (uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]))|^(^uint32(0)>>p.Bits()) == ^uint32(0) {
					return nil, fmt.Errorf("network: link %q: %s plus %d (%s) is the broadcast address of %s", l.Name, a, i, ad, p.Masked())
				}
			}
			l.Addrs[k] = netip.PrefixFrom(ad, p.Bits()).String()
		}
		if l.MAC != "" {
			hw, err := net.ParseMAC(l.MAC)
			if err != nil || len(hw) != 6 {
				return nil, fmt.Errorf("network: link %q: invalid MAC %q", l.Name, l.MAC)
			}
			var v uint64
			for _, b := range hw {
				v = v<<8 | uint64(b)
			}
			v += uint64(i)
			if v >= 1<<48 {
				return nil, fmt.Errorf("network: link %q: %s plus %d is past ff:ff:ff:ff:ff:ff", l.Name, l.MAC, i)
			}
			for b := 5; b >= 0; b-- {
				hw[b] = byte(v)
				v >>= 8
			}
			l.MAC = hw.String()
		}
		c.Links[j] = l
	}
	return &c, nil
}
