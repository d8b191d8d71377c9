package bt

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/spf13/pflag"

	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

// BitTorrent registers as "bittorrent": nodes fetch the objects of a
// commit from each other; sim serve derives, seeds, tracks and web-seeds
// the torrents.
func init() {
	simsync.RegisterTransport(simsync.TransportKind{
		Name: "bittorrent", Help: "peer to peer from the other nodes, seeded by the server",
		Node:  func() simsync.TransportConfig { return &nodeFlags{} },
		Serve: func() simsync.ServeConfig { return &serveFlags{} },
	})
}

// nodeFlags is a node's --bt-* options.
type nodeFlags struct {
	fs                       *pflag.FlagSet
	listen, upload, download string
	seedTime, stall          time.Duration
}

func (b *nodeFlags) Flags(f *pflag.FlagSet) {
	b.fs = f
	f.StringVar(&b.listen, "bt-listen", ":6881", "BitTorrent: listen on `ADDR` for peers (port 0 picks one)")
	f.StringVar(&b.upload, "bt-upload-rate", "0", "BitTorrent: cap this node's upload to `RATE` (12M = 12 MB/s, 100Mbit; 0: no cap)")
	f.StringVar(&b.download, "bt-download-rate", "0", "BitTorrent: cap this node's download to `RATE`")
	f.DurationVar(&b.seedTime, "seed-time", 0, "BitTorrent: keep seeding for `DURATION` after the checkout")
	f.DurationVar(&b.stall, "bt-stall", 2*time.Minute, "BitTorrent: give up on the swarm (and fetch the rest over HTTP) after `DURATION` without data")
}

func (b *nodeFlags) Open(_ context.Context, env simsync.TransportEnv) (simsync.Transport, error) {
	up, err := units.ParseRate(b.upload)
	if err != nil {
		return nil, &simsync.FlagError{Flag: "bt-upload-rate", Err: err}
	}
	down, err := units.ParseRate(b.download)
	if err != nil {
		return nil, &simsync.FlagError{Flag: "bt-download-rate", Err: err}
	}
	listen := b.listen
	if (b.fs == nil || !b.fs.Changed("bt-listen")) && !portFree(listen) {
		// The default port is taken (a server or another node on this
		// host): any port will do, the tracker tells peers which.
		listen = ":0"
	}
	n := &Node{Remote: env.Remote, Store: env.Store, Config: NodeConfig{Listen: listen, UploadRate: int64(up), DownloadRate: int64(down),
		Stall: b.stall, SeedTime: b.seedTime, Corrupt: os.Getenv("SIM_BT_CORRUPT") != ""}}
	n.Config.Progress = progressPrinter(env.Log, env.Terminal, env.JSON)
	if b.seedTime > 0 && !env.JSON && env.Log != nil {
		n.Config.Progress = withSeedNote(n.Config.Progress, env.Log, b.seedTime)
	}
	return n, nil
}

// withSeedNote says, once the download is done, that the node will seed.
func withSeedNote(p func(Progress), w io.Writer, d time.Duration) func(Progress) {
	return func(pr Progress) {
		p(pr)
		if pr.Done {
			fmt.Fprintf(w, "bittorrent: seeding for %s after the checkout\n", d)
		}
	}
}

// progressPrinter prints a node's progress to w: a line rewritten in
// place on a terminal, a line every 5 s otherwise, JSON lines with json;
// and always the last one.
func progressPrinter(w io.Writer, tty, asJSON bool) func(Progress) {
	if w == nil {
		return nil
	}
	last := time.Now()
	return func(p Progress) {
		if !p.Done && !tty && time.Since(last) < 5*time.Second {
			return
		}
		last = time.Now()
		if asJSON {
			b, _ := json.Marshal(struct {
				Event string `json:"event"`
				Progress
			}{"bittorrent", p})
			fmt.Fprintf(w, "%s\n", b)
			return
		}
		line := fmt.Sprintf("bittorrent: %d/%d pieces (%d to fetch), %d objects stored, %s, %d peers (%d seeding), %s from peers, %s from the web seed, %s uploaded",
			p.Pieces, p.PiecesTotal, p.PiecesNeeded, p.Objects, units.PerSecond(p.Rate), p.Peers, p.Seeding,
			units.Bytes(p.FromPeers), units.Bytes(p.FromWebSeed), units.Bytes(p.Uploaded))
		if p.BadPieces > 0 {
			line += fmt.Sprintf(", %d bad pieces refused", p.BadPieces)
		}
		switch {
		case tty && !p.Done:
			fmt.Fprintf(w, "\r\033[K%s", line)
		case tty:
			fmt.Fprintf(w, "\r\033[K%s\n", line)
		default:
			fmt.Fprintln(w, line)
		}
	}
}

