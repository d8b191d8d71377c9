package sync

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// Transport brings objects from elsewhere into a store: the HTTP server
// (Remote) now; a BitTorrent swarm or a multicast session can implement
// it too, and FetchCommit works the same over any of them.
type Transport interface {
	// Commit returns encoded commit id, verified against id.
	Commit(ctx context.Context, id chunk.ID) ([]byte, error)
	// Fetch streams to rcv what a store holding the have commits lacks of
	// commit want. It may deliver less than that, even nothing (an
	// ErrTruncated error is not fatal): callers fill gaps with Objects.
	// Every blob handed to rcv is verified.
	Fetch(ctx context.Context, want chunk.ID, haves []chunk.ID, rcv Receiver) (DecodeStats, error)
	// Objects streams the given blobs to rcv, leaving out unknown ones.
	Objects(ctx context.Context, ids []chunk.ID, rcv Receiver) (DecodeStats, error)
	// String names the source in messages.
	String() string
}

var _ Transport = (*Remote)(nil)

// PullStats counts a transfer.
type PullStats struct {
	Commits   int   `json:"commits"`    // commits fetched
	Rounds    int   `json:"rounds"`     // object requests made
	WireBytes int64 `json:"wire_bytes"` // response bytes read
	Blobs     int64 `json:"blobs"`      // blobs received
	NewBlobs  int64 `json:"new_blobs"`  // of which the store lacked
	// Seconds is how long the transfer took (commands that time it).
	Seconds float64 `json:"seconds,omitempty"`
}

func (p *PullStats) add(o PullStats) {
	p.Commits += o.Commits
	p.Rounds += o.Rounds
	p.WireBytes += o.WireBytes
	p.Blobs += o.Blobs
	p.NewBlobs += o.NewBlobs
}

// LocalHaves lists commits of st to offer as "have": image heads and tags,
// newest first, at most 64. Every commit in a store has its whole tree.
func LocalHaves(st *store.Store, extra ...chunk.ID) ([]chunk.ID, error) {
	seen := map[chunk.ID]bool{}
	type dated struct {
		id chunk.ID
		t  int64
	}
	var all []dated
	add := func(id chunk.ID) {
		if id.IsZero() || seen[id] {
			return
		}
		seen[id] = true
		if c, err := st.Commit(id); err == nil {
			all = append(all, dated{id, c.Time.UnixNano()})
		}
	}
	for _, id := range extra {
		add(id)
	}
	ims, err := st.Images()
	if err != nil {
		return nil, err
	}
	for _, im := range ims {
		add(im.Head)
	}
	tags, err := st.Tags()
	if err != nil {
		return nil, err
	}
	for _, t := range tags {
		add(t.Commit)
	}
	// The extras (e.g. what a directory has checked out) first: they
	// are the best delta bases.
	n := len(extra)
	if n > len(all) {
		n = len(all)
	}
	rest := all[n:]
	sort.SliceStable(rest, func(i, j int) bool { return rest[i].t > rest[j].t })
	out := make([]chunk.ID, 0, len(all))
	for _, d := range all {
		out = append(out, d.id)
	}
	if len(out) > 64 {
		out = out[:64]
	}
	return out, nil
}

// FetchCommit makes commit id, and every object of its tree, present in
// local. It first asks for one stream of everything local lacks, given
// the commits it has (a delta); then, until the tree is complete, for the
// objects still missing (after an interrupted transfer, only those).
// Shallow stores the commit without its ancestors; otherwise the caller
// has fetched them first.
func FetchCommit(ctx context.Context, local *store.Store, r Transport, id chunk.ID, shallow bool, base ...chunk.ID) (PullStats, error) {
	var ps PullStats
	if ok, err := local.HasCommit(id); err != nil {
		return ps, err
	} else if ok && (shallow || !local.IsShallow(id)) {
		return ps, nil
	}
	cb, err := r.Commit(ctx, id)
	if err != nil {
		return ps, err
	}
	c, err := store.DecodeCommit(id, cb)
	if err != nil {
		return ps, err
	}
	receive := func(fn func(Receiver) (DecodeStats, error)) error {
		sink := NewSink(local)
		ds, err := fn(sink.Receiver())
		ws, ferr := sink.Close()
		ps.Rounds++
		ps.WireBytes += ds.WireBytes
		ps.Blobs += ds.Blobs
		ps.NewBlobs += ws.Blobs + ds.Stored
		if err == nil {
			err = ferr
		}
		return err
	}
	if has, err := local.Has(c.Tree); err != nil {
		return ps, err
	} else if !has {
		haves, err := LocalHaves(local, base...)
		if err != nil {
			return ps, err
		}
		err = receive(func(rcv Receiver) (DecodeStats, error) { return r.Fetch(ctx, id, haves, rcv) })
		if err != nil && !errors.Is(err, ErrTruncated) {
			return ps, err
		}
		// A truncated stream is no failure: what arrived is kept and
		// the rest is asked for below.
	}
	for last := -1; ; {
		missing, err := MissingObjects(local, c.Tree, 0)
		if err != nil {
			return ps, err
		}
		if len(missing) == 0 {
			break
		}
		if len(missing) == last && ps.Rounds > 2 {
			return ps, fmt.Errorf("%s cannot supply %d objects of commit %s (e.g. %s)", r, len(missing), id.Short(), missing[0].Short())
		}
		last = len(missing)
		if err := receive(func(rcv Receiver) (DecodeStats, error) { return r.Objects(ctx, missing, rcv) }); err != nil && !errors.Is(err, ErrTruncated) {
			return ps, err
		}
		if ps.Rounds > 1000 {
			return ps, fmt.Errorf("fetch of %s does not converge", id.Short())
		}
	}
	if shallow {
		_, err = local.PutCommitShallow(c)
	} else {
		_, err = local.PutCommit(c)
	}
	ps.Commits++
	return ps, err
}

