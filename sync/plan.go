package sync

import (
	"context"
	"fmt"
	"io"
	"sort"
	gosync "sync"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// Planner decides, on the sending side, which objects a receiver needs
// and sends them. It is safe for concurrent use: one Planner serves every
// connection of a server.
type Planner struct {
	st *store.Store

	mu    gosync.Mutex
	haves map[chunk.ID]*haveSet // per commit, small LRU
	order []chunk.ID
}

type haveSet struct {
	ids  map[chunk.ID]struct{}
	done chan struct{}
	err  error
}

// NewPlanner plans for store st.
func NewPlanner(st *store.Store) *Planner {
	return &Planner{st: st, haves: map[chunk.ID]*haveSet{}}
}

// reachable returns every blob id reachable from commit id's tree. Many
// nodes updating from the same commit share one computation.
func (p *Planner) reachable(id chunk.ID) (map[chunk.ID]struct{}, error) {
	p.mu.Lock()
	if h, ok := p.haves[id]; ok {
		p.mu.Unlock()
		<-h.done
		return h.ids, h.err
	}
	h := &haveSet{done: make(chan struct{})}
	p.haves[id] = h
	p.order = append(p.order, id)
	if len(p.order) > 16 {
		delete(p.haves, p.order[0])
		p.order = p.order[1:]
	}
	p.mu.Unlock()
	defer close(h.done)
	c, err := p.st.Commit(id)
	if err != nil {
		h.err = err
		return nil, err
	}
	r := &snapshot.Reach{Src: p.st}
	h.err = r.Walk(c.Tree)
	h.ids = r.Set()
	if h.err != nil {
		p.mu.Lock()
		delete(p.haves, id)
		p.mu.Unlock()
	}
	return h.ids, h.err
}

// Plan is what a receiver that has some commits needs to get another.
type Plan struct {
	Commit      chunk.ID
	CommitBytes []byte
	Trees       []TreeSend
	Chunks      []chunk.ID
	ChunkBytes  int64 // uncompressed
	TreeBytes   int64
	Haves       int // have commits the sender knew
}

// TreeSend is a tree to send, and the tree at the same path in the
// receiver's commit to delta it against (zero if none).
type TreeSend struct {
	ID, Base chunk.ID
}

// Plan computes what to send for want given the receiver's have commits
// (unknown ones are ignored). Trees come in walk order, chunks in storage
// order so the sender reads packs sequentially.
func (p *Planner) Plan(want chunk.ID, haves []chunk.ID) (*Plan, error) {
	cb, err := p.st.CommitRaw(want)
	if err != nil {
		return nil, err
	}
	c, err := store.DecodeCommit(want, cb)
	if err != nil {
		return nil, err
	}
	have := map[chunk.ID]struct{}{}
	var baseRoot chunk.ID
	pl := &Plan{Commit: want, CommitBytes: cb}
	for _, h := range haves {
		if ok, _ := p.st.HasCommit(h); !ok {
			continue
		}
		ids, err := p.reachable(h)
		if err != nil {
			return nil, err
		}
		if baseRoot.IsZero() {
			hc, err := p.st.Commit(h)
			if err != nil {
				return nil, err
			}
			baseRoot = hc.Tree
		}
		pl.Haves++
		if len(haves) == 1 {
			have = ids // no copy needed
			break
		}
		for id := range ids {
			have[id] = struct{}{}
		}
	}
	// The delta base of each tree is the tree at the same path in the
	// first have commit: a parent records its subtrees' bases before the
	// walk reaches them.
	bases := map[string]chunk.ID{"": baseRoot}
	var sizes map[chunk.ID]uint64 // of the chunks of the tree being visited
	r := &snapshot.Reach{
		Src:   p.st,
		Prune: func(id chunk.ID) bool { _, ok := have[id]; return ok },
		Tree: func(id chunk.ID, path string, t *snapshot.Tree, err error) error {
			if err != nil {
				return err
			}
			base := bases[path]
			delete(bases, path)
			if _, ok := have[base]; !ok {
				base = chunk.ID{}
			}
			loc, err := p.st.Lookup(id)
			if err != nil {
				return fmt.Errorf("tree %s: %w", id.Short(), err)
			}
			pl.Trees = append(pl.Trees, TreeSend{ID: id, Base: base})
			pl.TreeBytes += int64(loc.Len)
			sizes = map[chunk.ID]uint64{}
			for _, e := range t.Entries {
				for _, x := range e.Content {
					sizes[x.ID] = x.Len
				}
			}
			if base.IsZero() {
				return nil
			}
			bt, err := snapshot.LoadTree(p.st, base)
			if err != nil {
				return err
			}
			for _, e := range t.Entries {
				if e.Kind != snapshot.KindDir {
					continue
				}
				if be := bt.Find(e.Name); be != nil && be.Kind == snapshot.KindDir {
					bases[joinPath(path, e.Name)] = be.Subtree
				}
			}
			return nil
		},
		Chunks: func(_ chunk.ID, ids []chunk.ID) error {
			for _, id := range ids {
				if _, ok := have[id]; ok {
					continue
				}
				pl.Chunks = append(pl.Chunks, id)
				pl.ChunkBytes += int64(sizes[id])
			}
			return nil
		},
	}
	if err := r.Walk(c.Tree); err != nil {
		return nil, err
	}
	return pl, nil
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// located is a blob with its place in the store.
type located struct {
	id  chunk.ID
	loc store.Loc
}

// rawPool recycles the buffers stored frames are read into: a server
// streaming to many nodes would otherwise allocate a frame per send.
var rawPool = gosync.Pool{New: func() any { b := make([]byte, 0, 5<<20); return &b }}

// frameBatch is how many uncompressed bytes a recompressed frame holds.
const frameBatch = 4 << 20

// splitTrees separates the trees sent as deltas from the others.
func (pl *Plan) splitTrees() (plain []chunk.ID, deltas []TreeSend) {
	for _, t := range pl.Trees {
		if t.Base.IsZero() {
			plain = append(plain, t.ID)
		} else {
			deltas = append(deltas, t)
		}
	}
	return plain, deltas
}

// Send writes the plan's commit, trees and chunks to enc.
func (p *Planner) Send(ctx context.Context, enc *Encoder, pl *Plan) error {
	if err := enc.Commit(pl.Commit, pl.CommitBytes); err != nil {
		return err
	}
	plain, deltas := pl.splitTrees()
	for _, t := range deltas {
		b, err := p.st.Get(t.ID)
		if err != nil {
			return err
		}
		bb, err := p.st.Get(t.Base)
		if err != nil {
			return err
		}
		if err := enc.Delta(store.TypeTree, t.ID, t.Base, b, bb); err != nil {
			return err
		}
	}
	if err := p.SendObjects(ctx, enc, plain); err != nil {
		return err
	}
	return p.SendObjects(ctx, enc, pl.Chunks)
}

// SendObjects writes blobs to enc. Where (nearly) all of a stored frame
// is wanted the frame goes out as stored (no decompression, no
// recompression: the server's CPU stays off the hot path); the rest are
// regrouped into new compressed frames, so a receiver that lacks part of
// a frame gets that part, not the whole frame again (see GroupFrames).
// Unknown ids are skipped: the receiver finds them missing and says so.
func (p *Planner) SendObjects(ctx context.Context, enc *Encoder, ids []chunk.ID) error {
	return p.GroupFrames(ctx, ids, func(g FrameGroup) error {
		if g.Stored {
			buf := rawPool.Get().(*[]byte)
			raw, err := p.st.ReadRawInto(g.Loc, *buf)
			if err == nil {
				err = enc.Frame(g.Loc.Comp, g.ULen, raw, g.Entries)
			}
			*buf = raw[:0]
			rawPool.Put(buf)
			return err
		}
		data, err := p.groupData(g)
		if err != nil {
			return err
		}
		return enc.CompressFrame(g.Entries, data)
	})
}

// FrameGroup is a frame to send: a stored frame as it is (Stored, at
// Loc, ULen bytes uncompressed, holding Entries), or blobs to compress
// into a new frame (Entries give type and id; Locs where each is).
type FrameGroup struct {
	Stored  bool
	Loc     store.Loc
	ULen    int
	Entries []FrameEntry
	Locs    []store.Loc
}

// groupData reads the blobs of a group that is not Stored.
func (p *Planner) groupData(g FrameGroup) ([][]byte, error) {
	data := make([][]byte, len(g.Entries))
	for i, e := range g.Entries {
		b, err := p.st.GetAt(e.ID, g.Locs[i])
		if err != nil {
			return nil, err
		}
		data[i] = b
	}
	return data, nil
}

// GroupFrames decides how ids travel and calls fn for each frame, in
// storage order (so packs are read sequentially): stored frames of which
// at least 7/8 is wanted go as they are, the other blobs are regrouped
// into new frames of about frameBatch bytes. The grouping depends only
// on ids and the store's packs, so it is the same every time: BitTorrent
// derives its payload from it.
//
// Why 7/8 and not half: a stored frame sent whole carries what is not
// wanted too, up to as much again as what is. Requests for what a
// receiver still lacks (an update, the HTTP fill after multicast, which
// asks a tree level at a time) often want part of a frame, and at 1/2
// they cost up to twice what is missing and bring blobs the receiver
// already has (measured: 7% over the image for a node filling a whole
// Debian image, 419 of 8790 blobs twice; at 7/8, 0.6% and 56). The
// price is recompressing those parts on the server.
func (p *Planner) GroupFrames(ctx context.Context, ids []chunk.ID, fn func(FrameGroup) error) error {
	locs := make([]located, 0, len(ids))
	for _, id := range ids {
		loc, err := p.st.Lookup(id)
		if err != nil {
			continue
		}
		locs = append(locs, located{id, loc})
	}
	sort.Slice(locs, func(i, j int) bool {
		a, b := locs[i].loc, locs[j].loc
		if a.Pack != b.Pack {
			return string(a.Pack[:]) < string(b.Pack[:])
		}
		if a.FrameOff != b.FrameOff {
			return a.FrameOff < b.FrameOff
		}
		if a.Off != b.Off {
			return a.Off < b.Off
		}
		return string(locs[i].id[:]) < string(locs[j].id[:])
	})
	var batch FrameGroup
	size := 0
	flush := func() error {
		if len(batch.Entries) == 0 {
			return nil
		}
		err := fn(batch)
		batch, size = FrameGroup{}, 0
		return err
	}
	for i := 0; i < len(locs); {
		if err := ctx.Err(); err != nil {
			return err
		}
		j := i
		var wanted int64
		for j < len(locs) && locs[j].loc.Pack == locs[i].loc.Pack && locs[j].loc.FrameOff == locs[i].loc.FrameOff {
			wanted += int64(locs[j].loc.Len)
			j++
		}
		group := locs[i:j]
		i = j
		whole, ents, ulen, err := p.frameEntries(group[0].loc)
		if err != nil {
			return err
		}
		if whole && wanted*8 >= int64(ulen)*7 { // the rule is Estimate's too
			if err := fn(FrameGroup{Stored: true, Loc: group[0].loc, ULen: ulen, Entries: ents}); err != nil {
				return err
			}
			continue
		}
		for _, g := range group {
			batch.Entries = append(batch.Entries, FrameEntry{Type: g.loc.Type, ID: g.id})
			batch.Locs = append(batch.Locs, g.loc)
			size += int(g.loc.Len)
			if size >= frameBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	return flush()
}

// frameEntries lists every blob of the stored frame at loc and its
// uncompressed length; whole is false when the frame also holds bytes
// no entry names (then it is not sent as is).
func (p *Planner) frameEntries(loc store.Loc) (whole bool, ents []FrameEntry, ulen int, err error) {
	pe, err := p.st.PackEntries(loc.Pack)
	if err != nil {
		return false, nil, 0, err
	}
	covered := 0
	for _, e := range pe {
		if e.FrameOff != loc.FrameOff {
			continue
		}
		ents = append(ents, FrameEntry{Type: e.Type, ID: e.ID, Off: e.Off, Len: e.Len})
		if end := int(e.Off + e.Len); end > ulen {
			ulen = end
		}
		covered += int(e.Len)
	}
	return covered == ulen, ents, ulen, nil
}

// Estimate predicts the wire bytes of Send without reading any data:
// frames that go out as stored (GroupFrames' rule: 7/8 wanted) cost
// their stored size, blobs regrouped into new frames cost their share of
// their stored frame, and trees sent as deltas are counted at a tenth of
// their size.
func (p *Planner) Estimate(pl *Plan) (int64, error) {
	est := int64(len(pl.CommitBytes))
	plain, deltas := pl.splitTrees()
	for _, t := range deltas {
		loc, err := p.st.Lookup(t.ID)
		if err != nil {
			return 0, err
		}
		est += int64(loc.Len)/10 + 80
	}
	for _, ids := range [][]chunk.ID{plain, pl.Chunks} {
		groups := map[[2]uint64]int64{}
		first := map[[2]uint64]store.Loc{}
		for _, id := range ids {
			loc, err := p.st.Lookup(id)
			if err != nil {
				continue
			}
			k := [2]uint64{binaryKey(loc.Pack), loc.FrameOff}
			groups[k] += int64(loc.Len)
			first[k] = loc
		}
		for k, wanted := range groups {
			loc := first[k]
			_, _, ulen, err := p.frameEntries(loc)
			if err != nil || ulen == 0 {
				return 0, err
			}
			if wanted*8 >= int64(ulen)*7 {
				est += int64(loc.FrameLen)
			} else {
				est += wanted * int64(loc.FrameLen) / int64(ulen)
			}
			est += 40 // record header, roughly
		}
	}
	return est, nil
}

// Measure is the exact size of the stream Send writes for pl: it encodes
// the stream (compressing what Send regroups) and throws it away. A
// rollout's plan uses it to say, to the byte, what each node will fetch.
func (p *Planner) Measure(ctx context.Context, pl *Plan) (int64, error) {
	enc, err := NewEncoder(io.Discard)
	if err != nil {
		return 0, err
	}
	if err := p.Send(ctx, enc, pl); err != nil {
		return 0, err
	}
	if err := enc.Close(); err != nil {
		return 0, err
	}
	return enc.Bytes(), nil
}

func binaryKey(id chunk.ID) uint64 {
	var k uint64
	for _, b := range id[:8] {
		k = k<<8 | uint64(b)
	}
	return k
}
