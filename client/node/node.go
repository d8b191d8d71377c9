// Package node is what a machine does with its image server: bring a
// commit into its own store (shallow: no history) through a transport,
// as a delta on what its directory has checked out, and lay it down. The
// CLI's `sim checkout --from`, the installer and the update agent call
// it; it knows no transport by name (the caller opens one).
package node

import (
	"context"
	"errors"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// Fetch resolves ref on the server r and brings that commit, with every
// object of its tree, into the node's store st: shallow, through tr (nil:
// the server's own stream), as a delta on what dir has checked out (""
// for none) and on what st holds. A ref that names an image or tag is
// also set in st, so `sim checkout REF` works offline afterwards.
func Fetch(ctx context.Context, st *store.Store, r *simsync.Remote, tr simsync.Transport, ref, dir string) (chunk.ID, simsync.PullStats, error) {
	id, kind, err := r.Resolve(ctx, ref)
	if err != nil {
		return id, simsync.PullStats{}, err
	}
	start := time.Now()
	ps, err := simsync.FetchCommit(ctx, st, r, tr, id, true, Base(st, dir)...)
	ps.Seconds = time.Since(start).Seconds()
	if err != nil {
		return id, ps, err
	}
	if kind != "commit" {
		err = simsync.SetLocalRef(st, kind, ref, id, "fetch", "fetched from "+r.URL)
	}
	return id, ps, err
}

// Base is what dir has checked out from st: the best bases for a delta
// (none when dir is "" or was never checked out).
func Base(st *store.Store, dir string) []chunk.ID {
	if dir == "" {
		return nil
	}
	rec, err := client.LastCheckout(st, dir)
	if err != nil {
		return nil
	}
	// A checkout that did not finish left the directory partly Pending:
	// both commits are whole in the store, both good bases.
	var out []chunk.ID
	for _, id := range []chunk.ID{rec.Commit, rec.Pending} {
		if !id.IsZero() {
			out = append(out, id)
		}
	}
	return out
}

// CheckoutOptions drive Checkout.
type CheckoutOptions struct {
	Store  *store.Store
	Remote *simsync.Remote
	// Transport carries the objects (nil: the server's stream). Checkout
	// calls its Finish after the checkout (a BitTorrent node seeds while
	// the tree is written and for its --seed-time after).
	Transport simsync.Transport
	Ref, Dir  string
	Checkout  client.CheckoutOptions
	// Fetched, if set, is called between the fetch and the checkout.
	Fetched func(id chunk.ID, ps simsync.PullStats)
}

// Result is what Checkout did.
type Result struct {
	Commit   chunk.ID
	Transfer simsync.PullStats
	*snapshot.CheckoutStats
}

// Checkout makes Dir exactly the commit Ref names on the server,
// fetching only what the node's store lacks.
func Checkout(ctx context.Context, o CheckoutOptions) (res *Result, err error) {
	if o.Transport != nil {
		defer func() {
			if ferr := o.Transport.Finish(ctx); err == nil && ferr != nil && !errors.Is(ferr, context.Canceled) {
				err = ferr
			}
		}()
	}
	id, ps, err := Fetch(ctx, o.Store, o.Remote, o.Transport, o.Ref, o.Dir)
	res = &Result{Commit: id, Transfer: ps}
	if err != nil {
		return res, err
	}
	if o.Fetched != nil {
		o.Fetched(id, ps)
	}
	res.CheckoutStats, err = client.Checkout(ctx, o.Store, id, o.Dir, o.Checkout)
	return res, err
}
