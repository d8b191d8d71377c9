package snapshot

import (
	"fmt"
	"strings"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// Overlay lays trees over base as SystemImager lays overrides over an
// image, and returns the root of the result, stored through sv (trees
// only: the result reuses the inputs' chunks). Layers go on in order, each
// over the result of the ones before:
//
//   - a layer's file, symlink or special file replaces whatever is at its
//     path (a directory there goes, with what it holds);
//   - a layer's directory is merged into a directory at its path, which
//     keeps its own metadata; where there is none (or a non-directory),
//     the layer's directory comes whole, with its metadata;
//   - nothing is removed otherwise.
//
// A hard link of an earlier tree whose first name a layer replaced keeps
// its own content and metadata and stands alone. The same inputs always
// give the same root. Nothing touches a filesystem: the installer and an
// update check the result out like any tree.
func Overlay(src Source, sv Saver, base chunk.ID, layers ...chunk.ID) (chunk.ID, error) {
	o := &overlayer{sv: sv, mem: map[chunk.ID][]byte{}}
	// The trees made here are read again (the second pass) before sv
	// may have stored them: they are kept in memory too.
	o.src = &MemSaver{Trees: o.mem, Next: src}
	root := base
	for _, l := range layers {
		o.replaced = map[string]bool{}
		bt, err := LoadTree(o.src, root)
		if err != nil {
			return chunk.ID{}, err
		}
		lt, err := LoadTree(o.src, l)
		if err != nil {
			return chunk.ID{}, err
		}
		if root, err = o.merge(bt, lt, ""); err != nil {
			return chunk.ID{}, err
		}
		if len(o.replaced) > 0 {
			mt, err := LoadTree(o.src, root)
			if err != nil {
				return chunk.ID{}, err
			}
			if root, _, err = o.unlink(mt, lt, "", root); err != nil {
				return chunk.ID{}, err
			}
		}
	}
	return root, nil
}

// FileLayer stores a layer holding one non-directory entry n at the
// slash-separated path rel (its parents are directories with n's owner
// and mode 0755, which Overlay does not apply where directories exist),
// for Overlay: a single file laid over a tree keeping its metadata.
func FileLayer(sv Saver, rel string, n Node) (chunk.ID, error) {
	if err := CheckPath(rel); err != nil {
		return chunk.ID{}, err
	}
	if n.Kind == KindDir {
		return chunk.ID{}, fmt.Errorf("file layer %s: a directory", rel)
	}
	parts := strings.Split(rel, "/")
	n.Name, n.Link = parts[len(parts)-1], ""
	dirSelf := Node{Kind: KindDir, Mode: 0o755, UID: n.UID, GID: n.GID}
	t := &Tree{Self: dirSelf, Entries: []Node{n}}
	for i := len(parts) - 2; ; i-- {
		id, err := putTree(sv, t)
		if err != nil {
			return chunk.ID{}, err
		}
		if i < 0 {
			return id, nil
		}
		t = &Tree{Self: dirSelf, Entries: []Node{{Name: parts[i], Kind: KindDir, Subtree: id}}}
	}
}

type overlayer struct {
	src Source
	sv  Saver
	mem map[chunk.ID][]byte
	// replaced holds the paths of the tree below that the current layer
	// replaced; a path ending in "/" stands for everything below it.
	replaced map[string]bool
}

func putTree(sv Saver, t *Tree) (chunk.ID, error) {
	b := t.Encode()
	id := chunk.Sum(b)
	if _, err := sv.Put(store.TypeTree, id, b); err != nil {
		return chunk.ID{}, fmt.Errorf("store tree: %w", err)
	}
	return id, nil
}

// merge lays layer tree lt over bt (the tree at rel) and stores the result.
func (o *overlayer) merge(bt, lt *Tree, rel string) (chunk.ID, error) {
	out := &Tree{Self: bt.Self, Entries: make([]Node, 0, len(bt.Entries)+len(lt.Entries))}
	i := 0
	for _, le := range lt.Entries {
		for i < len(bt.Entries) && bt.Entries[i].Name < le.Name {
			out.Entries = append(out.Entries, bt.Entries[i])
			i++
		}
		p := join(rel, le.Name)
		var be *Node
		if i < len(bt.Entries) && bt.Entries[i].Name == le.Name {
			be = &bt.Entries[i]
			i++
		}
		switch {
		case be == nil:
			out.Entries = append(out.Entries, le)
		case be.Kind == KindDir && le.Kind == KindDir:
			bsub, err := LoadTree(o.src, be.Subtree)
			if err != nil {
				return chunk.ID{}, fmt.Errorf("%s: %w", p, err)
			}
			lsub, err := LoadTree(o.src, le.Subtree)
			if err != nil {
				return chunk.ID{}, fmt.Errorf("%s: %w", p, err)
			}
			id, err := o.merge(bsub, lsub, p)
			if err != nil {
				return chunk.ID{}, err
			}
			out.Entries = append(out.Entries, Node{Name: le.Name, Kind: KindDir, Subtree: id})
		default:
			o.replaced[p] = true
			if be.Kind == KindDir {
				o.replaced[p+"/"] = true
			}
			out.Entries = append(out.Entries, le)
		}
	}
	out.Entries = append(out.Entries, bt.Entries[i:]...)
	return o.put(out)
}

func (o *overlayer) put(t *Tree) (chunk.ID, error) {
	b := t.Encode()
	id := chunk.Sum(b)
	o.mem[id] = b
	if _, err := o.sv.Put(store.TypeTree, id, b); err != nil {
		return chunk.ID{}, fmt.Errorf("store tree: %w", err)
	}
	return id, nil
}

func (o *overlayer) isReplaced(p string) bool {
	if o.replaced[p] {
		return true
	}
	for i := strings.IndexByte(p, '/'); i >= 0; i = indexFrom(p, '/', i+1) {
		if o.replaced[p[:i+1]] {
			return true
		}
	}
	return false
}

func indexFrom(s string, c byte, from int) int {
	if j := strings.IndexByte(s[from:], c); j >= 0 {
		return from + j
	}
	return -1
}

// unlink makes the hard links of merged tree mt (at rel, stored as id)
// whose first name the layer replaced stand alone. lt is the layer's tree
// at rel (nil where it has none): its own entries are its own files, and
// their links name its own first names. It returns the tree's id, new if
// anything changed.
func (o *overlayer) unlink(mt, lt *Tree, rel string, id chunk.ID) (chunk.ID, bool, error) {
	changed := false
	for k := range mt.Entries {
		e := &mt.Entries[k]
		var le *Node
		if lt != nil {
			le = lt.Find(e.Name)
		}
		if e.Kind == KindDir {
			sub, err := LoadTree(o.src, e.Subtree)
			if err != nil {
				return id, false, err
			}
			var lsub *Tree
			if le != nil && le.Kind == KindDir {
				if lsub, err = LoadTree(o.src, le.Subtree); err != nil {
					return id, false, err
				}
			}
			nid, ch, err := o.unlink(sub, lsub, join(rel, e.Name), e.Subtree)
			if err != nil {
				return id, false, err
			}
			if ch {
				e.Subtree, changed = nid, true
			}
			continue
		}
		fromLayer := le != nil && le.Kind != KindDir
		if e.Link != "" && !fromLayer && o.isReplaced(e.Link) {
			e.Link, changed = "", true
		}
	}
	if !changed {
		return id, false, nil
	}
	nid, err := o.put(mt)
	return nid, true, err
}
