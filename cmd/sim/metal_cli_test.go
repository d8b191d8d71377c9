package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

func TestLayoutNodeCLI(t *testing.T) {
	s := newStore(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"root/etc/hostname": "golden\n",
		"good":              testLayout,
		"bad":               "part root rest ext4 /\npart swap 1G swapp\n",
		"post.sh":           "#!/bin/sh\ntrue\n",
		"nohashbang.sh":     "true\n",
		"ov/etc/motd":       "hi\n",
	})
	ok(t, s, "commit", filepath.Join(dir, "root"), "--image", "debian")

	// A bad layout names the file and the line; nothing is stored.
	r := sim(t, s, "layout", "set", "debian", filepath.Join(dir, "bad"))
	if r.code != 1 || !strings.Contains(r.stderr, "layout line 2 \"part swap 1G swapp\": unknown filesystem \"swapp\"") {
		t.Errorf("bad layout: %d %s", r.code, r.stderr)
	}
	if r := sim(t, s, "layout", "set", "nosuch", filepath.Join(dir, "good")); r.code != 1 || !strings.Contains(r.stderr, "image nosuch") {
		t.Errorf("layout of a missing image: %d %s", r.code, r.stderr)
	}
	if r := sim(t, s, "layout", "show", "debian"); r.code != 1 || !strings.Contains(r.stderr, "no layout set") {
		t.Errorf("show without layout: %d %s", r.code, r.stderr)
	}
	ok(t, s, "layout", "set", "debian", filepath.Join(dir, "good"))
	out := ok(t, s, "layout", "show", "debian", "--disk-size", "4GiB")
	for _, want := range []string{"part root rest   ext4 /", "# 4 root       start 166MiB size 3929MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("layout show lacks %q:\n%s", want, out)
		}
	}
	if r := sim(t, s, "layout", "show", "debian", "--disk-size", "100MiB"); r.code != 1 || !strings.Contains(r.stderr, "too small for the layout") {
		t.Errorf("show on a small disk: %d %s", r.code, r.stderr)
	}
	// Deterministic: the same layout again makes no new commit, and the
	// same file as another image's layout is the very same tree.
	head := func(ref string) (c struct {
		ID   string `json:"id"`
		Tree string `json:"tree"`
	}) {
		decodeJSON(t, ok(t, s, "show", ref, "--json"), &c)
		return c
	}
	first := head("debian@layout")
	ok(t, s, "layout", "set", "debian", filepath.Join(dir, "good"))
	if again := head("debian@layout"); again != first {
		t.Errorf("the same layout set twice: %+v then %+v", first, again)
	}
	ok(t, s, "image", "cp", "debian", "other")
	ok(t, s, "image", "rm", "other@layout")
	ok(t, s, "layout", "set", "other", filepath.Join(dir, "good"))
	if o := head("other@layout"); o.Tree != first.Tree {
		t.Errorf("one layout file, two trees: %s and %s", first.Tree, o.Tree)
	}
	ok(t, s, "image", "rm", "other")
	// Versioned: the layout has a history like any image.
	writeFiles(t, dir, map[string]string{"good2": "# with swap\n" + testLayout})
	ok(t, s, "layout", "set", "debian", filepath.Join(dir, "good2"))
	if log := ok(t, s, "log", "debian@layout"); strings.Count(log, "commit ") != 2 || strings.Count(log, "layout of debian") != 2 {
		t.Errorf("layout history:\n%s", log)
	}

	// The layout follows its image through cp, mv and rm.
	ok(t, s, "image", "cp", "debian", "deb2")
	ok(t, s, "layout", "show", "deb2")
	ok(t, s, "image", "mv", "deb2", "deb3")
	ok(t, s, "layout", "show", "deb3")
	if r := sim(t, s, "layout", "show", "deb2@layout"); r.code == 0 {
		t.Error("deb2@layout still there after image mv")
	}
	ok(t, s, "image", "rm", "deb3")
	if out := ok(t, s, "images", "--all"); strings.Contains(out, "deb3") {
		t.Errorf("deb3@layout left after image rm:\n%s", out)
	}

	if r := sim(t, s, "script", "set", "x", filepath.Join(dir, "nohashbang.sh")); r.code != 2 || !strings.Contains(r.stderr, "must start with #!") {
		t.Errorf("script without #!: %d %s", r.code, r.stderr)
	}
	ok(t, s, "script", "set", "post", filepath.Join(dir, "post.sh"))
	ok(t, s, "override", "set", "site", filepath.Join(dir, "ov"))
	ok(t, s, "group", "add", "compute", "--image", "debian", "--override", "site")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"node", "add", "n1", "--mac", "52:54:00:zz:00:01"}, 2, "invalid MAC address \"52:54:00:zz:00:01\""},
		{[]string{"node", "add", "Node_1"}, 2, "invalid node name \"Node_1\""},
		{[]string{"node", "add", "n1", "--ip", "300.1.1.1/24"}, 2, "invalid IP"},
		{[]string{"node", "add", "n1", "--group", "nosuch"}, 1, "no group \"nosuch\""},
		{[]string{"node", "add", "n1", "--image", "debian", "--override", "nosuch"}, 1, "override nosuch"},
		{[]string{"node", "add", "n1"}, 1, "no image"},
		{[]string{"node", "add", "n1", "--image", "debian@layout"}, 1, "catalog document"},
	} {
		if r := sim(t, s, c.args...); r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("sim %s: exit %d %q; want %d %q", strings.Join(c.args, " "), r.code, r.stderr, c.code, c.want)
		}
	}
	ok(t, s, "node", "add", "n1", "--mac", "52:54:00:00:00:01", "--group", "compute", "--script", "post")
	ok(t, s, "node", "add", "n2", "--mac", "52:54:00:00:00:02", "--ip", "198.18.0.12/15", "--image", "debian")
	if r := sim(t, s, "node", "add", "n3", "--mac", "52:54:00:00:00:01", "--image", "debian"); r.code != 1 || !strings.Contains(r.stderr, "already node n1's") {
		t.Errorf("duplicate MAC: %d %s", r.code, r.stderr)
	}
	var nodes struct {
		Nodes []struct {
			Name     string
			MAC      string
			Resolved struct {
				Image     string
				Overrides []string
				Scripts   []string
			}
		}
	}
	decodeJSON(t, ok(t, s, "nodes", "--json"), &nodes)
	if len(nodes.Nodes) != 2 || nodes.Nodes[0].Name != "n1" || nodes.Nodes[0].Resolved.Image != "debian" ||
		strings.Join(nodes.Nodes[0].Resolved.Overrides, ",") != "site" || strings.Join(nodes.Nodes[0].Resolved.Scripts, ",") != "post" {
		t.Errorf("nodes --json: %+v", nodes)
	}

	// What the server answers a node, by MAC, by name, and the failures.
	st, err := store.Open(s)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := install.ConfigFor(st, "", "52-54-00-00-00-01", "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node != "n1" || cfg.Hostname != "n1" || cfg.Image != "debian" || len(cfg.Overrides) != 1 || len(cfg.Scripts) != 1 || !strings.Contains(cfg.Layout, "bios_grub") {
		t.Errorf("config by MAC: %+v", cfg)
	}
	if cfg, err := install.ConfigFor(st, "n2", "", ""); err != nil || cfg.IP != "198.18.0.12/15" {
		t.Errorf("config by name: %+v %v", cfg, err)
	}
	if _, err := install.ConfigFor(st, "", "52:54:00:00:00:99", ""); !errors.Is(err, install.ErrUnknownNode) {
		t.Errorf("unknown MAC: %v", err)
	}
	if _, err := install.ConfigFor(st, "", "52:54:00:00:00:99", "nosuch"); err == nil || !strings.Contains(err.Error(), "unknown ref") {
		t.Errorf("unknown image: %v", err)
	}
	if _, err := install.ConfigFor(st, "", "", "sim@nodes"); err == nil || !strings.Contains(err.Error(), "catalog document") {
		t.Errorf("catalog image: %v", err)
	}
	if _, err := install.ConfigFor(st, "Bad!", "", ""); err == nil || !strings.Contains(err.Error(), "invalid node name") {
		t.Errorf("bad node name: %v", err)
	}
	st.Close()

	// Netboot configurations.
	nb := filepath.Join(dir, "nb")
	ok(t, s, "netboot", "pxe", "--server", "http://198.18.0.1:7480", "--out", nb, "--per-node")
	ok(t, s, "netboot", "grub", "--server", "http://198.18.0.1:7480", "--out", nb)
	ok(t, s, "netboot", "dnsmasq", "--server", "http://198.18.0.1:7480", "--out", nb)
	for f, want := range map[string]string{
		"pxelinux.cfg/default":              "APPEND console=ttyS0,115200 console=tty0 sim.server=http://198.18.0.1:7480\n",
		"pxelinux.cfg/01-52-54-00-00-00-01": "sim.node=n1",
		"grub/grub.cfg":                     "linux /vmlinuz console=ttyS0,115200 console=tty0 sim.server=http://198.18.0.1:7480",
		"dnsmasq.conf":                      "dhcp-host=52:54:00:00:00:02,198.18.0.12,n2",
	} {
		b, err := os.ReadFile(filepath.Join(nb, f))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: %v; lacks %q:\n%s", f, err, want, b)
		}
	}
	netbootGrub(t, s, nb)
	if r := sim(t, s, "netboot", "pxe", "--server", "198.18.0.1", "--out", nb); r.code != 2 {
		t.Errorf("netboot without URL scheme: %d %s", r.code, r.stderr)
	}
	netbootIPXE(t, s, filepath.Join(dir, "ipxe"))
	if !catalog.IsSpecial("debian@layout") || catalog.IsSpecial("debian") {
		t.Error("IsSpecial")
	}
}

