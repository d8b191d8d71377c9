package initrd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// readCpio parses a newc archive back (a test-only reader).
func readCpio(t *testing.T, b []byte) []Entry {
	t.Helper()
	var out []Entry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, nsize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(nsize)-1])
		off = align(off + 110 + int(nsize))
		data := b[off : off+int(size)]
		off = align(off + int(size))
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, Entry{Name: name, Mode: mode, Data: data, Rmajor: rmaj, Rminor: rmin})
	}
}

func TestCpio(t *testing.T) {
	in := []Entry{
		{Name: "init", Mode: ModeFile | 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
		{Name: "dev", Mode: ModeDir | 0o755},
		{Name: "dev/console", Mode: ModeChar | 0o600, Rmajor: 5, Rminor: 1},
		{Name: "bin/sh", Mode: ModeLink | 0o777, Data: []byte("busybox")},
		{Name: "bin", Mode: ModeDir | 0o755},
		{Name: "odd", Mode: ModeFile | 0o644, Data: []byte("12345")},
	}
	var a, b bytes.Buffer
	if err := WriteCpio(&a, append([]Entry(nil), in...)); err != nil {
		t.Fatal(err)
	}
	if err := WriteCpio(&b, append([]Entry(nil), in...)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("same entries, different archives")
	}
	got := readCpio(t, a.Bytes())
	if len(got) != len(in) {
		t.Fatalf("got %d entries, want %d", len(got), len(in))
	}
	byName := map[string]Entry{}
	for i, e := range got {
		byName[e.Name] = e
		if i > 0 && got[i-1].Name >= e.Name {
			t.Errorf("not sorted: %s before %s", got[i-1].Name, e.Name)
		}
	}
	for _, e := range in {
		g := byName[e.Name]
		if g.Mode != e.Mode || !bytes.Equal(g.Data, e.Data) || g.Rmajor != e.Rmajor || g.Rminor != e.Rminor {
			t.Errorf("%s: got %+v, want %+v", e.Name, g, e)
		}
	}
	if err := WriteCpio(&a, []Entry{{Name: "a"}, {Name: "a"}}); err == nil {
		t.Error("duplicate name accepted")
	}
	if err := WriteCpio(&a, []Entry{{Name: "/abs"}}); err == nil {
		t.Error("absolute name accepted")
	}
	// The system's cpio reads it too, when there is one.
	if _, err := exec.LookPath("cpio"); err == nil {
		c := exec.Command("cpio", "-it", "--quiet")
		c.Stdin = bytes.NewReader(b.Bytes())
		out, err := c.Output()
		if err != nil {
			t.Fatalf("cpio -it: %v", err)
		}
		if got := strings.Fields(string(out)); len(got) != len(in) {
			t.Errorf("cpio -it lists %v", got)
		}
	}
}

func TestResolveModules(t *testing.T) {
	root := t.TempDir()
	base := filepath.Join(root, "lib/modules/6.1.0-test")
	os.MkdirAll(base, 0o755)
	os.WriteFile(filepath.Join(base, "modules.dep"), []byte(
		"kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"+
			"kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko: kernel/lib/crc16.ko\n"+
			"kernel/drivers/net/virtio_net.ko.xz: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n"), 0o644)
	os.WriteFile(filepath.Join(base, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_pci.ko\n"), 0o644)
	order, missing, err := resolveModules(root, "6.1.0-test", []string{"ext4", "virtio-net", "virtio_pci", "nosuch"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[modName(m)] = i
	}
	for _, dep := range [][2]string{{"crc16", "jbd2"}, {"jbd2", "ext4"}, {"mbcache", "ext4"}, {"failover", "virtio_net"}} {
		a, aok := pos[dep[0]]
		b, bok := pos[dep[1]]
		if !aok || !bok || a > b {
			t.Errorf("%s must load before %s: order %v", dep[0], dep[1], order)
		}
	}
	if len(order) != 6 {
		t.Errorf("order %v: want 6 modules, each once", order)
	}
	if len(missing) != 1 || missing[0] != "nosuch" {
		t.Errorf("missing = %v; want [nosuch] (virtio_pci is built in)", missing)
	}
	if _, _, err := resolveModules(root, "9.9", []string{"ext4"}); err == nil || !strings.Contains(err.Error(), "--modules-from") {
		t.Errorf("no modules.dep: %v", err)
	}
}

func TestDeps(t *testing.T) {
	p := "/usr/sbin/mkfs.ext4"
	if _, err := os.Stat(p); err != nil {
		t.Skip("no mkfs.ext4")
	}
	libs, err := Deps("/", p)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(libs, " ")
	for _, want := range []string{"ld-linux", "libc.so", "libext2fs"} {
		if !strings.Contains(s, want) {
			t.Errorf("deps of %s lack %s: %s", p, want, s)
		}
	}
	if st, _ := IsStatic(p); st {
		t.Error("mkfs.ext4 reported static")
	}
}

// TestBuildBakesFiles: what sim initrd build --token-file, --ca, --trust
// bake in lands at the paths the installer reads, with its modes, and an
// initrd holding a private file is itself private.
func TestBuildBakesFiles(t *testing.T) {
	bb := "/bin/busybox"
	if ok, err := IsStatic(bb); err != nil || !ok {
		t.Skip("no static /bin/busybox (busybox-static) to stand in for sim")
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz-9.9")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	mods := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(mods, "lib/modules/9.9"), 0o755)
	os.WriteFile(filepath.Join(mods, "lib/modules/9.9/modules.dep"), nil, 0o644)
	build := func(files ...File) (*Result, []Entry) {
		res, err := Build(Options{Sim: bb, Busybox: bb, Kernel: kernel, ModulesFrom: mods, Tools: []string{}, Out: filepath.Join(dir, "out"), Files: files})
		if err != nil {
			t.Fatal(err)
		}
		z, _ := os.ReadFile(res.Initrd)
		d, _ := zstd.NewReader(nil)
		defer d.Close()
		raw, err := d.DecodeAll(z, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res, readCpio(t, raw)
	}
	res, ents := build(File{Name: TokenFile, Data: []byte("sim_tok\n"), Mode: 0o600}, File{Name: CAFile, Data: []byte("pem"), Mode: 0o644},
		File{Name: TrustDir + "/00-admin.pub", Data: []byte("sim-ed25519 x admin\n"), Mode: 0o644})
	got := map[string]Entry{}
	for _, e := range ents {
		got[e.Name] = e
	}
	for name, want := range map[string]uint32{TokenFile: ModeFile | 0o600, CAFile: ModeFile | 0o644, TrustDir + "/00-admin.pub": ModeFile | 0o644, "etc/sim": ModeDir | 0o755} {
		if got[name].Mode != want {
			t.Errorf("%s: mode %o, want %o", name, got[name].Mode, want)
		}
	}
	if string(got[TokenFile].Data) != "sim_tok\n" {
		t.Errorf("token: %q", got[TokenFile].Data)
	}
	if fi, _ := os.Stat(res.Initrd); fi.Mode().Perm() != 0o600 {
		t.Errorf("initrd with a token is mode %04o, want 0600", fi.Mode().Perm())
	}
	res, _ = build(File{Name: CAFile, Data: []byte("pem"), Mode: 0o644})
	if fi, _ := os.Stat(res.Initrd); fi.Mode().Perm() != 0o644 {
		t.Errorf("initrd without secrets is mode %04o, want 0644", fi.Mode().Perm())
	}
	for _, bad := range []string{"/etc/x", "../x", "init", "etc"} {
		if _, err := Build(Options{Sim: bb, Busybox: bb, Kernel: kernel, ModulesFrom: mods, Tools: []string{}, Out: filepath.Join(dir, "out"), Files: []File{{Name: bad, Mode: 0o644}}}); err == nil {
			t.Errorf("baking %q accepted", bad)
		}
	}
}

// TestBuildFirmware: the firmware a module names (its .modinfo) goes in
// from the firmware root, byte for byte; none with NoFirmware; a root
// without it lists it as missing. On the host's own kernel: carl9170,
// whose firmware file Debian's kernel package ships.
func TestBuildFirmware(t *testing.T) {
	bb := "/bin/busybox"
	if ok, err := IsStatic(bb); err != nil || !ok {
		t.Skip("no static /bin/busybox (busybox-static) to stand in for sim")
	}
	want, err := os.ReadFile("/lib/firmware/carl9170-1.fw")
	if err != nil {
		t.Skipf("no /lib/firmware/carl9170-1.fw on this host (%v)", err)
	}
	vers, _ := filepath.Glob("/lib/modules/*/kernel/drivers/net/wireless/ath/carl9170/carl9170.ko*")
	if len(vers) == 0 {
		t.Skip("no carl9170 module under /lib/modules on this host")
	}
	version := strings.Split(strings.TrimPrefix(vers[0], "/lib/modules/"), "/")[0]
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz-"+version)
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	build := func(fw string) (*Result, map[string]Entry) {
		t.Helper()
		res, err := Build(Options{Sim: bb, Busybox: bb, Kernel: kernel, ModulesFrom: "/", FirmwareFrom: fw, Modules: []string{"carl9170"},
			Tools: []string{}, Out: filepath.Join(dir, "out")})
		if err != nil {
			t.Fatal(err)
		}
		z, _ := os.ReadFile(res.Initrd)
		d, _ := zstd.NewReader(nil)
		defer d.Close()
		raw, err := d.DecodeAll(z, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]Entry{}
		for _, e := range readCpio(t, raw) {
			got[e.Name] = e
		}
		return res, got
	}
	res, got := build("")
	if e, ok := got["lib/firmware/carl9170-1.fw"]; !ok || !bytes.Equal(e.Data, want) || !slices.Contains(res.Firmware, "carl9170-1.fw") {
		t.Errorf("firmware from / : in initrd %v, result %v %v", ok, res.Firmware, res.MissingFirmware)
	}
	if res, got := build(NoFirmware); len(res.Firmware) != 0 || got["lib/firmware/carl9170-1.fw"].Name != "" {
		t.Errorf("NoFirmware: %v", res.Firmware)
	}
	if res, _ := build(t.TempDir()); !slices.Contains(res.MissingFirmware, "carl9170-1.fw") {
		t.Errorf("a root without the firmware: missing %v", res.MissingFirmware)
	}
}
