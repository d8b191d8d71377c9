package snapshot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
)

// Source hands out blobs by id; *store.Store is one. Get returns bytes
// already verified against id; the caller must not modify them.
type Source interface {
	Get(id chunk.ID) ([]byte, error)
}

// StoredSource is a Source that verified every blob against its id when
// it took it (a local store): GetStored returns a blob without hashing
// it again when something else proves it is the bytes verified then (a
// zstd frame's checksum). Checkout reads file data through it: a node
// install hashes each chunk once, on arrival, not again on its way into
// the file.
type StoredSource interface {
	Source
	GetStored(id chunk.ID) ([]byte, error)
}

// LoadTree reads and decodes tree id.
func LoadTree(src Source, id chunk.ID) (*Tree, error) {
	b, err := src.Get(id)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	t, err := DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

// CheckoutOptions tune Checkout.
type CheckoutOptions struct {
	// Exclude: paths neither written nor removed (nor what is below
	// them); an extraneous directory that holds an excluded path keeps it
	// and stays, as rsync --delete keeps excluded files.
	Exclude *Matcher
	// Protect lists slash-separated paths (relative to dir) that are
	// never written, removed or replaced, nor is any directory above
	// them: the node's own store when it lies inside dir. A tree that
	// would put something else where such a directory is fails the
	// checkout, naming both.
	Protect []string
	// Record is what an earlier checkout into the same directory wrote
	// (its returned StatCache). Files whose stat still matches it are
	// known without reading them; others of the right size are re-hashed.
	Record   *StatCache
	Params   chunk.Params // to hash existing files the record cannot vouch for
	Workers  int
	Progress *Progress
	NoSync   bool // skip the final syncfs
	// Trace, if set, is called after each change Checkout makes to the
	// directory, with what it did ("write", "remove", "mkdir", "meta",
	// "link") and the entry's slash-separated path; from several
	// goroutines at once. It is for progress and for the crash tests that
	// stop a checkout after its Nth change.
	Trace func(op, rel string)
}

// CheckoutStats counts what Checkout did. Directories whose metadata was
// restored count in Metadata.
type CheckoutStats struct {
	Written      int64 `json:"written"`       // files, links and special files (re)created
	Removed      int64 `json:"removed"`       // extraneous entries removed (a directory counts once)
	Metadata     int64 `json:"metadata"`      // entries whose metadata only was fixed
	Unchanged    int64 `json:"unchanged"`     // entries already right
	BytesWritten int64 `json:"bytes_written"` // file data written
}

// Checkout makes dir exactly the tree root: it creates what is missing,
// rewrites what differs (through a temporary name and rename), removes
// what the tree lacks, and sets directory metadata last. Excluded paths
// are neither written nor removed. Every operation is relative to an open
// directory descriptor with names checked by DecodeTree, so nothing in a
// tree can make it write outside dir. It returns the record to pass as
// Record next time.
func Checkout(ctx context.Context, src Source, root chunk.ID, dir string, opts CheckoutOptions) (*CheckoutStats, *StatCache, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	tree, err := LoadTree(src, root)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("checkout: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("checkout: %w", &os.PathError{Op: "open", Path: dir, Err: err})
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	co := &checkouter{ctx: ctx, src: src, get: src.Get, opts: opts, rootfd: fd, rec: NewStatCache(),
		jobs: make(chan *fileOp, 512), umask: processUmask()}
	if ss, ok := src.(StoredSource); ok {
		co.get = ss.GetStored
	}
	defer func() {
		for _, d := range co.dirs {
			unix.Close(d.fd)
		}
	}()
	top := &odir{fd: fd, rel: "", self: tree.Self, existed: true}
	co.dirs = append(co.dirs, top)
	var wg sync.WaitGroup
	for i := 0; i < opts.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			co.worker()
		}()
	}
	err = co.dir(top, tree)
	close(co.jobs)
	wg.Wait()
	if err == nil {
		err = co.firstErr()
	}
	if err == nil {
		// Workers skip what is queued once the context ends: the files
		// they skipped are not there, so this is no finished checkout.
		err = co.ctx.Err()
	}
	if err == nil {
		err = co.links()
	}
	if err == nil {
		// Directory metadata last, deepest first, so creating and
		// renaming children does not disturb their parents' mtimes.
		for i := len(co.dirs) - 1; i >= 0 && err == nil; i-- {
			d := co.dirs[i]
			err = co.finishDir(d)
		}
	}
	if err == nil && !opts.NoSync {
		if e := unix.Syncfs(fd); e != nil {
			err = fmt.Errorf("checkout: syncfs %s: %w", dir, e)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("checkout %s: %w", dir, err)
	}
	return &co.stats.CheckoutStats, co.rec, nil
}

type odir struct {
	fd      int
	rel     string
	self    Node
	existed bool
	// clean: created by this checkout under clean parents, so nothing
	// inherited a default ACL and new entries get our uid and gid; files
	// created in it need no temporary name, chown or xattr listing.
	clean bool
}

type fileOp struct {
	dirfd  int
	name   string
	rel    string
	node   *Node
	st     unix.Stat_t
	exists bool
	fresh  bool // nothing there, in a clean directory (see odir)
}

var euid, egid = os.Geteuid(), os.Getegid()

// inheritsNothing reports whether what is created in directory fd gets
// nothing from it: no default ACL, and no group (setgid).
func inheritsNothing(fd int) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_ISGID != 0 {
		return false
	}
	_, err := unix.Fgetxattr(fd, "system.posix_acl_default", nil)
	return errors.Is(err, unix.ENODATA)
}

