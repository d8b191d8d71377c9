package bt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	gosync "sync"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	trackerServer "github.com/anacrolix/torrent/tracker/server"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/seal"
)

// Prefix is where the Seeder's endpoints live on a sim server.
const Prefix = "/v1/bt/"

// Seeder is the server's BitTorrent side, inside sim serve: it derives
// torrents on request (GET /v1/bt/torrent), seeds them from the store,
// tracks their peers (/v1/bt/announce) and is their web seed
// (/v1/bt/seed/INFOHASH/NAME).
type Seeder struct {
	Store   *store.Store
	Planner *simsync.Planner
	// Listen is the BitTorrent address (host:port).
	Listen string
	// PeerRate caps what the origin sends one peer, bytes/s (0: no cap).
	PeerRate int64
	// Keep is how many torrents stay seeded; the least recently asked
	// for is dropped beyond it.
	Keep int
	Log  *log.Logger
	// Sealed seals every torrent (ARCHITECTURE.md "BitTorrent: sealed
	// torrents"): each frame under a key derived from the store's secret
	// and (want, base), which only the torrent document carries, so the
	// peers and anyone else who joins the swarm relay ciphertext. sim
	// serve sets it when reads need a token.
	Sealed bool
	// SuperSeed makes the origin hand each piece to one peer first and
	// let the swarm spread it (BEP 16; superseed.go).
	SuperSeed bool

	cl       *torrent.Client
	tracker  *peerTracker
	announce http.Handler
	super    *superSeeder
	// readsClosed: reads need a token, which web seed requests of
	// standard clients do not carry (no url-list in .torrent files).
	readsClosed bool

	mu       gosync.Mutex
	torrents map[[2]chunk.ID]*served
	byHash   map[metainfo.Hash]*served
	order    [][2]chunk.ID
	// known is every torrent derived so far: a web seed request for one
	// dropped since (Keep) derives it again.
	known map[metainfo.Hash][2]chunk.ID
}

type served struct {
	once  gosync.Once
	t     *Torrent
	p     *payload
	doc   []byte
	tt    *torrent.Torrent
	err   error
	built time.Duration
	asked int64
}

// Start opens the BitTorrent listener.
func (s *Seeder) Start() error {
	if s.Keep <= 0 {
		s.Keep = 8
	}
	if s.Log == nil {
		s.Log = log.New(io.Discard, "", 0)
	}
	if s.Planner == nil {
		s.Planner = simsync.NewPlanner(s.Store)
	}
	s.torrents = map[[2]chunk.ID]*served{}
	s.byHash = map[metainfo.Hash]*served{}
	s.known = map[metainfo.Hash][2]chunk.ID{}
	opts := clientOptions{listen: s.Listen, peerRate: s.PeerRate, acceptOnly: true}
	if s.SuperSeed {
		s.super = newSuperSeeder(s.pieceCount)
		s.super.logf = s.Log.Printf
		opts.wrap = s.super.wrap
	}
	cl, err := newClient(opts)
	if err != nil {
		if s.super != nil {
			s.super.close()
		}
		return err
	}
	s.cl = cl
	s.tracker = newTracker()
	s.tracker.origin = s.originAddr
	s.announce = announceHTTP{&trackerServer.AnnounceHandler{AnnounceTracker: s.tracker}}
	return nil
}

// pieceCount is the number of pieces of a torrent seeded now.
func (s *Seeder) pieceCount(ih metainfo.Hash) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.byHash[ih]
	if sv == nil {
		return 0, false
	}
	return sv.t.Info.NumPieces(), true
}

// originAddr is the seeder's peer address for a torrent it seeds, as the
// client announcing (over the HTTP connection in ctx) reaches it: the
// --bt-listen host if it names one, else the address the client reached
// the HTTP server at.
func (s *Seeder) originAddr(ctx context.Context, ih [20]byte) (netip.AddrPort, bool) {
	s.mu.Lock()
	_, ok := s.byHash[ih]
	s.mu.Unlock()
	port := s.Port()
	if !ok || port == 0 {
		return netip.AddrPort{}, false
	}
	host, _, _ := net.SplitHostPort(s.Listen)
	a, err := netip.ParseAddr(host)
	if err != nil || a.IsUnspecified() {
		la, _ := ctx.Value(http.LocalAddrContextKey).(*net.TCPAddr)
		if la == nil {
			return netip.AddrPort{}, false
		}
		if a, ok = netip.AddrFromSlice(la.IP); !ok {
			return netip.AddrPort{}, false
		}
	}
	if a = a.Unmap(); !a.Is4() { // the peer listener is IPv4
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, uint16(port)), true
}

