package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// TestErrors checks that bad input gives a clear message and the right
// exit code: 1 for a failed command, 2 for a wrong command line.
func TestErrors(t *testing.T) {
	st := newStore(t)
	src := t.TempDir()
	writeFiles(t, src, map[string]string{"a": "a"})
	ok(t, st, "commit", src, "--image", "img")
	missing := filepath.Join(t.TempDir(), "nostore")
	for _, tc := range []struct {
		name  string
		store string
		args  []string
		code  int
		want  string
	}{
		{"missing store", missing, []string{"log", "img"}, 1, "no store at " + missing + ": run `sim init`"},
		{"init twice", st, []string{"init"}, 1, "a store already exists"},
		{"unknown ref", st, []string{"log", "nosuch"}, 1, `unknown ref "nosuch"`},
		{"too far back", st, []string{"show", "img~5"}, 1, "has no parent"},
		{"bad ~", st, []string{"show", "img~x"}, 1, "~ must be followed by a number"},
		{"no args", st, []string{"commit"}, 2, "accepts 1 arg"},
		{"no image", st, []string{"commit", src}, 2, "--image NAME is required"},
		{"bad flag", st, []string{"log", "--bogus", "img"}, 2, "unknown flag: --bogus"},
		{"bad image name", st, []string{"commit", src, "--image", "../x"}, 1, `invalid image name "../x"`},
		{"missing source", st, []string{"commit", filepath.Join(src, "nope"), "--image", "img"}, 1, "no such file or directory"},
		{"source not a dir", st, []string{"commit", filepath.Join(src, "a"), "--image", "img"}, 1, "not a directory"},
		{"cat a directory", st, []string{"cat", "img", "/"}, 1, "not a regular file"},
		{"cat missing", st, []string{"cat", "img", "/nope"}, 1, "no such file or directory in the image"},
		{"tag missing ref", st, []string{"tag", "t1", "nosuch"}, 1, `unknown ref "nosuch"`},
		{"delete missing tag", st, []string{"tag", "-d", "nosuch"}, 1, "tag nosuch: not found"},
		{"rm missing image", st, []string{"image", "rm", "nosuch"}, 1, "image nosuch: not found"},
		{"unknown scheme: init", "ftp://bucket/p", []string{"init"}, 2, `store "ftp://bucket/p": unknown store scheme "ftp"`},
		{"s3 without endpoint", "s3://bucket/p", []string{"init"}, 2, `store "s3://bucket/p": no endpoint: add ?endpoint=`},
		{"unknown scheme: commit", "foo://x", []string{"commit", src, "--image", "img"}, 2, `unknown store scheme "foo"`},
		{"unknown scheme: log", "foo://x", []string{"log", "img"}, 2, `unknown store scheme "foo"`},
		{"unknown scheme: clone dir", st, []string{"clone", "http://127.0.0.1:1", "foo://x"}, 2, `unknown store scheme "foo"`},
		{"bad exclude file", st, []string{"commit", src, "--image", "img", "--exclude-from", "/nonexistent"}, 1, "exclude file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := sim(t, tc.store, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", r.code, r.stderr, tc.code, tc.want)
			}
			if tc.code != 0 && !strings.HasPrefix(r.stderr, "sim: ") {
				t.Errorf("stderr %q does not start with sim:", r.stderr)
			}
		})
	}
	// A refused scheme made no directory of its name (it used to make
	// ./s3: and commit into it).
	for _, d := range []string{"s3:", "foo:", "ftp:"} {
		if _, err := os.Lstat(d); err == nil {
			t.Errorf("a store location with a scheme made the directory %s", d)
			os.RemoveAll(d)
		}
	}
	// A directory that looks like one is still reachable as ./NAME.
	t.Chdir(t.TempDir())
	ok(t, "./foo://x", "init")
	if fi, err := os.Stat(filepath.Join("foo:", "x", "config")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("./foo://x: %v", err)
	}
}

