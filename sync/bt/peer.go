package bt

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	gosync "sync"
	"time"

	"github.com/anacrolix/generics"
	alog "github.com/anacrolix/log"
	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/tracker"
	trackerServer "github.com/anacrolix/torrent/tracker/server"
	"github.com/anacrolix/torrent/tracker/udp"
	"golang.org/x/time/rate"
)

// clientOptions configure an anacrolix client for a LAN or HPC fabric.
type clientOptions struct {
	listen       string // host:port; port 0 picks one
	upload, down int64  // bytes/s for the whole client, 0: no cap
	// peerRate caps what one connection is sent (bytes/s, 0: no cap),
	// and makes the client accept connections only (the server).
	peerRate   int64
	acceptOnly bool
	// wrap, if set, wraps every accepted connection (the super-seeder).
	wrap func(net.Conn) net.Conn
}

// newClient starts a client with no DHT, no uTP, no NAT traversal, no
// outside trackers, plain handshakes (a trusted LAN), and no storage of
// its own: every torrent brings one that speaks to a sim store.
func newClient(o clientOptions) (*torrent.Client, error) {
	host, port, err := net.SplitHostPort(o.listen)
	if err != nil {
		return nil, fmt.Errorf("bt: listen address %q: %w", o.listen, err)
	}
	pn, err := strconv.Atoi(port)
	if err != nil || pn < 0 || pn > 65535 {
		return nil, fmt.Errorf("bt: listen address %q: bad port", o.listen)
	}
	cfg := torrent.NewDefaultClientConfig()
	cfg.NoDHT = true
	cfg.PeriodicallyAnnounceTorrentsToDht = false
	cfg.DisableUTP = true
	cfg.DisableIPv6 = true
	cfg.NoDefaultPortForwarding = true
	cfg.DisableWebtorrent = true
	cfg.Seed = true
	cfg.HeaderObfuscationPolicy = torrent.HeaderObfuscationPolicy{}
	// v1.59.1 deadlocks a seeder after ~2 MiB with the default 1 MiB
	// (../shared/LIBRARIES.md): 1024 queued 16 KiB requests.
	cfg.MaxAllocPeerRequestDataPerConn = 16 << 20
	cfg.DisableAcceptRateLimiting = true // a rack of nodes connects at once
	cfg.DefaultStorage = refuseStorage{}
	cfg.ListenHost = func(string) string { return host }
	cfg.ListenPort = pn
	level := alog.Disabled
	if os.Getenv("SIM_BT_DEBUG") != "" {
		level = alog.Debug
	}
	cfg.Logger = alog.Default.WithFilterLevel(level)
	if o.upload > 0 {
		cfg.UploadRateLimiter = rate.NewLimiter(rate.Limit(o.upload), 256<<10)
	}
	if o.down > 0 {
		cfg.DownloadRateLimiter = rate.NewLimiter(rate.Limit(o.down), 256<<10)
	}
	var l net.Listener
	if o.acceptOnly {
		// The server listens itself, to cap each connection; it never
		// dials (nodes come to it, told its port by the torrent
		// document).
		cfg.DisableTCP = true
		cfg.DialForPeerConns = false
		if l, err = net.Listen("tcp4", o.listen); err != nil {
			return nil, fmt.Errorf("bt: %w", err)
		}
	}
	cl, err := torrent.NewClient(cfg)
	if err != nil {
		if l != nil {
			l.Close()
		}
		return nil, fmt.Errorf("bt: %w", err)
	}
	if l != nil {
		cl.AddListener(capListener{l, o.peerRate, o.wrap})
	}
	return cl, nil
}

// capListener hands out connections whose writes are paced to rate
// bytes/s each: the origin then cannot give one fast peer the whole
// uplink, and the nodes get more of the image from each other (Kraken's
// lesson; BitTorrent's own choking does not do it on a LAN where every
// peer reciprocates).
type capListener struct {
	net.Listener
	rate int64
	wrap func(net.Conn) net.Conn
}

func (l capListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	if l.rate > 0 {
		c = &capConn{Conn: c, lim: rate.NewLimiter(rate.Limit(l.rate), capBurst)}
	}
	if l.wrap != nil {
		c = l.wrap(c)
	}
	return c, nil
}

const capBurst = 64 << 10

type capConn struct {
	net.Conn
	lim *rate.Limiter
}

func (c *capConn) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n := min(len(b)-done, capBurst)
		if err := c.lim.WaitN(context.Background(), n); err != nil {
			return done, err
		}
		m, err := c.Conn.Write(b[done : done+n])
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// peerTracker is the in-process tracker sim serve runs at /v1/bt/announce:
// info hash -> the peers that announced it, forgotten after expire.
type peerTracker struct {
	mu     gosync.Mutex
	peers  map[trackerServer.InfoHash]map[netip.AddrPort]time.Time
	expire time.Duration
	// origin, if set, is the server's own peer address for a torrent it
	// seeds, as seen by the client whose announce ctx carries (false if
	// it does not seed it): every answer lists it, so a client given
	// only the .torrent finds a peer.
	origin func(ctx context.Context, ih [20]byte) (netip.AddrPort, bool)
}

