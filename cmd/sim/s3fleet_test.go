package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
)

// TestS3SharedFleet: two `sim serve` frontends on one Ceph prefix, each
// with its own cache, show one fleet. An agent's report to A is in B's
// `sim nodes`; of two conflicting reports (to A, then to B) the newer
// wins on both; an agent that moves from A to B continues there with
// what A knew (its drift); an install done through A makes B boot the
// node from its disk, `sim node reinstall` makes both netboot it to
// install, and an install done through B is then A's too. A SIGKILLed
// frontend loses nothing that reached the bucket: a new frontend with an
// empty cache, and the CLI without any server, show it all.
func TestS3SharedFleet(t *testing.T) {
	loc := cephStore(t)
	ok(t, loc, "init")
	commit := tinyImage(t, loc, "tiny")
	ok(t, loc, "node", "add", "n2", "--mac", "52:54:00:5f:00:02", "--image", "tiny")
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("adm1n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	caches := map[string]string{}
	start := func(name string) (string, func()) {
		caches[name] = t.TempDir()
		t.Setenv("SIM_S3_CACHE", caches[name])
		url, p := startServerProcess(t, loc, "--token-file", tokens)
		return url, func() { p.Process.Kill(); p.Wait() }
	}
	urlA, killA := start("A")
	urlB, _ := start("B")

	call := func(method, url, body string, want int) string {
		t.Helper()
		code, b, _ := httpCall(t, method, url, "adm1n", body)
		if code != want {
			t.Fatalf("%s %s: %d %s; want %d", method, url, code, b, want)
		}
		return b
	}
	report := func(url, node, state string, extra string) {
		t.Helper()
		call("POST", url+"/v1/agent/report?node="+node, fmt.Sprintf(`{"node":%q,"state":%q,"current":%q%s}`, node, state, commit, extra), 204)
	}
	type row struct {
		Name      string          `json:"name"`
		State     string          `json:"state"`
		Drift     int             `json:"drift"`
		LastError string          `json:"last_error"`
		Status    *install.Status `json:"status"`
	}
	// nodes is `sim nodes --json` through the frontend (or, for a cache
	// no server holds, the CLI alone) with the given cache.
	nodes := func(cache string) map[string]row {
		t.Helper()
		t.Setenv("SIM_S3_CACHE", cache)
		var out struct{ Nodes []row }
		if err := json.Unmarshal([]byte(ok(t, loc, "nodes", "--json")), &out); err != nil {
			t.Fatal(err)
		}
		m := map[string]row{}
		for _, r := range out.Nodes {
			m[r.Name] = r
		}
		return m
	}
	// eventually waits for cond on the frontend with the given cache: the
	// others' reports arrive within about fleet.SyncEvery (5 s) plus one
	// upload tick.
	eventually := func(what, cache string, cond func(map[string]row) bool) time.Duration {
		t.Helper()
		t0 := time.Now()
		var m map[string]row
		for time.Since(t0) < 30*time.Second {
			if m = nodes(cache); cond(m) {
				return time.Since(t0)
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("%s: not within 30 s; last: %+v", what, m)
		return 0
	}

	// A report to A shows in B's list.
	report(urlA, "n1", "idle", `,"drift":{"time":"2026-12-03T06:00:00Z","count":3}`)
	d := eventually("A's report of n1 on B", caches["B"], func(m map[string]row) bool { return m["n1"].State == "idle" && m["n1"].Drift == 3 })
	t.Logf("A's report on B after %v", d.Round(time.Millisecond))

	// Conflicting reports: the later, to B, wins on both frontends.
	report(urlA, "n1", "partial", `,"last_error":"from A"`)
	time.Sleep(10 * time.Millisecond)
	report(urlB, "n1", "failed", `,"last_error":"from B"`)
	for _, f := range []string{"A", "B"} {
		eventually("the newer report of n1 on "+f, caches[f], func(m map[string]row) bool {
			return m["n1"].State == "failed" && m["n1"].LastError == "from B"
		})
	}

	// An agent moving from A to B: B carries on from A's state.
	report(urlA, "n3", "idle", `,"drift":{"time":"2026-12-03T06:00:00Z","count":5}`)
	eventually("n3 on B", caches["B"], func(m map[string]row) bool { return m["n3"].Drift == 5 })

	// Installs: B knows n2 is not installed, and netboots it to install.
	ipxe := func(url string) string {
		t.Helper()
		return call("GET", url+"/v1/install/ipxe?mac=52:54:00:5f:00:02", "", 200)
	}
	const disk, inst = "boots its own disk", "install this node from"
	if s := ipxe(urlB); !strings.Contains(s, inst) {
		t.Fatalf("B's script for n2 before any install:\n%s", s)
	}
	status := func(url, state string) {
		t.Helper()
		call("POST", url+"/v1/install/status", fmt.Sprintf(`{"node":"n2","commit":%q,"step":"finish","state":%q}`, commit, state), 204)
	}
	// A frontend deciding a boot reads the bucket's install reports at
	// most a second old (one LIST a second however many nodes boot).
	const stale = 1100 * time.Millisecond
	status(urlA, "running")
	status(urlA, "done")
	// Uploaded before A answered: B's next script boots the disk.
	time.Sleep(stale)
	if s := ipxe(urlB); !strings.Contains(s, disk) {
		t.Fatalf("B's script for n2 after its install through A:\n%s", s)
	}
	var st map[string]install.Status
	if err := json.Unmarshal([]byte(call("GET", urlB+"/v1/install/status", "", 200)), &st); err != nil || st["n2"].State != install.Done {
		t.Fatalf("B's install statuses: %v %v; want n2 done", st, err)
	}
	if r := nodes(caches["B"])["n2"]; r.Status == nil || r.Status.State != install.Done {
		t.Fatalf("n2 on B's sim nodes: %+v; want its install done", r)
	}
	t.Setenv("SIM_S3_CACHE", caches["B"])
	ok(t, loc, "node", "reinstall", "n2")
	for f, url := range map[string]string{"A": urlA, "B": urlB} {
		if s := ipxe(url); !strings.Contains(s, inst) {
			t.Fatalf("%s's script for n2 after sim node reinstall:\n%s", f, s)
		}
	}
	time.Sleep(10 * time.Millisecond)
	status(urlB, "done")
	time.Sleep(stale)
	if s := ipxe(urlA); !strings.Contains(s, disk) {
		t.Fatalf("A's script for n2 after its reinstall through B:\n%s", s)
	}

	// A dies. n3's agent goes on with B, which keeps n3's drift from A.
	killA()
	report(urlB, "n3", "updating", "")
	if r := nodes(caches["B"])["n3"]; r.State != "updating" || r.Drift != 5 {
		t.Errorf("n3 on B after moving from A: %+v; want updating, drift 5 (A's)", r)
	}
	// Nothing that reached the bucket is lost: a new frontend with an
	// empty cache, and the CLI alone, show every node as the bucket has
	// it (n3 as B uploads it within a tick of its state change).
	start("C")
	for _, cache := range []string{caches["C"], t.TempDir()} {
		eventually("the fleet from the bucket", cache, func(m map[string]row) bool {
			return m["n1"].State == "failed" && m["n1"].LastError == "from B" && m["n3"].State == "updating" && m["n3"].Drift == 5 &&
				m["n2"].Status != nil && m["n2"].Status.State == install.Done
		})
	}
}
