package sync_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// TestFeed checks a tree out beside the fetch of its commit, over a real
// socket into a real store, reading only through a Feed: the tree is
// exact whether the feed keeps every frame or none (then the store
// serves the blobs once flushed), with content read more than once
// still served by the feed, and a fetch that fails fails the checkout
// instead of leaving it waiting.
func TestFeed(t *testing.T) {
	tests := []struct {
		name    string
		max     int64 // the feed's bound
		flip    int64 // damage the stream at this offset (0: none)
		kept    bool  // every data frame kept: no read from the store
		dropped bool  // data frames over the bound dropped
	}{
		{"every frame kept", 0, 0, true, false},
		{"bound of one byte", 1, 0, false, true},
		{"fetch fails", 0, 5000, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t)
			// Content read more than once: a copied file, and one
			// directory twice (one tree, sent once, walked twice).
			lib, err := os.ReadFile(filepath.Join(f.src, "usr/lib/lib1.so"))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"usr/lib/copy.so", "srv/a/lib/x.so", "srv/b/lib/x.so"} {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(f.src, p)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(f.src, p), lib, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for _, d := range []string{"srv/a/lib", "srv/b/lib", "srv/a", "srv/b"} {
				if err := os.Chtimes(filepath.Join(f.src, d), time.Unix(1e9, 0), time.Unix(1e9, 0)); err != nil {
					t.Fatal(err)
				}
			}
			want := commit(t, f.srv, f.src, "img")
			f.counting.flip = tt.flip
			node := storetest.New(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			feed := simsync.NewFeed(node, tt.max)
			defer feed.Close()
			fetched := make(chan error, 1)
			go func() {
				_, err := simsync.FetchCommitFeed(ctx, node, remote(t, f.url, ""), nil, want, true, feed)
				feed.Finish(err)
				fetched <- err
			}()
			<-feed.Admitted()
			id, c := feed.Commit()
			if c == nil || id != want {
				t.Fatalf("admitted %s (%v); want %s", id.Short(), c, want.Short())
			}
			dst := filepath.Join(t.TempDir(), "co")
			_, _, cerr := snapshot.Checkout(ctx, feed, c.Tree, dst, snapshot.CheckoutOptions{NoSync: true})
			ferr := <-fetched
			st := feed.Stats()
			t.Logf("feed %+v", st)
			if tt.flip != 0 {
				var ce *chunk.CorruptError
				if ferr == nil || cerr == nil {
					t.Fatalf("damaged stream: fetch error %v, checkout error %v; want both to fail", ferr, cerr)
				}
				if !errors.As(cerr, &ce) && !errors.Is(cerr, simsync.ErrTruncated) {
					t.Errorf("checkout error %v; want the fetch's (a corrupt blob)", cerr)
				}
				if ok, _ := node.HasCommit(want); ok {
					t.Error("commit stored although its data was refused")
				}
				return
			}
			if ferr != nil || cerr != nil {
				t.Fatalf("fetch: %v; checkout: %v", ferr, cerr)
			}
			snapshottest.Equal(t, f.src, dst)
			if st.Hits == 0 && tt.kept {
				t.Error("no read served by the feed")
			}
			if tt.kept && (st.Stored != 0 || st.Dropped != 0) {
				t.Errorf("feed %+v; want every read from it, nothing dropped", st)
			}
			if tt.dropped && (st.Dropped == 0 || st.Stored == 0) {
				t.Errorf("feed %+v; want frames dropped at the bound and their blobs read from the store", st)
			}
		})
	}
}
