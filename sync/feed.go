package sync

import (
	"errors"
	"fmt"
	gosync "sync"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// Feed hands the blobs a fetch verifies to a checkout running beside it,
// so a node install decodes every frame once: the Sink decompresses a
// frame to check its blobs against their ids anyway, and the checkout
// writes those very bytes into the files instead of reading the frame
// back from the pack and decompressing it a second time (that was a
// third of a network install's CPU).
//
// A Feed is a snapshot.StoredSource. Get returns a blob from what the
// fetch handed over (verified: the Sink offers nothing before it checked
// it), else from the store when the store holds it, else it waits for
// more to arrive, for the next durable flush, or for the end of the fetch
// (Finish). A fetch that fails fails every Get still waiting.
//
// Memory is bounded: trees stay until Close (the checkout's walk reads
// them, some more than once, and they are small), a data frame stays
// until each of its blobs was read as often as the trees received name
// it (a file's content, once per place the directory holding it appears
// in the commit; at least once), and a data frame that would take the
// Feed past its bound is not kept (the checkout then reads those blobs
// from the store, decompressing as before). Nothing is dropped for a
// slow reader, and no fetch waits for one: a Feed never stalls the
// transfer.
type Feed struct {
	st  *store.Store
	max int64

	mu      gosync.Mutex
	cond    *gosync.Cond
	gen     uint64 // bumped on every change a waiting Get must look at
	blobs   map[chunk.ID]*feedBlob
	held    int64 // bytes of data frames kept
	done    bool
	err     error
	id      chunk.ID
	commit  *store.Commit
	ready   chan struct{} // closed by admit
	stats   FeedStats
	readyOK bool

	// The reads a checkout will make of each data blob, from the trees
	// received so far: need[id] for file contents, occ for how many
	// times a tree appears in the commit (trees not yet received wait
	// in occ with the count their parents gave them).
	need  map[chunk.ID]int
	occ   map[chunk.ID]int
	trees map[chunk.ID]*snapshot.Tree
}

type feedBlob struct {
	b     []byte
	fr    *feedFrame // nil for a tree
	reads int
}

// feedFrame is a kept data frame: its memory goes when each of its blobs
// was read as often as needed.
type feedFrame struct {
	ids  []chunk.ID
	left int // blobs still to be read (enough times)
	size int64
}

// FeedStats counts what a Feed did.
type FeedStats struct {
	// Hits: Gets served from what the fetch handed over; Stored: Gets
	// served by the store (blobs it held already, blobs read a second
	// time after their frame was let go, frames not kept).
	Hits   int64 `json:"hits"`
	Stored int64 `json:"stored"`
	// Kept and Dropped: data frames kept for the reader, and not kept
	// because the Feed was at its bound.
	Kept    int64 `json:"kept"`
	Dropped int64 `json:"dropped"`
}

// DefaultFeedBytes bounds the data frames a Feed keeps: at 4 MiB a frame,
// 32 frames of lead the fetch may have on the checkout.
const DefaultFeedBytes = 128 << 20

// NewFeed returns a Feed over st (the store the fetch writes into) that
// keeps at most maxBytes of data frames (<= 0: DefaultFeedBytes, or a
// quarter of the process's Go memory limit when GOMEMLIMIT sets one
// lower: a node told to live in 200 MiB that kept 128 MiB of frames, the
// store's frame cache and its buffers beside them, would be collecting
// garbage without pause near its limit).
func NewFeed(st *store.Store, maxBytes int64) *Feed {
	if maxBytes <= 0 {
		maxBytes = min(DefaultFeedBytes, store.MemoryShare(4))
	}
	f := &Feed{st: st, max: maxBytes, blobs: map[chunk.ID]*feedBlob{}, ready: make(chan struct{}),
		need: map[chunk.ID]int{}, occ: map[chunk.ID]int{}, trees: map[chunk.ID]*snapshot.Tree{}}
	f.cond = gosync.NewCond(&f.mu)
	return f
}

// Admitted is closed once the fetch has applied the trust policy to the
// commit and is about to move its objects (then Commit returns it), or
// when the fetch ends without moving any (Finish).
func (f *Feed) Admitted() <-chan struct{} { return f.ready }

// Commit returns the admitted commit and its id, or nil when the fetch
// ended before admitting one (the store already held it, or the fetch
// failed).
func (f *Feed) Commit() (chunk.ID, *store.Commit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.id, f.commit
}

// admit records commit id (c) as the one whose objects are coming.
func (f *Feed) admit(id chunk.ID, c *store.Commit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readyOK || f.done {
		return
	}
	f.id, f.commit, f.readyOK = id, c, true
	f.occ[c.Tree]++
	close(f.ready)
}

// Finish ends the fetch's part: err nil when every object of the commit
// is durable in the store. Gets still waiting then read the store, or
// fail with err.
func (f *Feed) Finish(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return
	}
	f.done, f.err = true, err
	if !f.readyOK {
		f.readyOK = true
		close(f.ready)
	}
	f.gen++
	f.cond.Broadcast()
}

