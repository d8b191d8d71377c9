package client

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

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

// reach walks commits (with their history) and, through one
// snapshot.Reach, their trees, recording what each reaches. bad marks
// blobs known to be corrupt or missing; a tree is bad if it or anything
// below it is missing or bad.
type reach struct {
	st       *store.Store
	commits  map[chunk.ID]bool // commit → ok
	trees    map[chunk.ID]bool // tree → ok (whole subtree)
	bad      map[chunk.ID]string
	problems []string
	// unreadable is the first failure to reach the object store (not a
	// verdict on any object): the walk is incomplete, and says so.
	unreadable error
	walk       *snapshot.Reach
	stack      []*treeCheck
	// progress, when set, counts the trees walked (Files).
	progress *snapshot.Progress
}

// treeCheck is a tree being walked: its state so far and its chunks.
type treeCheck struct {
	id     chunk.ID
	ok     bool
	chunks []chunk.ID
}

func newReach(st *store.Store, bad map[chunk.ID]string) *reach {
	r := &reach{st: st, commits: map[chunk.ID]bool{}, trees: map[chunk.ID]bool{}, bad: bad}
	r.walk = &snapshot.Reach{Src: st, Tree: r.enter, Chunks: r.chunks, Leave: r.leave}
	return r
}

// unavailable records err if it is a failure to reach the store.
func (r *reach) unavailable(err error) bool {
	if err == nil || !errors.Is(err, store.ErrUnavailable) {
		return false
	}
	if r.unreadable == nil {
		r.unreadable = err
	}
	return true
}

// incomplete is the error of a walk the store could not finish, or nil.
func (r *reach) incomplete(what string) error {
	if r.unreadable == nil {
		return nil
	}
	return fmt.Errorf("%s: could not read the store %s, so it stopped (this says nothing about damage; try again): %w", what, r.st.Location(), r.unreadable)
}

// blobs is every reachable tree and chunk.
func (r *reach) blobs() map[chunk.ID]struct{} { return r.walk.Set() }

