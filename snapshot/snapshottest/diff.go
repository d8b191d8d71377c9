package snapshottest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Option changes what Diff and Equal compare.
type Option func(*options)

type options struct {
	ignore          []string
	ignoreRootTimes bool
	ignoreXattrs    []string
}

// IgnorePaths skips the given paths and, for directories, their whole
// subtrees in both trees. Patterns are relative, slash-separated paths
// ("var/cache", "etc/machine-id") matched with path.Match against each path,
// so they may use *, ? and [...] (a literal metacharacter in a name must be
// escaped with a backslash). A pattern that names a directory excludes
// everything below it; a leading or trailing slash is ignored. Ignored paths
// are also left out of hardlink groups.
func IgnorePaths(patterns ...string) Option {
	return func(o *options) { o.ignore = append(o.ignore, patterns...) }
}

// IgnoreRootTimes does not compare the mtime of the root directories
// themselves (useful when got is a pre-existing directory a checkout wrote
// into). Everything else about the roots is still compared.
func IgnoreRootTimes() Option {
	return func(o *options) { o.ignoreRootTimes = true }
}

// IgnoreXattrs does not compare xattrs whose names start with one of the
// given prefixes (e.g. "security.selinux", "trusted.").
func IgnoreXattrs(prefixes ...string) Option {
	return func(o *options) { o.ignoreXattrs = append(o.ignoreXattrs, prefixes...) }
}

func (o *options) ignoredPath(rel string) bool {
	for _, pat := range o.ignore {
		if ok, _ := path.Match(pat, rel); ok {
			return true
		}
	}
	return false
}

func (o *options) ignoredXattr(name string) bool {
	for _, p := range o.ignoreXattrs {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Equal is Diff as a test assertion: it calls tb.Fatalf listing at most 50
// differences when the trees differ or cannot be compared.
func Equal(tb testing.TB, want, got string, opts ...Option) {
	tb.Helper()
	diffs, err := Diff(want, got, opts...)
	if err != nil {
		tb.Fatalf("snapshottest.Equal: %v", err)
		return
	}
	if len(diffs) == 0 {
		return
	}
	const maxShown = 50
	shown := diffs
	if len(shown) > maxShown {
		shown = shown[:maxShown]
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "trees differ (want %s, got %s): %d difference(s):", want, got, len(diffs))
	for _, d := range shown {
		sb.WriteString("\n\t")
		sb.WriteString(d)
	}
	if len(diffs) > maxShown {
		fmt.Fprintf(&sb, "\n\t... and %d more", len(diffs)-maxShown)
	}
	tb.Fatalf("%s", sb.String())
}

// Diff compares two trees exactly and returns one line per difference,
// "path: what: got X want Y", sorted; nil when they are equal. want is the
// reference tree, got the tree under test. Paths are relative to the roots
// ("." is the root itself) and quoted with QuotePath when they are not
// plain printable ASCII.
//
// For every path present in either tree (walked with lstat; symlinks are
// never followed) it compares: presence ("presence"), file type ("type"),
// permission bits including setuid/setgid/sticky ("mode"), "uid", "gid",
// "mtime" to the nanosecond (all types), "size" of regular files, "rdev" of
// devices, symlink "target" bytes, every xattr ("xattr NAME", including
// POSIX ACLs and security.capability), regular file content ("content",
// first differing offset) and data/hole layout ("holes differ"), and the
// hardlink structure ("hardlinks": the set of paths sharing the inode must
// be the same in both trees). A path missing from one tree, or whose type
// differs, is reported once and its subtree is not reported further.
// atime, ctime, directory sizes and link counts, and inode numbers are
// not compared.
//
// An error is returned only when a tree cannot be read.
func Diff(want, got string, opts ...Option) ([]string, error) {
	o := &options{}
	for _, opt := range opts {
		opt(o)
	}
	for i, pat := range o.ignore {
		pat = strings.Trim(pat, "/")
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("snapshottest: bad IgnorePaths pattern %q: %w", pat, err)
		}
		o.ignore[i] = pat
	}
	w, err := walk(want, o)
	if err != nil {
		return nil, err
	}
	g, err := walk(got, o)
	if err != nil {
		return nil, err
	}
	d := &differ{o: o, want: w, got: g, pruned: map[string]bool{}, compared: map[[2]devIno]contentResult{}}
	if err := d.run(); err != nil {
		return nil, err
	}
	if len(d.lines) == 0 {
		return nil, nil
	}
	sort.Strings(d.lines)
	return d.lines, nil
}

type devIno struct{ dev, ino uint64 }

type entry struct {
	abs    string
	st     unix.Stat_t
	target string
	xattrs map[string][]byte
}

func (e *entry) typ() uint32 { return e.st.Mode & unix.S_IFMT }

func (e *entry) key() devIno { return devIno{e.st.Dev, e.st.Ino} }

type tree struct {
	root    string
	o       *options
	entries map[string]*entry
	groups  map[devIno][]string // non-directories: inode -> paths
}

func walk(root string, o *options) (*tree, error) {
	// The root itself may be reached through a symlink (e.g. a temp dir).
	if real, err := filepath.EvalSymlinks(root); err == nil {
		root = real
	}
	t := &tree{root: root, o: o, entries: map[string]*entry{}, groups: map[devIno][]string{}}
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: root, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("snapshottest: %s is not a directory", root)
	}
	if err := t.add(".", root, &st); err != nil {
		return nil, err
	}
	if err := t.walkDir(".", root, false); err != nil {
		return nil, err
	}
	for _, g := range t.groups {
		sort.Strings(g)
	}
	return t, nil
}

