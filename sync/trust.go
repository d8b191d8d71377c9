package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// Signatures travel beside their commits on every path (ARCHITECTURE.md
// "Signatures"): a node or a mirror asks GET /v1/commits/<id>/signatures
// for each commit it fetches, a push carries them in POST /v1/refs. The
// trust policy is applied where every fetch passes, FetchCommit and
// FetchHistory (so HTTP, BitTorrent, multicast and whatever transport
// comes next, the installer, a node's checkout --from and update), and
// where every push lands, the server's POST /v1/refs: before a single
// object of the commit moves.

// CommitSignature is a signature of one commit, in POST /v1/refs.
type CommitSignature struct {
	Commit chunk.ID `json:"commit"`
	sign.Signature
}

// SignaturesResponse is GET /v1/commits/<id>/signatures.
type SignaturesResponse struct {
	Signatures []sign.Signature `json:"signatures"`
}

// maxSignatures bounds the signatures of one commit a server sends or
// takes.
const maxSignatures = 64

// signatures serves GET /v1/commits/{id}/signatures.
func (s *Server) signatures(w http.ResponseWriter, r *http.Request) {
	id, err := chunk.Parse(r.PathValue("id"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if ok, err := s.Store.HasCommit(id); err != nil || !ok {
		httpError(w, fmt.Errorf("commit %s: %w", id.Short(), store.ErrNotFound))
		return
	}
	sigs, err := s.Store.Signatures(id)
	if err != nil {
		httpError(w, err)
		return
	}
	if sigs == nil {
		sigs = []sign.Signature{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache") // signatures are added later
	json.NewEncoder(w).Encode(SignaturesResponse{sigs})
}

// Signatures returns the signatures the server holds of commit id whose
// bytes are raw, keeping only those that verify (a server cannot make a
// node store a forged one). A server that predates signatures has none.
func (r *Remote) Signatures(ctx context.Context, id chunk.ID, raw []byte) ([]sign.Signature, error) {
	var sr SignaturesResponse
	err := r.GetJSON(ctx, "/v1/commits/"+id.String()+"/signatures", &sr)
	if errors.Is(err, ErrRemoteNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []sign.Signature
	for i, s := range sr.Signatures {
		if i == maxSignatures {
			break
		}
		if s.Verify(id, raw) == nil {
			out = append(out, s)
		}
	}
	return out, nil
}

// required says whether commits from r must be signed for local: the
// store's own policy, or the Remote's RequireSignature (--require-signature).
func required(local *store.Store, r *Remote) (sign.Policy, bool, error) {
	p, err := local.Policy()
	if err != nil {
		return p, false, err
	}
	return p, p.Require || r.RequireSignature, nil
}

// admit applies local's trust policy to commit id (bytes raw) with the
// signatures sigs: an error names the commit, the server and the keys.
func admit(local *store.Store, r *Remote, id chunk.ID, raw []byte, sigs []sign.Signature) error {
	p, req, err := required(local, r)
	if err != nil || !req {
		return err
	}
	if _, err := p.Check(id, raw, sigs); err != nil {
		return fmt.Errorf("refusing commit from %s: %w", r, err)
	}
	return nil
}

// remoteSignatures fetches id's signatures for the policy: a failure to
// get them only matters when they are required.
func remoteSignatures(ctx context.Context, local *store.Store, r *Remote, id chunk.ID, raw []byte) ([]sign.Signature, error) {
	sigs, err := r.Signatures(ctx, id, raw)
	if err != nil {
		if _, req, perr := required(local, r); perr != nil || req {
			return nil, fmt.Errorf("signatures of %s: %w", id.Short(), err)
		}
		return nil, nil
	}
	return sigs, nil
}

// keepSignatures stores sigs beside commit id (already in local).
func keepSignatures(local *store.Store, id chunk.ID, sigs []sign.Signature) error {
	for _, s := range sigs {
		if err := local.PutSignature(id, s); err != nil {
			return err
		}
	}
	return nil
}

// admitLocal checks a commit local already holds: its own signatures
// first, then (when they do not do) the server's, which are kept.
func admitLocal(ctx context.Context, local *store.Store, r *Remote, id chunk.ID) error {
	p, req, err := required(local, r)
	if err != nil || !req {
		return err
	}
	raw, err := local.CommitRaw(id)
	if err != nil {
		return err
	}
	have, err := local.Signatures(id)
	if err != nil {
		return err
	}
	if _, err := p.Check(id, raw, have); err == nil {
		return nil
	}
	sigs, err := remoteSignatures(ctx, local, r, id, raw)
	if err != nil {
		return err
	}
	if err := keepSignatures(local, id, sigs); err != nil {
		return err
	}
	return admit(local, r, id, raw, append(have, sigs...))
}

// CheckCommit applies local's trust policy (and r.RequireSignature) to
// commit id on the server r without fetching a single object: the
// commit and its signatures only. The installer checks everything it
// will install this way before it touches the disk.
func CheckCommit(ctx context.Context, local *store.Store, r *Remote, id chunk.ID) error {
	raw, err := r.Commit(ctx, id)
	if err != nil {
		return err
	}
	sigs, err := remoteSignatures(ctx, local, r, id, raw)
	if err != nil {
		return err
	}
	return admit(local, r, id, raw, sigs)
}

// pushSignatures collects the signatures local holds of ids.
func pushSignatures(local *store.Store, ids []chunk.ID) ([]CommitSignature, error) {
	var out []CommitSignature
	seen := map[chunk.ID]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		sigs, err := local.Signatures(id)
		if err != nil {
			return nil, err
		}
		for _, s := range sigs {
			out = append(out, CommitSignature{Commit: id, Signature: s})
		}
	}
	return out, nil
}

// readJSON decodes a request body of at most max bytes into v, refusing
// unknown fields and trailing data.
func readJSON(r io.Reader, max int64, v any) error {
	lr := &io.LimitedReader{R: r, N: max + 1}
	dec := json.NewDecoder(lr)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if lr.N <= 0 {
			return fmt.Errorf("body over %d bytes", max)
		}
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON value")
	}
	if lr.N <= 0 {
		return fmt.Errorf("body over %d bytes", max)
	}
	return nil
}
