package store

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/sign"
)

// TestSignaturesAndPolicy: signatures are kept only when they verify and
// their commit is here; the policy is persisted; gc drops the signatures
// of the commits it drops.
func TestSignaturesAndPolicy(t *testing.T) { matrix(t, testSignaturesAndPolicy) }

func testSignaturesAndPolicy(t *testing.T, be backend) {
	s := be.newStore(t)
	tree := put(t, s, []byte("tree"))[0]
	c := &Commit{Tree: tree, Time: time.Unix(1, 0).UTC(), Message: "v1", Image: "img"}
	id, err := s.PutCommit(c)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := s.CommitRaw(id)
	admin, _ := sign.Generate("admin")
	eve, _ := sign.Generate("eve")

	if err := s.PutSignature(chunk.Sum([]byte("nope")), admin.Sign(raw)); !errors.Is(err, ErrNotFound) {
		t.Errorf("signature of a missing commit: %v", err)
	}
	bad := admin.Sign([]byte("other bytes"))
	if err := s.PutSignature(id, bad); !errors.Is(err, sign.ErrBadSignature) {
		t.Errorf("bad signature stored: %v", err)
	}
	for _, k := range []sign.PrivateKey{admin, eve, admin} {
		if err := s.PutSignature(id, k.Sign(raw)); err != nil {
			t.Fatal(err)
		}
	}
	sigs, err := s.Signatures(id)
	if err != nil || len(sigs) != 2 {
		t.Fatalf("signatures: %d %v, want 2 (one per key)", len(sigs), err)
	}

	// Nothing trusted, nothing required: everything goes.
	if _, err := s.CheckSigned(id, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CheckSigned(id, true); !errors.Is(err, sign.ErrUnsigned) || !strings.Contains(err.Error(), "trusts no key") {
		t.Errorf("required without keys: %v", err)
	}
	if err := s.TrustKey(admin.Public()); err != nil {
		t.Fatal(err)
	}
	if err := s.TrustKey(admin.Public()); !errors.Is(err, ErrExists) {
		t.Errorf("same name twice: %v", err)
	}
	again := admin.Public()
	again.Name = "admin2"
	if err := s.TrustKey(again); err == nil || !strings.Contains(err.Error(), "trusted already, as admin") {
		t.Errorf("same key twice: %v", err)
	}
	if err := s.SetRequireSignature(true); err != nil {
		t.Fatal(err)
	}
	if k, err := s.CheckSigned(id, false); err != nil || k.Name != "admin" {
		t.Errorf("signed by the trusted key: %v %v", k, err)
	}
	if err := s.UntrustKey("admin"); err != nil {
		t.Fatal(err)
	}
	if err := s.TrustKey(eve.Public()); err != nil {
		t.Fatal(err)
	}
	// Persisted: reopen.
	s = be.reopen(t, s)
	p, err := s.Policy()
	if err != nil || !p.Require || len(p.Keys) != 1 || p.Keys[0].Name != "eve" {
		t.Fatalf("policy after reopen: %+v %v", p, err)
	}
	if err := s.UntrustKey("admin"); !errors.Is(err, ErrNotFound) {
		t.Errorf("untrust twice: %v", err)
	}
	rep := []Problem{}
	if _, err := s.Check(true, func(p Problem) { rep = append(rep, p) }); err != nil || len(rep) != 0 {
		t.Errorf("check: %v %v", rep, err)
	}

	if s.Remote() != nil {
		if _, err := s.Repack(func(chunk.ID) bool { return false }, func(chunk.ID) bool { return false }); err == nil || !strings.Contains(err.Error(), "not implemented") {
			t.Errorf("gc on S3: %v", err)
		}
		return
	}
	// gc of the commit takes its signatures.
	if _, err := s.Repack(func(chunk.ID) bool { return false }, func(chunk.ID) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if ids, _ := s.Signed(); len(ids) != 0 {
		t.Errorf("signatures outlived their commit: %v", ids)
	}
}

func TestTokensAndSecrets(t *testing.T) { matrix(t, testTokensAndSecrets) }

func testTokensAndSecrets(t *testing.T, be backend) {
	s := be.newStore(t)
	h := sha256.Sum256([]byte("tok-1"))
	if err := s.AddToken(Token{Name: "n01", Role: "node", Node: "n01", Created: time.Now()}, h); err != nil {
		t.Fatal(err)
	}
	if err := s.AddToken(Token{Name: "n01", Role: "read"}, sha256.Sum256([]byte("tok-2"))); !errors.Is(err, ErrExists) {
		t.Errorf("name twice: %v", err)
	}
	if err := s.AddToken(Token{Name: "../x", Role: "read"}, sha256.Sum256([]byte("tok-3"))); err == nil {
		t.Error("bad name accepted")
	}
	tk, ok, err := s.TokenByHash(h)
	if err != nil || !ok || tk.Node != "n01" || tk.Role != "node" {
		t.Errorf("by hash: %+v %v %v", tk, ok, err)
	}
	if _, ok, _ := s.TokenByHash(sha256.Sum256([]byte("tok-9"))); ok {
		t.Error("unknown token found")
	}
	if err := s.RevokeToken("n01"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.TokenByHash(h); ok {
		t.Error("revoked token still found")
	}
	if err := s.RevokeToken("n01"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoke twice: %v", err)
	}
	a, err := s.Secret("swarm")
	b, err2 := s.Secret("swarm")
	c, _ := s.Secret("other")
	if err != nil || err2 != nil || string(a) != string(b) || string(a) == string(c) || len(a) != 32 {
		t.Errorf("secrets: %x %x %x %v %v", a, b, c, err, err2)
	}
	h2 := sha256.Sum256([]byte("tok-4"))
	if err := s.AddToken(Token{Name: "n02", Role: "read"}, h2); err != nil {
		t.Fatal(err)
	}
	// Another store on the same location: the same tokens and secrets.
	s = be.reopen(t, s)
	if _, ok, _ := s.TokenByHash(h2); !ok {
		t.Error("token lost on reopen")
	}
	if _, ok, _ := s.TokenByHash(h); ok {
		t.Error("revoked token back on reopen")
	}
	if a2, err := s.Secret("swarm"); err != nil || string(a2) != string(a) {
		t.Errorf("secret changed on reopen: %x %x %v", a, a2, err)
	}
}
