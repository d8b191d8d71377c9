package seal_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/systemimager/sim/sync/seal"
)

func TestSealOpen(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	k, err := seal.Derive(secret, "test", []byte("want"), []byte("base"))
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := seal.Derive(secret, "test", []byte("want"), []byte("basf"))
	if k == k2 {
		t.Fatal("different contexts, one key")
	}
	s, err := seal.New(k)
	if err != nil {
		t.Fatal(err)
	}
	plain := bytes.Repeat([]byte("a frame of an image "), 1000)
	n1, c1 := s.Seal(nil, 3, plain)
	n2, c2 := s.Seal(nil, 3, plain)
	if n1 != n2 || !bytes.Equal(c1, c2) {
		t.Error("sealing is not deterministic: info hashes would change")
	}
	if len(c1) != seal.SealedSize(len(plain)) || bytes.Contains(c1, plain[:40]) {
		t.Errorf("sealed %d bytes, or plaintext visible", len(c1))
	}
	if n3, _ := s.Seal(nil, 3, append([]byte("x"), plain[1:]...)); n3 == n1 {
		t.Error("two plaintexts share a nonce at one index")
	}
	if n4, _ := s.Seal(nil, 4, plain); n4 == n1 {
		t.Error("two indexes share a nonce")
	}
	got, err := s.Open(nil, 3, n1, c1)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %v", err)
	}
	bad := append([]byte(nil), c1...)
	bad[100] ^= 1
	for name, try := range map[string]func() error{
		"altered":    func() error { _, err := s.Open(nil, 3, n1, bad); return err },
		"moved":      func() error { _, err := s.Open(nil, 4, n1, c1); return err },
		"short":      func() error { _, err := s.Open(nil, 3, n1, c1[:5]); return err },
		"wrong key":  func() error { o, _ := seal.New(k2); _, err := o.Open(nil, 3, n1, c1); return err },
		"wrong once": func() error { _, err := s.Open(nil, 3, seal.Nonce{}, c1); return err },
	} {
		if err := try(); !errors.Is(err, seal.ErrOpen) {
			t.Errorf("%s: %v, want ErrOpen", name, err)
		}
	}
	if _, err := seal.Derive([]byte("short"), "x"); err == nil {
		t.Error("short secret accepted")
	}
}

func BenchmarkSeal(b *testing.B) {
	k, _ := seal.Derive(bytes.Repeat([]byte{1}, 32), "bench")
	s, _ := seal.New(k)
	plain := bytes.Repeat([]byte{9}, 4<<20)
	buf := make([]byte, 0, seal.SealedSize(len(plain)))
	b.SetBytes(int64(len(plain)))
	for i := 0; i < b.N; i++ {
		s.Seal(buf[:0], uint64(i), plain)
	}
}

func BenchmarkOpen(b *testing.B) {
	k, _ := seal.Derive(bytes.Repeat([]byte{1}, 32), "bench")
	s, _ := seal.New(k)
	plain := bytes.Repeat([]byte{9}, 4<<20)
	n, c := s.Seal(nil, 1, plain)
	buf := make([]byte, 0, len(plain))
	b.SetBytes(int64(len(plain)))
	for i := 0; i < b.N; i++ {
		if _, err := s.Open(buf[:0], 1, n, c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSealNonce: the caller's nonce and associated data seal in place
// and open only with both unchanged.
func TestSealNonce(t *testing.T) {
	k, err := seal.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if k2, _ := seal.NewKey(); k2 == k {
		t.Fatal("two random keys are equal")
	}
	s, err := seal.New(k)
	if err != nil {
		t.Fatal(err)
	}
	plain := bytes.Repeat([]byte("datagram "), 160)
	buf := make([]byte, len(plain), len(plain)+seal.Overhead)
	copy(buf, plain)
	n := seal.Nonce{1, 2, 3}
	ad := []byte("header")
	sealed := s.SealNonce(buf[:0], n, ad, buf)
	if len(sealed) != seal.SealedSize(len(plain)) || bytes.Contains(sealed, plain[:20]) {
		t.Fatalf("sealed %d bytes, or plaintext visible", len(sealed))
	}
	for _, c := range []struct {
		name string
		n    seal.Nonce
		ad   []byte
		flip int
	}{
		{"other nonce", seal.Nonce{1, 2, 4}, ad, -1},
		{"other header", n, []byte("headex"), -1},
		{"altered byte", n, ad, 100},
		{"altered tag", n, ad, len(sealed) - 1},
	} {
		x := bytes.Clone(sealed)
		if c.flip >= 0 {
			x[c.flip] ^= 1
		}
		if _, err := s.OpenNonce(nil, c.n, c.ad, x); !errors.Is(err, seal.ErrOpen) {
			t.Errorf("%s: opened (%v)", c.name, err)
		}
	}
	got, err := s.OpenNonce(sealed[:0], n, ad, sealed)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open in place: %v", err)
	}
}

// BenchmarkSealNonce1444 is the cost of sealing one multicast datagram
// at MTU 1500.
func BenchmarkSealNonce1444(b *testing.B) {
	k, _ := seal.NewKey()
	s, _ := seal.New(k)
	plain := make([]byte, 1428)
	out := make([]byte, 0, 1444)
	b.SetBytes(int64(len(plain)))
	for i := 0; i < b.N; i++ {
		s.SealNonce(out[:0], seal.Nonce{byte(i), byte(i >> 8), byte(i >> 16)}, plain[:24], plain)
	}
}

// BenchmarkOpenNonce1444 opens one.
func BenchmarkOpenNonce1444(b *testing.B) {
	k, _ := seal.NewKey()
	s, _ := seal.New(k)
	plain := make([]byte, 1428)
	sealed := s.SealNonce(nil, seal.Nonce{}, plain[:24], plain)
	out := make([]byte, 0, 1444)
	b.SetBytes(int64(len(plain)))
	for i := 0; i < b.N; i++ {
		if _, err := s.OpenNonce(out[:0], seal.Nonce{}, plain[:24], sealed); err != nil {
			b.Fatal(err)
		}
	}
}
