package snapshottest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func isRoot() bool { return os.Geteuid() == 0 }

// build returns a fresh tree made by Build.
func build(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	Build(t, dir)
	return dir
}

// copyTree copies src with cp -a --sparse=always and returns the copy.
// When not root, files without owner read permission (modes/none) are made
// readable for the copy and get their mode back afterwards in both trees.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	unreadable := map[string]uint32{}
	if !isRoot() {
		must(t, filepath.WalkDir(src, func(p string, de os.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			if st.Mode&0o400 == 0 {
				unreadable[p[len(src):]] = st.Mode & 0o7777
				return unix.Chmod(p, st.Mode&0o7777|0o400)
			}
			return nil
		}))
	}
	out, err := exec.Command("cp", "-a", "--sparse=always", src, dst).CombinedOutput()
	for rel, mode := range unreadable {
		must(t, unix.Chmod(src+rel, mode))
		if err == nil {
			must(t, unix.Chmod(dst+rel, mode))
		}
	}
	if err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	return dst
}

// keep records the atime/mtime of the given entries of dir and returns a
// function that puts them back (on whatever entry then has that name), so
// that a perturbation changes only what it means to change.
func keep(t *testing.T, dir string, rels ...string) func() {
	t.Helper()
	type saved struct {
		p  string
		ts []unix.Timespec
	}
	var ss []saved
	for _, rel := range rels {
		p := filepath.Join(dir, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatalf("keep: %v", err)
		}
		ss = append(ss, saved{p, []unix.Timespec{st.Atim, st.Mtim}})
	}
	return func() {
		t.Helper()
		for _, s := range ss {
			err := unix.UtimesNanoAt(unix.AT_FDCWD, s.p, s.ts, unix.AT_SYMLINK_NOFOLLOW)
			if err != nil && !errors.Is(err, unix.ENOENT) {
				t.Fatalf("restore times of %s: %v", s.p, err)
			}
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, p string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	_, err = f.WriteAt(data, off)
	must(t, err)
	must(t, f.Close())
}

func bumpMtime(t *testing.T, p string, ns int64) {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	m := unix.NsecToTimespec(unix.TimespecToNsec(st.Mtim) + ns)
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{st.Atim, m}, unix.AT_SYMLINK_NOFOLLOW))
}

func hasXattr(p, name string) bool {
	_, err := unix.Lgetxattr(p, name, nil)
	return err == nil
}

func exists(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil
}

