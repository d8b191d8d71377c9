package install

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/client/netcfg"
)

// netSpec is every feature at once: two NICs bonded, a VLAN on the bond,
// a NIC with static IPv4 and IPv6, DNS, MTU.
const netSpec = `nic eth0 mac=52:54:00:12:34:56 ip=198.18.0.11/24 ip=2001:db8::11/64 gw=198.18.0.1 gw6=2001:db8::1
nic eth1 mac=52:54:00:12:34:57
nic eth2 mac=52:54:00:12:34:58
bond bond0 slaves=eth1,eth2 mode=802.3ad mtu=9000
vlan bond0.100 link=bond0 id=100 ip=198.19.0.11/24
nic ib0 ip=198.20.0.11/16 mtu=65520
dns 198.18.0.1 2001:db8::53
search cluster.example
`

// TestNetworkStacks writes one spec into trees that have each stack's
// markers (as Debian, Ubuntu and RHEL images have them) and checks the
// files the installer leaves there.
func TestNetworkStacks(t *testing.T) {
	spec, err := netcfg.Parse(netSpec)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, stack string
		tree        map[string]string
		want        map[string][]string // file: lines it must hold
		mode        map[string]os.FileMode
		absent      []string
	}{
		{
			name: "networkd", stack: netcfg.Networkd,
			tree: map[string]string{"lib/systemd/system/systemd-networkd.service": "[Unit]\n"},
			want: map[string][]string{
				"etc/systemd/network/10-sim-eth0.network":      {"MACAddress=52:54:00:12:34:56", "Address=198.18.0.11/24", "Address=2001:db8::11/64", "Gateway=198.18.0.1", "Gateway=2001:db8::1", "DNS=198.18.0.1", "DNS=2001:db8::53", "Domains=cluster.example"},
				"etc/systemd/network/10-sim-eth1.network":      {"MACAddress=52:54:00:12:34:57", "Bond=bond0"},
				"etc/systemd/network/10-sim-bond0.netdev":      {"Name=bond0", "Kind=bond", "Mode=802.3ad", "MTUBytes=9000"},
				"etc/systemd/network/10-sim-bond0.network":     {"Name=bond0", "VLAN=bond0.100"},
				"etc/systemd/network/10-sim-bond0.100.netdev":  {"Name=bond0.100", "Kind=vlan", "Id=100"},
				"etc/systemd/network/10-sim-bond0.100.network": {"Name=bond0.100", "Address=198.19.0.11/24"},
				"etc/systemd/network/10-sim-ib0.network":       {"Name=ib0", "MTUBytes=65520", "Address=198.20.0.11/16"},
			},
		},
		{
			name: "NetworkManager (RHEL)", stack: netcfg.NetworkManager,
			tree: map[string]string{
				"usr/lib/systemd/system/systemd-networkd.service":                   "[Unit]\n",
				"usr/sbin/NetworkManager":                                           "#!/bin/sh\n",
				"etc/systemd/system/multi-user.target.wants/NetworkManager.service": "[Unit]\n",
			},
			want: map[string][]string{
				"etc/NetworkManager/system-connections/sim-eth0.nmconnection":      {"type=ethernet", "mac-address=52:54:00:12:34:56", "[ipv4]", "method=manual", "address1=198.18.0.11/24", "gateway=198.18.0.1", "dns=198.18.0.1;", "dns-search=cluster.example;", "[ipv6]", "address1=2001:db8::11/64", "gateway=2001:db8::1", "dns=2001:db8::53;"},
				"etc/NetworkManager/system-connections/sim-eth1.nmconnection":      {"master=bond0", "slave-type=bond", "mac-address=52:54:00:12:34:57"},
				"etc/NetworkManager/system-connections/sim-bond0.nmconnection":     {"type=bond", "interface-name=bond0", "mode=802.3ad", "mtu=9000", "method=disabled"},
				"etc/NetworkManager/system-connections/sim-bond0.100.nmconnection": {"type=vlan", "id=100", "parent=bond0", "address1=198.19.0.11/24"},
				"etc/NetworkManager/system-connections/sim-ib0.nmconnection":       {"type=infiniband", "interface-name=ib0", "transport-mode=datagram", "mtu=65520", "address1=198.20.0.11/16"},
			},
			mode:   map[string]os.FileMode{"etc/NetworkManager/system-connections/sim-eth0.nmconnection": 0o600},
			absent: []string{"etc/systemd/network/10-sim-eth0.network"},
		},
		{
			name: "ifupdown (Debian)", stack: netcfg.Ifupdown,
			tree: map[string]string{
				"lib/systemd/system/systemd-networkd.service": "[Unit]\n",
				"sbin/ifup":              "#!/bin/sh\n",
				"etc/network/interfaces": "auto lo\niface lo inet loopback\nallow-hotplug ens3\niface ens3 inet dhcp\n",
				"etc/systemd/system/multi-user.target.wants/networking.service": "[Unit]\n",
			},
			want: map[string][]string{
				"etc/network/interfaces": {"iface lo inet loopback", "auto eth0", "iface eth0 inet static", "    address 198.18.0.11/24", "    gateway 198.18.0.1", "iface eth0 inet6 static", "    address 2001:db8::11/64", "    gateway 2001:db8::1",
					"iface eth1 inet manual", "    bond-master bond0", "auto bond0", "    bond-slaves eth1 eth2", "    bond-mode 802.3ad", "    mtu 9000",
					"auto bond0.100", "iface bond0.100 inet static", "    vlan-raw-device bond0", "    address 198.19.0.11/24", "    dns-nameservers 198.18.0.1 2001:db8::53"},
				"etc/resolv.conf": {"search cluster.example", "nameserver 198.18.0.1", "nameserver 2001:db8::53"},
			},
			absent: []string{"etc/systemd/network/10-sim-eth0.network"},
		},
		{
			name: "netplan (Ubuntu)", stack: netcfg.Netplan,
			tree: map[string]string{"usr/sbin/netplan": "#!/bin/sh\n", "lib/systemd/system/systemd-networkd.service": "[Unit]\n"},
			want: map[string][]string{
				"etc/netplan/10-sim.yaml": {"network:", "  version: 2", "  ethernets:", "    eth0:", `        macaddress: "52:54:00:12:34:56"`, "      set-name: eth0",
					`      addresses: ["198.18.0.11/24", "2001:db8::11/64"]`, "        - to: default", "          via: 198.18.0.1", `        addresses: ["198.18.0.1", "2001:db8::53"]`,
					"  bonds:", "    bond0:", `      interfaces: ["eth1", "eth2"]`, "        mode: 802.3ad", "      mtu: 9000", "  vlans:", "    bond0.100:", "      id: 100", "      link: bond0"},
			},
			mode: map[string]os.FileMode{"etc/netplan/10-sim.yaml": 0o600},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for p, body := range c.tree {
				write(t, filepath.Join(root, p), body, 0o755)
			}
			if s, _ := netcfg.Detect(root); s != c.stack {
				t.Fatalf("detected %q; want %q", s, c.stack)
			}
			cfg := &Config{Node: "n1", Hostname: "n1", MAC: "52:54:00:12:34:56", Network: spec}
			wrote, err := Identity(root, cfg)
			if err != nil {
				t.Fatal(err)
			}
			for f, lines := range c.want {
				b, err := os.ReadFile(filepath.Join(root, f))
				if err != nil {
					t.Errorf("%s not written (wrote %v)", f, wrote)
					continue
				}
				have := map[string]bool{}
				for _, l := range strings.Split(string(b), "\n") {
					have[l] = true
				}
				for _, l := range lines {
					if !have[l] {
						t.Errorf("%s lacks the line %q:\n%s", f, l, b)
					}
				}
			}
			for f, m := range c.mode {
				if fi, err := os.Stat(filepath.Join(root, f)); err != nil || fi.Mode().Perm() != m {
					t.Errorf("%s: mode %v, want %v (%v)", f, fi.Mode().Perm(), m, err)
				}
			}
			for _, f := range c.absent {
				if _, err := os.Stat(filepath.Join(root, f)); err == nil {
					t.Errorf("%s written for an image using %s", f, c.stack)
				}
			}
			// The same identity again changes nothing.
			if again, err := Identity(root, cfg); err != nil || len(again) != 0 {
				t.Errorf("re-applied: wrote %v, %v; want nothing", again, err)
			}
			// Replicant: nothing network is written or removed.
			wrote, err = Identity(root, &Config{Node: "n1", Hostname: "n1", Network: &netcfg.Spec{Replicant: true}})
			if err != nil || len(wrote) != 0 {
				t.Errorf("replicant changed %v (%v)", wrote, err)
			}
		})
	}
}

