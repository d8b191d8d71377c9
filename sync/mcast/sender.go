package mcast

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/seal"
)

// Config configures a Manager: how sessions send.
type Config struct {
	// Group is the first session's group; later sessions take the next
	// addresses (last octet + 1, wrapping within the /24), same port.
	Group *net.UDPAddr
	// RateBits caps the send rate in bit/s, counted like a link shaper
	// counts: each datagram plus its IP, UDP and Ethernet headers. 0: no
	// cap but the interface's speed (when /sys/class/net knows it). The
	// rate itself is found from the receivers' loss reports (see pacer).
	RateBits int64
	// Wait is how long a session registers receivers before sending;
	// MinReceivers (if > 0) starts it as soon as that many joined.
	Wait         time.Duration
	MinReceivers int
	// Iface sends on this interface; nil: the one that routes to the
	// first receiver (Open via HTTP) or the only multicast one.
	Iface *net.Interface
	// MTU caps the datagram size (0: the interface's MTU).
	MTU int
	TTL int
	// MaxPasses bounds the passes (the first one plus repairs); what is
	// still missing after them comes over HTTP.
	MaxPasses int
	// Collect is how long the end of a pass waits for NAKs at most.
	Collect time.Duration
	// Sealed seals every session (ARCHITECTURE.md "Multicast: sealed
	// sessions"): a random key per session, handed out only with the
	// session's document (POST /v1/mcast/open, behind the server's read
	// token), every data datagram's payload encrypted under it. sim serve
	// sets it when reads need a token.
	Sealed bool
	// FEC is the forward error correction of every session (the zero
	// value: auto, K = DefaultFECK; FEC.Off: none).
	FEC FEC
	Log *log.Logger
}

// Defaults.
const (
	DefaultGroup = "239.192.83.1:7490"
	// DefaultRateBits is no cap: the sender finds the rate the path
	// takes (a fixed default is too fast for some links and too slow
	// for others).
	DefaultRateBits = 0
	DefaultPasses   = 8
	// stragglerLoss, stragglerGap: at a pass end, a receiver that lost
	// more than stragglerLoss of the datagrams and stragglerGap more than
	// the median receiver is dropped from repairs (its link is slower
	// than the others') and fills over HTTP, so it never holds up the
	// others. When the median itself is high the rate is wrong, not the
	// nodes: nobody is dropped for it, and never more than half.
	stragglerLoss = 0.5
	stragglerGap  = 0.25
	announceEvery = 200 * time.Millisecond
	memberTimeout = 10 * time.Second
	// adaptEvery is how often the send loop looks at the loss reports.
	adaptEvery = 20 * time.Millisecond
	// noCapBits stands for "no cap" when the interface speed is unknown.
	noCapBits = 100_000_000_000
)

func (c *Config) defaults() {
	if c.Group == nil {
		c.Group, _ = net.ResolveUDPAddr("udp4", DefaultGroup)
	}
	if c.RateBits < 0 {
		c.RateBits = 0
	}
	if c.TTL <= 0 {
		c.TTL = 1
	}
	if c.MaxPasses <= 0 {
		c.MaxPasses = DefaultPasses
	}
	if c.Collect <= 0 {
		c.Collect = time.Second
	}
	if c.Log == nil {
		c.Log = log.New(io.Discard, "", 0)
	}
	if !c.FEC.Off && c.FEC.K == 0 {
		c.FEC.K = DefaultFECK
	}
}

// Manager runs the multicast sessions of one store: one per wanted
// commit at a time, sharing one rate limit.
type Manager struct {
	cfg   Config
	st    *store.Store
	pl    *simsync.Planner
	pacer *pacer

	mu       gosync.Mutex
	sessions []*Session // active ones and the last few finished
	next     int
	ctx      context.Context
	cancel   context.CancelFunc
	wg       gosync.WaitGroup
}

// NewManager makes a manager sending from st (planning with pl).
func NewManager(st *store.Store, pl *simsync.Planner, cfg Config) *Manager {
	cfg.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg, st: st, pl: pl, pacer: newPacer(), ctx: ctx, cancel: cancel}
}

// Close ends every session and waits for them.
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// OpenOptions override the manager's Config for one session.
type OpenOptions struct {
	Wait         time.Duration
	MinReceivers int
	RateBits     int64
	// Via is a receiver's address: the session sends on the interface
	// that routes to it (when Config.Iface is nil).
	Via net.IP
}

// Open returns the session for want that still takes receivers, or
// starts one.
func (m *Manager) Open(want chunk.ID, o OpenOptions) (*Session, error) {
	if ok, err := m.st.HasCommit(want); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("multicast: no commit %s here: %w", want.Short(), store.ErrNotFound)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.ctx.Err(); err != nil {
		return nil, errors.New("multicast: shutting down")
	}
	for _, s := range m.sessions {
		if s.Want == want && s.state.Load() != StateDone {
			return s, nil
		}
	}
	ifi, ip, err := m.pickInterface(o.Via)
	if err != nil {
		return nil, err
	}
	g := m.cfg.Group.IP.To4()
	if g == nil || !g.IsMulticast() {
		return nil, fmt.Errorf("multicast: group %s is not an IPv4 multicast address", m.cfg.Group.IP)
	}
	grp := &net.UDPAddr{IP: net.IPv4(g[0], g[1], g[2], byte((int(g[3])+m.next)%256)), Port: m.cfg.Group.Port}
	m.next++
	s, err := m.newSession(want, grp, ifi, ip, o)
	if err != nil {
		return nil, err
	}
	m.sessions = append(m.sessions, s)
	// keep the finished ones for listing, not forever
	var keep []*Session
	done := 0
	for i := len(m.sessions) - 1; i >= 0; i-- {
		x := m.sessions[i]
		if x.state.Load() == StateDone {
			if done++; done > 16 {
				continue
			}
		}
		keep = append(keep, x)
	}
	slices.Reverse(keep)
	m.sessions = keep
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		s.run(m.ctx)
	}()
	return s, nil
}

