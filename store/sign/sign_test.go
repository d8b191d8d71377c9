package sign_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/sign"
)

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	k, err := sign.Generate("admin")
	if err != nil {
		t.Fatal(err)
	}
	priv, pub, err := sign.WriteKeyPair(dir, k)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(priv); fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %04o, want 0600", fi.Mode().Perm())
	}
	if _, _, err := sign.WriteKeyPair(dir, k); err == nil || !strings.Contains(err.Error(), "not replacing") {
		t.Errorf("second WriteKeyPair: %v", err)
	}
	k2, err := sign.ReadPrivateKey(priv)
	if err != nil || !k2.Public().Equal(k.Public()) || k2.Name != "admin" {
		t.Fatalf("read back private key: %v %v", k2, err)
	}
	p, err := sign.ReadPublicKey(pub)
	if err != nil || !p.Equal(k.Public()) || p.Name != "admin" {
		t.Fatalf("read back public key: %v %v", p, err)
	}
	// OSTree's format: a bare base64 key, named after the file.
	bare := filepath.Join(dir, "ops.pub")
	os.WriteFile(bare, []byte(strings.Fields(p.Line())[1]+"\n"), 0o644)
	if b, err := sign.ReadPublicKey(bare); err != nil || b.Name != "ops" || !b.Equal(p) {
		t.Errorf("bare key: %v %v", b, err)
	}
	os.Chmod(priv, 0o644)
	if _, err := sign.ReadPrivateKey(priv); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable private key accepted: %v", err)
	}
	for _, tc := range []struct{ text, want string }{
		{"", "want one key line"},
		{"sim-ed25519 AAAA admin", "bytes, want 32"},
		{"sim-ed25519 !!!! admin", "not base64"},
		{"sim-ed25519 " + strings.Fields(p.Line())[1] + " ../x", "invalid key name"},
		{k.Line(), "private key"},
		{p.Line() + "\n" + p.Line(), "found 2"},
	} {
		if _, err := sign.ParsePublicKey(tc.text, "x"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePublicKey(%q) = %v, want %q", tc.text, err, tc.want)
		}
	}
	if _, err := sign.ParsePrivateKey(p.Line()); err == nil || !strings.Contains(err.Error(), "public key") {
		t.Errorf("public key taken for private: %v", err)
	}
}

func TestSignVerifyPolicy(t *testing.T) {
	raw := []byte(`{"tree":"x","message":"v1"}`)
	id := chunk.Sum(raw)
	admin, _ := sign.Generate("admin")
	eve, _ := sign.Generate("eve")
	s := admin.Sign(raw)
	if err := s.Verify(id, raw); err != nil {
		t.Fatal(err)
	}
	// JSON round trip: what the index and the wire carry.
	b, _ := json.Marshal(s)
	var s2 sign.Signature
	if err := json.Unmarshal(b, &s2); err != nil || s2.Verify(id, raw) != nil {
		t.Fatalf("round trip: %s %v", b, err)
	}
	other := []byte(`{"tree":"y","message":"v1"}`)
	if err := s.Verify(chunk.Sum(other), other); !errors.Is(err, sign.ErrBadSignature) {
		t.Errorf("signature of another commit verifies: %v", err)
	}
	if err := s.Verify(id, other); err == nil {
		t.Error("bytes not matching the id accepted")
	}
	flipped := s
	flipped.Sig = append([]byte(nil), s.Sig...)
	flipped.Sig[3] ^= 1
	if err := flipped.Verify(id, raw); !errors.Is(err, sign.ErrBadSignature) {
		t.Errorf("flipped signature: %v", err)
	}

	p := sign.Policy{Keys: []sign.PublicKey{admin.Public()}, Require: true}
	if k, err := p.Check(id, raw, []sign.Signature{eve.Sign(raw), s}); err != nil || k.Name != "admin" {
		t.Errorf("check with a trusted signature: %v %v", k, err)
	}
	for _, tc := range []struct {
		name string
		p    sign.Policy
		sigs []sign.Signature
		want []string
	}{
		{"unsigned", p, nil, []string{id.Short(), "not signed", "trusted: admin (" + admin.Public().ID() + ")"}},
		{"untrusted", p, []sign.Signature{eve.Sign(raw)}, []string{"signed only by untrusted " + eve.Public().ID() + " (says eve)"}},
		{"bad", p, []sign.Signature{flipped}, []string{"the signature by admin (" + admin.Public().ID() + ") does not verify"}},
		{"no keys", sign.Policy{Require: true}, []sign.Signature{s}, []string{"trusts no key"}},
	} {
		_, err := tc.p.Check(id, raw, tc.sigs)
		if !errors.Is(err, sign.ErrUnsigned) {
			t.Errorf("%s: %v, want ErrUnsigned", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", tc.name, err, w)
			}
		}
	}
	if _, err := sign.DecodeKey(strings.Fields(admin.Public().Line())[1]); err != nil {
		t.Error(err)
	}
}