func (t *tree) add(rel, abs string, st *unix.Stat_t) error {
	e := &entry{abs: abs, st: *st}
	switch e.typ() {
	case unix.S_IFLNK:
		target, err := readlink(abs)
		if err != nil {
			return err
		}
		e.target = target
	}
	xs, err := readXattrs(abs, e.typ() == unix.S_IFLNK, t.o)
	if err != nil {
		return err
	}
	e.xattrs = xs
	t.entries[rel] = e
	if e.typ() != unix.S_IFDIR {
		t.groups[e.key()] = append(t.groups[e.key()], rel)
	}
	return nil
}

func (t *tree) walkDir(rel, abs string, nofollow bool) error {
	flags := os.O_RDONLY | unix.O_DIRECTORY
	if nofollow {
		flags |= unix.O_NOFOLLOW
	}
	f, err := os.OpenFile(abs, flags, 0)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, n := range names {
		crel := n
		if rel != "." {
			crel = rel + "/" + n
		}
		if t.o.ignoredPath(crel) {
			continue
		}
		cabs := abs + "/" + n
		var st unix.Stat_t
		if err := unix.Lstat(cabs, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: cabs, Err: err}
		}
		if err := t.add(crel, cabs, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := t.walkDir(crel, cabs, true); err != nil {
				return err
			}
		}
	}
	return nil
}

func readlink(p string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlink(p, buf)
		if err != nil {
			return "", &os.PathError{Op: "readlink", Path: p, Err: err}
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// readXattrs returns all xattrs of p (not following symlinks), or nil when
// there are none or the filesystem does not support them.
func readXattrs(p string, isLink bool, o *options) (map[string][]byte, error) {
	list, err := getSized(func(b []byte) (int, error) { return unix.Llistxattr(p, b) })
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) || (isLink && errors.Is(err, unix.EPERM)) {
			return nil, nil
		}
		return nil, &os.PathError{Op: "llistxattr", Path: p, Err: err}
	}
	var xs map[string][]byte
	for _, name := range bytes.Split(list, []byte{0}) {
		if len(name) == 0 || o.ignoredXattr(string(name)) {
			continue
		}
		n := string(name)
		v, err := getSized(func(b []byte) (int, error) { return unix.Lgetxattr(p, n, b) })
		if err != nil {
			if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) ||
				(isLink && errors.Is(err, unix.EPERM)) {
				continue
			}
			return nil, &os.PathError{Op: "lgetxattr " + n, Path: p, Err: err}
		}
		if xs == nil {
			xs = map[string][]byte{}
		}
		xs[n] = v
	}
	return xs, nil
}

