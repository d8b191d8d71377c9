package netcfg

import (
	"errors"
	"strings"
	"testing"
)

const full = `# the spec of README "Network specs"
nic eth0 mac=52:54:00:12:34:56 ip=198.18.0.11/24 ip=2001:db8::11/64 gw=198.18.0.1 gw6=2001:db8::1 mtu=1500
nic eth1 mac=52:54:00:12:34:57
nic eth2 mac=52:54:00:12:34:58
bond bond0 slaves=eth1,eth2 mode=802.3ad mtu=9000
vlan bond0.100 link=bond0 id=100 ip=198.19.0.11/24
dns 198.18.0.1,2001:db8::53
search cluster.example
`

func TestParseRoundTrip(t *testing.T) {
	s, err := Parse(full)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Links) != 5 || s.Links[3].Kind() != KindBond || s.Links[4].Kind() != KindVLAN || s.Master("eth1") != "bond0" || s.Master("eth0") != "" {
		t.Fatalf("parsed %+v", s)
	}
	if got := s.VLANsOn("bond0"); len(got) != 1 || got[0] != "bond0.100" {
		t.Errorf("VLANs on bond0: %v", got)
	}
	again, err := Parse(s.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, s.String())
	}
	if again.String() != s.String() {
		t.Errorf("round trip:\n%s\n---\n%s", s, again)
	}
	r, err := Parse("replicant")
	if err != nil || !r.Replicant || r.Managed() {
		t.Errorf("replicant: %+v %v", r, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ spec, want string }{
		{"nic eth0 ip=198.18.0.300/24", `link "eth0": invalid address "198.18.0.300/24"`},
		{"nic eth0 ip=198.18.0.1/24 gw=2001:db8::1", `invalid IPv4 gateway "2001:db8::1"`},
		{"nic eth0 mac=zz", `invalid MAC "zz"`},
		{"nic eth0 mtu=9", "MTU 9"},
		{"nic eth0 mtu=big", `line 1 ("nic eth0 mtu=big"): mtu="big" is not a number`},
		{"nic eth0\nbond bond0 slaves=eth0,eth9", `slave "eth9" is no link`},
		{"nic eth0 ip=198.18.0.2/24\nbond bond0 slaves=eth0", `slave "eth0" has addresses`},
		{"nic eth0\nbond bond0 slaves=eth0 mode=fast", `bond mode "fast"`},
		{"vlan v5 link=eth0 id=5", `its link "eth0" is no link`},
		{"nic eth0\nvlan v5 link=eth0 id=5000", "VLAN id 5000"},
		{"nic eth0\n\nfoo bar", `line 3 ("foo bar"): unknown statement "foo"`},
		{"nic eth0 speed=10", `unknown key "speed"`},
		{"nic eth0\nnic eth0", `"eth0" given twice`},
		{"nic a gw=198.18.0.1 ip=198.18.0.2/24\nnic b gw=198.18.0.1 ip=198.18.0.3/24", "a second default gateway"},
		{"dns 1.2.3", `invalid DNS server "1.2.3"`},
		{"nic averyveryverylongname", "invalid interface name"},
		{"nic ib0 mac=52:54:00:12:34:56", "IPoIB links are matched by name"},
	} {
		_, err := Parse(c.spec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.spec, err, c.want)
		}
	}
}

func TestShift(t *testing.T) {
	s, _ := Parse(full)
	n3, err := s.Shift(3)
	if err != nil {
		t.Fatal(err)
	}
	if got := n3.String(); !strings.Contains(got, "ip=198.18.0.14/24 ip=2001:db8::14/64") || !strings.Contains(got, "mac=52:54:00:12:34:59") || !strings.Contains(got, "ip=198.19.0.14/24") {
		t.Errorf("shifted by 3:\n%s", got)
	}
	if s.Links[0].Addrs[0] != "198.18.0.11/24" {
		t.Error("Shift changed the original")
	}
	if _, err := s.Shift(300); err == nil || !strings.Contains(err.Error(), "outside 198.18.0.0/24") {
		t.Errorf("shift past the prefix: %v", err)
	}
}

func TestRenderUnknownStack(t *testing.T) {
	s, _ := Parse("nic eth0 ip=198.18.0.11/24")
	_, err := Render(t.TempDir(), "", s)
	if !errors.Is(err, ErrUnknownStack) || !strings.Contains(err.Error(), "198.18.0.11/24") {
		t.Errorf("static IP, no stack: %v", err)
	}
	s, _ = Parse("nic eth0 dhcp")
	if f, err := Render(t.TempDir(), "", s); err != nil || len(f) != 0 {
		t.Errorf("DHCP, no stack: %v %v (want the image's config left alone)", f, err)
	}
}