// pickInterface chooses where a session sends from.
func (m *Manager) pickInterface(via net.IP) (*net.Interface, net.IP, error) {
	if m.cfg.Iface != nil {
		ip, err := ifaceIPv4(m.cfg.Iface)
		return m.cfg.Iface, ip, err
	}
	if via != nil {
		// The kernel's route to the receiver names our address on the
		// right interface (nothing is sent by a UDP "connect").
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: via, Port: 9})
		if err == nil {
			local := c.LocalAddr().(*net.UDPAddr).IP
			c.Close()
			if ifi, err := ifaceOf(local); err == nil {
				return ifi, local, nil
			}
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, nil, err
	}
	var cand []net.Interface
	for _, i := range ifs {
		if i.Flags&net.FlagUp != 0 && i.Flags&net.FlagMulticast != 0 && i.Flags&net.FlagLoopback == 0 {
			if _, err := ifaceIPv4(&i); err == nil {
				cand = append(cand, i)
			}
		}
	}
	if len(cand) != 1 {
		return nil, nil, fmt.Errorf("multicast: %d candidate interfaces: name one (--iface)", len(cand))
	}
	ip, _ := ifaceIPv4(&cand[0])
	return &cand[0], ip, nil
}

func ifaceIPv4(ifi *net.Interface) (net.IP, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4(), nil
		}
	}
	return nil, fmt.Errorf("multicast: interface %s has no IPv4 address", ifi.Name)
}

func ifaceOf(ip net.IP) (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for i := range ifs {
		addrs, _ := ifs[i].Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return &ifs[i], nil
			}
		}
	}
	return nil, fmt.Errorf("multicast: no interface has address %s", ip)
}

// Sessions describes every session the manager knows, oldest first.
func (m *Manager) Sessions() []SessionInfo {
	m.mu.Lock()
	ss := slices.Clone(m.sessions)
	m.mu.Unlock()
	out := make([]SessionInfo, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.Info())
	}
	return out
}

// Session is one multicast of what its receivers lack of commit Want.
type Session struct {
	ID    uint32
	Want  chunk.ID
	Group *net.UDPAddr
	Iface string

	m        *Manager
	speedCap int64 // the interface's speed, bit/s (0: unknown)
	opts     OpenOptions
	conn     *net.UDPConn
	pc       *ipv4.PacketConn
	block    int
	created  time.Time
	// key and sealer: a sealed session's (sealer nil: plain)
	key    seal.Key
	sealer *seal.Sealer
	ctlKey *seal.Sealer
	sndKey *seal.Sealer
	sndCtr atomic.Uint64 // sender datagrams sealed (their nonces)
	fecKey *seal.Sealer  // a sealed session's repair key
	// fec: the session's FEC (fec.Off: none); fecEnc and fecPs (the loss
	// auto sizes R for) belong to the send loop
	fec    FEC
	fecEnc fecEncoder
	fecPs  []float64 // the active members' loss estimates
	// FEC counters: groups sent with repair shards, repair datagrams,
	// the expected number of groups some member cannot rebuild (the
	// sum over groups of min(1, Σ members' P(failure))), and the
	// distinct groups members asked repairs for after all (NAKs of
	// blocks, not of whole objects). fecStat under mu.
	fecStat fecStats
	nakGrp  map[uint64]bool
	// ctrSeen is the last control counter of each node that sent a
	// sealed control datagram (replays are dropped); badCtl counts those
	// that did not open (only the first few are logged: a stranger
	// could fill the log). Control goroutine.
	ctrSeen map[uint64]uint32
	badCtl  int

	state   atomic.Uint32
	seq     atomic.Uint32
	sentB   atomic.Int64
	pass    atomic.Uint32
	content atomic.Pointer[Content]

	// lossFloor is the lowest median loss seen (-1: none yet): the loss
	// the receivers have whatever the rate (a bad cable, a busy host).
	// Only loss above it says the rate is too high. Used by the send
	// loop only.
	lossFloor float64

	mu       gosync.Mutex
	oldProto map[string]bool // addresses heard speaking another protocol version (logged once)
	members  map[uint64]*member
	naks     map[uint32]*nakSet // union of what receivers lack, this pass
	started  time.Time
	finished time.Time
	err      error
	done     chan struct{}
}

type member struct {
	node     uint64
	name     string
	addr     *net.UDPAddr
	haves    []chunk.ID
	joined   time.Time
	lastSeen time.Time
	late     bool // joined after the plan was made
	status   Status
	dropped  bool
	answered uint8 // last pass it sent a NAK or "done" for
	naks     int   // ranges reported, all passes
	// loss over the last report interval, for the rate control: the
	// interval ran from ivFrom to ivAt (when its first and last reports
	// arrived here)
	prevRecv, prevLost uint64
	ivLoss             float64
	ivFrom, ivAt       time.Time
	ivMark             time.Time // the current interval's start
}

// fecStats is what a session's FEC did (SessionInfo).
type fecStats struct {
	groups, shards int64
	predicted      float64
	repairGroups   int64
	repairBlocks   int64 // data datagrams of repair passes
}

// nakSet is the blocks of one object someone lacks; whole: all of it.
type nakSet struct {
	whole  bool
	blocks map[uint32]bool
}

