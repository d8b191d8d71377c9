package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestNodesAtScale: 50 nodes registered by one range command with
// consecutive MACs and addresses, a CSV and a dnsmasq leases file
// imported, ranges removed, a group removed only when empty (or with
// --force), /etc/hosts written, and the errors name what is at fault.
func TestNodesAtScale(t *testing.T) {
	st := newStore(t)
	img := t.TempDir()
	writeFiles(t, img, map[string]string{"etc/motd": "hpc\n"})
	ok(t, st, "commit", img, "--image", "hpc", "-m", "one")
	ok(t, st, "group", "add", "compute", "--image", "hpc")
	out := ok(t, st, "node", "add", "n[001-050]", "--group", "compute", "--mac", "52:54:00:00:01:f0", "--ip", "198.18.4.1/22", "--gateway", "198.18.4.254")
	if !strings.Contains(out, "50 nodes: n001 .. n050") {
		t.Errorf("node add of a range: %q", out)
	}
	var nodes struct {
		Nodes []struct {
			Name, MAC, IP, Gateway string
			Groups                 []string
		}
	}
	decodeJSON(t, ok(t, st, "nodes", "--json"), &nodes)
	if len(nodes.Nodes) != 50 {
		t.Fatalf("%d nodes registered, want 50", len(nodes.Nodes))
	}
	for i, want := range [][3]string{{"n001", "52:54:00:00:01:f0", "198.18.4.1/22"}, {"n017", "52:54:00:00:02:00", "198.18.4.17/22"}, {"n050", "52:54:00:00:02:21", "198.18.4.50/22"}} {
		idx := map[int]int{0: 0, 1: 16, 2: 49}[i]
		n := nodes.Nodes[idx]
		if n.Name != want[0] || n.MAC != want[1] || n.IP != want[2] || n.Gateway != "198.18.4.254" || len(n.Groups) != 1 {
			t.Errorf("node %d: %+v, want %v", idx, n, want)
		}
	}
	// One commit for the whole range.
	if log := ok(t, st, "log", "sim@nodes"); strings.Count(log, "node add") != 1 {
		t.Errorf("the range took more than one commit:\n%s", log)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "add", "m[1-3]", "--image", "hpc", "--ip", "198.18.0.253/24"}, "node m3: 198.18.0.253/24 plus 2 (198.18.0.255) is the broadcast address"},
		{[]string{"node", "add", "m[1-3]", "--image", "hpc", "--mac", "52:54:00:00:01:f1"}, "MAC 52:54:00:00:01:f1 is already node n002's"},
		{[]string{"node", "add", "m[3-1]", "--image", "hpc"}, "m[3-1]"},
		{[]string{"node", "rm", "n[049-052]"}, "no node n051, n052"},
		{[]string{"group", "rm", "compute"}, "group compute still has 50 nodes (n001, n002"},
	} {
		if r := sim(t, st, c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("sim %s: exit %d, %q; want an error with %q", strings.Join(c.args, " "), r.code, r.stderr, c.want)
		}
	}

	dir := t.TempDir()
	csv := filepath.Join(dir, "rack7.csv")
	os.WriteFile(csv, []byte("name,mac,ip\n# the GPU nodes\ng01,52:54:00:07:00:01,198.18.7.1/24\ng02,52:54:00:07:00:02,198.18.7.2/24\n"), 0o644)
	leases := filepath.Join(dir, "dnsmasq.leases")
	os.WriteFile(leases, []byte("1764670000 52:54:00:08:00:01 198.18.8.1 login1 01:52:54:00:08:00:01\n1764670000 52:54:00:08:00:02 198.18.8.2 login2 *\n"), 0o644)
	ok(t, st, "node", "import", csv, "--image", "hpc")
	ok(t, st, "node", "import", leases, "--image", "hpc", "--prefix", "24")
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("g03,52:54:00:07:00:03\ng04,52:54:00:07:00\n"), 0o644)
	if r := sim(t, st, "node", "import", bad, "--image", "hpc"); r.code != 2 || !strings.Contains(r.stderr, "bad.csv:2: node g04: invalid MAC address") {
		t.Errorf("a bad import: exit %d, %q", r.code, r.stderr)
	}
	// The after-install action: per line (the after column) or for
	// the whole file (--after); a bad one names file, line and node.
	afterCSV := filepath.Join(dir, "rack9.csv")
	os.WriteFile(afterCSV, []byte("name,mac,after\nh01,52:54:00:09:00:01,kexec\nh02,52:54:00:09:00:02,\n"), 0o644)
	ok(t, st, "node", "import", afterCSV, "--image", "hpc", "--after", "reboot")
	for node, want := range map[string]string{"h01": "kexec", "h02": "reboot"} {
		var js struct{ Node struct{ After string } }
		decodeJSON(t, ok(t, st, "node", "show", node, "--json"), &js)
		if js.Node.After != want {
			t.Errorf("imported %s has after %q, want %q", node, js.Node.After, want)
		}
	}
	badAfter := filepath.Join(dir, "bad-after.csv")
	os.WriteFile(badAfter, []byte("h03,52:54:00:09:00:03,,,reboot\nh04,52:54:00:09:00:04,,,halt\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "import", badAfter, "--image", "hpc"}, `bad-after.csv:2: node h04: after-install action "halt"`},
		{[]string{"node", "import", afterCSV, "--image", "hpc", "--after", "halt"}, `node import --after: after-install action "halt"`},
		{[]string{"node", "import", afterCSV, "--image", "hpc", "--net", "dns 198.18.0.53"}, "--net, --net-file and --replicant are per node"},
	} {
		if r := sim(t, st, c.args...); r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("sim %s: exit %d, %q; want exit 2 and %q", strings.Join(c.args, " "), r.code, r.stderr, c.want)
		}
	}
	ok(t, st, "node", "rm", "h[01-02]")
	hosts := ok(t, st, "hosts", "--domain", "cluster")
	for _, want := range []string{"198.18.4.1\tn001.cluster n001\n", "198.18.4.50\tn050.cluster n050\n", "198.18.7.2\tg02.cluster g02\n", "198.18.8.1\tlogin1.cluster login1\n"} {
		if !strings.Contains(hosts, want) {
			t.Errorf("hosts lacks %q:\n%s", want, hosts)
		}
	}
	if strings.Contains(hosts, "g03") {
		t.Errorf("a failed import left a node:\n%s", hosts)
	}
	ok(t, st, "node", "rm", "n[011-050]")
	ok(t, st, "group", "rm", "compute", "--force")
	nodes.Nodes = nil // (decoding into the old slice would keep old groups)
	decodeJSON(t, ok(t, st, "nodes", "--json"), &nodes)
	if len(nodes.Nodes) != 14 { // n001-n010, g01, g02, login1, login2
		t.Errorf("%d nodes after rm, want 14", len(nodes.Nodes))
	}
	for _, n := range nodes.Nodes {
		if len(n.Groups) != 0 {
			t.Errorf("%s is still in %v after group rm --force", n.Name, n.Groups)
		}
	}
}

