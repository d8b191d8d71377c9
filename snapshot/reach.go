package snapshot

import (
	"errors"

	"github.com/systemimager/sim/chunk"
)

// Reach is the one walk over what trees reach: the objects a fetch must
// send, what a push offers, what a node still lacks, what fsck checks and
// what gc keeps are all computed with it. It visits every tree and chunk
// at most once per Reach, however many roots (commits of a history, have
// commits of many nodes) share them, depth first with entries in name
// order, so the order of what it reports is the same every time.
type Reach struct {
	Src Source
	// Prune, if set, is asked before a tree is loaded: true leaves it and
	// everything below it out (a tree the receiver has already).
	Prune func(id chunk.ID) bool
	// Tree, if set, is called for each tree before its entries, with its
	// slash-separated path from the root ("" for the root) and the tree;
	// when the tree could not be loaded (missing, damaged), t is nil and
	// err says why: returning nil goes on without it, an error stops the
	// walk. Returning SkipTree leaves its entries out.
	Tree func(id chunk.ID, path string, t *Tree, err error) error
	// Leave, if set, is called after a tree's entries (post-order).
	Leave func(id chunk.ID) error
	// Chunks, if set, gets the data chunks a tree names that this Reach
	// has not seen before, in entry order (holes left out).
	Chunks func(tree chunk.ID, ids []chunk.ID) error

	seen map[chunk.ID]struct{}
}

// SkipTree, returned by Reach.Tree, leaves out a tree's entries.
var SkipTree = errors.New("skip this tree")

// Walk visits root and what it reaches that the Reach has not visited.
func (r *Reach) Walk(root chunk.ID) error {
	if r.seen == nil {
		r.seen = map[chunk.ID]struct{}{}
	}
	return r.walk(root, "")
}

// Seen reports whether the walk visited id (a tree or a chunk).
func (r *Reach) Seen(id chunk.ID) bool {
	_, ok := r.seen[id]
	return ok
}

// Len is how many distinct trees and chunks were visited.
func (r *Reach) Len() int { return len(r.seen) }

// Set is every tree and chunk visited, for membership tests; the caller
// must not modify it.
func (r *Reach) Set() map[chunk.ID]struct{} {
	if r.seen == nil {
		r.seen = map[chunk.ID]struct{}{}
	}
	return r.seen
}

func (r *Reach) walk(id chunk.ID, path string) error {
	if _, ok := r.seen[id]; ok {
		return nil
	}
	if r.Prune != nil && r.Prune(id) {
		return nil
	}
	r.seen[id] = struct{}{}
	t, lerr := LoadTree(r.Src, id)
	if r.Tree != nil {
		var tv *Tree
		if lerr == nil {
			tv = t
		}
		if err := r.Tree(id, path, tv, lerr); errors.Is(err, SkipTree) {
			return r.leave(id)
		} else if err != nil {
			return err
		}
	} else if lerr != nil {
		return lerr
	}
	if lerr != nil {
		return r.leave(id)
	}
	var ids []chunk.ID
	for i := range t.Entries {
		e := &t.Entries[i]
		if e.Kind == KindDir {
			continue
		}
		for _, x := range e.Content {
			if x.Hole() {
				continue
			}
			if _, ok := r.seen[x.ID]; !ok {
				r.seen[x.ID] = struct{}{}
				ids = append(ids, x.ID)
			}
		}
	}
	if len(ids) > 0 && r.Chunks != nil {
		if err := r.Chunks(id, ids); err != nil {
			return err
		}
	}
	for i := range t.Entries {
		if e := &t.Entries[i]; e.Kind == KindDir {
			if err := r.walk(e.Subtree, join(path, e.Name)); err != nil {
				return err
			}
		}
	}
	return r.leave(id)
}

func (r *Reach) leave(id chunk.ID) error {
	if r.Leave != nil {
		return r.Leave(id)
	}
	return nil
}
