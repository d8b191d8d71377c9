// Package sign holds sim's commit signatures (ARCHITECTURE.md
// "Signatures"): ed25519 signing keys and their files, a Signature over
// a commit's canonical bytes (hence over its whole tree, which the
// commit names by content id), and the trust Policy that says whether a
// commit may be used: which public keys a store trusts and whether it
// requires a signature by one of them.
//
// A signature is detached, as OSTree's are: it is stored beside the
// commit (store.PutSignature), travels beside it (GET
// /v1/commits/<id>/signatures, POST /v1/refs), and can be added after
// the commit was made (sim sign) without changing the commit's id.
//
// The package does no I/O but reading and writing key files; the store
// keeps signatures and trusted keys, and the callers (fetch, checkout,
// the server's push) apply the policy.
package sign

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
)

// Alg is the only signature algorithm.
const Alg = "ed25519"

// context is prepended to the commit bytes before signing, so a sim
// commit signature can never be taken for a signature of anything else
// made with the same key.
const context = "sim-commit-signature-v1\x00"

// Message is what a signature of a commit with canonical bytes raw signs.
func Message(raw []byte) []byte {
	return append([]byte(context), raw...)
}

// Key file formats: one line each (# comments and blank lines allowed),
//
//	sim-ed25519-private <base64 32-byte seed> NAME     NAME.key, mode 0600
//	sim-ed25519 <base64 32-byte public key> NAME       NAME.pub
//
// A public key file may also hold a bare base64 key (OSTree's
// trusted.ed25519 format); its name is then the file's base name.
const (
	pubTag  = "sim-ed25519"
	privTag = "sim-ed25519-private"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

// CheckName validates a key name: letters, digits and . _ @ + - (not
// first), at most 64.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid key name %q: use letters, digits and . _ @ + - (not first), at most 64", name)
	}
	return nil
}

// PublicKey is a named ed25519 public key.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// ID is the key's fingerprint: "ed25519:" and the first 16 hex digits
// of the BLAKE3 of the key.
func (k PublicKey) ID() string { return KeyID(k.Key) }

// KeyID is the fingerprint of a raw public key.
func KeyID(pub []byte) string {
	s := chunk.Sum(pub)
	return Alg + ":" + hex.EncodeToString(s[:8])
}

// String names the key for messages: NAME (ed25519:…).
func (k PublicKey) String() string { return k.Name + " (" + k.ID() + ")" }

// Line is the key's public key file line.
func (k PublicKey) Line() string {
	return pubTag + " " + base64.StdEncoding.EncodeToString(k.Key) + " " + k.Name
}

// Equal says whether two keys are the same key (whatever their names).
func (k PublicKey) Equal(o PublicKey) bool { return bytes.Equal(k.Key, o.Key) }

// DecodeKey reads a base64 (standard or URL alphabet, padded or not)
// 32-byte ed25519 public key: the form of sim.trust= on a kernel command
// line.
func DecodeKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("public key %q: %d bytes, want %d", short(s), len(b), ed25519.PublicKeySize)
			}
			return ed25519.PublicKey(b), nil
		}
	}
	return nil, fmt.Errorf("public key %q: not base64", short(s))
}

func short(s string) string {
	if len(s) > 24 {
		return s[:24] + "…"
	}
	return s
}

// ParsePublicKey reads a public key file's contents: its one key line
// ("sim-ed25519 KEY NAME", or a bare base64 key named name).
func ParsePublicKey(text, name string) (PublicKey, error) {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		return PublicKey{}, fmt.Errorf("want one key line, found %d", len(lines))
	}
	f := strings.Fields(lines[0])
	switch {
	case f[0] == privTag:
		return PublicKey{}, errors.New("this is a private key: give its .pub file")
	case f[0] == pubTag:
		if len(f) != 3 {
			return PublicKey{}, fmt.Errorf("want %q, found %d fields", pubTag+" KEY NAME", len(f))
		}
		name = f[2]
		f = f[1:2]
	case len(f) != 1:
		return PublicKey{}, fmt.Errorf("want %q or a base64 key", pubTag+" KEY NAME")
	}
	if err := CheckName(name); err != nil {
		return PublicKey{}, err
	}
	k, err := DecodeKey(f[0])
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{Name: name, Key: k}, nil
}

