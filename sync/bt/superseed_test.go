package bt_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/anacrolix/torrent/bencode"

	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/bt"
)

// TestTrackerListsOrigin: once a torrent is derived, the tracker's
// answer to any announce lists the origin seeder, so a client given only
// the .torrent finds a peer; a malformed announce gets a failure reason
// naming what is wrong.
func TestTrackerListsOrigin(t *testing.T) {
	w := newWorld(t)
	resp, err := http.Get(w.url + bt.Prefix + "torrent?want=" + w.v1.String())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	doc, err := bt.DecodeTorrent(b)
	if err != nil {
		t.Fatal(err)
	}
	announce := func(ih []byte, peerID string) (int, map[string]any) {
		q := url.Values{"info_hash": {string(ih)}, "peer_id": {peerID}, "port": {"6999"}, "left": {"100"}, "compact": {"1"}, "event": {"started"}}
		resp, err := http.Get(w.url + bt.Prefix + "announce?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := bencode.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("announce answer is not bencoded: %v", err)
		}
		return resp.StatusCode, m
	}
	code, m := announce(doc.InfoHash[:], "-XX0001-123456789012")
	if code != 200 || m["failure reason"] != nil {
		t.Fatalf("announce: %d %v", code, m)
	}
	peers, _ := m["peers"].(string)
	want := binary.BigEndian.AppendUint16([]byte{127, 0, 0, 1}, uint16(w.seeder.Port()))
	if !bytes.Contains([]byte(peers), want) || len(peers)%6 != 0 {
		t.Fatalf("tracker answer %q does not list the origin %v", peers, want)
	}
	// An unknown torrent: no origin.
	if _, m = announce(bytes.Repeat([]byte{1}, 20), "-XX0001-123456789012"); m["peers"] != "" {
		t.Fatalf("tracker lists %q for a torrent nobody seeds", m["peers"])
	}
	if code, m = announce(doc.InfoHash[:], "short"); code != http.StatusBadRequest || !bytes.Contains([]byte(m["failure reason"].(string)), []byte("peer_id")) {
		t.Fatalf("bad peer id: %d %v", code, m)
	}
}

// TestSuperSeed: four nodes install v1 at once from a super-seeding
// origin; every tree is exact, and the origin sends little more than one
// payload (the nodes spread the pieces among themselves).
func TestSuperSeed(t *testing.T) {
	w := newWorldWith(t, func(s *bt.Seeder) { s.SuperSeed = true })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type res struct {
		n  *bt.Node
		st *store.Store
	}
	var nodes []res
	for i := 0; i < 4; i++ {
		n, st := w.node(t, bt.NodeConfig{SeedTime: 0})
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
	var web int64
	for _, nd := range nodes {
		checkout(t, nd.st, w.v1, w.src1)
		for _, p := range nd.n.Stats() {
			t.Logf("node: %d pieces, %d B from peers, %d B web seed, %d B uploaded", p.PiecesNeeded, p.FromPeers, p.FromWebSeed, p.Uploaded)
			web += p.FromWebSeed
		}
	}
	st := w.seeder.Status()
	if len(st) != 1 {
		t.Fatalf("%d torrents seeded", len(st))
	}
	ratio := float64(st[0].Uploaded+web) / float64(st[0].Bytes)
	t.Logf("origin sent %d B to peers and %d B as web seed for 4 installs of %d B: %.2f payloads", st[0].Uploaded, web, st[0].Bytes, ratio)
	if ratio > 2 {
		t.Errorf("the super-seeding origin sent %.2f payloads for 4 nodes", ratio)
	}
}