// matchLines checks that got has exactly one line per pattern; a pattern
// ending in "*" matches any line with the preceding prefix.
func matchLines(t *testing.T, got, want []string) {
	t.Helper()
	used := make([]bool, len(got))
	ok := len(got) == len(want)
	for _, w := range want {
		found := false
		for i, g := range got {
			if used[i] {
				continue
			}
			if g == w || (strings.HasSuffix(w, "*") && strings.HasPrefix(g, strings.TrimSuffix(w, "*"))) {
				used[i], found = true, true
				break
			}
		}
		ok = ok && found
	}
	if !ok {
		t.Errorf("Diff lines:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
	if !sort.StringsAreSorted(got) {
		t.Errorf("Diff lines not sorted: %q", got)
	}
}

// fakeTB records Fatalf/Logf; Fatalf ends the goroutine like the real one.
type fakeTB struct {
	testing.TB
	fatal string
	logs  []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func runFake(t *testing.T, fn func(tb testing.TB)) *fakeTB {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

func TestCopyIsEqual(t *testing.T) {
	src := build(t)
	if d, err := Diff(src, src); err != nil || d != nil {
		t.Fatalf("Diff(src, src) = %q, %v", d, err)
	}
	// GNU cp -a preserves everything Build makes (on ext4 as root,
	// including ACLs, security.capability, trusted.* and holes).
	dst := copyTree(t, src)
	Equal(t, src, dst)
}

func TestBuildDeterministic(t *testing.T) {
	a, b := build(t), build(t)
	Equal(t, a, b)
}

// TestBuild checks that Build made every case it promises.
func TestBuild(t *testing.T) {
	dir := build(t)
	p := func(rel string) string { return filepath.Join(dir, rel) }
	lst := func(rel string) *unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p(rel), &st); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		return &st
	}

	// Types and modes.
	for _, c := range []struct {
		rel  string
		typ  uint32
		mode uint32
	}{
		{".", unix.S_IFDIR, 0o755},
		{"empty", unix.S_IFREG, 0o644},
		{"dirs/a/b/c", unix.S_IFDIR, 0o755},
		{"dirs/empty", unix.S_IFDIR, 0o755},
		{"dirs/private", unix.S_IFDIR, 0o700},
		{"dirs/sticky", unix.S_IFDIR, 0o1777},
		{"dirs/setgid", unix.S_IFDIR, 0o2755},
		{"modes/setuid", unix.S_IFREG, 0o4755},
		{"modes/setgid", unix.S_IFREG, 0o2755},
		{"modes/none", unix.S_IFREG, 0},
		{"modes/readonly", unix.S_IFREG, 0o444},
		{"links/absolute", unix.S_IFLNK, 0o777},
		{"special/fifo", unix.S_IFIFO, 0o640},
		{"special/socket", unix.S_IFSOCK, 0o755},
		{"xattr/capbin", unix.S_IFREG, 0o755},
		{"acl", unix.S_IFDIR, 0o750},
	} {
		st := lst(c.rel)
		if st.Mode&unix.S_IFMT != c.typ || st.Mode&0o7777 != c.mode {
			t.Errorf("%s: mode %o, want type %o perm %04o", c.rel, st.Mode, c.typ, c.mode)
		}
	}
	if n, _ := os.ReadDir(p("dirs/empty")); len(n) != 0 {
		t.Errorf("dirs/empty has %d entries", len(n))
	}
	names, err := os.ReadDir(p("names"))
	must(t, err)
	var nameList []string
	for _, n := range names {
		nameList = append(nameList, n.Name())
	}
	for _, n := range []string{"\xff\xfe", "new\nline", `with space 'single' "double"`, "caf\u00e9", "cafe\u0301", strings.Repeat("n", 255)} {
		if !exists(p("names/" + n)) {
			t.Errorf("names/%q missing; have %q", n, nameList)
		}
	}

	// Sizes and holes.
	for _, c := range []struct {
		rel      string
		size     int64
		maxAlloc int64 // bytes
	}{
		{"random.bin", 1 << 20, 2 << 20},
		{"sparse/sparse64m", 64 << 20, 1 << 20},
		{"sparse/sparse5g", 5 << 30, 1 << 20},
		{"sparse/tailhole", 1<<20 + 1, 64 << 10},
	} {
		st := lst(c.rel)
		if st.Size != c.size || st.Blocks*512 > c.maxAlloc {
			t.Errorf("%s: size %d with %d bytes allocated, want size %d with at most %d allocated",
				c.rel, st.Size, st.Blocks*512, c.size, c.maxAlloc)
		}
	}
	f, err := os.Open(p("sparse/sparse5g"))
	must(t, err)
	x, err := dataExtents(f, 5<<30)
	f.Close()
	must(t, err)
	if len(x) != 1 || x[0].off > 4<<30+512<<20 || x[0].end < 4<<30+512<<20+8<<10 {
		t.Errorf("sparse5g data extents %v", x)
	}

	// Symlinks.
	for rel, target := range map[string]string{
		"links/relative": "../text.txt",
		"links/absolute": "/etc/passwd",
		"links/dangling": "does/not/exist",
		"links/todir":    "../dirs/a",
		"links/nonutf8":  "\xff\xfe-target",
		"owners/link":    "u1234",
	} {
		if got, err := readlink(p(rel)); err != nil || got != target {
			t.Errorf("%s -> %q, %v; want %q", rel, got, err, target)
		}
	}
	if got, _ := readlink(p("links/long")); len(got) != 1000 {
		t.Errorf("links/long target has %d bytes, want 1000", len(got))
	}

	// Hardlinks.
	for _, g := range [][]string{
		{"hard/group3-a", "dirs/a/b/group3-b", "names/group3-c"},
		{"hard/group2-a", "hard/sub/group2-b"},
	} {
		first := lst(g[0])
		for _, rel := range g {
			st := lst(rel)
			if st.Ino != first.Ino || int(st.Nlink) != len(g) {
				t.Errorf("%s: ino %d nlink %d, want ino %d nlink %d", rel, st.Ino, st.Nlink, first.Ino, len(g))
			}
		}
	}

	// Xattrs and ACLs (always possible on the ext4 test machines; elsewhere
	// Build may have skipped them).
	if hasXattr(p("xattr/file"), "user.binary") {
		for name, want := range map[string][]byte{
			"user.binary": []byte("\x00\x01\x02\xff\xfebin\x00\n"),
			"user.empty":  {},
		} {
			v, err := getSized(func(b []byte) (int, error) { return unix.Lgetxattr(p("xattr/file"), name, b) })
			if err != nil || !bytes.Equal(v, want) {
				t.Errorf("xattr/file %s = %q, %v; want %q", name, v, err, want)
			}
		}
	} else {
		t.Logf("user xattrs not supported here")
	}
	if hasXattr(p("acl"), "system.posix_acl_default") {
		out, err := exec.Command("getfacl", "-n", "--omit-header", p("acl")).CombinedOutput()
		if err == nil && !bytes.Contains(out, []byte("default:group:5678:r-x")) {
			t.Errorf("getfacl acl:\n%s", out)
		}
		if hasXattr(p("acl/plain"), "system.posix_acl_access") {
			t.Errorf("acl/plain inherited an ACL")
		}
	} else {
		t.Logf("ACLs not supported here")
	}

	// Root-only cases: present when root.
	if isRoot() {
		for rel, want := range map[string][3]uint64{ // uid, gid, rdev
			"special/null":  {0, 0, unix.Mkdev(1, 3)},
			"special/loop0": {0, 0, unix.Mkdev(7, 0)},
			"owners/u1234":  {1234, 5678, 0},
			"owners/nobody": {0, 65534, 0},
			"owners/dir":    {1234, 5678, 0},
			"owners/link":   {1234, 5678, 0},
		} {
			st := lst(rel)
			if uint64(st.Uid) != want[0] || uint64(st.Gid) != want[1] || st.Rdev != want[2] {
				t.Errorf("%s: uid %d gid %d rdev %#x, want %v", rel, st.Uid, st.Gid, st.Rdev, want)
			}
		}
		if m := lst("special/null").Mode; m != unix.S_IFCHR|0o666 {
			t.Errorf("special/null mode %o", m)
		}
		v, err := getSized(func(b []byte) (int, error) { return unix.Lgetxattr(p("xattr/capbin"), "security.capability", b) })
		if err != nil || !bytes.Equal(v, CapNetRawEP) {
			t.Errorf("security.capability = %x, %v", v, err)
		}
		if out, err := exec.Command("getcap", p("xattr/capbin")).CombinedOutput(); err == nil &&
			!bytes.Contains(out, []byte("cap_net_raw=ep")) {
			t.Errorf("getcap: %s", out)
		}
		if !hasXattr(p("xattr/trusted"), "trusted.sim") {
			t.Errorf("trusted.sim missing")
		}
	} else {
		t.Logf("not root: devices, ownership, trusted.* and security.capability not checked")
	}

	// Mtimes: entry i in byte-sorted order (root first) has Base+i; a
	// hardlinked inode keeps the value of its first name.
	var rels []string
	must(t, filepath.WalkDir(dir, func(q string, _ os.DirEntry, err error) error {
		if err == nil && q != dir {
			rels = append(rels, q[len(dir)+1:])
		}
		return err
	}))
	sort.Strings(rels)
	rels = append([]string{"."}, rels...)
	seen := map[uint64]bool{}
	for i, rel := range rels {
		st := lst(rel)
		if seen[st.Ino] {
			continue
		}
		seen[st.Ino] = true
		want := unix.Timespec{Sec: BaseMtimeSec + int64(i), Nsec: BaseMtimeNsec + int64(i)}
		if st.Mtim != want {
			t.Errorf("%q: mtime %s, want %s", rel, fmtTime(st.Mtim), fmtTime(want))
		}
	}
}

func TestBuildNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "x"), nil, 0o644))
	f := runFake(t, func(tb testing.TB) { Build(tb, dir) })
	if !strings.Contains(f.fatal, "not empty") {
		t.Errorf("Build on a non-empty dir: fatal %q", f.fatal)
	}
}

