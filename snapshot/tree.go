package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/systemimager/sim/chunk"
)

// Kind is a node's file type.
type Kind uint8

const (
	KindFile Kind = iota + 1
	KindDir
	KindSymlink
	KindChar
	KindBlock
	KindFifo
	KindSocket
)

var kindNames = [...]string{"", "file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("kind%d", k)
}

// Xattr is one extended attribute (POSIX ACLs and file capabilities
// included: they are xattrs too).
type Xattr struct {
	Name  string
	Value []byte
}

// Extent is a piece of a regular file: a chunk, or a hole when ID is zero.
type Extent struct {
	ID  chunk.ID
	Len uint64
}

// Hole reports whether the extent is a hole.
func (e Extent) Hole() bool { return e.ID.IsZero() }

// Node is one directory entry with all the metadata a faithful snapshot
// keeps. Names and link targets are arbitrary bytes held in strings.
type Node struct {
	Name      string
	Kind      Kind
	Mode      uint32 // permission bits, setuid/setgid/sticky included (07777)
	UID, GID  uint32
	MtimeSec  int64
	MtimeNsec uint32
	Xattrs    []Xattr // sorted by name
	// Link, for the second and later names of a hard-linked file, is the
	// slash-separated path (from the snapshot root) of the first name in
	// walk order. Content is repeated so every node stands alone.
	Link    string
	Size    uint64   // regular files
	Content []Extent // regular files; lengths add up to Size
	Target  string   // symlinks
	Major   uint32   // devices
	Minor   uint32
	Subtree chunk.ID // directories, in a parent tree's entry list
}

// Tree is a directory: its own metadata (Self, with an empty name) and its
// entries sorted by name bytes.
type Tree struct {
	Self    Node
	Entries []Node
}

const treeMagic = "SIMTREE1"

// ErrBadTree says a tree object is malformed or hostile.
var ErrBadTree = errors.New("malformed tree")

// Encode returns the canonical encoding of t. Entries must be sorted.
func (t *Tree) Encode() []byte {
	b := make([]byte, 0, 64+len(t.Entries)*96)
	b = append(b, treeMagic...)
	b = appendNode(b, &t.Self, true)
	b = binary.AppendUvarint(b, uint64(len(t.Entries)))
	for i := range t.Entries {
		b = appendNode(b, &t.Entries[i], false)
	}
	return b
}

func appendBytes(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendNode(b []byte, n *Node, self bool) []byte {
	b = appendBytes(b, n.Name)
	b = append(b, byte(n.Kind))
	if n.Kind == KindDir && !self {
		return append(b, n.Subtree[:]...)
	}
	b = binary.AppendUvarint(b, uint64(n.Mode))
	b = binary.AppendUvarint(b, uint64(n.UID))
	b = binary.AppendUvarint(b, uint64(n.GID))
	b = binary.AppendVarint(b, n.MtimeSec)
	b = binary.AppendUvarint(b, uint64(n.MtimeNsec))
	b = binary.AppendUvarint(b, uint64(len(n.Xattrs)))
	for _, x := range n.Xattrs {
		b = appendBytes(b, x.Name)
		b = appendBytes(b, string(x.Value))
	}
	switch n.Kind {
	case KindFile:
		b = appendBytes(b, n.Link)
		b = binary.AppendUvarint(b, n.Size)
		b = binary.AppendUvarint(b, uint64(len(n.Content)))
		for _, e := range n.Content {
			b = binary.AppendUvarint(b, e.Len)
			if e.Hole() {
				b = append(b, 0)
			} else {
				b = append(b, 1)
				b = append(b, e.ID[:]...)
			}
		}
	case KindSymlink:
		b = appendBytes(b, n.Link)
		b = appendBytes(b, n.Target)
	case KindChar, KindBlock:
		b = appendBytes(b, n.Link)
		b = binary.AppendUvarint(b, uint64(n.Major))
		b = binary.AppendUvarint(b, uint64(n.Minor))
	case KindFifo, KindSocket:
		b = appendBytes(b, n.Link)
	}
	return b
}

type decoder struct {
	r   *bytes.Reader
	err error
}

func (d *decoder) uv() uint64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(d.r)
	d.err = err
	return v
}

func (d *decoder) v() int64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(d.r)
	d.err = err
	return v
}

func (d *decoder) u32(what string) uint32 {
	v := d.uv()
	if v > 1<<32-1 && d.err == nil {
		d.err = fmt.Errorf("%s %d out of range", what, v)
	}
	return uint32(v)
}

func (d *decoder) bytes(max int) string {
	n := d.uv()
	if d.err != nil {
		return ""
	}
	if n > uint64(max) || n > uint64(d.r.Len()) {
		d.err = fmt.Errorf("length %d out of range", n)
		return ""
	}
	b := make([]byte, n)
	_, d.err = io.ReadFull(d.r, b)
	return string(b)
}

func (d *decoder) id() chunk.ID {
	var id chunk.ID
	if d.err == nil {
		_, d.err = io.ReadFull(d.r, id[:])
	}
	return id
}

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	c, err := d.r.ReadByte()
	d.err = err
	return c
}

