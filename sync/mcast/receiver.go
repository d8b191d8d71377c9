package mcast

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	mrand "math/rand/v2"
	"net"
	gosync "sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/seal"
)

// ReceiveConfig says which session to receive and how.
type ReceiveConfig struct {
	Group *net.UDPAddr
	Iface *net.Interface
	// Session picks the session by id; 0 takes the first one announcing
	// Want.
	Session uint32
	Want    chunk.ID
	Haves   []chunk.ID // sent when registering: the sender plans with them
	Name    string     // shown in the sender's member list
	// Has reports which blobs the receiving store already holds: objects
	// whose blobs it all has are not waited for.
	Has func(ids []chunk.ID) ([]bool, error)
	// Timeout gives up when nothing arrives from the session for that
	// long (and, before any announcement, on finding none).
	Timeout time.Duration
	// MemLimit bounds the bytes of objects being put together or
	// waiting for the decoder (0: DefaultMemLimit); beyond it new objects
	// are left for a repair pass (an object alone is always taken).
	MemLimit int64
	// Progress, if set, is called about once a second.
	Progress func(Result)
	// Key is a sealed session's key, from its document (nil: a plain
	// session). With it, only sealed data that opens under it is taken:
	// plain data and data that does not open (altered, or sealed under
	// another key) are dropped and count as lost, so they are repaired.
	Key *seal.Key

	// drop, in tests, loses (true) or alters a data datagram after its
	// checksum was checked (and, sealed, after it opened).
	drop func(*Data) bool
	// dropRepair, in tests, loses a repair datagram (after its checksum
	// was checked and, sealed, after it opened).
	dropRepair func(*Repair) bool
	// tamper, in tests, may alter a datagram as it comes off the socket
	// (an attacker on the segment: it can recompute the checksum).
	tamper func(b []byte)
}

// Result is what a receiver got.
type Result struct {
	Session   string  `json:"session"`
	Complete  bool    `json:"complete"`  // every needed object arrived and verified
	Dropped   bool    `json:"dropped"`   // the sender dropped us (too much loss): HTTP fills
	Ended     bool    `json:"ended"`     // the session ended before we were complete
	TimedOut  bool    `json:"timed_out"` // nothing arrived for Timeout
	Pass      int     `json:"pass"`
	Datagrams uint64  `json:"datagrams"` // data datagrams received
	Lost      uint64  `json:"lost"`      // data datagrams missed
	LossPct   float64 `json:"loss_pct"`
	WireBytes int64   `json:"wire_bytes"`         // data payload bytes received, duplicates included
	NeedBytes int64   `json:"need_bytes"`         // bytes of the objects this node needs
	GotBytes  int64   `json:"got_bytes"`          // of which arrived and verified
	Objects   int     `json:"objects"`            // objects delivered
	Rejected  int     `json:"rejected"`           // objects that failed verification (received again)
	Unopened  int     `json:"unopened,omitempty"` // sealed datagrams that did not open (altered, forged): dropped as lost
	Shards    uint64  `json:"fec_shards"`         // repair datagrams received (counted in Datagrams too)
	Recovered int64   `json:"fec_recovered"`      // data blocks rebuilt from repair shards (then verified with their object)
	Blobs     int64   `json:"blobs"`
	Seconds   float64 `json:"seconds"`
	// PeakMem is the most bytes of objects held at once (being put
	// together or decoded; ReceiveConfig.MemLimit bounds it).
	PeakMem int64 `json:"peak_mem"`
}

// rxObject is an object being put together.
type rxObject struct {
	size     int
	buf      []byte
	have     []uint64 // bitmap of blocks
	got      int
	nblocks  int
	complete bool // all blocks in (maybe being decoded)
	needed   int8 // 0 unknown (no manifest yet), 1 yes, -1 no
	// fec holds the repair shards of the object's FEC blocks that still
	// miss data, by first block
	fec map[uint32]*fecGroup
}

// fecGroup is the repair shards received of one FEC block.
type fecGroup struct {
	k, m   int
	shards [][]byte // m, nil where not received
	n      int
}

