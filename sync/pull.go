package sync

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// PullStats counts a transfer.
type PullStats struct {
	Commits   int   `json:"commits"`    // commits fetched
	Rounds    int   `json:"rounds"`     // object requests made
	WireBytes int64 `json:"wire_bytes"` // response bytes read
	Blobs     int64 `json:"blobs"`      // blobs received
	NewBlobs  int64 `json:"new_blobs"`  // of which the store lacked
	// Seconds is how long the transfer took (commands that time it).
	Seconds float64 `json:"seconds,omitempty"`
	// Transport names what carried the bulk of the objects ("" for the
	// server's own stream); Delivered is how many blobs it delivered, the
	// rest (Blobs - Delivered) came over HTTP to fill the gaps.
	Transport string `json:"transport,omitempty"`
	Delivered int64  `json:"transport_blobs,omitempty"`
	// TransportBytes is what the transport itself received (peers,
	// datagrams), part of WireBytes: the rest came over HTTP.
	TransportBytes int64 `json:"transport_bytes,omitempty"`
	// Report is the transport's own figures (see Delivery.Report).
	Report any `json:"-"`
}

func (p *PullStats) add(o PullStats) {
	p.Commits += o.Commits
	p.Rounds += o.Rounds
	p.WireBytes += o.WireBytes
	p.Blobs += o.Blobs
	p.NewBlobs += o.NewBlobs
	p.Delivered += o.Delivered
	p.TransportBytes += o.TransportBytes
	if o.Transport != "" {
		p.Transport = o.Transport
	}
	if o.Report != nil {
		p.Report = o.Report
	}
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
// local. The commit comes from the server r; the objects first through tr
// (nil: the server's own stream), a delta on the commits local has; then,
// until the tree is complete, r is asked for exactly the objects still
// missing (after an interrupted or partial delivery, only those). Shallow
// stores the commit without its ancestors; otherwise the caller has
// fetched them first.
//
// The trust policy is applied here, before any object moves: when local
// requires signatures (sim trust require on) or r.RequireSignature, the
// commit must carry a valid signature by a key local trusts, or the
// fetch fails naming the commit and the keys. The commit's valid
// signatures are stored beside it.
func FetchCommit(ctx context.Context, local *store.Store, r *Remote, tr Transport, id chunk.ID, shallow bool, base ...chunk.ID) (PullStats, error) {
	return FetchCommitFeed(ctx, local, r, tr, id, shallow, nil, base...)
}

// FetchCommitFeed is FetchCommit handing every blob it verifies to feed
// as well (nil: none), for a checkout that writes the tree while its
// objects arrive (node.Checkout). The feed learns the commit once the
// trust policy admitted it, before any object moves; a commit local
// holds already moves nothing and admits none. The caller calls
// feed.Finish with the result.
func FetchCommitFeed(ctx context.Context, local *store.Store, r *Remote, tr Transport, id chunk.ID, shallow bool, feed *Feed, base ...chunk.ID) (PullStats, error) {
	if ok, err := local.HasCommit(id); err != nil {
		return PullStats{}, err
	} else if ok && (shallow || !local.IsShallow(id)) {
		return PullStats{}, admitLocal(ctx, local, r, id)
	}
	cb, err := r.Commit(ctx, id)
	if err != nil {
		return PullStats{}, err
	}
	c, err := store.DecodeCommit(id, cb)
	if err != nil {
		return PullStats{}, err
	}
	sigs, err := remoteSignatures(ctx, local, r, id, cb)
	if err != nil {
		return PullStats{}, err
	}
	if err := admit(local, r, id, cb, sigs); err != nil {
		return PullStats{}, err
	}
	if feed != nil {
		feed.admit(id, c)
	}
	ps, err := fetchCommit(ctx, local, r, tr, id, c, shallow, base, feed)
	if err != nil {
		return ps, err
	}
	return ps, keepSignatures(local, id, sigs)
}

// fetchCommit is FetchCommit with commit c (id) already at hand.
func fetchCommit(ctx context.Context, local *store.Store, r *Remote, tr Transport, id chunk.ID, c *store.Commit, shallow bool, base []chunk.ID, feed *Feed) (PullStats, error) {
	var ps PullStats
	sink := NewSink(local)
	defer sink.Close()
	if feed != nil {
		sink.SetFeed(feed)
	}
	sink.SetLimit(fetchLimit(r, id, c))
	var before, newBefore int64
	// round adds what one request (or delivery) brought and makes it
	// durable; it reports whether the store gained anything.
	round := func(wire int64) (bool, error) {
		ps.Rounds++
		ps.WireBytes += wire
		s, err := sink.Sync()
		ps.Blobs += s.Blobs - before
		gained := s.New > newBefore
		before, newBefore = s.Blobs, s.New
		return gained, err
	}
	haves, err := LocalHaves(local, base...)
	if err != nil {
		return ps, err
	}
	if has, err := local.Has(c.Tree); err != nil {
		return ps, err
	} else if !has && tr != nil {
		d, err := tr.Deliver(ctx, id, haves, sink)
		ps.Transport, ps.Report, ps.TransportBytes = tr.String(), d.Report, d.WireBytes
		if err != nil && !errors.Is(err, ErrTruncated) {
			return ps, err
		}
		// A partial delivery is no failure: what arrived is kept and
		// the rest is asked for below.
		if _, err := round(d.WireBytes); err != nil {
			return ps, err
		}
		ps.Delivered = ps.Blobs
	}
	// Without a transport, the server's own stream of what is missing (a
	// delta on the haves). After a transport, even one that delivered
	// nothing, only exact requests: the store may hold more than its
	// haves say (objects of a partial delivery), and a stream would send
	// those again.
	if has, err := local.Has(c.Tree); err != nil {
		return ps, err
	} else if !has && tr == nil {
		ds, err := r.Fetch(ctx, id, haves, sink)
		if err != nil && !errors.Is(err, ErrTruncated) {
			return ps, err
		}
		if _, err := round(ds.WireBytes); err != nil {
			return ps, err
		}
	}
	// Then exactly what is still missing (after an interrupted or partial
	// delivery, only that), until nothing is. A round that brings nothing
	// new twice in a row means the server cannot supply it.
	// The node's current commit (the first base, when the store has it)
	// is whole in the store: the walk skips what the target shares with it.
	var baseTree chunk.ID
	if len(base) > 0 {
		if bc, err := local.Commit(base[0]); err == nil {
			baseTree = bc.Tree
		}
	}
	for idle := 0; ; {
		missing, err := MissingObjectsSince(local, c.Tree, baseTree)
		if err != nil {
			return ps, err
		}
		if len(missing) == 0 {
			break
		}
		if idle >= 2 {
			return ps, fmt.Errorf("%s cannot supply %d objects of commit %s (e.g. %s)", r, len(missing), id.Short(), missing[0].Short())
		}
		ds, err := r.Objects(ctx, missing, sink)
		if err != nil && !errors.Is(err, ErrTruncated) {
			return ps, err
		}
		gained, err := round(ds.WireBytes)
		if err != nil {
			return ps, err
		}
		if gained {
			idle = 0
		} else {
			idle++
		}
		if ps.Rounds > 1000 {
			return ps, fmt.Errorf("fetch of %s does not converge", id.Short())
		}
	}
	st, err := sink.Close()
	ps.NewBlobs = st.New
	if err != nil {
		return ps, err
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
// first, so each is a small delta on the one before. Each commit is
// downloaded once, with its signatures. The trust policy (see
// FetchCommit) applies to id, the commit a ref will name, before any
// object moves; its history comes as it is (a checkout of an older
// commit is checked again then).
func FetchHistory(ctx context.Context, local *store.Store, r *Remote, tr Transport, id chunk.ID) (PullStats, error) {
	var ps PullStats
	type link struct {
		id  chunk.ID
		c   *store.Commit
		raw []byte
	}
	var chain []link
	for cur := id; !cur.IsZero(); {
		ok, err := local.HasCommit(cur)
		if err != nil {
			return ps, err
		}
		if ok && !local.IsShallow(cur) {
			break
		}
		cb, err := r.Commit(ctx, cur)
		if err != nil {
			return ps, err
		}
		c, err := store.DecodeCommit(cur, cb)
		if err != nil {
			return ps, err
		}
		chain = append(chain, link{cur, c, cb})
		cur = chunk.ID{}
		if len(c.Parents) > 0 {
			cur = c.Parents[0]
		}
	}
	// The head's signatures (also when it is here already: an admin may
	// have signed it since), then the policy.
	if len(chain) == 0 || chain[0].id != id {
		raw, err := local.CommitRaw(id)
		if err != nil {
			return ps, err
		}
		sigs, err := remoteSignatures(ctx, local, r, id, raw)
		if err == nil {
			err = keepSignatures(local, id, sigs)
		}
		if err == nil {
			err = admitLocal(ctx, local, r, id)
		}
		if err != nil {
			return ps, err
		}
	}
	sigs := make([][]sign.Signature, len(chain))
	for i, l := range chain {
		var err error
		if sigs[i], err = remoteSignatures(ctx, local, r, l.id, l.raw); err != nil {
			return ps, err
		}
		if i == 0 {
			if err := admit(local, r, l.id, l.raw, sigs[i]); err != nil {
				return ps, err
			}
		}
	}
	var prev []chunk.ID
	for i := len(chain) - 1; i >= 0; i-- {
		l := chain[i]
		if ok, err := local.HasCommit(l.id); err != nil {
			return ps, err
		} else if ok && !local.IsShallow(l.id) {
			prev = []chunk.ID{l.id}
			continue
		}
		s, err := fetchCommit(ctx, local, r, tr, l.id, l.c, false, prev, nil)
		ps.add(s)
		if err == nil {
			err = keepSignatures(local, l.id, sigs[i])
		}
		if err != nil {
			return ps, err
		}
		prev = []chunk.ID{l.id}
	}
	return ps, nil
}

// Pull replicates refs (all when refs is empty) from r into local with
// their history. Images move to the server's head; tags are created (an
// existing tag elsewhere is an error: tags are immutable). Objects come
// through tr (a BitTorrent swarm, a multicast session), or r's own stream
// when tr is nil; r names the refs and fills the gaps either way.
func Pull(ctx context.Context, local *store.Store, r *Remote, tr Transport, refs []string) (PullStats, error) {
	var ps PullStats
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
		s, err := FetchHistory(ctx, local, r, tr, t.id)
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

// fetchLimit is the budget of one commit's fetch, whatever carries it:
// twice what the commit says it holds (file bytes, and up to 4 KiB of
// tree per entry: stored frames go out whole when half of them is
// wanted), plus 64 MiB. A server that sends more (an endless stream) is
// cut off with ErrTooMuch instead of filling the node's disk. The
// commit's figures are the server's word unless it is signed.
func fetchLimit(r *Remote, id chunk.ID, c *store.Commit) (int64, string) {
	st := c.Stats
	claim := max(st.Bytes, 0) + (max(st.Files, 0)+max(st.Dirs, 0)+1)*4096
	if claim > 1<<50 {
		claim = 1 << 50
	}
	return 2*claim + 64<<20, fmt.Sprintf("%s sent more than twice what commit %s holds (%d bytes in %d files)", r, id.Short(), st.Bytes, st.Files)
}