// DecodeTree parses and validates a tree object. It rejects anything a
// checkout must not trust: names that are empty, ".", ".." or contain "/"
// or NUL, unsorted or duplicate entries, unknown kinds, mode bits beyond
// 07777, extents that do not add up to the size, and hardlink paths that
// are not clean relative paths.
func DecodeTree(b []byte) (*Tree, error) {
	if !bytes.HasPrefix(b, []byte(treeMagic)) {
		return nil, fmt.Errorf("%w: bad magic", ErrBadTree)
	}
	d := &decoder{r: bytes.NewReader(b[len(treeMagic):])}
	t := &Tree{}
	if err := d.node(&t.Self, true); err != nil {
		return nil, fmt.Errorf("%w: self: %v", ErrBadTree, err)
	}
	if t.Self.Kind != KindDir || t.Self.Name != "" {
		return nil, fmt.Errorf("%w: self is not an unnamed directory", ErrBadTree)
	}
	n := d.uv()
	if d.err != nil || n > uint64(d.r.Len()) {
		return nil, fmt.Errorf("%w: bad entry count", ErrBadTree)
	}
	t.Entries = make([]Node, n)
	for i := range t.Entries {
		e := &t.Entries[i]
		if err := d.node(e, false); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", ErrBadTree, i, err)
		}
		if err := CheckName(e.Name); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", ErrBadTree, i, err)
		}
		if i > 0 && t.Entries[i-1].Name >= e.Name {
			return nil, fmt.Errorf("%w: entries not sorted or duplicated at %q", ErrBadTree, e.Name)
		}
	}
	if d.r.Len() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadTree, d.r.Len())
	}
	// One tree, one encoding (no overlong varints): equal trees must have
	// equal ids, or dedup and diff's subtree skipping break.
	if !bytes.Equal(t.Encode(), b) {
		return nil, fmt.Errorf("%w: not in canonical encoding", ErrBadTree)
	}
	return t, nil
}

func (d *decoder) node(n *Node, self bool) error {
	n.Name = d.bytes(4096)
	n.Kind = Kind(d.byte1())
	if d.err != nil {
		return d.err
	}
	if n.Kind < KindFile || n.Kind > KindSocket {
		return fmt.Errorf("unknown kind %d", n.Kind)
	}
	if n.Kind == KindDir && !self {
		n.Subtree = d.id()
		return d.err
	}
	n.Mode = d.u32("mode")
	n.UID = d.u32("uid")
	n.GID = d.u32("gid")
	n.MtimeSec = d.v()
	n.MtimeNsec = d.u32("nsec")
	if d.err == nil && (n.Mode&^07777 != 0 || n.MtimeNsec >= 1e9) {
		return fmt.Errorf("mode %o or nanoseconds %d out of range", n.Mode, n.MtimeNsec)
	}
	nx := d.uv()
	if d.err == nil && nx > uint64(d.r.Len()) {
		return fmt.Errorf("bad xattr count")
	}
	for i := uint64(0); i < nx && d.err == nil; i++ {
		x := Xattr{Name: d.bytes(255), Value: []byte(d.bytes(1 << 20))}
		if d.err == nil && (x.Name == "" || strings.IndexByte(x.Name, 0) >= 0) {
			return fmt.Errorf("bad xattr name %q", x.Name)
		}
		if len(n.Xattrs) > 0 && n.Xattrs[len(n.Xattrs)-1].Name >= x.Name {
			return fmt.Errorf("xattrs not sorted at %q", x.Name)
		}
		n.Xattrs = append(n.Xattrs, x)
	}
	if n.Kind != KindDir {
		n.Link = d.bytes(1 << 16)
		if d.err == nil && n.Link != "" {
			if err := CheckPath(n.Link); err != nil {
				return fmt.Errorf("hardlink: %v", err)
			}
		}
	}
	switch n.Kind {
	case KindFile:
		n.Size = d.uv()
		ne := d.uv()
		if d.err == nil && ne > uint64(d.r.Len()) {
			return fmt.Errorf("bad extent count")
		}
		var sum uint64
		for i := uint64(0); i < ne && d.err == nil; i++ {
			e := Extent{Len: d.uv()}
			switch d.byte1() {
			case 0:
			case 1:
				e.ID = d.id()
				if d.err == nil && (e.Len > 64<<20 || e.ID.IsZero()) {
					return fmt.Errorf("chunk extent of %d bytes", e.Len)
				}
			default:
				return fmt.Errorf("bad extent flag")
			}
			sum += e.Len
			n.Content = append(n.Content, e)
		}
		if d.err == nil && sum != n.Size {
			return fmt.Errorf("extents add up to %d, size is %d", sum, n.Size)
		}
	case KindSymlink:
		n.Target = d.bytes(1 << 16)
	case KindChar, KindBlock:
		n.Major = d.u32("major")
		n.Minor = d.u32("minor")
	}
	return d.err
}

// CheckName rejects directory entry names that could escape a directory,
// and names no Linux filesystem can hold (over NAME_MAX, 255 bytes).
func CheckName(name string) error {
	if name == "" || name == "." || name == ".." || strings.IndexByte(name, '/') >= 0 || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("invalid file name %q", name)
	}
	if len(name) > 255 {
		return fmt.Errorf("invalid file name %.40q…: %d bytes, over 255", name, len(name))
	}
	return nil
}

// CheckPath rejects a slash-separated path that is absolute, empty or has
// a component CheckName rejects.
func CheckPath(p string) error {
	for _, c := range strings.Split(p, "/") {
		if err := CheckName(c); err != nil {
			return fmt.Errorf("path %q: %v", p, err)
		}
	}
	return nil
}

// sortEntries sorts by name bytes.
func sortEntries(es []Node) {
	sort.Slice(es, func(i, j int) bool { return es[i].Name < es[j].Name })
}

// Find returns the entry named name, or nil.
func (t *Tree) Find(name string) *Node {
	i := sort.Search(len(t.Entries), func(i int) bool { return t.Entries[i].Name >= name })
	if i < len(t.Entries) && t.Entries[i].Name == name {
		return &t.Entries[i]
	}
	return nil
}
