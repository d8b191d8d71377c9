package mcast

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	gosync "sync"

	"github.com/klauspost/reedsolomon"
)

// Forward error correction (ARCHITECTURE.md "Multicast: forward error
// correction"). The blocks of an object are grouped into FEC blocks of
// K consecutive data blocks (the last group of an object may be
// shorter); for each, the sender computes M Reed–Solomon parity shards
// of block bytes (the object's last, short block zero-padded) and sends
// the first R of them as REPAIR datagrams after the group's data. A
// receiver holding any k of a group's k+R shards reconstructs its
// missing data blocks; the object is then verified as every object is
// (BLAKE3 of each blob by sync.Decode, the manifest against the
// announced id): reconstructed bytes are never trusted unchecked.
//
// M, the code's parity count, depends on k only (fecCodeParity), so a
// parity shard (object, first block, k, index) is one fixed function of
// the data whatever R the sender picks at the moment: R follows the
// receivers' loss, and shards sent at different R mix. The code is
// systematic with a Cauchy parity matrix (row r, column c: 1/(r ⊕ c) in
// GF(2^8)), whose rows depend on r and c alone: the first R parity
// shards of the (k, M) code are those of the (k, R) code, so the sender
// computes only the R it sends, and any square submatrix of a Cauchy
// matrix being invertible, any k of the k+M shards rebuild the data.

// FEC configures a session's forward error correction.
type FEC struct {
	// Off sends no repair shards (and the session is still protocol
	// version 2).
	Off bool
	// K is the data blocks per FEC block (default DefaultFECK).
	K int
	// R, when > 0, is a fixed count of repair shards per full FEC
	// block (shorter groups get proportionally fewer, at least 1);
	// 0 is auto: sized to the loss the receivers report.
	R int
}

// Defaults and bounds of FEC.
const (
	// DefaultFECK: 128 data blocks per FEC block, 184 KB at MTU 1500. A
	// larger K costs less redundancy for the same protection (16 nodes
	// at 1% loss: 6 shards per 128, 4.7%, against 4 per 64, 6.3%), but a
	// receiver's reconstruction inverts a k×k matrix per damaged group
	// (O(k³)): 0.5 ms at 128, 0.14 ms at 64 on the bench machine.
	DefaultFECK = 128
	maxFECK     = 128
	// fecTarget is the expected share of FEC blocks that some receiver
	// cannot reconstruct (each costs a repair pass a few datagrams):
	// auto picks the smallest R that keeps Σ over members P(it loses
	// more than R of the k+R shards) at or below it.
	fecTarget = 0.01
	// fecMinLoss is the loss auto assumes before receivers report, and
	// its floor: one repair shard per group (0.8% at K=128) on a clean
	// path is cheap insurance against the rate control's probing losses.
	fecMinLoss = 0.0002
	// fecPriorLost of fecPriorTotal: the prior of a member's loss
	// estimate (1%; see Session.fecLoss).
	fecPriorLost, fecPriorTotal = 1, 100
)

// ParseFEC parses a --fec value: auto, off, or R/K (e.g. 4/64).
func ParseFEC(s string) (FEC, error) {
	switch s {
	case "", "auto":
		return FEC{K: DefaultFECK}, nil
	case "off":
		return FEC{Off: true}, nil
	}
	r, k, ok := strings.Cut(s, "/")
	ri, err1 := strconv.Atoi(r)
	ki, err2 := strconv.Atoi(k)
	if !ok || err1 != nil || err2 != nil {
		return FEC{}, errors.New("want auto, off or R/K (repair shards per K data blocks, e.g. 4/64)")
	}
	f := FEC{K: ki, R: ri}
	if err := f.check(); err != nil {
		return FEC{}, err
	}
	return f, nil
}

func (f FEC) check() error {
	if f.Off {
		return nil
	}
	switch {
	case f.K < 1 || f.K > maxFECK:
		return fmt.Errorf("K %d: want 1..%d data blocks per FEC block", f.K, maxFECK)
	case f.R < 0 || f.R > fecCodeParity(f.K):
		return fmt.Errorf("R %d: want 1..%d repair shards for K=%d", f.R, fecCodeParity(f.K), f.K)
	}
	return nil
}

// String is the flag form: auto, off, R/K.
func (f FEC) String() string {
	switch {
	case f.Off:
		return "off"
	case f.R == 0:
		return "auto"
	}
	return fmt.Sprintf("%d/%d", f.R, f.K)
}

// fecCodeParity is M, the parity shards of the code for a group of k
// data blocks: at most half of k (at least 4), k+M ≤ 256 (GF(2^8)).
func fecCodeParity(k int) int {
	return min(max(k/2, 4), 256-k)
}

// fecRepairs is how many repair shards a group of k data blocks gets
// when each of members receivers loses a share p of the datagrams
// (independently).
func fecRepairs(k int, p float64, members int) int {
	ps := make([]float64, max(members, 1))
	for i := range ps {
		ps[i] = p
	}
	r, _ := fecRepairsFor(k, ps)
	return r
}

// fecRepairsFor is how many repair shards a group of k data blocks gets
// when member i loses a share ps[i] of the datagrams (each at least
// fecMinLoss; none: one member at fecMinLoss): the smallest R ≤ M with
// Σ P(Bin(k+R, ps[i]) > R) ≤ fecTarget, and that sum (capped at 1): the
// expected chance that some member cannot rebuild the group.
func fecRepairsFor(k int, ps []float64) (int, float64) {
	if len(ps) == 0 {
		ps = []float64{fecMinLoss}
	}
	m := fecCodeParity(k)
	fail := func(r int) float64 {
		f := 0.0
		for _, p := range ps {
			f += binomTail(k+r, max(p, fecMinLoss), r)
		}
		return min(f, 1)
	}
	for r := 0; r < m; r++ {
		if f := fail(r); f <= fecTarget {
			return r, f
		}
	}
	return m, fail(m)
}

