package bt_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	alog "github.com/anacrolix/log"
	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/bt"
)

type world struct {
	srv        *store.Store
	src1, src2 string
	v1, v2     chunk.ID
	url        string
	seeder     *bt.Seeder
}

func newWorld(t *testing.T) *world { return newWorldWith(t, nil) }

// newWorldWith is newWorld with the seeder set up by opt before it starts.
func newWorldWith(t *testing.T, opt func(*bt.Seeder)) *world {
	w := &world{srv: storetest.New(t), src1: filepath.Join(t.TempDir(), "v1"), src2: filepath.Join(t.TempDir(), "v2")}
	files := map[string]int{"etc/motd": 300}
	for i := 0; i < 30; i++ {
		files[fmt.Sprintf("usr/lib/lib%d.so", i)] = 100000 + i*7000
	}
	files["usr/bin/big"] = 5 << 20
	snapshottest.RandomFiles(t, w.src1, 1, files)
	var err error
	if w.v1, _, err = client.Commit(context.Background(), w.srv, w.src1, client.CommitOptions{Image: "img"}); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(w.src2, os.DirFS(w.src1)); err != nil {
		t.Fatal(err)
	}
	snapshottest.RandomFiles(t, w.src2, 2, map[string]int{"etc/motd": 310, "usr/lib/lib3.so": 120000})
	if w.v2, _, err = client.Commit(context.Background(), w.srv, w.src2, client.CommitOptions{Image: "img"}); err != nil {
		t.Fatal(err)
	}
	srv := &simsync.Server{Store: w.srv, Planner: simsync.NewPlanner(w.srv)}
	w.seeder = &bt.Seeder{Store: w.srv, Planner: srv.Planner, Listen: "127.0.0.1:0"}
	if opt != nil {
		opt(w.seeder)
	}
	if err := w.seeder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.seeder.Close)
	w.seeder.Mount(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	w.url = hs.URL
	return w
}

