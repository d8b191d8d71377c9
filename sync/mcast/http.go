package mcast

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// OpenResponse answers POST /v1/mcast/open: where the session for the
// wanted commit is.
type OpenResponse struct {
	Session string   `json:"session"` // 8 hex digits
	Group   string   `json:"group"`   // ADDR:PORT
	Want    chunk.ID `json:"want"`
	State   string   `json:"state"`
}

// Handler serves the control endpoints beside sim serve's API:
//
//	POST /v1/mcast/open?want=<id>   start or find the session for want
//	GET  /v1/mcast/sessions         every session with its members
func (m *Manager) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && r.URL.Path == "/v1/mcast/open":
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
			writeJSON(w, OpenResponse{Session: fmt.Sprintf("%08x", s.ID), Group: s.Group.String(), Want: want, State: StateName(uint8(s.state.Load()))})
		case r.Method == "GET" && r.URL.Path == "/v1/mcast/sessions":
			writeJSON(w, m.Sessions())
		default:
			http.NotFound(w, r)
		}
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// OpenRemote asks the sim server at base (its HTTP client c, bearer
// token tok if any) for the session of want.
func OpenRemote(ctx context.Context, c *http.Client, base, tok string, want chunk.ID) (*OpenResponse, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimRight(base, "/")+"/v1/mcast/open?want="+want.String(), nil)
	if err != nil {
		return nil, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("multicast open: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("multicast open at %s: %s: %s", base, resp.Status, strings.TrimSpace(string(msg)))
	}
	var o OpenResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&o); err != nil {
		return nil, fmt.Errorf("multicast open at %s: %w", base, err)
	}
	return &o, nil
}

// ParseSession reads a session id as OpenResponse gives it.
func ParseSession(s string) (uint32, error) {
	var id uint32
	if _, err := fmt.Sscanf(s, "%08x", &id); err != nil || len(s) != 8 || id == 0 {
		return 0, fmt.Errorf("multicast: bad session id %q", s)
	}
	return id, nil
}

// ParseRate reads a rate the way tc writes it: 200mbit, 1gbit, 500kbit,
// a bare number being bit/s; 25mbps is bytes per second.
func ParseRate(s string) (int64, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range []struct {
		suf string
		m   float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}, {"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3}, {"bps", 8}} {
		if strings.HasSuffix(v, u.suf) {
			v, mult = strings.TrimSuffix(v, u.suf), u.m
			break
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("bad rate %q (e.g. 200mbit, 1gbit)", s)
	}
	bits := int64(f * mult)
	if bits < 8000 {
		return 0, fmt.Errorf("rate %q is below 8kbit", s)
	}
	return bits, nil
}
