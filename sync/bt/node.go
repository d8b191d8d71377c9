package bt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	gosync "sync"
	"time"

	"github.com/anacrolix/torrent"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// NodeConfig configures a node's BitTorrent client.
type NodeConfig struct {
	// Listen is the peer address (host:port, port 0 picks one).
	Listen string
	// UploadRate and DownloadRate cap the node, bytes/s (0: no cap).
	UploadRate, DownloadRate int64
	// Stall gives up on the swarm when no payload byte arrived for that
	// long (the HTTP fallback then fetches the rest). 0: two minutes.
	Stall time.Duration
	// SeedTime is how long Finish keeps seeding to the other nodes after
	// the fetched commit was checked out (it seeds during the checkout
	// anyway).
	SeedTime time.Duration
	// Progress, if set, is called about once a second while a torrent
	// downloads, and once at the end.
	Progress func(Progress)
	// Corrupt makes the node serve its peers damaged data: a test hook
	// (SIM_BT_CORRUPT), proving that peers detect and refuse it.
	Corrupt bool
}

// Progress is a node's view of one torrent.
type Progress struct {
	InfoHash     string  `json:"info_hash"`
	Pieces       int     `json:"pieces"`        // complete (downloaded or already here)
	PiecesNeeded int     `json:"pieces_needed"` // to download
	PiecesTotal  int     `json:"pieces_total"`
	Objects      int64   `json:"objects"` // verified and stored
	Bytes        int64   `json:"bytes"`   // payload bytes stored
	Peers        int     `json:"peers"`   // connected
	Seeding      int     `json:"seeding"` // of which have everything
	FromPeers    int64   `json:"from_peers"`
	FromWebSeed  int64   `json:"from_web_seed"`
	Uploaded     int64   `json:"uploaded"`
	BadPieces    int64   `json:"bad_pieces"` // failed their hash: refused
	Rate         float64 `json:"rate"`       // bytes/s over the last second
	Done         bool    `json:"done"`
}

// Node is the BitTorrent transport of a node (sync.Transport): the
// objects of a commit come from the swarm (refs, commits and any gap come
// from the server over HTTP, in FetchCommit).
type Node struct {
	Remote *simsync.Remote
	Store  *store.Store
	Config NodeConfig

	mu     gosync.Mutex
	cl     *torrent.Client
	active []*activeTorrent
}

type activeTorrent struct {
	t      *Torrent
	ns     *nodeStorage
	tt     *torrent.Torrent
	needed int // pieces asked for
}

var _ simsync.Transport = (*Node)(nil)

func (n *Node) String() string { return "bittorrent" }

func (n *Node) client() (*torrent.Client, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cl != nil {
		return n.cl, nil
	}
	listen := n.Config.Listen
	if listen == "" {
		listen = ":6881"
	}
	cl, err := newClient(clientOptions{listen: listen, upload: n.Config.UploadRate, down: n.Config.DownloadRate})
	if err != nil {
		return nil, err
	}
	n.cl = cl
	return cl, nil
}