// ReadPublicKey reads a public key file (a bare key is named after the
// file: admin.pub → admin).
func ReadPublicKey(file string) (PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key: %w", err)
	}
	if len(b) > 64<<10 {
		return PublicKey{}, fmt.Errorf("public key %s: %d bytes is not a key file", file, len(b))
	}
	name := strings.TrimSuffix(filepath.Base(file), ".pub")
	k, err := ParsePublicKey(string(b), name)
	if err != nil {
		return k, fmt.Errorf("public key %s: %w", file, err)
	}
	return k, nil
}

// PrivateKey is a named ed25519 signing key.
type PrivateKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// Generate makes a new signing key.
func Generate(name string) (PrivateKey, error) {
	if err := CheckName(name); err != nil {
		return PrivateKey{}, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return PrivateKey{}, err
	}
	return PrivateKey{Name: name, Key: priv}, nil
}

// Public is the key's public half.
func (k PrivateKey) Public() PublicKey {
	return PublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// Line is the key's private key file line.
func (k PrivateKey) Line() string {
	return privTag + " " + base64.StdEncoding.EncodeToString(k.Key.Seed()) + " " + k.Name
}

// WriteKeyPair writes k as DIR/NAME.key (mode 0600) and DIR/NAME.pub,
// refusing to replace either.
func WriteKeyPair(dir string, k PrivateKey) (priv, pub string, err error) {
	priv = filepath.Join(dir, k.Name+".key")
	pub = filepath.Join(dir, k.Name+".pub")
	for _, p := range []string{priv, pub} {
		if _, err := os.Lstat(p); err == nil {
			return priv, pub, fmt.Errorf("%s exists: not replacing a key", p)
		}
	}
	head := "# sim signing key " + k.Name + " (ed25519): keep it secret; its public half is " + filepath.Base(pub) + "\n"
	if err := writeNew(priv, []byte(head+k.Line()+"\n"), 0o600); err != nil {
		return priv, pub, err
	}
	if err := writeNew(pub, []byte("# sim public key "+k.Name+" ("+k.Public().ID()+"): sim trust add "+filepath.Base(pub)+"\n"+k.Public().Line()+"\n"), 0o644); err != nil {
		os.Remove(priv)
		return priv, pub, err
	}
	return priv, pub, nil
}

// writeNew creates name (it must not exist) with data, durably.
func writeNew(name string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // whatever the umask
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
	}
	return err
}

// ReadPrivateKey reads a private key file. A file others can read is
// refused, as ssh refuses one: the key must be presumed known.
func ReadPrivateKey(file string) (PrivateKey, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("signing key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return PrivateKey{}, fmt.Errorf("signing key %s is accessible by others (mode %04o): chmod 600 %s", file, fi.Mode().Perm(), file)
	}
	if fi.Size() > 64<<10 {
		return PrivateKey{}, fmt.Errorf("signing key %s: %d bytes is not a key file", file, fi.Size())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("signing key: %w", err)
	}
	k, err := ParsePrivateKey(string(b))
	if err != nil {
		return k, fmt.Errorf("signing key %s: %w", file, err)
	}
	return k, nil
}

// ParsePrivateKey reads a private key file's contents.
func ParsePrivateKey(text string) (PrivateKey, error) {
	var line string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if line != "" {
			return PrivateKey{}, errors.New("more than one key line")
		}
		line = l
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return PrivateKey{}, errors.New("no key line")
	}
	if f[0] == pubTag {
		return PrivateKey{}, errors.New("this is a public key: signing needs the private key (NAME.key)")
	}
	if f[0] != privTag || len(f) != 3 {
		return PrivateKey{}, fmt.Errorf("want %q", privTag+" SEED NAME")
	}
	if err := CheckName(f[2]); err != nil {
		return PrivateKey{}, err
	}
	seed, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil || len(seed) != ed25519.SeedSize {
		return PrivateKey{}, fmt.Errorf("bad seed: want %d bytes of base64", ed25519.SeedSize)
	}
	return PrivateKey{Name: f[2], Key: ed25519.NewKeyFromSeed(seed)}, nil
}

