// Package snapshottest is test support for sim's snapshot round-trip tests.
//
// It does two things on a real filesystem:
//
//   - Build creates a directory tree that contains every special case a
//     faithful system-image snapshot must round-trip (odd names, sparse
//     files, special mode bits, symlinks, hardlinks, fifos, sockets, device
//     nodes, ownership, xattrs, POSIX ACLs, file capabilities and
//     nanosecond mtimes on every entry).
//   - Diff (and Equal, its test-assertion form) compares two real directory
//     trees exactly and lists the differences, one human-readable line each.
//
// What it does not do: it does not snapshot or restore anything itself, it
// does not mock a filesystem, and it never follows symlinks. Diff does not
// compare atime or ctime, directory sizes, directory link counts, inode
// numbers, block counts beyond the data/hole map, inode flags (chattr
// +i/+a, lsattr) or anything outside the two trees (e.g. hardlinks to paths
// outside a tree are not detected). It is Linux-only (SEEK_DATA/SEEK_HOLE,
// Linux xattr namespaces).
//
// # Layout built by Build
//
// All names are relative to the directory given to Build. Every entry,
// including the root, directories and symlinks, gets a distinct explicit
// mtime (1600000000.123456789 + i seconds and nanoseconds, i being the
// entry's index in byte-sorted path order).
//
//	.                         mode 0755
//	empty                     empty regular file
//	text.txt                  small text file
//	random.bin                1 MiB deterministic pseudo-random data
//	names/\xff\xfe            non-UTF-8 name
//	names/new\nline           name containing a newline
//	names/with space 'single' "double"
//	names/-leading-dash, names/back\slash, names/café (NFC), names/café (NFD)
//	names/<255 x 'n'>         longest legal name
//	names/group3-c            hardlink, see hard/
//	sparse/sparse64m          64 MiB, data at 1 MiB and 40 MiB, holes elsewhere
//	sparse/sparse5g           5 GiB, data at 4.5 GiB only
//	sparse/tailhole           8 KiB data then a hole up to 1 MiB+1
//	dirs/a/b/c/deep.txt       nesting
//	dirs/a/b/group3-b         hardlink, see hard/
//	dirs/empty/               empty directory
//	dirs/private/             mode 0700
//	dirs/sticky/              mode 01777
//	dirs/setgid/              mode 02755 (with a file inside)
//	modes/setuid              mode 04755
//	modes/setgid              mode 02755
//	modes/none                mode 0000
//	modes/readonly            mode 0444
//	links/relative            -> ../text.txt
//	links/absolute            -> /etc/passwd (must never be followed)
//	links/dangling            -> does/not/exist
//	links/todir               -> ../dirs/a
//	links/nonutf8             -> "\xff\xfe-target"
//	links/long                -> a 1000-byte relative target (not inline in the inode)
//	hard/group3-a             one inode with dirs/a/b/group3-b and names/group3-c
//	hard/group2-a             one inode with hard/sub/group2-b
//	special/fifo              mkfifo, mode 0640
//	special/socket            unix socket (bound, then closed), mode 0755
//	special/null              char device 1,3 mode 0666          [root]
//	special/loop0             block device 7,0 mode 0660         [root]
//	owners/u1234              regular file 1234:5678             [root]
//	owners/nobody             regular file 0:65534               [root]
//	owners/dir/               directory 1234:5678                [root]
//	owners/link               symlink lchown'ed to 1234:5678     [root]
//	xattr/file                user.binary (binary bytes), user.empty (""), user.large (1000 bytes)  [user xattrs]
//	xattr/dir/                user.dir on a directory           [user xattrs]
//	xattr/trusted             trusted.sim                        [root]
//	xattr/capbin              0755 script with security.capability = cap_net_raw+ep  [root]
//	acl/                      system.posix_acl_access and system.posix_acl_default  [ACL support]
//	acl/file                  system.posix_acl_access            [ACL support]
//	acl/plain                 created before acl/ got its default ACL: has NO ACL,
//	                          so a restore must not let it inherit one
//
// # Cases that need root or filesystem support
//
// Device nodes (special/null, special/loop0: CAP_MKNOD), chown to other
// users (owners/*: CAP_CHOWN), trusted.* xattrs (xattr/trusted:
// CAP_SYS_ADMIN) and security.capability (xattr/capbin: CAP_SETFCAP) need
// root. user.* xattrs and POSIX ACLs need filesystem support (ext4, xfs,
// btrfs and tmpfs since Linux 6.6 have it). When one of these is
// impossible, Build logs the skipped case with tb.Logf and goes on: the
// entry then exists without the special property (e.g. owners/u1234 is
// owned by the caller) or, for device nodes, not at all, which is still a
// valid tree to round-trip. Because mtimes follow the sorted entry index, a
// tree built without root has other mtimes than one built as root.
//
// Everything else works unprivileged, including the setuid/setgid/sticky
// bits, the 0000 file (Diff reads it by briefly adding owner read
// permission when it is not root) and ACLs naming other users.
package snapshottest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// BaseMtime is the mtime (seconds, nanoseconds) Build gives the first entry
// in byte-sorted path order (the root); entry i gets BaseMtimeSec+i seconds
// and BaseMtimeNsec+i nanoseconds.
const (
	BaseMtimeSec  = 1600000000
	BaseMtimeNsec = 123456789
)