func (w *world) node(t *testing.T, cfg bt.NodeConfig) (*bt.Node, *store.Store) {
	st := storetest.New(t)
	r, err := simsync.NewRemote(w.url, "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	n := &bt.Node{Remote: r, Store: st, Config: cfg}
	t.Cleanup(func() { n.Close() })
	return n, st
}

func checkout(t *testing.T, st *store.Store, id chunk.ID, src string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "node")
	if _, err := client.Checkout(context.Background(), st, id, dir, client.CheckoutOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	snapshottest.Equal(t, src, dir, snapshottest.IgnoreRootTimes())
}

func TestDocumentRoundTrip(t *testing.T) {
	w := newWorld(t)
	a, _, err := bt.Build(context.Background(), w.srv, simsync.NewPlanner(w.srv), w.v2, chunk.ID{})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := bt.Build(context.Background(), w.srv, simsync.NewPlanner(w.srv), w.v2, chunk.ID{})
	if err != nil {
		t.Fatal(err)
	}
	if a.InfoHash != b.InfoHash || !bytes.Equal(a.Encode(), b.Encode()) {
		t.Fatal("two derivations of one torrent differ")
	}
	d, err := bt.DecodeTorrent(a.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if d.InfoHash != a.InfoHash || len(d.Records) != len(a.Records) || d.Length() != a.Length() {
		t.Fatalf("decoded %+v", d)
	}
	delta, _, err := bt.Build(context.Background(), w.srv, simsync.NewPlanner(w.srv), w.v2, w.v1)
	if err != nil {
		t.Fatal(err)
	}
	if delta.Length()*10 > a.Length() {
		t.Fatalf("delta torrent is %d bytes, full %d", delta.Length(), a.Length())
	}
	// Every truncation and a few corruptions are refused with an error.
	doc := a.Encode()
	for i := 0; i < len(doc); i += 1 + len(doc)/300 {
		if _, err := bt.DecodeTorrent(doc[:i]); err == nil {
			t.Fatalf("truncated at %d: accepted", i)
		}
	}
}

func FuzzDecodeTorrent(f *testing.F) {
	f.Add([]byte("SIMBTOR1"))
	f.Add([]byte("SIMBTOR2"))
	f.Fuzz(func(t *testing.T, b []byte) {
		bt.DecodeTorrent(b)
	})
}

// TestSwarm: two nodes install v1 from the seeder and each other, then
// update to v2 with a torrent of only the changed objects.
func TestSwarm(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type res struct {
		n  *bt.Node
		st *store.Store
	}
	var nodes []res
	for i := 0; i < 2; i++ {
		n, st := w.node(t, bt.NodeConfig{})
		nodes = append(nodes, res{n, st})
	}
	errc := make(chan error, len(nodes))
	for _, nd := range nodes {
		go func() {
			_, err := simsync.FetchCommit(ctx, nd.st, nd.n.Remote, nd.n, w.v1, true)
			errc <- err
		}()
	}
	for range nodes {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes {
		checkout(t, nd.st, w.v1, w.src1)
	}
	// The update: a torrent of the changed objects only.
	for _, nd := range nodes {
		go func() {
			_, err := simsync.FetchCommit(ctx, nd.st, nd.n.Remote, nd.n, w.v2, true, w.v1)
			errc <- err
		}()
	}
	for range nodes {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	var fromPeers int64
	for _, nd := range nodes {
		checkout(t, nd.st, w.v2, w.src2)
		for _, p := range nd.n.Stats() {
			t.Logf("%s: %d/%d pieces, %d objects, %d B from peers, %d B web seed, %d B uploaded, %d bad", p.InfoHash[:8], p.Pieces, p.PiecesTotal, p.Objects, p.FromPeers, p.FromWebSeed, p.Uploaded, p.BadPieces)
			fromPeers += p.FromPeers
		}
	}
	if fromPeers == 0 {
		t.Fatal("nothing came from peers")
	}
	st := w.seeder.Status()
	if len(st) != 2 {
		t.Fatalf("seeder has %d torrents, want 2 (v1, v1->v2): %+v", len(st), st)
	}
	for _, s := range st {
		t.Logf("seeded %s base %s: %d bytes, %d objects, uploaded %d", s.Want.Short(), s.Base.Short(), s.Bytes, s.Objects, s.Uploaded)
		if !s.Base.IsZero() && s.Bytes > 200<<10 {
			t.Fatalf("the update torrent is %d bytes", s.Bytes)
		}
	}
}

// TestPartialStore: a node whose store already holds v1 (from HTTP)
// takes the full v2 torrent (no base given) and downloads only the
// pieces of the frames it lacks; the frames it holds as they came count
// as complete and are served to others.
func TestPartialStore(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	n, st := w.node(t, bt.NodeConfig{})
	if _, err := simsync.FetchCommit(ctx, st, n.Remote, nil, w.v1, true); err != nil {
		t.Fatal(err)
	}
	full, _, err := bt.Build(ctx, w.srv, simsync.NewPlanner(w.srv), w.v2, chunk.ID{})
	if err != nil {
		t.Fatal(err)
	}
	// No haves: the full torrent of v2.
	sink := simsync.NewSink(st)
	if _, err := n.Deliver(ctx, w.v2, nil, sink); err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if missing, err := simsync.MissingObjects(st, mustTree(t, w.srv, w.v2), 0); err != nil || len(missing) > 0 {
		t.Fatalf("after the fetch %d objects are missing (%v)", len(missing), err)
	}
	p := n.Stats()[0]
	got := p.FromPeers + p.FromWebSeed
	t.Logf("payload %d bytes, %d pieces; asked for %d pieces, received %d bytes; %d pieces servable", full.Length(), p.PiecesTotal, p.PiecesNeeded, got, p.Pieces)
	if got*4 > full.Length() || p.PiecesNeeded*4 > p.PiecesTotal {
		t.Fatalf("a store holding v1 downloaded %d of %d bytes of v2", got, full.Length())
	}
	if p.Pieces < p.PiecesTotal/2 {
		t.Fatalf("only %d of %d pieces can be served", p.Pieces, p.PiecesTotal)
	}
}

func mustTree(t *testing.T, st *store.Store, id chunk.ID) chunk.ID {
	c, err := st.Commit(id)
	if err != nil {
		t.Fatal(err)
	}
	return c.Tree
}

// TestStallFallsBackToHTTP: a node whose swarm stops delivering (its
// download capped to a trickle) gives up after Stall, keeps what arrived
// and gets the rest over HTTP: BitTorrent never makes an install fail.
func TestStallFallsBackToHTTP(t *testing.T) {
	w := newWorld(t)
	n, st := w.node(t, bt.NodeConfig{DownloadRate: 1, Stall: 2 * time.Second})
	ps, err := simsync.FetchCommit(context.Background(), st, n.Remote, n, w.v1, true)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Rounds < 2 {
		t.Fatalf("fetched in %d rounds: the HTTP fallback did not run", ps.Rounds)
	}
	checkout(t, st, w.v1, w.src1)
	var problems int
	if _, err := st.Check(true, func(store.Problem) { problems++ }); err != nil || problems > 0 {
		t.Fatalf("fsck: %v, %d problems", err, problems)
	}
}

// TestSeederForgetsBrokenTorrent: when the frames of a seeded torrent
// vanish from under it (a gc repacked the store), the seeder stops
// offering it, so the next node gets a torrent of the new packs.
func TestSeederForgetsBrokenTorrent(t *testing.T) {
	w := newWorld(t)
	resp, err := http.Get(w.url + bt.Prefix + "torrent?want=" + w.v1.String())
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	tor, err := bt.DecodeTorrent(doc)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(w.seeder.Status()); n != 1 {
		t.Fatalf("%d torrents seeded", n)
	}
	// gc as if v1 were gone: its pack is rewritten without v1's own
	// blobs, and the frames the torrent points at vanish.
	live := map[chunk.ID]bool{}
	v2tree := mustTree(t, w.srv, w.v2)
	live[v2tree] = true
	if err := snapshot.Walk(w.srv, v2tree, func(_ string, n *snapshot.Node) error {
		if n.Kind == snapshot.KindDir {
			live[n.Subtree] = true
		}
		for _, x := range n.Content {
			live[x.ID] = true
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.srv.Repack(func(id chunk.ID) bool { return live[id] }, func(chunk.ID) bool { return true }); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", w.url+bt.Prefix+"seed/"+tor.InfoHash.HexString()+"/"+tor.Info.Name, nil)
	req.Header.Set("Range", "bytes=0-100000")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i := 0; i < 50 && len(w.seeder.Status()) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(w.seeder.Status()); n != 0 {
		t.Fatalf("the broken torrent is still seeded (%d)", n)
	}
}

// TestSeederKeepsAFew: beyond Keep torrents the least recently asked for
// is dropped, and a request that fails (unknown base) leaves no trace.
func TestSeederKeepsAFew(t *testing.T) {
	w := newWorld(t)
	w.seeder.Keep = 1
	get := func(q string) int {
		resp, err := http.Get(w.url + bt.Prefix + "torrent?" + q)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get("want=" + w.v1.String()); c != 200 {
		t.Fatalf("v1: %d", c)
	}
	if c := get("want=" + w.v2.String() + "&have=" + w.v1.String()); c != 200 {
		t.Fatalf("v1->v2: %d", c)
	}
	if c := get("want=" + w.v2.String() + "&have=" + w.v2.String()); c != 204 {
		t.Fatalf("v2->v2: %d, want 204", c)
	}
	if c := get("want=zz"); c != 400 {
		t.Fatalf("bad id: %d, want 400", c)
	}
	st := w.seeder.Status()
	if len(st) != 1 || st[0].Base != w.v1 {
		t.Fatalf("seeded %+v, want only v1->v2", st)
	}
}

// sealedWorld is newWorld behind a read token, its seeder sealing.
func sealedWorld(t *testing.T) *world {
	w := &world{srv: storetest.New(t), src1: filepath.Join(t.TempDir(), "v1")}
	files := map[string]int{"etc/motd": 300}
	for i := 0; i < 30; i++ {
		files[fmt.Sprintf("usr/lib/lib%d.so", i)] = 100000 + i*7000
	}
	files["usr/bin/big"] = 5 << 20
	snapshottest.RandomFiles(t, w.src1, 1, files)
	var err error
	if w.v1, _, err = client.Commit(context.Background(), w.srv, w.src1, client.CommitOptions{Image: "img"}); err != nil {
		t.Fatal(err)
	}
	srv := &simsync.Server{Store: w.srv, Planner: simsync.NewPlanner(w.srv), ReadTokens: []string{"rt"}}
	w.seeder = &bt.Seeder{Store: w.srv, Planner: srv.Planner, Listen: "127.0.0.1:0", Sealed: true}
	if err := w.seeder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.seeder.Close)
	w.seeder.Mount(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	w.url = hs.URL
	return w
}

func TestSealedDocument(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	plain, p, err := bt.Build(ctx, w.srv, simsync.NewPlanner(w.srv), w.v2, chunk.ID{})
	if err != nil {
		t.Fatal(err)
	}
	var key [32]byte
	key[0] = 1
	a, _, err := bt.Seal(ctx, plain, p, key, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	plain2, p2, _ := bt.Build(ctx, w.srv, simsync.NewPlanner(w.srv), w.v2, chunk.ID{})
	b, _, err := bt.Seal(ctx, plain2, p2, key, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !a.Sealed || a.InfoHash != b.InfoHash || !bytes.Equal(a.Encode(), b.Encode()) {
		t.Fatal("two sealings of one torrent differ: the info hash must be stable")
	}
	if a.Length() != plain.Length()+int64(16*len(plain.Records)) || a.InfoHash == plain.InfoHash || a.Info.Name != "sim-sealed" {
		t.Fatalf("sealed %d bytes (plain %d, %d records), name %q", a.Length(), plain.Length(), len(plain.Records), a.Info.Name)
	}
	doc := a.Encode()
	if !bytes.HasPrefix(doc, []byte("SIMBTOR2")) {
		t.Fatalf("sealed document starts %q", doc[:8])
	}
	d, err := bt.DecodeTorrent(doc)
	if err != nil || !d.Sealed || d.Key != a.Key || d.InfoHash != a.InfoHash || d.Records[3].Nonce != a.Records[3].Nonce {
		t.Fatalf("decoded %+v %v", d, err)
	}
	for i := 0; i < len(doc); i += 1 + len(doc)/300 {
		if _, err := bt.DecodeTorrent(doc[:i]); err == nil {
			t.Fatalf("truncated at %d: accepted", i)
		}
	}
}

// TestSealedSwarm: behind a read token, torrents are sealed: two nodes
// with the token install from the seeder and each other, while a
// stranger who learned the info hash (BitTorrent handshakes are plain)
// and joins the swarm downloads the whole payload and finds no byte
// sequence of the image in it: no chunk, no tree, no stored frame. The
// same search in the plain torrent of the same commit finds them all
// (the test can fail).
func TestSealedSwarm(t *testing.T) {
	w := sealedWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stores []*store.Store
	errc := make(chan error, 2)
	for i := 0; i < 2; i++ {
		st := storetest.New(t)
		r, _ := simsync.NewRemote(w.url, "rt")
		n := &bt.Node{Remote: r, Store: st, Config: bt.NodeConfig{Listen: "127.0.0.1:0"}}
		t.Cleanup(func() { n.Close() })
		stores = append(stores, st)
		go func() {
			_, err := simsync.FetchCommit(ctx, st, r, n, w.v1, true)
			errc <- err
		}()
	}
	for range stores {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range stores {
		checkout(t, st, w.v1, w.src1)
	}
	status := w.seeder.Status()
	if len(status) != 1 {
		t.Fatalf("seeded %+v", status)
	}
	// Without the token, no document (hence no key).
	if resp, err := http.Get(w.url + bt.Prefix + "torrent?want=" + w.v1.String()); err != nil || resp.StatusCode != 401 {
		t.Fatalf("torrent document without a token: %v %v", resp.StatusCode, err)
	}
	sealed := stranger(t, status[0].InfoHash, w.seeder.Port())
	plainT, pp, err := bt.Build(ctx, w.srv, simsync.NewPlanner(w.srv), w.v1, chunk.ID{})
	if err != nil {
		t.Fatal(err)
	}
	plain := make([]byte, plainT.Length())
	if _, err := pp.ReadAt(plain, 0); err != nil {
		t.Fatal(err)
	}
	if int64(len(sealed)) != plainT.Length()+int64(16*len(plainT.Records)) {
		t.Fatalf("the stranger got %d bytes; the sealed payload is %d", len(sealed), plainT.Length()+int64(16*len(plainT.Records)))
	}
	probes := imageProbes(t, w.srv, w.v1)
	found := func(payload []byte) (n int) {
		for _, p := range probes {
			if bytes.Contains(payload, p) {
				n++
			}
		}
		return n
	}
	inPlain, inSealed := found(plain), found(sealed)
	t.Logf("%d probes (32-byte pieces of every chunk, tree and stored frame): %d in the plain payload, %d in the sealed one the stranger got", len(probes), inPlain, inSealed)
	if inPlain < len(probes)*9/10 {
		t.Fatalf("only %d of %d probes found in the plain payload: the search proves nothing", inPlain, len(probes))
	}
	if inSealed != 0 {
		t.Fatalf("%d pieces of the image readable in the sealed payload", inSealed)
	}
}

// imageProbes are 32-byte pieces (start, middle, end) of every chunk and
// tree of commit id, and of every stored frame holding them.
func imageProbes(t *testing.T, st *store.Store, id chunk.ID) [][]byte {
	var out [][]byte
	add := func(b []byte) {
		if len(b) < 96 {
			return
		}
		for _, at := range []int{0, len(b)/2 - 16, len(b) - 32} {
			out = append(out, append([]byte(nil), b[at:at+32]...))
		}
	}
	frames := map[store.Loc]bool{}
	addBlob := func(bid chunk.ID) {
		b, err := st.Get(bid)
		if err != nil {
			t.Fatal(err)
		}
		add(b)
		loc, _ := st.Lookup(bid)
		loc.Off, loc.Len, loc.Type = 0, 0, 0
		if !frames[loc] {
			frames[loc] = true
			raw, err := st.ReadRaw(loc)
			if err != nil {
				t.Fatal(err)
			}
			add(raw)
		}
	}
	tree := mustTree(t, st, id)
	addBlob(tree)
	if err := snapshot.Walk(st, tree, func(_ string, n *snapshot.Node) error {
		if n.Kind == snapshot.KindDir {
			addBlob(n.Subtree)
		}
		for _, x := range n.Content {
			if !x.Hole() {
				addBlob(x.ID)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// stranger joins the swarm of infohash at the seeder's port with a plain
// BitTorrent client (no document, no key, no token), downloads the whole
// payload and returns it.
func stranger(t *testing.T, infohash string, port int) []byte {
	t.Helper()
	dir := t.TempDir()
	cfg := torrent.NewDefaultClientConfig()
	cfg.DataDir = dir
	cfg.DefaultStorage = storage.NewFile(dir)
	cfg.NoDHT, cfg.DisableUTP, cfg.DisableIPv6, cfg.NoDefaultPortForwarding, cfg.DisableWebtorrent = true, true, true, true, true
	cfg.ListenHost = func(string) string { return "127.0.0.1" }
	cfg.ListenPort = 0
	cfg.HeaderObfuscationPolicy = torrent.HeaderObfuscationPolicy{}
	cfg.MaxAllocPeerRequestDataPerConn = 16 << 20
	cfg.Logger = alog.Default.WithFilterLevel(alog.Disabled)
	cl, err := torrent.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var ih metainfo.Hash
	if err := ih.FromHexString(infohash); err != nil {
		t.Fatal(err)
	}
	tt, _ := cl.AddTorrentInfoHash(ih)
	tt.AddPeers([]torrent.PeerInfo{{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, Source: torrent.PeerSourceDirect}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	select {
	case <-tt.GotInfo():
	case <-ctx.Done():
		t.Fatal("the stranger got no info dictionary from the swarm")
	}
	tt.DownloadAll()
	select {
	case <-tt.Complete().On():
	case <-ctx.Done():
		t.Fatalf("the stranger downloaded %d of %d bytes", tt.BytesCompleted(), tt.Length())
	}
	b, err := os.ReadFile(filepath.Join(dir, tt.Info().Name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
