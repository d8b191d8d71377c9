package mcast

import (
	"bytes"
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/systemimager/sim/chunk"
)

// fecObject cuts an object of size random bytes into blocks of blk and
// returns its FEC groups of k: per group the k data shards (the last
// block zero-padded) followed by the parity the sender computes.
func fecObject(t *testing.T, rng *rand.Rand, size, blk, k int) ([]byte, [][][]byte) {
	t.Helper()
	data := make([]byte, size)
	rng.Read(data)
	enc := fecEncoder{block: blk}
	nb := (size + blk - 1) / blk
	var groups [][][]byte
	for first := 0; first < nb; first += k {
		kk := min(k, nb-first)
		par, err := enc.encode(data, first, kk, fecCodeParity(kk))
		if err != nil {
			t.Fatal(err)
		}
		sh := make([][]byte, 0, kk+len(par))
		for j := 0; j < kk; j++ {
			b := make([]byte, blk)
			copy(b, data[(first+j)*blk:min((first+j+1)*blk, size)])
			sh = append(sh, b)
		}
		for _, p := range par {
			sh = append(sh, bytes.Clone(p))
		}
		groups = append(groups, sh)
	}
	return data, groups
}

// join puts the data shards of groups back into an object of size.
func join(groups [][][]byte, size int) []byte {
	var out []byte
	for _, g := range groups {
		kk := fecDataOf(g)
		for _, s := range g[:kk] {
			out = append(out, s...)
		}
	}
	return out[:size]
}

// fecDataOf is the data shard count of a group of k+fecCodeParity(k).
func fecDataOf(g [][]byte) int {
	for k := 1; k <= 256; k++ {
		if k+fecCodeParity(k) == len(g) {
			return k
		}
	}
	return -1
}

// TestFECReconstruct: for groups of several sizes (the object's last
// block short), any k of a group's k+M shards rebuild its data exactly,
// fewer than k do not, and a corrupted parity shard used in a rebuild
// gives bytes whose content id is wrong: the object's check catches it.
func TestFECReconstruct(t *testing.T) {
	rng := rand.New(rand.NewSource(16))
	cases := []struct {
		name         string
		size, blk, k int
	}{
		{"one block", 700, 512, 1},
		{"three short", 3*1440 - 17, 1440, 3},
		{"k=64, last group short", 100*1440 + 5, 1440, 64},
		{"k=128 jumbo", 130*8940 - 1, 8940, 128},
		{"k=8 exact", 8 * 1024, 1024, 8},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data, groups := fecObject(t, rng, c.size, c.blk, c.k)
			id := chunk.Sum(data)
			for gi, g := range groups {
				k := fecDataOf(g)
				m := len(g) - k
				if m != fecCodeParity(k) {
					t.Fatalf("group %d: %d parity shards, want %d", gi, m, fecCodeParity(k))
				}
				// patterns of loss: all parity, the first m data, random
				// subsets of every size up to m, and m+1 (too many)
				type pat struct {
					lost []int
					ok   bool
				}
				var pats []pat
				var first []int
				for j := 0; j < min(m, k); j++ {
					first = append(first, j)
				}
				pats = append(pats, pat{first, true})
				for e := 1; e <= m+1; e++ {
					pats = append(pats, pat{rng.Perm(k + m)[:e], e <= m})
				}
				for _, p := range pats {
					sh := make([][]byte, len(g))
					for j := range g {
						sh[j] = bytes.Clone(g[j])
					}
					for _, j := range p.lost {
						sh[j] = nil
					}
					err := fecReconstruct(k, sh)
					if !p.ok {
						if err == nil {
							t.Fatalf("group %d: %d of %d shards lost, yet rebuilt", gi, len(p.lost), k+m)
						}
						continue
					}
					if err != nil {
						t.Fatalf("group %d, lost %v: %v", gi, p.lost, err)
					}
					for j := 0; j < k; j++ {
						if !bytes.Equal(sh[j], g[j]) {
							t.Fatalf("group %d, lost %v: data shard %d rebuilt wrong", gi, p.lost, j)
						}
					}
				}
			}
			if !bytes.Equal(join(groups, c.size), data) {
				t.Fatal("groups do not hold the object")
			}
			// corruption: one parity byte altered, used to rebuild a lost
			// data shard of group 0: the object no longer has its id
			g := groups[0]
			k := fecDataOf(g)
			sh := make([][]byte, len(g))
			for j := range g {
				sh[j] = bytes.Clone(g[j])
			}
			sh[0] = nil
			for j := k + 1; j < len(sh); j++ {
				sh[j] = nil // only parity shard 0 is left to rebuild with
			}
			sh[k][len(sh[k])/2] ^= 0x40
			if err := fecReconstruct(k, sh); err != nil {
				t.Fatal(err)
			}
			bad := [][][]byte{sh[:len(g)]}
			bad = append(bad, groups[1:]...)
			if got := chunk.Sum(join(bad, c.size)); got == id {
				t.Fatal("a corrupted repair shard rebuilt the object with its id: the content check would not catch it")
			}
		})
	}
}

