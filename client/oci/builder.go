package oci

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// The OCI image spec's whiteouts ("Representing Changes"): .wh.NAME
// removes NAME of the lower layers, .wh..wh..opq hides everything the
// lower layers have in its directory.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// maxSymlinkHops bounds symlink resolution in an entry's parents, as
// the kernel's ELOOP does.
const maxSymlinkHops = 40

// EntryError names the layer and the tar entry that could not be
// applied.
type EntryError struct {
	Layer string // e.g. "layer 2 of 3 (sha256:ab12…)"
	Entry string // the entry's name as the tar has it
	Err   error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("%s: entry %q: %v", e.Layer, e.Entry, e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }

// ErrEscape says an entry's name or a hard link's target leaves the
// image root (a ".." component).
var ErrEscape = errors.New(`path has a ".." component`)

// node is one name in the tree being built. Non-directories that are
// hard links of each other share meta.
type node struct {
	meta *snapshot.Node
	kids map[string]*node // directories only
	// seen is the last layer that named this entry or one below it:
	// whiteouts and opaque directories hide only what lower layers made.
	seen int
}

func (n *node) isDir() bool { return n.meta.Kind == snapshot.KindDir }

func newDir(meta *snapshot.Node) *node {
	return &node{meta: meta, kids: map[string]*node{}}
}

// implicitDir is the metadata of a directory no layer describes (a
// parent that only appears in its children's names): root's, 0755, at
// time 0, so the same layers always make the same tree.
func implicitDir() *snapshot.Node {
	return &snapshot.Node{Kind: snapshot.KindDir, Mode: 0o755}
}

// Builder applies image layers (tar streams), lowest first, to a tree
// held in memory, and stores that tree through a snapshot.Saver: chunks
// as they are read, trees at Save. Nothing touches a filesystem, so
// owners, devices and xattrs are kept whoever runs it.
type Builder struct {
	sv     snapshot.Saver
	ck     *chunk.Chunker
	root   *node
	layer  int
	label  string
	opaque []*node
	sent   map[chunk.ID]bool

	// Progress, when set, counts the regular files and bytes read.
	Progress *snapshot.Progress
	read     int64 // regular files read, in every layer

	puts chan put
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
	done bool
}

type put struct {
	id   chunk.ID
	data []byte
}

// NewBuilder starts a builder storing through sv, cutting files with p;
// workers goroutines (default GOMAXPROCS) hand chunks to sv, which
// compresses them. Save or Abort must be called to stop them.
func NewBuilder(sv snapshot.Saver, p chunk.Params, workers int) *Builder {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	b := &Builder{sv: sv, ck: chunk.NewChunker(p), root: newDir(implicitDir()),
		sent: map[chunk.ID]bool{}, puts: make(chan put, 2*workers)}
	for i := 0; i < workers; i++ {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for p := range b.puts {
				if b.failed() {
					continue
				}
				if _, err := b.sv.Put(store.TypeData, p.id, p.data); err != nil {
					b.fail(fmt.Errorf("store chunk: %w", err))
				}
			}
		}()
	}
	return b
}

func (b *Builder) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.mu.Unlock()
}

func (b *Builder) failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err != nil
}

func (b *Builder) stop() error {
	if !b.done {
		b.done = true
		close(b.puts)
		b.wg.Wait()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Abort stops the builder after a failure.
func (b *Builder) Abort() { b.stop() }

// ApplyLayer reads one uncompressed layer (a tar stream) and applies it
// over the layers before it. label names the layer in errors. It stops
// at the tar's end; the caller drains r (for its digest) if it wants.
func (b *Builder) ApplyLayer(ctx context.Context, r io.Reader, label string) error {
	b.layer++
	b.label = label
	b.opaque = b.opaque[:0]
	tr := tar.NewReader(r)
	prev := ""
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.firstErr(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if prev != "" {
				return fmt.Errorf("%s: corrupt tar after entry %q: %w", label, prev, err)
			}
			return fmt.Errorf("%s: corrupt tar: %w", label, err)
		}
		prev = hdr.Name
		if err := b.entry(hdr, tr); err != nil {
			var ee *EntryError
			if errors.As(err, &ee) {
				return err
			}
			return &EntryError{Layer: label, Entry: hdr.Name, Err: err}
		}
	}
	// An opaque directory hides what lower layers have in it, whatever
	// the order of the marker and the layer's own entries there.
	for _, d := range b.opaque {
		prune(d, b.layer)
	}
	return nil
}

func (b *Builder) firstErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// prune removes from d everything no entry of layer l named.
func prune(d *node, l int) {
	for name, k := range d.kids {
		if k.seen < l {
			delete(d.kids, name)
		} else if k.isDir() {
			prune(k, l)
		}
	}
}

// cleanName turns a tar entry name into a slash-separated path from the
// root ("" for the root itself): "./etc/", "/etc" and "etc" are all
// "etc". A ".." component is refused, even one that stays inside.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("name contains NUL")
	}
	var out []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
		case "..":
			return "", ErrEscape
		default:
			if len(c) > 255 {
				return "", fmt.Errorf("name component of %d bytes (at most 255)", len(c))
			}
			out = append(out, c)
		}
	}
	return strings.Join(out, "/"), nil
}