func (m *Manager) newSession(want chunk.ID, grp *net.UDPAddr, ifi *net.Interface, ip net.IP, o OpenOptions) (*Session, error) {
	var idb [4]byte
	for binary.BigEndian.Uint32(idb[:]) == 0 {
		rand.Read(idb[:])
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, fmt.Errorf("multicast: socket on %s: %w", ip, err)
	}
	setBuf(conn, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, 8<<20)
	setBuf(conn, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, 4<<20)
	pc := ipv4.NewPacketConn(conn)
	for _, err := range []error{pc.SetMulticastInterface(ifi), pc.SetMulticastTTL(m.cfg.TTL), pc.SetMulticastLoopback(true)} {
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("multicast: socket options on %s: %w", ifi.Name, err)
		}
	}
	mtu := ifi.MTU
	if m.cfg.MTU > 0 && m.cfg.MTU < mtu {
		mtu = m.cfg.MTU
	}
	if mtu <= 0 || mtu > 9000 {
		mtu = min(max(mtu, 1500), 9000)
	}
	s := &Session{
		ID: binary.BigEndian.Uint32(idb[:]), Want: want, Group: grp, Iface: ifi.Name, speedCap: ifaceSpeed(ifi.Name),
		m: m, opts: o, conn: conn, pc: pc, block: BlockFor(mtu, m.cfg.Sealed, !m.cfg.FEC.Off), created: time.Now(),
		members: map[uint64]*member{}, done: make(chan struct{}), lossFloor: -1,
		fec: m.cfg.FEC, nakGrp: map[uint64]bool{}, oldProto: map[string]bool{},
	}
	s.fecEnc.block = s.block
	if m.cfg.Sealed {
		// A fresh key per session, from no secret: nothing that outlives
		// the session (a store secret, a previous session's key) opens
		// its datagrams.
		var ck seal.Key
		if s.key, err = seal.NewKey(); err == nil {
			s.sealer, err = seal.New(s.key)
		}
		if err == nil {
			ck, err = ControlKey(s.key)
		}
		if err == nil {
			s.ctlKey, err = seal.New(ck)
		}
		if err == nil {
			ck, err = SenderKey(s.key)
		}
		if err == nil {
			s.sndKey, err = seal.New(ck)
		}
		if err == nil {
			ck, err = RepairKey(s.key)
		}
		if err == nil {
			s.fecKey, err = seal.New(ck)
		}
		s.ctrSeen = map[uint64]uint32{}
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("multicast: session key: %w", err)
		}
	}
	s.state.Store(StateWaiting)
	return s, nil
}

// ifaceSpeed is the link speed of interface name in bit/s, 0 when the
// kernel does not know it (virtual interfaces often report -1).
func ifaceSpeed(name string) int64 {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "speed"))
	if err != nil {
		return 0
	}
	mbit, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || mbit <= 0 {
		return 0
	}
	return mbit * 1_000_000
}

// setBuf sets a socket buffer, past the sysctl limit when we may.
func setBuf(c *net.UDPConn, force, plain, n int) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, n) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, n)
		}
	})
}

// Sealed says whether the session seals its data.
func (s *Session) Sealed() bool { return s.sealer != nil }

// Key is a sealed session's key (false: a plain session). It is for the
// session's document only (served behind the read token), never for a
// listing or a log.
func (s *Session) Key() (seal.Key, bool) { return s.key, s.sealer != nil }

// Done is closed when the session is over.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session failed, after Done.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Session) logf(format string, args ...any) {
	s.m.cfg.Log.Printf("multicast session %08x (%s): "+format, append([]any{s.ID, s.Want.Short()}, args...)...)
}

func (s *Session) run(ctx context.Context) {
	defer close(s.done)
	// Pacing needs timely wake-ups: on a busy server a thread that gets
	// the CPU tens of milliseconds late cannot keep the rate (the bucket
	// holds 20 ms). The session runs on a thread of its own at a higher
	// priority when allowed (root); the thread ends with the session
	// (a locked goroutine's thread is not reused), so nothing else
	// inherits the priority.
	runtime.LockOSThread()
	unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), -10)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.control(ctx)
	err := s.send(ctx)
	s.mu.Lock()
	s.err = err
	s.finished = time.Now()
	s.mu.Unlock()
	if err != nil {
		s.logf("failed: %v", err)
	}
	// The end is announced a few times: it tells receivers to stop
	// waiting and fill the rest over HTTP.
	s.state.Store(StateDone)
	for i := 0; i < 5; i++ {
		s.announce()
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	s.conn.Close()
	if c := s.content.Load(); c != nil {
		c.Close()
	}
	s.logf("done: %s", s.summary())
}

func (s *Session) summary() string {
	inf := s.Info()
	counts := map[string]int{}
	for _, mb := range inf.Members {
		counts[mb.State]++
	}
	fec := ""
	if inf.FEC != "off" {
		fec = fmt.Sprintf(", FEC %s: %d repair shards over %d blocks, %d blocks needed repairs (%.1f expected), %d repair datagrams",
			inf.FEC, inf.FECShards, inf.FECGroups, inf.RepairGroups, inf.FECPredicted, inf.RepairBlocks)
	}
	return fmt.Sprintf("%d passes, %s sent, %d members %v%s", inf.Pass, fmtB(inf.SentBytes), len(inf.Members), counts, fec)
}

