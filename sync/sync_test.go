package sync_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

func commit(t testing.TB, st *store.Store, src, image string) chunk.ID {
	t.Helper()
	id, _, err := client.Commit(context.Background(), st, src, client.CommitOptions{Image: image})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

type fixture struct {
	srv      *store.Store
	src      string
	v1, v2   chunk.ID
	url      string
	counting *countingHandler
}

type countingHandler struct {
	h     http.Handler
	mu    gosync.Mutex
	bytes int64
	reqs  int
	// cut, when > 0, truncates the next object stream after that many bytes.
	cut int64
	// flip, when set, flips one byte of every object stream at that offset.
	flip int64
	// paths counts requests by method and first two path elements
	// ("GET /v1/commits").
	paths map[string]int
}

func (c *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.reqs++
	if c.paths == nil {
		c.paths = map[string]int{}
	}
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	key := r.Method + " /" + strings.Join(parts[:min(2, len(parts))], "/")
	if strings.HasSuffix(r.URL.Path, "/signatures") {
		key += "/signatures"
	}
	c.paths[key]++
	var cut, flip int64
	if r.URL.Path == "/v1/fetch" || r.URL.Path == "/v1/objects" {
		cut, flip = c.cut, c.flip
		c.cut = 0
	}
	c.mu.Unlock()
	cw := &cutWriter{ResponseWriter: w, cut: cut, flip: flip}
	c.h.ServeHTTP(cw, r)
	c.mu.Lock()
	c.bytes += cw.n
	c.mu.Unlock()
}

type cutWriter struct {
	http.ResponseWriter
	n, cut, flip int64
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if w.cut > 0 && w.n+int64(len(p)) > w.cut {
		p = p[:w.cut-w.n]
		n, _ := w.ResponseWriter.Write(p)
		w.n += int64(n)
		return n, errors.New("cut")
	}
	if w.flip > 0 && w.n <= w.flip && w.flip < w.n+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[w.flip-w.n] ^= 0x40
		p = q
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func setup(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{srv: storetest.New(t), src: filepath.Join(t.TempDir(), "src")}
	files := map[string]int{"etc/motd": 300, "etc/ssh/sshd_config": 3000}
	for i := 0; i < 40; i++ {
		files[fmt.Sprintf("usr/lib/lib%d.so", i)] = 50000 + i*1000
	}
	files["usr/bin/big"] = 3 << 20
	snapshottest.RandomFiles(t, f.src, 1, files)
	f.v1 = commit(t, f.srv, f.src, "img")
	if err := f.srv.CreateTag("v1", f.v1); err != nil {
		t.Fatal(err)
	}
	snapshottest.RandomFiles(t, f.src, 2, map[string]int{"etc/motd": 310, "etc/ssh/sshd_config": 3010})
	f.v2 = commit(t, f.srv, f.src, "img")
	f.counting = &countingHandler{h: &simsync.Server{Store: f.srv, WriteTokens: []string{"secret"}}}
	ts := httptest.NewServer(f.counting)
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

func remote(t testing.TB, url, token string) *simsync.Remote {
	r, err := simsync.NewRemote(url, token)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func checkoutEqual(t *testing.T, st *store.Store, id chunk.ID, want string) {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "co")
	if _, err := client.Checkout(context.Background(), st, id, dst, client.CheckoutOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	snapshottest.Equal(t, want, dst)
}

// TestFetchAndDelta installs v1 from scratch over a real socket, then
// updates to v2: the update moves only the two changed files and the
// trees above them.
func TestFetchAndDelta(t *testing.T) {
	f := setup(t)
	node := storetest.New(t)
	r := remote(t, f.url, "")
	ps, err := simsync.FetchCommit(context.Background(), node, r, nil, f.v1, true)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Rounds != 1 || ps.WireBytes < 5<<20 {
		t.Errorf("install: %+v", ps)
	}
	ps, err = simsync.FetchCommit(context.Background(), node, r, nil, f.v2, true, f.v1)
	if err != nil {
		t.Fatal(err)
	}
	// Two new files (~3.3 kB of random data) and 3 trees as deltas.
	if ps.NewBlobs != 5 || ps.WireBytes > 6000 {
		t.Errorf("delta v1→v2: %+v; want 5 new blobs in under 6 kB", ps)
	}
	checkoutEqual(t, node, f.v2, f.src)
	if !node.IsShallow(f.v2) {
		t.Error("a node's commit should be shallow")
	}
	rep, err := client.Fsck(node, true)
	if err != nil {
		t.Fatalf("fsck of the node store: %v %+v", err, rep)
	}
	// A full pull later brings the history: the commit is shallow no more.
	if _, err := simsync.Pull(context.Background(), node, r, nil, []string{"img"}); err != nil {
		t.Fatal(err)
	}
	if node.IsShallow(f.v2) {
		t.Error("still shallow after its history was pulled")
	}
	if rep, err := client.Fsck(node, true); err != nil || rep.Commits != 2 {
		t.Fatalf("fsck after the full pull: %v %+v", err, rep)
	}
}

// TestReadToken: a server with --read-token refuses anonymous reads.
func TestReadToken(t *testing.T) {
	f := setup(t)
	ts := httptest.NewServer(&simsync.Server{Store: f.srv, WriteTokens: []string{"secret"}, ReadTokens: []string{"secret"}})
	defer ts.Close()
	if _, err := remote(t, ts.URL, "").Refs(context.Background()); err == nil {
		t.Error("anonymous read accepted")
	}
	if _, err := remote(t, ts.URL, "secret").Refs(context.Background()); err != nil {
		t.Errorf("read with the token: %v", err)
	}
}

// TestResume cuts the first stream short: what arrived is kept and only
// the rest is fetched.
func TestResume(t *testing.T) {
	f := setup(t)
	node := storetest.New(t)
	f.counting.cut = 5 << 20 // the first 4 MiB frame arrives whole, the second does not
	ps, err := simsync.FetchCommit(context.Background(), node, remote(t, f.url, ""), nil, f.v2, true)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Rounds < 2 {
		t.Fatalf("no second round after a cut: %+v", ps)
	}
	if ps.WireBytes > 8<<20 {
		t.Errorf("resume re-sent too much: %+v", ps)
	}
	checkoutEqual(t, node, f.v2, f.src)
}

// TestCorruptServer: a damaged pack on the server, or bytes damaged on the
// way, are detected by the node and never stored.
func TestCorruptServer(t *testing.T) {
	f := setup(t)
	f.counting.flip = 5000 // inside the first frame of the stream
	node := storetest.New(t)
	_, err := simsync.FetchCommit(context.Background(), node, remote(t, f.url, ""), nil, f.v1, true)
	if err == nil {
		t.Fatalf("a corrupted stream was accepted (%d requests)", f.counting.reqs)
	}
	var ce *chunk.CorruptError
	if !errors.As(err, &ce) && !errors.Is(err, simsync.ErrTruncated) {
		t.Logf("error: %v", err)
	}
	if rep, err := client.Fsck(node, true); err != nil {
		t.Fatalf("node store damaged after refusing bad data: %v %+v", err, rep)
	}
	if ok, _ := node.HasCommit(f.v1); ok {
		t.Error("commit stored although its data was refused")
	}
}

// TestPullFetchesEachCommitOnce: pulling a history asks for each commit
// once (it used to fetch every commit twice: walking the history, then
// again to fetch its objects), and the objects of each commit in one
// stream.
func TestPullFetchesEachCommitOnce(t *testing.T) {
	f := setup(t)
	snapshottest.RandomFiles(t, f.src, 3, map[string]int{"etc/motd": 320})
	commit(t, f.srv, f.src, "img") // v3: a history of three
	local := storetest.New(t)
	f.counting.mu.Lock()
	f.counting.paths = nil
	f.counting.mu.Unlock()
	ps, err := simsync.Pull(context.Background(), local, remote(t, f.url, ""), nil, []string{"img"})
	if err != nil {
		t.Fatal(err)
	}
	f.counting.mu.Lock()
	defer f.counting.mu.Unlock()
	if got := f.counting.paths["GET /v1/commits"]; got != 3 || ps.Commits != 3 {
		t.Errorf("pulled %d commits with %d commit requests, want 3 and 3 (%v)", ps.Commits, got, f.counting.paths)
	}
	if got := f.counting.paths["GET /v1/fetch"]; got != 3 {
		t.Errorf("%d fetch streams for 3 commits (%v)", got, f.counting.paths)
	}
	if got := f.counting.paths["GET /v1/commits/signatures"]; got != 3 {
		t.Errorf("%d signature requests for 3 commits, want 3 (%v)", got, f.counting.paths)
	}
}

// TestPush: a push without the token is refused; with it only missing
// objects travel and the ref moves.
func TestPush(t *testing.T) {
	f := setup(t)
	local := storetest.New(t)
	if _, err := simsync.Pull(context.Background(), local, remote(t, f.url, ""), nil, nil); err != nil {
		t.Fatal(err)
	}
	snapshottest.RandomFiles(t, f.src, 3, map[string]int{"etc/new": 1000})
	v3 := commit(t, local, f.src, "img")
	if _, err := simsync.Push(context.Background(), local, remote(t, f.url, ""), []string{"img"}, false); err == nil {
		t.Fatal("push without a token was accepted")
	}
	if _, err := simsync.Push(context.Background(), local, remote(t, f.url, "wrong"), []string{"img"}, false); err == nil {
		t.Fatal("push with a wrong token was accepted")
	}
	ps, err := simsync.Push(context.Background(), local, remote(t, f.url, "secret"), []string{"img"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Commits != 1 || ps.Objects != 3 { // etc/new, etc tree, root tree
		t.Errorf("push: %+v; want 1 commit and 3 objects", ps)
	}
	if h, _ := f.srv.ImageHead("img"); h != v3 {
		t.Errorf("server head %s, want %s", h.Short(), v3.Short())
	}
	checkoutEqual(t, f.srv, v3, f.src)
}

// TestCapture commits a directory straight into the server; a second
// capture after one edit uploads only that file and its trees.
func TestCapture(t *testing.T) {
	f := setup(t)
	r := remote(t, f.url, "secret")
	capture := func() (*simsync.Capture, chunk.ID) {
		cp := simsync.NewCapture(context.Background(), r)
		res, err := snapshot.Commit(context.Background(), cp, chunk.DefaultParams, f.src, snapshot.CommitOptions{})
		if err == nil {
			err = cp.Flush()
		}
		if err != nil {
			t.Fatal(err)
		}
		id, err := simsync.CommitRemote(context.Background(), r, "golden", &store.Commit{Tree: res.Root, Message: "capture"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cp, id
	}
	cp, _ := capture()
	if cp.Uploaded != 0 { // the server already has this exact tree as img
		t.Errorf("first capture uploaded %d blobs of a tree the server has", cp.Uploaded)
	}
	snapshottest.RandomFiles(t, f.src, 4, map[string]int{"usr/lib/lib7.so": 20000})
	cp, id := capture()
	if cp.Uploaded != 4 { // the file, usr/lib, usr, root
		t.Errorf("capture after one edit uploaded %d blobs, want 4", cp.Uploaded)
	}
	checkoutEqual(t, f.srv, id, f.src)
}

// TestMissingObjectsSince: walking the target beside the node's current
// tree finds exactly what the whole walk finds, for changed files deep
// down, a new directory and a removed one, while skipping what is shared.
func TestMissingObjectsSince(t *testing.T) {
	f := setup(t)
	// v3: v2 with a new directory, a changed library, and etc/ssh gone.
	snapshottest.RandomFiles(t, f.src, 3, map[string]int{"opt/new/a": 7000, "opt/new/deeper/b": 9000, "usr/lib/lib7.so": 57000})
	if err := os.RemoveAll(filepath.Join(f.src, "etc/ssh")); err != nil {
		t.Fatal(err)
	}
	v3 := commit(t, f.srv, f.src, "img")
	node := storetest.New(t)
	r := remote(t, f.url, "")
	if _, err := simsync.FetchCommit(context.Background(), node, r, nil, f.v1, true); err != nil {
		t.Fatal(err)
	}
	tree := func(st *store.Store, id chunk.ID) chunk.ID {
		c, err := st.Commit(id)
		if err != nil {
			t.Fatal(err)
		}
		return c.Tree
	}
	base := tree(node, f.v1)
	for _, to := range []chunk.ID{f.v2, v3} {
		root := tree(f.srv, to)
		whole, err := simsync.MissingObjects(node, root, 0)
		if err != nil {
			t.Fatal(err)
		}
		since, err := simsync.MissingObjectsSince(node, root, base)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(whole, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
		slices.SortFunc(since, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
		if len(whole) == 0 || !slices.Equal(whole, since) {
			t.Errorf("%s: MissingObjectsSince found %d objects, MissingObjects %d (want the same, and some)", to.Short(), len(since), len(whole))
		}
	}
	// Once v3 is fetched (as a delta on v1), nothing is missing either way.
	if _, err := simsync.FetchCommit(context.Background(), node, r, nil, v3, true, f.v1); err != nil {
		t.Fatal(err)
	}
	if m, err := simsync.MissingObjectsSince(node, tree(node, v3), base); err != nil || len(m) != 0 {
		t.Errorf("after the fetch: %d missing, %v", len(m), err)
	}
	checkoutEqual(t, node, v3, f.src)
}