func splitPath(p string) ([]string, string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return nil, p
	}
	return strings.Split(p[:i], "/"), p[i+1:]
}

// dir returns the directory at parts, resolving symlinks in it within
// the tree (a layer's "lib/x" lands in usr/lib when lib -> usr/lib, as
// container runtimes apply layers). With create, missing directories are
// made and every directory on the way is marked seen by this layer;
// without, a missing one gives nil.
func (b *Builder) dir(parts []string, create bool) (*node, error) {
	stack := []*node{b.root}
	hops := 0
	for i := 0; i < len(parts); i++ {
		c := parts[i]
		d := stack[len(stack)-1]
		switch c {
		case "", ".":
			continue
		case "..": // only from symlink targets; clamped at the root
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		k := d.kids[c]
		if k == nil {
			if !create {
				return nil, nil
			}
			k = newDir(implicitDir())
			d.kids[c] = k
		}
		switch k.meta.Kind {
		case snapshot.KindDir:
			stack = append(stack, k)
		case snapshot.KindSymlink:
			if hops++; hops > maxSymlinkHops {
				return nil, fmt.Errorf("too many levels of symbolic links at %s", strings.Join(parts[:i+1], "/"))
			}
			t := k.meta.Target
			if strings.HasPrefix(t, "/") {
				stack = stack[:1]
			}
			parts = append(strings.Split(t, "/"), parts[i+1:]...)
			i = -1
		default:
			return nil, fmt.Errorf("%s is a %s, not a directory", strings.Join(parts[:i+1], "/"), k.meta.Kind)
		}
	}
	if create {
		for _, n := range stack {
			n.seen = b.layer
		}
	}
	return stack[len(stack)-1], nil
}

func (b *Builder) entry(hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	meta, err := metaOf(hdr)
	if err != nil {
		return err
	}
	if name == "" {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the image root must be a directory")
		}
		meta.Kind = snapshot.KindDir
		b.root.meta, b.root.seen = meta, b.layer
		return nil
	}
	parts, base := splitPath(name)
	if base == opaqueMarker {
		d, err := b.dir(parts, true)
		if err != nil {
			return err
		}
		b.opaque = append(b.opaque, d)
		return nil
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		victim := base[len(whiteoutPrefix):]
		if strings.HasPrefix(victim, whiteoutPrefix) {
			return nil // aufs' own bookkeeping (.wh..wh.plnk, .wh..wh.aufs)
		}
		if err := snapshot.CheckName(victim); err != nil {
			return fmt.Errorf("whiteout of an invalid name: %v", err)
		}
		d, err := b.dir(parts, false)
		if err != nil || d == nil {
			return err // nothing there to remove
		}
		if k := d.kids[victim]; k != nil && k.seen < b.layer {
			delete(d.kids, victim)
		}
		return nil
	}
	d, err := b.dir(parts, true)
	if err != nil {
		return err
	}
	old := d.kids[base]
	switch hdr.Typeflag {
	case tar.TypeDir:
		meta.Kind = snapshot.KindDir
		if old != nil && old.isDir() {
			old.meta, old.seen = meta, b.layer
			return nil
		}
		k := newDir(meta)
		k.seen = b.layer
		d.kids[base] = k
		return nil
	case tar.TypeReg, '\x00', tar.TypeGNUSparse:
		meta.Kind = snapshot.KindFile
		meta.Size = uint64(hdr.Size)
		if meta.Content, err = b.content(r, hdr.Size); err != nil {
			return err
		}
	case tar.TypeSymlink:
		meta.Kind = snapshot.KindSymlink
		switch t := hdr.Linkname; {
		case t == "":
			return errors.New("symlink with an empty target")
		case len(t) > 1<<16:
			return fmt.Errorf("symlink target of %d bytes", len(t))
		case strings.IndexByte(t, 0) >= 0:
			return errors.New("symlink target contains NUL")
		}
		meta.Target = hdr.Linkname
	case tar.TypeLink:
		tn, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
		}
		tparts, tbase := splitPath(tn)
		var t *node
		if tn != "" {
			if td, err := b.dir(tparts, false); err != nil {
				return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
			} else if td != nil {
				t = td.kids[tbase]
			}
		}
		if t == nil {
			return fmt.Errorf("hard link to %q, which no earlier entry made", hdr.Linkname)
		}
		if t.isDir() {
			return fmt.Errorf("hard link to directory %q", hdr.Linkname)
		}
		if t == old {
			old.seen = b.layer
			return nil
		}
		d.kids[base] = &node{meta: t.meta, seen: b.layer}
		return nil
	case tar.TypeChar, tar.TypeBlock:
		meta.Kind = snapshot.KindChar
		if hdr.Typeflag == tar.TypeBlock {
			meta.Kind = snapshot.KindBlock
		}
		if hdr.Devmajor < 0 || hdr.Devmajor > math.MaxUint32 || hdr.Devminor < 0 || hdr.Devminor > math.MaxUint32 {
			return fmt.Errorf("device number %d,%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		meta.Major, meta.Minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	case tar.TypeFifo:
		meta.Kind = snapshot.KindFifo
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	d.kids[base] = &node{meta: meta, seen: b.layer}
	return nil
}

// metaOf takes what a tar header says of owner, mode, time and xattrs.
func metaOf(hdr *tar.Header) (*snapshot.Node, error) {
	if hdr.Uid < 0 || int64(hdr.Uid) > math.MaxUint32 || hdr.Gid < 0 || int64(hdr.Gid) > math.MaxUint32 {
		return nil, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	n := &snapshot.Node{Mode: uint32(hdr.Mode & 0o7777), UID: uint32(hdr.Uid), GID: uint32(hdr.Gid),
		MtimeSec: hdr.ModTime.Unix(), MtimeNsec: uint32(hdr.ModTime.Nanosecond())}
	xs := map[string][]byte{}
	for k, v := range hdr.PAXRecords {
		var name string
		var val []byte
		switch {
		case strings.HasPrefix(k, "SCHILY.xattr."):
			name, val = k[len("SCHILY.xattr."):], []byte(v)
		case strings.HasPrefix(k, "LIBARCHIVE.xattr."):
			// libarchive's own: the name URL-encoded, the value base64.
			var err error
			if name, err = url.PathUnescape(k[len("LIBARCHIVE.xattr."):]); err != nil {
				return nil, fmt.Errorf("xattr record %q: %v", k, err)
			}
			if val, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "=")); err != nil {
				return nil, fmt.Errorf("xattr record %q: %v", k, err)
			}
			if _, dup := xs[name]; dup {
				continue // SCHILY's wins
			}
		default:
			continue
		}
		if name == "" || len(name) > 255 || strings.IndexByte(name, 0) >= 0 {
			return nil, fmt.Errorf("bad xattr name %q", name)
		}
		if len(val) > 1<<20 {
			return nil, fmt.Errorf("xattr %s of %d bytes", name, len(val))
		}
		xs[name] = val
	}
	for name, v := range xs {
		n.Xattrs = append(n.Xattrs, snapshot.Xattr{Name: name, Value: v})
	}
	sort.Slice(n.Xattrs, func(i, j int) bool { return n.Xattrs[i].Name < n.Xattrs[j].Name })
	return n, nil
}

// content cuts a regular file's bytes into chunks and hands the new ones
// to the workers.
func (b *Builder) content(r io.Reader, size int64) ([]snapshot.Extent, error) {
	if size < 0 {
		return nil, fmt.Errorf("size %d", size)
	}
	b.read++
	if size == 0 {
		return nil, nil
	}
	// restic's chunker takes io.ErrUnexpectedEOF (a cut tar's) for a
	// short read and asks again, forever: it sees EOF, and the error is
	// kept here.
	er := &stickyReader{r: r}
	b.ck.Reset(er)
	var out []snapshot.Extent
	var got int64
	for {
		c, err := b.ck.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read content: %w", err)
		}
		id := chunk.Sum(c)
		out = append(out, snapshot.Extent{ID: id, Len: uint64(len(c))})
		got += int64(len(c))
		if !b.sent[id] {
			b.sent[id] = true
			b.puts <- put{id, append([]byte(nil), c...)}
		}
	}
	if er.err != nil {
		return nil, fmt.Errorf("content: %d of %d bytes: %w", got, size, er.err)
	}
	if got != size {
		return nil, fmt.Errorf("content: %d of %d bytes", got, size)
	}
	if b.Progress != nil {
		b.Progress.Files.Add(1)
		b.Progress.Bytes.Add(size)
	}
	return out, nil
}

