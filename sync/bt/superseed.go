package bt

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/anacrolix/torrent/metainfo"
)

// Super-seeding (BEP 16) at the origin. The server's anacrolix client
// seeds every piece to anyone who asks; told that the origin has every
// piece, each node of a rack asks it for the pieces it wants first, and
// the origin sends many pieces several times. The super-seeder sits
// between that client and each peer's TCP connection (the server accepts
// connections itself, capListener) and rewrites what the origin
// advertises: instead of "I have everything" it tells each peer of a few
// pieces only, pieces no connected peer has or is being given, and tells
// it of another when the peer announces (Have) that it completed one. So
// the first pass hands each piece to one peer, and the peers spread it
// among themselves. A peer that makes no progress for stuckAfter with no
// grant outstanding is offered pieces no connected peer holds yet, and
// after starvedAfter (its only sources left, or it cannot reach them) any
// piece it lacks, the rarest first: nothing can starve.
//
// It reads the plain BitTorrent wire protocol only: a connection that
// does not open with the plain handshake (MSE-encrypted, from a standard
// client that prefers it) is passed through untouched, and its peer sees
// a plain seeder.
type superSeeder struct {
	// lookup gives the piece count of a torrent the server seeds.
	lookup func(metainfo.Hash) (int, bool)
	// logf, if set, reports each swarm once its last peer left.
	logf func(format string, a ...any)

	mu     gosync.Mutex
	swarms map[metainfo.Hash]*swarm
	stop   chan struct{}
	once   gosync.Once
}

// swarm is the origin's view of one torrent's peers.
type swarm struct {
	n      int
	given  []int32 // connected peers the piece is advertised to
	count  []int32 // connected peers that have it
	conns  map[*superConn]struct{}
	grants [3]int64 // pieces advertised, by how they were picked
	peers  int      // connections in all
	// Piece data sent: in all, of pieces the peer was not told of (it
	// asked anyway), of pieces it had announced.
	sent, unadv, dup int64
}

// notePiece counts a block of piece i the origin sends c.
func (s *superSeeder) notePiece(c *superConn, i int, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := c.sw
	if sw == nil || i < 0 || i >= sw.n {
		return
	}
	sw.sent += n
	switch {
	case !c.adv[i]:
		sw.unadv += n
	case c.has[i]:
		sw.dup += n
	}
}

// stuckAfter is how long a peer with no grant outstanding may go
// without completing a piece before the origin offers it pieces no
// connected peer holds yet (those it is sending another); starvedAfter,
// before it offers it any piece it lacks, the rarest first (its sources
// left, or it cannot reach them).
const (
	stuckAfter   = 2 * time.Second
	starvedAfter = 6 * time.Second
)

// How grantLocked picks.
const (
	grantNew    = iota // pieces no connected peer has or was given
	grantUnheld        // pieces no connected peer has
	grantAny           // any piece the peer lacks
)

func newSuperSeeder(lookup func(metainfo.Hash) (int, bool)) *superSeeder {
	s := &superSeeder{lookup: lookup, swarms: map[metainfo.Hash]*swarm{}, stop: make(chan struct{})}
	go s.watch()
	return s
}

func (s *superSeeder) close() { s.once.Do(func() { close(s.stop) }) }

// watch gives stuck peers pieces again.
func (s *superSeeder) watch() {
	tick := time.NewTicker(stuckAfter / 3)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-tick.C:
			s.mu.Lock()
			for _, sw := range s.swarms {
				for c := range sw.conns {
					if c.out != 0 || c.nhas >= sw.n {
						continue
					}
					switch idle := now.Sub(c.progress); {
					case idle > starvedAfter:
						c.progress = now
						s.grantLocked(sw, c, grantAny)
					case idle > stuckAfter && !c.stuck:
						c.stuck = true
						s.grantLocked(sw, c, grantUnheld)
					}
				}
			}
			s.mu.Unlock()
		}
	}
}