// Tags of POSIX ACL entries in the Linux xattr format (ACLEntry.Tag).
const (
	ACLUserObj  = 0x01
	ACLUser     = 0x02
	ACLGroupObj = 0x04
	ACLGroup    = 0x08
	ACLMask     = 0x10
	ACLOther    = 0x20
)

const (
	aclUndefID = 0xFFFFFFFF // id of entries other than ACLUser/ACLGroup
	aclVersion = 2
)

// ACLEntry is one entry of a POSIX ACL.
type ACLEntry struct {
	Tag  uint16 // ACLUserObj, ACLUser, ACLGroupObj, ACLGroup, ACLMask or ACLOther
	Perm uint16 // rwx bits: 4 read, 2 write, 1 execute
	ID   uint32 // uid/gid for ACL_USER/ACL_GROUP, ignored (written as 0xFFFFFFFF) otherwise
}

// EncodeACL returns the binary value of a system.posix_acl_access or
// system.posix_acl_default xattr: a little-endian uint32 version 2 header
// followed by (uint16 tag, uint16 perm, uint32 id) entries sorted by tag
// then id.
func EncodeACL(entries ...ACLEntry) []byte {
	es := append([]ACLEntry(nil), entries...)
	for i := range es {
		switch es[i].Tag {
		case ACLUser, ACLGroup:
		default:
			es[i].ID = aclUndefID
		}
	}
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Tag != es[j].Tag {
			return es[i].Tag < es[j].Tag
		}
		return es[i].ID < es[j].ID
	})
	b := make([]byte, 4, 4+8*len(es))
	binary.LittleEndian.PutUint32(b, aclVersion)
	for _, e := range es {
		b = binary.LittleEndian.AppendUint16(b, e.Tag)
		b = binary.LittleEndian.AppendUint16(b, e.Perm)
		b = binary.LittleEndian.AppendUint32(b, e.ID)
	}
	return b
}

// CapNetRawEP is the security.capability value for "cap_net_raw+ep": a
// version 2 VFS capability (magic_etc 0x02000001 = revision 2 | effective),
// permitted low word 1<<13 (CAP_NET_RAW), everything else 0.
var CapNetRawEP = func() []byte {
	b := make([]byte, 0, 20)
	b = binary.LittleEndian.AppendUint32(b, 0x02000001) // magic_etc
	b = binary.LittleEndian.AppendUint32(b, 1<<13)      // permitted[0]
	b = binary.LittleEndian.AppendUint32(b, 0)          // inheritable[0]
	b = binary.LittleEndian.AppendUint32(b, 0)          // permitted[1]
	b = binary.LittleEndian.AppendUint32(b, 0)          // inheritable[1]
	return b
}()

// builder carries the state of one Build call.
type builder struct {
	tb   testing.TB
	root string
	rng  *rand.ChaCha8
}

