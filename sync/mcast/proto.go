// Package mcast sends the objects a set of nodes lack to all of them at
// once by IP multicast, reliably enough that what a node still lacks at
// the end is small and comes over HTTP (ARCHITECTURE.md "Multicast").
//
// A Session (sender) multicasts a manifest and numbered objects, each a
// self-contained wire stream (sync.Decode verifies every blob in it), cut
// into datagrams. Receivers (Receive) register with the sender, put
// objects together, hand verified blobs to a sync.Receiver, and report
// what they miss (NAKs) when the sender ends a pass; the sender repairs
// the union of what was reported in a later pass, a bounded number of
// times. A receiver that loses most datagrams (a slow link) is dropped
// from repairs and fills over HTTP, so it never slows the others.
//
// A sealed session (Config.Sealed: the server's reads need a token)
// encrypts its data datagrams and its receivers' control datagrams
// under a random key that travels only in the session's document
// (ARCHITECTURE.md "Multicast: sealed sessions").
package mcast

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/sync/seal"
)

// Datagram layout (all integers big-endian; ARCHITECTURE.md "Multicast
// datagrams"):
//
//	header  = magic:"SM" version:u8 kind:u8 session:u32      8 bytes
//	body    = kind-specific
//	trailer = crc32c:u32 of header and body
//
// Sealed sessions' kinds 7 (data: the payload sealed, the 24 bytes
// before it authenticated) and 8 (a JOIN, STATUS or NAK sealed whole)
// carry a 16-byte GCM tag at the end of the body.
const (
	magic0, magic1 = 'S', 'M'
	// version 2: FEC (REPAIR datagrams, kinds 10 and 11). A version 1
	// receiver decodes none of a version 2 session's datagrams: it
	// finds no session and fetches over HTTP; a version 2 receiver
	// that meets another version says so (ErrVersion).
	version    = 2
	headerLen  = 8
	trailerLen = 4
)

// Datagram kinds.
const (
	KindData     = 1 // sender → group: a piece of an object
	KindAnnounce = 2 // sender → group: the session's state
	KindJoin     = 3 // receiver → sender: register, with haves
	KindMember   = 4 // sender → receiver: registration answer, or "dropped"
	KindStatus   = 5 // receiver → sender: progress and loss
	KindNak      = 6 // receiver → sender: what is missing after a pass
	// KindSealedData is KindData with the payload sealed (AES-256-GCM
	// under the session's key, the 24 bytes before the payload as
	// associated data): the data of every session of a server whose
	// reads need a token (ARCHITECTURE.md "Multicast: sealed sessions").
	KindSealedData = 7 // sender → group: a sealed piece of an object
	// KindSealedControl carries a receiver's JOIN, STATUS or NAK in a
	// sealed session, sealed under the session's control key: only a
	// receiver holding the key registers, reports loss or asks for
	// repairs, and its host name and have commits stay private.
	KindSealedControl = 8 // receiver → sender
	// KindSealedSender carries the sender's ANNOUNCE or MEMBER in a
	// sealed session, sealed under the session's sender key: nodes obey
	// only the sender's (a forged "done" or "dropped" is not), and the
	// session's commit and shape stay private.
	KindSealedSender = 9 // sender → group (ANNOUNCE), sender → receiver (MEMBER)
	// KindRepair is a Reed–Solomon parity shard of an FEC block (k
	// consecutive data blocks of one object): a receiver holding any k
	// of the block's data and parity shards rebuilds the rest of its
	// data (ARCHITECTURE.md "Multicast: forward error correction").
	KindRepair = 10 // sender → group
	// KindSealedRepair is KindRepair with the shard sealed under the
	// session's repair key.
	KindSealedRepair = 11 // sender → group
)

// Session states, as announced.
const (
	StateWaiting    = 1 // registering receivers
	StateSending    = 2 // a pass is under way
	StateCollecting = 3 // a pass ended: receivers send NAKs now
	StateDone       = 4 // over: fill the rest over HTTP
)