// TestNetworkReplicantAndUnknown: replicant leaves an image's files byte
// for byte; a static address for an image of no known stack fails,
// naming it; DHCP there leaves the image alone.
func TestNetworkReplicantAndUnknown(t *testing.T) {
	root := t.TempDir()
	image := map[string]string{
		"usr/sbin/NetworkManager":                                   "#!/bin/sh\n",
		"etc/NetworkManager/system-connections/golden.nmconnection": "[connection]\nid=golden\ntype=ethernet\n[ipv4]\nmethod=manual\naddress1=198.18.0.5/24\n",
	}
	for p, b := range image {
		write(t, filepath.Join(root, p), b, 0o600)
	}
	spec, _ := netcfg.Parse("replicant")
	wrote, err := Identity(root, &Config{Node: "n1", Hostname: "n1", IP: "198.18.0.9/24", Network: spec})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range wrote {
		if p != "/"+HostnameFile && p != "/"+HostsFile {
			t.Errorf("replicant wrote %s", p)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, netcfg.NMDir)); len(ents) != 1 {
		t.Errorf("replicant: connections %v", ents)
	}

	bare := t.TempDir()
	_, err = Identity(bare, &Config{Node: "n7", Hostname: "n7", IP: "198.18.0.7/24"})
	if !errors.Is(err, netcfg.ErrUnknownStack) || !strings.Contains(err.Error(), "node n7") || !strings.Contains(err.Error(), "198.18.0.7/24") {
		t.Errorf("static IP on an image without a known stack: %v", err)
	}
	if _, err := Identity(bare, &Config{Node: "n7", Hostname: "n7"}); err != nil {
		t.Errorf("DHCP on an image without a known stack: %v", err)
	}
	// ifupdown needs names: a nameless static NIC is refused, naming why.
	ifup := t.TempDir()
	write(t, filepath.Join(ifup, "sbin/ifup"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(ifup, "etc/network/interfaces"), "auto lo\n", 0o644)
	if _, err := Identity(ifup, &Config{Node: "n8", Hostname: "n8", IP: "198.18.0.8/24"}); err == nil || !strings.Contains(err.Error(), "ifupdown names its interfaces") {
		t.Errorf("nameless static NIC on ifupdown: %v", err)
	}
}

// TestNetworkSpecChange: a NIC taken out of the spec loses its file.
func TestNetworkSpecChange(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "lib/systemd/system/systemd-networkd.service"), "[Unit]\n", 0o644)
	two, _ := netcfg.Parse("nic eth0 dhcp\nnic eth1 ip=198.18.1.1/24")
	one, _ := netcfg.Parse("nic eth0 dhcp")
	if _, err := Identity(root, &Config{Node: "n1", Network: two}); err != nil {
		t.Fatal(err)
	}
	wrote, err := Identity(root, &Config{Node: "n1", Network: one})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/systemd/network/10-sim-eth1.network")); err == nil || len(wrote) != 1 {
		t.Errorf("eth1's file stayed after it left the spec (wrote %v)", wrote)
	}
}