// stickyReader reads r until its first error, then gives io.EOF.
type stickyReader struct {
	r   io.Reader
	err error
}

func (s *stickyReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, io.EOF
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
		return n, io.EOF
	}
	return n, err
}

// Save waits for the chunks, stores the trees and returns the root's id
// and the tree's counts. Hard links get their Link as snapshot.Commit
// gives it: the first name in its walk order (a directory's files before
// its subdirectories, by name), so a layer made from a directory and
// that directory's commit have the same tree.
func (b *Builder) Save() (chunk.ID, store.CommitStats, error) {
	var stats store.CommitStats
	if err := b.stop(); err != nil {
		return chunk.ID{}, stats, err
	}
	refs := map[*snapshot.Node]int{}
	var count func(d *node)
	count = func(d *node) {
		for _, k := range d.kids {
			if k.isDir() {
				count(k)
			} else {
				refs[k.meta]++
			}
		}
	}
	count(b.root)
	first := map[*snapshot.Node]string{}
	var order func(d *node, rel string)
	order = func(d *node, rel string) {
		names := sortedNames(d)
		for _, n := range names {
			if k := d.kids[n]; !k.isDir() && refs[k.meta] > 1 {
				if _, ok := first[k.meta]; !ok {
					first[k.meta] = join(rel, n)
				}
			}
		}
		for _, n := range names {
			if k := d.kids[n]; k.isDir() {
				order(k, join(rel, n))
			}
		}
	}
	order(b.root, "")
	var save func(d *node, rel string) (chunk.ID, error)
	save = func(d *node, rel string) (chunk.ID, error) {
		t := snapshot.Tree{Self: *d.meta}
		t.Self.Name, t.Self.Kind, t.Self.Subtree = "", snapshot.KindDir, chunk.ID{}
		for _, n := range sortedNames(d) {
			k := d.kids[n]
			p := join(rel, n)
			if k.isDir() {
				id, err := save(k, p)
				if err != nil {
					return id, err
				}
				stats.Dirs++
				t.Entries = append(t.Entries, snapshot.Node{Name: n, Kind: snapshot.KindDir, Subtree: id})
				continue
			}
			e := *k.meta
			e.Name = n
			if f := first[k.meta]; f != "" && f != p {
				e.Link = f
			}
			stats.Files++
			if e.Kind == snapshot.KindFile && e.Link == "" { // an inode's bytes once, as snapshot.Commit counts them
				stats.Bytes += int64(e.Size)
				for _, x := range e.Content {
					if !x.Hole() {
						stats.Chunks++
					}
				}
			}
			t.Entries = append(t.Entries, e)
		}
		enc := t.Encode()
		id := chunk.Sum(enc)
		if _, err := b.sv.Put(store.TypeTree, id, enc); err != nil {
			return id, fmt.Errorf("store tree /%s: %w", rel, err)
		}
		return id, nil
	}
	id, err := save(b.root, "")
	stats.ReadFiles = b.read
	return id, stats, err
}

func sortedNames(d *node) []string {
	names := make([]string, 0, len(d.kids))
	for n := range d.kids {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
