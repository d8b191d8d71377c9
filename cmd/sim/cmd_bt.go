package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/bt"
)

// BitTorrent: nodes fetch the objects of a commit from each other
// (--transport bittorrent); sim serve derives, seeds, tracks and web-seeds
// the torrents (sync/bt).
func init() {
	registerTransport(transportKind{name: "bittorrent", help: "peer to peer from the other nodes, seeded by the server",
		new: func() transport { return &btTransport{} }})
	registerServeExtension(func() serveExtension { return &btServe{} })
}

type btTransport struct {
	cmd                      *cobra.Command
	listen, upload, download string
	seedTime                 time.Duration
	stall                    time.Duration
}

func (b *btTransport) flags(c *cobra.Command) {
	b.cmd = c
	f := c.Flags()
	f.StringVar(&b.listen, "bt-listen", ":6881", "BitTorrent: listen on `ADDR` for peers (port 0 picks one)")
	f.StringVar(&b.upload, "bt-upload-rate", "0", "BitTorrent: cap this node's upload to `RATE` (bytes/s, or 100Mbit; 0 no cap)")
	f.StringVar(&b.download, "bt-download-rate", "0", "BitTorrent: cap this node's download to `RATE`")
	f.DurationVar(&b.seedTime, "seed-time", 0, "BitTorrent: keep seeding for `DURATION` after the checkout")
	f.DurationVar(&b.stall, "bt-stall", 2*time.Minute, "BitTorrent: give up on the swarm (and fetch the rest over HTTP) after `DURATION` without data")
}

func (b *btTransport) open(ctx context.Context, e *env, st *store.Store, r *simsync.Remote) (simsync.Transport, func(context.Context) error, error) {
	up, err := bt.ParseRate(b.upload)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--bt-upload-rate: %w", err)}
	}
	down, err := bt.ParseRate(b.download)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--bt-download-rate: %w", err)}
	}
	listen := b.listen
	if !b.cmd.Flags().Changed("bt-listen") && !portFree(listen) {
		// The default port is taken (a server or another node on this
		// host): any port will do, the tracker tells peers which.
		listen = ":0"
	}
	n := &bt.Node{Remote: r, Store: st, Config: bt.NodeConfig{Listen: listen, UploadRate: up, DownloadRate: down,
		Stall: b.stall, Corrupt: os.Getenv("SIM_BT_CORRUPT") != ""}}
	n.Config.Progress = e.btProgress()
	finish := func(ctx context.Context) error {
		if b.seedTime > 0 && !e.json {
			fmt.Fprintf(e.stderr, "bittorrent: seeding for %s\n", b.seedTime)
		}
		return n.Seed(ctx, b.seedTime)
	}
	return n, finish, nil
}

// btProgress prints a node's progress: a line rewritten in place on a
// terminal, a line every 5 s otherwise, JSON lines with --json; and
// always the last one.
func (e *env) btProgress() func(bt.Progress) {
	f, ok := e.stderr.(*os.File)
	tty := ok && isTerminal(f)
	last := time.Now()
	return func(p bt.Progress) {
		if !p.Done && !tty && time.Since(last) < 5*time.Second {
			return
		}
		last = time.Now()
		if e.json {
			b, _ := json.Marshal(struct {
				Event string `json:"event"`
				bt.Progress
			}{"bittorrent", p})
			fmt.Fprintf(e.stderr, "%s\n", b)
			return
		}
		line := fmt.Sprintf("bittorrent: %d/%d pieces (%d to fetch), %d objects stored, %s/s, %d peers (%d seeding), %s from peers, %s from the web seed, %s uploaded",
			p.Pieces, p.PiecesTotal, p.PiecesNeeded, p.Objects, fmtBytes(int64(p.Rate)), p.Peers, p.Seeding,
			fmtBytes(p.FromPeers), fmtBytes(p.FromWebSeed), fmtBytes(p.Uploaded))
		if p.BadPieces > 0 {
			line += fmt.Sprintf(", %d bad pieces refused", p.BadPieces)
		}
		switch {
		case tty && !p.Done:
			fmt.Fprintf(e.stderr, "\r\033[K%s", line)
		case tty:
			fmt.Fprintf(e.stderr, "\r\033[K%s\n", line)
		default:
			fmt.Fprintln(e.stderr, line)
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

// btServe runs the seeder, tracker and web seed inside sim serve.
type btServe struct {
	cmd              *cobra.Command
	listen, peerRate string
	off              bool
}

func (b *btServe) flags(c *cobra.Command) {
	b.cmd = c
	f := c.Flags()
	f.StringVar(&b.listen, "bt-listen", ":6881", "BitTorrent: seed on `ADDR`")
	f.StringVar(&b.peerRate, "bt-peer-rate", "0", "BitTorrent: send one peer at most `RATE` (bytes/s, or 40Mbit), so nodes share among themselves; 0 no cap")
	f.BoolVar(&b.off, "no-bittorrent", false, "do not seed, track or web-seed torrents")
}

func (b *btServe) start(ctx context.Context, e *env, st *store.Store, srv *simsync.Server, _ string) (func(), error) {
	if b.off {
		return nil, nil
	}
	pr, err := bt.ParseRate(b.peerRate)
	if err != nil {
		return nil, usageError{fmt.Errorf("--bt-peer-rate: %w", err)}
	}
	s := &bt.Seeder{Store: st, Planner: srv.Planner, Listen: b.listen, PeerRate: pr, Log: srv.Log}
	if err := s.Start(); err != nil {
		if b.cmd.Flags().Changed("bt-listen") {
			return nil, err
		}
		// Not asked for explicitly: the HTTP server matters more.
		fmt.Fprintf(e.stderr, "sim serve: BitTorrent off (%v); set --bt-listen to another address\n", err)
		return nil, nil
	}
	srv.Extra[bt.Prefix] = http.Handler(s)
	fmt.Fprintf(e.stderr, "sim serve: seeding torrents on port %d (tracker and web seed at %s)\n", s.Port(), bt.Prefix)
	return s.Close, nil
}