// TestNetbootLocalBoot: once a node's install succeeded, its netboot
// (sim serve's iPXE script; sim netboot pxe|grub --per-node) boots its
// disk, until sim node reinstall; then it installs, once.
func TestNetbootLocalBoot(t *testing.T) {
	st := newStore(t)
	img := t.TempDir()
	writeFiles(t, img, map[string]string{"etc/motd": "hpc\n"})
	ok(t, st, "commit", img, "--image", "hpc", "-m", "one")
	ok(t, st, "node", "add", "n[1-2]", "--image", "hpc", "--mac", "52:54:00:00:00:01")
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("pxe-admin\n"), 0o600)
	url := startServer(t, st, "--token-file", tok, "--no-bittorrent")
	ipxe := func(mac string) string {
		t.Helper()
		resp, err := http.Get(url + "/v1/install/ipxe?mac=" + mac)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("ipxe: %s %s", resp.Status, b)
		}
		return string(b)
	}
	status := func(node, step, state string) {
		t.Helper()
		req, _ := http.NewRequest("POST", url+"/v1/install/status", strings.NewReader(`{"node":"`+node+`","step":"`+step+`","state":"`+state+`"}`))
		req.Header.Set("Authorization", "Bearer pxe-admin")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("status: %s", resp.Status)
		}
	}
	installs := func(s string) bool {
		return strings.Contains(s, "/v1/install/kernel") && strings.Contains(s, "sim.node=")
	}
	local := func(s string) bool {
		return strings.Contains(s, "sanboot --no-describe --drive 0x80") && !strings.Contains(s, "kernel")
	}
	const n1, n2 = "52:54:00:00:00:01", "52:54:00:00:00:02"
	if s := ipxe(n1); !installs(s) {
		t.Fatalf("a new node does not install:\n%s", s)
	}
	status("n1", "checkout", "running")
	status("n2", "partition", "failed")
	if s := ipxe(n1); !installs(s) {
		t.Errorf("a node whose install is under way boots its disk:\n%s", s)
	}
	status("n1", "done", "done")
	if s := ipxe(n1); !local(s) || !strings.Contains(s, "n1 was installed") {
		t.Errorf("an installed node installs again:\n%s", s)
	}
	if s := ipxe(n2); !installs(s) {
		t.Errorf("a node whose install failed boots its disk:\n%s", s)
	}
	nb := t.TempDir()
	ok(t, st, "netboot", "pxe", "--server", url, "--out", nb, "--per-node")
	ok(t, st, "netboot", "grub", "--server", url, "--out", nb, "--per-node")
	for f, want := range map[string]string{
		"pxelinux.cfg/01-52-54-00-00-00-01": "LOCALBOOT 0", "pxelinux.cfg/01-52-54-00-00-00-02": "sim.node=n2",
		"grub/grub.cfg-01-52-54-00-00-00-01": "chainloader /EFI/BOOT/BOOTX64.EFI", "grub/grub.cfg-01-52-54-00-00-00-02": "sim.node=n2",
	} {
		if b, err := os.ReadFile(filepath.Join(nb, f)); err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: %q, %v; want %q", f, b, err, want)
		}
	}
	// sim netboot ipxe --append: the chain URL carries the arguments and
	// the server's script puts them on the kernel line; only sim.* ones.
	ok(t, st, "netboot", "ipxe", "--server", url, "--out", nb, "--append", "sim.transport=auto sim.after=reboot")
	b, _ := os.ReadFile(filepath.Join(nb, "boot.ipxe"))
	chain := regexp.MustCompile(`chain (\S+)`).FindStringSubmatch(string(b))
	if chain == nil || !strings.Contains(chain[1], "&append=sim.transport%3Dauto+sim.after%3Dreboot") {
		t.Fatalf("boot.ipxe:\n%s", b)
	}
	if s := ipxe(n2 + "&append=sim.transport%3Dauto+sim.after%3Dreboot"); !installs(s) || !strings.Contains(s, " sim.transport=auto sim.after=reboot sim.node=n2\n") {
		t.Errorf("the script lacks the appended arguments:\n%s", s)
	}
	if r := sim(t, st, "netboot", "ipxe", "--server", url, "--out", nb, "--append", "init=/bin/sh"); r.code != 2 || !strings.Contains(r.stderr, `"init=/bin/sh": only sim.KEY=VALUE`) {
		t.Errorf("netboot ipxe --append init=/bin/sh: exit %d, %q", r.code, r.stderr)
	}
	for _, bad := range []string{"init%3D%2Fbin%2Fsh", "sim.server%3Dhttp://evil", "sim.x%3D%24%7Bnet0%2Fmac%7D"} {
		resp, err := http.Get(url + "/v1/install/ipxe?mac=" + n2 + "&append=" + bad)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("append=%s: %s, want 400", bad, resp.Status)
		}
	}
	ok(t, st, "node", "reinstall", "n1")
	if s := ipxe(n1); !installs(s) {
		t.Errorf("after sim node reinstall, n1 boots its disk:\n%s", s)
	}
	status("n1", "done", "done")
	if s := ipxe(n1); !local(s) {
		t.Errorf("after its reinstall, n1 installs again:\n%s", s)
	}
	if r := sim(t, st, "node", "reinstall", "n[1-3]"); r.code == 0 || !strings.Contains(r.stderr, `no node "n3"`) {
		t.Errorf("reinstall of an unknown node: %d %q", r.code, r.stderr)
	}
}

