package sync

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// Roles and credentials (ARCHITECTURE.md "Roles and tokens"). Every
// request the Server answers is authorized in one place, Authorize:
// routes are mounted with the role they need (HandleRole; Handle means
// RoleRead), and a handler that acts for a node checks that the caller
// may speak for it (AllowNode). An endpoint added later (a fleet agent's
// orders, its drift reports) adopts the same rules with one line:
//
//	srv.HandleRole("POST /v1/agent/report", simsync.RoleNode, h) // and in h: simsync.AllowNode(w, r, node)

// Role is what a credential may do on a server. Each role includes the
// ones before it.
type Role uint8

const (
	// RoleNone is an anonymous request to a server whose reads are
	// closed (sim serve --read-token): it may do nothing.
	RoleNone Role = iota
	// RoleRead fetches: refs, commits, signatures, objects, torrents,
	// multicast sessions, install configs and statuses. Anonymous
	// requests have it unless reads are closed.
	RoleRead
	// RoleNode is a node's own token: read, and report its own install
	// status (and, later, drift), take its own orders. Never another
	// node's.
	RoleNode
	// RoleAdmin does everything: push, move refs, commit remotely, and
	// act for any node. The tokens of --token-file are admin tokens.
	RoleAdmin
)

var roleNames = []string{"none", "read", "node", "admin"}

func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", r)
}

// ParseRole reads read, node or admin.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames {
		if n == s && i > 0 {
			return Role(i), nil
		}
	}
	return RoleNone, fmt.Errorf("unknown role %q: want read, node or admin", s)
}

// MarshalText writes the role's name.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Principal is who a request speaks for.
type Principal struct {
	// Name is the token's name ("token-file" for a token of
	// --token-file, "" for an anonymous request).
	Name string `json:"name,omitempty"`
	Role Role   `json:"role"`
	// Node is the node a node token speaks for.
	Node string `json:"node,omitempty"`
}

// ActsFor says whether p may speak for node: an admin for any node, a
// node token for its own only.
func (p Principal) ActsFor(node string) bool {
	return p.Role == RoleAdmin || (p.Role == RoleNode && node != "" && p.Node == node)
}

func (p Principal) String() string {
	switch {
	case p.Name == "":
		return "an anonymous request"
	case p.Role == RoleNode:
		return fmt.Sprintf("token %s (role node, node %s)", p.Name, p.Node)
	}
	return fmt.Sprintf("token %s (role %s)", p.Name, p.Role)
}

// AuthError is a refused request: Code is 401 without valid credentials,
// 403 when they do not grant what is asked.
type AuthError struct {
	Code int
	Msg  string
}

func (e *AuthError) Error() string { return e.Msg }

// privateReads says whether reads need a credential.
func (s *Server) privateReads() bool { return s.PrivateReads || len(s.ReadTokens) > 0 }

// ReadsClosed says whether every read needs a token: what the server
// serves is then private, and transports that hand it to peers seal it
// (sync/bt's sealed torrents).
func (s *Server) ReadsClosed() bool { return s.privateReads() }

// principal finds who r speaks for from its Authorization header: a
// token of --token-file (admin), of ReadTokens (read), or one of the
// store's (sim token add; looked up by its SHA-256). A token that is
// presented but unknown (or revoked) is refused, even where anonymous
// requests would pass: a misconfigured node learns it at once.
func (s *Server) principal(r *http.Request) (Principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		if s.privateReads() {
			return Principal{Role: RoleNone}, nil
		}
		return Principal{Role: RoleRead}, nil
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" || len(tok) > 4096 {
		return Principal{}, &AuthError{http.StatusUnauthorized, "Authorization: want \"Bearer TOKEN\""}
	}
	for _, t := range s.WriteTokens {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(t)) == 1 {
			return Principal{Name: "token-file", Role: RoleAdmin}, nil
		}
	}
	for _, t := range s.ReadTokens {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(t)) == 1 {
			return Principal{Name: "read-token", Role: RoleRead}, nil
		}
	}
	if s.Store != nil {
		rec, found, err := s.Store.TokenByHash(TokenHash(tok))
		if err != nil {
			return Principal{}, &AuthError{http.StatusInternalServerError, "token lookup: " + err.Error()}
		}
		if found {
			role, err := ParseRole(rec.Role)
			if err != nil {
				return Principal{}, &AuthError{http.StatusUnauthorized, "token " + rec.Name + ": " + err.Error()}
			}
			return Principal{Name: rec.Name, Role: role, Node: rec.Node}, nil
		}
	}
	return Principal{}, &AuthError{http.StatusUnauthorized, "unknown or revoked token"}
}