// StateName names a session state for logs and JSON.
func StateName(s uint8) string {
	switch s {
	case StateWaiting:
		return "waiting"
	case StateSending:
		return "sending"
	case StateCollecting:
		return "collecting"
	case StateDone:
		return "done"
	}
	return fmt.Sprintf("state%d", s)
}

// Member states, as the sender sends them in a Member datagram.
const (
	MemberJoined  = 1
	MemberDropped = 2 // a straggler: fill over HTTP
)

// Sizes.
const (
	// IPUDPOverhead is an IPv4 header without options plus a UDP header.
	IPUDPOverhead = 28
	// dataHead is a data datagram's bytes before its payload.
	dataHead = headerLen + 16
	// repairHead is a repair datagram's bytes before its shard: 4 more
	// than a data datagram's, so a session with FEC makes its blocks 4
	// bytes smaller (BlockFor) and a repair datagram fills the MTU.
	repairHead = dataHead + 4
	// MinPayload and MaxPayload bound a data datagram's payload (the
	// plaintext of a sealed one).
	MinPayload = 512
	MaxPayload = 9000 - IPUDPOverhead - dataHead - trailerLen
	// maxObject bounds an object (a wire stream of a few frames).
	maxObject = 64 << 20
	// maxObjects bounds a session's object count.
	maxObjects = 1 << 22
	// MaxHaves is how many have commits a Join carries.
	MaxHaves = 32
	maxName  = 64
	// maxRanges is how many ranges one NAK datagram carries (fits 1500).
	maxRanges = 100
)

// PayloadFor is the data payload that fills a datagram on a link of mtu;
// sealed, the payload that fills it once the GCM tag is added.
func PayloadFor(mtu int, sealed bool) int {
	p := mtu - IPUDPOverhead - dataHead - trailerLen
	if sealed {
		p -= seal.Overhead
	}
	return min(max(p, MinPayload), MaxPayload)
}

