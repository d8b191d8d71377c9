package rollout

import (
	"context"
	"fmt"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// Plan is `sim rollout plan`: what a rollout of a commit would cost each
// node and the server, before anything is sent.
type Plan struct {
	Commit string               `json:"commit"`
	Image  string               `json:"image,omitempty"`
	Nodes  map[string]*NodePlan `json:"nodes"`
	// Total is what the server would send, per transport: http, every
	// node its own stream; bittorrent and multicast, each distinct delta
	// about once (the nodes share it).
	Total map[string]int64 `json:"total"`
}

// NodePlan is one node in a Plan.
type NodePlan struct {
	// Current is the image commit the node last reported ("" unknown:
	// then it would fetch the whole image).
	Current string `json:"current"`
	// Bytes is exactly what the server's stream to it would weigh (the
	// node's reported bytes after the update; sync.Planner.Measure).
	Bytes          int64  `json:"bytes"`
	Added          int    `json:"added"`
	Modified       int    `json:"modified"`
	Removed        int    `json:"removed"`
	RebootRequired bool   `json:"reboot_required"`
	Error          string `json:"error,omitempty"`
}

// MakePlan plans the update of nodes (name → the image commit each is on,
// "" unknown) to ref in st, through the planner pl. Nodes on the same
// commit share the work.
func MakePlan(ctx context.Context, st *store.Store, pl *simsync.Planner, ref string, nodes map[string]string) (*Plan, error) {
	want, err := st.Resolve(ref)
	if err != nil {
		return nil, err
	}
	c, err := st.Commit(want)
	if err != nil {
		return nil, err
	}
	p := &Plan{Commit: want.String(), Image: c.Image, Nodes: map[string]*NodePlan{}, Total: map[string]int64{}}
	type pair struct {
		bytes int64
		diff  *node.DiffReply
		err   error
	}
	pairs := map[chunk.ID]*pair{}
	for name, cur := range nodes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var have chunk.ID
		np := &NodePlan{Current: cur}
		if cur != "" {
			id, err := chunk.Parse(cur)
			if err == nil {
				if ok, _ := st.HasCommit(id); ok {
					have = id
				} else {
					np.Error = fmt.Sprintf("its commit %s is not in this store: it would fetch the whole image", id.Short())
				}
			}
		}
		pr := pairs[have]
		if pr == nil {
			pr = &pair{}
			var haves []chunk.ID
			if !have.IsZero() {
				haves = []chunk.ID{have}
			}
			if have == want {
				pr.diff = &node.DiffReply{}
			} else if plan, err := pl.Plan(want, haves); err != nil {
				pr.err = err
			} else if pr.bytes, err = pl.Measure(ctx, plan); err != nil {
				pr.err = err
			} else {
				pr.diff, pr.err = node.ImageDiff(st, have, want)
			}
			pairs[have] = pr
			if pr.err == nil {
				p.Total["bittorrent"] += pr.bytes
				p.Total["multicast"] += pr.bytes
			}
		}
		if pr.err != nil {
			np.Error = pr.err.Error()
		} else {
			np.Bytes = pr.bytes
			np.Added, np.Modified, np.Removed, np.RebootRequired = pr.diff.Added, pr.diff.Modified, pr.diff.Removed, pr.diff.RebootRequired
			p.Total["http"] += pr.bytes
		}
		p.Nodes[name] = np
	}
	return p, nil
}