type linkOp struct {
	fileOp
}

type atomicStats struct {
	CheckoutStats
}

func (s *atomicStats) add(p *int64, n int64) { atomic.AddInt64(p, n) }

type checkouter struct {
	ctx    context.Context
	src    Source
	get    func(chunk.ID) ([]byte, error) // file data: src.Get, or GetStored
	opts   CheckoutOptions
	rootfd int
	jobs   chan *fileOp
	dirs   []*odir
	lops   []linkOp
	tmpSeq atomic.Int64
	dirbuf []byte // getdents buffer of the walk (one goroutine)
	umask  uint32 // the process's, when the checkout started

	mu    sync.Mutex
	err   error
	rec   *StatCache
	stats atomicStats
}

func (co *checkouter) fail(err error) {
	co.mu.Lock()
	if co.err == nil {
		co.err = err
	}
	co.mu.Unlock()
}

func (co *checkouter) firstErr() error {
	co.mu.Lock()
	defer co.mu.Unlock()
	return co.err
}

func (co *checkouter) record(rel string, st *unix.Stat_t, n *Node) {
	co.mu.Lock()
	co.rec.addMeta(rel, st, n.Content, metaHash(n))
	co.mu.Unlock()
}

// unchanged reports whether the entry at rel is, by the record, exactly
// node n already: same inode state as when a checkout made it from a node
// with n's metadata (and content). It costs no syscall beyond the stat.
// An unchanged entry is counted, and its record entry carried over as it
// is (it still holds: nothing about the inode moved).
func (co *checkouter) unchanged(rel string, st *unix.Stat_t, n *Node) bool {
	e, ok := co.opts.Record.entry(rel, st)
	if !ok || !extentsEqual(e.content, n.Content) || e.meta != metaHash(n) {
		return false
	}
	co.stats.add(&co.stats.Unchanged, 1)
	co.mu.Lock()
	co.rec.m[rel] = e
	co.mu.Unlock()
	return true
}