// FetchHistory fetches commit id with every ancestor local lacks, oldest
// first, so each is a small delta on the one before.
func FetchHistory(ctx context.Context, local *store.Store, r Transport, id chunk.ID) (PullStats, error) {
	var ps PullStats
	var chain []chunk.ID
	for cur := id; !cur.IsZero(); {
		ok, err := local.HasCommit(cur)
		if err != nil {
			return ps, err
		}
		if ok && !local.IsShallow(cur) {
			break
		}
		chain = append(chain, cur)
		cb, err := r.Commit(ctx, cur)
		if err != nil {
			return ps, err
		}
		c, err := store.DecodeCommit(cur, cb)
		if err != nil {
			return ps, err
		}
		cur = chunk.ID{}
		if len(c.Parents) > 0 {
			cur = c.Parents[0]
		}
	}
	var prev []chunk.ID
	for i := len(chain) - 1; i >= 0; i-- {
		s, err := FetchCommit(ctx, local, r, chain[i], false, prev...)
		ps.add(s)
		if err != nil {
			return ps, err
		}
		prev = []chunk.ID{chain[i]}
	}
	return ps, nil
}

// Pull replicates refs (all when refs is empty) from r into local with
// their history. Images move to the server's head; tags are created (an
// existing tag elsewhere is an error: tags are immutable). Objects come
// through tr (a BitTorrent swarm, a multicast session), or r when tr is
// nil; r names the refs either way.
func Pull(ctx context.Context, local *store.Store, r *Remote, tr Transport, refs []string) (PullStats, error) {
	var ps PullStats
	if tr == nil {
		tr = r
	}
	rr, err := r.Refs(ctx)
	if err != nil {
		return ps, err
	}
	type ref struct {
		kind, name string
		id         chunk.ID
	}
	var todo []ref
	if len(refs) == 0 {
		for n, id := range rr.Images {
			todo = append(todo, ref{"image", n, id})
		}
		for n, id := range rr.Tags {
			todo = append(todo, ref{"tag", n, id})
		}
	}
	for _, n := range refs {
		if id, ok := rr.Images[n]; ok {
			todo = append(todo, ref{"image", n, id})
		} else if id, ok := rr.Tags[n]; ok {
			todo = append(todo, ref{"tag", n, id})
		} else {
			return ps, fmt.Errorf("%s has no image or tag %q", r.URL, n)
		}
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].kind+todo[i].name < todo[j].kind+todo[j].name })
	for _, t := range todo {
		s, err := FetchHistory(ctx, local, tr, t.id)
		ps.add(s)
		if err != nil {
			return ps, fmt.Errorf("%s %s: %w", t.kind, t.name, err)
		}
		if err := SetLocalRef(local, t.kind, t.name, t.id, "pull", "pulled from "+r.URL); err != nil {
			return ps, err
		}
	}
	return ps, nil
}

// SetLocalRef points a local image (moving it) or tag (creating it) at id.
func SetLocalRef(local *store.Store, kind, name string, id chunk.ID, op, msg string) error {
	switch kind {
	case "image":
		old, err := local.ImageHead(name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if old == id {
			return nil
		}
		return local.SetImage(name, old, id, op, msg)
	case "tag":
		cur, err := local.TagCommit(name)
		if err == nil {
			if cur != id {
				return fmt.Errorf("tag %s is %s here and %s on the server: tags are immutable", name, cur.Short(), id.Short())
			}
			return nil
		}
		return local.CreateTag(name, id)
	}
	return nil
}