// commit checks commit id and its ancestors; false if any is broken.
func (r *reach) commit(id chunk.ID) bool {
	ok := true
	for !id.IsZero() {
		if v, seen := r.commits[id]; seen {
			return ok && v
		}
		c, err := r.st.Commit(id)
		if r.unavailable(err) {
			return false
		}
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

// tree checks tree id and everything below it.
func (r *reach) tree(id chunk.ID) bool {
	if err := r.walk.Walk(id); err != nil {
		if !r.unavailable(err) {
			r.problems = append(r.problems, err.Error())
		}
		return false
	}
	return r.trees[id]
}

func (r *reach) enter(id chunk.ID, _ string, t *snapshot.Tree, err error) error {
	tc := &treeCheck{id: id, ok: true}
	r.stack = append(r.stack, tc)
	if r.progress != nil {
		r.progress.Files.Add(1)
	}
	if why, isBad := r.bad[id]; isBad {
		r.problems = append(r.problems, fmt.Sprintf("tree %s: %s", id, why))
		tc.ok = false
		return snapshot.SkipTree
	}
	if r.unavailable(err) {
		return err
	}
	if err != nil {
		r.problems = append(r.problems, err.Error())
		tc.ok = false
		return snapshot.SkipTree
	}
	for _, e := range t.Entries {
		switch e.Kind {
		case snapshot.KindDir:
			// Subtrees checked before (under another commit or
			// directory) are not walked again: take their verdict.
			if v, seen := r.trees[e.Subtree]; seen && !v {
				tc.ok = false
			}
		case snapshot.KindFile:
			for _, x := range e.Content {
				if !x.Hole() {
					tc.chunks = append(tc.chunks, x.ID)
				}
			}
		}
	}
	return nil
}

// chunks checks that the chunks a tree is the first to name are present.
func (r *reach) chunks(tree chunk.ID, ids []chunk.ID) error {
	has, err := r.st.HasManyIndexed(ids)
	if err != nil {
		return err
	}
	for i, h := range has {
		if !h {
			r.problems = append(r.problems, fmt.Sprintf("chunk %s named by tree %s: missing", ids[i], tree.Short()))
			r.bad[ids[i]] = "missing"
		}
	}
	return nil
}

func (r *reach) leave(id chunk.ID) error {
	tc := r.stack[len(r.stack)-1]
	r.stack = r.stack[:len(r.stack)-1]
	// A chunk may be bad however it was found (missing here, or under
	// another tree, or corrupt in its pack).
	for _, x := range tc.chunks {
		if _, isBad := r.bad[x]; isBad {
			tc.ok = false
			break
		}
	}
	r.trees[id] = tc.ok
	if n := len(r.stack); n > 0 && !tc.ok {
		r.stack[n-1].ok = false
	}
	return nil
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
	// On S3, walking the trees reads their frames by ranged GETs rather
	// than downloading every pack holding one.
	st.SetRangedReads(true)
	defer st.SetRangedReads(false)
	cs, err := st.Check(readData, func(p store.Problem) {
		if p.Warning {
			rep.Warnings = append(rep.Warnings, p.String())
			return
		}
		if !p.Blob.IsZero() {
			bad[p.Blob] = p.Msg
		}
		if !p.Follows {
			rep.Problems = append(rep.Problems, p.String())
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
	if err := r.incomplete("fsck"); err != nil {
		return nil, err
	}
	rep.Commits = len(r.commits)
	rep.Problems = append(rep.Problems, r.problems...)
	if len(rep.Problems) > 0 || len(rep.Broken) > 0 {
		return rep, ErrDamaged
	}
	return rep, nil
}

// GC removes every blob and commit no image, tag or reflog reaches.
func GC(st *store.Store) (store.GCStats, error) { return GCProgress(st, nil) }

// GCProgress is GC counting in p (when not nil) the trees it walks and
// then the blobs it sorts into live and dead (Files).
func GCProgress(st *store.Store, p *snapshot.Progress) (store.GCStats, error) {
	if st.Remote() != nil {
		return store.GCStats{}, fmt.Errorf("gc on an S3 store (%s) goes by marks and a grace period: use client.GCRemote", st.Location())
	}
	rs, err := refRoots(st)
	if err != nil {
		return store.GCStats{}, err
	}
	r := newReach(st, map[chunk.ID]string{})
	r.progress = p
	for id := range rs {
		r.commit(id)
	}
	if err := r.incomplete("gc"); err != nil {
		return store.GCStats{}, err
	}
	if len(r.problems) > 0 {
		// Never delete on the strength of a walk that could not see
		// everything: a damaged tree hides what it references.
		return store.GCStats{}, fmt.Errorf("gc: refusing to run on a damaged store (run `sim fsck`): %s", r.problems[0])
	}
	live := r.blobs()
	gs, err := st.Repack(func(id chunk.ID) bool {
		if p != nil {
			p.Files.Add(1)
		}
		_, ok := live[id]
		return ok
	}, func(id chunk.ID) bool {
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

// GCRemoteOptions steer gc on an S3 store.
type GCRemoteOptions struct {
	// Grace is how long a new mark waits before its sweep: longer than
	// any push or commit into the store takes (0: sweep at once, safe
	// only when nothing writes the store meanwhile).
	Grace time.Duration
	// Progress, when set, counts the trees walked (Files).
	Progress *snapshot.Progress
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// GCRemoteReport is what GCRemote did.
type GCRemoteReport struct {
	Swept   int // marks swept
	Waiting []store.GCMark
	Mark    *store.GCMark // the new mark (nil: nothing dead)
	store.RemoteGCStats
}

// GCRemote is gc on an S3 store (ARCHITECTURE.md "gc on S3"): first it
// sweeps every pending mark whose grace period is over, each after a walk
// from the refs and from every commit made since the mark; then it walks
// from the refs and writes a new mark of what is dead (sweeping it at
// once when Grace is 0).
func GCRemote(st *store.Store, o GCRemoteOptions) (*GCRemoteReport, error) {
	if st.Remote() == nil {
		return nil, fmt.Errorf("store %s is not on S3", st.Location())
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	st.SetRangedReads(true)
	defer st.SetRangedReads(false)
	rep := &GCRemoteReport{}
	marks, err := st.GCMarks()
	if err != nil {
		return nil, err
	}
	for _, m := range marks {
		if !m.Due(now()) {
			rep.Waiting = append(rep.Waiting, m)
			continue
		}
		if err := sweepOne(st, m, o.Progress, rep); err != nil {
			return rep, err
		}
	}
	r, err := gcWalk(st, nil, o.Progress)
	if err != nil {
		return rep, err
	}
	live := r.blobs()
	m, gs, err := st.GCMarkNew(func(id chunk.ID) bool { _, ok := live[id]; return ok },
		func(id chunk.ID) bool { _, ok := r.commits[id]; return ok }, o.Grace)
	addStats(&rep.RemoteGCStats, gs)
	if err != nil {
		return rep, err
	}
	rep.Mark = m
	if m != nil && o.Grace <= 0 {
		if err := sweepOne(st, *m, o.Progress, rep); err != nil {
			return rep, err
		}
	} else if m != nil {
		rep.Waiting = append(rep.Waiting, *m)
	}
	dropStatCaches(st)
	return rep, nil
}

// sweepOne walks again (from the refs and every commit m does not list
// as dead: what was made since the mark) and sweeps m.
func sweepOne(st *store.Store, m store.GCMark, p *snapshot.Progress, rep *GCRemoteReport) error {
	dead := make(map[chunk.ID]bool, len(m.Commits))
	for _, c := range m.Commits {
		dead[c] = true
	}
	if err := st.Refresh(); err != nil {
		return err
	}
	all, err := st.Commits()
	if err != nil {
		return err
	}
	var extra []chunk.ID
	for _, c := range all {
		if !dead[c] {
			extra = append(extra, c)
		}
	}
	r, err := gcWalk(st, extra, p)
	if err != nil {
		return err
	}
	live := r.blobs()
	gs, err := st.GCSweep(m, func(id chunk.ID) bool { _, ok := live[id]; return ok },
		func(id chunk.ID) bool { _, ok := r.commits[id]; return ok })
	addStats(&rep.RemoteGCStats, gs)
	if err == nil {
		rep.Swept++
	}
	return err
}

// gcWalk walks from the refs and extra commits, refusing a damaged store.
func gcWalk(st *store.Store, extra []chunk.ID, p *snapshot.Progress) (*reach, error) {
	rs, err := refRoots(st)
	if err != nil {
		return nil, err
	}
	r := newReach(st, map[chunk.ID]string{})
	r.progress = p
	for id := range rs {
		r.commit(id)
	}
	for _, id := range extra {
		r.commit(id)
	}
	if err := r.incomplete("gc"); err != nil {
		return nil, err
	}
	if len(r.problems) > 0 {
		return nil, fmt.Errorf("gc: refusing to run on a damaged store (run `sim fsck`): %s", r.problems[0])
	}
	return r, nil
}

func addStats(a *store.RemoteGCStats, b store.RemoteGCStats) {
	a.PacksMarked += b.PacksMarked
	a.BytesMarked += b.BytesMarked
	a.PacksRewritten += b.PacksRewritten
	a.BlobsCopied += b.BlobsCopied
	a.CommitsMarked += b.CommitsMarked
	a.PacksDeleted += b.PacksDeleted
	a.PacksKept += b.PacksKept
	a.BytesFreed += b.BytesFreed
	a.IndexReplaced += b.IndexReplaced
	a.CommitsRemoved += b.CommitsRemoved
}