// metaHash condenses what a checkout sets on an entry besides file data.
func metaHash(n *Node) uint64 {
	m := *n
	// Not Link: all names of an inode share one record state.
	m.Name, m.Content, m.Size, m.Subtree, m.Link = "", nil, 0, chunk.ID{}, ""
	t := Tree{Self: Node{Kind: KindDir}, Entries: []Node{m}}
	id := chunk.Sum(t.Encode())
	return binary.LittleEndian.Uint64(id[:8]) | 1 // never 0: 0 means unknown
}

func (co *checkouter) trace(op, rel string) {
	if co.opts.Trace != nil {
		co.opts.Trace(op, rel)
	}
}

func (co *checkouter) tmpName() string {
	return ".sim-tmp-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(co.tmpSeq.Add(1), 10)
}

// dir brings the open directory fd (rel from the root) to tree t.
func (co *checkouter) dir(d *odir, t *Tree) error {
	fd, rel := d.fd, d.rel
	if err := co.ctx.Err(); err != nil {
		return err
	}
	if err := co.firstErr(); err != nil {
		return err
	}
	// A directory this checkout created is empty: nothing in it to
	// list, remove or stat (on an install, that is every directory).
	var existing []string
	if d.existed {
		var err error
		if existing, co.dirbuf, err = readDirFdBuf(fd, co.dirbuf); err != nil {
			return fmt.Errorf("read directory %q: %w", rel, err)
		}
	}
	for _, name := range existing {
		erel := join(rel, name)
		if t.Find(name) != nil {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		isDir := kindOf(st.Mode) == KindDir
		if co.keep(erel, isDir) {
			continue
		}
		if _, err := co.remove(fd, name, erel, isDir); err != nil {
			return fmt.Errorf("remove %q: %w", erel, err)
		}
		co.stats.add(&co.stats.Removed, 1)
		co.trace("remove", erel)
	}
	for i := range t.Entries {
		e := &t.Entries[i]
		erel := join(rel, e.Name)
		if co.keep(erel, e.Kind == KindDir) {
			continue
		}
		var st unix.Stat_t
		exists := d.existed
		if !exists {
			// In a directory created just now: nothing there.
		} else if err := unix.Fstatat(fd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("lstat %q: %w", erel, err)
			}
			exists = false
		}
		if exists && kindOf(st.Mode) != e.Kind {
			kept, err := co.remove(fd, e.Name, erel, kindOf(st.Mode) == KindDir)
			if err != nil {
				return fmt.Errorf("replace %q: %w", erel, err)
			}
			if kept != "" {
				return fmt.Errorf("cannot replace directory %q with a %s: it holds %q, which this checkout keeps", erel, e.Kind, kept)
			}
			co.trace("remove", erel)
			exists = false
		}
		op := &fileOp{dirfd: fd, name: e.Name, rel: erel, node: e, st: st, exists: exists, fresh: !exists && d.clean}
		switch {
		case e.Kind == KindDir:
			sub, err := LoadTree(co.src, e.Subtree)
			if err != nil {
				return err
			}
			if !exists {
				if err := unix.Mkdirat(fd, e.Name, 0o700); err != nil {
					return fmt.Errorf("mkdir %q: %w", erel, err)
				}
				co.trace("mkdir", erel)
			}
			sfd, err := unix.Openat(fd, e.Name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %q: %w", erel, err)
			}
			sd := &odir{fd: sfd, rel: erel, self: sub.Self, existed: exists}
			if !exists {
				sd.clean = d.clean || inheritsNothing(fd)
			}
			co.dirs = append(co.dirs, sd)
			if err := co.dir(sd, sub); err != nil {
				return err
			}
		case e.Link != "":
			co.lops = append(co.lops, linkOp{*op})
		case e.Kind == KindFile && exists && co.unchanged(erel, &st, e):
			// Known right by the record: no worker needed.
		case e.Kind == KindFile:
			select {
			case co.jobs <- op:
			case <-co.ctx.Done():
				return co.ctx.Err()
			}
		default:
			if err := co.special(op); err != nil {
				return err
			}
		}
	}
	return nil
}