// Port is the BitTorrent port the seeder listens on.
func (s *Seeder) Port() int {
	for _, a := range s.cl.ListenAddrs() {
		if ta, ok := a.(*net.TCPAddr); ok {
			return ta.Port
		}
	}
	return 0
}

// Close stops seeding.
func (s *Seeder) Close() {
	if s.cl != nil {
		var up int64
		st := s.Status()
		for _, t := range st {
			up += t.Uploaded
		}
		s.Log.Printf("bittorrent: stopped; %d torrents seeded, %d bytes uploaded to peers", len(st), up)
		for _, l := range s.cl.Listeners() {
			if c, ok := l.(io.Closer); ok {
				c.Close()
			}
		}
		s.cl.Close()
		if s.super != nil {
			s.super.close()
		}
		s.mu.Lock()
		for _, sv := range s.torrents {
			if sv.p != nil {
				sv.p.close()
			}
		}
		s.mu.Unlock()
	}
}

// torrent returns the torrent for (want, base), deriving and seeding it
// on first use. Concurrent requests for one wait for one derivation.
func (s *Seeder) torrent(ctx context.Context, want, base chunk.ID) (*served, error) {
	key := [2]chunk.ID{want, base}
	s.mu.Lock()
	sv, ok := s.torrents[key]
	if !ok {
		sv = &served{}
		s.torrents[key] = sv
		s.order = append(s.order, key)
		for len(s.order) > s.Keep {
			s.forgetLocked(s.order[0])
		}
	} else {
		for i, k := range s.order {
			if k == key {
				s.order = append(append(s.order[:i:i], s.order[i+1:]...), key)
				break
			}
		}
	}
	s.mu.Unlock()
	sv.once.Do(func() {
		start := time.Now()
		t, p, err := Build(context.WithoutCancel(ctx), s.Store, s.Planner, want, base)
		if err == nil && s.Sealed {
			var key seal.Key
			if key, err = s.swarmKey(want, base); err == nil {
				t, p, err = Seal(context.WithoutCancel(ctx), t, p, key, filepath.Join(s.Store.Dir(), "tmp"))
			}
		}
		if err != nil {
			sv.err = err
			return
		}
		t.PeerPort = s.Port()
		// After a gc moved the frames, forget this torrent: the next
		// node that asks gets one derived from the new packs.
		p.broken = func() {
			s.Log.Printf("bittorrent: %s: the store's packs changed (gc?); dropping it", t.InfoHash.HexString()[:12])
			s.forget(key)
		}
		tt, _ := s.cl.AddTorrentOpt(torrent.AddTorrentOpts{InfoHash: t.InfoHash, InfoBytes: t.InfoBytes, Storage: seedStorage{p}})
		sv.t, sv.p, sv.tt, sv.doc, sv.built = t, p, tt, t.Encode(), time.Since(start)
		s.mu.Lock()
		s.known[t.InfoHash] = key
		if s.torrents[key] == sv {
			s.byHash[t.InfoHash] = sv
		} else {
			// Pushed out by newer torrents while it was derived.
			go func() { tt.Drop(); p.close() }()
		}
		s.mu.Unlock()
		kind := "torrent"
		if s.SuperSeed {
			kind = "super-seeded torrent"
		}
		if t.Sealed {
			kind = "sealed torrent"
		}
		s.Log.Printf("bittorrent: derived %s %s for %s (base %s): %d objects, %d bytes, %d pieces of %d KiB, in %s",
			kind, t.InfoHash.HexString()[:12], want.Short(), shortOr(base, "none"), t.Objects(), t.Length(), t.Info.NumPieces(), t.Info.PieceLength>>10, sv.built.Round(time.Millisecond))
	})
	if sv.err != nil {
		s.mu.Lock()
		if s.torrents[key] == sv {
			s.forgetLocked(key)
		}
		s.mu.Unlock()
	}
	return sv, sv.err
}