func TestBuildLogsSkips(t *testing.T) {
	dir := t.TempDir()
	f := runFake(t, func(tb testing.TB) { Build(tb, dir) })
	if f.fatal != "" {
		t.Fatalf("Build failed: %s", f.fatal)
	}
	for _, l := range f.logs {
		t.Logf("Build logged: %s", l)
	}
	if isRoot() && len(f.logs) != 0 {
		t.Logf("note: as root Build still skipped %d case(s) on this filesystem", len(f.logs))
	}
}

// TestPerturbations changes one thing in a copy and checks that Diff
// reports exactly that.
func TestPerturbations(t *testing.T) {
	src := build(t)
	g3 := "{dirs/a/b/group3-b, hard/group3-a, names/group3-c}"
	g2 := "{hard/group2-a, hard/sub/group2-b}"
	cases := []struct {
		name      string
		root      bool                         // needs root
		needXattr [2]string                    // path, xattr that src must have
		perturb   func(t *testing.T, d string) // d is the copy
		opts      []Option
		want      []string // one pattern per line; a trailing * matches a prefix
	}{
		{
			name: "identical",
		},
		{
			name: "content byte",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "text.txt")()
				writeAt(t, filepath.Join(d, "text.txt"), 0, []byte("H"))
			},
			want: []string{"text.txt: content: differs at offset 0: got 0x48 want 0x68"},
		},
		{
			name: "content last byte",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "random.bin")()
				p := filepath.Join(d, "random.bin")
				b, err := os.ReadFile(p)
				must(t, err)
				writeAt(t, p, 1<<20-1, []byte{b[len(b)-1] ^ 0xff})
			},
			want: []string{"random.bin: content: differs at offset 1048575: *"},
		},
		{
			name: "content byte beyond 4 GiB",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "sparse/sparse5g")()
				p := filepath.Join(d, "sparse/sparse5g")
				f, err := os.Open(p)
				must(t, err)
				b := make([]byte, 1)
				_, err = f.ReadAt(b, 4<<30+512<<20+100)
				f.Close()
				must(t, err)
				writeAt(t, p, 4<<30+512<<20+100, []byte{b[0] ^ 1})
			},
			want: []string{"sparse/sparse5g: content: differs at offset 4831838308: *"},
		},
		{
			name: "size",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "text.txt")()
				writeAt(t, filepath.Join(d, "text.txt"), 32, []byte("x"))
			},
			want: []string{"text.txt: size: got 33 want 32"},
		},
		{
			name: "hole replaced by zeros",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "sparse/sparse64m")()
				writeAt(t, filepath.Join(d, "sparse/sparse64m"), 0, make([]byte, 4096))
			},
			want: []string{"sparse/sparse64m: holes differ: got data at [0-4096 1048576-*"},
		},
		{
			name: "hole replaced by zeros beyond 2 GiB",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "sparse/sparse5g")()
				writeAt(t, filepath.Join(d, "sparse/sparse5g"), 2<<30, make([]byte, 4096))
			},
			want: []string{"sparse/sparse5g: holes differ: got data at [2147483648-2147487744 *"},
		},
		{
			name: "tail hole filled",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "sparse/tailhole")()
				writeAt(t, filepath.Join(d, "sparse/tailhole"), 1<<20, []byte{0})
			},
			want: []string{"sparse/tailhole: holes differ: got data at [0-8192 1048576-1048577] want data at [0-8192]"},
		},
		{
			name: "data written into a hole",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "sparse/sparse64m")()
				writeAt(t, filepath.Join(d, "sparse/sparse64m"), 10<<20, []byte("x"))
			},
			want: []string{
				"sparse/sparse64m: holes differ: *",
				"sparse/sparse64m: content: differs at offset 10485760: got 0x78 want 0x00",
			},
		},
		{
			name:    "mode",
			perturb: func(t *testing.T, d string) { must(t, os.Chmod(filepath.Join(d, "modes/readonly"), 0o440)) },
			want:    []string{"modes/readonly: mode: got 0440 want 0444"},
		},
		{
			name:    "setuid dropped",
			perturb: func(t *testing.T, d string) { must(t, unix.Chmod(filepath.Join(d, "modes/setuid"), 0o755)) },
			want:    []string{"modes/setuid: mode: got 0755 want 4755"},
		},
		{
			name:    "sticky dropped",
			perturb: func(t *testing.T, d string) { must(t, unix.Chmod(filepath.Join(d, "dirs/sticky"), 0o777)) },
			want:    []string{"dirs/sticky: mode: got 0777 want 1777"},
		},
		{
			name:    "mode of non-UTF-8 name",
			perturb: func(t *testing.T, d string) { must(t, unix.Chmod(filepath.Join(d, "names/\xff\xfe"), 0o600)) },
			want:    []string{`"names/\xff\xfe": mode: got 0600 want 0644`},
		},
		{
			name:      "chmod of a file with an ACL changes its mask too",
			needXattr: [2]string{"acl/file", "system.posix_acl_access"},
			perturb:   func(t *testing.T, d string) { must(t, unix.Chmod(filepath.Join(d, "acl/file"), 0o600)) },
			want: []string{
				"acl/file: mode: got 0600 want 0640",
				"acl/file: xattr system.posix_acl_access: got acl(u::rw-,u:1234:r--,g::r--,g:5678:r--,m::---,o::---) want acl(u::rw-,u:1234:r--,g::r--,g:5678:r--,m::r--,o::---)",
			},
		},
		{
			name:    "mtime of file +1ns",
			perturb: func(t *testing.T, d string) { bumpMtime(t, filepath.Join(d, "text.txt"), 1) },
			want:    []string{"text.txt: mtime: *"},
		},
		{
			name:    "mtime of directory +1ns",
			perturb: func(t *testing.T, d string) { bumpMtime(t, filepath.Join(d, "dirs/a/b"), 1) },
			want:    []string{"dirs/a/b: mtime: *"},
		},
		{
			name:    "mtime of symlink +1ns",
			perturb: func(t *testing.T, d string) { bumpMtime(t, filepath.Join(d, "links/dangling"), 1) },
			want:    []string{"links/dangling: mtime: *"},
		},
		{
			name:    "mtime of root -1ns",
			perturb: func(t *testing.T, d string) { bumpMtime(t, d, -1) },
			want:    []string{".: mtime: got 1600000000.123456788 want 1600000000.123456789"},
		},
		{
			name:    "mtime of root ignored",
			perturb: func(t *testing.T, d string) { bumpMtime(t, d, 1e9) },
			opts:    []Option{IgnoreRootTimes()},
		},
		{
			name:      "xattr added",
			needXattr: [2]string{"xattr/file", "user.binary"}, // user xattrs supported
			perturb: func(t *testing.T, d string) {
				must(t, unix.Lsetxattr(filepath.Join(d, "text.txt"), "user.added", []byte("v\x00"), 0))
			},
			want: []string{`text.txt: xattr user.added: got "v\x00" want absent`},
		},
		{
			name:      "xattr added but ignored",
			needXattr: [2]string{"xattr/file", "user.binary"}, // user xattrs supported
			perturb: func(t *testing.T, d string) {
				must(t, unix.Lsetxattr(filepath.Join(d, "text.txt"), "user.added", []byte("v"), 0))
			},
			opts: []Option{IgnoreXattrs("user.")},
		},
		{
			name:      "xattr value changed",
			needXattr: [2]string{"xattr/file", "user.empty"},
			perturb: func(t *testing.T, d string) {
				must(t, unix.Lsetxattr(filepath.Join(d, "xattr/file"), "user.empty", []byte("x"), 0))
			},
			want: []string{`xattr/file: xattr user.empty: got "x" want ""`},
		},
		{
			name:      "xattr on directory removed",
			needXattr: [2]string{"xattr/dir", "user.dir"},
			perturb:   func(t *testing.T, d string) { must(t, unix.Lremovexattr(filepath.Join(d, "xattr/dir"), "user.dir")) },
			want:      []string{`xattr/dir: xattr user.dir: got absent want "directory value"`},
		},
		{
			name:      "default ACL removed",
			needXattr: [2]string{"acl", "system.posix_acl_default"},
			perturb: func(t *testing.T, d string) {
				must(t, unix.Lremovexattr(filepath.Join(d, "acl"), "system.posix_acl_default"))
			},
			want: []string{"acl: xattr system.posix_acl_default: got absent want acl(u::rwx,u:1234:rwx,g::r-x,g:5678:r-x,m::rwx,o::---)"},
		},
		{
			name:      "ACL inherited by a file that had none",
			needXattr: [2]string{"acl", "system.posix_acl_default"},
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "acl", "acl/plain")()
				p := filepath.Join(d, "acl/plain")
				must(t, os.Remove(p))
				must(t, os.WriteFile(p, []byte("no ACL, despite the default ACL of its directory\n"), 0o666))
				must(t, unix.Chmod(p, 0o644))
			},
			// Inherited from the default ACL, masked by the 0666 create mode.
			want: []string{"acl/plain: xattr system.posix_acl_access: got acl(u::rw-,u:1234:rwx,g::r-x,g:5678:r-x,m::r--,o::r--) want absent"},
		},
		{
			name: "hardlink broken",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "dirs/a/b", "dirs/a/b/group3-b")()
				p := filepath.Join(d, "dirs/a/b/group3-b")
				b, err := os.ReadFile(p)
				must(t, err)
				must(t, os.WriteFile(p+".tmp", b, 0o644))
				must(t, os.Rename(p+".tmp", p))
			},
			want: []string{
				"dirs/a/b/group3-b: hardlinks: got {dirs/a/b/group3-b} want " + g3,
				"hard/group3-a: hardlinks: got {hard/group3-a, names/group3-c} want " + g3,
				"names/group3-c: hardlinks: got {hard/group3-a, names/group3-c} want " + g3,
			},
		},
		{
			name: "hardlink added",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "hard")()
				must(t, os.Link(filepath.Join(d, "hard/group2-a"), filepath.Join(d, "hard/group2-c")))
			},
			want: []string{
				"hard/group2-c: presence: got regular file want absent",
				"hard/group2-a: hardlinks: got {hard/group2-a, hard/group2-c, hard/sub/group2-b} want " + g2,
				"hard/sub/group2-b: hardlinks: got {hard/group2-a, hard/group2-c, hard/sub/group2-b} want " + g2,
			},
		},
		{
			name: "symlink retargeted",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "links", "links/relative")()
				p := filepath.Join(d, "links/relative")
				must(t, os.Remove(p))
				must(t, os.Symlink("../empty", p))
			},
			want: []string{`links/relative: target: got "../empty" want "../text.txt"`},
		},
		{
			name: "symlink replaced by a file",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "links", "links/dangling")()
				p := filepath.Join(d, "links/dangling")
				must(t, os.Remove(p))
				must(t, os.WriteFile(p, nil, 0o644))
			},
			want: []string{"links/dangling: type: got regular file want symlink"},
		},
		{
			name: "directory with contents replaced by a file",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "dirs/a/b", "dirs/a/b/c")()
				p := filepath.Join(d, "dirs/a/b/c")
				must(t, os.RemoveAll(p))
				must(t, os.WriteFile(p, nil, 0o755))
			},
			want: []string{"dirs/a/b/c: type: got regular file want directory"},
		},
		{
			name: "fifo replaced by a socket",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "special", "special/fifo")()
				p := filepath.Join(d, "special/fifo")
				must(t, os.Remove(p))
				must(t, unix.Mknod(p, unix.S_IFSOCK|0o640, 0))
				must(t, unix.Chmod(p, 0o640))
			},
			want: []string{"special/fifo: type: got socket want fifo"},
		},
		{
			name: "file added",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, ".")()
				must(t, os.WriteFile(filepath.Join(d, "added"), nil, 0o644))
			},
			want: []string{"added: presence: got regular file want absent"},
		},
		{
			name: "file added in an ignored directory",
			perturb: func(t *testing.T, d string) {
				must(t, os.WriteFile(filepath.Join(d, "dirs/empty/added"), nil, 0o644))
			},
			opts: []Option{IgnorePaths("dirs/empty/")},
		},
		{
			name: "ignored subtree is not a prefix of its sibling's name",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, ".")()
				must(t, os.WriteFile(filepath.Join(d, "text.txt2"), nil, 0o644))
			},
			opts: []Option{IgnorePaths("text.txt", "names/*")},
			want: []string{"text.txt2: presence: got regular file want absent"},
		},
		{
			name: "file removed",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, ".")()
				must(t, os.Remove(filepath.Join(d, "text.txt")))
			},
			want: []string{"text.txt: presence: got absent want regular file"},
		},
		{
			name: "file with a newline in its name removed",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "names")()
				must(t, os.Remove(filepath.Join(d, "names/new\nline")))
			},
			want: []string{`"names/new\nline": presence: got absent want regular file`},
		},
		{
			name: "NFD name removed, NFC name kept",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "names")()
				must(t, os.Remove(filepath.Join(d, "names/cafe\u0301")))
			},
			want: []string{`"names/cafe\u0301": presence: got absent want regular file`},
		},
		{
			name: "directory subtree removed",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "dirs")()
				must(t, os.RemoveAll(filepath.Join(d, "dirs/a")))
			},
			want: []string{
				"dirs/a: presence: got absent want directory",
				"hard/group3-a: hardlinks: got {hard/group3-a, names/group3-c} want " + g3,
				"names/group3-c: hardlinks: got {hard/group3-a, names/group3-c} want " + g3,
			},
		},
		{
			name: "directory subtree removed but ignored",
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "dirs")()
				must(t, os.RemoveAll(filepath.Join(d, "dirs/a")))
			},
			opts: []Option{IgnorePaths("dirs/a")},
		},
		{
			name:    "chown",
			root:    true,
			perturb: func(t *testing.T, d string) { must(t, os.Lchown(filepath.Join(d, "text.txt"), 1, 2)) },
			want:    []string{"text.txt: gid: got 2 want 0", "text.txt: uid: got 1 want 0"},
		},
		{
			name:    "lchown of a symlink",
			root:    true,
			perturb: func(t *testing.T, d string) { must(t, os.Lchown(filepath.Join(d, "owners/link"), 0, 0)) },
			want:    []string{"owners/link: gid: got 0 want 5678", "owners/link: uid: got 0 want 1234"},
		},
		{
			name: "device number",
			root: true,
			perturb: func(t *testing.T, d string) {
				defer keep(t, d, "special", "special/null")()
				p := filepath.Join(d, "special/null")
				must(t, os.Remove(p))
				must(t, unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))))
				must(t, unix.Chmod(p, 0o666))
			},
			want: []string{"special/null: rdev: got 1,5 want 1,3"},
		},
		{
			name:      "capability removed",
			root:      true,
			needXattr: [2]string{"xattr/capbin", "security.capability"},
			perturb: func(t *testing.T, d string) {
				must(t, unix.Lremovexattr(filepath.Join(d, "xattr/capbin"), "security.capability"))
			},
			want: []string{"xattr/capbin: xattr security.capability: got absent want " + strconv.QuoteToASCII(string(CapNetRawEP))},
		},
		{
			name:      "trusted xattr changed",
			root:      true,
			needXattr: [2]string{"xattr/trusted", "trusted.sim"},
			perturb: func(t *testing.T, d string) {
				must(t, unix.Lsetxattr(filepath.Join(d, "xattr/trusted"), "trusted.sim", []byte("other"), 0))
			},
			want: []string{`xattr/trusted: xattr trusted.sim: got "other" want "trusted value\x00"`},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.root && !isRoot() {
				t.Skip("needs root (chown, mknod, trusted.* or security.capability)")
			}
			if c.needXattr[0] != "" && !hasXattr(filepath.Join(src, c.needXattr[0]), c.needXattr[1]) {
				t.Skipf("Build could not set %s on %s here", c.needXattr[1], c.needXattr[0])
			}
			dst := copyTree(t, src)
			if c.perturb != nil {
				c.perturb(t, dst)
			}
			got, err := Diff(src, dst, c.opts...)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range got {
				t.Logf("Diff: %s", l)
			}
			if len(c.want) == 0 && got != nil {
				t.Errorf("Diff = %q, want nil", got)
			}
			matchLines(t, got, c.want)
		})
	}
}