// portFree says whether a TCP listener can bind addr now.
func portFree(addr string) bool {
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// serveFlags is sim serve's BitTorrent side: the seeder, tracker and web
// seed.
type serveFlags struct {
	fs                     *pflag.FlagSet
	listen, peerRate, seal string
	off, superSeed         bool
}

func (b *serveFlags) Flags(f *pflag.FlagSet) {
	b.fs = f
	f.StringVar(&b.listen, "bt-listen", ":6881", "BitTorrent: seed on `ADDR`")
	f.StringVar(&b.peerRate, "bt-peer-rate", "0", "BitTorrent: send one peer at most `RATE` (5M = 5 MB/s, 40Mbit), so nodes share among themselves; 0: no cap")
	f.BoolVar(&b.off, "no-bittorrent", false, "do not seed, track or web-seed torrents")
	f.BoolVar(&b.superSeed, "bt-super-seed", true, "BitTorrent: super-seed (BEP 16): tell each peer of a few pieces no other peer has, so the origin sends each piece about once and the nodes spread it (--bt-super-seed=false: advertise every piece to every peer)")
	f.StringVar(&b.seal, "bt-seal", "auto", "BitTorrent: encrypt payloads: `auto` (when reads need a token: --read-token), on, off")
}

func (b *serveFlags) Start(_ context.Context, env simsync.ServeEnv) (simsync.Service, error) {
	if b.off {
		return nil, nil
	}
	pr, err := units.ParseRate(b.peerRate)
	if err != nil {
		return nil, &simsync.FlagError{Flag: "bt-peer-rate", Err: err}
	}
	srv := env.Server
	var sealed bool
	switch b.seal {
	case "auto":
		sealed = srv.ReadsClosed()
	case "on":
		sealed = true
	case "off":
	default:
		return nil, &simsync.FlagError{Flag: "bt-seal", Value: b.seal, Err: fmt.Errorf("want auto, on or off")}
	}
	listen := b.listen
	if b.fs == nil || !b.fs.Changed("bt-listen") {
		listen = followListen(listen, env.BaseURL)
	}
	s := &Seeder{Store: srv.Store, Planner: srv.Planner, Listen: listen, PeerRate: int64(pr), Log: srv.Log, Sealed: sealed, SuperSeed: b.superSeed}
	if err := s.Start(); err != nil {
		if b.fs != nil && b.fs.Changed("bt-listen") {
			return nil, err
		}
		// Not asked for explicitly: the HTTP server matters more.
		fmt.Fprintf(env.Log, "sim serve: BitTorrent off (%v); set --bt-listen to another address\n", err)
		return nil, nil
	}
	s.Mount(srv)
	what := "torrents"
	if b.superSeed {
		what = "torrents, super-seeding,"
	}
	if sealed {
		what = "sealed torrents (payloads encrypted; keys only in the documents)"
	}
	fmt.Fprintf(env.Log, "sim serve: seeding %s on port %d (tracker and web seed at %s)\n", what, s.Port(), Prefix)
	return seederService{s}, nil
}

type seederService struct{ s *Seeder }

func (x seederService) Close() { x.s.Close() }

// Seeder is the running seeder (sim serve's GET /metrics reads its
// torrents' peers and bytes).
func (x seederService) Seeder() *Seeder { return x.s }

// Status lists the seeded torrents (the fleet page's swarms).
func (x seederService) Status() []TorrentStatus { return x.s.Status() }

// followListen binds the seeder's default --bt-listen (any address) to
// the address sim serve --listen names, when it names one: a server
// told to listen on 127.0.0.1 or one lab address must not take peers on
// every interface behind the admin's back.
func followListen(listen, baseURL string) string {
	u, err := url.Parse(baseURL)
	if baseURL == "" || err != nil || u.Hostname() == "" {
		return listen
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil || host != "" {
		return listen
	}
	return net.JoinHostPort(u.Hostname(), port)
}