// keep says whether rel is left alone: excluded, or protected (or inside
// a protected path).
func (co *checkouter) keep(rel string, isDir bool) bool {
	for _, p := range co.opts.Protect {
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return true
		}
	}
	return co.opts.Exclude.Match(rel, isDir)
}

// above says whether rel is a directory above a protected path.
func (co *checkouter) above(rel string) bool {
	for _, p := range co.opts.Protect {
		if strings.HasPrefix(p, rel+"/") {
			return true
		}
	}
	return false
}

// remove removes name (rel) in dirfd, and for a directory what is below
// it, except what keep says to leave: a directory that still holds such
// a path stays. It returns the first path kept ("" when all went).
func (co *checkouter) remove(dirfd int, name, rel string, isDir bool) (string, error) {
	if !isDir || (co.opts.Exclude.Empty() && !co.above(rel)) {
		return "", removeAt(dirfd, name)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	// The directory may be read-only to us: make it writable first.
	unix.Fchmod(fd, 0o700)
	names, err := readDirFd(fd)
	if err != nil {
		return "", err
	}
	kept := ""
	for _, n := range names {
		crel := join(rel, n)
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		cdir := kindOf(st.Mode) == KindDir
		if co.keep(crel, cdir) {
			if kept == "" {
				kept = crel
			}
			continue
		}
		k, err := co.remove(fd, n, crel, cdir)
		if err != nil {
			return kept, err
		}
		if kept == "" {
			kept = k
		}
	}
	if kept != "" {
		return kept, nil
	}
	return "", unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// worker writes regular files.
func (co *checkouter) worker() {
	var ck *chunk.Chunker
	for op := range co.jobs {
		if co.firstErr() != nil || co.ctx.Err() != nil {
			continue
		}
		if err := co.file(op, &ck); err != nil {
			co.fail(err)
		}
	}
}

// file brings one regular file to its node: metadata only when its
// content is known to be right, else a rewrite.
func (co *checkouter) file(op *fileOp, ck **chunk.Chunker) error {
	if op.exists && co.unchanged(op.rel, &op.st, op.node) {
		return nil
	}
	if op.exists {
		content, known := co.opts.Record.lookup(op.rel, &op.st)
		if !known && uint64(op.st.Size) == op.node.Size && co.opts.Params.MaxSize != 0 {
			if *ck == nil {
				*ck = chunk.NewChunker(co.opts.Params)
			}
			var err error
			content, err = hashAt(*ck, op.dirfd, op.name, &op.st)
			known = err == nil
		}
		if known && extentsEqual(content, op.node.Content) {
			return co.fixMeta(op)
		}
	}
	if err := co.writeFile(op); err != nil {
		return fmt.Errorf("write %q: %w", op.rel, err)
	}
	return nil
}

func hashAt(ck *chunk.Chunker, dirfd int, name string, st *unix.Stat_t) ([]Extent, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return chunkFile(ck, nil, f, st)
}

func extentsEqual(a, b []Extent) bool { return slices.Equal(a, b) }

func (co *checkouter) writeFile(op *fileOp) error {
	n := op.node
	// A fresh file is written under its own name: nothing is there to
	// replace, and a crash leaves a file whose stat no record vouches
	// for, which the next checkout re-hashes and rewrites.
	tmp := op.name
	if !op.fresh {
		tmp = co.tmpName()
	}
	// A fresh file that needs no chown and no xattrs, with a mode the
	// umask leaves alone, is created with its mode: only its mtime is
	// left to set (one syscall instead of fchmod and utimensat).
	created := uint32(0o600)
	onlyTime := op.fresh && int(n.UID) == euid && int(n.GID) == egid && len(n.Xattrs) == 0 &&
		n.Mode&^0o777 == 0 && n.Mode&co.umask == 0
	if onlyTime {
		created = n.Mode
	}
	fd, err := unix.Openat(op.dirfd, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, created)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
			unix.Unlinkat(op.dirfd, tmp, 0)
		}
	}()
	var off int64
	for _, e := range n.Content {
		if !e.Hole() {
			b, err := co.get(e.ID)
			if err != nil {
				return err
			}
			if uint64(len(b)) != e.Len {
				return fmt.Errorf("chunk %s has %d bytes, tree says %d", e.ID.Short(), len(b), e.Len)
			}
			for w := 0; w < len(b); {
				m, err := unix.Pwrite(fd, b[w:], off+int64(w))
				if err != nil {
					return err
				}
				w += m
			}
			co.stats.add(&co.stats.BytesWritten, int64(len(b)))
		}
		off += int64(e.Len)
	}
	if len(n.Content) > 0 && n.Content[len(n.Content)-1].Hole() {
		if err := unix.Ftruncate(fd, int64(n.Size)); err != nil {
			return err
		}
	}
	if onlyTime {
		if err := futimens(fd, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: n.MtimeSec, Nsec: int64(n.MtimeNsec)}}); err != nil {
			return fmt.Errorf("set mtime: %w", err)
		}
	} else if err := applyMeta(fd, -1, "", n, op.fresh); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if !op.fresh {
		if err := unix.Renameat(op.dirfd, tmp, op.dirfd, op.name); err != nil {
			return err
		}
	}
	ok = true
	unix.Close(fd)
	co.record(op.rel, &st, n)
	co.stats.add(&co.stats.Written, 1)
	co.trace("write", op.rel)
	if co.opts.Progress != nil {
		co.opts.Progress.Files.Add(1)
		co.opts.Progress.Bytes.Add(int64(n.Size))
	}
	return nil
}

