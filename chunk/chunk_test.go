package chunk

import (
	"bytes"
	"io"
	"math/rand"
	"testing"
)

// TestGoldenBoundaries pins where DefaultParams cut a fixed input: if the
// polynomial, the bounds or the chunker library change, every store
// stops deduplicating against older ones, and this test says so.
func TestGoldenBoundaries(t *testing.T) {
	data := make([]byte, 8<<20)
	rand.New(rand.NewSource(42)).Read(data)
	c := NewChunker(DefaultParams)
	c.Reset(bytes.NewReader(data))
	var sizes []int
	var first ID
	for {
		b, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(sizes) == 0 {
			first = Sum(b)
		}
		sizes = append(sizes, len(b))
	}
	total := 0
	for _, s := range sizes {
		total += s
	}
	if total != len(data) {
		t.Fatalf("chunks add up to %d, want %d", total, len(data))
	}
	for i, s := range sizes[:len(sizes)-1] {
		if s < int(DefaultParams.MinSize) || s > int(DefaultParams.MaxSize) {
			t.Errorf("chunk %d has %d bytes, outside %d..%d", i, s, DefaultParams.MinSize, DefaultParams.MaxSize)
		}
	}
	const wantChunks, wantFirst, wantID = 46, 200523, "544013ee832e"
	if len(sizes) != wantChunks || sizes[0] != wantFirst || first.Short() != wantID {
		t.Errorf("%d chunks, first %d bytes (id %s); want %d chunks, first %d bytes (id %s)",
			len(sizes), sizes[0], first.Short(), wantChunks, wantFirst, wantID)
	}
}

func TestParseID(t *testing.T) {
	id := Sum([]byte("sim"))
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{id.String(), true},
		{Prefix + id.String(), true},
		{id.String()[:63], false},
		{"zz" + id.String()[2:], false},
		{"", false},
	} {
		got, err := Parse(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != id) {
			t.Errorf("Parse(%q) = %s, %v", tc.in, got.Short(), err)
		}
	}
	if err := Verify(id, []byte("sim")); err != nil {
		t.Error(err)
	}
	if err := Verify(id, []byte("SIM")); err == nil {
		t.Error("Verify accepted other bytes")
	}
	if err := DefaultParams.Validate(); err != nil {
		t.Error(err)
	}
}