type receiver struct {
	cfg    ReceiveConfig
	rcv    simsync.Receiver
	data   *net.UDPConn // the group
	ctrl   *net.UDPConn // unicast to and from the sender
	node   uint64
	sender *net.UDPAddr
	id     uint32
	ann    Announce
	joined bool
	objs   []rxObject
	mem    int64
	man    *Manifest
	sealer *seal.Sealer // a sealed session's data key (nil: plain)
	ctlKey *seal.Sealer // and its control key
	sndKey *seal.Sealer // and its sender key
	fecKey *seal.Sealer // and its repair key
	// otherVersion is the protocol version of sim datagrams heard that
	// this node cannot speak (0: none)
	otherVersion int
	ctr          uint32 // control datagrams sent (their nonces)
	annCtr       uint64 // counter of the last sealed announcement taken

	firstSeq, maxSeq uint32
	seqSet           bool
	sawSealed        bool // looking for Want, heard a sealed session
	res              Result
	answered         uint8
	lastNak          time.Time
	ready            []decodeJob // complete objects not yet handed to the decoder
	dq               decodeQueue
	inflight         int // objects handed to the decoder, not finished
	// free holds buffers of objects the decoder is done with, for the
	// next objects (a fresh buffer per object was garbage the size of
	// the image, and a heap twice the window's with GOGC=100)
	free [][]byte
}

// DefaultMemLimit is ReceiveConfig.MemLimit's default: the window of
// objects a receiver holds, whatever the image's size. Objects go to the
// decoder (decompression, BLAKE3, the store) as soon as each is
// complete, so without loss the window holds the one or two objects
// being received and the one being decoded (objects are about 4 MiB);
// with loss, also those still missing blocks until the pass end.
// Objects that would take it past the limit are left for the next pass
// (reported whole), and what a session cannot bring comes over HTTP.
const DefaultMemLimit = 64 << 20

// maxFree is how many object buffers a receiver keeps for reuse.
const maxFree = 4

// decodeQueue hands objects to the decoder goroutine and results back,
// without bounds on either side (no deadlock however many objects).
type decodeQueue struct {
	mu      gosync.Mutex
	jobs    []decodeJob
	results []decodeResult
	closed  bool
	wake    chan struct{}
	done    chan struct{}
}

func (q *decodeQueue) push(js ...decodeJob) {
	q.mu.Lock()
	q.jobs = append(q.jobs, js...)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *decodeQueue) take() []decodeResult {
	q.mu.Lock()
	defer q.mu.Unlock()
	r := q.results
	q.results = nil
	return r
}

func (q *decodeQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	<-q.done
}

type decodeJob struct {
	obj uint32
	buf []byte
}

type decodeResult struct {
	obj   uint32
	blobs int64
	err   error
}

// Receive joins cfg.Group, registers with the session and hands every
// verified blob of the objects it receives to rcv (from one goroutine).
// It returns when it has every object it needs, when the sender ends
// the session or drops it, or on timeout; whatever is still missing
// then is the caller's to fetch another way. An error means it could
// not take part at all (no session found, socket trouble).
func Receive(ctx context.Context, cfg ReceiveConfig, rcv simsync.Receiver) (Result, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MemLimit <= 0 {
		cfg.MemLimit = DefaultMemLimit
	}
	r := &receiver{cfg: cfg, rcv: rcv, id: cfg.Session}
	if cfg.Key != nil {
		if cfg.Session == 0 {
			// a sealed session does not announce its commit: it can only
			// be received by id, from its document
			return r.res, errors.New("multicast: a sealed session is received by its id (from the server's session document)")
		}
		sl, err := seal.New(*cfg.Key)
		var ck seal.Key
		if err == nil {
			ck, err = ControlKey(*cfg.Key)
		}
		if err == nil {
			r.ctlKey, err = seal.New(ck)
		}
		if err == nil {
			ck, err = SenderKey(*cfg.Key)
		}
		if err == nil {
			r.sndKey, err = seal.New(ck)
		}
		if err == nil {
			ck, err = RepairKey(*cfg.Key)
		}
		if err == nil {
			r.fecKey, err = seal.New(ck)
		}
		if err != nil {
			return r.res, fmt.Errorf("multicast: session key: %w", err)
		}
		r.sealer = sl
	}
	r.dq.wake, r.dq.done = make(chan struct{}, 1), make(chan struct{})
	var nb [8]byte
	rand.Read(nb[:])
	r.node = binary.BigEndian.Uint64(nb[:])
	if err := r.open(); err != nil {
		return r.res, err
	}
	defer r.data.Close()
	defer r.ctrl.Close()
	go r.decoder()
	start := time.Now()
	err := r.loop(ctx)
	r.flush()
	r.dq.close()
	for _, d := range r.dq.take() {
		r.finish(d)
	}
	r.res.Seconds = time.Since(start).Seconds()
	r.fillResult()
	r.res.Complete = r.complete() && r.verified()
	if r.sender != nil {
		// Tell the sender how it ended, so its member list is right.
		st := r.status()
		for i := 0; i < 2; i++ {
			r.sendCtrl(AppendStatus(nil, r.id, &st))
		}
	}
	return r.res, err
}