// TestUnreadableFile runs sim as an unprivileged user on a tree holding a
// file it cannot read: the commit fails naming the file, and nothing moves.
func TestUnreadableFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run sim as another user (as non-root, chmod 000 alone would do: see the root path)")
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	os.Chmod(filepath.Dir(base), 0o755) // testing makes it 0700
	st := filepath.Join(base, "store")
	ok(t, st, "init")
	src := filepath.Join(base, "src")
	writeFiles(t, src, map[string]string{"ok": "fine", "secret": "no"})
	os.Chmod(filepath.Join(src, "secret"), 0)
	filepath.Walk(st, func(p string, fi os.FileInfo, err error) error { return os.Chown(p, 65534, 65534) })
	// The test binary's own directory is private: run a copy.
	exe := filepath.Join(base, "sim.test")
	if b, err := os.ReadFile(os.Args[0]); err != nil || os.WriteFile(exe, b, 0o755) != nil {
		t.Fatal("copy test binary", err)
	}
	c := simProcess("--store", st, "commit", src, "--image", "img")
	c.Path, c.Args[0] = exe, exe
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := c.CombinedOutput()
	if ee, isExit := err.(*exec.ExitError); !isExit || ee.ExitCode() != 1 {
		t.Fatalf("commit as nobody: %v %s", err, out)
	}
	if !strings.Contains(string(out), filepath.Join(src, "secret")) || !strings.Contains(string(out), "permission denied") {
		t.Errorf("message %q does not name the unreadable file", out)
	}
	filepath.Walk(st, func(p string, fi os.FileInfo, err error) error { return os.Chown(p, 0, 0) })
	if r := sim(t, st, "log", "img"); r.code != 1 {
		t.Errorf("a failed commit created the image: %+v", r)
	}
	ok(t, st, "fsck")
}

// TestWorkflow drives every command the way an admin would.
func TestWorkflow(t *testing.T) {
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"etc/motd": "hello\n", "etc/hostname": "golden\n", "usr/bin/tool": "#!/bin/sh\n"})
	c1 := lastLine(ok(t, st, "commit", src, "--image", "hpc", "-m", "first"))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(c1) {
		t.Fatalf("commit printed %q, want a 64-digit id", c1)
	}
	writeFiles(t, src, map[string]string{"etc/motd": "hello v2\n"})
	c2 := lastLine(ok(t, st, "commit", src, "--image", "hpc", "-m", "second"))

	// History and refs.
	var log []struct {
		ID      string `json:"id"`
		Message string `json:"message"`
	}
	decodeJSON(t, ok(t, st, "log", "hpc", "--json"), &log)
	if len(log) != 2 || log[0].ID != c2 || log[1].ID != c1 || log[0].Message != "second" {
		t.Fatalf("log: %+v", log)
	}
	if s := ok(t, st, "show", c2[:8]); !strings.Contains(s, "Parent: "+c1) {
		t.Errorf("show by prefix: %s", s)
	}
	ok(t, st, "tag", "hpc-1.0", "hpc~1")
	if r := sim(t, st, "tag", "hpc-1.0", "hpc"); r.code != 1 || !strings.Contains(r.stderr, "immutable") {
		t.Errorf("re-tag: %+v", r)
	}
	if s := ok(t, st, "tag"); !strings.Contains(s, "hpc-1.0") || !strings.Contains(s, c1[:12]) {
		t.Errorf("tag list: %s", s)
	}
	if got := ok(t, st, "cat", "hpc-1.0", "/etc/motd"); got != "hello\n" {
		t.Errorf("cat hpc-1.0: %q", got)
	}
	if got := ok(t, st, "cat", "hpc", "etc/motd"); got != "hello v2\n" {
		t.Errorf("cat hpc: %q", got)
	}
	var ls []struct {
		Path string `json:"path"`
		Type string `json:"type"`
		Size int    `json:"size"`
	}
	decodeJSON(t, ok(t, st, "ls", "hpc", "/etc", "--json"), &ls)
	if len(ls) != 2 || ls[0].Path != "etc/hostname" || ls[1].Size != 9 {
		t.Errorf("ls --json: %+v", ls)
	}
	if s := ok(t, st, "ls", "-l", "hpc"); !strings.Contains(s, "drwxr-xr-x") || !strings.Contains(s, "etc") {
		t.Errorf("ls -l: %s", s)
	}
	if s := ok(t, st, "diff", "hpc-1.0", "hpc", "--stat"); !strings.Contains(s, "M /etc/motd (content, mtime)") || !strings.Contains(s, "1 modified") {
		t.Errorf("diff: %s", s)
	}

	// Images: cp, mv, rm, with JSON listing.
	ok(t, st, "image", "cp", "hpc", "web")
	ok(t, st, "image", "mv", "web", "www")
	var ims []struct {
		Name string `json:"name"`
		Head string `json:"head"`
	}
	decodeJSON(t, ok(t, st, "images", "--json"), &ims)
	if len(ims) != 2 || ims[0].Name != "hpc" || ims[1].Name != "www" || ims[1].Head != c2 {
		t.Errorf("images: %+v", ims)
	}
	if s := ok(t, st, "image", "reflog", "www"); !strings.Contains(s, "renamed from web") || !strings.Contains(s, "copied from hpc") {
		t.Errorf("reflog after mv: %s", s)
	}
	ok(t, st, "image", "rm", "www")

	// Checkout, local edits, diff against the directory, rollback.
	node := filepath.Join(t.TempDir(), "node")
	ok(t, st, "checkout", "hpc", node)
	snapshottest.Equal(t, src, node)
	if s := ok(t, st, "diff", "hpc", node); s != "" {
		t.Errorf("diff against a fresh checkout: %q", s)
	}
	os.WriteFile(filepath.Join(node, "etc/hostname"), []byte("node7\n"), 0o644)
	if s := ok(t, st, "diff", "hpc", node); !strings.Contains(s, "M /etc/hostname (content") {
		t.Errorf("diff against an edited checkout: %q", s)
	}
	var co struct {
		Written, Removed, Metadata, Unchanged int
	}
	decodeJSON(t, ok(t, st, "checkout", "hpc-1.0", node, "--json"), &co)
	if co.Written != 2 { // motd rolled back, hostname repaired
		t.Errorf("rollback: %+v, want 2 written", co)
	}
	if got, _ := os.ReadFile(filepath.Join(node, "etc/motd")); string(got) != "hello\n" {
		t.Errorf("rolled back motd: %q", got)
	}

	// A non-empty directory sim did not write is refused without --force.
	other := t.TempDir()
	writeFiles(t, other, map[string]string{"precious": "data"})
	if r := sim(t, st, "checkout", "hpc", other); r.code != 1 || !strings.Contains(r.stderr, "not checked out from this store") || !strings.Contains(r.stderr, "--force") {
		t.Errorf("checkout into a foreign dir: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(other, "precious")); err != nil {
		t.Errorf("refused checkout touched the directory: %v", err)
	}
	ok(t, st, "checkout", "--force", "hpc", other)
	snapshottest.Equal(t, src, other)

	// gc after removing everything but the tag frees the second commit.
	ok(t, st, "image", "rm", "hpc")
	if s := ok(t, st, "gc"); !strings.Contains(s, "removed 3 blobs and 1 commits") {
		t.Errorf("gc: %s", s)
	}
	ok(t, st, "fsck", "--read-data")
	if got := ok(t, st, "cat", "hpc-1.0", "/etc/motd"); got != "hello\n" {
		t.Errorf("after gc: %q", got)
	}

	ok(t, st, "fsck", "--read-data")
}

