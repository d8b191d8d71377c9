package rollout

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// TestHTTPActions: POST /v1/rollouts/{id}/pause|resume|abort change a
// real engine's rollout for an admin token only (401 anonymous, 403 a
// read token), answer its new state, and refuse what its state does not
// allow or an unknown id with an error naming the rollout.
func TestHTTPActions(t *testing.T) {
	st := storetest.New(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "motd"), []byte("v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := client.Commit(t.Context(), st, src, client.CommitOptions{Image: "img"}); err != nil {
		t.Fatal(err)
	}
	fl := fleet.New(st, nil)
	t.Cleanup(fl.Close)
	// Known nodes that never answer: the rollout stays running with n1's
	// order outstanding until the test changes it.
	for _, n := range []string{"n1", "n2"} {
		fl.InstallStatus(n, install.Status{Node: n, Step: "done", State: install.Done})
	}
	eng, err := New(st, fl, simsync.NewPlanner(st), []string{"http"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	r, err := eng.Start(Spec{Ref: "img", Nodes: []string{"n1", "n2"}, Canary: 1, Select: "--nodes n1,n2"})
	if err != nil {
		t.Fatal(err)
	}
	srv := &simsync.Server{Store: st, WriteTokens: []string{"adm"}, ReadTokens: []string{"rd"}}
	eng.Mount(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)

	post := func(path, token string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "POST", hs.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			json.NewDecoder(resp.Body).Decode(&v)
		}
		return resp.StatusCode, v
	}
	state := func() string {
		t.Helper()
		cur, err := eng.Get(r.ID)
		if err != nil {
			t.Fatal(err)
		}
		return cur.State
	}

	for _, c := range []struct {
		token string
		code  int
	}{{"", http.StatusUnauthorized}, {"rd", http.StatusForbidden}, {"bogus", http.StatusUnauthorized}} {
		for _, verb := range []string{"pause", "resume", "abort"} {
			if code, _ := post("/v1/rollouts/"+r.ID+"/"+verb, c.token); code != c.code {
				t.Errorf("%s with token %q: %d; want %d", verb, c.token, code, c.code)
			}
		}
	}
	if s := state(); s != Running {
		t.Fatalf("after refused requests the rollout is %s; want running", s)
	}

	steps := []struct {
		path      string
		code      int
		state     string // the rollout's, after
		errSubstr string
	}{
		{"/pause", 200, Paused, ""},
		{"/pause", 409, Paused, "rollout " + r.ID + " is paused, not running"},
		{"/resume", 200, Running, ""},
		{"/abort?revert=maybe", 400, Running, "abort " + r.ID + ": revert"},
		{"/abort", 200, Aborted, ""},
		{"/resume", 409, Aborted, "rollout " + r.ID + " is aborted"},
		{"/abort", 409, Aborted, "rollout " + r.ID + " is aborted already"},
	}
	for _, s := range steps {
		code, body := post("/v1/rollouts/"+r.ID+s.path, "adm")
		if code != s.code {
			t.Fatalf("POST %s: %d %v; want %d", s.path, code, body, s.code)
		}
		if s.code == 200 && body["state"] != s.state {
			t.Errorf("POST %s answered state %v; want %s", s.path, body["state"], s.state)
		}
		if s.errSubstr != "" {
			if msg, _ := body["error"].(string); !strings.Contains(msg, s.errSubstr) {
				t.Errorf("POST %s: error %q; want it to say %q", s.path, msg, s.errSubstr)
			}
		}
		if got := state(); got != s.state {
			t.Errorf("after POST %s the rollout is %s; want %s", s.path, got, s.state)
		}
	}
	// n1's order was withdrawn by the abort.
	if o := fl.Pending("n1"); o != nil {
		t.Errorf("n1 still has order %s after the abort", o.ID)
	}
	if code, body := post("/v1/rollouts/r99/pause", "adm"); code != 404 || !strings.Contains(body["error"].(string), "r99") {
		t.Errorf("pause r99: %d %v; want 404 naming r99", code, body)
	}
	if code, body := post("/v1/rollouts/x/pause", "adm"); code != 400 || !strings.Contains(body["error"].(string), `"x"`) {
		t.Errorf("pause x: %d %v; want 400 naming x", code, body)
	}
}