// forget drops the torrent for key.
func (s *Seeder) forget(key [2]chunk.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgetLocked(key)
}

func (s *Seeder) forgetLocked(key [2]chunk.ID) {
	for i, k := range s.order {
		if k == key {
			s.order = append(s.order[:i:i], s.order[i+1:]...)
			break
		}
	}
	sv := s.torrents[key]
	if sv == nil {
		return
	}
	delete(s.torrents, key)
	if sv.t != nil {
		delete(s.byHash, sv.t.InfoHash)
	}
	if sv.tt != nil {
		// Not under anacrolix's read path that called us.
		tt, p := sv.tt, sv.p
		go func() { tt.Drop(); p.close() }()
	}
}

// swarmKey is the key of the sealed torrent for (want, base).
func (s *Seeder) swarmKey(want, base chunk.ID) (seal.Key, error) {
	secret, err := s.Store.Secret("bt-swarm")
	if err != nil {
		return seal.Key{}, err
	}
	return seal.Derive(secret, "sim bt torrent v2", want[:], base[:])
}

func shortOr(id chunk.ID, none string) string {
	if id.IsZero() {
		return none
	}
	return id.Short()
}

// Mount serves the seeder's endpoints under Prefix on srv (GET patterns
// also answer HEAD, which web seeds use).
func (s *Seeder) Mount(srv *simsync.Server) {
	s.readsClosed = srv.ReadsClosed()
	srv.Handle("GET "+Prefix+"torrent", http.HandlerFunc(s.serveTorrent))
	srv.Handle("GET "+Prefix+"torrents/{file...}", http.HandlerFunc(s.serveTorrentFile))
	srv.Handle("GET "+Prefix+"announce", s.announce)
	srv.Handle("GET "+Prefix+"seed/{hash}/{name...}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.serveSeed(w, r, r.PathValue("hash"))
	}))
	srv.Handle("GET "+Prefix+"status", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { s.serveStatus(w) }))
}

// serveTorrent answers GET /v1/bt/torrent?want=ID&have=ID...: the
// document for want, based on the first have this server knows (a node
// passes what it has checked out first, so every node updating from one
// release shares one torrent). 204 when the node lacks nothing.
func (s *Seeder) serveTorrent(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	want, err := chunk.Parse(q.Get("want"))
	if err != nil {
		http.Error(w, "want: "+err.Error(), http.StatusBadRequest)
		return
	}
	if ok, _ := s.Store.HasCommit(want); !ok {
		http.Error(w, fmt.Sprintf("no commit %s", want), http.StatusNotFound)
		return
	}
	var base chunk.ID
	for _, h := range q["have"] {
		id, err := chunk.Parse(h)
		if err != nil {
			http.Error(w, "have: "+err.Error(), http.StatusBadRequest)
			return
		}
		if ok, _ := s.Store.HasCommit(id); ok {
			base = id
			break
		}
	}
	if base == want {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	sv, err := s.torrent(r.Context(), want, base)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		if strings.Contains(err.Error(), "no torrent needed") {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	sv.asked++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(sv.doc)
}

// serveTorrentFile answers GET /v1/bt/torrents/REF.torrent[?from=BASE]:
// a standard metainfo file for the torrent that takes a store holding
// BASE (none: an empty store) to REF, for any BitTorrent client. Its info
// dictionary is the derived torrent's, byte for byte (same info hash as
// sim's nodes join); announce is this server's tracker, which lists the
// origin; url-list (BEP 19) is the web seed, unless reads need a token.
// The payload is one file of frames (ARCHITECTURE.md "BitTorrent").
func (s *Seeder) serveTorrentFile(w http.ResponseWriter, r *http.Request) {
	ref, ok := strings.CutSuffix(r.PathValue("file"), ".torrent")
	if !ok || ref == "" {
		http.Error(w, "want "+Prefix+"torrents/REF.torrent", http.StatusNotFound)
		return
	}
	resolve := func(what, ref string) (chunk.ID, bool) {
		id, err := s.Store.Resolve(ref)
		if err == nil {
			var ok bool
			if ok, err = s.Store.HasCommit(id); err == nil && !ok {
				err = store.ErrNotFound
			}
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("%s %q: %v", what, ref, err), http.StatusNotFound)
			return id, false
		}
		return id, true
	}
	want, ok := resolve("ref", ref)
	if !ok {
		return
	}
	var base chunk.ID
	if from := r.URL.Query().Get("from"); from != "" {
		if base, ok = resolve("from", from); !ok {
			return
		}
	}
	if base == want {
		http.Error(w, fmt.Sprintf("%s and from are the same commit %s: nothing to download", ref, want.Short()), http.StatusBadRequest)
		return
	}
	sv, err := s.torrent(r.Context(), want, base)
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, store.ErrNotFound):
			code = http.StatusNotFound
		case strings.Contains(err.Error(), "no torrent needed"):
			code = http.StatusBadRequest
		}
		http.Error(w, err.Error(), code)
		return
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	b, err := s.MetaInfo(sv.t, scheme+"://"+r.Host)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-bittorrent")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", sv.t.Info.Name+".torrent"))
	w.Write(b)
}