// Build creates under dir (which must exist and be empty) a tree with every
// special case listed in the package documentation. Cases that need root or
// filesystem support are skipped with tb.Logf when impossible, never
// failing; any other error is fatal. Build also sets the mode (0755) and
// mtime of dir itself. The result is deterministic: two Builds by the same
// user on the same kind of filesystem give trees for which Diff reports
// nothing.
func Build(tb testing.TB, dir string) {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("snapshottest.Build: %v", err)
	}
	if len(ents) != 0 {
		tb.Fatalf("snapshottest.Build: %s is not empty", dir)
	}
	var seed [32]byte
	copy(seed[:], "sim snapshottest deterministic!!")
	b := &builder{tb: tb, root: filepath.Clean(dir), rng: rand.NewChaCha8(seed)}
	b.build()
}

func (b *builder) p(rel string) string { return filepath.Join(b.root, rel) }

func (b *builder) check(what string, err error) {
	if err != nil {
		b.tb.Helper()
		b.tb.Fatalf("snapshottest.Build: %s: %v", what, err)
	}
}

// optional reports whether err means "not possible here" (missing privilege
// or filesystem support), logging the skipped case; other errors are fatal.
// EINVAL counts as "not possible" only for chown (an id not mapped in a
// user namespace).
func (b *builder) optional(what string, err error) bool {
	b.tb.Helper()
	if err == nil {
		return true
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) ||
		(errors.Is(err, unix.EINVAL) && strings.Contains(what, "chown")) {
		b.tb.Logf("snapshottest.Build: skipping %s: %v", what, err)
		return false
	}
	b.tb.Fatalf("snapshottest.Build: %s: %v", what, err)
	return false
}

func (b *builder) mkdir(rel string, mode uint32) {
	b.tb.Helper()
	b.check("mkdir "+rel, os.Mkdir(b.p(rel), 0o700))
	b.chmod(rel, mode)
}

func (b *builder) chmod(rel string, mode uint32) {
	b.tb.Helper()
	b.check("chmod "+rel, unix.Chmod(b.p(rel), mode))
}

func (b *builder) file(rel string, mode uint32, data []byte) {
	b.tb.Helper()
	b.check("write "+rel, os.WriteFile(b.p(rel), data, 0o600))
	b.chmod(rel, mode)
}

func (b *builder) random(n int) []byte {
	buf := make([]byte, n)
	_, _ = b.rng.Read(buf)
	return buf
}

