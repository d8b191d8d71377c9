// Package seal encrypts the units a transport hands to parties that must
// not read them (ARCHITECTURE.md "BitTorrent: sealed torrents"): the
// frames of a BitTorrent payload, which any peer of the swarm relays,
// and (for the multicast transport to adopt) the objects of a session,
// which anyone on the segment can receive. Each unit is sealed on its
// own with an AEAD (AES-256-GCM) under a key derived for one torrent or
// session (HKDF-SHA256 from a server secret); the key travels only over
// the authenticated channel that describes the units (the torrent
// document, behind a read token), so a stranger holding the bytes learns
// nothing but their length, and cannot alter them unnoticed.
//
// Nonces are synthetic: a keyed BLAKE3 of the unit's index and plaintext
// under a second key derived from the first. The same unit sealed twice
// gives the same bytes (a torrent's payload, hence its info hash, is
// deterministic, as the plain one is), while two different units (a gc
// that rewrote the packs under the same torrent key) get different
// nonces: GCM's one rule, never two plaintexts under one (key, nonce),
// holds whatever the caller does. The package has no I/O.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"
)

// Sizes: the key, the nonce carried with each unit, and what sealing
// adds to a unit (the GCM tag).
const (
	KeySize   = 32
	NonceSize = 12
	Overhead  = 16
)

// Key is the secret of one torrent or session.
type Key [KeySize]byte

// Nonce is what a sealed unit travels with (it is not secret).
type Nonce [NonceSize]byte

// Derive derives the key of one torrent or session from a long-lived
// secret: HKDF-SHA256 with info = label, a zero byte, then parts (each
// fixed-size, e.g. commit ids, so the encoding is unambiguous).
func Derive(secret []byte, label string, parts ...[]byte) (Key, error) {
	var k Key
	if len(secret) < 16 {
		return k, errors.New("seal: secret too short")
	}
	info := append([]byte(label), 0)
	for _, p := range parts {
		info = append(info, p...)
	}
	b, err := hkdf.Key(sha256.New, secret, nil, string(info), KeySize)
	if err != nil {
		return k, err
	}
	copy(k[:], b)
	return k, nil
}

// Sealer seals and opens the units of one key. It is safe for
// concurrent use.
type Sealer struct {
	aead  cipher.AEAD
	nonce [32]byte // the key of the synthetic nonces
}

// New returns the Sealer of key k.
func New(k Key) (*Sealer, error) {
	block, err := aes.NewCipher(k[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	s := &Sealer{aead: aead}
	nk, err := hkdf.Key(sha256.New, k[:], nil, "sim seal nonce v1", 32)
	if err != nil {
		return nil, err
	}
	copy(s.nonce[:], nk)
	return s, nil
}

// SealedSize is the sealed size of a unit of n bytes.
func SealedSize(n int) int { return n + Overhead }

// ad is the associated data of unit index: its place, so a unit moved
// to another index does not open.
func ad(index uint64) []byte { return binary.BigEndian.AppendUint64([]byte("sim seal v1"), index) }

// NonceFor is the synthetic nonce of unit index with plaintext plain.
func (s *Sealer) NonceFor(index uint64, plain []byte) Nonce {
	h, _ := blake3.NewKeyed(s.nonce[:])
	var ib [8]byte
	binary.BigEndian.PutUint64(ib[:], index)
	h.Write(ib[:])
	h.Write(plain)
	var n Nonce
	sum := h.Sum(nil)
	copy(n[:], sum)
	return n
}

// Seal seals unit index (plaintext plain), appending the sealed bytes
// (SealedSize(len(plain))) to dst; it returns the unit's nonce and dst.
func (s *Sealer) Seal(dst []byte, index uint64, plain []byte) (Nonce, []byte) {
	n := s.NonceFor(index, plain)
	return n, s.aead.Seal(dst, n[:], plain, ad(index))
}

// ErrOpen is wrapped by Open's error: the sealed bytes are not what the
// key's owner sealed at that index with that nonce.
var ErrOpen = errors.New("seal: unit does not open (wrong key, or altered)")

// Open checks and decrypts unit index, appending the plaintext to dst.
func (s *Sealer) Open(dst []byte, index uint64, n Nonce, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("%w: %d bytes", ErrOpen, len(sealed))
	}
	out, err := s.aead.Open(dst, n[:], sealed, ad(index))
	if err != nil {
		return nil, fmt.Errorf("%w: unit %d", ErrOpen, index)
	}
	return out, nil
}

// NewKey returns a fresh random key: the key of a multicast session,
// which no secret derives (it lives as long as the session, and travels
// only in the session's document).
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("seal: random key: %w", err)
	}
	return k, nil
}

// SealNonce seals plain under the caller's nonce n, authenticating ad
// with it, and appends the sealed bytes (SealedSize(len(plain))) to dst.
// It is for units whose place already makes a nonce unique (a multicast
// datagram: session, sequence, object, offset), where a synthetic nonce
// would cost a hash and 12 bytes per unit. The caller must guarantee
// that n never seals two different plaintexts under this key; dst may
// be plain[:0] (sealing in place).
func (s *Sealer) SealNonce(dst []byte, n Nonce, ad, plain []byte) []byte {
	return s.aead.Seal(dst, n[:], plain, ad)
}

// OpenNonce checks and decrypts what SealNonce sealed with n and ad,
// appending the plaintext to dst (sealed[:0] opens in place). An error
// wraps ErrOpen.
func (s *Sealer) OpenNonce(dst []byte, n Nonce, ad, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("%w: %d bytes", ErrOpen, len(sealed))
	}
	out, err := s.aead.Open(dst, n[:], sealed, ad)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}