// BlockFor is a session's block (data payload per datagram) on a link
// of mtu: PayloadFor, 4 bytes less with FEC so that a repair datagram
// (one block of parity behind a 28-byte head) fills the MTU too.
func BlockFor(mtu int, sealed, fec bool) int {
	p := PayloadFor(mtu, sealed)
	if fec {
		p = max(p-(repairHead-dataHead), MinPayload)
	}
	return p
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrVersion says a datagram is a sim multicast datagram of another
// protocol version (an older or newer sim): the receiver cannot take
// part in its session and says so.
var ErrVersion = errors.New("mcast: another protocol version")

// ErrNotOurs says a datagram is not a sim multicast datagram at all
// (another protocol on the port): ignored without complaint.
var ErrNotOurs = errors.New("mcast: not a sim datagram")

// Header is what every datagram starts with.
type Header struct {
	Kind    uint8
	Session uint32
}

// Data is a piece of an object: Payload is bytes [Offset, Offset+len) of
// object Object, which is ObjLen bytes long. Object 0 is the manifest.
// Decoded from a KindSealedData datagram, Payload is the sealed bytes
// until OpenData opens them.
type Data struct {
	Seq     uint32 // the sender's datagram counter: receivers count gaps as loss
	Object  uint32
	ObjLen  uint32
	Offset  uint32
	Payload []byte
}

// Repair is parity shard Index of the FEC block of object Object made
// of its K data blocks from block First; the code has M parity shards
// (fecCodeParity(K)), of which the sender sends the first few. Shard is
// one block of bytes (sealed: plus the tag until OpenRepair opens it).
type Repair struct {
	Seq    uint32 // the data datagram counter, as Data's: gaps are loss
	Object uint32
	ObjLen uint32
	First  uint32 // the FEC block's first data block
	K      uint8  // its data blocks
	M      uint8  // the code's parity shards
	Index  uint8  // this shard, 0..M-1
	Shard  []byte
}

// Announce is the session's state, multicast a few times a second.
type Announce struct {
	State     uint8
	Pass      uint8
	Block     uint16 // payload bytes per data datagram (the last of an object may be shorter)
	Want      chunk.ID
	Objects   uint32 // objects including the manifest (object 0)
	Bytes     uint64 // all objects' bytes
	Manifest  chunk.ID
	RateBits  uint64 // current send rate, bit/s
	Seq       uint32 // data datagrams sent so far
	Receivers uint16
}

// Join registers a receiver with the haves it offers.
type Join struct {
	Node  uint64
	Name  string
	Haves []chunk.ID
}

// Member answers a Join or drops a receiver.
type Member struct {
	Node  uint64
	State uint8
}

// Status is a receiver's progress and loss.
type Status struct {
	Node      uint64
	Done      bool   // has every object it needs
	Received  uint64 // data datagrams received
	Lost      uint64 // data datagrams missed (gaps in Seq since the first received)
	NeedBytes uint64 // bytes of the objects it needs (0 until the manifest arrived)
	GotBytes  uint64 // of which complete
}

// Range is blocks [First, First+Count) of an object, a block being one
// data datagram's payload. Count 0 means the whole object (a receiver
// that saw none of it does not know its length).
type Range struct {
	Object, First, Count uint32
}

// Nak lists what a receiver lacks after pass Pass.
type Nak struct {
	Node   uint64
	Pass   uint8
	Ranges []Range
}

func appendHeader(b []byte, kind uint8, session uint32) []byte {
	b = append(b, magic0, magic1, version, kind)
	return binary.BigEndian.AppendUint32(b, session)
}

func appendCRC(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// AppendData encodes a data datagram onto b.
func AppendData(b []byte, session uint32, d *Data) []byte {
	return appendData(b, KindData, session, d)
}

// appendData encodes d as a datagram of kind with d.Payload as it is
// (for KindSealedData: the sealed bytes).
func appendData(b []byte, kind uint8, session uint32, d *Data) []byte {
	b = appendHeader(b, kind, session)
	b = binary.BigEndian.AppendUint32(b, d.Seq)
	b = binary.BigEndian.AppendUint32(b, d.Object)
	b = binary.BigEndian.AppendUint32(b, d.ObjLen)
	b = binary.BigEndian.AppendUint32(b, d.Offset)
	b = append(b, d.Payload...)
	return appendCRC(b)
}

// dataNonce is the nonce of a sealed data datagram: seq, object and
// offset. Under one session's key it never seals two plaintexts: seq
// counts every data datagram of the session, and should it ever wrap
// (2^32 datagrams), (object, offset) alone names the same bytes, since a
// session's objects and block size are fixed once it plans.
func dataNonce(d *Data) seal.Nonce {
	var n seal.Nonce
	binary.BigEndian.PutUint32(n[0:], d.Seq)
	binary.BigEndian.PutUint32(n[4:], d.Object)
	binary.BigEndian.PutUint32(n[8:], d.Offset)
	return n
}

// AppendSealedData encodes a sealed data datagram onto b: d.Payload
// sealed by sl, the header and the four fields before it authenticated
// with it (a datagram moved to another session, object or offset does
// not open). It is seal.Overhead bytes longer than AppendData's.
func AppendSealedData(b []byte, session uint32, d *Data, sl *seal.Sealer) []byte {
	start := len(b)
	b = appendHeader(b, KindSealedData, session)
	b = binary.BigEndian.AppendUint32(b, d.Seq)
	b = binary.BigEndian.AppendUint32(b, d.Object)
	b = binary.BigEndian.AppendUint32(b, d.ObjLen)
	b = binary.BigEndian.AppendUint32(b, d.Offset)
	b = sl.SealNonce(b, dataNonce(d), b[start:], d.Payload)
	return appendCRC(b)
}

// OpenData opens a sealed data datagram that Decode took into p from
// raw (p.Data.Payload aliases raw): in place, so that p.Data.Payload is
// then the plaintext. An error (wrapping seal.ErrOpen) means the
// datagram is not what the session's sender sealed (another key, or
// altered): drop it.
func OpenData(raw []byte, p *Packet, sl *seal.Sealer) error {
	if p.Kind != KindSealedData || len(raw) < dataHead+seal.Overhead+trailerLen {
		return fmt.Errorf("mcast: not a sealed data datagram (kind %d)", p.Kind)
	}
	d := &p.Data
	plain, err := sl.OpenNonce(d.Payload[:0], dataNonce(d), raw[:dataHead], d.Payload)
	if err != nil {
		return fmt.Errorf("mcast: object %d offset %d: %w", d.Object, d.Offset, err)
	}
	d.Payload = plain
	return nil
}

// AppendRepair encodes a repair datagram onto b.
func AppendRepair(b []byte, session uint32, r *Repair) []byte {
	b = appendRepairHead(b, KindRepair, session, r)
	b = append(b, r.Shard...)
	return appendCRC(b)
}

func appendRepairHead(b []byte, kind uint8, session uint32, r *Repair) []byte {
	b = appendHeader(b, kind, session)
	b = binary.BigEndian.AppendUint32(b, r.Seq)
	b = binary.BigEndian.AppendUint32(b, r.Object)
	b = binary.BigEndian.AppendUint32(b, r.ObjLen)
	b = binary.BigEndian.AppendUint32(b, r.First)
	return append(b, r.K, r.M, r.Index, 0)
}

// repairNonce is the nonce of a sealed repair datagram, under the
// repair key (never the data key, so it meets no data nonce): seq,
// object, and first<<8 | index (first is below 2^17: 64 MiB / 512).
// seq counts every data and repair datagram of the session; should it
// wrap, (object, first, index) alone names the same bytes (k and M
// follow from the object's size and the session's fixed K).
func repairNonce(r *Repair) seal.Nonce {
	var n seal.Nonce
	binary.BigEndian.PutUint32(n[0:], r.Seq)
	binary.BigEndian.PutUint32(n[4:], r.Object)
	binary.BigEndian.PutUint32(n[8:], r.First<<8|uint32(r.Index))
	return n
}

// RepairKey is the key a sealed session's repair datagrams are sealed
// under, derived from the session's key.
func RepairKey(k seal.Key) (seal.Key, error) {
	return seal.Derive(k[:], "sim mcast repair v1")
}

// AppendSealedRepair encodes a sealed repair datagram onto b: r.Shard
// sealed by sl (the session's repair key), the 28 bytes before it
// authenticated.
func AppendSealedRepair(b []byte, session uint32, r *Repair, sl *seal.Sealer) []byte {
	start := len(b)
	b = appendRepairHead(b, KindSealedRepair, session, r)
	b = sl.SealNonce(b, repairNonce(r), b[start:], r.Shard)
	return appendCRC(b)
}

// OpenRepair opens a sealed repair datagram that Decode took into p
// from raw, in place. An error means the session's sender did not seal
// it: drop it.
func OpenRepair(raw []byte, p *Packet, sl *seal.Sealer) error {
	if p.Kind != KindSealedRepair || len(raw) < repairHead+seal.Overhead+trailerLen {
		return fmt.Errorf("mcast: not a sealed repair datagram (kind %d)", p.Kind)
	}
	x := &p.Repair
	plain, err := sl.OpenNonce(x.Shard[:0], repairNonce(x), raw[:repairHead], x.Shard)
	if err != nil {
		return fmt.Errorf("mcast: repair of object %d block %d: %w", x.Object, x.First, err)
	}
	x.Shard = plain
	return nil
}

// AppendAnnounce encodes an announcement.
func AppendAnnounce(b []byte, session uint32, a *Announce) []byte {
	b = appendHeader(b, KindAnnounce, session)
	b = append(b, a.State, a.Pass)
	b = binary.BigEndian.AppendUint16(b, a.Block)
	b = append(b, a.Want[:]...)
	b = binary.BigEndian.AppendUint32(b, a.Objects)
	b = binary.BigEndian.AppendUint64(b, a.Bytes)
	b = append(b, a.Manifest[:]...)
	b = binary.BigEndian.AppendUint64(b, a.RateBits)
	b = binary.BigEndian.AppendUint32(b, a.Seq)
	b = binary.BigEndian.AppendUint16(b, a.Receivers)
	return appendCRC(b)
}

// AppendJoin encodes a registration; names longer than 64 bytes and
// haves beyond MaxHaves are cut.
func AppendJoin(b []byte, session uint32, j *Join) []byte {
	b = appendHeader(b, KindJoin, session)
	b = binary.BigEndian.AppendUint64(b, j.Node)
	name := j.Name
	if len(name) > maxName {
		name = name[:maxName]
	}
	b = append(b, byte(len(name)))
	b = append(b, name...)
	haves := j.Haves
	if len(haves) > MaxHaves {
		haves = haves[:MaxHaves]
	}
	b = append(b, byte(len(haves)))
	for _, h := range haves {
		b = append(b, h[:]...)
	}
	return appendCRC(b)
}

// AppendMember encodes a member answer.
func AppendMember(b []byte, session uint32, m *Member) []byte {
	b = appendHeader(b, KindMember, session)
	b = binary.BigEndian.AppendUint64(b, m.Node)
	b = append(b, m.State)
	return appendCRC(b)
}

// AppendStatus encodes a status report.
func AppendStatus(b []byte, session uint32, s *Status) []byte {
	b = appendHeader(b, KindStatus, session)
	b = binary.BigEndian.AppendUint64(b, s.Node)
	var f byte
	if s.Done {
		f = 1
	}
	b = append(b, f)
	for _, v := range []uint64{s.Received, s.Lost, s.NeedBytes, s.GotBytes} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return appendCRC(b)
}

// AppendNak encodes a NAK; at most maxRanges ranges fit one datagram,
// the caller splits longer lists.
func AppendNak(b []byte, session uint32, n *Nak) []byte {
	b = appendHeader(b, KindNak, session)
	b = binary.BigEndian.AppendUint64(b, n.Node)
	b = append(b, n.Pass)
	rs := n.Ranges
	if len(rs) > maxRanges {
		rs = rs[:maxRanges]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(rs)))
	for _, r := range rs {
		b = binary.BigEndian.AppendUint32(b, r.Object)
		b = binary.BigEndian.AppendUint32(b, r.First)
		b = binary.BigEndian.AppendUint32(b, r.Count)
	}
	return appendCRC(b)
}

// Packet is one decoded datagram: Header plus the body of its kind.
type Packet struct {
	Header
	Data     Data
	Repair   Repair
	Announce Announce
	Join     Join
	Member   Member
	Status   Status
	Nak      Nak
	Control  Control
	Sender   SenderBox
}

// SenderBox is a sealed sender datagram (KindSealedSender): Box is the
// plain ANNOUNCE or MEMBER datagram, sealed; Ctr, the sender's count of
// them (from 1), makes its nonce.
type SenderBox struct {
	Ctr uint64
	Box []byte
}

// senderHead is a sealed sender datagram's bytes before its box.
const senderHead = headerLen + 8

// SenderKey is the key a sealed session's sender datagrams are sealed
// under, derived from the session's key (one counter, one key: no
// nonce is shared with data or control datagrams).
func SenderKey(k seal.Key) (seal.Key, error) {
	return seal.Derive(k[:], "sim mcast sender v1")
}

func senderNonce(ctr uint64) seal.Nonce {
	var n seal.Nonce
	binary.BigEndian.PutUint64(n[0:], ctr)
	return n
}

// AppendSealedSender wraps inner (a whole ANNOUNCE or MEMBER datagram
// of session) sealed by sl (the session's sender key) with counter ctr.
func AppendSealedSender(b []byte, session uint32, ctr uint64, inner []byte, sl *seal.Sealer) []byte {
	start := len(b)
	b = appendHeader(b, KindSealedSender, session)
	b = binary.BigEndian.AppendUint64(b, ctr)
	b = sl.SealNonce(b, senderNonce(ctr), b[start:], inner)
	return appendCRC(b)
}

// OpenSender opens the sealed sender datagram that Decode took into p
// from raw (in place) and decodes what it holds into q: an ANNOUNCE or
// MEMBER of the same session. An error means the session's sender did
// not send it (ignore it).
func OpenSender(raw []byte, p *Packet, sl *seal.Sealer, q *Packet) error {
	if p.Kind != KindSealedSender || len(raw) < senderHead+seal.Overhead+trailerLen {
		return fmt.Errorf("mcast: not a sealed sender datagram (kind %d)", p.Kind)
	}
	x := &p.Sender
	inner, err := sl.OpenNonce(x.Box[:0], senderNonce(x.Ctr), raw[:senderHead], x.Box)
	if err != nil {
		return fmt.Errorf("mcast: sender datagram %d: %w", x.Ctr, err)
	}
	if err := Decode(inner, q); err != nil {
		return fmt.Errorf("mcast: sealed sender datagram: %w", err)
	}
	if q.Kind != KindAnnounce && q.Kind != KindMember {
		return fmt.Errorf("mcast: sealed sender datagram holds a kind %d", q.Kind)
	}
	if q.Session != p.Session {
		return fmt.Errorf("mcast: sealed sender datagram of session %08x holds one of session %08x", p.Session, q.Session)
	}
	return nil
}

// Control is a sealed control datagram (KindSealedControl): Box is the
// plain JOIN, STATUS or NAK datagram, sealed; Node and Ctr make its
// nonce (a receiver counts its control datagrams from 1).
type Control struct {
	Node uint64
	Ctr  uint32
	Box  []byte
}

// controlHead is a sealed control datagram's bytes before its box.
const controlHead = headerLen + 12

// controlNonce is the nonce of a sealed control datagram: node, ctr.
// Node ids are random (64 bits) per receiver and each receiver counts,
// so no two control datagrams of a session share one; the control key
// is not the data key, so they never meet a data nonce either.
func controlNonce(node uint64, ctr uint32) seal.Nonce {
	var n seal.Nonce
	binary.BigEndian.PutUint64(n[0:], node)
	binary.BigEndian.PutUint32(n[8:], ctr)
	return n
}

// ControlKey is the key a sealed session's control datagrams are sealed
// under, derived from the session's key.
func ControlKey(k seal.Key) (seal.Key, error) {
	return seal.Derive(k[:], "sim mcast control v1")
}

// AppendSealedControl wraps inner (a whole JOIN, STATUS or NAK datagram
// of session, from node) sealed by sl (the session's control key) with
// counter ctr.
func AppendSealedControl(b []byte, session uint32, node uint64, ctr uint32, inner []byte, sl *seal.Sealer) []byte {
	start := len(b)
	b = appendHeader(b, KindSealedControl, session)
	b = binary.BigEndian.AppendUint64(b, node)
	b = binary.BigEndian.AppendUint32(b, ctr)
	b = sl.SealNonce(b, controlNonce(node, ctr), b[start:], inner)
	return appendCRC(b)
}

// OpenControl opens the sealed control datagram that Decode took into p
// from raw (in place), and decodes what it holds into q: a JOIN, STATUS
// or NAK of the same session and node. An error means it is not what a
// holder of the key sent (drop it).
func OpenControl(raw []byte, p *Packet, sl *seal.Sealer, q *Packet) error {
	if p.Kind != KindSealedControl || len(raw) < controlHead+seal.Overhead+trailerLen {
		return fmt.Errorf("mcast: not a sealed control datagram (kind %d)", p.Kind)
	}
	c := &p.Control
	inner, err := sl.OpenNonce(c.Box[:0], controlNonce(c.Node, c.Ctr), raw[:controlHead], c.Box)
	if err != nil {
		return fmt.Errorf("mcast: control datagram of node %016x: %w", c.Node, err)
	}
	if err := Decode(inner, q); err != nil {
		return fmt.Errorf("mcast: sealed control datagram: %w", err)
	}
	var node uint64
	switch q.Kind {
	case KindJoin:
		node = q.Join.Node
	case KindStatus:
		node = q.Status.Node
	case KindNak:
		node = q.Nak.Node
	default:
		return fmt.Errorf("mcast: sealed control datagram holds a kind %d", q.Kind)
	}
	if q.Session != p.Session || node != c.Node {
		return fmt.Errorf("mcast: sealed control datagram of session %08x node %016x holds one of session %08x node %016x", p.Session, c.Node, q.Session, node)
	}
	return nil
}

// reader takes fields off a datagram body with a sticky error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("mcast: datagram truncated (%d bytes short)", n-len(r.b))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) id() (id chunk.ID) {
	copy(id[:], r.take(32))
	return id
}