func fmtB(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// send is the session's state machine: waiting → sending ⇄ collecting → done.
func (s *Session) send(ctx context.Context) error {
	wait, minR := s.m.cfg.Wait, s.m.cfg.MinReceivers
	if s.opts.Wait > 0 {
		wait = s.opts.Wait
	}
	if s.opts.MinReceivers > 0 {
		minR = s.opts.MinReceivers
	}
	s.logf("waiting up to %v for receivers (start at %d) on %s via %s", wait, minR, s.Group, s.Iface)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		s.announce()
		s.mu.Lock()
		n := len(s.members)
		s.mu.Unlock()
		if (minR > 0 && n >= minR) || time.Since(s.created) >= wait {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	s.mu.Lock()
	var haveSets [][]chunk.ID
	for _, mb := range s.members {
		haveSets = append(haveSets, mb.haves)
	}
	n := len(s.members)
	s.started = time.Now()
	s.mu.Unlock()
	if len(haveSets) == 0 {
		haveSets = [][]chunk.ID{nil} // nobody registered: everything
	}
	t0 := time.Now()
	c, err := Prepare(ctx, s.m.st, s.m.pl, s.Want, haveSets)
	if err != nil {
		return err
	}
	s.content.Store(c)
	s.m.pacer.begin(s.maxRate())
	defer s.m.pacer.end()
	dgram, how := s.block+dataHead+trailerLen, ""
	if s.sealer != nil {
		dgram, how = dgram+seal.Overhead, " sealed"
	}
	if !s.fec.Off {
		how += ", FEC " + s.fec.String() + fmt.Sprintf(" (K=%d)", s.fec.K)
	}
	s.logf("sending %d objects (%s, %d blobs, planned in %v) to %d receivers, %d-byte%s datagrams",
		c.NumObjects(), fmtB(c.Bytes), c.Blobs, time.Since(t0).Round(time.Millisecond), n, dgram, how)
	// pass 1: everything
	all := map[uint32]*nakSet{}
	for i := 0; i < c.NumObjects(); i++ {
		all[uint32(i)] = &nakSet{whole: true}
	}
	work := all
	for pass := 1; ; pass++ {
		s.pass.Store(uint32(pass))
		s.state.Store(StateSending)
		t0, b0 := time.Now(), s.sentB.Load()
		if err := s.sendPass(ctx, c, work); err != nil {
			return err
		}
		dt := time.Since(t0)
		s.logf("pass %d: %s in %v (%.0f Mbit/s)", pass, fmtB(s.sentB.Load()-b0), dt.Round(time.Millisecond), float64(s.sentB.Load()-b0)*8/dt.Seconds()/1e6)
		if pass >= s.m.cfg.MaxPasses {
			return nil
		}
		work = s.collect(ctx, uint8(pass))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if len(work) == 0 {
			return nil
		}
	}
}

// collect ends pass: it asks for NAKs, drops stragglers, and waits
// until every active receiver answered (or Collect passed). It returns
// the union of what they lack.
func (s *Session) collect(ctx context.Context, pass uint8) map[uint32]*nakSet {
	s.mu.Lock()
	s.naks = map[uint32]*nakSet{}
	s.dropStragglers()
	s.mu.Unlock()
	s.state.Store(StateCollecting)
	deadline := time.Now().Add(s.m.cfg.Collect)
	for time.Now().Before(deadline) {
		s.announce()
		s.sendDrops()
		if s.allAnswered(pass) {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.naks
	s.naks = nil
	return out
}

// dropStragglers drops the members whose loss is far above the
// median's: their links are slower than the others', and repairing for
// them would hold everyone up. A high median loss means the rate is
// wrong (the rate control lowers it), not the nodes: nobody is dropped
// for it, and never more than half of the members. s.mu is held.
func (s *Session) dropStragglers() {
	type cand struct {
		mb   *member
		loss float64
	}
	var cs []cand
	var losses []float64
	members, dropped := 0, 0
	for _, mb := range s.members {
		members++
		if mb.dropped {
			dropped++
			continue
		}
		st := mb.status
		tot := st.Received + st.Lost
		if st.Done || tot <= 200 || time.Since(mb.lastSeen) > memberTimeout {
			continue
		}
		l := float64(st.Lost) / float64(tot)
		cs = append(cs, cand{mb, l})
		losses = append(losses, l)
	}
	if len(cs) == 0 {
		return
	}
	med := lowerMedian(losses)
	sort.Slice(cs, func(i, j int) bool { return cs[i].loss > cs[j].loss })
	for _, c := range cs {
		if c.loss <= stragglerLoss || c.loss <= med+stragglerGap || (dropped+1)*2 > members {
			break
		}
		c.mb.dropped = true
		dropped++
		s.logf("member %s (%s) dropped: lost %.0f%% of the datagrams (median %.0f%%); it fills over HTTP", c.mb.name, c.mb.addr, 100*c.loss, 100*med)
	}
}

// lowerMedian is the median of xs (the lower middle one of an even
// count: with half the receivers behind a slow link, the fast half
// sets the pace). xs is sorted in place.
func lowerMedian(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[(len(xs)-1)/2]
}

func (s *Session) allAnswered(pass uint8) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, mb := range s.members {
		if mb.dropped || mb.status.Done || time.Since(mb.lastSeen) > memberTimeout {
			continue
		}
		if mb.answered < pass {
			return false
		}
	}
	return true
}

func (s *Session) sendDrops() {
	s.mu.Lock()
	var addrs []*net.UDPAddr
	var nodes []uint64
	for _, mb := range s.members {
		if mb.dropped && !mb.status.Done {
			addrs = append(addrs, mb.addr)
			nodes = append(nodes, mb.node)
		}
	}
	s.mu.Unlock()
	for i, a := range addrs {
		s.sendTo(AppendMember(nil, s.ID, &Member{Node: nodes[i], State: MemberDropped}), a)
	}
}

// sendPass multicasts the blocks of work, objects in order, paced.
func (s *Session) sendPass(ctx context.Context, c *Content, work map[uint32]*nakSet) error {
	objs := make([]uint32, 0, len(work))
	for o := range work {
		objs = append(objs, o)
	}
	slices.Sort(objs)
	// Receivers learn the plan's shape (object count, block size) from
	// the announcement: it goes first, or they would drop what comes
	// before it.
	for i := 0; i < 3; i++ {
		s.announce()
	}
	s.fecLoss()
	var buf []byte
	const batch = 32
	msgs := make([]ipv4.Message, 0, batch)
	bufs := make([][]byte, batch)
	lastAnn := time.Now()
	lastAdapt := time.Now()
	flush := func() error {
		if len(msgs) == 0 {
			return nil
		}
		l2 := 0
		for _, m := range msgs {
			l2 += len(m.Buffers[0]) + IPUDPOverhead + 14
		}
		if err := s.m.pacer.wait(ctx, l2); err != nil {
			return err
		}
		for sent := 0; sent < len(msgs); {
			n, err := s.pc.WriteBatch(msgs[sent:], 0)
			if err != nil {
				if errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN) {
					time.Sleep(time.Millisecond)
					continue
				}
				return fmt.Errorf("multicast send: %w", err)
			}
			sent += n
		}
		s.sentB.Add(int64(l2))
		msgs = msgs[:0]
		if time.Since(lastAnn) >= announceEvery {
			s.announce()
			lastAnn = time.Now()
		}
		if time.Since(lastAdapt) >= adaptEvery {
			s.adaptRate()
			s.fecLoss()
			lastAdapt = time.Now()
		}
		return nil
	}
	push := func() error {
		if len(msgs) == batch {
			return flush()
		}
		return nil
	}
	for _, o := range objs {
		data, err := c.Read(int(o), buf)
		if err != nil {
			return err
		}
		if o != 0 {
			buf = data
		}
		ns := work[o]
		nb := (len(data) + s.block - 1) / s.block
		for b := 0; b < nb; b++ {
			if !ns.whole && !ns.blocks[uint32(b)] {
				continue
			}
			off := b * s.block
			end := min(off+s.block, len(data))
			i := len(msgs)
			d := &Data{Seq: s.seq.Add(1), Object: o, ObjLen: uint32(len(data)), Offset: uint32(off), Payload: data[off:end]}
			if s.sealer != nil {
				// repairs too: every data datagram of a sealed session
				bufs[i] = AppendSealedData(bufs[i][:0], s.ID, d, s.sealer)
			} else {
				bufs[i] = AppendData(bufs[i][:0], s.ID, d)
			}
			msgs = append(msgs, ipv4.Message{Buffers: [][]byte{bufs[i]}, Addr: s.Group})
			if !ns.whole {
				s.mu.Lock()
				s.fecStat.repairBlocks++
				s.mu.Unlock()
			}
			if err := push(); err != nil {
				return err
			}
			// A whole object's FEC blocks end with their repair shards
			// (the blocks of a repair pass go without: few, scattered).
			if s.fec.Off || !ns.whole || ((b+1)%s.fec.K != 0 && b+1 != nb) {
				continue
			}
			first := b - b%s.fec.K
			k := b + 1 - first
			r, fail := s.repairs(k)
			if r == 0 {
				continue
			}
			par, err := s.fecEnc.encode(data, first, k, r)
			if err != nil {
				return err
			}
			for j := 0; j < r; j++ {
				i := len(msgs)
				x := &Repair{Seq: s.seq.Add(1), Object: o, ObjLen: uint32(len(data)), First: uint32(first),
					K: uint8(k), M: uint8(fecCodeParity(k)), Index: uint8(j), Shard: par[j]}
				if s.fecKey != nil {
					bufs[i] = AppendSealedRepair(bufs[i][:0], s.ID, x, s.fecKey)
				} else {
					bufs[i] = AppendRepair(bufs[i][:0], s.ID, x)
				}
				msgs = append(msgs, ipv4.Message{Buffers: [][]byte{bufs[i]}, Addr: s.Group})
				if err := push(); err != nil {
					return err
				}
			}
			s.mu.Lock()
			s.fecStat.groups++
			s.fecStat.shards += int64(r)
			s.fecStat.predicted += fail
			s.mu.Unlock()
		}
	}
	return flush()
}

// repairs is how many repair shards a group of k data blocks gets now
// (auto: sized to the members' reported loss; fixed R/K: R scaled to k,
// at least 1), and the chance that some member cannot rebuild it.
func (s *Session) repairs(k int) (int, float64) {
	if s.fec.R > 0 {
		r := min(max((s.fec.R*k+s.fec.K-1)/s.fec.K, 1), fecCodeParity(k))
		return r, fecFailureFor(k, r, s.fecPs)
	}
	return fecRepairsFor(k, s.fecPs)
}

// fecLoss takes the losses FEC is sized for: those of the members still
// receiving (not dropped, not done), each member's estimated over all
// it reported so far with a prior of 1%, as if it
// had lost 1 of 100 more datagrams: before the first reports (the
// first groups of a session) R is sized for 1%, and a few hundred
// datagrams later the member's own figure dominates (0 lost of 10,000:
// 0.01%). A straggler is dropped at the pass end; until then its loss
// counts (what it cannot rebuild is repaired). Send loop.
func (s *Session) fecLoss() {
	if s.fec.Off {
		return
	}
	now := time.Now()
	ps := s.fecPs[:0]
	s.mu.Lock()
	for _, mb := range s.members {
		if mb.dropped || mb.status.Done || now.Sub(mb.lastSeen) > 2*time.Second {
			continue
		}
		st := mb.status
		ps = append(ps, min(float64(st.Lost+fecPriorLost)/float64(st.Received+st.Lost+fecPriorTotal), 0.5))
	}
	s.mu.Unlock()
	s.fecPs = ps
}

// adaptRate hands the pacer the median receiver's loss since the
// pacer's last decision. Only reports covering that time count (one
// about the old rate says nothing of the new one), and only once half
// of the receivers sent one, so that the median is not one lossy node's
// figure; that node is a straggler, dropped at the pass end. Right after
// a raise, a report that covers part of the new rate already counts if
// it shows congestion: overshooting the link is what must stop soonest.
func (s *Session) adaptRate() {
	since, cut := s.m.pacer.lastDecision()
	from := since.Add(drainTime)
	now := time.Now()
	var fresh, recent []float64
	active := 0
	s.mu.Lock()
	for _, mb := range s.members {
		if mb.dropped || mb.status.Done || now.Sub(mb.lastSeen) > 2*time.Second {
			continue
		}
		active++
		switch {
		case mb.ivAt.IsZero():
		case !mb.ivFrom.Before(from):
			fresh = append(fresh, mb.ivLoss)
			recent = append(recent, mb.ivLoss)
		case mb.ivAt.After(from):
			recent = append(recent, mb.ivLoss)
		}
	}
	s.mu.Unlock()
	if active == 0 {
		return
	}
	var r int64
	var why string
	switch {
	case len(fresh)*2 >= active:
		med := lowerMedian(fresh)
		r, why = s.m.pacer.adapt(med, s.lossFloor, s.maxRate(), false)
		if r != 0 {
			why = fmt.Sprintf("median loss %.1f%% (floor %.1f%%): %s", med*100, max(s.lossFloor, 0)*100, why)
		}
		if s.lossFloor < 0 || med < s.lossFloor {
			s.lossFloor = med
		}
	case !cut && len(recent)*2 >= active:
		med := lowerMedian(recent)
		r, why = s.m.pacer.adapt(med, s.lossFloor, s.maxRate(), true)
		if r != 0 {
			why = fmt.Sprintf("median loss %.1f%% right after a raise: %s", med*100, why)
		}
	}
	if r != 0 {
		s.logf("%s: rate now %.0f Mbit/s", why, float64(r)/1e6)
	}
}

// maxRate is the session's rate cap in bit/s: the lower of the
// manager's and the session's caps and the interface speed, when any is
// known.
func (s *Session) maxRate() int64 {
	top := int64(noCapBits)
	for _, c := range []int64{s.m.cfg.RateBits, s.opts.RateBits, s.speedCap} {
		if c > 0 {
			top = min(top, c)
		}
	}
	return top
}

func (s *Session) announce() {
	a := Announce{State: uint8(s.state.Load()), Pass: uint8(s.pass.Load()), Want: s.Want,
		RateBits: uint64(s.m.pacer.rateBits()), Seq: s.seq.Load()}
	if c := s.content.Load(); c != nil {
		a.Block = uint16(s.block)
		a.Objects = uint32(c.NumObjects())
		a.Bytes = uint64(c.Bytes)
		a.Manifest = c.ManifestID
	}
	s.mu.Lock()
	a.Receivers = uint16(min(len(s.members), 65535))
	s.mu.Unlock()
	s.sendTo(AppendAnnounce(nil, s.ID, &a), s.Group)
}

// sendTo sends the sender's datagram b (an ANNOUNCE or MEMBER) to addr:
// in a sealed session sealed under the sender key, so that receivers
// obey only the sender (a stranger's "done" or "dropped" does not end
// them) and the announcement's commit and shape stay private.
func (s *Session) sendTo(b []byte, addr *net.UDPAddr) {
	if s.sndKey != nil {
		b = AppendSealedSender(nil, s.ID, s.sndCtr.Add(1), b, s.sndKey)
	}
	s.conn.WriteToUDP(b, addr)
}

// control reads what receivers send to the session's unicast address.
func (s *Session) control(ctx context.Context) {
	buf := make([]byte, 9216)
	var p, inner Packet
	for ctx.Err() == nil {
		s.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, from, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		if err := Decode(buf[:n], &p); err != nil {
			switch {
			case errors.Is(err, ErrNotOurs):
			case errors.Is(err, ErrVersion):
				// an older (or newer) sim: it cannot decode this
				// session's datagrams either, finds no session and
				// fetches over HTTP; said once per address
				s.mu.Lock()
				first := !s.oldProto[from.String()]
				s.oldProto[from.String()] = true
				s.mu.Unlock()
				if first {
					s.logf("from %s: %v: that node runs another sim (multicast protocol %d here); it fills over HTTP", from, err, version)
				}
			default:
				s.logf("from %s: %v", from, err)
			}
			continue
		}
		if p.Session != s.ID {
			continue
		}
		if (p.Kind == KindSealedControl) != (s.ctlKey != nil) {
			// a sealed session hears only holders of its key (a
			// stranger's JOIN would add a member that receives nothing
			// and asks for everything again each pass); a plain one
			// knows no key
			continue
		}
		if s.ctlKey != nil {
			if err := OpenControl(buf[:n], &p, s.ctlKey, &inner); err != nil {
				if s.badCtl++; s.badCtl <= 3 {
					s.logf("from %s: %v (dropped%s)", from, err, map[bool]string{true: "; further ones are not logged", false: ""}[s.badCtl == 3])
				}
				continue
			}
			c := p.Control
			if c.Ctr <= s.ctrSeen[c.Node] {
				continue // a replay (or reordered): the node sends again
			}
			s.ctrSeen[c.Node] = c.Ctr
			s.handle(&inner, from)
			continue
		}
		s.handle(&p, from)
	}
}

func (s *Session) handle(p *Packet, from *net.UDPAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	switch p.Kind {
	case KindJoin:
		mb := s.members[p.Join.Node]
		if mb == nil {
			mb = &member{node: p.Join.Node, name: p.Join.Name, addr: from, haves: slices.Clone(p.Join.Haves),
				joined: now, late: s.state.Load() != StateWaiting}
			s.members[p.Join.Node] = mb
			s.logf("member %s (%s) joined%s", mb.name, from, map[bool]string{true: " late", false: ""}[mb.late])
		}
		mb.lastSeen = now
		st := uint8(MemberJoined)
		if mb.dropped {
			st = MemberDropped
		}
		s.sendTo(AppendMember(nil, s.ID, &Member{Node: mb.node, State: st}), from)
	case KindStatus:
		mb := s.members[p.Status.Node]
		if mb == nil {
			return
		}
		mb.lastSeen = now
		st := p.Status
		if st.Received >= mb.prevRecv && st.Lost >= mb.prevLost {
			// An interval ends at a report once it holds enough datagrams
			// for its loss to mean something (1 in 50 is already 2%).
			dr, dl := st.Received-mb.prevRecv, st.Lost-mb.prevLost
			if dr+dl >= minInterval {
				mb.ivLoss = float64(dl) / float64(dr+dl)
				mb.ivFrom, mb.ivAt = mb.ivMark, now
				if mb.ivFrom.IsZero() {
					mb.ivFrom = mb.joined
				}
				mb.prevRecv, mb.prevLost = st.Received, st.Lost
			}
			if dr+dl >= minInterval || mb.ivMark.IsZero() {
				mb.ivMark = now
			}
		}
		if st.Done && !mb.status.Done {
			s.logf("member %s (%s) has everything", mb.name, mb.addr)
		}
		mb.status = st
		if st.Done {
			mb.answered = uint8(s.pass.Load())
		}
	case KindNak:
		mb := s.members[p.Nak.Node]
		if mb == nil {
			return
		}
		mb.lastSeen = now
		if mb.dropped || p.Nak.Pass != uint8(s.pass.Load()) || s.naks == nil {
			return
		}
		mb.answered = p.Nak.Pass
		mb.naks += len(p.Nak.Ranges)
		c := s.content.Load()
		for _, r := range p.Nak.Ranges {
			if c == nil || int(r.Object) >= c.NumObjects() {
				continue
			}
			ns := s.naks[r.Object]
			if ns == nil {
				ns = &nakSet{blocks: map[uint32]bool{}}
				s.naks[r.Object] = ns
			}
			if ns.whole {
				continue
			}
			nb := uint32((c.Size(int(r.Object)) + s.block - 1) / s.block)
			if r.Count == 0 || (r.First == 0 && r.Count >= nb) {
				ns.whole, ns.blocks = true, nil
				continue
			}
			for b := r.First; b < r.First+r.Count && b < nb; b++ {
				ns.blocks[b] = true
				if !s.fec.Off {
					// a group FEC did not rebuild for this member
					s.nakGrp[uint64(r.Object)<<32|uint64(b/uint32(s.fec.K))] = true
				}
			}
			s.fecStat.repairGroups = int64(len(s.nakGrp))
		}
	}
}

// SessionInfo describes a session (GET /v1/mcast/sessions, sim
// multicast sessions).
type SessionInfo struct {
	ID        string    `json:"id"`
	Want      chunk.ID  `json:"want"`
	Group     string    `json:"group"`
	Iface     string    `json:"iface"`
	Sealed    bool      `json:"sealed,omitempty"` // data encrypted; the key is not listed
	State     string    `json:"state"`
	Pass      int       `json:"pass"`
	RateBits  int64     `json:"rate_bits"`
	Objects   int       `json:"objects"`
	Bytes     int64     `json:"bytes"`
	SentBytes int64     `json:"sent_bytes"`
	Datagrams uint32    `json:"datagrams"`
	Created   time.Time `json:"created"`
	Seconds   float64   `json:"seconds"` // sending time so far
	Error     string    `json:"error,omitempty"`
	// FEC: auto, off or R/K; what it sent and what it predicted
	FEC          string       `json:"fec"`
	FECGroups    int64        `json:"fec_groups,omitempty"`    // FEC blocks sent with repair shards
	FECShards    int64        `json:"fec_shards,omitempty"`    // repair datagrams
	FECPredicted float64      `json:"fec_predicted,omitempty"` // expected FEC blocks some member cannot rebuild
	RepairGroups int64        `json:"repair_groups"`           // FEC blocks members asked repairs of after all
	RepairBlocks int64        `json:"repair_blocks"`           // data datagrams of repair passes
	Members      []MemberInfo `json:"members"`
}

// MemberInfo is one receiver of a session.
type MemberInfo struct {
	Node      string  `json:"node"`
	Name      string  `json:"name"`
	Addr      string  `json:"addr"`
	State     string  `json:"state"` // registered, receiving, done, dropped, gone
	Late      bool    `json:"late,omitempty"`
	NeedBytes uint64  `json:"need_bytes"`
	GotBytes  uint64  `json:"got_bytes"`
	Received  uint64  `json:"datagrams"`
	LossPct   float64 `json:"loss_pct"`
	NakRanges int     `json:"nak_ranges"`
}

// Info describes the session now.
func (s *Session) Info() SessionInfo {
	inf := SessionInfo{ID: fmt.Sprintf("%08x", s.ID), Want: s.Want, Group: s.Group.String(), Iface: s.Iface, Sealed: s.Sealed(),
		State: StateName(uint8(s.state.Load())), Pass: int(s.pass.Load()), RateBits: s.m.pacer.rateBits(),
		SentBytes: s.sentB.Load(), Datagrams: s.seq.Load(), Created: s.created}
	if c := s.content.Load(); c != nil {
		inf.Objects, inf.Bytes = c.NumObjects(), c.Bytes
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started.IsZero() {
		end := s.finished
		if end.IsZero() {
			end = time.Now()
		}
		inf.Seconds = end.Sub(s.started).Seconds()
	}
	if s.err != nil {
		inf.Error = s.err.Error()
	}
	inf.FEC = s.fec.String()
	inf.FECGroups, inf.FECShards, inf.FECPredicted = s.fecStat.groups, s.fecStat.shards, s.fecStat.predicted
	inf.RepairGroups, inf.RepairBlocks = s.fecStat.repairGroups, s.fecStat.repairBlocks
	for _, mb := range s.members {
		mi := MemberInfo{Node: fmt.Sprintf("%016x", mb.node), Name: mb.name, Addr: mb.addr.String(), Late: mb.late,
			NeedBytes: mb.status.NeedBytes, GotBytes: mb.status.GotBytes, Received: mb.status.Received, NakRanges: mb.naks}
		if t := mb.status.Received + mb.status.Lost; t > 0 {
			mi.LossPct = 100 * float64(mb.status.Lost) / float64(t)
		}
		switch {
		case mb.status.Done:
			mi.State = "done"
		case mb.dropped:
			mi.State = "dropped"
		case time.Since(mb.lastSeen) > memberTimeout:
			mi.State = "gone"
		case mb.status.Received > 0:
			mi.State = "receiving"
		default:
			mi.State = "registered"
		}
		inf.Members = append(inf.Members, mi)
	}
	sort.Slice(inf.Members, func(i, j int) bool {
		return inf.Members[i].Name+inf.Members[i].Addr < inf.Members[j].Name+inf.Members[j].Addr
	})
	return inf
}

// Rate control (ARCHITECTURE.md, Multicast: Rate). A session starts at
// startBits (or its cap, when lower) and raises the rate by half at each
// clean decision until the receivers report loss (slow start); then the
// rate goes a little below what the path delivered, rises by a step per
// clean decision (additive increase) and falls to what the path
// delivered whenever the median loss rises again (multiplicative
// decrease). A decision takes the median of the receivers' reports
// covering the time since the last one: with reports every 50 ms, about
// one every 100 ms. udpcast, by contrast, waits for every receiver's
// answer to each slice (a window); here nothing waits for the slowest.
const (
	startBits = 100_000_000
	minBits   = 1_000_000
	// drainTime: after a decision, datagrams still queued at the
	// bottleneck went out at the old rate.
	drainTime = 20 * time.Millisecond
	// minInterval: a receiver's report interval holds at least this
	// many datagrams.
	minInterval = 200
	// A median loss above the floor by more than congestMargin (plus
	// half the floor: a noisy lossy path) is congestion; below
	// cleanMargin the rate may rise.
	congestMargin = 0.02
	cleanMargin   = 0.01
	// maxFloor bounds the loss taken as the receivers' own: beyond it,
	// loss is congestion whatever was seen before.
	maxFloor = 0.1
	// headroom: the rate after a decrease, as a share of what the
	// bottleneck passed; the rest drains its queue.
	headroom = 0.95
	// slowStartGrowth: the rate's growth per decision in slow start
	// (at most that much above the link before the first cut).
	slowStartGrowth = 1.5
	// stepShare: the additive increase per decision, as a share of the
	// rate a decrease (or the end of slow start) left.
	stepShare = 0.04
)

// pacer is a token bucket in L2 bytes, shared by a manager's sessions,
// with the rate control that sets its rate.
type pacer struct {
	mu     gosync.Mutex
	rate   float64 // bytes/s now
	tokens float64
	last   time.Time

	// What went out since the last decision: the rate achieved, lower
	// than rate when the sender cannot keep up.
	meterFrom, meterLast time.Time
	meterBytes           float64

	sessions  int       // sessions sending
	slowStart bool      // no loss seen yet: the rate grows by half per decision
	decided   time.Time // the last decision
	cut       bool      // it lowered the rate
	step      float64   // additive increase per decision, bytes/s
	clean     int       // clean decisions since the last lossy one
	// raisedFrom is the rate before the last raise: clean, as far as
	// the reports went.
	raisedFrom float64
}

func newPacer() *pacer {
	now := time.Now()
	return &pacer{rate: startBits / 8, last: now, decided: now}
}

func (p *pacer) rateBits() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return int64(p.rate * 8)
}

// begin starts a session's sending. The first of the sessions sending
// at once starts slow start again from startBits: what an earlier
// session found may not hold any more (other traffic, other nodes behind
// other links), and a rate it never saw congested (the sender was the
// limit) says nothing of the link. Later ones share the rate found,
// within their cap.
func (p *pacer) begin(capBits int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	top := float64(capBits) / 8
	if p.sessions == 0 {
		p.rate = startBits / 8
		p.slowStart, p.cut, p.step, p.clean, p.raisedFrom = true, false, 0, 0, 0
		p.decided = time.Now()
		p.meterBytes, p.meterFrom, p.meterLast = 0, p.decided, p.decided
	}
	p.rate = min(p.rate, top)
	p.sessions++
}

// end ends a session's sending.
func (p *pacer) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sessions--
}

// lastDecision is when the rate control last decided, and whether it
// lowered the rate then.
func (p *pacer) lastDecision() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.decided, p.cut
}