// Close lets go of everything kept.
func (f *Feed) Close() {
	f.Finish(errors.New("feed closed"))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs, f.held = map[chunk.ID]*feedBlob{}, 0
}

// Stats returns the counts so far.
func (f *Feed) Stats() FeedStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// wake tells waiting Gets the store may hold more (a flush).
func (f *Feed) wake() {
	f.mu.Lock()
	f.gen++
	f.cond.Broadcast()
	f.mu.Unlock()
}

// offer hands over the blobs ents of a decoded frame raw, every one of
// them verified against its id, and the trees among them, decoded. owned
// says raw is the Feed's to keep; otherwise what is kept is copied. It
// reports whether raw is kept (the caller must then not reuse it).
func (f *Feed) offer(raw []byte, ents []FrameEntry, trees map[chunk.ID]*snapshot.Tree, owned bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return false
	}
	for id, t := range trees {
		f.tree(id, t)
	}
	// A frame with a tree in it is kept whatever the bound: the walk
	// would otherwise wait for the next flush to read its directories.
	if len(trees) == 0 && f.held+int64(len(raw)) > f.max {
		f.stats.Dropped++
		return false
	}
	if !owned {
		raw = append([]byte(nil), raw...)
	}
	fr := &feedFrame{size: int64(len(raw))}
	for _, e := range ents {
		if _, dup := f.blobs[e.ID]; dup {
			continue
		}
		b := raw[e.Off : e.Off+e.Len : e.Off+e.Len]
		if e.Type == store.TypeTree {
			f.blobs[e.ID] = &feedBlob{b: b}
			continue
		}
		f.blobs[e.ID] = &feedBlob{b: b, fr: fr}
		fr.ids = append(fr.ids, e.ID)
		fr.left++
	}
	if fr.left > 0 {
		f.held += fr.size
		f.stats.Kept++
	}
	f.gen++
	f.cond.Broadcast()
	return true
}

// tree counts the reads tree id (t) will cause; with f.mu held.
func (f *Feed) tree(id chunk.ID, t *snapshot.Tree) {
	if _, seen := f.trees[id]; seen {
		return
	}
	f.trees[id] = t
	if k := f.occ[id]; k > 0 {
		f.count(t, k)
	}
}

// count adds k appearances of tree t (and what is below it) to the reads
// expected; with f.mu held.
func (f *Feed) count(t *snapshot.Tree, k int) {
	for i := range t.Entries {
		e := &t.Entries[i]
		switch {
		case e.Kind == snapshot.KindDir:
			f.occ[e.Subtree] += k
			if sub := f.trees[e.Subtree]; sub != nil {
				f.count(sub, k)
			}
		case e.Kind == snapshot.KindFile && e.Link == "":
			// A hard link's later names are linked, not written.
			for _, x := range e.Content {
				if x.Hole() {
					continue
				}
				before := f.need[x.ID]
				f.need[x.ID] = before + k
				// A blob read enough times already keeps its frame
				// again for the reads now expected.
				if b := f.blobs[x.ID]; b != nil && b.fr != nil && b.reads >= max(before, 1) && b.reads < before+k {
					b.fr.left++
				}
			}
		}
	}
}

// take returns blob id if kept, counting the read; with f.mu held.
func (f *Feed) take(id chunk.ID) ([]byte, bool) {
	e, ok := f.blobs[id]
	if !ok {
		return nil, false
	}
	f.stats.Hits++
	if e.fr == nil {
		return e.b, true
	}
	e.reads++
	if e.reads == max(f.need[id], 1) {
		if e.fr.left--; e.fr.left == 0 {
			for _, x := range e.fr.ids {
				delete(f.blobs, x)
			}
			f.held -= e.fr.size
		}
	}
	return e.b, true
}

// Get returns blob id, verified (see Feed).
func (f *Feed) Get(id chunk.ID) ([]byte, error) {
	f.mu.Lock()
	for {
		if b, ok := f.take(id); ok {
			f.mu.Unlock()
			return b, nil
		}
		gen, done, ferr := f.gen, f.done, f.err
		f.mu.Unlock()
		b, err := f.st.GetStored(id)
		if err == nil || !errors.Is(err, store.ErrNotFound) {
			if err == nil {
				f.mu.Lock()
				f.stats.Stored++
				f.mu.Unlock()
			}
			return b, err
		}
		if done {
			if ferr != nil {
				return nil, fmt.Errorf("blob %s: the fetch failed: %w", id.Short(), ferr)
			}
			return nil, err
		}
		f.mu.Lock()
		for f.gen == gen {
			f.cond.Wait()
		}
	}
}

// GetStored is Get: what a Feed hands out was verified when it arrived.
func (f *Feed) GetStored(id chunk.ID) ([]byte, error) { return f.Get(id) }
