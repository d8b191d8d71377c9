package catalog

import (
	"strings"
	"testing"
	"time"
)

func TestMACPlus(t *testing.T) {
	for _, c := range []struct {
		mac  string
		i    int
		want string // "" = an error
	}{
		{"52:54:00:00:00:01", 0, "52:54:00:00:00:01"},
		{"52:54:00:00:00:ff", 1, "52:54:00:00:01:00"},
		{"52-54-00-00-00-0A", 499, "52:54:00:00:01:fd"},
		{"ff:ff:ff:ff:ff:fe", 1, "ff:ff:ff:ff:ff:ff"},
		{"ff:ff:ff:ff:ff:ff", 1, ""},
		{"52:54:00", 1, ""},
	} {
		got, err := MACPlus(c.mac, c.i)
		if (err != nil) != (c.want == "") || got != c.want {
			t.Errorf("MACPlus(%s, %d) = %q, %v; want %q", c.mac, c.i, got, err, c.want)
		}
	}
}

func TestAddrPlus(t *testing.T) {
	for _, c := range []struct {
		cidr string
		i    int
		want string // "" = an error
	}{
		{"198.18.1.10/24", 5, "198.18.1.15/24"},
		{"198.18.4.1/22", 499, "198.18.5.244/22"},
		{"198.18.1.250/24", 4, "198.18.1.254/24"},
		{"198.18.1.250/24", 5, ""}, // the broadcast address
		{"198.18.1.250/24", 6, ""}, // outside the prefix
		{"198.18.1.1/32", 0, "198.18.1.1/32"},
		{"198.18.1.1", 1, ""},
		{"2001:db8::1/64", 1, ""},
	} {
		got, err := AddrPlus(c.cidr, c.i)
		if (err != nil) != (c.want == "") || got != c.want {
			t.Errorf("AddrPlus(%s, %d) = %q, %v; want %q", c.cidr, c.i, got, err, c.want)
		}
	}
}

