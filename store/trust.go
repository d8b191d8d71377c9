package store

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/sign"
)

// What the store keeps for trust (ARCHITECTURE.md "Index" and
// "Signatures"): commit signatures beside the commits, the public keys
// the store trusts, its settings (whether it requires signatures), the
// API tokens of a server (hashed), and its own secrets. A store made
// before these existed simply has none of these keys.

// PutSignature stores sig beside commit id. The commit must be in the
// store and sig must verify against it: a store never keeps a signature
// that does not. A second signature by the same key replaces nothing.
func (s *Store) PutSignature(id chunk.ID, sig sign.Signature) error {
	raw, err := s.CommitRaw(id)
	if err != nil {
		return err
	}
	if err := sig.Verify(id, raw); err != nil {
		return err
	}
	b, err := json.Marshal(sig)
	if err != nil {
		return err
	}
	key := append(append([]byte(kSig), id[:]...), sig.Key...)
	err = s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(key); err == nil {
			return nil
		}
		return txn.Set(key, b)
	})
	if err != nil {
		return err
	}
	if err := s.metaSync(key); err != nil {
		return err
	}
	return s.db.Sync()
}

// Signatures returns the signatures stored beside commit id, oldest key
// first (by key bytes).
func (s *Store) Signatures(id chunk.ID) ([]sign.Signature, error) {
	var out []sign.Signature
	err := s.scan(kSig+string(id[:]), true, func(k, v []byte) error {
		var sig sign.Signature
		if err := json.Unmarshal(v, &sig); err != nil {
			return fmt.Errorf("signature of commit %s: %w", id.Short(), err)
		}
		out = append(out, sig)
		return nil
	})
	return out, err
}

// Signed lists every commit that has at least one signature.
func (s *Store) Signed() ([]chunk.ID, error) {
	var out []chunk.ID
	err := s.scan(kSig, false, func(k, _ []byte) error {
		var id chunk.ID
		copy(id[:], k)
		if len(out) == 0 || out[len(out)-1] != id {
			out = append(out, id)
		}
		return nil
	})
	return out, err
}

// dropSignatures deletes the signatures of commits for which keep says
// false (gc, after it dropped them).
func (s *Store) dropSignatures(wb *badger.WriteBatch, keep func(chunk.ID) bool) (int, error) {
	var dead [][]byte
	err := s.scan(kSig, false, func(k, _ []byte) error {
		var id chunk.ID
		copy(id[:], k)
		if !keep(id) {
			dead = append(dead, append([]byte(kSig), k...))
		}
		return nil
	})
	for _, k := range dead {
		if err == nil {
			err = wb.Delete(k)
		}
	}
	return len(dead), err
}

// trustedKey is the value of a `k` key.
type trustedKey struct {
	Name  string    `json:"name"`
	Key   []byte    `json:"key"`
	Added time.Time `json:"added"`
}

// TrustKey adds k to the keys the store trusts. Its name must be new,
// and so must the key.
func (s *Store) TrustKey(k sign.PublicKey) error {
	if err := sign.CheckName(k.Name); err != nil {
		return err
	}
	b, _ := json.Marshal(trustedKey{Name: k.Name, Key: k.Key, Added: time.Now().UTC()})
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get([]byte(kTrust + k.Name)); err == nil {
			return fmt.Errorf("trusted key %s: %w (sim trust rm %s first)", k.Name, ErrExists, k.Name)
		}
		keys, err := trustedKeys(txn)
		if err != nil {
			return err
		}
		for _, o := range keys {
			if o.Equal(k) {
				return fmt.Errorf("key %s is trusted already, as %s", k.ID(), o.Name)
			}
		}
		return txn.Set([]byte(kTrust+k.Name), b)
	})
	if err != nil {
		return err
	}
	if err := s.metaSync([]byte(kTrust + k.Name)); err != nil {
		return err
	}
	return s.db.Sync()
}

// UntrustKey removes the trusted key name.
func (s *Store) UntrustKey(name string) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get([]byte(kTrust + name)); err != nil {
			if errors.Is(err, badger.ErrKeyNotFound) {
				return fmt.Errorf("trusted key %s: %w", name, ErrNotFound)
			}
			return err
		}
		return txn.Delete([]byte(kTrust + name))
	})
	if err != nil {
		return err
	}
	if err := s.metaSync([]byte(kTrust + name)); err != nil {
		return err
	}
	return s.db.Sync()
}

// TrustedKeys lists the keys the store trusts, by name.
func (s *Store) TrustedKeys() ([]sign.PublicKey, error) {
	var out []sign.PublicKey
	err := s.db.View(func(txn *badger.Txn) (err error) {
		out, err = trustedKeys(txn)
		return err
	})
	return out, err
}

func trustedKeys(txn *badger.Txn) ([]sign.PublicKey, error) {
	var out []sign.PublicKey
	opt := badger.DefaultIteratorOptions
	opt.Prefix = []byte(kTrust)
	it := txn.NewIterator(opt)
	defer it.Close()
	for it.Seek(opt.Prefix); it.ValidForPrefix(opt.Prefix); it.Next() {
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return nil, err
		}
		var tk trustedKey
		if err := json.Unmarshal(v, &tk); err != nil || len(tk.Key) != 32 {
			return nil, fmt.Errorf("trusted key %s: damaged record", it.Item().Key()[1:])
		}
		out = append(out, sign.PublicKey{Name: tk.Name, Key: tk.Key})
	}
	return out, nil
}

// settingRequireSig is the `o` key of the signature requirement.
const settingRequireSig = "require-signature"

