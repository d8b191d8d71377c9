// Package node is what a machine does with its image server: bring a
// commit into its own store (shallow: no history) through a transport,
// as a delta on what its directory has checked out, and lay it down. The
// CLI's `sim checkout --from`, the installer and the update agent call
// it; it knows no transport by name (the caller opens one).
package node

import (
	"context"
	"errors"
	"fmt"
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
	return fetch(ctx, st, r, tr, ref, dir, nil)
}

// fetch is Fetch handing what it verifies to feed (nil: none).
func fetch(ctx context.Context, st *store.Store, r *simsync.Remote, tr simsync.Transport, ref, dir string, feed *simsync.Feed) (chunk.ID, simsync.PullStats, error) {
	id, kind, err := r.Resolve(ctx, ref)
	if err != nil {
		return id, simsync.PullStats{}, err
	}
	start := time.Now()
	ps, err := simsync.FetchCommitFeed(ctx, st, r, tr, id, true, feed, Base(st, dir)...)
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
	// both commits are good bases when whole in the store. One that ran
	// beside its fetch may have stopped before the fetch stored its
	// commit: that one is no base.
	var out []chunk.ID
	for _, id := range []chunk.ID{rec.Commit, rec.Pending} {
		if ok, err := st.HasCommit(id); !id.IsZero() && err == nil && ok {
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
	// Fetched, if set, is called when the fetch has ended, before the
	// checkout's record names the commit: after the tree was written
	// when the checkout ran beside the fetch, else before it starts. It
	// is called from Checkout's goroutine.
	Fetched func(id chunk.ID, ps simsync.PullStats)
	// FeedBytes bounds the decoded frames kept for the checkout while it
	// runs beside the fetch (0: simsync.DefaultFeedBytes; < 0: no
	// pipelining: fetch everything, then check out from the store).
	FeedBytes int64
}

// Result is what Checkout did.
type Result struct {
	Commit   chunk.ID
	Transfer simsync.PullStats
	*snapshot.CheckoutStats
	// Feed counts what the checkout read from the fetch's own decoded
	// frames (zero when it did not run beside the fetch).
	Feed simsync.FeedStats
}

// Checkout makes Dir exactly the commit Ref names on the server,
// fetching only what the node's store lacks.
//
// The checkout runs beside the fetch: as soon as the fetch has admitted
// the commit (the trust policy, before any object moves), the tree is
// written from the blobs the fetch verifies, as they arrive, through a
// simsync.Feed; a frame is decompressed once, by the fetch, not a
// second time out of the pack. Every blob is still hashed against its id
// before the checkout sees it, and the checkout record names the commit
// only once the fetch made all of it durable in the store: a crash
// before leaves the directory Pending, as an interrupted checkout does.
func Checkout(ctx context.Context, o CheckoutOptions) (res *Result, err error) {
	if o.Transport != nil {
		defer func() {
			if ferr := o.Transport.Finish(ctx); err == nil && ferr != nil && !errors.Is(ferr, context.Canceled) {
				err = ferr
			}
		}()
	}
	if o.FeedBytes < 0 || o.Checkout.Source != nil {
		return checkoutAfter(ctx, o)
	}
	r := o.Remote
	if o.Checkout.RequireSignature && !r.RequireSignature {
		// The fetch's admission stands for the checkout's own check:
		// it must be as strict.
		r = r.Copy()
		r.RequireSignature = true
	}
	feed := simsync.NewFeed(o.Store, o.FeedBytes)
	defer feed.Close()
	type fetched struct {
		id  chunk.ID
		ps  simsync.PullStats
		err error
	}
	done := make(chan fetched, 1)
	go func() {
		id, ps, err := fetch(ctx, o.Store, r, o.Transport, o.Ref, o.Dir, feed)
		feed.Finish(err)
		done <- fetched{id, ps, err}
	}()
	<-feed.Admitted()
	id, c := feed.Commit()
	if c == nil {
		// Nothing to stream (the store holds the commit) or a failed
		// fetch: the checkout, if any, reads the store.
		f := <-done
		res = &Result{Commit: f.id, Transfer: f.ps}
		if f.err != nil {
			return res, f.err
		}
		if o.Fetched != nil {
			o.Fetched(f.id, f.ps)
		}
		res.CheckoutStats, err = client.Checkout(ctx, o.Store, f.id, o.Dir, o.Checkout)
		return res, err
	}
	res = &Result{Commit: id}
	var f *fetched
	wait := func() fetched {
		if f == nil {
			x := <-done
			f = &x
			res.Commit, res.Transfer = x.id, x.ps
		}
		return *f
	}
	copts := o.Checkout
	verify := copts.Verify
	if verify == nil {
		verify = func(id chunk.ID) error { _, err := o.Store.CheckSigned(id, copts.RequireSignature); return err }
	}
	// The fetch admitted the commit under the store's policy and
	// RequireSignature before streaming; the caller's own check runs
	// again once the signatures are stored beside the commit.
	copts.Verify = func(chunk.ID) error { return nil }
	copts.Source, copts.Commit = feed, c
	copts.Complete = func() error {
		x := wait()
		if x.err != nil {
			return x.err
		}
		if o.Fetched != nil {
			o.Fetched(x.id, x.ps)
		}
		if err := verify(x.id); err != nil {
			return fmt.Errorf("refusing to check out: %w", err)
		}
		return nil
	}
	res.CheckoutStats, err = client.Checkout(ctx, o.Store, id, o.Dir, copts)
	x := wait()
	res.Feed = feed.Stats()
	if x.err != nil {
		// The fetch's failure is the cause; the checkout's is its echo.
		return res, x.err
	}
	return res, err
}

// checkoutAfter fetches everything, then checks out from the store.
func checkoutAfter(ctx context.Context, o CheckoutOptions) (*Result, error) {
	id, ps, err := Fetch(ctx, o.Store, o.Remote, o.Transport, o.Ref, o.Dir)
	res := &Result{Commit: id, Transfer: ps}
	if err != nil {
		return res, err
	}
	if o.Fetched != nil {
		o.Fetched(id, ps)
	}
	res.CheckoutStats, err = client.Checkout(ctx, o.Store, id, o.Dir, o.Checkout)
	return res, err
}
