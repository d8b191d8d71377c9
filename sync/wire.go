package sync

import (
	"bufio"
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
	e := &Encoder{w: bw, enc: enc}
	_, err = bw.WriteString(wireMagic)
	return e, err
}

func (e *Encoder) put(b []byte) error {
	e.bytes += int64(len(b))
	_, err := e.w.Write(b)
	return err
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
	e.n++
	if err := e.put(h); err != nil {
		return err
	}
	return e.put(z)
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
	e.n++
	if err := e.put(h); err != nil {
		return err
	}
	return e.put(z)
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
	e.n++
	if err := e.put(h); err != nil {
		return err
	}
	return e.put(payload)
}

// CompressFrame builds a zstd frame record from blobs.
func (e *Encoder) CompressFrame(blobs []FrameEntry, data [][]byte) error {
	var raw []byte
	ents := make([]FrameEntry, len(blobs))
	for i, b := range blobs {
		ents[i] = FrameEntry{Type: b.Type, ID: b.ID, Off: uint32(len(raw)), Len: uint32(len(data[i]))}
		raw = append(raw, data[i]...)
	}
	z := e.enc.EncodeAll(raw, nil)
	if len(z) >= len(raw) {
		return e.Frame(compRaw, len(raw), raw, ents)
	}
	return e.Frame(compZstd, len(raw), z, ents)
}

