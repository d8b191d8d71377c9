package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// Saver takes blobs; *store.Writer is one. Put must be safe for concurrent
// use and must not keep data after it returns.
type Saver interface {
	Put(t store.Type, id chunk.ID, data []byte) (bool, error)
}

// Progress counts what a commit or checkout has done; safe to read while
// it runs.
type Progress struct {
	Files atomic.Int64
	Bytes atomic.Int64
}

// CommitOptions tune Commit.
type CommitOptions struct {
	Exclude       *Matcher
	OneFileSystem bool
	Cache         *StatCache // the image's stat cache from its last commit, or nil
	Progress      *Progress
	Workers       int         // file readers; default GOMAXPROCS
	Warn          func(error) // non-fatal problems (a file changed while read)
}

// CommitResult is what Commit produced.
type CommitResult struct {
	Root  chunk.ID
	Stats store.CommitStats
	Cache *StatCache // stat cache for the next commit of the same image
}

type wdir struct {
	self    Node
	entries []Node
	subdirs map[int]*wdir
}

type fileJob struct {
	node *Node
	abs  string
	rel  string
	st   unix.Stat_t
}

// Commit snapshots the directory src: reads what the stat cache cannot
// vouch for, cuts it into chunks, and saves chunks and trees through sv.
// The walk runs in the calling goroutine while Workers goroutines read,
// chunk, hash and compress files.
func Commit(ctx context.Context, sv Saver, p chunk.Params, src string, opts CommitOptions) (*CommitResult, error) {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", src, &os.PathError{Op: "lstat", Path: src, Err: err})
	}
	if kindOf(st.Mode) != KindDir {
		return nil, fmt.Errorf("snapshot %s: not a directory", src)
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Warn == nil {
		opts.Warn = func(error) {}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &committer{
		ctx: ctx, sv: sv, opts: opts, rootDev: st.Dev,
		jobs:     make(chan *fileJob, 256),
		newCache: NewStatCache(),
		links:    map[[2]uint64]linkFirst{},
		start:    time.Now(),
	}
	var wg sync.WaitGroup
	for i := 0; i < opts.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.reader(p)
		}()
	}
	root := &wdir{}
	nodeFromStat(&root.self, &st)
	var err error
	if root.self.Xattrs, err = listXattrs(src); err == nil {
		err = c.walk(root, src, "")
	}
	close(c.jobs)
	wg.Wait()
	if err == nil {
		err = c.firstErr()
	}
	if err == nil {
		// Readers drain what is queued once the context ends: a tree
		// saved now would name files without their content.
		err = c.ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	for _, l := range c.linked {
		l.node.Content = l.first.Content
	}
	id, err := c.saveTree(root)
	if err != nil {
		return nil, err
	}
	c.stats.ReadFiles = c.read.Load()
	return &CommitResult{Root: id, Stats: c.stats, Cache: c.newCache}, nil
}

type committer struct {
	ctx     context.Context
	sv      Saver
	opts    CommitOptions
	rootDev uint64
	jobs    chan *fileJob
	start   time.Time

	mu       sync.Mutex
	err      error
	newCache *StatCache
	links    map[[2]uint64]linkFirst
	linked   []linkFix
	stats    store.CommitStats
	read     atomic.Int64
}

// RacyWindow: a file whose ctime is this close to the moment its read
// began is not stat-cached. The kernel stamps times from a coarse clock
// (a jiffy, at most 10 ms), so a write just after our read could leave
// size, mtime and ctime all unchanged; older files cannot.
const RacyWindow = 100 * time.Millisecond

type linkFix struct{ node, first *Node }

// linkFirst is the first name met of a hard-linked inode.
type linkFirst struct {
	node *Node
	rel  string
}

func (c *committer) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