// special creates or fixes a symlink, device, fifo or socket.
func (co *checkouter) special(op *fileOp) error {
	n := op.node
	if op.exists && co.unchanged(op.rel, &op.st, n) {
		return nil
	}
	if op.exists {
		same := true
		switch n.Kind {
		case KindSymlink:
			t, err := readlinkAt(op.dirfd, op.name)
			same = err == nil && t == n.Target
		case KindChar, KindBlock:
			same = unix.Major(op.st.Rdev) == n.Major && unix.Minor(op.st.Rdev) == n.Minor
		}
		if same {
			return co.fixMeta(op)
		}
	}
	// Fresh (nothing there, a clean directory): made under its own
	// name, as writeFile does.
	tmp := op.name
	if !op.fresh {
		tmp = co.tmpName()
	}
	var err error
	switch n.Kind {
	case KindSymlink:
		err = unix.Symlinkat(n.Target, op.dirfd, tmp)
	case KindChar, KindBlock, KindFifo, KindSocket:
		err = unix.Mknodat(op.dirfd, tmp, n.Kind.ifmt()|0o600, int(unix.Mkdev(n.Major, n.Minor)))
	}
	if err != nil {
		return fmt.Errorf("create %q: %w", op.rel, err)
	}
	if err := applyMeta(-1, op.dirfd, tmp, n, op.fresh); err != nil {
		unix.Unlinkat(op.dirfd, tmp, 0)
		return fmt.Errorf("%q: %w", op.rel, err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(op.dirfd, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Unlinkat(op.dirfd, tmp, 0)
		return fmt.Errorf("%q: %w", op.rel, err)
	}
	if tmp != op.name {
		if err := unix.Renameat(op.dirfd, tmp, op.dirfd, op.name); err != nil {
			unix.Unlinkat(op.dirfd, tmp, 0)
			return fmt.Errorf("rename to %q: %w", op.rel, err)
		}
	}
	co.record(op.rel, &st, n)
	co.stats.add(&co.stats.Written, 1)
	co.trace("write", op.rel)
	return nil
}

// fixMeta brings an existing entry's metadata to its node's, counting it
// as unchanged when it already was.
func (co *checkouter) fixMeta(op *fileOp) error {
	n := op.node
	same, err := metaEqual(op.dirfd, op.name, &op.st, n)
	if err != nil {
		return fmt.Errorf("%q: %w", op.rel, err)
	}
	st := op.st
	if same {
		co.stats.add(&co.stats.Unchanged, 1)
	} else {
		if err := applyMeta(-1, op.dirfd, op.name, n, false); err != nil {
			return fmt.Errorf("%q: %w", op.rel, err)
		}
		co.stats.add(&co.stats.Metadata, 1)
		co.trace("meta", op.rel)
		if err := unix.Fstatat(op.dirfd, op.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	co.record(op.rel, &st, n)
	return nil
}

// metaEqual compares an entry's owner, mode, mtime and xattrs with n.
func metaEqual(dirfd int, name string, st *unix.Stat_t, n *Node) (bool, error) {
	if st.Uid != n.UID || st.Gid != n.GID || st.Mode&07777 != n.Mode ||
		st.Mtim.Sec != n.MtimeSec || uint32(st.Mtim.Nsec) != n.MtimeNsec {
		return false, nil
	}
	var xs []Xattr
	var err error
	if name == "" {
		xs, err = listXattrsFd(dirfd)
	} else {
		xs, err = listXattrs(fdPath(dirfd, name))
	}
	if err != nil {
		return false, err
	}
	return xattrsEqual(xs, n.Xattrs), nil
}

func xattrsEqual(a, b []Xattr) bool {
	return slices.EqualFunc(a, b, func(x, y Xattr) bool { return x.Name == y.Name && string(x.Value) == string(y.Value) })
}

// applyMeta sets owner, xattrs, mode and mtime, in that order: chown
// clears setuid bits and file capabilities, so it goes first; chmod after
// the ACL xattrs keeps the mode exactly as recorded. It works on the open
// fd when fd >= 0, else on name in dirfd without following symlinks.
func applyMeta(fd, dirfd int, name string, n *Node, fresh bool) error {
	var err error
	switch {
	case fresh && int(n.UID) == euid && int(n.GID) == egid:
		// Created by us in a clean directory: already ours.
	case fd >= 0:
		err = unix.Fchown(fd, int(n.UID), int(n.GID))
	default:
		err = unix.Fchownat(dirfd, name, int(n.UID), int(n.GID), unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil && !(errors.Is(err, unix.EPERM) && euid != 0) {
		return fmt.Errorf("chown: %w", err)
	}
	path := ""
	if fd < 0 {
		path = fdPath(dirfd, name)
	}
	// Look unless fresh: a new entry inherits a default ACL from its
	// directory, and an old one may carry xattrs the node lacks.
	if !fresh {
		var have []Xattr
		if fd >= 0 {
			have, err = listXattrsFd(fd)
		} else {
			have, err = listXattrs(path)
		}
		if err != nil {
			return err
		}
		for _, x := range have {
			if !hasXattr(n.Xattrs, x.Name) {
				if fd >= 0 {
					err = unix.Fremovexattr(fd, x.Name)
				} else {
					err = unix.Lremovexattr(path, x.Name)
				}
				if err != nil {
					return fmt.Errorf("remove xattr %s: %w", x.Name, err)
				}
			}
		}
	}
	for _, x := range n.Xattrs {
		if fd >= 0 {
			err = unix.Fsetxattr(fd, x.Name, x.Value, 0)
		} else {
			err = unix.Lsetxattr(path, x.Name, x.Value, 0)
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", x.Name, err)
		}
	}
	if n.Kind != KindSymlink {
		if fd >= 0 {
			err = unix.Fchmod(fd, n.Mode)
		} else {
			err = unix.Fchmodat(dirfd, name, n.Mode, 0)
		}
		if err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: n.MtimeSec, Nsec: int64(n.MtimeNsec)}}
	if fd >= 0 {
		err = futimens(fd, ts)
	} else {
		err = unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("set mtime: %w", err)
	}
	return nil
}

func hasXattr(xs []Xattr, name string) bool {
	for _, x := range xs {
		if x.Name == name {
			return true
		}
	}
	return false
}

// links creates the second and later names of hard-linked files, after
// all first names exist.
func (co *checkouter) links() error {
	for i := range co.lops {
		op := &co.lops[i].fileOp
		firstFd, err := openPathAt(co.rootfd, op.node.Link)
		var fst unix.Stat_t
		if err == nil {
			err = unix.Fstat(firstFd, &fst)
			if err == nil && kindOf(fst.Mode) != op.node.Kind {
				err = fmt.Errorf("is a %s", kindOf(fst.Mode))
			}
			if err != nil {
				unix.Close(firstFd)
			}
		}
		if err != nil {
			// The first name is excluded or missing: stand alone.
			op.node.Link = ""
			var ck *chunk.Chunker
			if op.node.Kind == KindFile {
				if err := co.file(op, &ck); err != nil {
					return err
				}
			} else if err := co.special(op); err != nil {
				return err
			}
			continue
		}
		if op.exists && op.st.Dev == fst.Dev && op.st.Ino == fst.Ino {
			co.stats.add(&co.stats.Unchanged, 1)
		} else {
			tmp := co.tmpName()
			err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(firstFd), op.dirfd, tmp, unix.AT_SYMLINK_FOLLOW)
			if err == nil {
				err = unix.Renameat(op.dirfd, tmp, op.dirfd, op.name)
				if err != nil {
					unix.Unlinkat(op.dirfd, tmp, 0)
				}
			}
			if err != nil {
				unix.Close(firstFd)
				return fmt.Errorf("link %q to %q: %w", op.rel, op.node.Link, err)
			}
			co.stats.add(&co.stats.Written, 1)
			co.trace("link", op.rel)
		}
		// Linking changed the inode's ctime: record it anew under
		// both names.
		if err := unix.Fstat(firstFd, &fst); err == nil {
			co.record(op.rel, &fst, op.node)
			co.record(op.node.Link, &fst, op.node)
		}
		unix.Close(firstFd)
	}
	return nil
}

// openPathAt opens rel (slash-separated, checked) below dirfd with O_PATH,
// following no symlink on the way.
func openPathAt(dirfd int, rel string) (int, error) {
	if err := CheckPath(rel); err != nil {
		return -1, err
	}
	parts := strings.Split(rel, "/")
	cur := dirfd
	for i, p := range parts {
		flags := unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i < len(parts)-1 {
			flags |= unix.O_DIRECTORY
		}
		fd, err := unix.Openat(cur, p, flags, 0)
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	return cur, nil
}

func (co *checkouter) finishDir(d *odir) error {
	if d.existed {
		var st unix.Stat_t
		if err := unix.Fstat(d.fd, &st); err != nil {
			return err
		}
		same, err := metaEqual(d.fd, "", &st, &d.self)
		if err != nil {
			return fmt.Errorf("directory %q: %w", d.rel, err)
		}
		if same {
			return nil
		}
		co.stats.add(&co.stats.Metadata, 1)
	}
	// A directory made here in a clean parent inherited nothing: its
	// owner is ours and it has no xattrs to look at.
	if err := applyMeta(d.fd, -1, "", &d.self, !d.existed && d.clean); err != nil {
		return fmt.Errorf("directory %q: %w", d.rel, err)
	}
	co.trace("meta", d.rel)
	return nil
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// removeAt removes name in dirfd, recursively for a directory, following
// no symlinks.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	// The directory may be read-only to us: make it writable first.
	unix.Fchmod(fd, 0o700)
	names, err := readDirFd(fd)
	if err == nil {
		for _, n := range names {
			if err = removeAt(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