func (r *receiver) open() error {
	g := r.cfg.Group
	if g == nil || g.IP.To4() == nil || !g.IP.IsMulticast() {
		return fmt.Errorf("multicast: bad group %v", g)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			// Several receivers may share a host (tests; a node also
			// running a sender): each socket gets its own copy.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<20)
			}
		})
		return serr
	}}
	// Bound to the group address: only this group's datagrams arrive,
	// not those of other groups someone on the host joined.
	pc, err := lc.ListenPacket(context.Background(), "udp4", g.String())
	if err != nil {
		return fmt.Errorf("multicast: listen on %s: %w", g, err)
	}
	r.data = pc.(*net.UDPConn)
	p := ipv4.NewPacketConn(r.data)
	if err := p.JoinGroup(r.cfg.Iface, &net.UDPAddr{IP: g.IP}); err != nil {
		r.data.Close()
		name := "default interface"
		if r.cfg.Iface != nil {
			name = r.cfg.Iface.Name
		}
		return fmt.Errorf("multicast: join %s on %s: %w", g.IP, name, err)
	}
	var laddr *net.UDPAddr
	if r.cfg.Iface != nil {
		if ip, err := ifaceIPv4(r.cfg.Iface); err == nil {
			laddr = &net.UDPAddr{IP: ip}
		}
	}
	if r.ctrl, err = net.ListenUDP("udp4", laddr); err != nil {
		r.data.Close()
		return fmt.Errorf("multicast: control socket: %w", err)
	}
	return nil
}