func newTracker() *peerTracker {
	return &peerTracker{peers: map[trackerServer.InfoHash]map[netip.AddrPort]time.Time{}, expire: 3 * announceInterval}
}

// announceInterval is what the tracker asks of clients: short, since
// installs last minutes, not days.
const announceInterval = 30

func (t *peerTracker) TrackAnnounce(_ context.Context, req udp.AnnounceRequest, addr trackerServer.AnnounceAddr) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.peers[req.InfoHash]
	if req.Event == tracker.Stopped {
		delete(m, addr)
		return nil
	}
	if m == nil {
		m = map[netip.AddrPort]time.Time{}
		t.peers[req.InfoHash] = m
	}
	m[addr] = time.Now()
	return nil
}

func (t *peerTracker) Scrape(context.Context, []trackerServer.InfoHash) ([]udp.ScrapeInfohashResult, error) {
	return nil, nil
}

func (t *peerTracker) GetPeers(ctx context.Context, ih trackerServer.InfoHash, opts trackerServer.GetPeersOpts, remote trackerServer.AnnounceAddr) trackerServer.ServerAnnounceResult {
	var res trackerServer.ServerAnnounceResult
	if t.origin != nil {
		if o, ok := t.origin(ctx, ih); ok && o != remote {
			res.Peers = append(res.Peers, trackerServer.PeerInfo{AnnounceAddr: o})
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	for a, seen := range t.peers[ih] {
		if now.Sub(seen) > t.expire {
			delete(t.peers[ih], a)
			continue
		}
		if a == remote {
			continue
		}
		if opts.MaxCount.Ok && uint(len(res.Peers)) >= opts.MaxCount.Value {
			break
		}
		res.Peers = append(res.Peers, trackerServer.PeerInfo{AnnounceAddr: a})
	}
	res.Interval = generics.Some[int32](announceInterval)
	return res
}

// count is how many peers the tracker knows for ih.
func (t *peerTracker) count(ih [20]byte) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.peers[ih])
}

// announceHTTP is the tracker's HTTP side (BEP 3, compact peers BEP 23).
// anacrolix's own handler always encodes "failure reason" (empty), which
// standard clients such as aria2c take as a failed announce.
type announceHTTP struct {
	h *trackerServer.AnnounceHandler
}

type announceResponse struct {
	Interval   int32  `bencode:"interval"`
	Complete   int32  `bencode:"complete"`
	Incomplete int32  `bencode:"incomplete"`
	Peers      []byte `bencode:"peers"` // 6 bytes a peer: IPv4, port
}

func announceFailure(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(code)
	b, _ := bencode.Marshal(map[string]string{"failure reason": msg})
	w.Write(b)
}

func (a announceHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var event tracker.AnnounceEvent
	if err := event.UnmarshalText([]byte(q.Get("event"))); err != nil {
		announceFailure(w, http.StatusBadRequest, "event: "+err.Error())
		return
	}
	var ih, id [20]byte
	for _, f := range []struct {
		key string
		to  *[20]byte
	}{{"info_hash", &ih}, {"peer_id", &id}} {
		v := q.Get(f.key)
		if len(v) != 20 {
			announceFailure(w, http.StatusBadRequest, fmt.Sprintf("%s: %d bytes, want 20", f.key, len(v)))
			return
		}
		copy(f.to[:], v)
	}
	port, err := strconv.ParseUint(q.Get("port"), 10, 16)
	if err != nil || port == 0 {
		announceFailure(w, http.StatusBadRequest, fmt.Sprintf("port %q: want 1-65535", q.Get("port")))
		return
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip, perr := netip.ParseAddr(host)
	if err != nil || perr != nil {
		announceFailure(w, http.StatusBadRequest, "cannot tell your address")
		return
	}
	left, err := strconv.ParseInt(q.Get("left"), 10, 64)
	if err != nil {
		left = -1
	}
	addr := netip.AddrPortFrom(ip.Unmap(), uint16(port))
	res := a.h.Serve(r.Context(), tracker.AnnounceRequest{InfoHash: ih, PeerId: id, Event: event, Port: uint16(port), NumWant: -1, Left: left},
		addr, trackerServer.GetPeersOpts{MaxCount: generics.Some[uint](200)})
	if res.Err != nil {
		announceFailure(w, http.StatusInternalServerError, res.Err.Error())
		return
	}
	out := announceResponse{Interval: res.Interval.UnwrapOr(announceInterval), Complete: res.Seeders.Value, Incomplete: res.Leechers.Value}
	for _, p := range res.Peers {
		if a := p.Addr(); a.Is4() {
			b := a.As4()
			out.Peers = append(out.Peers, b[:]...)
			out.Peers = binary.BigEndian.AppendUint16(out.Peers, p.Port())
		}
	}
	b, err := bencode.Marshal(out)
	if err != nil {
		announceFailure(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write(b)
}
