package mcast

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/seal"
)

// OpenResponse answers POST /v1/mcast/open: where the session for the
// wanted commit is.
type OpenResponse struct {
	Session string   `json:"session"` // 8 hex digits
	Group   string   `json:"group"`   // ADDR:PORT
	Want    chunk.ID `json:"want"`
	State   string   `json:"state"`
	// Key, in a sealed session's document only, is the 32-byte key of
	// its data (64 hex digits): it travels here, behind the read token,
	// and never on the group.
	Key string `json:"key,omitempty"`
}

// SealKey is the document's key: nil for a plain session.
func (o *OpenResponse) SealKey() (*seal.Key, error) {
	if o.Key == "" {
		return nil, nil
	}
	b, err := hex.DecodeString(o.Key)
	if err != nil || len(b) != seal.KeySize {
		return nil, fmt.Errorf("multicast: session %s: key is not %d hex digits", o.Session, 2*seal.KeySize)
	}
	var k seal.Key
	copy(k[:], b)
	return &k, nil
}

// Mount serves the control endpoints on srv:
//
//	POST /v1/mcast/open?want=<id>   start or find the session for want
//	GET  /v1/mcast/sessions         every session with its members
//
// Both are reads (srv.Handle): behind the read token when the server's
// reads are closed, which is when its sessions are sealed, so a sealed
// session's key (in the open answer only) goes to token holders only.
func (m *Manager) Mount(srv *simsync.Server) {
	srv.Handle("POST /v1/mcast/open", http.HandlerFunc(m.serveOpen))
	srv.Handle("GET /v1/mcast/sessions", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, m.Sessions()) }))
}

func (m *Manager) serveOpen(w http.ResponseWriter, r *http.Request) {
	want, err := chunk.Parse(r.URL.Query().Get("want"))
	if err != nil {
		http.Error(w, "want: "+err.Error(), http.StatusBadRequest)
		return
	}
	var via net.IP
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		via = net.ParseIP(host)
	}
	s, err := m.Open(want, OpenOptions{Via: via})
	if errors.Is(err, store.ErrNotFound) {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	o := OpenResponse{Session: fmt.Sprintf("%08x", s.ID), Group: s.Group.String(), Want: want, State: StateName(uint8(s.state.Load()))}
	if k, ok := s.Key(); ok {
		o.Key = hex.EncodeToString(k[:])
		w.Header().Set("Cache-Control", "no-store") // a key: kept by no cache on the way
	}
	writeJSON(w, o)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if w.Header().Get("Cache-Control") == "" {
		w.Header().Set("Cache-Control", "no-cache")
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// OpenRemote asks the sim server r for the session of want.
func OpenRemote(ctx context.Context, r *simsync.Remote, want chunk.ID) (*OpenResponse, error) {
	var o OpenResponse
	if err := r.PostJSON(ctx, "/v1/mcast/open?want="+want.String(), nil, &o); err != nil {
		return nil, fmt.Errorf("multicast open: %w", err)
	}
	return &o, nil
}

// Sessions lists the sessions of the sim server r.
func Sessions(ctx context.Context, r *simsync.Remote) ([]SessionInfo, error) {
	var ss []SessionInfo
	return ss, r.GetJSON(ctx, "/v1/mcast/sessions", &ss)
}

// ParseSession reads a session id as OpenResponse gives it.
func ParseSession(s string) (uint32, error) {
	var id uint32
	if _, err := fmt.Sscanf(s, "%08x", &id); err != nil || len(s) != 8 || id == 0 {
		return 0, fmt.Errorf("multicast: bad session id %q", s)
	}
	return id, nil
}