// Decode parses datagram b into p, checking its checksum and every
// field's bounds. Data.Payload aliases b. A foreign datagram gives
// ErrNotOurs; a damaged one a descriptive error.
func Decode(b []byte, p *Packet) error {
	if len(b) < headerLen+trailerLen || b[0] != magic0 || b[1] != magic1 {
		return ErrNotOurs
	}
	if b[2] != version {
		return fmt.Errorf("%w: datagram version %d, want %d", ErrVersion, b[2], version)
	}
	body := b[:len(b)-trailerLen]
	if got, want := crc32.Checksum(body, crcTable), binary.BigEndian.Uint32(b[len(body):]); got != want {
		return fmt.Errorf("mcast: datagram checksum %08x, want %08x", got, want)
	}
	p.Kind = b[3]
	p.Session = binary.BigEndian.Uint32(b[4:8])
	r := &reader{b: body[headerLen:]}
	switch p.Kind {
	case KindData, KindSealedData:
		d := &p.Data
		d.Seq, d.Object, d.ObjLen, d.Offset = r.u32(), r.u32(), r.u32(), r.u32()
		if r.err == nil {
			d.Payload = r.b
			r.b = nil
			// a sealed payload carries the GCM tag: its plaintext is
			// seal.Overhead bytes shorter, and at least one byte
			plain := len(d.Payload)
			if p.Kind == KindSealedData {
				plain -= seal.Overhead
			}
			switch {
			case d.ObjLen > maxObject:
				r.err = fmt.Errorf("mcast: object %d of %d bytes exceeds %d", d.Object, d.ObjLen, maxObject)
			case d.Object >= maxObjects:
				r.err = fmt.Errorf("mcast: object index %d exceeds %d", d.Object, maxObjects)
			case plain <= 0 || uint64(d.Offset)+uint64(plain) > uint64(d.ObjLen):
				r.err = fmt.Errorf("mcast: data [%d,+%d) outside object %d of %d bytes", d.Offset, plain, d.Object, d.ObjLen)
			}
		}
	case KindRepair, KindSealedRepair:
		x := &p.Repair
		x.Seq, x.Object, x.ObjLen, x.First = r.u32(), r.u32(), r.u32(), r.u32()
		x.K, x.M, x.Index = r.u8(), r.u8(), r.u8()
		reserved := r.u8()
		if r.err == nil {
			x.Shard = r.b
			r.b = nil
			plain := len(x.Shard)
			if p.Kind == KindSealedRepair {
				plain -= seal.Overhead
			}
			switch {
			case reserved != 0:
				r.err = fmt.Errorf("mcast: repair datagram with reserved byte %#x", reserved)
			case x.ObjLen > maxObject:
				r.err = fmt.Errorf("mcast: object %d of %d bytes exceeds %d", x.Object, x.ObjLen, maxObject)
			case x.Object >= maxObjects:
				r.err = fmt.Errorf("mcast: object index %d exceeds %d", x.Object, maxObjects)
			case x.K < 1 || x.K > maxFECK || int(x.M) != fecCodeParity(int(x.K)) || x.Index >= x.M:
				r.err = fmt.Errorf("mcast: repair shard %d of a %d+%d FEC block", x.Index, x.K, x.M)
			case plain < MinPayload || plain > MaxPayload:
				r.err = fmt.Errorf("mcast: repair shard of %d bytes", plain)
			case uint64(x.First)*MinPayload >= uint64(x.ObjLen):
				r.err = fmt.Errorf("mcast: repair of block %d outside object %d of %d bytes", x.First, x.Object, x.ObjLen)
			}
		}
	case KindAnnounce:
		a := &p.Announce
		a.State, a.Pass, a.Block = r.u8(), r.u8(), r.u16()
		a.Want = r.id()
		a.Objects, a.Bytes = r.u32(), r.u64()
		a.Manifest = r.id()
		a.RateBits, a.Seq, a.Receivers = r.u64(), r.u32(), r.u16()
		if r.err == nil {
			switch {
			case a.State < StateWaiting || a.State > StateDone:
				r.err = fmt.Errorf("mcast: announce with unknown state %d", a.State)
			case a.Objects > maxObjects:
				r.err = fmt.Errorf("mcast: announce of %d objects exceeds %d", a.Objects, maxObjects)
			case a.State != StateWaiting && (a.Block < MinPayload || a.Block > MaxPayload):
				r.err = fmt.Errorf("mcast: announce with block size %d", a.Block)
			}
		}
	case KindJoin:
		j := &p.Join
		j.Node = r.u64()
		j.Name = string(r.take(int(r.u8())))
		n := int(r.u8())
		if n > MaxHaves && r.err == nil {
			r.err = fmt.Errorf("mcast: join with %d haves exceeds %d", n, MaxHaves)
		}
		j.Haves = j.Haves[:0]
		for i := 0; i < n && r.err == nil; i++ {
			j.Haves = append(j.Haves, r.id())
		}
	case KindMember:
		p.Member.Node, p.Member.State = r.u64(), r.u8()
		if r.err == nil && p.Member.State != MemberJoined && p.Member.State != MemberDropped {
			r.err = fmt.Errorf("mcast: member state %d", p.Member.State)
		}
	case KindStatus:
		s := &p.Status
		s.Node = r.u64()
		f := r.u8()
		s.Done = f&1 != 0
		s.Received, s.Lost, s.NeedBytes, s.GotBytes = r.u64(), r.u64(), r.u64(), r.u64()
		if r.err == nil && f > 1 {
			r.err = fmt.Errorf("mcast: status flags %#x", f)
		}
	case KindNak:
		n := &p.Nak
		n.Node, n.Pass = r.u64(), r.u8()
		cnt := int(r.u16())
		if cnt > maxRanges && r.err == nil {
			r.err = fmt.Errorf("mcast: nak with %d ranges exceeds %d", cnt, maxRanges)
		}
		n.Ranges = n.Ranges[:0]
		for i := 0; i < cnt && r.err == nil; i++ {
			rg := Range{r.u32(), r.u32(), r.u32()}
			if rg.Object >= maxObjects && r.err == nil {
				r.err = fmt.Errorf("mcast: nak for object %d", rg.Object)
			}
			n.Ranges = append(n.Ranges, rg)
		}
	case KindSealedSender:
		x := &p.Sender
		x.Ctr = r.u64()
		if r.err == nil {
			x.Box = r.b
			r.b = nil
			if len(x.Box) < seal.Overhead+headerLen+trailerLen {
				r.err = fmt.Errorf("mcast: sealed sender datagram of %d bytes", len(x.Box))
			}
		}
	case KindSealedControl:
		c := &p.Control
		c.Node, c.Ctr = r.u64(), r.u32()
		if r.err == nil {
			c.Box = r.b
			r.b = nil
			if len(c.Box) < seal.Overhead+headerLen+trailerLen {
				r.err = fmt.Errorf("mcast: sealed control datagram of %d bytes", len(c.Box))
			}
		}
	default:
		return fmt.Errorf("mcast: unknown datagram kind %d", p.Kind)
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("mcast: %d trailing bytes in a kind %d datagram", len(r.b), p.Kind)
	}
	return r.err
}
