// Package bt carries objects between stores over BitTorrent: a server
// derives a torrent from a commit (or from the objects that take one
// commit to another), seeds it straight from its packs, runs the tracker
// and is the web seed; nodes download the pieces from each other, verify
// every object and write it into their own store, and seed what they
// have. Nothing is generated ahead of time and nothing is stored twice.
//
// The payload of a torrent is a concatenation of frames (ARCHITECTURE.md
// "BitTorrent"): the frames sync.Planner would stream over HTTP for the
// same (want, base), stored frames as they sit in the packs and the
// other objects regrouped into new zstd frames. A manifest, served with
// the info dictionary, says where each frame starts and which objects it
// holds; a node decodes a frame as soon as the pieces covering it are
// complete.
package bt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	gosync "sync"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/klauspost/compress/zstd"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/seal"
)

// Record is one frame of a torrent's payload.
type Record struct {
	Off     int64 // where it starts in the payload
	Len     int64 // its bytes in the payload (compressed; sealed: + seal.Overhead)
	Comp    byte  // store.CompZstd or store.CompRaw
	ULen    uint32
	Entries []simsync.FrameEntry
	// Nonce, in a sealed torrent, is the one the frame was sealed with.
	Nonce seal.Nonce
}

// FrameLen is the length of the record's frame (its payload bytes less
// the seal's).
func (r *Record) FrameLen(sealed bool) int64 {
	if sealed {
		return r.Len - seal.Overhead
	}
	return r.Len
}

// Torrent is what the server publishes for a (want, base) pair.
type Torrent struct {
	Want, Base chunk.ID // base zero: a full install
	InfoBytes  []byte   // the bencoded info dictionary
	Info       metainfo.Info
	InfoHash   metainfo.Hash
	Records    []Record
	PeerPort   int // the server's BitTorrent port, 0 if it does not seed
	// Sealed torrents carry every frame sealed (sync/seal) under Key,
	// which only the document holds: peers relay ciphertext.
	Sealed bool
	Key    seal.Key
}

// Length is the payload size.
func (t *Torrent) Length() int64 { return t.Info.Length }

// Objects counts the objects in the payload.
func (t *Torrent) Objects() int {
	n := 0
	for _, r := range t.Records {
		n += len(r.Entries)
	}
	return n
}

// recordsIn returns the indexes [i, j) of the records overlapping
// [off, off+n) of the payload.
func (t *Torrent) recordsIn(off, n int64) (int, int) {
	i := sort.Search(len(t.Records), func(k int) bool { return t.Records[k].Off+t.Records[k].Len > off })
	j := i
	for j < len(t.Records) && t.Records[j].Off < off+n {
		j++
	}
	return i, j
}

// readSpans fills b with the payload at off, one record at a time: read
// gets record k's part of b and where that part starts in the record.
// Like io.ReaderAt, it returns io.EOF when b reaches past the end.
func (t *Torrent) readSpans(b []byte, off int64, read func(k int, part []byte, in int64) error) (int, error) {
	n := 0
	i, j := t.recordsIn(off, int64(len(b)))
	for k := i; k < j && n < len(b); k++ {
		r := &t.Records[k]
		in := off + int64(n) - r.Off
		m := int(min(int64(len(b)-n), r.Len-in))
		if err := read(k, b[n:n+m], in); err != nil {
			return n, err
		}
		n += m
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// piecesOf returns the pieces [a, b) that hold record r.
func (t *Torrent) piecesOf(r *Record) (int, int) {
	pl := t.Info.PieceLength
	return int(r.Off / pl), int((r.Off + r.Len + pl - 1) / pl)
}

const (
	docMagic       = "SIMBTOR1"
	sealedDocMagic = "SIMBTOR2"
	// minPiece..maxPiece bound the piece length; it doubles from
	// minPiece until the torrent has at most maxPieces pieces.
	minPiece  = 256 << 10
	maxPiece  = 16 << 20
	maxPieces = 8192
	// Decoding limits: nothing a server sends comes close.
	maxInfo    = 16 << 20
	maxRecords = 1 << 22
	maxEntries = 1 << 26
	maxRecLen  = 64 << 20
)

// pieceLength picks the piece length for a payload of n bytes: small
// pieces spread over more peers sooner; the cap on their count keeps the
// info dictionary (20 bytes a piece) small for big images.
func pieceLength(n int64) int64 {
	pl := int64(minPiece)
	for pl < maxPiece && (n+pl-1)/pl > maxPieces {
		pl *= 2
	}
	return pl
}

// Encode writes the document the server serves at /v1/bt/torrent
// (ARCHITECTURE.md "BitTorrent"): magic, want, base, peer port, info
// dictionary, then the records.
func (t *Torrent) Encode() []byte {
	b := []byte(docMagic)
	if t.Sealed {
		b = []byte(sealedDocMagic)
	}
	b = append(b, t.Want[:]...)
	b = append(b, t.Base[:]...)
	b = binary.AppendUvarint(b, uint64(t.PeerPort))
	b = binary.AppendUvarint(b, uint64(len(t.InfoBytes)))
	b = append(b, t.InfoBytes...)
	if t.Sealed {
		b = append(b, t.Key[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(t.Records)))
	for _, r := range t.Records {
		if t.Sealed {
			b = append(b, r.Nonce[:]...)
		}
		b = append(b, r.Comp)
		b = binary.AppendUvarint(b, uint64(r.ULen))
		b = binary.AppendUvarint(b, uint64(r.Len))
		b = binary.AppendUvarint(b, uint64(len(r.Entries)))
		for _, e := range r.Entries {
			b = append(b, byte(e.Type))
			b = append(b, e.ID[:]...)
			b = binary.AppendUvarint(b, uint64(e.Off))
			b = binary.AppendUvarint(b, uint64(e.Len))
		}
	}
	return b
}

// docReader reads document fields with a sticky error.
type docReader struct {
	b   []byte
	err error
}

func (r *docReader) fail(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("torrent document: "+format, a...)
	}
}

func (r *docReader) take(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.fail("truncated")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *docReader) uv(max uint64, what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad %s", what)
		return 0
	}
	r.b = r.b[n:]
	if v > max {
		r.fail("%s %d exceeds %d", what, v, max)
		return 0
	}
	return v
}

func (r *docReader) id() (id chunk.ID) {
	copy(id[:], r.take(32))
	return id
}

// DecodeTorrent parses and checks a document: the info dictionary must
// describe exactly the records (total length, piece count), and every
// entry must lie inside its frame.
func DecodeTorrent(b []byte) (*Torrent, error) {
	t := &Torrent{}
	switch {
	case bytes.HasPrefix(b, []byte(docMagic)):
	case bytes.HasPrefix(b, []byte(sealedDocMagic)):
		t.Sealed = true
	default:
		return nil, errors.New("torrent document: bad magic (not a sim server?)")
	}
	r := &docReader{b: b[len(docMagic):]}
	t.Want = r.id()
	t.Base = r.id()
	t.PeerPort = int(r.uv(65535, "peer port"))
	t.InfoBytes = append([]byte(nil), r.take(r.uv(maxInfo, "info length"))...)
	if t.Sealed {
		copy(t.Key[:], r.take(seal.KeySize))
	}
	n := r.uv(maxRecords, "record count")
	var off int64
	entries := 0
	for i := uint64(0); i < n && r.err == nil; i++ {
		var nonce seal.Nonce
		if t.Sealed {
			copy(nonce[:], r.take(seal.NonceSize))
		}
		cb := r.take(1)
		if r.err != nil {
			break
		}
		rec := Record{Off: off, Comp: cb[0], Nonce: nonce}
		rec.ULen = uint32(r.uv(maxRecLen, "frame length"))
		rec.Len = int64(r.uv(maxRecLen+seal.Overhead, "record length"))
		ne := r.uv(maxEntries, "entry count")
		entries += int(ne)
		if entries > maxEntries {
			r.fail("too many entries")
			break
		}
		if rec.Comp != store.CompZstd && rec.Comp != store.CompRaw {
			r.fail("record %d: unknown compression %d", i, rec.Comp)
		}
		if rec.FrameLen(t.Sealed) <= 0 || rec.FrameLen(t.Sealed) > maxRecLen {
			r.fail("record %d: %d bytes", i, rec.Len)
		}
		rec.Entries = make([]simsync.FrameEntry, 0, min(ne, 1<<16))
		for k := uint64(0); k < ne && r.err == nil; k++ {
			var e simsync.FrameEntry
			tb := r.take(1)
			if r.err != nil {
				break
			}
			e.Type = store.Type(tb[0])
			e.ID = r.id()
			o, l := r.uv(uint64(rec.ULen), "entry offset"), r.uv(uint64(rec.ULen), "entry length")
			if o+l > uint64(rec.ULen) {
				r.fail("record %d: entry %s outside its frame", i, e.ID.Short())
			}
			if e.Type != store.TypeData && e.Type != store.TypeTree {
				r.fail("record %d: unknown blob type %d", i, e.Type)
			}
			e.Off, e.Len = uint32(o), uint32(l)
			rec.Entries = append(rec.Entries, e)
		}
		t.Records = append(t.Records, rec)
		off += rec.Len
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d bytes after the records", len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	if err := bencode.Unmarshal(t.InfoBytes, &t.Info); err != nil {
		return nil, fmt.Errorf("torrent document: info dictionary: %w", err)
	}
	pl := t.Info.PieceLength
	if pl <= 0 || pl > maxPiece || t.Info.Length != off || len(t.Info.Files) != 0 {
		return nil, fmt.Errorf("torrent document: info does not match the records (piece length %d, length %d, records %d bytes)", pl, t.Info.Length, off)
	}
	if want := (off + pl - 1) / pl; int64(len(t.Info.Pieces)) != want*20 {
		return nil, fmt.Errorf("torrent document: %d piece hashes for %d pieces", len(t.Info.Pieces)/20, want)
	}
	t.InfoHash = metainfo.HashBytes(t.InfoBytes)
	return t, nil
}

// source is where the server reads a record: a stored frame (loc) or
// the bytes of a frame built for the torrent.
type source struct {
	loc  store.Loc
	data []byte
}

// payload reads a torrent's payload on the server.
type payload struct {
	st   *store.Store
	t    *Torrent
	srcs []source
	// broken, if set, is called once when a stored frame cannot be
	// read: a `sim gc` repacked the store under a seeded torrent.
	broken     func()
	brokenOnce gosync.Once
	// spool, for a sealed torrent, holds the whole sealed payload (an
	// unlinked file in the store's tmp directory).
	spool *os.File
}

// close releases a sealed payload's spool.
func (p *payload) close() {
	if p.spool != nil {
		p.spool.Close()
	}
}

// ReadAt reads the payload at off: stored frames straight from their
// packs, built ones from memory; a sealed payload from its spool.
func (p *payload) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.t.Length() {
		return 0, io.EOF
	}
	if p.spool != nil {
		n, err := p.spool.ReadAt(b, off)
		if err == io.EOF && n == len(b) {
			err = nil
		}
		return n, err
	}
	return p.t.readSpans(b, off, func(k int, part []byte, in int64) error {
		if s := p.srcs[k]; s.data != nil {
			copy(part, s.data[in:])
		} else if _, err := p.st.ReadRawAt(s.loc, part, in); err != nil {
			if p.broken != nil {
				p.brokenOnce.Do(p.broken)
			}
			return err
		}
		return nil
	})
}

// Build derives the torrent that takes a store holding base (zero: an
// empty store) to want: every tree and chunk of want that base lacks,
// grouped into frames as sync.Planner.GroupFrames does. It is
// deterministic for a given store: every call, on any server holding the
// same packs, gives the same info hash.
func Build(ctx context.Context, st *store.Store, pl *simsync.Planner, want, base chunk.ID) (*Torrent, *payload, error) {
	var haves []chunk.ID
	if !base.IsZero() {
		haves = []chunk.ID{base}
	}
	plan, err := pl.Plan(want, haves)
	if err != nil {
		return nil, nil, err
	}
	if !base.IsZero() && plan.Haves == 0 {
		return nil, nil, fmt.Errorf("base commit %s: %w", base.Short(), store.ErrNotFound)
	}
	ids := make([]chunk.ID, 0, len(plan.Trees)+len(plan.Chunks))
	for _, t := range plan.Trees {
		ids = append(ids, t.ID)
	}
	ids = append(ids, plan.Chunks...)
	// One encoder configuration for every build, so built frames come
	// out the same every time.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, nil, err
	}
	defer enc.Close()
	t := &Torrent{Want: want, Base: base}
	p := &payload{st: st, t: t}
	var off int64
	err = pl.GroupFrames(ctx, ids, func(g simsync.FrameGroup) error {
		rec := Record{Off: off}
		var src source
		if g.Stored {
			rec.Comp, rec.Len, rec.ULen, rec.Entries = g.Loc.Comp, int64(g.Loc.FrameLen), uint32(g.ULen), g.Entries
			src.loc = g.Loc
		} else {
			data := make([][]byte, len(g.Entries))
			for i, e := range g.Entries {
				b, err := st.GetAt(e.ID, g.Locs[i])
				if err != nil {
					return err
				}
				data[i] = b
			}
			comp, z, ents, ulen := simsync.BuildFrame(enc, g.Entries, data)
			rec.Comp, rec.Len, rec.ULen, rec.Entries = comp, int64(len(z)), uint32(ulen), ents
			src.data = z
		}
		t.Records = append(t.Records, rec)
		p.srcs = append(p.srcs, src)
		off += rec.Len
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if off == 0 {
		return nil, nil, fmt.Errorf("commit %s adds nothing to %s: no torrent needed", want.Short(), base.Short())
	}
	name := "sim-" + want.String()[:16]
	if !base.IsZero() {
		name += "-from-" + base.String()[:16]
	}
	if err := t.finish(p, name); err != nil {
		return nil, nil, err
	}
	return t, p, nil
}

// finish makes the info dictionary of the payload p reads.
func (t *Torrent) finish(p *payload, name string) error {
	var off int64
	for _, r := range t.Records {
		off += r.Len
	}
	t.Info = metainfo.Info{Name: name, PieceLength: pieceLength(off), Length: off}
	var err error
	if t.Info.Pieces, err = metainfo.GeneratePieces(io.NewSectionReader(p, 0, off), t.Info.PieceLength, nil); err != nil {
		return fmt.Errorf("hash pieces: %w", err)
	}
	if t.InfoBytes, err = bencode.Marshal(t.Info); err != nil {
		return err
	}
	t.InfoHash = metainfo.HashBytes(t.InfoBytes)
	return nil
}

// sealedName is every sealed torrent's name: a stranger who fetches the
// info dictionary from a peer learns the payload's length and nothing
// of what it holds.
const sealedName = "sim-sealed"

// Seal turns the plain torrent t (payload p, from Build) into a sealed
// one: every frame sealed with key (sync/seal; record k is unit k), the
// sealed payload written once into an unlinked spool file in dir, the
// pieces hashed over it. The same store and key give the same info hash
// every time.
func Seal(ctx context.Context, t *Torrent, p *payload, key seal.Key, dir string) (*Torrent, *payload, error) {
	sl, err := seal.New(key)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.CreateTemp(dir, "bt-sealed-*.spool")
	if err != nil {
		return nil, nil, fmt.Errorf("bt: sealed spool: %w", err)
	}
	os.Remove(f.Name()) // unlinked: nothing to clean up after a crash
	st := &Torrent{Want: t.Want, Base: t.Base, Sealed: true, Key: key, Records: make([]Record, len(t.Records))}
	sp := &payload{st: p.st, t: st, spool: f}
	var off int64
	var frame, sealed []byte
	for k, r := range t.Records {
		if err := ctx.Err(); err != nil {
			f.Close()
			return nil, nil, err
		}
		if src := p.srcs[k]; src.data != nil {
			frame = src.data
		} else if frame, err = p.st.ReadRawInto(src.loc, frame); err != nil {
			f.Close()
			return nil, nil, err
		}
		nonce, out := sl.Seal(sealed[:0], uint64(k), frame)
		sealed = out
		if _, err := f.WriteAt(out, off); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("bt: sealed spool: %w", err)
		}
		rec := r
		rec.Off, rec.Len, rec.Nonce = off, int64(len(out)), nonce
		st.Records[k] = rec
		off += rec.Len
	}
	if err := st.finish(sp, sealedName); err != nil {
		f.Close()
		return nil, nil, err
	}
	return st, sp, nil
}