// MetaInfo is the bencoded .torrent file of t for clients that reach this
// server at baseURL (scheme://host:port).
func (s *Seeder) MetaInfo(t *Torrent, baseURL string) ([]byte, error) {
	mi := metainfo.MetaInfo{InfoBytes: t.InfoBytes, Announce: baseURL + Prefix + "announce", CreatedBy: "sim",
		Comment: "sim commit " + t.Want.String()}
	if !t.Base.IsZero() {
		mi.Comment += " from " + t.Base.String()
	}
	if c, err := s.Store.Commit(t.Want); err == nil {
		mi.CreationDate = c.Time.Unix()
	}
	if !s.readsClosed {
		mi.UrlList = []string{baseURL + Prefix + "seed/" + t.InfoHash.HexString() + "/"}
	}
	return bencode.Marshal(mi)
}

// serveSeed is the web seed (BEP 19): ranges of the payload, for a
// node no peer can serve.
func (s *Seeder) serveSeed(w http.ResponseWriter, r *http.Request, hexHash string) {
	var ih metainfo.Hash
	if err := ih.FromHexString(hexHash); err != nil {
		http.Error(w, "bad info hash", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	sv := s.byHash[ih]
	key, known := s.known[ih]
	s.mu.Unlock()
	if sv == nil && known {
		// Dropped to keep a few (Keep): derive it again.
		if sv, _ = s.torrent(r.Context(), key[0], key[1]); sv != nil && sv.t.InfoHash != ih {
			sv = nil
		}
	}
	if sv == nil {
		http.Error(w, "torrent not seeded here (ask /v1/bt/torrent first)", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(sv.p, 0, sv.t.Length()))
}

// TorrentStatus is one seeded torrent in GET /v1/bt/status.
type TorrentStatus struct {
	InfoHash string   `json:"info_hash"`
	Want     chunk.ID `json:"want"`
	Base     chunk.ID `json:"base"`
	Bytes    int64    `json:"bytes"`
	Objects  int      `json:"objects"`
	Pieces   int      `json:"pieces"`
	Asked    int64    `json:"asked"`
	Peers    int      `json:"peers"`    // connected now
	Tracked  int      `json:"tracked"`  // announced to the tracker
	Uploaded int64    `json:"uploaded"` // payload bytes sent to peers
}

func (s *Seeder) serveStatus(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.Status())
}

// Status lists the seeded torrents.
func (s *Seeder) Status() []TorrentStatus {
	s.mu.Lock()
	var list []*served
	for _, k := range s.order {
		if sv := s.torrents[k]; sv.t != nil {
			list = append(list, sv)
		}
	}
	s.mu.Unlock()
	out := []TorrentStatus{}
	for _, sv := range list {
		st := sv.tt.Stats()
		s.mu.Lock()
		asked := sv.asked
		s.mu.Unlock()
		out = append(out, TorrentStatus{InfoHash: sv.t.InfoHash.HexString(), Want: sv.t.Want, Base: sv.t.Base,
			Bytes: sv.t.Length(), Objects: sv.t.Objects(), Pieces: sv.t.Info.NumPieces(), Asked: asked,
			Peers: st.ActivePeers, Tracked: s.tracker.count(sv.t.InfoHash), Uploaded: st.BytesWrittenData.Int64()})
	}
	return out
}
