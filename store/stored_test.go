package store

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/systemimager/sim/chunk"
)

// TestChecksummed: only a single zstd frame that carries its content
// size and a content checksum counts as proven by decoding it.
func TestChecksummed(t *testing.T) {
	data := []byte(strings.Repeat("checksummed frame ", 1000))
	enc := func(opts ...zstd.EOption) []byte {
		e, err := zstd.NewWriter(nil, append(opts, zstd.WithEncoderConcurrency(1))...)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		return e.EncodeAll(data, nil)
	}
	one := enc()
	for _, c := range []struct {
		name  string
		frame []byte
		n     int
		want  bool
	}{
		{"EncodeAll, checksum", one, len(data), true},
		{"no checksum", enc(zstd.WithEncoderCRC(false)), len(data), false},
		{"two frames, the second unchecked", append(append([]byte(nil), one...), enc(zstd.WithEncoderCRC(false))...), 2 * len(data), false},
		{"content size is not the decoded size", one, len(data) + 1, false},
		{"not zstd", []byte("garbage, not a frame"), len(data), false},
		{"empty", nil, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := checksummed(c.frame, c.n); got != c.want {
				t.Errorf("checksummed = %v, want %v", got, c.want)
			}
		})
	}
}

// TestGetStored: GetStored returns what was stored, and damage to a
// pack at rest is still refused whatever the frame (a checksummed zstd
// frame by its checksum, a raw frame and an unchecked one by hashing),
// never returned as the blob.
func TestGetStored(t *testing.T) {
	random := make([]byte, 200<<10) // incompressible: a raw frame
	rand.Read(random)
	text := []byte(strings.Repeat("a compressible blob; ", 20000))
	for _, c := range []struct {
		name string
		blob []byte
		// store puts the blob, returns its id
		store func(t *testing.T, s *Store, b []byte) chunk.ID
	}{
		{"zstd frame of the writer", text, func(t *testing.T, s *Store, b []byte) chunk.ID { return put(t, s, b)[0] }},
		{"raw frame", random, func(t *testing.T, s *Store, b []byte) chunk.ID { return put(t, s, b)[0] }},
		{"received zstd frame without checksum", text, putUnchecked},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := testStore(t)
			id := c.store(t, s, c.blob)
			got, err := s.GetStored(id)
			if err != nil || !bytes.Equal(got, c.blob) {
				t.Fatalf("GetStored: %d bytes, %v", len(got), err)
			}
			loc, err := s.Lookup(id)
			if err != nil {
				t.Fatal(err)
			}
			dir := s.Dir()
			s.Close()
			// Damage one byte in the middle of the frame, on disk.
			f, err := os.OpenFile(s.packPath(loc.Pack), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			off := int64(loc.FrameOff) + int64(loc.FrameLen)/2
			b := make([]byte, 1)
			f.ReadAt(b, off)
			b[0] ^= 0x55
			f.WriteAt(b, off)
			f.Close()
			s2, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			got, err = s2.GetStored(id)
			if err == nil {
				t.Fatalf("GetStored returned %d damaged bytes without an error", len(got))
			}
			if c.name != "zstd frame of the writer" {
				// Hashed: the error says so.
				var ce *chunk.CorruptError
				if !errors.As(err, &ce) && !strings.Contains(err.Error(), "decompress") {
					t.Errorf("error %v: neither a CorruptError nor a decompression failure", err)
				}
			}
		})
	}
}

// putUnchecked stores b as a received frame would arrive: zstd without
// a content checksum, through PutFrame.
func putUnchecked(t *testing.T, s *Store, b []byte) chunk.ID {
	t.Helper()
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	payload := e.EncodeAll(b, nil)
	e.Close()
	id := chunk.Sum(b)
	w := s.NewWriter()
	if err := w.PutFrame(compZstd, payload, []PackEntry{{ID: id, Loc: Loc{Type: TypeData, Off: 0, Len: uint32(len(b))}}}, b); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestGetStoredHashesUnchecked: a blob whose frame carries no checksum
// is hashed by GetStored, so bytes that do not match their id (here
// slipped past the Sink through PutFrame) are refused.
func TestGetStoredHashesUnchecked(t *testing.T) {
	s := testStore(t)
	good := []byte(strings.Repeat("the blob the id names ", 500))
	bad := []byte(strings.Repeat("other bytes, same size ", 500))[:len(good)]
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	payload := e.EncodeAll(bad, nil)
	e.Close()
	id := chunk.Sum(good)
	w := s.NewWriter()
	if err := w.PutFrame(compZstd, payload, []PackEntry{{ID: id, Loc: Loc{Type: TypeData, Len: uint32(len(bad))}}}, bad); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	var ce *chunk.CorruptError
	if got, err := s.GetStored(id); !errors.As(err, &ce) {
		t.Fatalf("GetStored of mismatching bytes in an unchecked frame: %d bytes, %v; want a CorruptError", len(got), err)
	}
}
