package sync

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	gosync "sync"
	"time"

	"github.com/systemimager/sim/store"
)

// Roles and credentials (ARCHITECTURE.md "Roles and tokens"). Every
// request the Server answers is authorized in one place, Authorize:
// routes are mounted with the role they need (HandleRole; Handle means
// RoleRead), and a handler that acts for a node checks that the caller
// may speak for it (AllowNode). An endpoint added later (a fleet agent's
// orders, its drift reports: client/fleet) adopts the same rules with one
// line:
//
//	srv.HandleRole("POST /v1/agent/report", simsync.RoleNode, h) // and in h: simsync.AllowNode(w, r, node)
//
// Enrolment is the one thing a role does besides what its routes allow:
// an install config asked with an enroll or admin token comes with a new
// node token (MintNodeToken, client/install's config handler).

// Role is what a credential may do on a server. The roles are not a
// ladder: read is in every other role, admin has every right, but enroll
// and node are siblings with one right each besides read (enroll: have
// node tokens minted; node: speak for its own node). Authorize spells
// each role's rights out, so no role gains a right from its number (the
// numbers are never stored: records and JSON carry the names).
//
//	role    read  mint node tokens  act for a node  push, refs, commit
//	none    -     -                 -               -
//	read    yes   -                 -               -
//	enroll  yes   yes (config)      -               -
//	node    yes   -                 its own only    -
//	admin   yes   yes (config)      any             yes
type Role uint8

const (
	// RoleNone is an anonymous request to a server whose reads are
	// closed (sim serve --read-token): it may do nothing.
	RoleNone Role = iota
	// RoleRead fetches: refs, commits, signatures, objects, torrents,
	// multicast sessions, install configs and statuses. Anonymous
	// requests have it unless reads are closed.
	RoleRead
	// RoleEnroll is the boot token of a fleet (sim.token= on a kernel
	// command line, or a shared initrd's): it reads, and a node's
	// install config asked with it comes with a fresh node token for
	// that node (MintNodeToken), which the installer keeps in the
	// node's store. It reports nothing, takes no orders, pushes
	// nothing: a token many machines share, and anyone with the
	// command line can read, speaks for no node.
	RoleEnroll
	// RoleNode is a node's own token: read, and report its own install
	// status and its state and drift (the agent), take its own orders.
	// Never another node's.
	RoleNode
	// RoleAdmin does everything: push, move refs, commit remotely,
	// enrol nodes, and act for any node. The tokens of --token-file are
	// admin tokens.
	RoleAdmin
)

var roleNames = []string{"none", "read", "enroll", "node", "admin"}

func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", r)
}

// ParseRole reads read, enroll, node or admin.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames {
		if n == s && i > 0 {
			return Role(i), nil
		}
	}
	return RoleNone, fmt.Errorf("unknown role %q: want read, enroll, node or admin", s)
}

// Reads says whether r may fetch (every role but none).
func (r Role) Reads() bool {
	switch r {
	case RoleRead, RoleEnroll, RoleNode, RoleAdmin:
		return true
	}
	return false
}

// Enrolls says whether r has node tokens minted with the install
// configs it asks for: an enroll or an admin token.
func (r Role) Enrolls() bool { return r == RoleEnroll || r == RoleAdmin }

// MarshalText writes the role's name.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a role's name (none too: an anonymous whoami).
func (r *Role) UnmarshalText(b []byte) error {
	if string(b) == "none" {
		*r = RoleNone
		return nil
	}
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

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
		allowed = p.Role.Reads()
	case RoleEnroll:
		allowed = p.Role.Enrolls()
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
	if need == RoleEnroll {
		want = "an enroll or admin token"
	}
	if p.Name == "" {
		msg := what + " needs " + want
		switch {
		case need == RoleRead:
			msg = "this server needs a read token (sim token add NAME --role read)"
		case need == RoleNode && node != "":
			// What the admin does about it, since a node without its
			// token is a node installed without enrolment.
			msg += fmt.Sprintf(": this node has none; on the server: sim token add node-%s --role node --node %s, into /var/lib/sim/token on the node", node, node)
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
// are refused (401 or 403, with the reason) before h runs. A node
// endpoint (need RoleNode) whose request names its node in the query
// (?node=N, as the agent's all do) is checked for that node, before any
// body is read; one naming it only in its body checks it in h with
// AllowNode.
func (s *Server) Require(need Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		node := ""
		if need == RoleNode {
			node = r.URL.Query().Get("node")
		}
		p, err := s.Authorize(r, need, node)
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

// NodeTokenName is the name of the token MintNodeToken makes for node.
func NodeTokenName(node string) string { return "node-" + node }

// mintMu makes the revoke and the add of one mint a unit within the
// server (the one process that holds its store).
var mintMu gosync.Mutex

// MintNodeToken makes a new node token for node in st, named
// NodeTokenName(node), and returns it: the token an enrolled node's
// installer keeps. A token of that name made before (an earlier install
// of the node) is revoked: a reinstalled node has one token, the new one.
func MintNodeToken(st *store.Store, node string) (string, error) {
	name := NodeTokenName(node)
	tok, err := NewToken()
	if err != nil {
		return "", fmt.Errorf("node token %s: %w", name, err)
	}
	mintMu.Lock()
	defer mintMu.Unlock()
	if err := st.RevokeToken(name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("node token %s: replace: %w", name, err)
	}
	rec := store.Token{Name: name, Role: RoleNode.String(), Node: node, Created: time.Now().UTC()}
	if err := st.AddToken(rec, TokenHash(tok)); err != nil {
		return "", fmt.Errorf("node token for %s: %w", node, err)
	}
	return tok, nil
}
