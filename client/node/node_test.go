package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/httppull"
)

// server is a sim server over a real socket: image img at v1 (tag v1)
// then v2 (tag v2), which changes two small files of a few MiB.
type server struct {
	st         *store.Store
	url        string
	v1, v2     chunk.ID
	ref1, ref2 string // v1 and v2 as directories
}

func newServer(t *testing.T) *server {
	t.Helper()
	s := &server{st: storetest.New(t)}
	src := filepath.Join(t.TempDir(), "src")
	files := map[string]int{
		"etc/motd":            300,
		"etc/ssh/sshd_config": 3000,
		"usr/bin/big":         2 << 20,
		"var/log/syslog":      2000,
		"var/lib/dpkg/status": 4000,
	}
	for i := range 30 {
		files[fmt.Sprintf("usr/lib/lib%d.so", i)] = 40000 + 1000*i
	}
	snapshottest.RandomFiles(t, src, 1, files)
	s.v1, s.ref1 = snap(t, s.st, src, "img")
	snapshottest.RandomFiles(t, src, 2, map[string]int{"etc/motd": 310, "var/lib/dpkg/status": 4100})
	s.v2, s.ref2 = snap(t, s.st, src, "img")
	for name, id := range map[string]chunk.ID{"v1": s.v1, "v2": s.v2} {
		if err := s.st.CreateTag(name, id); err != nil {
			t.Fatal(err)
		}
	}
	ts := httptest.NewServer(&simsync.Server{Store: s.st})
	t.Cleanup(ts.Close)
	s.url = ts.URL
	return s
}

