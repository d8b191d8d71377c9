package client

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// roots are the commits that refs reach, each with the names that reach it.
type roots map[chunk.ID][]string

func refRoots(st *store.Store) (roots, error) {
	r := roots{}
	ims, err := st.Images()
	if err != nil {
		return nil, err
	}
	for _, im := range ims {
		r[im.Head] = append(r[im.Head], "image "+im.Name)
		log, err := st.Reflog(im.Name)
		if err != nil {
			return nil, err
		}
		for _, e := range log {
			for _, id := range []chunk.ID{e.Old, e.New} {
				if !id.IsZero() && id != im.Head {
					r[id] = appendOnce(r[id], "reflog of "+im.Name)
				}
			}
		}
	}
	tags, err := st.Tags()
	if err != nil {
		return nil, err
	}
	for _, t := range tags {
		r[t.Commit] = append(r[t.Commit], "tag "+t.Name)
	}
	return r, nil
}

func appendOnce(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// reach walks commits (with their history) and trees, recording what each
// reaches. bad marks blobs known to be corrupt; a tree is bad if it or
// anything below it is missing or bad.
type reach struct {
	st       *store.Store
	commits  map[chunk.ID]bool // commit → ok
	trees    map[chunk.ID]bool // tree → ok (whole subtree)
	blobs    map[chunk.ID]bool // every reachable blob (chunks and trees)
	bad      map[chunk.ID]string
	problems []string
}

func newReach(st *store.Store, bad map[chunk.ID]string) *reach {
	return &reach{st: st, commits: map[chunk.ID]bool{}, trees: map[chunk.ID]bool{},
		blobs: map[chunk.ID]bool{}, bad: bad}
}

// commit checks commit id and its ancestors; false if any is broken.
func (r *reach) commit(id chunk.ID) bool {
	ok := true
	for !id.IsZero() {
		if v, seen := r.commits[id]; seen {
			return ok && v
		}
		c, err := r.st.Commit(id)
		if err != nil {
			r.commits[id] = false
			r.problems = append(r.problems, fmt.Sprintf("commit %s: %v", id, err))
			return false
		}
		this := r.tree(c.Tree)
		if !this {
			r.problems = append(r.problems, fmt.Sprintf("commit %s (image %s, %s): its tree is damaged", id, c.Image, c.Time.Format("2006-01-02 15:04")))
		}
		r.commits[id] = this
		ok = ok && this
		if len(c.Parents) == 0 || r.st.IsShallow(id) {
			break // the start of history, or of what this store keeps
		}
		id = c.Parents[0]
	}
	return ok
}

func (r *reach) tree(id chunk.ID) bool {
	if v, seen := r.trees[id]; seen {
		return v
	}
	r.blobs[id] = true
	ok := true
	if why, isBad := r.bad[id]; isBad {
		r.problems = append(r.problems, fmt.Sprintf("tree %s: %s", id, why))
		r.trees[id] = false
		return false
	}
	t, err := snapshot.LoadTree(r.st, id)
	if err != nil {
		r.problems = append(r.problems, err.Error())
		r.trees[id] = false
		return false
	}
	var ids []chunk.ID
	for _, e := range t.Entries {
		switch e.Kind {
		case snapshot.KindDir:
			if !r.tree(e.Subtree) {
				ok = false
			}
		case snapshot.KindFile:
			for _, x := range e.Content {
				if !x.Hole() && !r.blobs[x.ID] {
					r.blobs[x.ID] = true
					ids = append(ids, x.ID)
				}
			}
		}
	}
	if len(ids) > 0 {
		has, err := r.st.HasMany(ids)
		if err != nil {
			r.problems = append(r.problems, err.Error())
			ok = false
		}
		for i, h := range has {
			if !h {
				r.problems = append(r.problems, fmt.Sprintf("chunk %s named by tree %s: missing", ids[i], id.Short()))
				r.bad[ids[i]] = "missing"
				ok = false
			}
		}
	}
	for _, x := range ids {
		if _, isBad := r.bad[x]; isBad {
			ok = false
		}
	}
	// A chunk already checked under another tree may be bad too.
	if ok {
		for _, e := range t.Entries {
			for _, x := range e.Content {
				if _, isBad := r.bad[x.ID]; isBad {
					ok = false
				}
			}
		}
	}
	r.trees[id] = ok
	return ok
}

// FsckReport is the outcome of Fsck.
type FsckReport struct {
	Stats    store.CheckStats
	Commits  int
	Problems []string // errors
	Warnings []string
	Broken   []string // refs whose commit or history is damaged
}

// ErrDamaged is returned by Fsck when it found errors.
var ErrDamaged = errors.New("the store is damaged")

// Fsck checks the store: packs against the index (and, with readData,
// every pack and blob hash), then every ref's history and trees, naming
// the images and tags that a damaged object breaks.
func Fsck(st *store.Store, readData bool) (*FsckReport, error) {
	rep := &FsckReport{}
	bad := map[chunk.ID]string{}
	cs, err := st.Check(readData, func(p store.Problem) {
		if p.Warning {
			rep.Warnings = append(rep.Warnings, p.String())
			return
		}
		rep.Problems = append(rep.Problems, p.String())
		if !p.Blob.IsZero() {
			bad[p.Blob] = p.Msg
		}
	})
	if err != nil {
		return nil, err
	}
	rep.Stats = cs
	rs, err := refRoots(st)
	if err != nil {
		return nil, err
	}
	r := newReach(st, bad)
	ids := make([]chunk.ID, 0, len(rs))
	for id := range rs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	for _, id := range ids {
		if !r.commit(id) {
			rep.Broken = append(rep.Broken, fmt.Sprintf("%s (%s)", strings.Join(rs[id], ", "), id.Short()))
		}
	}
	rep.Commits = len(r.commits)
	rep.Problems = append(rep.Problems, r.problems...)
	if len(rep.Problems) > 0 || len(rep.Broken) > 0 {
		return rep, ErrDamaged
	}
	return rep, nil
}

// GC removes every blob and commit no image, tag or reflog reaches.
func GC(st *store.Store) (store.GCStats, error) {
	rs, err := refRoots(st)
	if err != nil {
		return store.GCStats{}, err
	}
	r := newReach(st, map[chunk.ID]string{})
	for id := range rs {
		r.commit(id)
	}
	if len(r.problems) > 0 {
		// Never delete on the strength of a walk that could not see
		// everything: a damaged tree hides what it references.
		return store.GCStats{}, fmt.Errorf("gc: refusing to run on a damaged store (run `sim fsck`): %s", r.problems[0])
	}
	gs, err := st.Repack(func(id chunk.ID) bool { return r.blobs[id] }, func(id chunk.ID) bool {
		_, ok := r.commits[id]
		return ok
	})
	if err != nil {
		return gs, err
	}
	// Stat caches may name chunks gc just removed: drop them all.
	dropStatCaches(st)
	return gs, nil
}