func (r *receiver) loop(ctx context.Context) error {
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 9216)}
	}
	pc := ipv4.NewPacketConn(r.data)
	ctrlC := make(chan Packet, 16)
	go func() {
		buf := make([]byte, 2048)
		var last uint64 // sealed: the counter of the last MEMBER taken
		for {
			n, _, err := r.ctrl.ReadFromUDP(buf)
			if err != nil {
				return
			}
			var p, q Packet
			if Decode(buf[:n], &p) != nil {
				continue
			}
			if r.sndKey != nil {
				// sealed: only the sender's own MEMBER answers count (a
				// stranger's "dropped" would send us to HTTP)
				if p.Kind != KindSealedSender || OpenSender(buf[:n], &p, r.sndKey, &q) != nil || p.Sender.Ctr <= last {
					continue
				}
				last, p = p.Sender.Ctr, q
			}
			if p.Kind == KindMember {
				select {
				case ctrlC <- p:
				default:
				}
			}
		}
	}()
	lastHeard := time.Now()
	lastStatus, lastJoin, lastProgress := time.Time{}, time.Time{}, time.Now()
	var statusAt uint64 // datagrams received at the last status
	var p, q Packet
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		now := time.Now()
		if now.Sub(lastHeard) > r.cfg.Timeout {
			r.res.TimedOut = true
			if r.sender == nil {
				hint := ""
				if r.sawSealed {
					hint = " (a sealed session was: it is received through the server that serves it, with a read token, not with --mcast-group)"
				}
				if r.otherVersion != 0 {
					hint += fmt.Sprintf(" (datagrams of multicast protocol version %d were heard; this sim speaks %d: run the same sim version as the server)", r.otherVersion, version)
				}
				return fmt.Errorf("multicast: no session for %s announced on %s within %v%s", r.cfg.Want.Short(), r.cfg.Group, r.cfg.Timeout, hint)
			}
			return nil
		}
		if r.sender != nil && !r.joined && now.Sub(lastJoin) > 250*time.Millisecond {
			r.sendCtrl(AppendJoin(nil, r.id, &Join{Node: r.node, Name: r.cfg.Name, Haves: r.cfg.Haves}))
			lastJoin = now
		}
		// While data flows the sender's rate control lives on these
		// reports: every 50 ms, so that it finds the rate within a
		// fraction of a second; otherwise every 500 ms, to stay listed.
		if r.joined && (now.Sub(lastStatus) > 500*time.Millisecond ||
			(now.Sub(lastStatus) >= statusEvery && r.res.Datagrams != statusAt)) {
			st := r.status()
			r.sendCtrl(AppendStatus(nil, r.id, &st))
			lastStatus, statusAt = now, r.res.Datagrams
		}
		if r.cfg.Progress != nil && now.Sub(lastProgress) >= time.Second {
			r.fillResult()
			r.cfg.Progress(r.res)
			lastProgress = now
		}
		for drained := false; !drained; {
			select {
			case m := <-ctrlC:
				if m.Session == r.id && m.Member.Node == r.node {
					r.joined = true
					if m.Member.State == MemberDropped {
						r.res.Dropped = true
						return nil
					}
				}
			default:
				drained = true
			}
		}
		for _, d := range r.dq.take() {
			r.finish(d)
		}
		// Complete objects are verified and stored at once, while the
		// rest arrives (on another core): holding them until every
		// block was in held the whole image in memory (and the decoded
		// frames, racing ahead of the checkout, too).
		r.flush()
		if r.man != nil && r.complete() {
			// Every block is here: say so at once (the sender stops
			// waiting for us at pass ends), then verify. An object that
			// fails verification makes us incomplete again: the next
			// status says so and a later pass (or HTTP) brings it.
			if r.joined {
				st := r.status()
				r.sendCtrl(AppendStatus(nil, r.id, &st))
			}
			r.verifyAll()
			if r.complete() {
				return nil
			}
		}
		r.data.SetReadDeadline(now.Add(50 * time.Millisecond))
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return fmt.Errorf("multicast: receive: %w", err)
		}
		if n < len(msgs)/4 {
			// Few datagrams per wake-up cost a poll and a system call
			// each: let some gather first (2 ms at 1 Gbit/s is 250 kB,
			// far below the socket's 16 MB buffer).
			time.Sleep(2 * time.Millisecond)
		}
		for i := 0; i < n; i++ {
			b := msgs[i].Buffers[0][:msgs[i].N]
			if r.cfg.tamper != nil {
				r.cfg.tamper(b)
			}
			if err := Decode(b, &p); err != nil {
				if errors.Is(err, ErrVersion) && r.otherVersion == 0 {
					r.otherVersion = int(b[2])
				}
				continue // foreign or damaged: the checksum or bounds failed
			}
			if r.id != 0 && p.Session != r.id {
				continue
			}
			pk := &p
			switch {
			case p.Kind == KindSealedSender && r.sndKey == nil:
				r.sawSealed = true // a sealed session: not ours to read
				continue
			case p.Kind == KindSealedSender:
				// the sender's announcement; a replayed (older) one is
				// not taken
				if OpenSender(b, &p, r.sndKey, &q) != nil || q.Kind != KindAnnounce || p.Sender.Ctr <= r.annCtr {
					continue
				}
				r.annCtr, pk = p.Sender.Ctr, &q
			case p.Kind == KindAnnounce && r.sndKey != nil:
				continue // a plain announcement in a sealed session: a stranger's
			}
			switch pk.Kind {
			case KindAnnounce:
				if r.id == 0 {
					if pk.Announce.Want != r.cfg.Want || pk.Announce.State == StateDone {
						continue
					}
					r.id = pk.Session
				}
				lastHeard = time.Now()
				src, _ := msgs[i].Addr.(*net.UDPAddr)
				if r.sender == nil {
					r.sender = src
				}
				if err := r.announced(&pk.Announce); err != nil {
					return err
				}
				if pk.Announce.State == StateDone {
					r.res.Ended = true
					return nil
				}
			case KindData, KindSealedData:
				if r.objs == nil {
					continue // before the first announcement with the plan
				}
				if (p.Kind == KindSealedData) != (r.sealer != nil) {
					// plain data in a sealed session can only be a
					// stranger's; sealed data in a plain one is not ours
					continue
				}
				if r.sealer != nil {
					if OpenData(b, &p, r.sealer) != nil {
						// not what the sender sealed: not counted as
						// received, so its seq is a gap (loss) and the
						// block is reported missing and repaired
						r.res.Unopened++
						continue
					}
				}
				lastHeard = time.Now()
				r.data1(&p.Data)
			case KindRepair, KindSealedRepair:
				if r.objs == nil || (p.Kind == KindSealedRepair) != (r.fecKey != nil) {
					continue
				}
				if r.fecKey != nil && OpenRepair(b, &p, r.fecKey) != nil {
					r.res.Unopened++
					continue
				}
				lastHeard = time.Now()
				r.repair1(&p.Repair)
			}
		}
	}
}

