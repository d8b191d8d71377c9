package catalog

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Registering a cluster, not a node: ranges of nodes with consecutive
// MACs and addresses, imports of the lists sites already have (a CSV, the
// DHCP server's leases: SystemImager's si_mkdhcpstatic), /etc/hosts, and
// the netboot switch to local boot after an install.

// MACPlus is the MAC i after mac (52:54:00:00:00:ff plus 1 is
// 52:54:00:00:01:00), or an error when it would leave the 48 bits.
func MACPlus(mac string, i int) (string, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("invalid MAC address %q: want six hex bytes like 52:54:00:12:34:56", mac)
	}
	var b [8]byte
	copy(b[2:], hw)
	v := binary.BigEndian.Uint64(b[:]) + uint64(i)
	if i < 0 || v >= 1<<48 {
		return "", fmt.Errorf("MAC %s plus %d is past ff:ff:ff:ff:ff:ff", mac, i)
	}
	binary.BigEndian.PutUint64(b[:], v)
	return net.HardwareAddr(b[2:]).String(), nil
}

// AddrPlus is the address i after cidr's, with the same prefix
// (198.18.1.10/24 plus 5 is 198.18.1.15/24), or an error when it leaves
// the prefix or is its broadcast address.
func AddrPlus(cidr string, i int) (string, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() {
		return "", fmt.Errorf("invalid IP %q: want an IPv4 address with its prefix, like 198.18.0.11/24", cidr)
	}
	a4 := p.Addr().As4()
	v := uint64(binary.BigEndian.Uint32(a4[:])) + uint64(i)
	if i < 0 || v >= 1<<32 {
		return "", fmt.Errorf("%s plus %d is past 255.255.255.255", cidr, i)
	}
	binary.BigEndian.PutUint32(a4[:], uint32(v))
	a := netip.AddrFrom4(a4)
	if !p.Masked().Contains(a) {
		return "", fmt.Errorf("%s plus %d (%s) is outside %s", cidr, i, a, p.Masked())
	}
	if bits := p.Bits(); bits <= 30 {
		host := ^uint32(0) >> bits
		if uint32(v)&host == host {
			return "", fmt.Errorf("%s plus %d (%s) is the broadcast address of %s", cidr, i, a, p.Masked())
		}
	}
	return netip.PrefixFrom(a, p.Bits()).String(), nil
}

// csvColumns are the columns a node list's CSV may have, in the order a
// CSV without a header line gives them.
var csvColumns = []string{"name", "mac", "ip", "gateway", "after"}

// ParseNodeList reads the nodes of a site's list, as sim node import
// does: a CSV of name,mac[,ip[,gateway[,after]]] (lines starting with #
// are skipped; a header line starting with "name" names the columns, in
// any order, from csvColumns), or a dnsmasq leases file ("EXPIRY MAC IP
// HOSTNAME CLIENT-ID" per line; its addresses get prefix bits, which a
// lease does not carry). A bad line is an error naming file and line.
func ParseNodeList(r io.Reader, file string, prefix int) ([]*Node, error) {
	var out []*Node
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	leases := -1 // unknown until the first line that counts
	cols := csvColumns
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%s:%d: %s", file, line, fmt.Sprintf(format, a...))
		}
		if leases < 0 {
			f := strings.Fields(text)
			_, err := strconv.ParseInt(f[0], 10, 64)
			leases = 0
			if len(f) >= 4 && err == nil && !strings.Contains(text, ",") {
				leases = 1
			}
			if leases == 0 && strings.EqualFold(strings.TrimSpace(strings.Split(text, ",")[0]), "name") {
				// The CSV's header: it says which column is which,
				// so a site's own export needs no reordering.
				cols = nil
				seen := map[string]bool{}
				for _, h := range strings.Split(text, ",") {
					h = strings.ToLower(strings.TrimSpace(h))
					known := false
					for _, c := range csvColumns {
						known = known || c == h
					}
					if !known {
						return nil, bad("unknown column %q in the header: want %s", h, strings.Join(csvColumns, ", "))
					}
					if seen[h] {
						return nil, bad("column %q twice in the header", h)
					}
					seen[h] = true
					cols = append(cols, h)
				}
				if !seen["mac"] {
					return nil, bad("the header has no mac column: a node is recognised by its MAC")
				}
				continue
			}
		}
		var n *Node
		if leases == 1 {
			f := strings.Fields(text)
			if len(f) < 4 {
				return nil, bad("a dnsmasq lease has EXPIRY MAC IP HOSTNAME [CLIENT-ID], not %q", text)
			}
			if f[3] == "*" {
				return nil, bad("the lease of %s (%s) has no hostname: name it in a CSV instead", f[1], f[2])
			}
			if prefix < 1 || prefix > 32 {
				return nil, bad("a lease's address needs prefix bits (--prefix 24)")
			}
			n = &Node{Name: f[3], MAC: f[1], IP: fmt.Sprintf("%s/%d", f[2], prefix)}
		} else {
			f := strings.Split(text, ",")
			for i := range f {
				f[i] = strings.TrimSpace(f[i])
			}
			if len(f) < 2 || len(f) > len(cols) {
				return nil, bad("want %s, not %q", columnsUsage(cols), text)
			}
			n = &Node{}
			for i, v := range f {
				switch cols[i] {
				case "name":
					n.Name = v
				case "mac":
					n.MAC = v
				case "ip":
					n.IP = v
				case "gateway":
					n.Gateway = v
				case "after":
					n.After = strings.ToLower(v)
				}
			}
			if n.Name == "" {
				return nil, bad("no node name in %q", text)
			}
			if n.IP != "" && !strings.Contains(n.IP, "/") {
				if prefix < 1 || prefix > 32 {
					return nil, bad("IP %s has no /prefix (write 198.18.0.11/24, or give --prefix)", n.IP)
				}
				n.IP = fmt.Sprintf("%s/%d", n.IP, prefix)
			}
		}
		n.Name = strings.ToLower(n.Name)
		if err := n.Check(); err != nil {
			return nil, bad("%v", err)
		}
		out = append(out, n)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return out, nil
}

