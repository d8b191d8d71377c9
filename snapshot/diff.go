package snapshot

import (
	"fmt"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// Action is what happened to a path between two trees.
type Action string

const (
	Added    Action = "added"
	Removed  Action = "removed"
	Modified Action = "modified"
)

// Change is one differing path. What lists the aspects that differ for a
// modified path: type, content, mode, owner, mtime, xattrs, target, device,
// link.
type Change struct {
	Path   string   `json:"path"`
	Action Action   `json:"action"`
	Kind   Kind     `json:"-"`
	What   []string `json:"what,omitempty"`
}

// DiffStat sums what a diff would cost to transfer: the chunks and trees
// of the new side that the old side lacks, each counted once.
type DiffStat struct {
	Added, Removed, Modified int
	NewChunks                int
	NewChunkBytes            int64
	NewTrees                 int
	NewTreeBytes             int64
}

// Differ compares trees read through Source.
type Differ struct {
	Src     Source
	Exclude *Matcher
	// Stat, when set, is filled with transfer figures; it needs the full
	// set of chunk ids of the old side, so it costs a walk of its trees.
	Stat *DiffStat

	have    map[chunk.ID]bool // old side's blobs (chunks and trees)
	counted map[chunk.ID]bool
}

// Diff returns the changes that turn tree a into tree b, in path order.
func (d *Differ) Diff(a, b chunk.ID) ([]Change, error) {
	if d.Stat != nil {
		d.have = map[chunk.ID]bool{}
		d.counted = map[chunk.ID]bool{}
		if err := d.collect(a); err != nil {
			return nil, err
		}
	}
	var out []Change
	err := d.diffDir(&out, "", a, b)
	if d.Stat != nil {
		for _, c := range out {
			switch c.Action {
			case Added:
				d.Stat.Added++
			case Removed:
				d.Stat.Removed++
			case Modified:
				d.Stat.Modified++
			}
		}
	}
	return out, err
}

func (d *Differ) collect(id chunk.ID) error {
	if d.have[id] {
		return nil
	}
	d.have[id] = true
	t, err := LoadTree(d.Src, id)
	if err != nil {
		return err
	}
	for _, e := range t.Entries {
		switch e.Kind {
		case KindDir:
			if err := d.collect(e.Subtree); err != nil {
				return err
			}
		case KindFile:
			for _, x := range e.Content {
				d.have[x.ID] = true
			}
		}
	}
	return nil
}

func (d *Differ) countTree(id chunk.ID, t []byte) {
	if d.Stat == nil || d.have[id] || d.counted[id] {
		return
	}
	d.counted[id] = true
	d.Stat.NewTrees++
	d.Stat.NewTreeBytes += int64(len(t))
}

func (d *Differ) countFile(n *Node) {
	if d.Stat == nil {
		return
	}
	for _, x := range n.Content {
		if x.Hole() || d.have[x.ID] || d.counted[x.ID] {
			continue
		}
		d.counted[x.ID] = true
		d.Stat.NewChunks++
		d.Stat.NewChunkBytes += int64(x.Len)
	}
}

func (d *Differ) load(id chunk.ID) (*Tree, error) {
	b, err := d.Src.Get(id)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	d.countTree(id, b)
	t, err := DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

func (d *Differ) diffDir(out *[]Change, rel string, a, b chunk.ID) error {
	if a == b {
		return nil
	}
	var ta, tb *Tree
	var err error
	if !a.IsZero() {
		if ta, err = LoadTree(d.Src, a); err != nil {
			return err
		}
	} else {
		ta = &Tree{}
	}
	if !b.IsZero() {
		if tb, err = d.load(b); err != nil {
			return err
		}
	} else {
		tb = &Tree{}
	}
	if !a.IsZero() && !b.IsZero() && rel == "" {
		if w := metaDiff(&ta.Self, &tb.Self); len(w) > 0 {
			*out = append(*out, Change{Path: "/", Action: Modified, Kind: KindDir, What: w})
		}
	}
	i, j := 0, 0
	for i < len(ta.Entries) || j < len(tb.Entries) {
		var ea, eb *Node
		switch {
		case j >= len(tb.Entries) || (i < len(ta.Entries) && ta.Entries[i].Name < tb.Entries[j].Name):
			ea = &ta.Entries[i]
			i++
		case i >= len(ta.Entries) || tb.Entries[j].Name < ta.Entries[i].Name:
			eb = &tb.Entries[j]
			j++
		default:
			ea, eb = &ta.Entries[i], &tb.Entries[j]
			i++
			j++
		}
		name := ""
		if ea != nil {
			name = ea.Name
		} else {
			name = eb.Name
		}
		p := join(rel, name)
		isDir := (ea != nil && ea.Kind == KindDir) || (eb != nil && eb.Kind == KindDir)
		if d.Exclude.Match(p, isDir) {
			continue
		}
		if err := d.entry(out, p, ea, eb); err != nil {
			return err
		}
	}
	return nil
}

func (d *Differ) entry(out *[]Change, p string, ea, eb *Node) error {
	disp := "/" + p
	switch {
	case eb == nil:
		*out = append(*out, Change{Path: disp, Action: Removed, Kind: ea.Kind})
		if ea.Kind == KindDir {
			return d.diffDir(out, p, ea.Subtree, chunk.ID{})
		}
		return nil
	case ea == nil:
		*out = append(*out, Change{Path: disp, Action: Added, Kind: eb.Kind})
		if eb.Kind == KindDir {
			return d.diffDir(out, p, chunk.ID{}, eb.Subtree)
		}
		d.countFile(eb)
		return nil
	}
	if ea.Kind != eb.Kind {
		*out = append(*out, Change{Path: disp, Action: Modified, Kind: eb.Kind, What: []string{"type"}})
		var sa, sb chunk.ID
		if ea.Kind == KindDir {
			sa = ea.Subtree
		}
		if eb.Kind == KindDir {
			sb = eb.Subtree
		} else {
			d.countFile(eb)
		}
		return d.diffDir(out, p, sa, sb)
	}
	if ea.Kind == KindDir {
		if ea.Subtree == eb.Subtree {
			return nil
		}
		ta, err := LoadTree(d.Src, ea.Subtree)
		if err != nil {
			return err
		}
		tb, err := LoadTree(d.Src, eb.Subtree)
		if err != nil {
			return err
		}
		if w := metaDiff(&ta.Self, &tb.Self); len(w) > 0 {
			*out = append(*out, Change{Path: disp, Action: Modified, Kind: KindDir, What: w})
		}
		return d.diffDir(out, p, ea.Subtree, eb.Subtree)
	}
	if w := metaDiff(ea, eb); len(w) > 0 {
		*out = append(*out, Change{Path: disp, Action: Modified, Kind: eb.Kind, What: w})
		d.countFile(eb)
	}
	return nil
}

// metaDiff lists what differs between two nodes of the same kind.
func metaDiff(a, b *Node) []string {
	var w []string
	if a.Kind == KindFile && (a.Size != b.Size || !extentsEqual(a.Content, b.Content)) {
		w = append(w, "content")
	}
	if a.Target != b.Target {
		w = append(w, "target")
	}
	if a.Major != b.Major || a.Minor != b.Minor {
		w = append(w, "device")
	}
	if a.Mode != b.Mode {
		w = append(w, "mode")
	}
	if a.UID != b.UID || a.GID != b.GID {
		w = append(w, "owner")
	}
	if !xattrsEqual(a.Xattrs, b.Xattrs) {
		w = append(w, "xattrs")
	}
	if a.MtimeSec != b.MtimeSec || a.MtimeNsec != b.MtimeNsec {
		w = append(w, "mtime")
	}
	if a.Link != b.Link {
		w = append(w, "link")
	}
	return w
}

// MemSaver keeps trees in memory and drops data chunks: Commit through it
// hashes a directory without storing it (diff against a directory).
type MemSaver struct {
	Trees map[chunk.ID][]byte
	Next  Source // where other blobs come from
}

// Put implements Saver.
func (m *MemSaver) Put(t store.Type, id chunk.ID, data []byte) (bool, error) {
	if t == store.TypeTree {
		if m.Trees == nil {
			m.Trees = map[chunk.ID][]byte{}
		}
		m.Trees[id] = append([]byte(nil), data...)
	}
	return true, nil
}

// Get implements Source.
func (m *MemSaver) Get(id chunk.ID) ([]byte, error) {
	if b, ok := m.Trees[id]; ok {
		return b, nil
	}
	return m.Next.Get(id)
}