// getSized calls f(nil) for the size, then f(buf), retrying on ERANGE (the
// value grew in between).
func getSized(f func([]byte) (int, error)) ([]byte, error) {
	for try := 0; ; try++ {
		n, err := f(nil)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return []byte{}, nil
		}
		buf := make([]byte, n+64)
		n, err = f(buf)
		if errors.Is(err, unix.ERANGE) && try < 16 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

type contentResult struct{ holes, content string }

type differ struct {
	o         *options
	want, got *tree
	lines     []string
	pruned    map[string]bool             // directories reported as missing/retyped
	compared  map[[2]devIno]contentResult // content results by (want inode, got inode)
	bufW      []byte
	bufG      []byte
}

func (d *differ) add(p, what, got, want string) {
	d.lines = append(d.lines, fmt.Sprintf("%s: %s: got %s want %s", QuotePath(p), what, got, want))
}

func (d *differ) underPruned(p string) bool {
	for {
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			return false
		}
		p = p[:i]
		if d.pruned[p] {
			return true
		}
	}
}

func (d *differ) run() error {
	paths := make([]string, 0, len(d.want.entries)+len(d.got.entries))
	for p := range d.want.entries {
		paths = append(paths, p)
	}
	for p := range d.got.entries {
		if _, ok := d.want.entries[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		if d.underPruned(p) {
			continue
		}
		we, ge := d.want.entries[p], d.got.entries[p]
		switch {
		case ge == nil:
			d.add(p, "presence", "absent", typeName(we.st.Mode))
			d.pruned[p] = true
		case we == nil:
			d.add(p, "presence", typeName(ge.st.Mode), "absent")
			d.pruned[p] = true
		default:
			if err := d.compare(p, we, ge); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *differ) compare(p string, we, ge *entry) error {
	ws, gs := &we.st, &ge.st
	if we.typ() != ge.typ() {
		d.add(p, "type", typeName(gs.Mode), typeName(ws.Mode))
		d.pruned[p] = true
		return nil
	}
	if wm, gm := ws.Mode&0o7777, gs.Mode&0o7777; wm != gm {
		d.add(p, "mode", fmt.Sprintf("%04o", gm), fmt.Sprintf("%04o", wm))
	}
	if ws.Uid != gs.Uid {
		d.add(p, "uid", strconv.FormatUint(uint64(gs.Uid), 10), strconv.FormatUint(uint64(ws.Uid), 10))
	}
	if ws.Gid != gs.Gid {
		d.add(p, "gid", strconv.FormatUint(uint64(gs.Gid), 10), strconv.FormatUint(uint64(ws.Gid), 10))
	}
	if !(p == "." && d.o.ignoreRootTimes) && ws.Mtim != gs.Mtim {
		d.add(p, "mtime", fmtTime(gs.Mtim), fmtTime(ws.Mtim))
	}
	switch we.typ() {
	case unix.S_IFREG:
		if ws.Size != gs.Size {
			d.add(p, "size", strconv.FormatInt(gs.Size, 10), strconv.FormatInt(ws.Size, 10))
		} else if err := d.compareContent(p, we, ge); err != nil {
			return err
		}
	case unix.S_IFLNK:
		if we.target != ge.target {
			d.add(p, "target", fmtBytes([]byte(ge.target)), fmtBytes([]byte(we.target)))
		}
	case unix.S_IFCHR, unix.S_IFBLK:
		if ws.Rdev != gs.Rdev {
			d.add(p, "rdev", fmtDev(gs.Rdev), fmtDev(ws.Rdev))
		}
	}
	if we.typ() != unix.S_IFDIR {
		wg, gg := d.want.groups[we.key()], d.got.groups[ge.key()]
		if !equalStrings(wg, gg) {
			d.add(p, "hardlinks", fmtGroup(gg), fmtGroup(wg))
		}
	}
	d.compareXattrs(p, we.xattrs, ge.xattrs)
	return nil
}

func (d *differ) compareXattrs(p string, want, got map[string][]byte) {
	names := make([]string, 0, len(want)+len(got))
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		wv, wok := want[n]
		gv, gok := got[n]
		switch {
		case !gok:
			d.add(p, "xattr "+QuotePath(n), "absent", fmtXattr(n, wv))
		case !wok:
			d.add(p, "xattr "+QuotePath(n), fmtXattr(n, gv), "absent")
		case !bytes.Equal(wv, gv):
			d.add(p, "xattr "+QuotePath(n), fmtXattr(n, gv), fmtXattr(n, wv))
		}
	}
}

// compareContent compares two regular files of equal size: first their
// data/hole maps (SEEK_DATA/SEEK_HOLE), then the bytes, reading only the
// data extents (a hole on one side is compared as zeros against the other
// side's data).
func (d *differ) compareContent(p string, we, ge *entry) error {
	key := [2]devIno{we.key(), ge.key()}
	r, ok := d.compared[key]
	if !ok {
		var err error
		r, err = d.contentDiff(we, ge)
		if err != nil {
			return err
		}
		d.compared[key] = r
	}
	if r.holes != "" {
		d.lines = append(d.lines, QuotePath(p)+": holes differ: "+r.holes)
	}
	if r.content != "" {
		d.lines = append(d.lines, QuotePath(p)+": content: "+r.content)
	}
	return nil
}

func (d *differ) contentDiff(we, ge *entry) (contentResult, error) {
	var r contentResult
	size := we.st.Size
	if size == 0 {
		return r, nil
	}
	wf, err := openRead(we)
	if err != nil {
		return r, err
	}
	defer wf.Close()
	gf, err := openRead(ge)
	if err != nil {
		return r, err
	}
	defer gf.Close()
	wx, err := dataExtents(wf, size)
	if err != nil {
		return r, err
	}
	gx, err := dataExtents(gf, size)
	if err != nil {
		return r, err
	}
	if !equalExtents(wx, gx) {
		r.holes = "got data at " + fmtExtents(gx) + " want data at " + fmtExtents(wx)
	}
	if d.bufW == nil {
		d.bufW = make([]byte, 1<<20)
		d.bufG = make([]byte, 1<<20)
	}
	// Walk the union of both maps' boundaries.
	bounds := []int64{0, size}
	for _, x := range [][]extent{wx, gx} {
		for _, e := range x {
			bounds = append(bounds, e.off, e.end)
		}
	}
	sort.Slice(bounds, func(i, j int) bool { return bounds[i] < bounds[j] })
	for i := 0; i+1 < len(bounds); i++ {
		a, b := bounds[i], bounds[i+1]
		if a >= b {
			continue
		}
		inW, inG := inExtents(wx, a), inExtents(gx, a)
		if !inW && !inG {
			continue
		}
		for off := a; off < b; {
			n := min(int64(len(d.bufW)), b-off)
			wb, gb := d.bufW[:n], d.bufG[:n]
			if inW {
				if _, err := wf.ReadAt(wb, off); err != nil {
					return r, err
				}
			} else {
				clear(wb)
			}
			if inG {
				if _, err := gf.ReadAt(gb, off); err != nil {
					return r, err
				}
			} else {
				clear(gb)
			}
			if !bytes.Equal(wb, gb) {
				j := 0
				for wb[j] == gb[j] {
					j++
				}
				r.content = fmt.Sprintf("differs at offset %d: got 0x%02x want 0x%02x", off+int64(j), gb[j], wb[j])
				return r, nil
			}
			off += n
		}
	}
	return r, nil
}

// openRead opens a regular file for reading without following symlinks and
// without updating its atime when possible. When the caller (not root)
// owns a file without read permission, read permission is added for the
// time of the open() and the mode is restored at once (only ctime changes).
func openRead(e *entry) (*os.File, error) {
	base := os.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK
	f, err := os.OpenFile(e.abs, base|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		f, err = os.OpenFile(e.abs, base, 0)
	}
	if errors.Is(err, unix.EACCES) && int(e.st.Uid) == os.Geteuid() {
		mode := e.st.Mode & 0o7777
		if cerr := unix.Chmod(e.abs, mode|0o400); cerr == nil {
			f, err = os.OpenFile(e.abs, base, 0)
			if cerr := unix.Chmod(e.abs, mode); cerr != nil && err == nil {
				f.Close()
				return nil, &os.PathError{Op: "chmod", Path: e.abs, Err: cerr}
			}
		}
	}
	return f, err
}

type extent struct{ off, end int64 }

// dataExtents returns the data extents of f (of the given size) as reported
// by SEEK_DATA/SEEK_HOLE.
func dataExtents(f *os.File, size int64) ([]extent, error) {
	var x []extent
	for off := int64(0); off < size; {
		start, err := f.Seek(off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break
			}
			if errors.Is(err, unix.EINVAL) && off == 0 {
				return []extent{{0, size}}, nil // no SEEK_DATA support: all data
			}
			return nil, err
		}
		if start >= size {
			break
		}
		end, err := f.Seek(start, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		end = min(end, size)
		if n := len(x); n > 0 && x[n-1].end == start {
			x[n-1].end = end
		} else {
			x = append(x, extent{start, end})
		}
		off = end
	}
	return x, nil
}

func inExtents(x []extent, off int64) bool {
	i := sort.Search(len(x), func(i int) bool { return x[i].end > off })
	return i < len(x) && x[i].off <= off
}

func equalExtents(a, b []extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func fmtExtents(x []extent) string {
	const maxShown = 6
	var sb strings.Builder
	sb.WriteByte('[')
	for i, e := range x {
		if i == maxShown {
			fmt.Fprintf(&sb, " ... (%d extents)", len(x))
			break
		}
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%d-%d", e.off, e.end)
	}
	sb.WriteByte(']')
	return sb.String()
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func fmtGroup(g []string) string {
	const maxShown = 8
	var sb strings.Builder
	sb.WriteByte('{')
	for i, p := range g {
		if i == maxShown {
			fmt.Fprintf(&sb, ", ... (%d names)", len(g))
			break
		}
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(QuotePath(p))
	}
	sb.WriteByte('}')
	return sb.String()
}

func fmtTime(t unix.Timespec) string { return fmt.Sprintf("%d.%09d", t.Sec, t.Nsec) }

func fmtDev(rdev uint64) string { return fmt.Sprintf("%d,%d", unix.Major(rdev), unix.Minor(rdev)) }

// fmtXattr formats an xattr value: POSIX ACLs decoded in getfacl's short
// form, e.g. "acl(u::rw-,u:1234:r--,g::r--,m::r--,o::---)", anything else
// (or an ACL that does not decode) with fmtBytes.
func fmtXattr(name string, v []byte) string {
	if name == "system.posix_acl_access" || name == "system.posix_acl_default" {
		if s, ok := decodeACL(v); ok {
			return s
		}
	}
	return fmtBytes(v)
}

func decodeACL(v []byte) (string, bool) {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != aclVersion {
		return "", false
	}
	var parts []string
	for e := v[4:]; len(e) > 0; e = e[8:] {
		tag := binary.LittleEndian.Uint16(e)
		perm := binary.LittleEndian.Uint16(e[2:])
		id := binary.LittleEndian.Uint32(e[4:])
		var q string
		switch tag {
		case ACLUserObj:
			q = "u::"
		case ACLUser:
			q = fmt.Sprintf("u:%d:", id)
		case ACLGroupObj:
			q = "g::"
		case ACLGroup:
			q = fmt.Sprintf("g:%d:", id)
		case ACLMask:
			q = "m::"
		case ACLOther:
			q = "o::"
		default:
			return "", false
		}
		if perm > 7 {
			return "", false
		}
		rwx := []byte("---")
		for i, c := range "rwx" {
			if perm&(4>>i) != 0 {
				rwx[i] = byte(c)
			}
		}
		parts = append(parts, q+string(rwx))
	}
	return "acl(" + strings.Join(parts, ",") + ")", true
}

// fmtBytes quotes a value (xattr value, symlink target), shortening long ones.
func fmtBytes(b []byte) string {
	const maxShown = 64
	if len(b) <= maxShown {
		return strconv.QuoteToASCII(string(b))
	}
	return fmt.Sprintf("%s...(%d bytes)", strconv.QuoteToASCII(string(b[:maxShown])), len(b))
}

// QuotePath returns p as Diff prints it: unchanged when it is plain
// printable ASCII without quotes, backslashes, ": " or surrounding spaces,
// otherwise Go-quoted with strconv.QuoteToASCII (so that non-UTF-8 bytes,
// newlines and look-alike Unicode names stay unambiguous on one line).
func QuotePath(p string) string {
	plain := p != "" && p[0] != ' ' && p[len(p)-1] != ' ' && !strings.Contains(p, ": ")
	for i := 0; plain && i < len(p); i++ {
		c := p[i]
		plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\'
	}
	if plain {
		return p
	}
	return strconv.QuoteToASCII(p)
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("unknown type %#o", mode&unix.S_IFMT)
}