func TestDiffDirection(t *testing.T) {
	// want is the reference: swapping the trees swaps got and want.
	src := build(t)
	dst := copyTree(t, src)
	must(t, os.Chmod(filepath.Join(dst, "modes/readonly"), 0o400))
	d, err := Diff(dst, src)
	must(t, err)
	matchLines(t, d, []string{"modes/readonly: mode: got 0444 want 0400"})
}

func TestDiffRootThroughSymlink(t *testing.T) {
	src := build(t)
	link := filepath.Join(t.TempDir(), "link")
	must(t, os.Symlink(src, link))
	Equal(t, src, link)
}

func TestDiffErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	must(t, os.WriteFile(file, nil, 0o644))
	for _, c := range []struct {
		name      string
		want, got string
		opts      []Option
	}{
		{"missing want", filepath.Join(dir, "nope"), dir, nil},
		{"missing got", dir, filepath.Join(dir, "nope"), nil},
		{"not a directory", file, dir, nil},
		{"bad pattern", dir, dir, []Option{IgnorePaths("[")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if d, err := Diff(c.want, c.got, c.opts...); err == nil {
				t.Errorf("Diff = %q, nil; want an error", d)
			}
		})
	}
}

func TestEqual(t *testing.T) {
	want, got := t.TempDir(), t.TempDir()
	ts := []unix.Timespec{{Sec: 1}, {Sec: 1}}
	for _, d := range []string{want, got} {
		must(t, os.Chmod(d, 0o755))
		must(t, unix.UtimesNano(d, ts))
	}
	if f := runFake(t, func(tb testing.TB) { Equal(tb, want, got) }); f.fatal != "" {
		t.Fatalf("Equal on equal trees: %s", f.fatal)
	}
	for i := range 60 {
		must(t, os.WriteFile(filepath.Join(got, fmt.Sprintf("f%02d", i)), nil, 0o644))
	}
	must(t, unix.UtimesNano(got, ts))
	f := runFake(t, func(tb testing.TB) { Equal(tb, want, got) })
	lines := strings.Split(f.fatal, "\n")
	if len(lines) != 52 || !strings.Contains(lines[0], "60 difference(s)") ||
		strings.TrimSpace(lines[1]) != "f00: presence: got regular file want absent" ||
		strings.TrimSpace(lines[50]) != "f49: presence: got regular file want absent" ||
		strings.TrimSpace(lines[51]) != "... and 10 more" {
		t.Errorf("Equal message:\n%s", f.fatal)
	}
	f = runFake(t, func(tb testing.TB) { Equal(tb, want, filepath.Join(got, "nope")) })
	if !strings.Contains(f.fatal, "no such file") {
		t.Errorf("Equal on a missing tree: %q", f.fatal)
	}
}