// announced takes the session's state: the plan's shape, and at a pass
// end the request for NAKs.
func (r *receiver) announced(a *Announce) error {
	if r.objs == nil && a.Objects > 0 {
		if a.Block < MinPayload || a.Block > MaxPayload {
			return fmt.Errorf("multicast: session announces block size %d", a.Block)
		}
		r.objs = make([]rxObject, a.Objects)
	}
	if r.objs != nil && (a.Objects != r.ann.Objects && r.ann.Objects != 0) {
		return fmt.Errorf("multicast: session changed its object count from %d to %d", r.ann.Objects, a.Objects)
	}
	r.ann = *a
	r.res.Pass = int(a.Pass)
	if a.State == StateCollecting && r.joined && (r.answered < a.Pass || time.Since(r.lastNak) > 300*time.Millisecond) {
		r.answered = a.Pass
		r.lastNak = time.Now()
		r.sendNaks(a.Pass)
	}
	return nil
}

func (r *receiver) data1(d *Data) {
	if r.cfg.drop != nil && r.cfg.drop(d) {
		return
	}
	// Every datagram counts for the loss figure, also those of objects
	// we have or do not need.
	r.countSeq(d.Seq)
	if int(d.Object) >= len(r.objs) {
		return
	}
	o := &r.objs[d.Object]
	if o.complete || o.needed < 0 {
		return
	}
	blk := int(r.ann.Block)
	if d.Offset%uint32(blk) != 0 {
		return
	}
	r.res.WireBytes += int64(len(d.Payload))
	if !r.alloc(o, d.ObjLen) {
		return
	}
	b := int(d.Offset) / blk
	if want := min(blk, o.size-int(d.Offset)); len(d.Payload) != want {
		return
	}
	if o.have[b/64]&(1<<(b%64)) != 0 {
		return // a repair of something we have
	}
	o.have[b/64] |= 1 << (b % 64)
	copy(o.buf[d.Offset:], d.Payload)
	o.got++
	if o.got == o.nblocks {
		r.objectIn(d.Object)
		return
	}
	// a block a repair pass brought may make a FEC block rebuildable
	for first, g := range o.fec {
		if b >= int(first) && b < int(first)+g.k {
			r.rebuild(d.Object, first, g)
			break
		}
	}
}

// alloc makes object o's buffer for an object of size bytes (false: it
// does not fit the memory limit, or contradicts what is known of o).
func (r *receiver) alloc(o *rxObject, size uint32) bool {
	if o.buf == nil {
		if o.size != 0 && o.size != int(size) {
			return false
		}
		if r.mem > 0 && r.mem+int64(size) > r.cfg.MemLimit {
			return false // left for a repair pass
		}
		blk := int(r.ann.Block)
		o.size = int(size)
		o.nblocks = (o.size + blk - 1) / blk
		o.buf = r.getBuf(o.size)
		o.have = make([]uint64, (o.nblocks+63)/64)
		r.mem += int64(o.size)
		r.res.PeakMem = max(r.res.PeakMem, r.mem)
	}
	return int(size) == o.size
}

// objectIn takes object i once every block is in: the manifest is
// checked at once, other objects wait for the decoder.
func (r *receiver) objectIn(i uint32) {
	o := &r.objs[i]
	o.complete = true
	o.fec = nil
	if i == 0 {
		r.manifest(o)
		return
	}
	r.ready = append(r.ready, decodeJob{i, o.buf})
}