// fecFailureFor is the chance that some member (losing ps[i]) cannot
// rebuild a group of k data blocks sent with r repair shards (union
// bound, capped at 1).
func fecFailureFor(k, r int, ps []float64) float64 {
	if len(ps) == 0 {
		ps = []float64{fecMinLoss}
	}
	f := 0.0
	for _, p := range ps {
		f += fecFailure(k, r, max(p, fecMinLoss))
	}
	return min(f, 1)
}

// fecFailure is the probability that a receiver losing share p of the
// datagrams cannot reconstruct a group of k data blocks sent with r
// repair shards (it lost more than r of the k+r).
func fecFailure(k, r int, p float64) float64 { return binomTail(k+r, p, r) }

// binomTail is P(X > r) for X ~ Bin(n, p).
func binomTail(n int, p float64, r int) float64 {
	if p <= 0 {
		return 0
	}
	if p >= 1 {
		return 1
	}
	// P(X ≤ r) summed from the pmf, in logs (n ≤ 256)
	lp, lq := math.Log(p), math.Log1p(-p)
	cdf := 0.0
	for i := 0; i <= r && i <= n; i++ {
		lg, _ := math.Lgamma(float64(n + 1))
		li, _ := math.Lgamma(float64(i + 1))
		lni, _ := math.Lgamma(float64(n - i + 1))
		cdf += math.Exp(lg - li - lni + float64(i)*lp + float64(n-i)*lq)
	}
	return max(0, 1-cdf)
}

// fecCoders caches a Reed–Solomon coder per (k, parity shards).
// Coders are safe for concurrent use.
var fecCoders gosync.Map // k<<8 | parity → reedsolomon.Encoder

// fecCoder is the code of a group of k data blocks (fecCodeParity(k)
// parity shards): what receivers rebuild with.
func fecCoder(k int) (reedsolomon.Encoder, error) { return fecCoderR(k, fecCodeParity(k)) }

// fecCoderR is the code with the first r parity shards of k's: what
// the sender computes the r shards it sends with.
func fecCoderR(k, r int) (reedsolomon.Encoder, error) {
	key := k<<8 | r
	if c, ok := fecCoders.Load(key); ok {
		return c.(reedsolomon.Encoder), nil
	}
	if k < 1 || k > maxFECK || r < 1 || r > fecCodeParity(k) {
		return nil, fmt.Errorf("mcast: FEC block of %d data blocks and %d parity (want 1..%d, 1..%d)", k, r, maxFECK, fecCodeParity(max(k, 1)))
	}
	c, err := reedsolomon.New(k, r, reedsolomon.WithCauchyMatrix())
	if err != nil {
		return nil, fmt.Errorf("mcast: FEC coder k=%d: %w", k, err)
	}
	c2, _ := fecCoders.LoadOrStore(key, c)
	return c2.(reedsolomon.Encoder), nil
}

// fecEncoder computes the parity of a sender's groups, reusing its
// buffers.
type fecEncoder struct {
	block  int
	shards [][]byte
	parity [][]byte
	pad    []byte
}

// encode returns the first r parity shards of the k data blocks of
// data starting at block first (each block bytes, the last one of the
// object zero-padded). The result is valid until the next call.
func (e *fecEncoder) encode(data []byte, first, k, r int) ([][]byte, error) {
	c, err := fecCoderR(k, r)
	if err != nil {
		return nil, err
	}
	m := r
	if cap(e.shards) < k+m {
		e.shards = make([][]byte, k+m)
	}
	sh := e.shards[:k+m]
	for i := 0; i < k; i++ {
		off := (first + i) * e.block
		end := off + e.block
		if off >= len(data) {
			return nil, fmt.Errorf("mcast: FEC block at %d beyond an object of %d bytes", first, len(data))
		}
		if end > len(data) {
			if e.pad == nil {
				e.pad = make([]byte, e.block)
			}
			clear(e.pad)
			copy(e.pad, data[off:])
			sh[i] = e.pad
			continue
		}
		sh[i] = data[off:end]
	}
	// parity goes into buffers of its own (never into slots that held
	// data slices in an earlier call: Encode would write into the object)
	for len(e.parity) < m {
		e.parity = append(e.parity, make([]byte, e.block))
	}
	copy(sh[k:], e.parity[:m])
	if err := c.Encode(sh); err != nil {
		return nil, fmt.Errorf("mcast: FEC encode: %w", err)
	}
	return sh[k:], nil
}

// fecReconstruct fills the missing data shards of a group of k: shards
// holds k data shards then fecCodeParity(k) parity shards, nil where
// missing, every present one block bytes long. At least k must be
// present. The rebuilt shards are only what the parity says: the caller
// verifies the object they go into.
func fecReconstruct(k int, shards [][]byte) error {
	c, err := fecCoder(k)
	if err != nil {
		return err
	}
	if len(shards) != k+fecCodeParity(k) {
		return fmt.Errorf("mcast: FEC group of %d shards, want %d", len(shards), k+fecCodeParity(k))
	}
	return c.ReconstructData(shards)
}