// Commit writes an encoded commit.
func (e *Encoder) Commit(id chunk.ID, b []byte) error {
	h := []byte{recCommit}
	h = append(h, id[:]...)
	h = binary.AppendUvarint(h, uint64(len(b)))
	e.n++
	if err := e.put(h); err != nil {
		return err
	}
	return e.put(b)
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

// Receiver takes what a Decoder reads. Blob gets verified bytes, valid
// only during the call. Frame, if set, gets a whole frame whose blobs all
// verified, with the frame's payload as sent, so a store can keep the
// compressed bytes without compressing them again; otherwise its blobs
// go to Blob one by one.
type Receiver struct {
	Blob   func(t store.Type, id chunk.ID, data []byte) error
	Frame  func(comp byte, payload []byte, ents []FrameEntry, raw []byte) error
	Commit func(id chunk.ID, b []byte) error
	// Base returns the bytes of a delta's base blob (the receiver's).
	Base func(id chunk.ID) ([]byte, error)
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

// Decode reads a whole stream, verifying every blob against its id. It
// returns ErrTruncated if the stream ends early; what was handed to rcv
// before that stays valid.
func Decode(r io.Reader, rcv Receiver) (st DecodeStats, err error) {
	cr := &countReader{r: r}
	br := bufio.NewReaderSize(cr, 256<<10)
	defer func() { st.WireBytes = cr.n }()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxWireFrame))
	if err != nil {
		return st, err
	}
	defer dec.Close()
	magic := make([]byte, len(wireMagic))
	if _, err := io.ReadFull(br, magic); err != nil {
		return st, fmt.Errorf("%w: %v", ErrTruncated, err)
	}
	if string(magic) != wireMagic {
		return st, fmt.Errorf("not a sim wire stream (magic %q)", magic)
	}
	trunc := func(err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w after %d records", ErrTruncated, st.Records)
		}
		return err
	}
	uv := func(max uint64, what string) (uint64, error) {
		v, err := binary.ReadUvarint(br)
		if err != nil {
			return 0, trunc(err)
		}
		if v > max {
			return 0, fmt.Errorf("wire: %s %d exceeds %d", what, v, max)
		}
		return v, nil
	}
	readN := func(n uint64) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(br, b)
		return b, trunc(err)
	}
	var id, base chunk.ID
	for {
		kind, err := br.ReadByte()
		if err != nil {
			return st, trunc(err)
		}
		switch kind {
		case recEnd:
			n, err := uv(1<<62, "count")
			if err != nil {
				return st, err
			}
			if n != uint64(st.Records) {
				return st, fmt.Errorf("wire: end record says %d records, got %d", n, st.Records)
			}
			return st, nil
		case recBlob, recDelta:
			t, err := br.ReadByte()
			if err != nil {
				return st, trunc(err)
			}
			if _, err := io.ReadFull(br, id[:]); err != nil {
				return st, trunc(err)
			}
			comp := byte(compZstd)
			if kind == recDelta {
				if _, err := io.ReadFull(br, base[:]); err != nil {
					return st, trunc(err)
				}
			} else if comp, err = br.ReadByte(); err != nil {
				return st, trunc(err)
			}
			ulen, err := uv(maxWireBlob, "blob length")
			if err != nil {
				return st, err
			}
			clen, err := uv(maxWireBlob, "compressed length")
			if err != nil {
				return st, err
			}
			payload, err := readN(clen)
			if err != nil {
				return st, err
			}
			var data []byte
			switch {
			case kind == recDelta:
				if rcv.Base == nil {
					return st, errors.New("wire: delta record but no base source")
				}
				bb, err := rcv.Base(base)
				if err != nil {
					return st, fmt.Errorf("wire: base %s of delta %s: %w", base.Short(), id.Short(), err)
				}
				dd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxWireBlob),
					zstd.WithDecoderDictRaw(0, bb))
				if err != nil {
					return st, err
				}
				data, err = dd.DecodeAll(payload, make([]byte, 0, ulen))
				dd.Close()
				if err != nil {
					return st, fmt.Errorf("wire: delta %s: %w", id.Short(), err)
				}
			case comp == compZstd:
				if data, err = dec.DecodeAll(payload, make([]byte, 0, ulen)); err != nil {
					return st, fmt.Errorf("wire: blob %s: %w", id.Short(), err)
				}
			case comp == compRaw:
				data = payload
			default:
				return st, fmt.Errorf("wire: unknown compression %d", comp)
			}
			if uint64(len(data)) != ulen {
				return st, fmt.Errorf("wire: blob %s is %d bytes, record says %d", id.Short(), len(data), ulen)
			}
			if err := chunk.Verify(id, data); err != nil {
				return st, err
			}
			if err := checkType(store.Type(t)); err != nil {
				return st, err
			}
			if err := rcv.Blob(store.Type(t), id, data); err != nil {
				return st, err
			}
			st.Blobs++
		case recFrame:
			comp, err := br.ReadByte()
			if err != nil {
				return st, trunc(err)
			}
			ulen, err := uv(maxWireFrame, "frame length")
			if err != nil {
				return st, err
			}
			clen, err := uv(maxWireFrame, "compressed frame length")
			if err != nil {
				return st, err
			}
			n, err := uv(maxFrameEnts, "frame entries")
			if err != nil {
				return st, err
			}
			ents := make([]FrameEntry, n)
			for i := range ents {
				t, err := br.ReadByte()
				if err != nil {
					return st, trunc(err)
				}
				ents[i].Type = store.Type(t)
				if err := checkType(ents[i].Type); err != nil {
					return st, err
				}
				if _, err := io.ReadFull(br, ents[i].ID[:]); err != nil {
					return st, trunc(err)
				}
				off, err := uv(ulen, "offset")
				if err != nil {
					return st, err
				}
				l, err := uv(ulen, "length")
				if err != nil {
					return st, err
				}
				if off+l > ulen {
					return st, fmt.Errorf("wire: frame entry %s outside its frame", ents[i].ID.Short())
				}
				ents[i].Off, ents[i].Len = uint32(off), uint32(l)
			}
			payload, err := readN(clen)
			if err != nil {
				return st, err
			}
			raw := payload
			switch comp {
			case compZstd:
				if raw, err = dec.DecodeAll(payload, make([]byte, 0, ulen)); err != nil {
					return st, fmt.Errorf("wire: frame: %w", err)
				}
			case compRaw:
			default:
				return st, fmt.Errorf("wire: unknown compression %d", comp)
			}
			if uint64(len(raw)) != ulen {
				return st, fmt.Errorf("wire: frame is %d bytes, record says %d", len(raw), ulen)
			}
			for _, x := range ents {
				if err := chunk.Verify(x.ID, raw[x.Off:x.Off+x.Len]); err != nil {
					return st, err
				}
			}
			if rcv.Frame != nil {
				if err := rcv.Frame(comp, payload, ents, raw); err != nil {
					return st, err
				}
			} else {
				for _, x := range ents {
					if err := rcv.Blob(x.Type, x.ID, raw[x.Off:x.Off+x.Len]); err != nil {
						return st, err
					}
				}
			}
			st.Blobs += int64(len(ents))
		case recCommit:
			if _, err := io.ReadFull(br, id[:]); err != nil {
				return st, trunc(err)
			}
			n, err := uv(1<<20, "commit length")
			if err != nil {
				return st, err
			}
			b, err := readN(n)
			if err != nil {
				return st, err
			}
			if err := chunk.Verify(id, b); err != nil {
				return st, err
			}
			if rcv.Commit != nil {
				if err := rcv.Commit(id, b); err != nil {
					return st, err
				}
			}
		default:
			return st, fmt.Errorf("wire: unknown record kind %d", kind)
		}
		st.Records++
	}
}

func checkType(t store.Type) error {
	if t != store.TypeData && t != store.TypeTree {
		return fmt.Errorf("wire: unknown blob type %d", t)
	}
	return nil
}
