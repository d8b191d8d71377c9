// Package monitor is the live view of sim serve: GET /v1/events (the
// fleet hub's events as server-sent events), GET /v1/monitor (one JSON
// snapshot of everything the view shows), and the fleet page at / that
// shows them in a browser (page.go; its files are embedded in ui/).
package monitor

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"sort"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/rollout"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/bt"
	"github.com/systemimager/sim/sync/mcast"
)

// Defaults of a Monitor's knobs.
const (
	// DefaultHeartbeat: a comment line this often keeps proxies and NATs
	// from closing an idle stream, and lets a client notice a dead one.
	DefaultHeartbeat = 15 * time.Second
	// DefaultBuffer events wait for one client; a client further behind
	// loses them and gets a fresh snapshot instead (a slow client costs
	// its own buffer, never the publisher).
	DefaultBuffer = 1024
	// DefaultWriteTimeout: a client that takes no bytes for this long is
	// dropped (its connection would otherwise hold a goroutine forever).
	DefaultWriteTimeout = 30 * time.Second
	// DefaultFiguresEvery: how often a stream looks whether the server's
	// figures, its swarms and sessions, or its refs changed (they have no
	// hub events: a multicast session's bytes change with every datagram).
	DefaultFiguresEvery = 2 * time.Second
)

// Monitor serves the live view of one server.
type Monitor struct {
	Fleet *fleet.Service
	// Rollouts, when set, fills rollout events with the whole rollout
	// (its waves, its nodes) and the snapshot with the running ones.
	Rollouts *rollout.Engine
	// Server, when set, gives the server's own figures.
	Server *simsync.Server
	// Torrents and Sessions, when set, list the BitTorrent swarms the
	// server seeds and its multicast sessions.
	Torrents func() []bt.TorrentStatus
	Sessions func() []mcast.SessionInfo
	Log      *log.Logger

	Heartbeat    time.Duration
	Buffer       int
	WriteTimeout time.Duration
	FiguresEvery time.Duration

	// epoch names this server's run: event ids are EPOCH.SEQ, so a client
	// reconnecting to a restarted server (whose hub counts from 1 again)
	// gets a snapshot rather than a wrong replay.
	epoch string
	once  gosync.Once

	mu       gosync.Mutex
	info     map[string]nodeInfo // what listing adds to a node's state
	infoTime time.Time
}

// nodeInfo is what Service.Nodes adds from the registry and the refs.
type nodeInfo struct {
	groups          []string
	image, assigned string
}

func (m *Monitor) init() {
	m.once.Do(func() {
		var b [4]byte
		rand.Read(b[:])
		m.epoch = hex.EncodeToString(b[:])
		if m.Heartbeat <= 0 {
			m.Heartbeat = DefaultHeartbeat
		}
		if m.Buffer <= 0 {
			m.Buffer = DefaultBuffer
		}
		if m.WriteTimeout <= 0 {
			m.WriteTimeout = DefaultWriteTimeout
		}
		if m.FiguresEvery <= 0 {
			m.FiguresEvery = DefaultFiguresEvery
		}
		if m.Log == nil {
			m.Log = log.New(io.Discard, "", 0)
		}
	})
}

// Mount serves GET /v1/events and GET /v1/monitor on srv, as reads.
func (m *Monitor) Mount(srv *simsync.Server) {
	m.init()
	srv.Handle("GET /v1/events", http.HandlerFunc(m.serveEvents))
	srv.Handle("GET /v1/monitor", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(m.Snapshot())
	}))
}

// Snapshot is GET /v1/monitor, and the data of a "snapshot" event.
type Snapshot struct {
	// Server is this server run's epoch, Seq the last event it covers.
	Server   string             `json:"server"`
	Seq      uint64             `json:"seq"`
	Time     time.Time          `json:"time"`
	Nodes    []fleet.NodeState  `json:"nodes"`
	Rollouts []*rollout.Rollout `json:"rollouts"`
	// Images: name → head; Tags: name → commit.
	Images map[string]string    `json:"images"`
	Tags   map[string]string    `json:"tags"`
	Stats  *simsync.ServerStats `json:"stats,omitempty"`
	Swarms
}

// Swarms are the server's BitTorrent swarms and multicast sessions: a
// snapshot's, and the data of a "swarms" event.
type Swarms struct {
	Torrents []bt.TorrentStatus  `json:"torrents"`
	Sessions []mcast.SessionInfo `json:"sessions"`
}

// Refs is the data of a "refs" event: images (name → head) and tags
// (name → commit), when one moved.
type Refs struct {
	Images map[string]string `json:"images"`
	Tags   map[string]string `json:"tags"`
}

