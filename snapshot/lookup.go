package snapshot

import (
	"fmt"
	"io"
	"strings"

	"github.com/systemimager/sim/chunk"
)

// Lookup returns the node at slash-separated path p in tree root ("" or
// "/" is the root itself). A directory's node carries its own metadata and
// its Subtree.
func Lookup(src Source, root chunk.ID, p string) (*Node, error) {
	t, err := LoadTree(src, root)
	if err != nil {
		return nil, err
	}
	self := t.Self
	self.Subtree = root
	cur := &self
	for _, c := range strings.Split(strings.Trim(p, "/"), "/") {
		if c == "" || c == "." {
			continue
		}
		if cur.Kind != KindDir {
			return nil, fmt.Errorf("%s: not a directory", p)
		}
		t, err := LoadTree(src, cur.Subtree)
		if err != nil {
			return nil, err
		}
		e := t.Find(c)
		if e == nil {
			return nil, fmt.Errorf("%s: no such file or directory in the image", p)
		}
		n := *e
		if n.Kind == KindDir {
			sub, err := LoadTree(src, n.Subtree)
			if err != nil {
				return nil, err
			}
			id := n.Subtree
			n = sub.Self
			n.Name, n.Subtree = e.Name, id
		}
		cur = &n
	}
	return cur, nil
}

// WriteContent writes a regular file's bytes (holes as zeros) to w.
func WriteContent(src Source, n *Node, w io.Writer) error {
	if n.Kind != KindFile {
		return fmt.Errorf("%s is a %s, not a regular file", n.Name, n.Kind)
	}
	var zero []byte
	for _, e := range n.Content {
		if e.Hole() {
			if zero == nil {
				zero = make([]byte, 1<<16)
			}
			for left := e.Len; left > 0; {
				k := min(left, uint64(len(zero)))
				if _, err := w.Write(zero[:k]); err != nil {
					return err
				}
				left -= k
			}
			continue
		}
		b, err := src.Get(e.ID)
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// Walk calls fn for every node below tree id in depth-first path order,
// with directories before their contents. Directory nodes carry their own
// metadata (from their tree) and Subtree.
func Walk(src Source, id chunk.ID, fn func(path string, n *Node) error) error {
	t, err := LoadTree(src, id)
	if err != nil {
		return err
	}
	return walkTree(src, t, "", fn)
}

func walkTree(src Source, t *Tree, rel string, fn func(string, *Node) error) error {
	for i := range t.Entries {
		e := t.Entries[i]
		p := join(rel, e.Name)
		if e.Kind != KindDir {
			if err := fn(p, &e); err != nil {
				return err
			}
			continue
		}
		sub, err := LoadTree(src, e.Subtree)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		n := sub.Self
		n.Name, n.Subtree = e.Name, e.Subtree
		if err := fn(p, &n); err != nil {
			return err
		}
		if err := walkTree(src, sub, p, fn); err != nil {
			return err
		}
	}
	return nil
}