func (c *committer) firstErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// walk fills d with the entries of directory abs (rel from the root).
func (c *committer) walk(d *wdir, abs, rel string) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if err := c.firstErr(); err != nil {
		return err
	}
	dfd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("snapshot: %w", &os.PathError{Op: "open", Path: abs, Err: err})
	}
	defer unix.Close(dfd)
	names, err := readDirFd(dfd)
	if err != nil {
		return fmt.Errorf("snapshot: %w", &os.PathError{Op: "getdents", Path: abs, Err: err})
	}
	d.entries = make([]Node, 0, len(names))
	type sub struct {
		idx      int
		abs, rel string
	}
	var subs []sub
	var sts []unix.Stat_t
	sort.Strings(names) // byte order, the order of tree entries
	for _, name := range names {
		erel := join(rel, name)
		eabs := abs + "/" + name
		var st unix.Stat_t
		// Relative to the open directory: no path walk from / per entry.
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // deleted while we walk
			}
			return fmt.Errorf("snapshot: %w", &os.PathError{Op: "lstat", Path: eabs, Err: err})
		}
		n := Node{Name: name}
		nodeFromStat(&n, &st)
		if n.Kind == 0 {
			c.opts.Warn(fmt.Errorf("%s: unknown file type %o, skipped", eabs, st.Mode&unix.S_IFMT))
			continue
		}
		if c.opts.Exclude.Match(erel, n.Kind == KindDir) {
			continue
		}
		if n.Xattrs, err = listXattrs(eabs); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		switch n.Kind {
		case KindSymlink:
			t, err := os.Readlink(eabs)
			if err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
			n.Target = t
			c.stats.Files++
		case KindDir:
			c.stats.Dirs++
			if !c.opts.OneFileSystem || st.Dev == c.rootDev {
				subs = append(subs, sub{len(d.entries), eabs, erel})
			}
		default:
			c.stats.Files++
		}
		d.entries = append(d.entries, n)
		sts = append(sts, st)
	}
	// Entries are in place: pointers into d.entries stay valid from here.
	for i := range d.entries {
		n, st := &d.entries[i], &sts[i]
		if n.Kind == KindDir {
			continue
		}
		erel := join(rel, n.Name)
		if st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			first, seen := c.links[key]
			if !seen {
				c.links[key] = linkFirst{n, erel}
			} else {
				n.Link = first.rel
				c.linked = append(c.linked, linkFix{n, first.node})
			}
			if seen {
				continue
			}
		}
		if n.Kind != KindFile {
			continue
		}
		c.stats.Bytes += int64(n.Size)
		if content, ok := c.opts.Cache.lookup(erel, st); ok {
			n.Content = content
			c.mu.Lock()
			c.stats.Chunks += int64(countChunks(content))
			c.newCache.add(erel, st, content)
			c.mu.Unlock()
			if c.opts.Progress != nil {
				c.opts.Progress.Files.Add(1)
			}
			continue
		}
		select {
		case c.jobs <- &fileJob{node: n, abs: abs + "/" + n.Name, rel: erel, st: *st}:
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
	}
	d.subdirs = make(map[int]*wdir, len(subs))
	for _, s := range subs {
		sd := &wdir{self: d.entries[s.idx]}
		sd.self.Name = ""
		d.subdirs[s.idx] = sd
		if err := c.walk(sd, s.abs, s.rel); err != nil {
			return err
		}
	}
	return nil
}

func countChunks(es []Extent) int {
	n := 0
	for _, e := range es {
		if !e.Hole() {
			n++
		}
	}
	return n
}