// sparse creates rel with the given size and writes data at the given offsets.
func (b *builder) sparse(rel string, size int64, writes map[int64][]byte) {
	b.tb.Helper()
	f, err := os.OpenFile(b.p(rel), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	b.check("create "+rel, err)
	defer f.Close()
	b.check("truncate "+rel, f.Truncate(size))
	offs := make([]int64, 0, len(writes))
	for off := range writes {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	for _, off := range offs {
		_, err := f.WriteAt(writes[off], off)
		b.check("write "+rel, err)
	}
	b.check("close "+rel, f.Close())
	b.chmod(rel, 0o644)
}

func (b *builder) symlink(target, rel string) {
	b.tb.Helper()
	b.check("symlink "+rel, os.Symlink(target, b.p(rel)))
}

func (b *builder) link(oldRel, newRel string) {
	b.tb.Helper()
	b.check("link "+newRel, os.Link(b.p(oldRel), b.p(newRel)))
}

func (b *builder) setxattr(rel, name string, value []byte) bool {
	b.tb.Helper()
	return b.optional(fmt.Sprintf("xattr %s on %s", name, rel), unix.Lsetxattr(b.p(rel), name, value, 0))
}

func (b *builder) build() {
	b.tb.Helper()
	b.chmod(".", 0o755)

	// Regular files.
	b.file("empty", 0o644, nil)
	b.file("text.txt", 0o644, []byte("hello, system image\nsecond line\n"))
	b.file("random.bin", 0o644, b.random(1<<20))

	// Odd names.
	b.mkdir("names", 0o755)
	for _, n := range []string{
		"\xff\xfe",
		"new\nline",
		`with space 'single' "double"`,
		"-leading-dash",
		`back\slash`,
		"caf\u00e9",  // NFC
		"cafe\u0301", // NFD
		strings.Repeat("n", 255),
	} {
		b.file("names/"+n, 0o644, []byte("name: "+n+"\n"))
	}

	// Sparse files.
	b.mkdir("sparse", 0o755)
	b.sparse("sparse/sparse64m", 64<<20, map[int64][]byte{
		1 << 20:  b.random(64 << 10),
		40 << 20: b.random(4096 + 100),
	})
	b.sparse("sparse/sparse5g", 5<<30, map[int64][]byte{
		4<<30 + 512<<20: b.random(8 << 10),
	})
	b.sparse("sparse/tailhole", 1<<20+1, map[int64][]byte{
		0: b.random(8 << 10),
	})

	// Directories.
	b.mkdir("dirs", 0o755)
	b.mkdir("dirs/a", 0o755)
	b.mkdir("dirs/a/b", 0o755)
	b.mkdir("dirs/a/b/c", 0o755)
	b.file("dirs/a/b/c/deep.txt", 0o644, []byte("three levels down\n"))
	b.mkdir("dirs/empty", 0o755)
	b.mkdir("dirs/private", 0o700)
	b.file("dirs/private/secret", 0o600, []byte("secret\n"))
	b.mkdir("dirs/sticky", 0o1777)
	b.file("dirs/sticky/tmpfile", 0o666, []byte("tmp\n"))
	b.mkdir("dirs/setgid", 0o2755)
	b.file("dirs/setgid/inherits", 0o644, []byte("group inherited\n"))

	// Mode bits.
	b.mkdir("modes", 0o755)
	b.file("modes/setuid", 0o4755, []byte("#!/bin/sh\necho setuid\n"))
	b.file("modes/setgid", 0o2755, []byte("#!/bin/sh\necho setgid\n"))
	b.file("modes/none", 0o000, []byte("no permissions\n"))
	b.file("modes/readonly", 0o444, []byte("read only\n"))

	// Symlinks.
	b.mkdir("links", 0o755)
	b.symlink("../text.txt", "links/relative")
	b.symlink("/etc/passwd", "links/absolute")
	b.symlink("does/not/exist", "links/dangling")
	b.symlink("../dirs/a", "links/todir")
	b.symlink("\xff\xfe-target", "links/nonutf8")
	b.symlink(strings.Repeat("long/", 199)+"e.txt", "links/long") // 1000 bytes

	// Hardlinks.
	b.mkdir("hard", 0o755)
	b.mkdir("hard/sub", 0o755)
	b.file("hard/group3-a", 0o644, []byte("one inode, three names\n"))
	b.link("hard/group3-a", "dirs/a/b/group3-b")
	b.link("hard/group3-a", "names/group3-c")
	b.file("hard/group2-a", 0o640, []byte("one inode, two names\n"))
	b.link("hard/group2-a", "hard/sub/group2-b")

	// Fifo, socket, devices.
	b.mkdir("special", 0o755)
	b.check("mkfifo special/fifo", unix.Mkfifo(b.p("special/fifo"), 0o600))
	b.chmod("special/fifo", 0o640)
	b.socket("special/socket")
	b.chmod("special/socket", 0o755)
	if b.optional("char device special/null (needs root)", unix.Mknod(b.p("special/null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))) {
		b.chmod("special/null", 0o666)
	}
	if b.optional("block device special/loop0 (needs root)", unix.Mknod(b.p("special/loop0"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0)))) {
		b.chmod("special/loop0", 0o660)
	}

	// Ownership.
	b.mkdir("owners", 0o755)
	b.file("owners/u1234", 0o644, []byte("owned by 1234:5678\n"))
	b.optional("chown owners/u1234 1234:5678 (needs root)", unix.Lchown(b.p("owners/u1234"), 1234, 5678))
	b.file("owners/nobody", 0o644, []byte("owned by 0:65534\n"))
	b.optional("chown owners/nobody 0:65534 (needs root)", unix.Lchown(b.p("owners/nobody"), 0, 65534))
	b.mkdir("owners/dir", 0o755)
	b.optional("chown owners/dir 1234:5678 (needs root)", unix.Lchown(b.p("owners/dir"), 1234, 5678))
	b.symlink("u1234", "owners/link")
	b.optional("lchown owners/link 1234:5678 (needs root)", unix.Lchown(b.p("owners/link"), 1234, 5678))

	// Extended attributes.
	b.mkdir("xattr", 0o755)
	b.file("xattr/file", 0o644, []byte("has user xattrs\n"))
	if b.setxattr("xattr/file", "user.binary", []byte("\x00\x01\x02\xff\xfebin\x00\n")) {
		b.setxattr("xattr/file", "user.empty", []byte{})
		b.setxattr("xattr/file", "user.large", b.random(1000))
	}
	b.mkdir("xattr/dir", 0o755)
	b.setxattr("xattr/dir", "user.dir", []byte("directory value"))
	b.file("xattr/trusted", 0o644, []byte("has a trusted xattr\n"))
	b.setxattr("xattr/trusted", "trusted.sim", []byte("trusted value\x00"))
	// The capability goes last: writing or chowning the file would drop it.
	b.file("xattr/capbin", 0o755, []byte("#!/bin/sh\necho cap_net_raw+ep\n"))
	b.setxattr("xattr/capbin", "security.capability", CapNetRawEP)

	// POSIX ACLs. acl/plain is created before acl/ gets a default ACL, so
	// it has none; acl/file gets an explicit access ACL.
	b.mkdir("acl", 0o750)
	b.file("acl/plain", 0o644, []byte("no ACL, despite the default ACL of its directory\n"))
	b.file("acl/file", 0o640, []byte("has an access ACL\n"))
	if b.setxattr("acl/file", "system.posix_acl_access", EncodeACL(
		ACLEntry{Tag: ACLUserObj, Perm: 6},
		ACLEntry{Tag: ACLUser, Perm: 4, ID: 1234},
		ACLEntry{Tag: ACLGroupObj, Perm: 4},
		ACLEntry{Tag: ACLGroup, Perm: 4, ID: 5678},
		ACLEntry{Tag: ACLMask, Perm: 4},
		ACLEntry{Tag: ACLOther, Perm: 0},
	)) {
		b.setxattr("acl", "system.posix_acl_access", EncodeACL(
			ACLEntry{Tag: ACLUserObj, Perm: 7},
			ACLEntry{Tag: ACLUser, Perm: 5, ID: 1234},
			ACLEntry{Tag: ACLGroupObj, Perm: 5},
			ACLEntry{Tag: ACLMask, Perm: 5},
			ACLEntry{Tag: ACLOther, Perm: 0},
		))
		b.setxattr("acl", "system.posix_acl_default", EncodeACL(
			ACLEntry{Tag: ACLUserObj, Perm: 7},
			ACLEntry{Tag: ACLUser, Perm: 7, ID: 1234},
			ACLEntry{Tag: ACLGroupObj, Perm: 5},
			ACLEntry{Tag: ACLGroup, Perm: 5, ID: 5678},
			ACLEntry{Tag: ACLMask, Perm: 7},
			ACLEntry{Tag: ACLOther, Perm: 0},
		))
	}

	b.setMtimes()
}

// socket binds a unix socket at rel and closes it; the inode stays. The
// bind goes through /proc/self/fd/N of the parent directory so that long
// temporary paths do not hit the 108-byte sun_path limit.
func (b *builder) socket(rel string) {
	b.tb.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	b.check("socket", err)
	defer unix.Close(fd)
	addr := b.p(rel)
	if len(addr) >= 100 {
		dfd, err := unix.Open(filepath.Dir(addr), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		b.check("open "+filepath.Dir(rel), err)
		defer unix.Close(dfd)
		addr = fmt.Sprintf("/proc/self/fd/%d/%s", dfd, filepath.Base(rel))
	}
	b.check("bind "+rel, unix.Bind(fd, &unix.SockaddrUnix{Name: addr}))
}

// setMtimes gives every entry, in byte-sorted path order, a distinct mtime
// (and the same atime), children before parents so that nothing changes a
// directory's mtime afterwards.
func (b *builder) setMtimes() {
	b.tb.Helper()
	var rels []string
	err := filepath.WalkDir(b.root, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != b.root {
			rels = append(rels, p[len(b.root)+1:])
		}
		return nil
	})
	b.check("walk", err)
	sort.Strings(rels)
	rels = append([]string{"."}, rels...)
	for i := len(rels) - 1; i >= 0; i-- {
		ts := unix.Timespec{Sec: BaseMtimeSec + int64(i), Nsec: BaseMtimeNsec + int64(i)}
		b.check("utimes "+rels[i], unix.UtimesNanoAt(unix.AT_FDCWD, b.p(rels[i]), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
}