// wait blocks until n bytes may go out. The bucket holds at most 20 ms
// of traffic: bursts stay small enough for a switch port's buffer, and
// large enough that the sleeps' granularity costs no rate.
func (p *pacer) wait(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		now := time.Now()
		burst := max(p.rate*0.02, float64(4*n))
		p.tokens = min(p.tokens+now.Sub(p.last).Seconds()*p.rate, burst)
		p.last = now
		if p.tokens >= float64(n) {
			p.tokens -= float64(n)
			if now.Sub(p.meterLast) > 100*time.Millisecond {
				// idle (a pass end): the achieved rate is that of sending
				p.meterFrom, p.meterBytes = now, 0
			}
			p.meterBytes += float64(n)
			p.meterLast = now
			p.mu.Unlock()
			return nil
		}
		d := time.Duration((float64(n) - p.tokens) / p.rate * float64(time.Second))
		p.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(max(d, 200*time.Microsecond))
	}
}

// achieved is the rate that went out since the last decision, bytes/s
// (the set rate when too little was sent to tell). p.mu is held.
func (p *pacer) achieved() float64 {
	if d := p.meterLast.Sub(p.meterFrom).Seconds(); d >= 0.03 && p.meterBytes > 0 {
		return min(p.meterBytes/d, p.rate)
	}
	return p.rate
}

