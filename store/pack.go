package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/systemimager/sim/chunk"
)

// Pack file layout (ARCHITECTURE.md "Format: packs"):
//
//	pack    = "SIMPACK1" frame* header uint32le(len(header)) "SIMPEND1"
//	frame   = zstd frame of one or more blobs' bytes, concatenated | the same bytes raw
//	header  = uvarint(n) entry*n
//	entry   = type(1) id(32) uvarint(frameOff) uvarint(frameLen) comp(1) uvarint(off) uvarint(len)
//
// A blob is its frame's decompressed bytes [off, off+len). Small blobs share
// a frame so they compress together; large ones get a frame each. The pack
// id is the BLAKE3 of the whole file.

const (
	packMagic  = "SIMPACK1"
	packEnd    = "SIMPEND1"
	packTail   = 4 + len(packEnd)
	maxHdrSize = 64 << 20
)

// Type says what a blob holds.
type Type uint8

const (
	TypeData Type = 1 // a chunk of a regular file
	TypeTree Type = 2 // an encoded directory (package snapshot)
)

func (t Type) String() string {
	switch t {
	case TypeData:
		return "data"
	case TypeTree:
		return "tree"
	}
	return fmt.Sprintf("type%d", uint8(t))
}

// Compression of a frame.
const (
	compRaw  = 0
	compZstd = 1
)

// Loc is where a blob lives.
type Loc struct {
	Pack     chunk.ID
	FrameOff uint64
	FrameLen uint32
	Comp     uint8
	Off      uint32 // within the decompressed frame
	Len      uint32
	Type     Type
}

// PackEntry is one header entry.
type PackEntry struct {
	ID chunk.ID
	Loc
}

const locSize = 32 + 8 + 4 + 1 + 4 + 4 + 1

func (l Loc) marshal() []byte {
	b := make([]byte, locSize)
	copy(b, l.Pack[:])
	binary.BigEndian.PutUint64(b[32:], l.FrameOff)
	binary.BigEndian.PutUint32(b[40:], l.FrameLen)
	b[44] = l.Comp
	binary.BigEndian.PutUint32(b[45:], l.Off)
	binary.BigEndian.PutUint32(b[49:], l.Len)
	b[53] = byte(l.Type)
	return b
}

func unmarshalLoc(b []byte) (Loc, error) {
	var l Loc
	if len(b) != locSize {
		return l, fmt.Errorf("index entry has %d bytes, want %d", len(b), locSize)
	}
	copy(l.Pack[:], b)
	l.FrameOff = binary.BigEndian.Uint64(b[32:])
	l.FrameLen = binary.BigEndian.Uint32(b[40:])
	l.Comp = b[44]
	l.Off = binary.BigEndian.Uint32(b[45:])
	l.Len = binary.BigEndian.Uint32(b[49:])
	l.Type = Type(b[53])
	return l, nil
}

func encodePackHeader(entries []PackEntry) []byte {
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(entries)))
	for _, e := range entries {
		b = append(b, byte(e.Type))
		b = append(b, e.ID[:]...)
		b = binary.AppendUvarint(b, e.FrameOff)
		b = binary.AppendUvarint(b, uint64(e.FrameLen))
		b = append(b, e.Comp)
		b = binary.AppendUvarint(b, uint64(e.Off))
		b = binary.AppendUvarint(b, uint64(e.Len))
	}
	return b
}

var errBadPack = errors.New("malformed pack")

func decodePackHeader(b []byte, packID chunk.ID, dataEnd uint64) ([]PackEntry, error) {
	r := bytes.NewReader(b)
	n, err := binary.ReadUvarint(r)
	if err != nil || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: bad entry count", errBadPack)
	}
	out := make([]PackEntry, 0, n)
	for i := uint64(0); i < n; i++ {
		var e PackEntry
		t, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", errBadPack, i, err)
		}
		e.Type = Type(t)
		if _, err := io.ReadFull(r, e.ID[:]); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", errBadPack, i, err)
		}
		uv := func() uint64 {
			x, e2 := binary.ReadUvarint(r)
			if err == nil {
				err = e2
			}
			return x
		}
		var v [4]uint64
		v[0], v[1] = uv(), uv()
		if c, e2 := r.ReadByte(); e2 == nil {
			e.Comp = c
		} else if err == nil {
			err = e2
		}
		v[2], v[3] = uv(), uv()
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", errBadPack, i, err)
		}
		e.FrameOff, e.Pack = v[0], packID
		if v[1] > 1<<31 || v[2] > 1<<31 || v[3] > 1<<31 {
			return nil, fmt.Errorf("%w: entry %d: length out of range", errBadPack, i)
		}
		e.FrameLen, e.Off, e.Len = uint32(v[1]), uint32(v[2]), uint32(v[3])
		if e.FrameOff < uint64(len(packMagic)) || e.FrameOff+uint64(e.FrameLen) > dataEnd {
			return nil, fmt.Errorf("%w: entry %d: frame %d+%d outside the pack's data", errBadPack, i, e.FrameOff, e.FrameLen)
		}
		if e.Comp > compZstd || (e.Type != TypeData && e.Type != TypeTree) {
			return nil, fmt.Errorf("%w: entry %d: unknown type %d or compression %d", errBadPack, i, e.Type, e.Comp)
		}
		if e.Comp == compRaw && uint64(e.Off)+uint64(e.Len) > uint64(e.FrameLen) {
			return nil, fmt.Errorf("%w: entry %d: blob outside its raw frame", errBadPack, i)
		}
		out = append(out, e)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%w: %d trailing header bytes", errBadPack, r.Len())
	}
	return out, nil
}

// readPackHeader reads and checks the header of a pack file of the given size.
func readPackHeader(r io.ReaderAt, size int64, packID chunk.ID) ([]PackEntry, error) {
	if size < int64(len(packMagic)+packTail) {
		return nil, fmt.Errorf("%w: %d bytes is too short", errBadPack, size)
	}
	var magic [8]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil {
		return nil, err
	}
	if string(magic[:]) != packMagic {
		return nil, fmt.Errorf("%w: bad magic %q", errBadPack, magic[:])
	}
	tail := make([]byte, packTail)
	if _, err := r.ReadAt(tail, size-int64(packTail)); err != nil {
		return nil, err
	}
	if string(tail[4:]) != packEnd {
		return nil, fmt.Errorf("%w: bad end marker", errBadPack)
	}
	hl := int64(binary.LittleEndian.Uint32(tail))
	if hl > maxHdrSize || hl > size-int64(len(packMagic)+packTail) {
		return nil, fmt.Errorf("%w: header length %d out of range", errBadPack, hl)
	}
	hdr := make([]byte, hl)
	hoff := size - int64(packTail) - hl
	if _, err := r.ReadAt(hdr, hoff); err != nil {
		return nil, err
	}
	return decodePackHeader(hdr, packID, uint64(hoff))
}
