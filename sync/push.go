package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	gosync "sync"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// PushStats counts a push.
type PushStats struct {
	Commits   int   `json:"commits"`
	Objects   int   `json:"objects"`    // objects the server lacked and got
	WireBytes int64 `json:"wire_bytes"` // stream bytes sent
}

// Push sends refs (images or tags of local) to r with whatever history
// and objects r lacks, then moves r's refs. An image only moves forward:
// r's head must be an ancestor of local's, unless force.
func Push(ctx context.Context, local *store.Store, r *Remote, refs []string, force bool) (PushStats, error) {
	var ps PushStats
	rr, err := r.Refs(ctx)
	if err != nil {
		return ps, err
	}
	var req RefsRequest
	sentCommit := map[chunk.ID]bool{}
	for _, name := range refs {
		kind, id := "image", chunk.ID{}
		if h, err := local.ImageHead(name); err == nil {
			id = h
		} else if t, err := local.TagCommit(name); err == nil {
			kind, id = "tag", t
		} else {
			return ps, fmt.Errorf("no image or tag %q here", name)
		}
		// The commits r lacks, newest first.
		var chain []chunk.ID
		for cur := id; !cur.IsZero(); {
			has, err := r.Have(ctx, []chunk.ID{cur})
			if err != nil {
				return ps, err
			}
			if has[0] || sentCommit[cur] {
				break
			}
			chain = append(chain, cur)
			c, err := local.Commit(cur)
			if err != nil {
				return ps, err
			}
			if len(c.Parents) == 0 || local.IsShallow(cur) {
				break
			}
			cur = c.Parents[0]
		}
		old := rr.Images[name]
		if kind == "image" && !old.IsZero() && old != id && !force {
			if !isAncestor(local, old, id) {
				return ps, fmt.Errorf("image %s: the server's head %s is not in the history of %s: pull first, or push --force", name, old.Short(), id.Short())
			}
		}
		for i := len(chain) - 1; i >= 0; i-- {
			n, sent, err := pushObjects(ctx, local, r, chain[i])
			ps.Objects += n
			ps.WireBytes += sent
			if err != nil {
				return ps, err
			}
			raw, err := local.CommitRaw(chain[i])
			if err != nil {
				return ps, err
			}
			req.Commits = append(req.Commits, json.RawMessage(raw))
			sentCommit[chain[i]] = true
			ps.Commits++
		}
		req.Updates = append(req.Updates, RefUpdate{Kind: kind, Name: name, Old: old, New: id})
		// The signatures travel with the commits, and with the head
		// even when the server has it (it may have been signed since).
		sigs, err := pushSignatures(local, append(chain, id))
		if err != nil {
			return ps, err
		}
		req.Signatures = append(req.Signatures, sigs...)
	}
	return ps, r.UpdateRefs(ctx, req)
}

func isAncestor(st *store.Store, anc, id chunk.ID) bool {
	for cur := id; !cur.IsZero(); {
		if cur == anc {
			return true
		}
		c, err := st.Commit(cur)
		if err != nil || len(c.Parents) == 0 {
			return false
		}
		cur = c.Parents[0]
	}
	return false
}

// pushObjects sends the objects of commit id's tree that r lacks.
func pushObjects(ctx context.Context, local *store.Store, r *Remote, id chunk.ID) (int, int64, error) {
	c, err := local.Commit(id)
	if err != nil {
		return 0, 0, err
	}
	var ids []chunk.ID
	err = (&snapshot.Reach{Src: local,
		Tree:   func(id chunk.ID, _ string, _ *snapshot.Tree, err error) error { ids = append(ids, id); return err },
		Chunks: func(_ chunk.ID, cs []chunk.ID) error { ids = append(ids, cs...); return nil },
	}).Walk(c.Tree)
	if err != nil {
		return 0, 0, err
	}
	has, err := r.Have(ctx, ids)
	if err != nil {
		return 0, 0, err
	}
	var missing []chunk.ID
	for i, h := range has {
		if !h {
			missing = append(missing, ids[i])
		}
	}
	if len(missing) == 0 {
		return 0, 0, nil
	}
	pl := NewPlanner(local)
	_, sent, err := r.Push(ctx, func(enc *Encoder) error { return pl.SendObjects(ctx, enc, missing) })
	return len(missing), sent, err
}