// adapt decides on a median loss report: loss is the median receiver's
// share of lost datagrams since the last decision, floor the lowest
// median seen in the session before it (< 0: none yet). With onlyCut, a
// report that covers the time before the last decision too, it may only
// lower the rate. It returns the new rate in bit/s and why, or 0 when the
// rate stays.
func (p *pacer) adapt(loss, floor float64, capBits int64, onlyCut bool) (int64, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.rate
	top := float64(capBits) / 8
	// The first median is the floor unless it is beyond what nodes
	// lose by themselves: then it is congestion, and a cut takes the
	// rate below the bottleneck, where the floor shows. A floor taken
	// a little above the bottleneck goes down by itself at the first
	// cut (it is the lowest median seen).
	if floor < 0 {
		floor = loss
		if loss > maxFloor {
			floor = 0
		}
	}
	floor = min(floor, maxFloor)
	clean := loss < floor+cleanMargin
	why := ""
	switch {
	case loss > floor+congestMargin+floor/2:
		// The bottleneck passed (1-loss)/(1-floor) of what went out:
		// go a little below that, so its queue drains.
		got := p.achieved()
		target := got * (1 - loss) / (1 - floor) * headroom
		if onlyCut && p.raisedFrom > 0 {
			// The report also covers time before the raise: its loss
			// understates the new rate's. The rate before the raise
			// was clean: go back there at least.
			target = min(target, p.raisedFrom)
		}
		p.rate = max(min(p.rate, target), minBits/8)
		p.slowStart, p.cut, p.clean = false, true, 0
		p.step = p.rate * stepShare
		why = fmt.Sprintf("congestion at %.0f Mbit/s sent", got*8/1e6)
	case onlyCut:
		return 0, ""
	case clean:
		p.cut = false
		// Raise only a rate the sender achieves: one it cannot keep
		// up with (a busy CPU) would let it burst later.
		if p.achieved() >= p.rate*0.7 {
			p.raisedFrom = p.rate
			if p.slowStart {
				p.rate *= slowStartGrowth
				p.step = p.rate * stepShare
				why = "slow start"
			} else {
				// The step doubles every second clean decision (up to
				// 8×): a cut too deep (loss that was not the link's)
				// is made up for in a second or so, while near the
				// link the first steps are small.
				p.rate += p.step * float64(int(1)<<min(p.clean/2, 3))
				p.clean++
				why = "probing"
			}
		}
	default:
		// Some loss, not yet congestion: the link is near; probe on
		// from here in small steps.
		p.cut, p.clean = false, 0
		if p.slowStart {
			p.slowStart = false
			p.step = p.rate * stepShare
		}
	}
	p.rate = min(p.rate, top)
	now := time.Now()
	p.decided = now
	p.meterFrom, p.meterLast, p.meterBytes = now, now, 0
	if p.rate < old*0.99 || p.rate > old*1.01 {
		return int64(p.rate * 8), why
	}
	return 0, ""
}
