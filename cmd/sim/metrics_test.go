package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/metrics"
)

// TestMetricsServe scrapes a real `sim serve` before and after a node
// checks the corpus out over HTTP, after a real install onto a loop
// device and after a checkout over BitTorrent: the transports' byte
// counters moved by at least the bytes each client reported receiving, the node gauges and the install
// duration followed; a rollout makes its series appear; promtool passes
// the text; every metric the Grafana dashboard queries is in the scrape.
func TestMetricsServe(t *testing.T) {
	if testing.Short() {
		t.Skip("corpus install: skipped in -short mode")
	}
	v1 := filepath.Join(corpus(t), "v1")
	dir := t.TempDir()
	s := filepath.Join(dir, "store")
	ok(t, s, "init")
	commit := lastLine(ok(t, s, "commit", v1, "--image", "deb"))
	writeFiles(t, dir, map[string]string{"layout": "sim-layout 1\nbootloader none\npart root rest ext4 / label=root\n"})
	ok(t, s, "layout", "set", "deb", filepath.Join(dir, "layout"))
	ok(t, s, "node", "add", "n1", "--mac", "52:54:00:5e:02:01", "--image", "deb")
	n1tok := filepath.Join(dir, "n1.token")
	os.WriteFile(n1tok, []byte(lastLine(ok(t, s, "token", "add", "n1", "--role", "node"))+"\n"), 0o600)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("adm1n\n"), 0o600)
	url := startServer(t, s, "--token-file", tokens, "--bt-listen", "127.0.0.1:0")

	scrape := func() *metrics.Scrape {
		t.Helper()
		m, err := metrics.Get(t.Context(), url, "")
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	val := func(m *metrics.Scrape, name string, labels ...string) float64 {
		t.Helper()
		v, found := m.Value(name, labels...)
		if !found {
			t.Fatalf("no %s%v in the scrape", name, labels)
		}
		return v
	}
	httpSent := func(m *metrics.Scrape) float64 {
		return val(m, "sim_transport_sent_bytes_total", "transport", "http")
	}
	before := scrape()
	if v := val(before, "sim_nodes", "state", "unknown"); v != 1 {
		t.Errorf(`sim_nodes{state="unknown"} = %v before any report; want 1 (n1, registered)`, v)
	}
	if v := val(before, "sim_store_blobs"); v < 5000 {
		t.Errorf("sim_store_blobs = %v; want the corpus' blobs", v)
	}

	// A pull of the image: a checkout over HTTP into a directory.
	var co struct {
		Transfer struct {
			WireBytes int64 `json:"wire_bytes"`
		}
	}
	decodeJSON(t, ok(t, filepath.Join(dir, "node-store"), "checkout", "--from", url, "deb", filepath.Join(dir, "root"), "--json"), &co)
	pulled := scrape()
	if co.Transfer.WireBytes < 10<<20 {
		t.Fatalf("checkout received %d bytes; want the corpus image's", co.Transfer.WireBytes)
	}
	t.Logf("checkout: client received %d bytes; sim_transport_sent_bytes_total{transport=http} +%.0f", co.Transfer.WireBytes, httpSent(pulled)-httpSent(before))
	if d := httpSent(pulled) - httpSent(before); d < float64(co.Transfer.WireBytes) {
		t.Errorf("checkout: sim_transport_sent_bytes_total{transport=http} moved by %.0f; want at least the %d bytes received", d, co.Transfer.WireBytes)
	}
	if d := val(pulled, "sim_http_response_bytes_total", "route", "GET /v1/fetch") - valOr(before, "sim_http_response_bytes_total", "route", "GET /v1/fetch"); d < float64(co.Transfer.WireBytes) {
		t.Errorf(`checkout: sim_http_response_bytes_total{route="GET /v1/fetch"} moved by %.0f; want at least %d`, d, co.Transfer.WireBytes)
	}

	last := pulled
	if dev := loopDevice(t, dir, "1200M"); dev != "" {
		r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n1", "--disk", dev,
			"--target", filepath.Join(dir, "target"), "--json", "--token-file", n1tok)
		if r.code != 0 {
			t.Fatalf("install: %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		var res install.Result
		decodeJSON(t, r.stdout, &res)
		// The install's last status and its duration come from the
		// fleet's events: wait for them.
		var m *metrics.Scrape
		waitFor(t, "the install's duration in /metrics", 10*time.Second, func() (bool, string) {
			m = scrape()
			v, _ := m.Value("sim_install_duration_seconds", "outcome", "done")
			return v == 1, fmt.Sprintf("sim_install_duration_seconds_count{outcome=done} = %v", v)
		})
		t.Logf("install: node reported %d bytes; sim_transport_sent_bytes_total{transport=http} +%.0f", res.Bytes, httpSent(m)-httpSent(pulled))
		if d := httpSent(m) - httpSent(pulled); d < float64(res.Bytes) {
			t.Errorf("install: sim_transport_sent_bytes_total{transport=http} moved by %.0f; want at least the %d bytes the node reported", d, res.Bytes)
		}
		if v := val(m, "sim_node_received_bytes", "node", "n1"); v != float64(res.Bytes) {
			t.Errorf("sim_node_received_bytes{node=n1} = %v; want the %d the installer reported", v, res.Bytes)
		}
		if v := val(m, "sim_nodes", "state", "idle"); v != 1 {
			t.Errorf(`sim_nodes{state="idle"} = %v after the install; want 1`, v)
		}
		if v := val(m, "sim_nodes", "state", "unknown"); v != 0 {
			t.Errorf(`sim_nodes{state="unknown"} = %v after the install; want 0`, v)
		}
		if v := val(m, "sim_node_info", "node", "n1", "current", commit, "assigned", commit); v != 1 {
			t.Errorf("sim_node_info{node=n1} with current = assigned = %s: %v; want 1", commit, v)
		}
		if v := val(m, "sim_http_requests_total", "route", "POST /v1/install/status", "code", "204") +
			valOr(m, "sim_http_requests_total", "route", "POST /v1/install/status", "code", "200"); v < 2 {
			t.Errorf("install status reports counted %v; want every step's", v)
		}
		last = m
	}

	// The same image over BitTorrent: the seeder's figures.
	var btco struct {
		Swarm struct {
			FromPeers   int64 `json:"from_peers"`
			FromWebSeed int64 `json:"from_web_seed"`
		} `json:"bittorrent"`
	}
	beforeBT := scrape()
	decodeJSON(t, ok(t, filepath.Join(dir, "bt-store"), "checkout", "--from", url, "--transport", "bittorrent", "--seed-time", "0",
		"deb", filepath.Join(dir, "bt-root"), "--json"), &btco)
	afterBT := scrape()
	got := btco.Swarm.FromPeers + btco.Swarm.FromWebSeed
	bt := func(m *metrics.Scrape) float64 {
		return val(m, "sim_transport_sent_bytes_total", "transport", "bittorrent")
	}
	t.Logf("bittorrent: node received %d bytes from the swarm; sim_transport_sent_bytes_total{transport=bittorrent} +%.0f", got, bt(afterBT)-bt(beforeBT))
	if got < 10<<20 {
		t.Errorf("bittorrent checkout received %d bytes from the swarm; want the image's", got)
	}
	if d := bt(afterBT) - bt(beforeBT); d < float64(got) {
		t.Errorf("sim_transport_sent_bytes_total{transport=bittorrent} moved by %.0f; want at least the %d bytes the node received from the swarm", d, got)
	}
	if v := val(afterBT, "sim_bittorrent_torrents"); v != 1 {
		t.Errorf("sim_bittorrent_torrents = %v; want 1", v)
	}

	// A rollout n1 never answers (no agent runs): it stays running, so
	// its series are there.
	ok(t, s, "commit", filepath.Join(corpus(t), "v3"), "--image", "deb")
	ok(t, s, "rollout", "start", "deb", "--nodes", "n1")
	waitFor(t, "the rollout in /metrics", 10*time.Second, func() (bool, string) {
		last = scrape()
		v, _ := last.Value("sim_rollouts", "state", "running")
		return v == 1, fmt.Sprintf(`sim_rollouts{state="running"} = %v`, v)
	})
	if v := val(last, "sim_rollout_nodes", "rollout", "r1"); v != 1 {
		t.Errorf(`sim_rollout_nodes{rollout="r1"} sums to %v; want its 1 node`, v)
	}

	if err := metrics.Promtool(t.Context(), last.Text); errors.Is(err, metrics.ErrNoPromtool) {
		t.Log(err, ": the text is not linted")
	} else if err != nil {
		t.Error(err)
	}

	t.Run("dashboard", func(t *testing.T) { checkDashboard(t, last) })
}

// valOr is a scraped value, 0 when there is none.
func valOr(m *metrics.Scrape, name string, labels ...string) float64 {
	v, _ := m.Value(name, labels...)
	return v
}

// onlyWhileLive are series a scrape has only while what they measure
// exists, beyond what TestMetricsServe sets up (client/metrics'
// TestMulticast scrapes this one from a real session with loss).
var onlyWhileLive = map[string]string{
	"sim_multicast_loss_ratio": "a multicast session with receivers",
}

// checkDashboard parses dist/grafana/sim-dashboard.json and checks that
// every metric its queries name is in the scrape m.
func checkDashboard(t *testing.T, m *metrics.Scrape) {
	b, err := os.ReadFile("../../dist/grafana/sim-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("sim-dashboard.json: %v", err)
	}
	var exprs []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	name := regexp.MustCompile(`\b(?:sim|process|go)_[a-z0-9_]+`)
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			seen[n] = true
		}
	}
	if len(seen) < 20 {
		t.Errorf("the dashboard queries %d metrics; want the fleet, transports, rollouts, multicast and store (≥ 20)", len(seen))
	}
	all := metrics.Names()
	for n := range seen {
		fam := n
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if f, ok := strings.CutSuffix(n, suf); ok && m.Families[f] != nil {
				fam = f
			}
		}
		if m.Families[fam] != nil {
			continue
		}
		if why, ok := onlyWhileLive[fam]; ok && slices.Contains(all, fam) {
			t.Logf("%s: not in this scrape (only with %s); it is one sim exports", fam, why)
			continue
		}
		t.Errorf("the dashboard queries %s, which the scrape lacks", n)
	}
}

// loopDevice attaches a sparse file of size as a loop device (detached
// at the end), or returns "" (and says why) where the test cannot: not
// root, no losetup or mkfs.ext4, no loop devices.
func loopDevice(t *testing.T, dir, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Log("not root: no loop-device install")
		return ""
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Logf("no %s: no loop-device install", tool)
			return ""
		}
	}
	f := filepath.Join(dir, fmt.Sprintf("disk%d.raw", time.Now().UnixNano()))
	if out, err := exec.Command("truncate", "-s", size, f).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out, err := exec.Command("losetup", "-f", "--show", "-P", f).Output()
	if err != nil {
		t.Logf("losetup: %v: no loop-device install", err)
		return ""
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}