// remote is a fresh client of the server.
func (s *server) remote(t *testing.T) *simsync.Remote {
	t.Helper()
	r, err := simsync.NewRemote(s.url, "")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// snap commits src as image and keeps a checkout of it, shown equal to
// src, as the reference for later comparisons.
func snap(t *testing.T, st *store.Store, src, image string) (chunk.ID, string) {
	t.Helper()
	id, _, err := client.Commit(t.Context(), st, src, client.CommitOptions{Image: image})
	if err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(t.TempDir(), "ref")
	if _, err := client.Checkout(t.Context(), st, id, ref, client.CheckoutOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	snapshottest.Equal(t, src, ref)
	return id, ref
}

// finishing is a real transport that records what the node did with it:
// deliveries, and the calls to Finish with what the target directory had
// checked out at that moment.
type finishing struct {
	simsync.Transport
	st  *store.Store
	dir string
	err error // what Finish returns

	delivered  atomic.Int64
	finished   int
	finishedAt []chunk.ID // LastCheckout(dir) at each Finish (zero: none)
}

var _ simsync.Transport = (*finishing)(nil)

func (f *finishing) Deliver(ctx context.Context, want chunk.ID, haves []chunk.ID, sink *simsync.Sink) (simsync.Delivery, error) {
	f.delivered.Add(1)
	return f.Transport.Deliver(ctx, want, haves, sink)
}

func (f *finishing) Finish(ctx context.Context) error {
	f.finished++
	var at chunk.ID
	if rec, err := client.LastCheckout(f.st, f.dir); err == nil {
		at = rec.Commit
	}
	f.finishedAt = append(f.finishedAt, at)
	if err := f.Transport.Finish(ctx); err != nil {
		return err
	}
	return f.err
}

func fsckClean(t *testing.T, st *store.Store) {
	t.Helper()
	rep, err := client.Fsck(st, true)
	if err != nil || len(rep.Problems) > 0 || len(rep.Broken) > 0 {
		t.Fatalf("fsck of the node's store: %v, problems %q, broken %q", err, rep.Problems, rep.Broken)
	}
}

// checkCommits checks that the node's store holds exactly the commits
// want, each shallow unless it is a first commit (it has all its
// history).
func checkCommits(t *testing.T, st *store.Store, want ...chunk.ID) {
	t.Helper()
	got, err := st.Commits()
	if err != nil {
		t.Fatal(err)
	}
	key := func(a, b chunk.ID) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(got, key)
	want = slices.SortedFunc(slices.Values(want), key)
	if !slices.Equal(got, want) {
		t.Errorf("node's commits %v; want %v", got, want)
	}
	for _, id := range want {
		c, err := st.Commit(id)
		if err != nil {
			t.Fatal(err)
		}
		if shallow := st.IsShallow(id); shallow != (len(c.Parents) > 0) {
			t.Errorf("commit %s with %d parents: shallow = %v; want %v", id.Short(), len(c.Parents), shallow, !shallow)
		}
	}
}

func checkBase(t *testing.T, st *store.Store, dir string, want ...chunk.ID) {
	t.Helper()
	if got := node.Base(st, dir); !slices.Equal(got, want) {
		t.Errorf("Base(%s) = %v; want %v", dir, got, want)
	}
}

// TestCheckout installs v1 on a node and updates it to v2, over the
// server's own stream and over the http transport: the update moves a
// small fraction of the install, writes only the two changed files, and
// leaves a clean, shallow store; Base follows the checkouts; a transport
// is finished after each checkout.
func TestCheckout(t *testing.T) {
	s := newServer(t)
	tests := []struct {
		name      string
		transport bool // wrap an httppull.Transport; false: nil (the server's stream)
	}{
		{"server stream", false},
		{"httppull", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := storetest.New(t)
			dir := filepath.Join(t.TempDir(), "root")
			r := s.remote(t)
			var tr *finishing
			o := node.CheckoutOptions{Store: st, Remote: r, Dir: dir, Checkout: client.CheckoutOptions{NoSync: true}}
			if tt.transport {
				tr = &finishing{Transport: &httppull.Transport{Remote: r}, st: st, dir: dir}
				o.Transport = tr
			}
			checkBase(t, st, dir)

			o.Ref = "v1"
			first, err := node.Checkout(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			if first.Commit != s.v1 {
				t.Errorf("commit %s; want v1 %s", first.Commit.Short(), s.v1.Short())
			}
			snapshottest.Equal(t, s.ref1, dir)
			checkBase(t, st, dir, s.v1)
			if first.Transfer.WireBytes < 3<<20 {
				t.Errorf("install moved %d bytes; want at least the 3 MiB of files", first.Transfer.WireBytes)
			}
			checkCommits(t, st, s.v1)
			// The install was written from the frames the fetch
			// decoded: each data blob read there once, none from the
			// store (which held nothing), no frame dropped.
			if f := first.Feed; f.Hits == 0 || f.Stored != 0 || f.Dropped != 0 {
				t.Errorf("install's feed: %+v; want every read a hit", f)
			}

			o.Ref = "v2"
			var fetched []chunk.ID
			o.Fetched = func(id chunk.ID, ps simsync.PullStats) {
				fetched = append(fetched, id)
				// The fetch is over, the checkout beside it is not:
				// the commit is here, the directory still v1 with v2
				// pending.
				if ok, err := st.HasCommit(id); err != nil || !ok {
					t.Errorf("Fetched(%s): the node's store lacks it (%v)", id.Short(), err)
				}
				checkBase(t, st, dir, s.v1, s.v2)
			}
			second, err := node.Checkout(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(fetched, []chunk.ID{s.v2}) {
				t.Errorf("Fetched called with %v; want [v2 %s]", fetched, s.v2.Short())
			}
			snapshottest.Equal(t, s.ref2, dir)
			checkBase(t, st, dir, s.v2)
			checkCommits(t, st, s.v1, s.v2)
			if second.Commit != s.v2 {
				t.Errorf("commit %s; want v2 %s", second.Commit.Short(), s.v2.Short())
			}
			if second.Transfer.WireBytes <= 0 || second.Transfer.WireBytes*50 > first.Transfer.WireBytes {
				t.Errorf("update moved %d bytes, install %d; want the update under 2%%", second.Transfer.WireBytes, first.Transfer.WireBytes)
			}
			if second.Written != 2 || second.Removed != 0 {
				t.Errorf("update: %+v; want 2 files written, none removed", second.CheckoutStats)
			}
			if tr != nil {
				if got := tr.delivered.Load(); got != 2 {
					t.Errorf("transport delivered %d times; want 2", got)
				}
				if want := []chunk.ID{s.v1, s.v2}; tr.finished != 2 || !slices.Equal(tr.finishedAt, want) {
					t.Errorf("Finish called %d times, with the directory at %v; want twice, after each checkout (%v)", tr.finished, tr.finishedAt, want)
				}
			}

			// Checking out what the node has moves nothing.
			o.Fetched = nil
			third, err := node.Checkout(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			if third.Transfer.WireBytes != 0 || third.Written != 0 {
				t.Errorf("checkout of v2 again: transfer %+v, %+v; want nothing moved or written", third.Transfer, third.CheckoutStats)
			}
			// Rolling back needs no transfer either: v1 is still here.
			o.Ref = "v1"
			back, err := node.Checkout(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			snapshottest.Equal(t, s.ref1, dir)
			if back.Transfer.WireBytes != 0 {
				t.Errorf("rollback to v1 moved %d bytes; want 0", back.Transfer.WireBytes)
			}
			fsckClean(t, st)
		})
	}
}

// TestFetch: Fetch brings one commit, shallow, and sets the ref it was
// asked for when that is an image or a tag; fetching again moves nothing.
func TestFetch(t *testing.T) {
	s := newServer(t)
	tests := []struct {
		ref       string
		want      func() chunk.ID
		wantTags  map[string]func() chunk.ID
		wantImage map[string]func() chunk.ID
	}{
		{"v1", func() chunk.ID { return s.v1 }, map[string]func() chunk.ID{"v1": func() chunk.ID { return s.v1 }}, nil},
		{"v2", func() chunk.ID { return s.v2 }, map[string]func() chunk.ID{"v2": func() chunk.ID { return s.v2 }}, nil},
		{"img", func() chunk.ID { return s.v2 }, nil, map[string]func() chunk.ID{"img": func() chunk.ID { return s.v2 }}},
		{"img~1", func() chunk.ID { return s.v1 }, nil, nil},
		{"v2^", func() chunk.ID { return s.v1 }, nil, nil},
		{s.v1.String(), func() chunk.ID { return s.v1 }, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			t.Parallel()
			st := storetest.New(t)
			r := s.remote(t)
			want := tt.want()
			id, ps, err := node.Fetch(t.Context(), st, r, nil, tt.ref, "")
			if err != nil {
				t.Fatal(err)
			}
			if id != want {
				t.Errorf("Fetch(%s) = %s; want %s", tt.ref, id.Short(), want.Short())
			}
			if ps.Commits > 1 || ps.NewBlobs == 0 || ps.WireBytes == 0 {
				t.Errorf("stats %+v; want one commit's objects", ps)
			}
			checkCommits(t, st, want)
			tags, err := st.Tags()
			if err != nil {
				t.Fatal(err)
			}
			if len(tags) != len(tt.wantTags) {
				t.Errorf("tags %v; want %d", tags, len(tt.wantTags))
			}
			for name, w := range tt.wantTags {
				if got, err := st.TagCommit(name); err != nil || got != w() {
					t.Errorf("tag %s = %s, %v; want %s", name, got.Short(), err, w().Short())
				}
			}
			ims, err := st.Images()
			if err != nil {
				t.Fatal(err)
			}
			if len(ims) != len(tt.wantImage) {
				t.Errorf("images %v; want %d", ims, len(tt.wantImage))
			}
			for name, w := range tt.wantImage {
				if got, err := st.ImageHead(name); err != nil || got != w() {
					t.Errorf("image %s = %s, %v; want %s", name, got.Short(), err, w().Short())
				}
			}
			fsckClean(t, st)
			// Again: nothing moves and the refs stay.
			id2, ps2, err := node.Fetch(t.Context(), st, r, nil, tt.ref, "")
			if err != nil {
				t.Fatal(err)
			}
			if id2 != want || ps2.WireBytes != 0 || ps2.NewBlobs != 0 {
				t.Errorf("second Fetch(%s) = %s, %+v; want %s and nothing moved", tt.ref, id2.Short(), ps2, want.Short())
			}
		})
	}
	t.Run("image follows the server", func(t *testing.T) {
		s := newServer(t)
		st := storetest.New(t)
		r := s.remote(t)
		if _, _, err := node.Fetch(t.Context(), st, r, nil, "img", ""); err != nil {
			t.Fatal(err)
		}
		// The server's image is reset to v1: so is the node's, at the
		// next fetch.
		if err := s.st.SetImage("img", s.v2, s.v1, "reset", "back"); err != nil {
			t.Fatal(err)
		}
		id, _, err := node.Fetch(t.Context(), st, r, nil, "img", "")
		if err != nil {
			t.Fatal(err)
		}
		if head, err := st.ImageHead("img"); err != nil || id != s.v1 || head != s.v1 {
			t.Errorf("Fetch(img) = %s, node's img = %s (%v); want %s", id.Short(), head.Short(), err, s.v1.Short())
		}
		fsckClean(t, st)
	})
	t.Run("unknown ref", func(t *testing.T) {
		st := storetest.New(t)
		if _, _, err := node.Fetch(t.Context(), st, s.remote(t), nil, "nope", ""); err == nil {
			t.Error("Fetch(nope): no error")
		}
		if commits, _ := st.Commits(); len(commits) != 0 {
			t.Errorf("%d commits after a failed fetch; want 0", len(commits))
		}
	})
}

// TestBase: no base for no directory or one never checked out; the
// commit of the last checkout otherwise, also for a checkout made
// without the server.
func TestBase(t *testing.T) {
	s := newServer(t)
	st := storetest.New(t)
	dir := filepath.Join(t.TempDir(), "root")
	checkBase(t, st, "")
	checkBase(t, st, dir)
	if _, err := node.Checkout(t.Context(), node.CheckoutOptions{Store: st, Remote: s.remote(t), Ref: "v2", Dir: dir,
		Checkout: client.CheckoutOptions{NoSync: true}}); err != nil {
		t.Fatal(err)
	}
	checkBase(t, st, dir, s.v2)
	checkBase(t, st, dir+"/", s.v2)
	checkBase(t, st, "")
	// A local checkout (offline rollback) moves the base too.
	if _, _, err := node.Fetch(t.Context(), st, s.remote(t), nil, "v1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Checkout(t.Context(), st, s.v1, dir, client.CheckoutOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	checkBase(t, st, dir, s.v1)
}

// TestCheckoutStoreInside: a node whose store is DIR/var/lib/sim checks
// out into DIR (forced: DIR holds the store): the store survives install
// and update, checks clean, and DIR is the image around it.
func TestCheckoutStoreInside(t *testing.T) {
	s := newServer(t)
	dir := filepath.Join(t.TempDir(), "root")
	sdir := filepath.Join(dir, "var/lib/sim")
	if err := store.Init(sdir); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(sdir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A checkout that destroyed the store leaves badger unable
		// to close: it would hang instead of failing.
		if _, err := os.Stat(filepath.Join(sdir, "index")); err != nil {
			t.Errorf("the node's store lost its index: not closing it")
			return
		}
		st.Close()
	})
	r := s.remote(t)
	tr := &finishing{Transport: &httppull.Transport{Remote: r}, st: st, dir: dir}
	o := node.CheckoutOptions{Store: st, Remote: r, Transport: tr, Dir: dir,
		Checkout: client.CheckoutOptions{Force: true, NoSync: true}}
	steps := []struct {
		ref  string
		id   chunk.ID
		want string
	}{
		{"v1", s.v1, s.ref1},
		{"v2", s.v2, s.ref2},
		{"v1", s.v1, s.ref1},
	}
	for i, step := range steps {
		o.Ref = step.ref
		res, err := node.Checkout(t.Context(), o)
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, step.ref, err)
		}
		if res.Commit != step.id {
			t.Errorf("step %d: commit %s; want %s", i, res.Commit.Short(), step.id.Short())
		}
		fsckClean(t, st)
		snapshottest.Equal(t, step.want, dir, snapshottest.IgnorePaths("var/lib/sim"))
		checkBase(t, st, dir, step.id)
		if tr.finished != i+1 || tr.finishedAt[i] != step.id {
			t.Errorf("step %d: Finish called %d times, last with the directory at %v; want %d, at %s", i, tr.finished, tr.finishedAt, i+1, step.id.Short())
		}
	}
}

// TestCheckoutAfterFailure: a node whose checkout failed midway (an
// image with a file where its store's parent directory is) has no zero
// base, and its next checkout, without --force, makes the directory the
// image around the intact store.
func TestCheckoutAfterFailure(t *testing.T) {
	s := newServer(t)
	bad := filepath.Join(t.TempDir(), "bad")
	snapshottest.RandomFiles(t, bad, 3, map[string]int{"etc/motd": 100, "var/lib": 10})
	if _, _, err := client.Commit(t.Context(), s.st, bad, client.CommitOptions{Image: "bad"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		first string // a good checkout before the bad one ("": none)
	}{
		{"first checkout fails", ""},
		{"update fails", "v2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "root")
			sdir := filepath.Join(dir, "var/lib/sim")
			if err := store.Init(sdir); err != nil {
				t.Fatal(err)
			}
			st, err := store.Open(sdir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := os.Stat(filepath.Join(sdir, "index")); err != nil {
					t.Errorf("the node's store lost its index: not closing it")
					return
				}
				st.Close()
			})
			o := node.CheckoutOptions{Store: st, Remote: s.remote(t), Dir: dir,
				Checkout: client.CheckoutOptions{Force: true, NoSync: true}}
			if tt.first != "" {
				o.Ref = tt.first
				if _, err := node.Checkout(t.Context(), o); err != nil {
					t.Fatal(err)
				}
			}
			o.Ref = "bad"
			if _, err := node.Checkout(t.Context(), o); err == nil {
				t.Fatal("checkout of an image with a file at /var/lib over the store: no error")
			}
			fsckClean(t, st)
			for _, id := range node.Base(st, dir) {
				if id.IsZero() {
					t.Errorf("Base after the failed checkout = %v: a zero commit", node.Base(st, dir))
				} else if ok, _ := st.HasCommit(id); !ok {
					t.Errorf("Base after the failed checkout names %s, which the store lacks", id.Short())
				}
			}
			o.Ref, o.Checkout.Force = "v1", false
			res, err := node.Checkout(t.Context(), o)
			if err != nil {
				t.Fatalf("checkout after the failed one: %v", err)
			}
			if res.Commit != s.v1 {
				t.Errorf("commit %s; want v1 %s", res.Commit.Short(), s.v1.Short())
			}
			snapshottest.Equal(t, s.ref1, dir, snapshottest.IgnorePaths("var/lib/sim"))
			checkBase(t, st, dir, s.v1)
			fsckClean(t, st)
		})
	}
}

// TestCheckoutFinish: a transport is finished once whatever happens, its
// error is the checkout's when all else went well, and never hides an
// earlier error.
func TestCheckoutFinish(t *testing.T) {
	s := newServer(t)
	errFinish := errors.New("finish failed")
	tests := []struct {
		name      string
		ref       string
		foreign   bool  // the target holds files no checkout wrote
		finishErr error // what Finish returns
		wantErr   error // nil: success; errAny: any error
		checked   bool  // the directory ends up checked out
	}{
		{"ok", "v1", false, nil, nil, true},
		{"Finish fails", "v1", false, errFinish, errFinish, true},
		{"Finish canceled", "v1", false, context.Canceled, nil, true},
		{"unknown ref", "nope", false, nil, errAny, false},
		{"unknown ref, Finish fails", "nope", false, errFinish, errAny, false},
		{"foreign directory", "v1", true, nil, client.ErrNotOurs, false},
		{"foreign directory, Finish fails", "v1", true, errFinish, client.ErrNotOurs, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := storetest.New(t)
			dir := filepath.Join(t.TempDir(), "root")
			if tt.foreign {
				snapshottest.RandomFiles(t, dir, 7, map[string]int{"home/user/thesis.tex": 100})
			}
			r := s.remote(t)
			tr := &finishing{Transport: &httppull.Transport{Remote: r}, st: st, dir: dir, err: tt.finishErr}
			_, err := node.Checkout(t.Context(), node.CheckoutOptions{Store: st, Remote: r, Transport: tr, Ref: tt.ref, Dir: dir,
				Checkout: client.CheckoutOptions{NoSync: true}})
			switch {
			case tt.wantErr == nil && err != nil:
				t.Errorf("err = %v; want none", err)
			case tt.wantErr == errAny && err == nil:
				t.Error("no error")
			case tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Errorf("err = %v; want %v", err, tt.wantErr)
			}
			if tt.wantErr != errFinish && errors.Is(err, errFinish) && tt.wantErr != nil {
				t.Errorf("err = %v: Finish's error hides the first one", err)
			}
			if tr.finished != 1 {
				t.Errorf("Finish called %d times; want once", tr.finished)
			}
			_, recErr := client.LastCheckout(st, dir)
			if checked := recErr == nil; checked != tt.checked {
				t.Errorf("checked out = %v; want %v", checked, tt.checked)
			}
			if tt.checked {
				snapshottest.Equal(t, s.ref1, dir)
				if tr.finishedAt[0] != s.v1 {
					t.Errorf("Finish came before the checkout (directory at %v)", tr.finishedAt)
				}
			}
		})
	}
}