// Authorize checks that r's credentials grant need; for a node endpoint
// (need RoleNode with node set) also that they may act for node. It
// returns who r speaks for, or an *AuthError saying what is missing.
func (s *Server) Authorize(r *http.Request, need Role, node string) (Principal, error) {
	p, err := s.principal(r)
	if err != nil {
		return p, err
	}
	allowed := false
	switch need {
	case RoleNone:
		allowed = true
	case RoleRead:
		allowed = p.Role >= RoleRead
	case RoleNode:
		allowed = p.Role == RoleAdmin || (p.Role == RoleNode && (node == "" || p.Node == node))
	case RoleAdmin:
		allowed = p.Role == RoleAdmin
	}
	if allowed {
		return p, nil
	}
	what := r.Method + " " + r.URL.Path
	want := "a " + need.String() + " token"
	if need == RoleAdmin {
		want = "an admin token"
	}
	if need == RoleNode {
		want = "a node token"
		if node != "" {
			want = "the node token of " + node + " (or an admin token)"
		}
	}
	if p.Name == "" {
		msg := what + " needs " + want
		if need == RoleRead {
			msg = "this server needs a read token (sim token add NAME --role read)"
		}
		return p, &AuthError{http.StatusUnauthorized, msg}
	}
	return p, &AuthError{http.StatusForbidden, fmt.Sprintf("%s needs %s; %s may not", what, want, p)}
}

type principalKey struct{}

// PrincipalOf is who the request speaks for, inside a handler mounted
// with Handle or HandleRole.
func PrincipalOf(r *http.Request) Principal {
	p, _ := r.Context().Value(principalKey{}).(Principal)
	return p
}

// Require wraps h so that requests whose credentials do not grant need
// are refused (401 or 403, with the reason) before h runs.
func (s *Server) Require(need Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.Authorize(r, need, "")
		if err != nil {
			authFailed(w, err)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// HandleRole mounts h on pattern (a ServeMux pattern) behind Require(need).
// Call it before serving.
func (s *Server) HandleRole(pattern string, need Role, h http.Handler) {
	s.init()
	s.mux.Handle(pattern, s.Require(need, h))
}

// AllowNode refuses the request (403, answered) unless its credentials
// may act for node, for a handler that learns the node from the request
// (a status report's body); it returns whether to go on.
func AllowNode(w http.ResponseWriter, r *http.Request, node string) bool {
	p := PrincipalOf(r)
	if p.ActsFor(node) {
		return true
	}
	who := node
	if who == "" {
		who = "an unnamed node"
	}
	authFailed(w, &AuthError{http.StatusForbidden, fmt.Sprintf("%s %s for %s needs that node's token (or an admin token); %s may not", r.Method, r.URL.Path, who, p)})
	return false
}

func authFailed(w http.ResponseWriter, err error) {
	code := http.StatusUnauthorized
	if ae, ok := err.(*AuthError); ok {
		code = ae.Code
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sim"`)
	}
	http.Error(w, err.Error(), code)
}

// whoami answers GET /v1/whoami: who the request's credentials say it is.
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(PrincipalOf(r))
}

// NewToken makes a new random token: "sim_" and 43 characters of
// base64url (256 bits), fit for a kernel command line (sim.token=).
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "sim_" + base64.RawURLEncoding.EncodeToString(b), nil
}

// TokenHash is what a store keeps of a token: its SHA-256. Tokens are
// random 256-bit strings, so a fast hash is enough: nobody can guess a
// token from its hash.
func TokenHash(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }
