package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// server is a real sync.Server over a real store with the fleet, the
// install protocol and the metrics mounted, behind a read token.
type server struct {
	url string
	fl  *fleet.Service
	id  chunk.ID // the image "img"
}

func newServer(t *testing.T) *server {
	t.Helper()
	st := storetest.New(t)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/motd"), []byte("hello\n"), 0o644)
	// Incompressible, so the fetch stream weighs what the file does.
	big := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(big)
	os.WriteFile(filepath.Join(src, "big"), big, 0o644)
	id, _, err := client.Commit(t.Context(), st, src, client.CommitOptions{Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	fl := fleet.New(st, nil)
	t.Cleanup(fl.Close)
	srv := &simsync.Server{Store: st, WriteTokens: []string{"w"}, ReadTokens: []string{"r"}}
	isvc := install.NewService(st, "", nil)
	isvc.OnStatus = fl.InstallStatus
	isvc.Mount(srv)
	fl.Mount(srv)
	(&Metrics{Fleet: fl}).Mount(t.Context(), srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return &server{hs.URL, fl, id}
}

func (s *server) post(t *testing.T, path string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	req, _ := http.NewRequest("POST", s.url+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer w")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s: %s", path, resp.Status)
	}
}

func scrape(t *testing.T, url string) *Scrape {
	t.Helper()
	s, err := Get(t.Context(), url, "r")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func value(t *testing.T, s *Scrape, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.Value(name, labels...)
	if !ok {
		t.Fatalf("no %s%v in the scrape", name, labels)
	}
	return v
}

// waitValue scrapes until metric name (with labels) reaches want: the
// durations come from the hub's events, which a goroutine follows.
func waitValue(t *testing.T, url string, want float64, name string, labels ...string) *Scrape {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := scrape(t, url)
		if v, _ := s.Value(name, labels...); v >= want {
			return s
		}
		if time.Now().After(deadline) {
			v, _ := s.Value(name, labels...)
			t.Fatalf("%s%v = %v after 10 s; want %v", name, labels, v, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetrics: GET /metrics is a read (the read token when reads are
// closed); a real fetch over HTTP moves the HTTP transport's bytes and
// its route's counters by at least what the client received; an install
// reported over the install protocol and an update reported over the
// agent protocol are timed and move the node gauges; promtool accepts
// the text.
func TestMetrics(t *testing.T) {
	s := newServer(t)
	if resp, err := http.Get(s.url + "/metrics"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /metrics without the read token: %v %v; want 401", resp.Status, err)
	}
	before := scrape(t, s.url)
	if v := value(t, before, "sim_store_blobs"); v < 3 {
		t.Errorf("sim_store_blobs = %v; want the commit's blobs (≥ 3)", v)
	}
	if v := value(t, before, "sim_store_images"); v != 1 {
		t.Errorf("sim_store_images = %v; want 1", v)
	}

	// A node's real fetch of the image over HTTP.
	r, err := simsync.NewRemote(s.url, "r")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := simsync.FetchCommit(t.Context(), storetest.New(t), r, nil, s.id, true)
	if err != nil {
		t.Fatal(err)
	}
	if ps.WireBytes < 1<<20 {
		t.Fatalf("fetch received %d bytes; want the image's", ps.WireBytes)
	}
	after := scrape(t, s.url)
	delta := func(name string, labels ...string) float64 {
		b, _ := before.Value(name, labels...)
		return value(t, after, name, labels...) - b
	}
	if d := delta("sim_transport_sent_bytes_total", "transport", "http"); d < float64(ps.WireBytes) {
		t.Errorf("sim_transport_sent_bytes_total{transport=http} moved by %v; want at least the %d bytes received", d, ps.WireBytes)
	}
	if d := delta("sim_http_response_bytes_total", "route", "GET /v1/fetch"); d < float64(ps.WireBytes) {
		t.Errorf(`sim_http_response_bytes_total{route="GET /v1/fetch"} moved by %v; want at least %d`, d, ps.WireBytes)
	}
	if d := delta("sim_http_requests_total", "route", "GET /v1/fetch", "code", "200"); d != 1 {
		t.Errorf("GET /v1/fetch requests moved by %v; want 1", d)
	}
	if d := delta("sim_http_request_duration_seconds", "route", "GET /v1/fetch"); d != 1 {
		t.Errorf("GET /v1/fetch durations observed %v; want 1", d)
	}
	if d := delta("sim_server_fetches_total"); d != 1 {
		t.Errorf("sim_server_fetches_total moved by %v; want 1", d)
	}
	// Routes are patterns, never paths: one series for every blob id.
	for _, m := range after.Families["sim_http_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "route" && strings.Contains(l.GetValue(), "blake3-") {
				t.Errorf("a route label holds a path: %q", l.GetValue())
			}
		}
	}

	// An install, as the installer reports it; then an update, as an
	// agent reports it.
	s.post(t, "/v1/install/status", install.Status{Node: "n1", Step: "fetch", State: install.Running, Bytes: 100})
	s.post(t, "/v1/install/status", install.Status{Node: "n1", Step: "done", State: install.Done, Bytes: ps.WireBytes, Commit: s.id.String(), Image: "img"})
	m := waitValue(t, s.url, 1, "sim_install_duration_seconds", "outcome", "done")
	if v := value(t, m, "sim_nodes", "state", "idle"); v != 1 {
		t.Errorf(`sim_nodes{state="idle"} = %v after the install; want 1`, v)
	}
	if v := value(t, m, "sim_node_info", "node", "n1", "current", s.id.String(), "image", "img"); v != 1 {
		t.Errorf("sim_node_info of n1 = %v; want 1 with its commit", v)
	}
	if v := value(t, m, "sim_node_received_bytes", "node", "n1"); v != float64(ps.WireBytes) {
		t.Errorf("sim_node_received_bytes{node=n1} = %v; want the %d reported", v, ps.WireBytes)
	}
	if v := value(t, m, "sim_node_last_seen_age_seconds", "node", "n1"); v < 0 || v > 60 {
		t.Errorf("sim_node_last_seen_age_seconds{node=n1} = %v; want a few seconds at most", v)
	}
	s.post(t, "/v1/agent/report", fleet.Report{Node: "n1", State: fleet.Updating, Phase: "staging", Bytes: 10, Current: s.id.String()})
	if v := value(t, scrape(t, s.url), "sim_nodes", "state", "updating"); v != 1 {
		t.Errorf(`sim_nodes{state="updating"} = %v while n1 updates; want 1`, v)
	}
	s.post(t, "/v1/agent/report", fleet.Report{Node: "n1", State: fleet.Idle, Current: s.id.String()})
	m = waitValue(t, s.url, 1, "sim_update_duration_seconds", "outcome", "done")
	if v := value(t, m, "sim_nodes", "state", "updating"); v != 0 {
		t.Errorf(`sim_nodes{state="updating"} = %v after the update; want 0`, v)
	}
	if v := value(t, m, "sim_http_requests_total", "route", "POST /v1/agent/report", "code", "204"); v != 2 {
		t.Errorf("agent reports counted %v; want 2", v)
	}
	if v := value(t, m, "sim_events_published_total"); v < 4 {
		t.Errorf("sim_events_published_total = %v; want every change (≥ 4)", v)
	}

	if err := Promtool(t.Context(), m.Text); errors.Is(err, ErrNoPromtool) {
		t.Skip(err)
	} else if err != nil {
		t.Error(err)
	}
}

// TestRunning: a sum over items that come and go never goes down.
func TestRunning(t *testing.T) {
	var r running
	for i, c := range []struct {
		cur  map[string]float64
		want float64
	}{
		{map[string]float64{"a": 5}, 5},
		{map[string]float64{"a": 7, "b": 1}, 8},
		{map[string]float64{"b": 2}, 9},  // a gone: keeps its 7
		{map[string]float64{"b": 1}, 10}, // b restarted: a new b
		{nil, 10},
	} {
		if got := r.sum(c.cur); got != c.want {
			t.Errorf("step %d: sum = %v; want %v", i, got, c.want)
		}
	}
}