// columnsUsage is what a CSV line of cols looks like: name,mac[,ip[,…]].
func columnsUsage(cols []string) string {
	if len(cols) <= 2 {
		return strings.Join(cols, ",")
	}
	return strings.Join(cols[:2], ",") + "[," + strings.Join(cols[2:], "[,") + strings.Repeat("]", len(cols)-2)
}

// RemoveGroup drops group name. While nodes are in it that is refused,
// naming them, unless force, which takes the group off them too.
func (r *Registry) RemoveGroup(name string, force bool) error {
	if r.Groups[name] == nil {
		return fmt.Errorf("no group %q", name)
	}
	var members []string
	for _, n := range r.Nodes {
		for _, g := range n.Groups {
			if g == name {
				members = append(members, n.Name)
			}
		}
	}
	sort.Strings(members)
	if len(members) > 0 && !force {
		shown := members
		if len(shown) > 8 {
			shown = append(shown[:8:8], fmt.Sprintf("and %d more", len(members)-8))
		}
		return fmt.Errorf("group %s still has %d nodes (%s): move them first, or --force takes the group off them", name, len(members), strings.Join(shown, ", "))
	}
	for _, n := range r.Nodes {
		kept := n.Groups[:0]
		for _, g := range n.Groups {
			if g != name {
				kept = append(kept, g)
			}
		}
		n.Groups = kept
	}
	delete(r.Groups, name)
	return nil
}

// Hosts is an /etc/hosts block for the nodes with a static address, in
// address order: "198.18.1.1 n001.DOMAIN n001" (no domain: the name).
func (r *Registry) Hosts(domain string) string {
	type host struct {
		a    netip.Addr
		name string
	}
	var hs []host
	for _, n := range r.Nodes {
		if p, err := netip.ParsePrefix(n.IP); err == nil {
			hs = append(hs, host{p.Addr(), n.Name})
		}
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].a.Less(hs[j].a) })
	var b strings.Builder
	for _, h := range hs {
		if domain != "" {
			fmt.Fprintf(&b, "%s\t%s.%s %s\n", h.a, h.name, strings.Trim(domain, "."), h.name)
		} else {
			fmt.Fprintf(&b, "%s\t%s\n", h.a, h.name)
		}
	}
	return b.String()
}

// NetbootsToInstall says whether node n, whose last finished install
// ended at done (zero: never), installs when it netboots: yes until an
// install has succeeded, then no (it boots its disk) until an admin asks
// for a reinstall after that install (sim node reinstall). Without
// this, a node set to netboot first would reinstall forever
// (SystemImager's si_netbootmond switched such nodes to local boot).
func (n *Node) NetbootsToInstall(done time.Time) bool {
	if done.IsZero() {
		return true
	}
	return n.Reinstall != nil && n.Reinstall.After(done)
}