// SetRequireSignature sets whether the store requires a signature by a
// trusted key of every commit it fetches, accepts in a push or checks
// out.
func (s *Store) SetRequireSignature(on bool) error {
	v := []byte{0}
	if on {
		v[0] = 1
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(kSetting+settingRequireSig), v) }); err != nil {
		return err
	}
	if err := s.metaSync([]byte(kSetting + settingRequireSig)); err != nil {
		return err
	}
	return s.db.Sync()
}

// Policy is the store's trust policy: its trusted keys, and whether it
// requires signatures.
func (s *Store) Policy() (sign.Policy, error) {
	var p sign.Policy
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		if p.Keys, err = trustedKeys(txn); err != nil {
			return err
		}
		it, err := txn.Get([]byte(kSetting + settingRequireSig))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error { p.Require = bytes.Equal(v, []byte{1}); return nil })
	})
	return p, err
}

// CheckSigned applies the store's policy to commit id: when the store
// requires signatures, or require is set, the commit must carry a valid
// signature by a trusted key (stored beside it, or among extra). It
// returns the key that signed it (zero when nothing was required and it
// is unsigned).
func (s *Store) CheckSigned(id chunk.ID, require bool, extra ...sign.Signature) (sign.PublicKey, error) {
	p, err := s.Policy()
	if err != nil {
		return sign.PublicKey{}, err
	}
	if !p.Require && !require {
		return sign.PublicKey{}, nil
	}
	raw, err := s.CommitRaw(id)
	if err != nil {
		return sign.PublicKey{}, err
	}
	sigs, err := s.Signatures(id)
	if err != nil {
		return sign.PublicKey{}, err
	}
	return p.Check(id, raw, append(sigs, extra...))
}

// Secret returns the store's secret called name, 32 random bytes made
// the first time it is asked for and kept in the index (the BitTorrent
// seeder derives its swarm keys from one). Whoever can read the index
// can read the packs too, so it is no weaker than the data it protects.
func (s *Store) Secret(name string) ([]byte, error) {
	key := []byte(kSetting + "secret-" + name)
	if s.rem != nil {
		if err := s.remoteSecret(key); err != nil {
			return nil, fmt.Errorf("store secret %s: %w", name, err)
		}
	}
	var out []byte
	err := s.db.Update(func(txn *badger.Txn) error {
		if it, err := txn.Get(key); err == nil {
			out, err = it.ValueCopy(nil)
			return err
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		out = make([]byte, 32)
		if _, err := rand.Read(out); err != nil {
			return err
		}
		return txn.Set(key, out)
	})
	if err != nil {
		return nil, err
	}
	if len(out) != 32 {
		return nil, fmt.Errorf("store secret %s: damaged (%d bytes)", name, len(out))
	}
	return out, s.db.Sync()
}

// Token is an API credential of a server (sim token add): its name, what
// it may do (read, node or admin: package sync gives the roles their
// meaning) and, for a node token, the node it speaks for. The token
// itself is never stored: only the SHA-256 of it, as the record's key.
type Token struct {
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Node    string    `json:"node,omitempty"`
	Created time.Time `json:"created"`
}

// AddToken stores the record t for the token whose SHA-256 is hash. Its
// name must be new.
func (s *Store) AddToken(t Token, hash [32]byte) error {
	if err := sign.CheckName(t.Name); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	b, _ := json.Marshal(t)
	err := s.db.Update(func(txn *badger.Txn) error {
		toks, err := tokens(txn)
		if err != nil {
			return err
		}
		for _, o := range toks {
			if o.Name == t.Name {
				return fmt.Errorf("token %s: %w (sim token revoke %s first)", t.Name, ErrExists, t.Name)
			}
		}
		key := append([]byte(kToken), hash[:]...)
		if _, err := txn.Get(key); err == nil {
			return fmt.Errorf("token %s: that token is registered already", t.Name)
		}
		return txn.Set(key, b)
	})
	if err != nil {
		return err
	}
	if err := s.metaSync(append([]byte(kToken), hash[:]...)); err != nil {
		return err
	}
	return s.db.Sync()
}

// TokenByHash returns the record of the token whose SHA-256 is hash.
func (s *Store) TokenByHash(hash [32]byte) (Token, bool, error) {
	var t Token
	var found bool
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(append([]byte(kToken), hash[:]...))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		return it.Value(func(v []byte) error { return json.Unmarshal(v, &t) })
	})
	return t, found, err
}

// Tokens lists the token records, by name.
func (s *Store) Tokens() ([]Token, error) {
	var out []Token
	err := s.db.View(func(txn *badger.Txn) (err error) {
		out, err = tokens(txn)
		return err
	})
	return out, err
}

func tokens(txn *badger.Txn) ([]Token, error) {
	var out []Token
	opt := badger.DefaultIteratorOptions
	opt.Prefix = []byte(kToken)
	it := txn.NewIterator(opt)
	defer it.Close()
	for it.Seek(opt.Prefix); it.ValidForPrefix(opt.Prefix); it.Next() {
		var t Token
		if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &t) }); err != nil {
			return nil, fmt.Errorf("token record: %w", err)
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RevokeToken removes the token called name: it stops working at once.
func (s *Store) RevokeToken(name string) error {
	var key []byte
	err := s.db.Update(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(kToken)
		it := txn.NewIterator(opt)
		for it.Seek(opt.Prefix); it.ValidForPrefix(opt.Prefix); it.Next() {
			var t Token
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &t) }); err != nil {
				it.Close()
				return err
			}
			if t.Name == name {
				key = it.Item().KeyCopy(nil)
				break
			}
		}
		it.Close()
		if key == nil {
			return fmt.Errorf("token %s: %w", name, ErrNotFound)
		}
		return txn.Delete(key)
	})
	if err != nil {
		return err
	}
	if err := s.metaSync(key); err != nil {
		return err
	}
	return s.db.Sync()
}