// Capture is a snapshot.Saver that stores into a remote server: it asks
// the server which blobs it has, a batch at a time, and uploads only the
// others. It is how a golden client is captured without a local copy.
type Capture struct {
	r *Remote
	// Uploaded counts what was sent.
	Uploaded, Offered int64
	WireBytes         int64

	mu    gosync.Mutex
	seen  map[chunk.ID]bool
	batch []FrameEntry
	data  [][]byte
	size  int
	err   error
	ctx   context.Context
}

// NewCapture uploads to r.
func NewCapture(ctx context.Context, r *Remote) *Capture {
	return &Capture{r: r, seen: map[chunk.ID]bool{}, ctx: ctx}
}

// captureBatch bounds memory: blobs wait here until their have-query.
const captureBatch = 16 << 20

// Put implements snapshot.Saver.
func (c *Capture) Put(t store.Type, id chunk.ID, data []byte) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return false, c.err
	}
	if c.seen[id] {
		return false, nil
	}
	c.seen[id] = true
	c.Offered++
	c.batch = append(c.batch, FrameEntry{Type: t, ID: id})
	c.data = append(c.data, append([]byte(nil), data...))
	c.size += len(data)
	if c.size >= captureBatch || len(c.batch) >= 50000 {
		c.err = c.flushLocked()
	}
	return true, c.err
}

func (c *Capture) flushLocked() error {
	if len(c.batch) == 0 {
		return nil
	}
	ids := make([]chunk.ID, len(c.batch))
	for i, b := range c.batch {
		ids[i] = b.ID
	}
	has, err := c.r.Have(c.ctx, ids)
	if err != nil {
		return err
	}
	var ents []FrameEntry
	var data [][]byte
	for i, h := range has {
		if !h {
			ents = append(ents, c.batch[i])
			data = append(data, c.data[i])
		}
	}
	c.batch, c.data, c.size = nil, nil, 0
	if len(ents) == 0 {
		return nil
	}
	_, sent, err := c.r.Push(c.ctx, func(enc *Encoder) error {
		for i := 0; i < len(ents); {
			j, sz := i, 0
			for j < len(ents) && sz < frameBatch {
				sz += len(data[j])
				j++
			}
			if err := enc.CompressFrame(ents[i:j], data[i:j]); err != nil {
				return err
			}
			i = j
		}
		return nil
	})
	c.Uploaded += int64(len(ents))
	c.WireBytes += sent
	return err
}

// Flush uploads what is still waiting.
func (c *Capture) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.err = c.flushLocked()
	return c.err
}

// CommitRemote records a captured tree as the new head of image on r,
// signed with key when it is not nil.
func CommitRemote(ctx context.Context, r *Remote, image string, c *store.Commit, key *sign.PrivateKey) (chunk.ID, error) {
	rr, err := r.Refs(ctx)
	if err != nil {
		return chunk.ID{}, err
	}
	old := rr.Images[image]
	c.Parents = nil
	if !old.IsZero() {
		c.Parents = []chunk.ID{old}
	}
	c.Image = image
	b, id := c.Encode()
	req := RefsRequest{Commits: []json.RawMessage{b}, Updates: []RefUpdate{{Kind: "image", Name: image, Old: old, New: id}}}
	if key != nil {
		req.Signatures = []CommitSignature{{Commit: id, Signature: key.Sign(b)}}
	}
	err = r.UpdateRefs(ctx, req)
	if err != nil && errors.Is(err, ErrRemoteNotFound) {
		return id, fmt.Errorf("server rejected the commit: %w", err)
	}
	return id, err
}