func TestParseNodeList(t *testing.T) {
	for _, c := range []struct {
		name, in string
		prefix   int
		want     []string // name mac ip gateway
		err      string
	}{
		{"csv", "# the rack\nname,mac,ip,gateway\nN01, 52:54:00:00:00:01, 198.18.0.11/24, 198.18.0.1\nn02,52:54:00:00:00:02\n", 0,
			[]string{"n01 52:54:00:00:00:01 198.18.0.11/24 198.18.0.1", "n02 52:54:00:00:00:02  "}, ""},
		{"csv, prefix given", "n01,52:54:00:00:00:01,198.18.0.11\n", 24,
			[]string{"n01 52:54:00:00:00:01 198.18.0.11/24 "}, ""},
		{"csv without a prefix", "n01,52:54:00:00:00:01,198.18.0.11\n", 0, nil, "list:1: IP 198.18.0.11 has no /prefix"},
		{"dnsmasq leases", "1733140000 52:54:00:00:00:01 198.18.0.11 n01 01:52:54:00:00:00:01\n1733140001 52:54:00:00:00:02 198.18.0.12 n02 *\n", 23,
			[]string{"n01 52:54:00:00:00:01 198.18.0.11/23 ", "n02 52:54:00:00:00:02 198.18.0.12/23 "}, ""},
		{"lease without a hostname", "1733140000 52:54:00:00:00:01 198.18.0.11 * *\n", 24, nil, "list:1: the lease of 52:54:00:00:00:01 (198.18.0.11) has no hostname"},
		{"leases need a prefix", "1733140000 52:54:00:00:00:01 198.18.0.11 n01 *\n", 0, nil, "list:1: a lease's address needs prefix bits"},
		{"bad MAC, line 3", "n01,52:54:00:00:00:01\n\nn02,52:54:zz:00:00:02\n", 0, nil, "list:3: node n02: invalid MAC address"},
		{"bad name", "n_01,52:54:00:00:00:01\n", 0, nil, "list:1: invalid node name \"n_01\""},
		{"too many fields", "n01,52:54:00:00:00:01,198.18.0.1/24,198.18.0.254,reboot,x\n", 0, nil, "list:1: want name,mac[,ip[,gateway[,after]]]"},
		{"after column", "n01,52:54:00:00:00:01,198.18.0.1/24,198.18.0.254,Reboot\nn02,52:54:00:00:00:02,,,\n", 0,
			[]string{"n01 52:54:00:00:00:01 198.18.0.1/24 198.18.0.254 reboot", "n02 52:54:00:00:00:02  "}, ""},
		{"header names the columns", "name,after,mac\nn01,kexec,52:54:00:00:00:01\nn02,,52:54:00:00:00:02\n", 0,
			[]string{"n01 52:54:00:00:00:01   kexec", "n02 52:54:00:00:00:02  "}, ""},
		{"bad after", "name,mac,after\nn01,52:54:00:00:00:01,poweroff\nn02,52:54:00:00:00:02,sleep\n", 0, nil, `list:3: node n02: after-install action "sleep": want poweroff, reboot, kexec or shell`},
		{"unknown column", "name,mac,rack\nn01,52:54:00:00:00:01,7\n", 0, nil, `list:1: unknown column "rack" in the header`},
		{"header without mac", "name,ip\nn01,198.18.0.1/24\n", 0, nil, "list:1: the header has no mac column"},
		{"short line under a header", "name,mac,after\nn01,52:54:00:00:00:01,reboot,x\n", 0, nil, "list:2: want name,mac[,after]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			nodes, err := ParseNodeList(strings.NewReader(c.in), "list", c.prefix)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one with %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, n := range nodes {
				w := []string{n.Name, n.MAC, n.IP, n.Gateway}
				if n.After != "" {
					w = append(w, n.After)
				}
				got = append(got, strings.Join(w, " "))
			}
			if strings.Join(got, "|") != strings.Join(c.want, "|") {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestRemoveGroupAndHosts(t *testing.T) {
	r := &Registry{Nodes: map[string]*Node{}, Groups: map[string]*Group{"compute": {Name: "compute"}, "gpu": {Name: "gpu"}}}
	r.Nodes["n2"] = &Node{Name: "n2", IP: "198.18.0.12/24", Groups: []string{"compute", "gpu"}}
	r.Nodes["n10"] = &Node{Name: "n10", IP: "198.18.0.9/24", Groups: []string{"compute"}}
	r.Nodes["n3"] = &Node{Name: "n3"}
	if err := r.RemoveGroup("compute", false); err == nil || !strings.Contains(err.Error(), "group compute still has 2 nodes (n10, n2)") {
		t.Errorf("a group with nodes removed: %v", err)
	}
	if err := r.RemoveGroup("nope", false); err == nil || !strings.Contains(err.Error(), `no group "nope"`) {
		t.Errorf("an unknown group: %v", err)
	}
	if err := r.RemoveGroup("compute", true); err != nil {
		t.Fatal(err)
	}
	if r.Groups["compute"] != nil || len(r.Nodes["n2"].Groups) != 1 || r.Nodes["n2"].Groups[0] != "gpu" || len(r.Nodes["n10"].Groups) != 0 {
		t.Errorf("after --force: groups %v, n2 %v, n10 %v", r.Groups, r.Nodes["n2"].Groups, r.Nodes["n10"].Groups)
	}
	if got, want := r.Hosts("lab.example."), "198.18.0.9\tn10.lab.example n10\n198.18.0.12\tn2.lab.example n2\n"; got != want {
		t.Errorf("Hosts = %q, want %q", got, want)
	}
	if got, want := r.Hosts(""), "198.18.0.9\tn10\n198.18.0.12\tn2\n"; got != want {
		t.Errorf("Hosts = %q, want %q", got, want)
	}
}

func TestNetbootsToInstall(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	before, after := t0.Add(-time.Hour), t0.Add(time.Hour)
	for _, c := range []struct {
		reinstall *time.Time
		done      time.Time
		want      bool
	}{
		{nil, time.Time{}, true}, // never installed
		{nil, t0, false},         // installed: its disk
		{&before, t0, false},     // a reinstall done since
		{&after, t0, true},       // asked for after the last install
		{&after, time.Time{}, true},
	} {
		n := &Node{Name: "n1", Reinstall: c.reinstall}
		if got := n.NetbootsToInstall(c.done); got != c.want {
			t.Errorf("reinstall %v, done %v: %v, want %v", c.reinstall, c.done, got, c.want)
		}
	}
}