// swarms is the server's swarms and sessions now (empty lists, never
// null, so a page need not tell "none" from "not told").
func (m *Monitor) swarms() Swarms {
	s := Swarms{Torrents: []bt.TorrentStatus{}, Sessions: []mcast.SessionInfo{}}
	if m.Torrents != nil {
		if t := m.Torrents(); t != nil {
			s.Torrents = t
		}
	}
	if m.Sessions != nil {
		if ss := m.Sessions(); ss != nil {
			s.Sessions = ss
		}
	}
	return s
}

// refs is the store's images and tags now.
func (m *Monitor) refs() Refs {
	r := Refs{Images: map[string]string{}, Tags: map[string]string{}}
	st := m.Fleet.Store
	if ims, err := st.Images(); err == nil {
		for _, im := range ims {
			r.Images[im.Name] = im.Head.String()
		}
	} else {
		m.Log.Printf("monitor: images: %v", err)
	}
	if tags, err := st.Tags(); err == nil {
		for _, t := range tags {
			r.Tags[t.Name] = t.Commit.String()
		}
	} else {
		m.Log.Printf("monitor: tags: %v", err)
	}
	return r
}

// RecentRollouts is how many ended rollouts a snapshot carries besides
// the running, paused and halted ones.
const RecentRollouts = 10

// Snapshot is everything the view shows, now.
func (m *Monitor) Snapshot() Snapshot {
	m.init()
	// Seq first: the state taken after it covers at least the events up to
	// it (a later event sent again is harmless: every event is a state).
	s := Snapshot{Server: m.epoch, Seq: m.Fleet.Hub().Seq(), Time: time.Now().UTC(), Rollouts: []*rollout.Rollout{}}
	s.Nodes = m.Fleet.Nodes()
	m.remember(s.Nodes)
	refs := m.refs()
	s.Images, s.Tags = refs.Images, refs.Tags
	s.Swarms = m.swarms()
	all, err := rollout.List(m.Fleet.Store.Dir())
	if err != nil {
		m.Log.Printf("monitor: rollouts: %v", err)
	}
	ended := 0
	for i := len(all) - 1; i >= 0; i-- {
		r := all[i]
		live := r.State == rollout.Running || r.State == rollout.Paused || r.State == rollout.Halted
		if !live {
			if ended >= RecentRollouts {
				continue
			}
			ended++
		}
		if m.Rollouts != nil {
			if cur, err := m.Rollouts.Get(r.ID); err == nil {
				r = cur
			}
		}
		s.Rollouts = append(s.Rollouts, r)
	}
	sort.Slice(s.Rollouts, func(i, j int) bool { return rolloutNum(s.Rollouts[i].ID) < rolloutNum(s.Rollouts[j].ID) })
	if m.Server != nil {
		ss := m.Server.Stats()
		s.Stats = &ss
	}
	return s
}

func rolloutNum(id string) int { n, _ := strconv.Atoi(strings.TrimPrefix(id, "r")); return n }

func (m *Monitor) remember(nodes []fleet.NodeState) {
	info := make(map[string]nodeInfo, len(nodes))
	for _, n := range nodes {
		info[n.Name] = nodeInfo{n.Groups, n.Image, n.Assigned}
	}
	m.mu.Lock()
	m.info, m.infoTime = info, time.Now()
	m.mu.Unlock()
}

// complete adds to a node event's state what listing adds (groups, the
// assigned commit), from a listing at most a second old: a hub event
// carries only what the node said, and 1,000 nodes reporting must not
// read the registry 1,000 times.
func (m *Monitor) complete(s *fleet.NodeState) {
	m.mu.Lock()
	stale := time.Since(m.infoTime) > time.Second
	m.mu.Unlock()
	if stale {
		m.remember(m.Fleet.Nodes())
	}
	m.mu.Lock()
	in, ok := m.info[s.Name]
	m.mu.Unlock()
	if !ok {
		return
	}
	s.Groups, s.Assigned = in.groups, in.assigned
	if s.Image == "" {
		s.Image = in.image
	}
}

// Message is the data of one "node" or "rollout" event of GET
// /v1/events: the hub's event, with the whole rollout for a rollout's.
type Message struct {
	fleet.Event
	Detail *rollout.Rollout `json:"detail,omitempty"`
}

// eventID is an SSE id: EPOCH.SEQ.
func (m *Monitor) eventID(seq uint64) string { return m.epoch + "." + strconv.FormatUint(seq, 10) }

// lastSeq is the sequence number a Last-Event-ID names, when it is one
// of this run's.
func (m *Monitor) lastSeq(id string) (uint64, bool) {
	ep, n, ok := strings.Cut(id, ".")
	if !ok || ep != m.epoch {
		return 0, false
	}
	seq, err := strconv.ParseUint(n, 10, 64)
	return seq, err == nil
}