// getBuf returns a buffer of n bytes, a free one when one is big enough.
// Its bytes are not zeroed: every byte of an object is written (by a
// data block or a rebuilt one) before the object is complete.
func (r *receiver) getBuf(n int) []byte {
	for i, b := range r.free {
		if cap(b) >= n {
			r.free[i] = r.free[len(r.free)-1]
			r.free = r.free[:len(r.free)-1]
			return b[:n]
		}
	}
	return make([]byte, n)
}

// putBuf keeps b (no longer used) for a later object.
func (r *receiver) putBuf(b []byte) {
	if b == nil || cap(b) > 2*maxFrameObject {
		return
	}
	if len(r.free) < maxFree {
		r.free = append(r.free, b)
		return
	}
	// keep the biggest
	for i, x := range r.free {
		if cap(x) < cap(b) {
			r.free[i] = b
			return
		}
	}
}

// maxFrameObject is about the size the sender cuts objects at (4 MiB of
// stored frames, a frame more at most); buffers beyond twice it (a rare
// big object) are not kept.
const maxFrameObject = 8 << 20

// repair1 takes a repair shard: kept with its FEC block's until the
// block has all its data, and used as soon as data and shards make k.
func (r *receiver) repair1(x *Repair) {
	if r.cfg.dropRepair != nil && r.cfg.dropRepair(x) {
		return
	}
	r.countSeq(x.Seq)
	r.res.Shards++
	if int(x.Object) >= len(r.objs) {
		return
	}
	o := &r.objs[x.Object]
	if o.complete || o.needed < 0 || len(x.Shard) != int(r.ann.Block) {
		return
	}
	r.res.WireBytes += int64(len(x.Shard))
	if !r.alloc(o, x.ObjLen) {
		return
	}
	k, m := int(x.K), int(x.M)
	if int(x.First)+k > o.nblocks {
		return
	}
	g := o.fec[x.First]
	if g == nil || g.k != k || g.m != m {
		if r.present(o, int(x.First), k) == k {
			return // nothing of it missing
		}
		if o.fec == nil {
			o.fec = map[uint32]*fecGroup{}
		}
		g = &fecGroup{k: k, m: m, shards: make([][]byte, m)}
		o.fec[x.First] = g
	}
	if g.shards[x.Index] != nil {
		return
	}
	g.shards[x.Index] = bytes.Clone(x.Shard)
	g.n++
	r.rebuild(x.Object, x.First, g)
}

// present counts the data blocks [first, first+k) of o that are in.
func (r *receiver) present(o *rxObject, first, k int) int {
	n := 0
	for b := first; b < first+k; b++ {
		if o.have[b/64]&(1<<(b%64)) != 0 {
			n++
		}
	}
	return n
}

// rebuild reconstructs the missing data blocks of FEC block first of
// object i when its data and repair shards make k; the block is done
// with then (or when its data is all in). Rebuilt bytes are checked
// with their object, as received ones are (BLAKE3): a forged shard
// makes the object fail verification, and it is received again.
func (r *receiver) rebuild(i, first uint32, g *fecGroup) {
	o := &r.objs[i]
	blk := int(r.ann.Block)
	have := r.present(o, int(first), g.k)
	if have == g.k {
		delete(o.fec, first)
		return
	}
	if have+g.n < g.k {
		return
	}
	sh := make([][]byte, g.k+g.m)
	for j := 0; j < g.k; j++ {
		b := int(first) + j
		if o.have[b/64]&(1<<(b%64)) == 0 {
			continue
		}
		off := b * blk
		if off+blk <= o.size {
			sh[j] = o.buf[off : off+blk]
		} else {
			sh[j] = make([]byte, blk) // the object's last block, padded
			copy(sh[j], o.buf[off:])
		}
	}
	copy(sh[g.k:], g.shards)
	delete(o.fec, first)
	if err := fecReconstruct(g.k, sh); err != nil {
		return // left to the NAKs
	}
	for j := 0; j < g.k; j++ {
		b := int(first) + j
		if o.have[b/64]&(1<<(b%64)) != 0 {
			continue
		}
		off := b * blk
		copy(o.buf[off:min(off+blk, o.size)], sh[j])
		o.have[b/64] |= 1 << (b % 64)
		o.got++
		r.res.Recovered++
	}
	if o.got == o.nblocks {
		r.objectIn(i)
	}
}