// netbootGrub: sim netboot grub builds GRUB's UEFI network loader (a PE
// image with its prefix on TFTP) where Debian's GRUB modules are, or names
// what is missing; what it writes passes grub-script-check.
func netbootGrub(t *testing.T, s, nb string) {
	t.Helper()
	if _, err := os.Stat("/usr/lib/grub/x86_64-efi/efinet.mod"); err != nil {
		t.Logf("netboot grub's loader unchecked: no GRUB x86_64-efi modules (make metal-deps)")
		return
	}
	b, err := os.ReadFile(filepath.Join(nb, "grubnetx64.efi"))
	if err != nil || len(b) < 64<<10 || string(b[:2]) != "MZ" || !bytes.Contains(b, []byte("(tftp)/grub")) {
		t.Errorf("grubnetx64.efi: %v, %d bytes; want a PE image with prefix (tftp)/grub", err, len(b))
	}
	if r := sim(t, s, "netboot", "grub", "--server", "http://198.18.0.1:7480", "--out", nb, "--grub-from", t.TempDir()); r.code != 1 || !strings.Contains(r.stderr, "no GRUB x86_64-efi modules") {
		t.Errorf("netboot grub --grub-from an empty directory: %d %s", r.code, r.stderr)
	}
	if _, err := exec.LookPath("grub-script-check"); err != nil {
		return
	}
	cfgs, _ := filepath.Glob(filepath.Join(nb, "grub", "grub.cfg*"))
	local := filepath.Join(t.TempDir(), "local.cfg")
	if err := os.WriteFile(local, []byte(grubLocal("n1")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgs = append(cfgs, local)
	for _, f := range cfgs {
		if out, err := exec.Command("grub-script-check", f).CombinedOutput(); err != nil {
			t.Errorf("grub-script-check %s: %v %s", f, err, out)
		}
	}
}

// netbootIPXE: sim netboot ipxe copies iPXE's loaders beside boot.ipxe
// (Debian's ipxe), or names what is missing; sim netboot dnsmasq
// --loader ipxe writes a configuration dnsmasq itself accepts, which
// sends PXE firmware to iPXE and iPXE to boot.ipxe; bad flags are named.
func netbootIPXE(t *testing.T, s, nb string) {
	const url = "http://198.18.0.1:7480"
	if _, err := os.Stat("/usr/lib/ipxe/snponly.efi"); err != nil {
		t.Log("no /usr/lib/ipxe (Debian's ipxe; make metal-deps installs it): the loaders' copy is not checked")
	} else {
		ok(t, s, "netboot", "ipxe", "--server", url, "--out", nb)
		for _, f := range []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"} {
			got, err := os.ReadFile(filepath.Join(nb, f))
			want, _ := os.ReadFile(filepath.Join("/usr/lib/ipxe", f))
			if err != nil || len(want) == 0 || !bytes.Equal(got, want) {
				t.Errorf("%s: %v, %d bytes; want /usr/lib/ipxe's %d", f, err, len(got), len(want))
			}
		}
	}
	empty := t.TempDir()
	if r := sim(t, s, "netboot", "ipxe", "--server", url, "--out", nb, "--ipxe-from", empty); r.code == 0 || !strings.Contains(r.stderr, empty) || !strings.Contains(r.stderr, "undionly.kpxe") {
		t.Errorf("netboot ipxe --ipxe-from an empty directory: %d %s", r.code, r.stderr)
	}
	ok(t, s, "netboot", "dnsmasq", "--server", url, "--out", nb, "--loader", "ipxe", "--interface", "br0", "--dhcp-range", "198.18.0.100,198.18.0.150,255.255.255.0")
	conf, _ := os.ReadFile(filepath.Join(nb, "dnsmasq.conf"))
	for _, w := range []string{"interface=br0\n", "dhcp-range=198.18.0.100,198.18.0.150,255.255.255.0,1h\n", "dhcp-userclass=set:ipxe,iPXE\n",
		"dhcp-boot=tag:ipxe,boot.ipxe\n", "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi\n", "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n", "tftp-root=" + nb + "\n"} {
		if !strings.Contains(string(conf), w) {
			t.Errorf("dnsmasq.conf lacks %q:\n%s", w, conf)
		}
	}
	if dm, err := exec.LookPath("dnsmasq"); err != nil {
		t.Log("no dnsmasq (Debian's dnsmasq-base): the configuration is not checked by dnsmasq --test")
	} else if out, err := exec.Command(dm, "--test", "-C", filepath.Join(nb, "dnsmasq.conf")).CombinedOutput(); err != nil {
		t.Errorf("dnsmasq --test refuses what sim netboot dnsmasq wrote: %v %s\n%s", err, out, conf)
	}
	for _, bad := range [][]string{
		{"--loader", "syslinux"},
		{"--dhcp-range", "198.18.0.100,198.18.0.50,255.255.255.0"},
		{"--dhcp-range", "198.18.0.100,198.19.1.50,255.255.255.0"},
		{"--dhcp-range", "198.18.0.100,198.18.0.150"},
		{"--dhcp-range", "198.18.0.100,198.18.0.150,255.0.255.0"},
		{"--interface", "br0\ndhcp-boot=evil.efi"},
	} {
		r := sim(t, s, append([]string{"netboot", "dnsmasq", "--server", url, "--out", nb}, bad...)...)
		if r.code != 2 || !strings.Contains(r.stderr, bad[0]) {
			t.Errorf("netboot dnsmasq %v: %d %s; want a usage error naming %s", bad, r.code, r.stderr, bad[0])
		}
	}
}