// TestFsckFlippedByte damages one byte of a pack: fsck --read-data must
// fail and name the object and the image and tag it breaks.
func TestFsckFlippedByte(t *testing.T) {
	st := newStore(t)
	src := t.TempDir()
	writeFiles(t, src, map[string]string{"big": strings.Repeat("some compressible text\n", 50000), "small": "x"})
	ok(t, st, "commit", src, "--image", "img")
	ok(t, st, "tag", "rel", "img")
	packs, _ := filepath.Glob(filepath.Join(st, "packs", "*", "*.pack"))
	if len(packs) != 1 {
		t.Fatalf("%d packs, want 1", len(packs))
	}
	b, _ := os.ReadFile(packs[0])
	b[100] ^= 0x01 // inside the first frame
	os.WriteFile(packs[0], b, 0o644)
	r := sim(t, st, "fsck", "--read-data")
	if r.code != 1 {
		t.Fatalf("fsck --read-data on a damaged pack: exit %d\n%s", r.code, r.stdout)
	}
	for _, want := range []string{"content hashes to", "broken: image img, tag rel", "errors"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("fsck output lacks %q:\n%s", want, r.stdout)
		}
	}
	// Reading the damaged data fails loudly, never returns wrong bytes.
	if r := sim(t, st, "cat", "img", "big"); r.code != 1 {
		t.Errorf("cat of damaged data: exit %d", r.code)
	}
}