func TestQuotePath(t *testing.T) {
	for in, want := range map[string]string{
		"a/b.txt":              "a/b.txt",
		".":                    ".",
		"with space":           "with space",
		" lead":                `" lead"`,
		"a: b":                 `"a: b"`,
		"new\nline":            `"new\nline"`,
		"\xff\xfe":             `"\xff\xfe"`,
		"caf\u00e9":            `"caf\u00e9"`,
		`q"uote`:               `"q\"uote"`,
		`back\slash`:           `"back\\slash"`,
		"tab\there":            `"tab\there"`,
		"it's fine, (really)!": "it's fine, (really)!",
	} {
		if got := QuotePath(in); got != want {
			t.Errorf("QuotePath(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestEncodeACL(t *testing.T) {
	// Entries are sorted by tag then id, *_OBJ/MASK/OTHER get id 0xFFFFFFFF.
	got := EncodeACL(
		ACLEntry{Tag: ACLOther, Perm: 4, ID: 7},
		ACLEntry{Tag: ACLUser, Perm: 6, ID: 1001},
		ACLEntry{Tag: ACLUser, Perm: 4, ID: 1000},
		ACLEntry{Tag: ACLUserObj, Perm: 7},
	)
	want := []byte{
		2, 0, 0, 0,
		0x01, 0, 7, 0, 0xff, 0xff, 0xff, 0xff,
		0x02, 0, 4, 0, 0xe8, 0x03, 0, 0,
		0x02, 0, 6, 0, 0xe9, 0x03, 0, 0,
		0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
	}
	if !bytes.Equal(got, want) {
		t.Errorf("EncodeACL = % x\nwant         % x", got, want)
	}
	if s, ok := decodeACL(got); !ok || s != "acl(u::rwx,u:1000:r--,u:1001:rw-,o::r--)" {
		t.Errorf("decodeACL = %q, %v", s, ok)
	}
	for _, bad := range [][]byte{nil, {1, 0, 0, 0}, got[:len(got)-1], append([]byte{2, 0, 0, 0}, 0x40, 0, 7, 0, 0, 0, 0, 0)} {
		if s, ok := decodeACL(bad); ok {
			t.Errorf("decodeACL(% x) = %q, want failure", bad, s)
		}
	}
	if s := fmtXattr("system.posix_acl_access", []byte{1, 2}); s != `"\x01\x02"` {
		t.Errorf("fmtXattr of a bad ACL = %s", s)
	}
	if len(CapNetRawEP) != 20 {
		t.Errorf("CapNetRawEP has %d bytes", len(CapNetRawEP))
	}
}
