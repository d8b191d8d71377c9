package sync

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// Wire stream (ARCHITECTURE.md "Format: wire stream"):
//
//	stream = "SIMWIRE1" record* end
//	record = 1 type:u8 id:[32] comp:u8 uvarint(ulen) uvarint(clen) payload        one blob
//	       | 2 type:u8 id:[32] base:[32] uvarint(ulen) uvarint(clen) payload      blob as zstd with base as dictionary
//	       | 3 comp:u8 uvarint(ulen) uvarint(clen) uvarint(n) (type:u8 id:[32] uvarint(off) uvarint(len)){n} payload
//	                                                                              frame of several blobs
//	       | 4 id:[32] uvarint(len) bytes                                         commit
//	end    = 0 uvarint(records)
const (
	wireMagic = "SIMWIRE1"

	recEnd    = 0
	recBlob   = 1
	recDelta  = 2
	recFrame  = 3
	recCommit = 4

	compRaw  = 0
	compZstd = 1

	maxWireBlob  = 64 << 20 // larger than any chunk, tree or frame sim writes
	maxWireFrame = 64 << 20
	maxFrameEnts = 1 << 20
)

// ErrTruncated says a wire stream ended before its end record.
var ErrTruncated = errors.New("wire stream truncated")

// FrameEntry is one blob of a frame record.
type FrameEntry struct {
	Type store.Type
	ID   chunk.ID
	Off  uint32
	Len  uint32
}

// Encoder writes a wire stream.
type Encoder struct {
	w     *bufio.Writer
	n     uint64
	bytes int64
	enc   *zstd.Encoder
}

// NewEncoder starts a stream on w.
func NewEncoder(w io.Writer) (*Encoder, error) {
	bw := bufio.NewWriterSize(w, 256<<10)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	e := &Encoder{w: bw, enc: enc, bytes: int64(len(wireMagic))}
	_, err = bw.WriteString(wireMagic)
	return e, err
}

func (e *Encoder) put(b []byte) error {
	e.bytes += int64(len(b))
	_, err := e.w.Write(b)
	return err
}

// record writes one record: its header, then its payload.
func (e *Encoder) record(h, payload []byte) error {
	e.n++
	if err := e.put(h); err != nil {
		return err
	}
	return e.put(payload)
}

// Blob writes one blob, compressed when that helps.
func (e *Encoder) Blob(t store.Type, id chunk.ID, data []byte) error {
	z := e.enc.EncodeAll(data, nil)
	comp := byte(compZstd)
	if len(z) >= len(data) {
		z, comp = data, compRaw
	}
	h := []byte{recBlob, byte(t)}
	h = append(h, id[:]...)
	h = append(h, comp)
	h = binary.AppendUvarint(h, uint64(len(data)))
	h = binary.AppendUvarint(h, uint64(len(z)))
	return e.record(h, z)
}

// Delta writes blob id compressed with base (which the receiver has) as a
// zstd dictionary: a directory tree that changed in a few entries costs a
// few bytes instead of its size.
func (e *Encoder) Delta(t store.Type, id, base chunk.ID, data, baseData []byte) error {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderDictRaw(0, baseData))
	if err != nil {
		return e.Blob(t, id, data)
	}
	z := enc.EncodeAll(data, nil)
	enc.Close()
	h := []byte{recDelta, byte(t)}
	h = append(h, id[:]...)
	h = append(h, base[:]...)
	h = binary.AppendUvarint(h, uint64(len(data)))
	h = binary.AppendUvarint(h, uint64(len(z)))
	return e.record(h, z)
}

// Frame writes a frame: payload holds the blobs' bytes back to back,
// compressed (comp = zstd) or not, as a store keeps them.
func (e *Encoder) Frame(comp byte, ulen int, payload []byte, ents []FrameEntry) error {
	h := []byte{recFrame, comp}
	h = binary.AppendUvarint(h, uint64(ulen))
	h = binary.AppendUvarint(h, uint64(len(payload)))
	h = binary.AppendUvarint(h, uint64(len(ents)))
	for _, x := range ents {
		h = append(h, byte(x.Type))
		h = append(h, x.ID[:]...)
		h = binary.AppendUvarint(h, uint64(x.Off))
		h = binary.AppendUvarint(h, uint64(x.Len))
	}
	return e.record(h, payload)
}