// sendCtrl sends control datagram b to the sender: in a sealed session
// sealed under the control key, so that the sender knows it comes from
// a holder of the session's key.
func (r *receiver) sendCtrl(b []byte) {
	if r.ctlKey != nil {
		r.ctr++
		b = AppendSealedControl(nil, r.id, r.node, r.ctr, b, r.ctlKey)
	}
	r.ctrl.WriteToUDP(b, r.sender)
}

// countSeq counts datagrams and gaps in the sender's counter: the loss.
func (r *receiver) countSeq(seq uint32) {
	r.res.Datagrams++
	if !r.seqSet {
		r.firstSeq, r.maxSeq, r.seqSet = seq, seq, true
	} else if int32(seq-r.maxSeq) > 0 {
		r.maxSeq = seq
	}
}

// manifest takes object 0, checked against the announced BLAKE3: then
// objects the store already has are not waited for.
func (r *receiver) manifest(o *rxObject) {
	reset := func() {
		r.res.Rejected++
		r.mem -= int64(o.size)
		*o = rxObject{}
	}
	if chunk.Sum(o.buf) != r.ann.Manifest {
		reset()
		return
	}
	m, err := DecodeManifest(o.buf)
	if err != nil || m.Want != r.cfg.Want || len(m.Objects)+1 != len(r.objs) {
		reset()
		return
	}
	r.man = m
	r.mem -= int64(o.size)
	r.putBuf(o.buf)
	o.buf = nil
	for i, oi := range m.Objects {
		x := &r.objs[i+1]
		ids := make([]chunk.ID, len(oi.Blobs))
		for j, b := range oi.Blobs {
			ids[j] = b.ID
		}
		x.needed = 1
		if r.cfg.Has != nil {
			if has, err := r.cfg.Has(ids); err == nil {
				all := true
				for _, h := range has {
					all = all && h
				}
				if all && !x.complete {
					x.needed = -1
					if x.buf != nil {
						r.mem -= int64(x.size)
						r.putBuf(x.buf)
						x.buf, x.have = nil, nil
					}
				}
			}
		}
		if x.needed > 0 {
			r.res.NeedBytes += int64(oi.Size)
		}
		if x.size != 0 && x.size != int(oi.Size) {
			*x = rxObject{needed: x.needed} // inconsistent with the manifest
		}
		x.size = int(oi.Size)
	}
}

// flush hands the complete objects to the decoder.
func (r *receiver) flush() {
	if len(r.ready) == 0 {
		return
	}
	r.inflight += len(r.ready)
	r.dq.push(r.ready...)
	r.ready = r.ready[:0]
}

// verifyAll flushes and waits for the decoder to finish every object.
func (r *receiver) verifyAll() {
	r.flush()
	for r.inflight > 0 {
		ds := r.dq.take()
		if len(ds) == 0 {
			time.Sleep(time.Millisecond)
		}
		for _, d := range ds {
			r.finish(d)
		}
	}
}

func (r *receiver) decoder() {
	q := &r.dq
	defer close(q.done)
	// one Decoder for every object: its buffers and zstd decoder are
	// reused from one object to the next
	dec, derr := simsync.NewDecoder()
	if derr == nil {
		defer dec.Close()
	}
	br := bytes.NewReader(nil)
	for {
		q.mu.Lock()
		if len(q.jobs) == 0 {
			closed := q.closed
			q.mu.Unlock()
			if closed {
				return
			}
			<-q.wake
			continue
		}
		j := q.jobs[0]
		q.jobs = q.jobs[1:]
		q.mu.Unlock()
		var ds simsync.DecodeStats
		err := derr
		if err == nil {
			br.Reset(j.buf)
			ds, err = dec.Decode(br, r.rcv)
		}
		q.mu.Lock()
		q.results = append(q.results, decodeResult{j.obj, ds.Blobs, err})
		q.mu.Unlock()
	}
}

