package chunk

import (
	"fmt"
	"io"

	"github.com/restic/chunker"
)

// Params fixes where content is cut. Every store and every node must use the
// same Params, or identical files are cut differently and nothing dedups, so
// they are recorded in the store's config and checked on open.
type Params struct {
	Polynomial chunker.Pol `json:"polynomial"`
	MinSize    uint        `json:"min_size"`
	MaxSize    uint        `json:"max_size"`
	AvgBits    int         `json:"average_bits"`
}

// DefaultPolynomial is the project-wide irreducible polynomial of degree 53.
// restic draws one at random per repository to resist chunk-size
// fingerprinting; sim wants the opposite: two independently created stores
// (an image server and its mirror, a node) must cut identically.
const DefaultPolynomial = chunker.Pol(0x3DA3358B4DC173)

// DefaultParams are the bounds chosen by measurement on the Debian corpus
// (see ARCHITECTURE.md "Chunk size"): 64 KiB minimum, 1 MiB maximum, 2^17
// average spacing of cut points beyond the minimum.
var DefaultParams = Params{Polynomial: DefaultPolynomial, MinSize: 64 << 10, MaxSize: 1 << 20, AvgBits: 17}

// Validate rejects parameters the chunker cannot use.
func (p Params) Validate() error {
	if !p.Polynomial.Irreducible() {
		return fmt.Errorf("chunker polynomial %v is not irreducible", p.Polynomial)
	}
	if p.MinSize == 0 || p.MaxSize <= p.MinSize || p.MaxSize > 64<<20 {
		return fmt.Errorf("chunk size bounds %d..%d are invalid", p.MinSize, p.MaxSize)
	}
	if p.AvgBits < 10 || p.AvgBits > 24 {
		return fmt.Errorf("chunk average bits %d out of range 10..24", p.AvgBits)
	}
	return nil
}

// Chunker cuts a stream into content-defined chunks. One Chunker is reused
// per worker goroutine: restic's keeps a 512 KiB read buffer and per
// polynomial tables across resets.
type Chunker struct {
	p   Params
	c   *chunker.Chunker
	buf []byte
}

// NewChunker returns a Chunker for p.
func NewChunker(p Params) *Chunker {
	return &Chunker{p: p, buf: make([]byte, p.MaxSize)}
}

// Reset starts cutting r.
func (c *Chunker) Reset(r io.Reader) {
	if c.c == nil {
		c.c = chunker.NewWithBoundaries(r, c.p.Polynomial, c.p.MinSize, c.p.MaxSize)
	} else {
		c.c.ResetWithBoundaries(r, c.p.Polynomial, c.p.MinSize, c.p.MaxSize)
	}
	// Reset puts the average back to 2^20: set it every time.
	c.c.SetAverageBits(c.p.AvgBits)
}

// Next returns the next chunk's bytes, valid until the following call, or
// io.EOF after the last one.
func (c *Chunker) Next() ([]byte, error) {
	ch, err := c.c.Next(c.buf)
	if err != nil {
		return nil, err
	}
	return ch.Data, nil
}