// CompressFrame builds a zstd frame record from blobs.
func (e *Encoder) CompressFrame(blobs []FrameEntry, data [][]byte) error {
	comp, payload, ents, ulen := BuildFrame(e.enc, blobs, data)
	return e.Frame(comp, ulen, payload, ents)
}

// BuildFrame lays blobs (types and ids from blobs, bytes from data) back
// to back and compresses them with enc, or keeps them raw when that is
// not smaller. For one encoder configuration the result depends only on
// the input (BitTorrent payloads rely on that).
func BuildFrame(enc *zstd.Encoder, blobs []FrameEntry, data [][]byte) (comp byte, payload []byte, ents []FrameEntry, ulen int) {
	var raw []byte
	ents = make([]FrameEntry, len(blobs))
	for i, b := range blobs {
		ents[i] = FrameEntry{Type: b.Type, ID: b.ID, Off: uint32(len(raw)), Len: uint32(len(data[i]))}
		raw = append(raw, data[i]...)
	}
	z := enc.EncodeAll(raw, nil)
	if len(z) >= len(raw) {
		return compRaw, raw, ents, len(raw)
	}
	return compZstd, z, ents, len(raw)
}

// Commit writes an encoded commit.
func (e *Encoder) Commit(id chunk.ID, b []byte) error {
	h := []byte{recCommit}
	h = append(h, id[:]...)
	h = binary.AppendUvarint(h, uint64(len(b)))
	return e.record(h, b)
}

// Close writes the end record and flushes.
func (e *Encoder) Close() error {
	b := binary.AppendUvarint([]byte{recEnd}, e.n)
	if err := e.put(b); err != nil {
		return err
	}
	e.enc.Close()
	return e.w.Flush()
}

// Bytes is how much has been written.
func (e *Encoder) Bytes() int64 { return e.bytes }

// Receiver takes the records of a wire stream as Decode parses them. The
// bytes are well formed (lengths, bounds and types checked) but NOT yet
// checked against their ids: a Sink, the one way objects enter a store,
// verifies them; any other Receiver must do so itself. Blob's data and
// Frame's payload are valid only during the call.
type Receiver interface {
	// Blob gets one blob, decompressed.
	Blob(t store.Type, id chunk.ID, data []byte) error
	// Frame gets a frame as it was sent (comp 0 raw or 1 zstd, ulen
	// bytes uncompressed), so a store can keep its compressed bytes.
	Frame(comp byte, ulen int, payload []byte, ents []FrameEntry) error
	// Commit gets an encoded commit.
	Commit(id chunk.ID, b []byte) error
	// Base returns the receiver's bytes of a delta's base blob.
	Base(id chunk.ID) ([]byte, error)
}