// wrap puts the super-seeder on an accepted connection.
func (s *superSeeder) wrap(c net.Conn) net.Conn {
	return &superConn{Conn: c, ss: s, rhs: handshakeLen, whs: handshakeLen, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// attach registers c with the swarm of ih; false if the server does not
// seed it.
func (s *superSeeder) attach(c *superConn, ih metainfo.Hash) bool {
	n, ok := s.lookup(ih)
	if !ok || n <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := s.swarms[ih]
	if sw == nil {
		sw = &swarm{n: n, given: make([]int32, n), count: make([]int32, n), conns: map[*superConn]struct{}{}}
		s.swarms[ih] = sw
	}
	c.sw, c.ih = sw, ih
	c.has, c.adv = make([]bool, n), make([]bool, n)
	c.start = rand.IntN(n)
	c.progress = time.Now()
	sw.conns[c] = struct{}{}
	sw.peers++
	return true
}

// detach forgets c: what it had and what it was given.
func (s *superSeeder) detach(c *superConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := c.sw
	if sw == nil {
		return
	}
	for i := range c.has {
		if c.has[i] {
			sw.count[i]--
		}
		if c.adv[i] {
			sw.given[i]--
		}
	}
	delete(sw.conns, c)
	c.sw = nil
	if len(sw.conns) == 0 {
		delete(s.swarms, c.ih)
		if s.logf != nil {
			s.logf("bittorrent: super-seeded %s to %d peers: %d pieces of %d granted first, %d again while in flight, %d again to starved peers; %d bytes of pieces sent, %d of pieces not granted, %d of pieces the peer had",
				c.ih.HexString()[:12], sw.peers, sw.grants[grantNew], sw.n, sw.grants[grantUnheld], sw.grants[grantAny], sw.sent, sw.unadv, sw.dup)
		}
	}
}

// peerHas records that c's peer has piece i (a Have, a bitfield bit).
func (s *superSeeder) peerHasLocked(c *superConn, i int) {
	if i < 0 || i >= len(c.has) || c.has[i] {
		return
	}
	c.has[i] = true
	c.nhas++
	c.sw.count[i]++
	if c.adv[i] {
		c.out--
	}
	c.progress = time.Now()
	c.stuck = false
}

// grantLocked advertises pieces to c until k are outstanding: pieces no
// connected peer has or was given, or (stuck) any it lacks, the rarest
// first. New grants go out as Have messages (or in the bitfield, before
// it is sent).
func (s *superSeeder) grantLocked(sw *swarm, c *superConn, how int) {
	// About 64 pieces outstanding in the swarm (16 MiB of 256 KiB
	// pieces), at least 4 a peer: a lone peer is not held to a trickle of
	// round trips, and a first pass gives nothing twice however many.
	k := max(4, 64/max(1, len(sw.conns)))
	for c.out < k {
		best, bk := -1, int64(1<<62)
		for d := 0; d < sw.n; d++ {
			i := (c.start + d) % sw.n
			if c.has[i] || c.adv[i] {
				continue
			}
			if how != grantAny && sw.count[i] > 0 || how == grantNew && sw.given[i] > 0 {
				continue
			}
			if k := int64(sw.count[i])<<32 | int64(sw.given[i]); k < bk {
				best, bk = i, k
				if k == 0 {
					break
				}
			}
		}
		if best < 0 {
			return
		}
		c.adv[best] = true
		c.out++
		sw.given[best]++
		sw.grants[how]++
		c.start = best + 1 // the next grant continues from here
		c.pmu.Lock()
		c.pending = append(c.pending, uint32(best))
		c.pmu.Unlock()
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// The wire protocol: a 68-byte handshake, then messages of a 4-byte
// big-endian length and, unless it is 0 (keep-alive), a type byte.
const (
	handshakeLen  = 68
	msgHave       = 4
	msgPiece      = 7
	msgBitfield   = 5
	msgHaveAll    = 0x0e
	msgHaveNone   = 0x0f
	maxCollect    = 1 << 20 // a bitfield of 8 Mi pieces
	plainProtocol = "\x13BitTorrent protocol"
)

const (
	modeUnknown = iota
	modePlain
	modePass
)

// superConn is one peer's connection, parsed both ways.
type superConn struct {
	net.Conn
	ss   *superSeeder
	mode atomic.Int32

	// Read side (anacrolix's reader goroutine): what the peer has.
	rhs      int    // handshake bytes still to read
	rbuf     []byte // the handshake; then a message header or collected body
	rleft    int    // body bytes of the current message still to come
	rtype    byte
	rcoll    bool
	attached bool

	// Write side, under wmu: what the origin advertises.
	wmu     gosync.Mutex
	wmode   int
	whs     int
	whdr    []byte
	wleft   int
	wcoll   bool
	wtype   byte
	wlen    int // body length of the current message
	wpos    int // bytes of a Piece message's index seen
	widx    [4]byte
	wbody   []byte
	started bool // the origin's availability message went out
	wout    []byte

	pmu     gosync.Mutex
	pending []uint32 // Haves to send

	kick      chan struct{}
	done      chan struct{}
	closeOnce gosync.Once

	// Under ss.mu.
	sw       *swarm
	ih       metainfo.Hash
	has, adv []bool
	nhas     int
	out      int // grants the peer has not completed
	start    int
	progress time.Time
	stuck    bool // offered unheld pieces since its last progress
}

func (c *superConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.mode.Load() != modePass {
		c.parseIn(b[:n])
	}
	return n, err
}

// parseIn follows what the peer says about its pieces.
func (c *superConn) parseIn(b []byte) {
	for len(b) > 0 {
		switch {
		case c.rhs > 0:
			m := min(c.rhs, len(b))
			c.rbuf = append(c.rbuf, b[:m]...)
			c.rhs -= m
			b = b[m:]
			if !c.attached && len(c.rbuf) >= 48 {
				// Protocol name and info hash read: the server answers
				// only now.
				c.attached = true
				var ih metainfo.Hash
				copy(ih[:], c.rbuf[28:48])
				c.wmu.Lock()
				wpass := c.wmode == modePass
				c.wmu.Unlock()
				if wpass || string(c.rbuf[:20]) != plainProtocol || !c.ss.attach(c, ih) {
					c.mode.Store(modePass)
					return
				}
				c.mode.Store(modePlain)
				go c.flusher()
			}
			if c.rhs == 0 {
				c.rbuf = c.rbuf[:0]
			}
		case c.rleft > 0:
			m := min(c.rleft, len(b))
			if c.rcoll {
				c.rbuf = append(c.rbuf, b[:m]...)
			}
			c.rleft -= m
			b = b[m:]
			if c.rleft == 0 && c.rcoll {
				c.onMessage(c.rtype, c.rbuf)
				c.rbuf, c.rcoll = c.rbuf[:0], false
			}
		default:
			m := min(5-len(c.rbuf), len(b))
			c.rbuf = append(c.rbuf, b[:m]...)
			b = b[m:]
			if len(c.rbuf) >= 4 && binary.BigEndian.Uint32(c.rbuf) == 0 {
				// A keep-alive; a byte of the next header may be in rbuf.
				c.rbuf = append(c.rbuf[:0], c.rbuf[4:]...)
				continue
			}
			if len(c.rbuf) < 5 {
				continue
			}
			l := binary.BigEndian.Uint32(c.rbuf)
			c.rtype, c.rleft = c.rbuf[4], int(l-1)
			c.rbuf = c.rbuf[:0]
			switch c.rtype {
			case msgHave, msgBitfield:
				if c.rleft > maxCollect {
					c.mode.Store(modePass)
					return
				}
				c.rcoll = true
			case msgHaveAll, msgHaveNone:
				c.onMessage(c.rtype, nil)
			}
			if c.rleft == 0 && c.rcoll {
				c.onMessage(c.rtype, nil)
				c.rcoll = false
			}
		}
	}
}

// onMessage takes a peer's Have, Bitfield or HaveAll.
func (c *superConn) onMessage(typ byte, body []byte) {
	s := c.ss
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := c.sw
	if sw == nil {
		return
	}
	switch typ {
	case msgHave:
		if len(body) == 4 {
			s.peerHasLocked(c, int(binary.BigEndian.Uint32(body)))
		}
	case msgBitfield:
		for i := 0; i < sw.n && i/8 < len(body); i++ {
			if body[i/8]&(0x80>>(i%8)) != 0 {
				s.peerHasLocked(c, i)
			}
		}
	case msgHaveAll:
		for i := 0; i < sw.n; i++ {
			s.peerHasLocked(c, i)
		}
	default:
		return
	}
	s.grantLocked(sw, c, grantNew)
}

// Write rewrites the origin's availability message (the bitfield or
// HaveAll after the handshake) into a bitfield of the pieces granted, and
// slips the Haves of later grants in between messages.
func (c *superConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// anacrolix may send the first 28 bytes of its handshake before it
	// reads the peer's: the write side is plain if it opens with the
	// plain protocol name (an MSE answer does not), whatever the read
	// side has seen yet.
	if c.wmode == modeUnknown {
		c.wmode = modePass
		if len(b) >= len(plainProtocol) && string(b[:len(plainProtocol)]) == plainProtocol {
			c.wmode = modePlain
		}
		if c.wmode == modePass {
			c.ss.detach(c) // if the read side attached it
		}
	}
	if c.wmode != modePlain {
		return c.Conn.Write(b)
	}
	out := c.wout[:0]
	for i := 0; i < len(b); {
		switch {
		case c.whs > 0:
			m := min(c.whs, len(b)-i)
			out = append(out, b[i:i+m]...)
			c.whs -= m
			i += m
		case c.wleft > 0:
			m := min(c.wleft, len(b)-i)
			if c.wtype == msgPiece && c.wpos < 4 {
				k := min(4-c.wpos, m)
				copy(c.widx[c.wpos:], b[i:i+k])
				if c.wpos += k; c.wpos == 4 {
					c.ss.notePiece(c, int(binary.BigEndian.Uint32(c.widx[:])), int64(c.wlen-8))
				}
			}
			if c.wcoll {
				c.wbody = append(c.wbody, b[i:i+m]...)
			} else {
				out = append(out, b[i:i+m]...)
			}
			c.wleft -= m
			i += m
			if c.wleft == 0 {
				out = c.endMessage(out)
			}
		default:
			m := min(5-len(c.whdr), len(b)-i)
			c.whdr = append(c.whdr, b[i:i+m]...)
			i += m
			if len(c.whdr) >= 4 && binary.BigEndian.Uint32(c.whdr) == 0 {
				out = append(out, c.whdr[:4]...)
				c.whdr = append(c.whdr[:0], c.whdr[4:]...)
				out = c.appendPending(out)
				continue
			}
			if len(c.whdr) < 5 {
				continue
			}
			l := binary.BigEndian.Uint32(c.whdr)
			c.wtype, c.wleft = c.whdr[4], int(l-1)
			c.wlen, c.wpos = c.wleft, 0
			if !c.started && (c.wtype == msgBitfield || c.wtype == msgHaveAll || c.wtype == msgHaveNone) {
				c.wcoll, c.wbody = true, c.wbody[:0]
			} else {
				if c.wtype != 20 { // anything but the extended handshake
					c.started = true
				}
				out = append(out, c.whdr...)
			}
			c.whdr = c.whdr[:0]
			if c.wleft == 0 {
				out = c.endMessage(out)
			}
		}
	}
	c.wout = out[:0]
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// endMessage completes a message: the availability message replaced,
// then any Haves due.
func (c *superConn) endMessage(out []byte) []byte {
	if c.wcoll {
		c.wcoll = false
		c.started = true
		s := c.ss
		s.mu.Lock()
		var bf []byte
		if sw := c.sw; sw != nil {
			s.grantLocked(sw, c, grantNew)
			bf = make([]byte, (sw.n+7)/8)
			any := false
			for i, a := range c.adv {
				if a {
					bf[i/8] |= 0x80 >> (i % 8)
					any = true
				}
			}
			if !any && c.wtype != msgBitfield {
				bf = nil
			}
		}
		attached := c.sw != nil
		s.mu.Unlock()
		if !attached {
			// Not a torrent the super-seeder follows: as it was.
			out = binary.BigEndian.AppendUint32(out, uint32(c.wlen+1))
			out = append(out, c.wtype)
			return append(out, c.wbody...)
		}
		// Grants so far are in the bitfield.
		c.pmu.Lock()
		c.pending = c.pending[:0]
		c.pmu.Unlock()
		if bf == nil {
			out = append(out, 0, 0, 0, 1, msgHaveNone)
		} else {
			out = binary.BigEndian.AppendUint32(out, uint32(len(bf)+1))
			out = append(out, msgBitfield)
			out = append(out, bf...)
		}
	}
	return c.appendPending(out)
}

// appendPending adds the Haves due, at a message boundary, once the
// availability message is out.
func (c *superConn) appendPending(out []byte) []byte {
	if !c.started {
		return out
	}
	c.pmu.Lock()
	for _, i := range c.pending {
		out = append(out, 0, 0, 0, 5, msgHave)
		out = binary.BigEndian.AppendUint32(out, i)
	}
	c.pending = c.pending[:0]
	c.pmu.Unlock()
	return out
}

// flusher sends grants made while the origin has nothing else to send.
func (c *superConn) flusher() {
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
		}
		c.wmu.Lock()
		if c.wmode == modePlain && c.whs == 0 && c.wleft == 0 && len(c.whdr) == 0 && !c.wcoll {
			if out := c.appendPending(c.wout[:0]); len(out) > 0 {
				c.wout = out[:0]
				if _, err := c.Conn.Write(out); err != nil {
					c.wmu.Unlock()
					return
				}
			}
		}
		c.wmu.Unlock()
	}
}

func (c *superConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.ss.detach(c)
	})
	return c.Conn.Close()
}