// serveEvents is GET /v1/events: a "snapshot" event first (or, for a
// client reconnecting with Last-Event-ID, the events it missed), then a
// "node" or "rollout" event per change; a "stats", "swarms" or "refs"
// event when the server's figures, its swarms and sessions or its refs
// changed (looked at every FiguresEvery); and a comment line every
// Heartbeat.
func (m *Monitor) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		// EventSource cannot set headers on its first request; a page
		// that kept its place passes it in the query.
		last = r.URL.Query().Get("last")
	}
	hub := m.Fleet.Hub()
	var (
		sub    *fleet.Subscription
		missed []fleet.Event
		replay bool
	)
	if seq, ok := m.lastSeq(last); ok {
		sub, missed, replay = hub.SubscribeAfter(seq, m.Buffer)
	} else {
		sub = hub.Subscribe(m.Buffer)
	}
	defer sub.Close()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not hold the stream back
	w.WriteHeader(http.StatusOK)

	c := &sseConn{w: w, rc: rc, timeout: m.WriteTimeout}
	// The client's retry delay after a lost connection (a restart).
	c.raw("retry: 2000\n\n")
	var sent uint64 // the last hub event this client has (by Seq)
	// What this client was told of the figures without hub events. A
	// client resuming a stream may have missed their changes too, so it
	// is told them all at once (stats: -1 fetches differs from any).
	var (
		stats                simsync.ServerStats
		swarmsSeen, refsSeen []byte
	)
	snapshot := func() {
		s := m.Snapshot()
		c.event("snapshot", m.eventID(s.Seq), s)
		sent = s.Seq
		if s.Stats != nil {
			stats = *s.Stats
		}
		swarmsSeen, _ = json.Marshal(s.Swarms)
		refsSeen, _ = json.Marshal(Refs{s.Images, s.Tags})
	}
	if replay {
		for _, e := range missed {
			c.event(e.Type, m.eventID(e.Seq), m.message(e))
			sent = e.Seq
		}
		stats.Fetches = -1
	} else {
		snapshot()
	}
	// figures sends what changed of the server's figures, swarms and refs.
	figures := func() {
		if m.Server != nil {
			if now := m.Server.Stats(); now != stats {
				stats = now
				c.event("stats", m.eventID(sent), now)
			}
		}
		sw := m.swarms()
		if b, _ := json.Marshal(sw); string(b) != string(swarmsSeen) {
			swarmsSeen = b
			c.event("swarms", m.eventID(sent), sw)
		}
		rf := m.refs()
		if b, _ := json.Marshal(rf); string(b) != string(refsSeen) {
			refsSeen = b
			c.event("refs", m.eventID(sent), rf)
		}
	}
	if replay {
		figures()
	}
	if !c.flush() {
		return
	}
	// send writes one hub event, or all of the state again when this
	// client fell behind and lost events (what it has is wrong somewhere).
	send := func(e fleet.Event) {
		if e.Missed > 0 {
			snapshot()
		}
		if e.Seq > sent {
			c.event(e.Type, m.eventID(e.Seq), m.message(e))
			sent = e.Seq
		}
	}
	hb := time.NewTicker(m.Heartbeat)
	defer hb.Stop()
	fig := time.NewTicker(m.FiguresEvery)
	defer fig.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case e, open := <-sub.C:
			if !open {
				return
			}
			send(e)
			// Send what is queued at once, then flush once: 1,000 nodes
			// reporting make one write per burst, not one per event.
		drain:
			for {
				select {
				case e, open := <-sub.C:
					if !open {
						break drain
					}
					send(e)
				default:
					break drain
				}
			}
		case <-fig.C:
			figures()
		case <-hb.C:
			c.raw(": " + time.Now().UTC().Format(time.RFC3339) + "\n\n")
		}
		if !c.flush() {
			return
		}
	}
}

// message is what a hub event says to a client.
func (m *Monitor) message(e fleet.Event) Message {
	msg := Message{Event: e}
	if e.Node != nil {
		n := *e.Node
		m.complete(&n)
		msg.Node = &n
	}
	if e.Rollout != nil && m.Rollouts != nil {
		if r, err := m.Rollouts.Get(e.Rollout.ID); err == nil {
			msg.Detail = r
		}
	}
	return msg
}

// sseConn writes one client's stream; the first failed write ends it.
type sseConn struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	err     error
}

func (c *sseConn) raw(s string) {
	if c.err != nil {
		return
	}
	// A client that stops reading fails the write after timeout, instead
	// of holding this goroutine and its buffer for good.
	c.rc.SetWriteDeadline(time.Now().Add(c.timeout))
	_, c.err = io.WriteString(c.w, s)
}

func (c *sseConn) event(typ, id string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		c.err = fmt.Errorf("event %s %s: %w", typ, id, err)
		return
	}
	// JSON has no raw newline, so the data is one data: line.
	c.raw("event: " + typ + "\nid: " + id + "\ndata: " + string(b) + "\n\n")
}

func (c *sseConn) flush() bool {
	if c.err == nil {
		c.err = c.rc.Flush()
	}
	return c.err == nil
}