// DecodeStats counts what a Decoder read.
type DecodeStats struct {
	Records, Blobs int64
	WireBytes      int64
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// wireReader reads stream fields with a sticky error: after the first
// failure every read returns zero values, and err says what went wrong.
type wireReader struct {
	br      *bufio.Reader
	err     error
	records int64
	// payload is reused from frame to frame (a Receiver's Frame payload
	// is valid only during the call): a fresh 1-4 MiB buffer per frame,
	// grown and zeroed as it filled, was a twentieth of an install's
	// CPU.
	payload []byte
}

func (r *wireReader) fail(err error) {
	if r.err != nil {
		return
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("%w after %d records", ErrTruncated, r.records)
	}
	r.err = err
}

func (r *wireReader) byte1() byte {
	if r.err != nil {
		return 0
	}
	b, err := r.br.ReadByte()
	r.fail(err)
	return b
}

func (r *wireReader) full(b []byte) {
	if r.err == nil {
		_, err := io.ReadFull(r.br, b)
		r.fail(err)
	}
}

func (r *wireReader) id() (id chunk.ID) {
	r.full(id[:])
	return id
}

// uv reads a uvarint no larger than max.
func (r *wireReader) uv(max uint64, what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(r.br)
	if err != nil {
		r.fail(err)
		return 0
	}
	if v > max {
		r.fail(fmt.Errorf("wire: %s %d exceeds %d", what, v, max))
		return 0
	}
	return v
}

func (r *wireReader) bytes(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if n <= 1<<20 {
		b := make([]byte, n)
		r.full(b)
		return b
	}
	// A length is a claim: memory grows with the bytes that really
	// come, so a peer that announces 64 MiB and stalls costs little.
	var buf bytes.Buffer
	buf.Grow(1 << 20)
	if _, err := io.CopyN(&buf, r.br, int64(n)); err != nil {
		r.fail(err)
		return nil
	}
	return buf.Bytes()
}

// reused reads n bytes into the reader's payload buffer, valid until the
// next call. As with bytes, memory grows with the bytes that really
// come (doubling from 1 MiB), not with the claim.
func (r *wireReader) reused(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	b := r.payload[:0]
	for uint64(len(b)) < n && r.err == nil {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), min(n, max(2*uint64(cap(b)), 1<<20)))
			copy(nb, b)
			b = nb
		}
		m := min(n, uint64(cap(b)))
		r.full(b[len(b):m])
		b = b[:m]
	}
	r.payload = b
	return b
}

// decodeCap is the capacity to decompress a payload of n bytes claiming
// ulen into: the claim, unless it is far beyond what the payload can
// hold (zstd grows the buffer if it must).
func decodeCap(ulen uint64, n int) int {
	return int(min(ulen, 64*uint64(n)+64<<10))
}

// Decode reads a whole stream into rcv. It checks the stream's structure
// (and caps every length before allocating), decompresses blob and delta
// records, and hands frames over as they came; it does not hash: rcv
// verifies (a Sink does). It returns ErrTruncated if the stream ends
// early; what was handed to rcv before that stays valid.
func Decode(in io.Reader, rcv Receiver) (st DecodeStats, err error) {
	d, err := NewDecoder()
	if err != nil {
		return st, err
	}
	defer d.Close()
	return d.Decode(in, rcv)
}

// A Decoder decodes streams one after another (Decode), keeping its
// read buffer, frame payload buffer and zstd decoder from one to the
// next: a multicast receiver decodes an object of a few MiB at a time,
// and fresh buffers for each were garbage several times the image. Not
// safe for concurrent use.
type Decoder struct {
	br      *bufio.Reader
	payload []byte
	dec     *zstd.Decoder
}

// NewDecoder returns a Decoder; Close it when done.
func NewDecoder() (*Decoder, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxWireFrame))
	if err != nil {
		return nil, err
	}
	return &Decoder{br: bufio.NewReaderSize(nil, 256<<10), dec: dec}, nil
}

// Close releases the zstd decoder.
func (d *Decoder) Close() { d.dec.Close() }

// Decode is the package's Decode, with d's buffers.
func (d *Decoder) Decode(in io.Reader, rcv Receiver) (st DecodeStats, err error) {
	cr := &countReader{r: in}
	defer func() { st.WireBytes = cr.n }()
	d.br.Reset(cr)
	r := &wireReader{br: d.br, payload: d.payload}
	defer func() {
		d.payload = r.payload
		d.br.Reset(nil)
	}()
	dec := d.dec
	magic := make([]byte, len(wireMagic))
	if r.full(magic); r.err != nil {
		return st, r.err
	}
	if string(magic) != wireMagic {
		return st, fmt.Errorf("not a sim wire stream (magic %q)", magic)
	}
	for {
		kind := r.byte1()
		switch {
		case r.err != nil:
			return st, r.err
		case kind == recEnd:
			n := r.uv(1<<62, "count")
			if r.err == nil && n != uint64(r.records) {
				r.fail(fmt.Errorf("wire: end record says %d records, got %d", n, r.records))
			}
			return st, r.err
		case kind == recBlob || kind == recDelta:
			t := store.Type(r.byte1())
			id := r.id()
			var base chunk.ID
			comp := byte(compZstd)
			if kind == recDelta {
				base = r.id()
			} else {
				comp = r.byte1()
			}
			ulen := r.uv(maxWireBlob, "blob length")
			payload := r.bytes(r.uv(maxWireBlob, "compressed length"))
			if r.err != nil {
				return st, r.err
			}
			data, err := decodeBlob(dec, rcv, kind, comp, id, base, ulen, payload)
			if err == nil {
				err = checkType(t)
			}
			if err == nil {
				err = rcv.Blob(t, id, data)
			}
			if err != nil {
				return st, err
			}
			st.Blobs++
		case kind == recFrame:
			comp := r.byte1()
			ulen := r.uv(maxWireFrame, "frame length")
			clen := r.uv(maxWireFrame, "compressed frame length")
			n := r.uv(maxFrameEnts, "frame entries")
			ents := make([]FrameEntry, 0, min(n, 4096)) // grows with the entries that really come
			for i := uint64(0); i < n && r.err == nil; i++ {
				var e FrameEntry
				e.Type = store.Type(r.byte1())
				e.ID = r.id()
				off, l := r.uv(ulen, "offset"), r.uv(ulen, "length")
				if r.err == nil && off+l > ulen {
					r.fail(fmt.Errorf("wire: frame entry %s outside its frame", e.ID.Short()))
				}
				if r.err == nil {
					r.fail(checkType(e.Type))
				}
				e.Off, e.Len = uint32(off), uint32(l)
				ents = append(ents, e)
			}
			payload := r.reused(clen)
			if r.err != nil {
				return st, r.err
			}
			if comp != compRaw && comp != compZstd {
				return st, fmt.Errorf("wire: unknown compression %d", comp)
			}
			if comp == compRaw && clen != ulen {
				return st, fmt.Errorf("wire: raw frame of %d bytes says %d", clen, ulen)
			}
			if err := rcv.Frame(comp, int(ulen), payload, ents); err != nil {
				return st, err
			}
			st.Blobs += int64(len(ents))
		case kind == recCommit:
			id := r.id()
			b := r.bytes(r.uv(1<<20, "commit length"))
			if r.err != nil {
				return st, r.err
			}
			if err := rcv.Commit(id, b); err != nil {
				return st, err
			}
		default:
			return st, fmt.Errorf("wire: unknown record kind %d", kind)
		}
		r.records++
		st.Records = r.records
	}
}

// decodeBlob turns a blob or delta record's payload into the blob's bytes.
func decodeBlob(dec *zstd.Decoder, rcv Receiver, kind, comp byte, id, base chunk.ID, ulen uint64, payload []byte) ([]byte, error) {
	var data []byte
	var err error
	switch {
	case kind == recDelta:
		bb, err := rcv.Base(base)
		if err != nil {
			return nil, fmt.Errorf("wire: base %s of delta %s: %w", base.Short(), id.Short(), err)
		}
		dd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxWireBlob),
			zstd.WithDecoderDictRaw(0, bb))
		if err != nil {
			return nil, err
		}
		data, err = dd.DecodeAll(payload, make([]byte, 0, decodeCap(ulen, len(payload))))
		dd.Close()
		if err != nil {
			return nil, fmt.Errorf("wire: delta %s: %w", id.Short(), err)
		}
	case comp == compZstd:
		if data, err = dec.DecodeAll(payload, make([]byte, 0, decodeCap(ulen, len(payload)))); err != nil {
			return nil, fmt.Errorf("wire: blob %s: %w", id.Short(), err)
		}
	case comp == compRaw:
		data = payload
	default:
		return nil, fmt.Errorf("wire: unknown compression %d", comp)
	}
	if uint64(len(data)) != ulen {
		return nil, fmt.Errorf("wire: blob %s is %d bytes, record says %d", id.Short(), len(data), ulen)
	}
	return data, nil
}

func checkType(t store.Type) error {
	if t != store.TypeData && t != store.TypeTree {
		return fmt.Errorf("wire: unknown blob type %d", t)
	}
	return nil
}
