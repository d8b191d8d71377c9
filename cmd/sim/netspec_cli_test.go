package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/store"
)

// TestNodeAddNetSpec: sim node add --net / --net-file / --replicant store
// the node's network spec, a range moving its addresses and MACs on;
// bad specs are refused naming the line and the value.
func TestNodeAddNetSpec(t *testing.T) {
	dir := t.TempDir()
	s := filepath.Join(dir, "store")
	ok(t, s, "init")
	writeFiles(t, dir, map[string]string{"n.net": "nic eth0 mac=52:54:00:aa:00:01 ip=198.18.5.1/24 ip=2001:db8:5::1/64 gw=198.18.5.254\n" +
		"nic eth1 mac=52:54:00:bb:00:01\nnic eth2 mac=52:54:00:cc:00:01\nbond bond0 slaves=eth1,eth2 mode=802.3ad mtu=9000\n" +
		"vlan bond0.7 link=bond0 id=7 ip=198.19.7.1/24\n", "img/etc/motd": "hi\n"})
	ok(t, s, "commit", filepath.Join(dir, "img"), "--image", "deb")
	ok(t, s, "node", "add", "r[01-03]", "--image", "deb", "--net-file", filepath.Join(dir, "n.net"), "--net", "dns 198.18.5.53", "--net", "search cluster.example")
	ok(t, s, "node", "add", "gold", "--image", "deb", "--mac", "52:54:00:dd:00:01", "--replicant")
	st, err := store.Open(s)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := catalog.LoadRegistry(st)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	r3 := reg.Nodes["r03"]
	if r3 == nil || r3.Network == nil {
		t.Fatalf("r03: %+v", r3)
	}
	got := r3.Network.String()
	for _, want := range []string{"nic eth0 mac=52:54:00:aa:00:03 ip=198.18.5.3/24 ip=2001:db8:5::3/64 gw=198.18.5.254\n", "nic eth2 mac=52:54:00:cc:00:03\n",
		"bond bond0 slaves=eth1,eth2 mode=802.3ad mtu=9000\n", "vlan bond0.7 link=bond0 id=7 ip=198.19.7.3/24\n", "dns 198.18.5.53\n", "search cluster.example\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("r03's spec lacks %q:\n%s", want, got)
		}
	}
	if r3.MAC != "52:54:00:aa:00:03" {
		t.Errorf("r03 recognised by %q, want its first NIC's MAC", r3.MAC)
	}
	if r3.IP != "198.18.5.3/24" || r3.Gateway != "198.18.5.254" {
		t.Errorf("r03's IP %q gateway %q: want the spec's first IPv4 address", r3.IP, r3.Gateway)
	}
	if out := ok(t, s, "hosts"); !strings.Contains(out, "198.18.5.3\tr03") && !strings.Contains(out, "198.18.5.3 ") {
		t.Errorf("sim hosts:\n%s", out)
	}
	if g := reg.Nodes["gold"]; g == nil || g.Network == nil || !g.Network.Replicant {
		t.Errorf("gold: %+v", g)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--net", "nic eth0 ip=198.18.5.300/24"}, `invalid address "198.18.5.300/24"`},
		{[]string{"--net", "nic eth0", "--net", "bond bond0 slaves=eth0,eth9"}, `slave "eth9" is no link`},
		{[]string{"--net", "nic eth0 mtu=x"}, `line 1 ("nic eth0 mtu=x")`},
		{[]string{"--net", "nic eth0 dhcp", "--ip", "198.18.5.9/24"}, "--ip and a network spec"},
		{[]string{"--net-file", filepath.Join(dir, "missing.net")}, "--net-file"},
	} {
		r := sim(t, s, append([]string{"node", "add", "bad", "--image", "deb"}, c.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("node add %v: exit %d, %q; want an error with %q", c.args, r.code, r.stderr, c.want)
		}
	}
	// A range whose addresses would leave the prefix names the node.
	r := sim(t, s, "node", "add", "w[1-3]", "--image", "deb", "--net", "nic eth0 ip=198.18.5.254/24")
	if r.code == 0 || !strings.Contains(r.stderr, "node w2") || !strings.Contains(r.stderr, "broadcast address of 198.18.5.0/24") {
		t.Errorf("range past its prefix: exit %d %q", r.code, r.stderr)
	}
}