// Deliver asks the server for the torrent that takes haves[0] (what the
// node has checked out) to want, downloads the pieces this store cannot
// build itself, and puts every frame into sink as its pieces complete
// (the sink verifies every object). It returns when every needed frame
// is in; frames that did not verify, or a swarm that stalls, end it with
// sync.ErrTruncated so the caller fetches the rest over HTTP. The
// Delivery's Report is the torrent's Progress.
func (n *Node) Deliver(ctx context.Context, want chunk.ID, haves []chunk.ID, sink *simsync.Sink) (simsync.Delivery, error) {
	var ds simsync.Delivery
	q := url.Values{"want": {want.String()}}
	for i, h := range haves {
		if i == 8 {
			break
		}
		q.Add("have", h.String())
	}
	resp, err := n.Remote.Get(ctx, Prefix+"torrent?"+q.Encode())
	if err != nil {
		return ds, err
	}
	doc, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	resp.Body.Close()
	if err != nil {
		return ds, fmt.Errorf("bittorrent: torrent from %s: %w", n.Remote.Base(), err)
	}
	ds.WireBytes += int64(len(doc))
	if resp.StatusCode == http.StatusNoContent {
		return ds, nil
	}
	t, err := DecodeTorrent(doc)
	if err != nil {
		return ds, fmt.Errorf("%s: %w", n.Remote.Base(), err)
	}
	if t.Want != want {
		return ds, fmt.Errorf("bittorrent: %s sent the torrent of %s, not %s", n.Remote.Base(), t.Want.Short(), want.Short())
	}
	cl, err := n.client()
	if err != nil {
		return ds, err
	}
	ns, err := newNodeStorage(sink, t, n.Config.Corrupt)
	if err != nil {
		return ds, err
	}
	tt, _ := cl.AddTorrentOpt(torrent.AddTorrentOpts{InfoHash: t.InfoHash, InfoBytes: t.InfoBytes, Storage: ns})
	at := &activeTorrent{t: t, ns: ns, tt: tt}
	n.mu.Lock()
	n.active = append(n.active, at)
	n.mu.Unlock()

	// Every frontend of the store (Remote lists them) derives the same
	// info hash: each is a tracker and a seed of one swarm. The document's
	// peer port is taken to be every frontend's (one --bt-listen port).
	bases := n.Remote.Bases()
	if t.PeerPort > 0 {
		var peers []torrent.PeerInfo
		for _, b := range bases {
			u, err := url.Parse(b)
			if err != nil {
				continue
			}
			if addrs, err := net.DefaultResolver.LookupIPAddr(ctx, u.Hostname()); err == nil {
				for _, a := range addrs {
					if a.IP.To4() != nil {
						peers = append(peers, torrent.PeerInfo{Addr: &net.TCPAddr{IP: a.IP, Port: t.PeerPort}, Source: torrent.PeerSourceDirect, Trusted: true})
					}
				}
			}
		}
		tt.AddPeers(peers)
	}
	tiers := make([][]string, len(bases))
	for i, b := range bases {
		tiers[i] = []string{b + Prefix + "announce"}
	}
	tt.AddTrackers(tiers)
	// The web seed is the server's uplink again, with none of the
	// swarm's sharing (nor super-seeding): a fallback, added once no
	// payload byte came for webSeedAfter (no peer reachable, or the
	// swarm stalls). Web seed requests carry no bearer token.
	webSeed := n.Remote.Token == ""
	needed := spreadPieces(tt, ns.neededPieces())
	n.mu.Lock()
	at.needed = needed
	n.mu.Unlock()

	stall := n.Config.Stall
	if stall <= 0 {
		stall = 2 * time.Minute
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last int64
	lastMove := time.Now()
	report := func(done bool) Progress {
		p := at.progress()
		p.Rate = float64(p.FromPeers + p.FromWebSeed - last)
		last = p.FromPeers + p.FromWebSeed
		p.Done = done
		if n.Config.Progress != nil {
			n.Config.Progress(p)
		}
		return p
	}
	// tally adds the torrent's figures to ds.
	tally := func(p Progress) (failed int, err error) {
		_, _, failed, err = ns.progress()
		ds.WireBytes += p.FromPeers + p.FromWebSeed
		ds.Report = p
		return failed, err
	}
	for {
		select {
		case <-ctx.Done():
			n.drop(at)
			return ds, ctx.Err()
		case <-ns.done:
			failed, err := tally(report(true))
			if err != nil {
				return ds, err
			}
			if failed > 0 {
				return ds, fmt.Errorf("bittorrent: %d frames did not verify: %w", failed, simsync.ErrTruncated)
			}
			return ds, nil
		case <-tick.C:
			before := last
			p := report(false)
			if p.FromPeers+p.FromWebSeed > before {
				lastMove = time.Now()
			} else if webSeed && time.Since(lastMove) > webSeedAfter {
				webSeed = false
				var seeds []string
				for _, b := range bases {
					seeds = append(seeds, b+Prefix+"seed/"+t.InfoHash.HexString()+"/")
				}
				tt.AddWebSeeds(seeds)
			} else if time.Since(lastMove) > stall {
				// Leave the swarm, keeping what arrived (close flushes
				// the decoded frames), so the HTTP fallback asks only
				// for the rest.
				n.drop(at)
				tally(p)
				return ds, fmt.Errorf("bittorrent: no data for %s: %w", stall, simsync.ErrTruncated)
			}
		}
	}
}

// webSeedAfter is how long a node waits for payload from peers before
// it adds the web seed.
const webSeedAfter = 3 * time.Second

// spreadPieces asks for the pieces in runs, each node starting at a
// random place. anacrolix orders requests by priority, then availability,
// then index: without this every node of a rack that starts at once asks
// the server for piece 0, 1, 2… and the server sends the same pieces many
// times (BitTorrent's random first piece, which anacrolix lacks). The
// needed pieces, rotated by a random offset, are cut into four bands of
// falling priority. It returns how many pieces were asked for.
func spreadPieces(tt *torrent.Torrent, runs [][2]int) int {
	var pieces []int
	for _, r := range runs {
		for p := r[0]; p < r[1]; p++ {
			pieces = append(pieces, p)
		}
	}
	if len(pieces) == 0 {
		return 0
	}
	bands := []torrent.PiecePriority{torrent.PiecePriorityNext, torrent.PiecePriorityReadahead, torrent.PiecePriorityHigh, torrent.PiecePriorityNormal}
	off := rand.IntN(len(pieces))
	for k := range pieces {
		p := pieces[(off+k)%len(pieces)]
		tt.Piece(p).SetPriority(bands[k*len(bands)/len(pieces)])
	}
	return len(pieces)
}

func (at *activeTorrent) progress() Progress {
	st := at.tt.Stats()
	blobs, bytes, _, _ := at.ns.progress()
	at.ns.mu.Lock()
	have := 0
	for _, ok := range at.ns.pieces {
		if ok {
			have++
		}
	}
	at.ns.mu.Unlock()
	return Progress{InfoHash: at.t.InfoHash.HexString(), Pieces: have, PiecesNeeded: at.needed, PiecesTotal: at.t.Info.NumPieces(),
		Objects: blobs, Bytes: bytes, Peers: st.ActivePeers, Seeding: st.ConnectedSeeders,
		FromPeers: st.PeerConns.BytesReadUsefulData.Int64(), FromWebSeed: st.WebSeeds.BytesReadUsefulData.Int64(),
		Uploaded: st.BytesWrittenData.Int64(), BadPieces: st.PiecesDirtiedBad.Int64()}
}

// Stats sums the progress of every torrent this node has fetched.
func (n *Node) Stats() []Progress {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []Progress
	for _, at := range n.active {
		out = append(out, at.progress())
	}
	return out
}

// Finish keeps serving what the node has to its peers for SeedTime (or
// until ctx ends), then closes the client.
func (n *Node) Finish(ctx context.Context) error { return n.Seed(ctx, n.Config.SeedTime) }

// Seed keeps serving what the node has to its peers for d (or until ctx
// ends), then closes the client.
func (n *Node) Seed(ctx context.Context, d time.Duration) error {
	if d > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	return n.Close()
}

// drop leaves one torrent's swarm and closes its storage.
func (n *Node) drop(at *activeTorrent) {
	at.tt.Drop()
	at.ns.close()
	n.mu.Lock()
	for i, a := range n.active {
		if a == at {
			n.active = append(n.active[:i], n.active[i+1:]...)
			break
		}
	}
	n.mu.Unlock()
}

// Close stops the client and drops the spools.
func (n *Node) Close() error {
	n.mu.Lock()
	cl, active := n.cl, n.active
	n.cl, n.active = nil, nil
	n.mu.Unlock()
	if cl == nil {
		return nil
	}
	var errs []error
	for _, at := range active {
		at.tt.Drop()
	}
	cl.Close()
	for _, at := range active {
		errs = append(errs, at.ns.close())
	}
	return errors.Join(errs...)
}