// TestNodeShow: sim node show prints a node's record and what its install
// gets (the group's image, overrides and scripts in order, its network
// spec, a pending reinstall); --json the same; an unknown node is named.
func TestNodeShow(t *testing.T) {
	st := newStore(t)
	img, ov := t.TempDir(), t.TempDir()
	writeFiles(t, img, map[string]string{"etc/motd": "hpc\n"})
	writeFiles(t, ov, map[string]string{"etc/site": "site\n"})
	script := filepath.Join(t.TempDir(), "motd.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi >/etc/motd\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ok(t, st, "commit", img, "--image", "hpc", "-m", "one")
	ok(t, st, "override", "set", "site", ov)
	ok(t, st, "script", "set", "motd", script)
	ok(t, st, "group", "add", "compute", "--image", "hpc", "--override", "site")
	ok(t, st, "node", "add", "n1", "--group", "compute", "--script", "motd", "--mac", "52:54:00:00:01:01",
		"--net", "nic eth0 mac=52:54:00:00:01:01 ip=198.18.4.1/22 gw=198.18.4.254", "--net", "dns 198.18.0.53")
	ok(t, st, "node", "reinstall", "n1")
	out := ok(t, st, "node", "show", "n1")
	for _, want := range []string{"node n1", "mac          52:54:00:00:01:01", "ip           198.18.4.1/22 via 198.18.4.254",
		"groups       compute", "image        hpc (from group compute)", "overrides    site", "scripts      motd",
		"reinstall    asked", "    nic eth0 mac=52:54:00:00:01:01 ip=198.18.4.1/22 gw=198.18.4.254", "    dns 198.18.0.53"} {
		if !strings.Contains(out, want) {
			t.Errorf("node show lacks %q:\n%s", want, out)
		}
	}
	var js struct {
		Node      struct{ Name string }
		Image     string
		Overrides []string
		Scripts   []string
	}
	decodeJSON(t, ok(t, st, "node", "show", "n1", "--json"), &js)
	if js.Node.Name != "n1" || js.Image != "hpc" || strings.Join(js.Overrides, ",") != "site" || strings.Join(js.Scripts, ",") != "motd" {
		t.Errorf("node show --json: %+v", js)
	}
	if r := sim(t, st, "node", "show", "n2"); r.code == 0 || !strings.Contains(r.stderr, `no node "n2"`) {
		t.Errorf("node show of an unknown node: exit %d, %q", r.code, r.stderr)
	}
}