// reader is one file-reading worker.
func (c *committer) reader(p chunk.Params) {
	ck := chunk.NewChunker(p)
	for job := range c.jobs {
		if c.firstErr() != nil || c.ctx.Err() != nil {
			continue // drain
		}
		readStart := time.Now()
		content, st, err := readContent(ck, c.sv, job.abs, &job.st)
		if err != nil {
			c.fail(fmt.Errorf("snapshot: %w", err))
			continue
		}
		job.node.Content = content
		c.read.Add(1)
		if st.Size != job.st.Size || st.Mtim != job.st.Mtim || st.Ctim != job.st.Ctim {
			// Changed while we read: keep what we read, but neither
			// trust its stat for next time nor report a wrong size.
			c.opts.Warn(fmt.Errorf("%s changed while being read", job.abs))
			job.node.Size = sumExtents(content)
		} else if readStart.Sub(time.Unix(0, st.Ctim.Nano())) > RacyWindow {
			// A file changed within the kernel's timestamp granularity
			// of our read could keep its stat: cache only older ones.
			c.mu.Lock()
			c.newCache.add(job.rel, st, content)
			c.mu.Unlock()
		}
		c.mu.Lock()
		c.stats.Chunks += int64(countChunks(content))
		c.mu.Unlock()
		if c.opts.Progress != nil {
			c.opts.Progress.Files.Add(1)
			c.opts.Progress.Bytes.Add(int64(st.Size))
		}
	}
}

func sumExtents(es []Extent) uint64 {
	var n uint64
	for _, e := range es {
		n += e.Len
	}
	return n
}

// readContent chunks the file at path and saves its chunks. Holes (found
// with SEEK_DATA/SEEK_HOLE when the file has fewer blocks than its size
// needs) become hole extents.
func readContent(ck *chunk.Chunker, sv Saver, path string, want *unix.Stat_t) ([]Extent, *unix.Stat_t, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Ino != want.Ino || st.Dev != want.Dev || kindOf(st.Mode) != KindFile {
		return nil, nil, fmt.Errorf("%s was replaced while being read", path)
	}
	content, err := chunkFile(ck, sv, f, &st)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	var after unix.Stat_t
	if err := unix.Fstat(fd, &after); err != nil {
		return nil, nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	return content, &after, nil
}

// chunkFile cuts an open regular file into extents. sv may be nil to only
// hash (diff against a directory).
func chunkFile(ck *chunk.Chunker, sv Saver, f *os.File, st *unix.Stat_t) ([]Extent, error) {
	size := st.Size
	var out []Extent
	data := func(off, end int64) error {
		ck.Reset(io.NewSectionReader(f, off, end-off))
		var got int64
		for {
			b, err := ck.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			id := chunk.Sum(b)
			if sv != nil {
				if _, err := sv.Put(store.TypeData, id, b); err != nil {
					return err
				}
			}
			out = append(out, Extent{ID: id, Len: uint64(len(b))})
			got += int64(len(b))
		}
		if got != end-off {
			return fmt.Errorf("file shrank while being read (%d of %d bytes at %d)", got, end-off, off)
		}
		return nil
	}
	if size == 0 {
		return nil, nil
	}
	if st.Blocks*512 >= size {
		return out, data(0, size)
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && d >= size) {
			d = size
		} else if err != nil {
			return nil, fmt.Errorf("seek data: %w", err)
		}
		if d > off {
			out = append(out, Extent{Len: uint64(d - off)})
		}
		if d >= size {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole: %w", err)
		}
		if h > size {
			h = size
		}
		if err := data(d, h); err != nil {
			return nil, err
		}
		off = h
	}
	return out, nil
}

// saveTree encodes and saves d and its subdirectories, deepest first.
func (c *committer) saveTree(d *wdir) (chunk.ID, error) {
	for i, sd := range d.subdirs {
		id, err := c.saveTree(sd)
		if err != nil {
			return id, err
		}
		d.entries[i].Subtree = id
	}
	for i := range d.entries {
		if d.entries[i].Kind == KindDir && d.subdirs[i] == nil {
			// Not descended (another filesystem): an empty directory
			// with the mount point's metadata.
			empty := &wdir{self: d.entries[i]}
			empty.self.Name = ""
			id, err := c.saveTree(empty)
			if err != nil {
				return id, err
			}
			d.entries[i].Subtree = id
		}
	}
	t := Tree{Self: d.self, Entries: d.entries}
	sortEntries(t.Entries)
	b := t.Encode()
	id := chunk.Sum(b)
	if _, err := c.sv.Put(store.TypeTree, id, b); err != nil {
		return id, fmt.Errorf("save tree: %w", err)
	}
	return id, nil
}