// errAny stands for any error in TestCheckoutFinish.
var errAny = errors.New("any error")

// flipper damages one byte of every object stream of a real server.
type flipper struct {
	h   http.Handler
	on  atomic.Bool
	off int64
}

func (f *flipper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.on.Load() && (r.URL.Path == "/v1/fetch" || r.URL.Path == "/v1/objects") {
		w = &flipWriter{ResponseWriter: w, at: f.off}
	}
	f.h.ServeHTTP(w, r)
}

type flipWriter struct {
	http.ResponseWriter
	n, at int64
}

func (w *flipWriter) Write(p []byte) (int, error) {
	if w.n <= w.at && w.at < w.n+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[w.at-w.n] ^= 0x40
		p = q
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// TestCheckoutBesideFailedFetch: when the fetch the checkout runs beside
// fails (every stream damaged), the checkout fails with the fetch's
// error, the directory stays pending (not checked out), the node's store
// holds no commit and stays clean, and the pending commit is no delta
// base; the same checkout against a sound server then completes exactly.
func TestCheckoutBesideFailedFetch(t *testing.T) {
	s := newServer(t)
	fl := &flipper{h: &simsync.Server{Store: s.st}, off: 200 << 10}
	ts := httptest.NewServer(fl)
	t.Cleanup(ts.Close)
	r, err := simsync.NewRemote(ts.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	st := storetest.New(t)
	dir := filepath.Join(t.TempDir(), "root")
	o := node.CheckoutOptions{Store: st, Remote: r, Ref: "v1", Dir: dir, Checkout: client.CheckoutOptions{NoSync: true}}
	fl.on.Store(true)
	_, err = node.Checkout(t.Context(), o)
	var ce *chunk.CorruptError
	if !errors.As(err, &ce) {
		t.Fatalf("checkout beside a damaged stream: %v; want the fetch's corrupt-blob error", err)
	}
	rec, rerr := client.LastCheckout(st, dir)
	if rerr != nil || !rec.Commit.IsZero() || rec.Pending != s.v1 {
		t.Errorf("record after the failure: %+v (%v); want v1 pending, nothing checked out", rec, rerr)
	}
	checkCommits(t, st)
	checkBase(t, st, dir)
	fsckClean(t, st)

	fl.on.Store(false)
	res, err := node.Checkout(t.Context(), o)
	if err != nil {
		t.Fatalf("checkout once the server is sound: %v", err)
	}
	snapshottest.Equal(t, s.ref1, dir)
	checkBase(t, st, dir, s.v1)
	checkCommits(t, st, s.v1)
	if res.Feed.Hits == 0 {
		t.Errorf("feed %+v: the second checkout read nothing beside its fetch", res.Feed)
	}
	fsckClean(t, st)
}