// finish takes a decoded object: delivered, or (failed verification)
// received again.
func (r *receiver) finish(d decodeResult) {
	r.inflight--
	o := &r.objs[d.obj]
	r.mem -= int64(o.size)
	r.putBuf(o.buf)
	o.buf = nil
	r.res.Blobs += d.blobs
	if d.err != nil {
		r.res.Rejected++
		*o = rxObject{needed: o.needed, size: o.size}
		return
	}
	o.have = nil
	r.res.Objects++
}

// complete: the manifest is in and every block of every needed object
// (verified or waiting to be).
func (r *receiver) complete() bool {
	if r.man == nil {
		return false
	}
	for i := 1; i < len(r.objs); i++ {
		if o := &r.objs[i]; o.needed >= 0 && !o.complete {
			return false
		}
	}
	return true
}

// verified: every needed object went through the decoder successfully.
func (r *receiver) verified() bool {
	for i := 1; i < len(r.objs); i++ {
		if o := &r.objs[i]; o.needed >= 0 && (!o.complete || o.buf != nil) {
			return false
		}
	}
	return true
}

func (r *receiver) fillResult() {
	r.res.Session = fmt.Sprintf("%08x", r.id)
	r.res.GotBytes = 0
	for i := 1; i < len(r.objs); i++ {
		if o := &r.objs[i]; o.needed > 0 && o.complete && o.buf == nil {
			r.res.GotBytes += int64(o.size)
		}
	}
	if r.seqSet {
		span := uint64(r.maxSeq-r.firstSeq) + 1
		if span > r.res.Datagrams {
			r.res.Lost = span - r.res.Datagrams
		} else {
			r.res.Lost = 0
		}
		r.res.LossPct = 100 * float64(r.res.Lost) / float64(span)
	}
}

func (r *receiver) status() Status {
	r.fillResult()
	return Status{Node: r.node, Done: r.complete(), Received: r.res.Datagrams, Lost: r.res.Lost,
		NeedBytes: uint64(r.res.NeedBytes), GotBytes: uint64(r.res.GotBytes)}
}

// statusEvery is how often a receiver reports while data arrives.
const statusEvery = 50 * time.Millisecond

// maxNakDatagrams bounds one receiver's NAK datagrams per pass end.
const maxNakDatagrams = 64

// sendNaks reports what is missing after pass: missing block runs of
// objects partly here, whole objects otherwise. It waits a random few milliseconds first
// so that many receivers do not answer in the same instant.
func (r *receiver) sendNaks(pass uint8) {
	var rs []Range
	for i := range r.objs {
		o := &r.objs[i]
		if o.complete || o.needed < 0 || (i == 0 && r.man != nil) {
			continue
		}
		if o.buf == nil {
			rs = append(rs, Range{Object: uint32(i)})
			continue
		}
		for b := 0; b < o.nblocks; {
			w := o.have[b/64] >> (b % 64)
			if w&1 != 0 {
				b += bits.TrailingZeros64(^w)
				continue
			}
			e := b
			for e < o.nblocks && o.have[e/64]&(1<<(e%64)) == 0 {
				e++
			}
			rs = append(rs, Range{Object: uint32(i), First: uint32(b), Count: uint32(e - b)})
			b = e
		}
	}
	// At most maxNakDatagrams datagrams: beyond, runs close together are
	// merged (a few blocks resent for nothing) until the list fits.
	for gap := uint32(1); len(rs) > maxNakDatagrams*maxRanges; gap *= 2 {
		w := rs[:1]
		for _, x := range rs[1:] {
			last := &w[len(w)-1]
			if x.Object == last.Object && last.Count != 0 && x.Count != 0 && x.First-(last.First+last.Count) <= gap {
				last.Count = x.First + x.Count - last.First
				continue
			}
			w = append(w, x)
		}
		rs = w
	}
	time.Sleep(time.Duration(mrand.IntN(20)) * time.Millisecond)
	if len(rs) == 0 {
		st := r.status()
		r.sendCtrl(AppendStatus(nil, r.id, &st))
		return
	}
	for len(rs) > 0 {
		n := min(len(rs), maxRanges)
		r.sendCtrl(AppendNak(nil, r.id, &Nak{Node: r.node, Pass: pass, Ranges: rs[:n]}))
		rs = rs[n:]
	}
}