// TestFECPrefix: the first r parity shards of a group are the same
// whatever r the sender computed (the sender computes only those it
// sends; receivers rebuild with the full code).
func TestFECPrefix(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	for _, k := range []int{1, 7, 64, 128} {
		data := make([]byte, k*600-3)
		rng.Read(data)
		full, err := (&fecEncoder{block: 600}).encode(data, 0, k, fecCodeParity(k))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []int{1, 2, fecCodeParity(k) / 2, fecCodeParity(k)} {
			part, err := (&fecEncoder{block: 600}).encode(data, 0, k, r)
			if err != nil {
				t.Fatal(err)
			}
			for i := range part {
				if !bytes.Equal(part[i], full[i]) {
					t.Fatalf("k=%d: parity shard %d of the (k, %d) code differs from the (k, %d) code's", k, i, r, fecCodeParity(k))
				}
			}
		}
	}
}

// TestFECRepairs: auto's R follows the loss and the fleet size and
// keeps the failure it predicts under its target; a Monte Carlo run of
// real losses through the coder fails no more often than predicted.
func TestFECRepairs(t *testing.T) {
	// exact binomial tails
	for _, c := range []struct {
		n    int
		p    float64
		r    int
		want float64
	}{{3, 0.5, 1, 0.5}, {2, 0.1, 0, 0.19}, {10, 0.01, 10, 0}, {5, 0.2, 4, 0.00032}} {
		if got := binomTail(c.n, c.p, c.r); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("P(Bin(%d, %g) > %d) = %g, want %g", c.n, c.p, c.r, got, c.want)
		}
	}
	prev := 0
	for _, p := range []float64{0, 0.001, 0.01, 0.02, 0.05, 0.1} {
		r := fecRepairs(64, p, 16)
		if r < prev {
			t.Errorf("loss %g: R=%d, below R=%d of a lower loss", p, r, prev)
		}
		if r < fecCodeParity(64) && 16*fecFailure(64, r, max(p, fecMinLoss)) > fecTarget {
			t.Errorf("loss %g: R=%d fails %g of the groups", p, r, 16*fecFailure(64, r, p))
		}
		if r > 0 && 16*fecFailure(64, r-1, max(p, fecMinLoss)) <= fecTarget {
			t.Errorf("loss %g: R=%d where %d does", p, r, r-1)
		}
		prev = r
	}
	if r1, r16 := fecRepairs(64, 0.01, 1), fecRepairs(64, 0.01, 16); r1 >= r16 {
		t.Errorf("1%% loss: 1 member gets R=%d, 16 members R=%d", r1, r16)
	}
	if r := fecRepairs(64, 0.05, 16); r > 16 || r < 8 {
		t.Errorf("5%% loss, 16 members: R=%d", r)
	}
	// Monte Carlo: 16 receivers, 300 groups of 64 at 2% loss
	rng := rand.New(rand.NewSource(5))
	const k, blk, members, ngroups, p = 64, 512, 16, 300, 0.02
	r := fecRepairs(k, p, members)
	_, groups := fecObject(t, rng, k*blk, blk, k)
	g := groups[0]
	failed := 0
	for i := 0; i < ngroups; i++ {
		groupFailed := false
		for n := 0; n < members; n++ {
			sh := make([][]byte, len(g))
			lost := 0
			for j := 0; j < k+r; j++ {
				if rng.Float64() < p {
					lost++
					continue
				}
				sh[j] = g[j]
			}
			if lost == 0 {
				continue
			}
			err := fecReconstruct(k, sh)
			if (err == nil) != (lost <= r) {
				t.Fatalf("lost %d of %d+%d: rebuild error %v", lost, k, r, err)
			}
			if err != nil {
				groupFailed = true
				continue
			}
			for j := 0; j < k; j++ {
				if !bytes.Equal(sh[j], g[j]) {
					t.Fatal("rebuilt wrong")
				}
			}
		}
		if groupFailed {
			failed++
		}
	}
	want := float64(ngroups) * min(1, members*fecFailure(k, r, p))
	t.Logf("R=%d at %g%%: %d of %d groups failed for some receiver, %.1f predicted", r, p*100, failed, ngroups, want)
	if float64(failed) > 3*want+3 {
		t.Errorf("%d groups failed, %.1f predicted", failed, want)
	}
}

func TestParseFEC(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{"auto", "auto", ""}, {"", "auto", ""}, {"off", "off", ""}, {"4/64", "4/64", ""}, {"1/1", "1/1", ""},
		{"8/16", "8/16", ""}, {"9/16", "", "R 9"}, {"4/0", "", "K 0"}, {"4/200", "", "K 200"}, {"x", "", "want auto"}, {"-1/64", "", "R -1"},
	} {
		f, err := ParseFEC(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseFEC(%q) = %v, %v; want an error with %q", c.in, f, err, c.err)
			}
			continue
		}
		if err != nil || f.String() != c.want {
			t.Errorf("ParseFEC(%q) = %v, %v; want %s", c.in, f, err, c.want)
		}
	}
}