// Signature is one signature of a commit: by whom (the public key
// itself, so any store can check it without knowing the key beforehand,
// and the signer's own name for the key, which is not signed and is only
// shown for keys a store does not trust), when, and the ed25519
// signature of Message(commit bytes).
type Signature struct {
	Alg  string    `json:"alg"`
	Key  []byte    `json:"key"` // 32 bytes (base64 in JSON)
	Name string    `json:"name,omitempty"`
	Time time.Time `json:"time"`
	Sig  []byte    `json:"sig"` // 64 bytes (base64 in JSON)
}

// Sign signs the commit whose canonical bytes are raw.
func (k PrivateKey) Sign(raw []byte) Signature {
	return Signature{Alg: Alg, Key: k.Key.Public().(ed25519.PublicKey), Name: k.Name,
		Time: time.Now().UTC().Truncate(time.Second), Sig: ed25519.Sign(k.Key, Message(raw))}
}

// KeyID is the fingerprint of the key that made s.
func (s Signature) KeyID() string { return KeyID(s.Key) }

// ErrBadSignature is wrapped by every error of Verify.
var ErrBadSignature = errors.New("bad signature")

// Verify checks that s is a valid signature of commit id, whose bytes
// are raw (themselves checked against id).
func (s Signature) Verify(id chunk.ID, raw []byte) error {
	if err := chunk.Verify(id, raw); err != nil {
		return err
	}
	switch {
	case s.Alg != Alg:
		return fmt.Errorf("commit %s: %w: algorithm %q (want %s)", id.Short(), ErrBadSignature, s.Alg, Alg)
	case len(s.Key) != ed25519.PublicKeySize || len(s.Sig) != ed25519.SignatureSize:
		return fmt.Errorf("commit %s: %w: key of %d bytes, signature of %d", id.Short(), ErrBadSignature, len(s.Key), len(s.Sig))
	case !ed25519.Verify(ed25519.PublicKey(s.Key), Message(raw), s.Sig):
		return fmt.Errorf("commit %s: %w by key %s: it does not verify", id.Short(), ErrBadSignature, s.KeyID())
	}
	return nil
}

// Policy is a store's trust: the public keys it trusts and whether it
// requires a signature by one of them before a commit is fetched,
// accepted or checked out.
type Policy struct {
	Keys    []PublicKey
	Require bool
}

// Trusted returns the trusted key equal to pub.
func (p Policy) Trusted(pub []byte) (PublicKey, bool) {
	for _, k := range p.Keys {
		if bytes.Equal(k.Key, pub) {
			return k, true
		}
	}
	return PublicKey{}, false
}

// ErrUnsigned is wrapped by Check's error: the commit has no valid
// signature by a trusted key.
var ErrUnsigned = errors.New("no valid signature by a trusted key")

// Check returns the trusted key whose signature of commit id (bytes raw)
// is among sigs and verifies, or an error wrapping ErrUnsigned that names
// the commit, the keys it is trusted to be signed by, and what
// signatures it has instead. It checks whether or not p.Require.
func (p Policy) Check(id chunk.ID, raw []byte, sigs []Signature) (PublicKey, error) {
	var untrusted, bad []string
	for _, s := range sigs {
		k, ok := p.Trusted(s.Key)
		if !ok {
			who := s.KeyID()
			if s.Name != "" {
				who += " (says " + s.Name + ")"
			}
			untrusted = append(untrusted, who)
			continue
		}
		if err := s.Verify(id, raw); err != nil {
			bad = append(bad, k.String())
			continue
		}
		return k, nil
	}
	var why []string
	if len(p.Keys) == 0 {
		why = append(why, "this store trusts no key (sim trust add FILE)")
	} else {
		names := make([]string, len(p.Keys))
		for i, k := range p.Keys {
			names[i] = k.String()
		}
		why = append(why, "trusted: "+strings.Join(names, ", "))
	}
	switch {
	case len(sigs) == 0:
		why = append([]string{"it is not signed"}, why...)
	case len(bad) > 0:
		why = append([]string{"the signature by " + strings.Join(bad, ", ") + " does not verify"}, why...)
	}
	if len(untrusted) > 0 {
		why = append(why, "signed only by untrusted "+strings.Join(untrusted, ", "))
	}
	return PublicKey{}, fmt.Errorf("commit %s: %w: %s", id.Short(), ErrUnsigned, strings.Join(why, "; "))
}
