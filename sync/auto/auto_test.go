package auto_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/auto"
	"github.com/systemimager/sim/sync/bt"
	_ "github.com/systemimager/sim/sync/transports"
)

func TestChoose(t *testing.T) {
	all := []string{auto.BitTorrent, auto.Multicast}
	const gbit, mbit100, mbit50 = 125e6, 12.5e6, 6.25e6
	for _, c := range []struct {
		name  string
		in    auto.Inputs
		want  string
		check func(auto.Choice) string
	}{
		{"a small delta to many nodes goes over HTTP", auto.Inputs{Bytes: 21e3, Nodes: 50, Uplink: gbit, Available: all}, auto.HTTP, nil},
		{"one node never needs a session", auto.Inputs{Bytes: 65e6, Nodes: 1, Uplink: gbit, Available: all}, auto.HTTP, nil},
		{"two nodes on a fast uplink: the stream is still cheaper", auto.Inputs{Bytes: 65e6, Nodes: 2, Uplink: gbit, Available: all}, auto.HTTP, nil},
		{"16 nodes, an image: multicast", auto.Inputs{Bytes: 65e6, Nodes: 16, Uplink: gbit, Available: all}, auto.Multicast, nil},
		{"16 nodes without multicast: a swarm", auto.Inputs{Bytes: 65e6, Nodes: 16, Uplink: gbit, Available: []string{auto.BitTorrent}}, auto.BitTorrent, nil},
		{"only HTTP served", auto.Inputs{Bytes: 65e6, Nodes: 50, Uplink: gbit}, auto.HTTP, nil},
		{"two nodes behind 50 Mbit: one copy, not two (a swarm starts slower but repairs nothing)", auto.Inputs{Bytes: 65e6, Nodes: 2, Uplink: mbit50, Available: all}, auto.BitTorrent, nil},
		{"lossless multicast seen: two nodes behind 50 Mbit", auto.Inputs{Bytes: 65e6, Nodes: 2, Uplink: mbit50, Available: all, McastOverhead: 1.01}, auto.Multicast, nil},
		{"lossy multicast loses to the swarm", auto.Inputs{Bytes: 65e6, Nodes: 16, Uplink: mbit50, Available: all, McastOverhead: 3}, auto.BitTorrent, nil},
		// The lab of bench/fleetbench.sh: server 1 Gbit, nodes 100 Mbit.
		// Every node's own link bounds its transfer, so HTTP costs what one
		// node's link does until the server's uplink is the narrower.
		{"4 nodes on 100 Mbit behind 1 Gbit: each node's link is the limit, HTTP", auto.Inputs{Bytes: 65e6, Nodes: 4, Uplink: gbit, NodeUplink: mbit100, Available: all}, auto.HTTP, nil},
		{"8 nodes on 100 Mbit behind 1 Gbit: still HTTP", auto.Inputs{Bytes: 65e6, Nodes: 8, Uplink: gbit, NodeUplink: mbit100, Available: all}, auto.HTTP, nil},
		{"16 nodes on 100 Mbit behind 1 Gbit: the uplink is the limit, multicast", auto.Inputs{Bytes: 65e6, Nodes: 16, Uplink: gbit, NodeUplink: mbit100, Available: all}, auto.Multicast, nil},
		{"50 nodes on 100 Mbit behind 1 Gbit, no multicast: a swarm", auto.Inputs{Bytes: 65e6, Nodes: 50, Uplink: gbit, NodeUplink: mbit100, Available: []string{auto.BitTorrent}}, auto.BitTorrent, nil},
		{"slow nodes: the reason says so, and the session is paced to them", auto.Inputs{Bytes: 65e6, Nodes: 50, Uplink: gbit, NodeUplink: mbit100, Available: all}, auto.Multicast, func(c auto.Choice) string {
			for _, s := range []string{"50 nodes", "1 Gbit/s, nodes at 100 Mbit/s", "multicast 7.0 s", "http 26.0 s", "bittorrent 7.2 s"} {
				if !strings.Contains(c.Reason, s) {
					return fmt.Sprintf("reason %q lacks %q", c.Reason, s)
				}
			}
			return ""
		}},
		{"the reason names the figures", auto.Inputs{Bytes: 65e6, Nodes: 16, Uplink: gbit, Available: all}, auto.Multicast, func(c auto.Choice) string {
			for _, s := range []string{"16 nodes", "65.0 MB", "1 Gbit/s", "multicast 2.0 s (cpu-bound)", "bittorrent 3.6 s (cpu-bound)", "http 8.3 s"} {
				if !strings.Contains(c.Reason, s) {
					return fmt.Sprintf("reason %q lacks %q", c.Reason, s)
				}
			}
			if len(c.Predicted) != 3 {
				return fmt.Sprintf("predicted %v: want three transports", c.Predicted)
			}
			return ""
		}},
		// The node's CPU: 65 MB cost a node about 1.04 CPU-s over HTTP or
		// multicast and 1.6 in a swarm (the defaults, 16, 16 and 25 ns/B).
		// Each node is bound by its own CPU time; nodes sharing C cores
		// by all of theirs over C, and with the server on them too by
		// what its sending costs as well (7.5 ns per byte sent).
		{"the lab: 50 nodes on 100 Mbit behind 1 Gbit, sharing 2 cores with the server: multicast", auto.Inputs{Bytes: 65e6, Nodes: 50, Uplink: gbit, NodeUplink: mbit100, Available: all, NodeCores: 2, SharedHost: true}, auto.Multicast,
			predicted(map[string]float64{auto.HTTP: 38.1875, auto.Multicast: 27.2803, auto.BitTorrent: 42.9175},
				"sharing 2 cores with the server", "multicast 27.3 s (cpu-bound)", "http 38.2 s (cpu-bound)")},
		{"50 nodes sharing 2 cores behind a 100 Mbit uplink: HTTP bound by the uplink, multicast", auto.Inputs{Bytes: 65e6, Nodes: 50, Uplink: mbit100, Available: all, NodeCores: 2}, auto.Multicast,
			predicted(map[string]float64{auto.HTTP: 260, auto.Multicast: 27, auto.BitTorrent: 42.625}, "multicast 27.0 s (cpu-bound)", "http 260.0 s")},
		{"4 nodes sharing 1 core with the server, all on 10 Gbit: CPU decides, multicast", auto.Inputs{Bytes: 65e6, Nodes: 4, Uplink: 1.25e9, Available: all, NodeCores: 1, SharedHost: true}, auto.Multicast,
			predicted(map[string]float64{auto.HTTP: 6.11, auto.Multicast: 5.7206, auto.BitTorrent: 9.085},
				"cpu-bound: the nodes' CPU decided (the network alone: http 0.2 s)")},
		{"the same without the server on their core: HTTP sends for free, http", auto.Inputs{Bytes: 65e6, Nodes: 4, Uplink: 1.25e9, Available: all, NodeCores: 1}, auto.HTTP,
			predicted(map[string]float64{auto.HTTP: 4.16, auto.Multicast: 5.16, auto.BitTorrent: 8.5})},
		{"16 nodes with their own CPUs: each node's CPU floor, multicast", auto.Inputs{Bytes: 65e6, Nodes: 16, Uplink: gbit, Available: all}, auto.Multicast,
			predicted(map[string]float64{auto.HTTP: 8.32, auto.Multicast: 2.04, auto.BitTorrent: 3.625}, "multicast 2.0 s (cpu-bound)")},
		{"16 nodes sharing 16 cores: as their own", auto.Inputs{Bytes: 65e6, Nodes: 16, Uplink: gbit, Available: all, NodeCores: 16}, auto.Multicast,
			predicted(map[string]float64{auto.HTTP: 8.32, auto.Multicast: 2.04, auto.BitTorrent: 3.625})},
		{"1 node: its CPU floor, http", auto.Inputs{Bytes: 65e6, Nodes: 1, Uplink: gbit, Available: all, NodeCores: 2}, auto.HTTP,
			predicted(map[string]float64{auto.HTTP: 1.04, auto.Multicast: 2.04, auto.BitTorrent: 3.625}, "http 1.0 s (cpu-bound)")},
		{"learned: receivers dearer than the default in the lab, http", auto.Inputs{Bytes: 65e6, Nodes: 50, Uplink: gbit, NodeUplink: mbit100, Available: all, NodeCores: 2, SharedHost: true,
			CPUPerByte: map[string]float64{auto.Multicast: 40e-9}}, auto.HTTP,
			predicted(map[string]float64{auto.HTTP: 38.1875, auto.Multicast: 66.2803, auto.BitTorrent: 42.9175},
				"http 38.2 s (cpu-bound),", "cpu-bound: the nodes' CPU decided (the network alone: multicast 7.0 s)")},
		{"a small delta: CPU does not matter", auto.Inputs{Bytes: 21e3, Nodes: 50, Uplink: gbit, Available: all, NodeCores: 2}, auto.HTTP, func(c auto.Choice) string {
			if strings.Contains(c.Reason, "decided") {
				return fmt.Sprintf("reason %q: the network alone chose http too", c.Reason)
			}
			return ""
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := auto.Choose(c.in)
			if got.Transport != c.want {
				t.Errorf("chose %s, want %s (%s)", got.Transport, c.want, got.Reason)
			}
			if c.check != nil {
				if msg := c.check(got); msg != "" {
					t.Error(msg)
				}
			}
		})
	}
}

// predicted checks the predicted seconds (to 0.01 s) and that the reason
// says each of must.
func predicted(want map[string]float64, must ...string) func(auto.Choice) string {
	return func(c auto.Choice) string {
		if len(c.Predicted) != len(want) {
			return fmt.Sprintf("predicted %v, want %v", c.Predicted, want)
		}
		for t, v := range want {
			if got, ok := c.Predicted[t]; !ok || math.Abs(got-v) > 0.01 {
				return fmt.Sprintf("predicted %s %.3f s, want %.3f (%v)", t, got, v, c.Predicted)
			}
		}
		for _, s := range must {
			if !strings.Contains(c.Reason, s) {
				return fmt.Sprintf("reason %q lacks %q", c.Reason, s)
			}
		}
		return ""
	}
}

func TestCPUFloor(t *testing.T) {
	for _, c := range []struct {
		c, f  float64
		n     int
		cores float64
		want  float64
	}{
		{22e-9, 65e6, 1, 0, 1.43},
		{22e-9, 65e6, 50, 0, 1.43},    // each node its own CPU
		{22e-9, 65e6, 50, 2, 35.75},   // 50 nodes' CPU time over 2 cores
		{46e-9, 65e6, 1, 2, 2.99},     // never less than the node's own
		{46e-9, 65e6, 16, 32, 2.99},   // more cores than nodes
		{46e-9, 65e6, 16, 1.5, 31.89}, // a fractional share
	} {
		if got := auto.CPUFloor(c.c, c.f, c.n, c.cores); math.Abs(got-c.want) > 0.01 {
			t.Errorf("CPUFloor(%g, %g, %d, %g) = %.3f, want %.3f", c.c, c.f, c.n, c.cores, got, c.want)
		}
	}
}

// world is a server with a BitTorrent seeder and the advisor, on a store
// holding v1 (an image of about 11 MB of incompressible files) and v2
// (two files changed).
type world struct {
	st      *store.Store
	srv     *simsync.Server
	url     string
	v1, v2  chunk.ID
	src1    string
	src2    string
	advisor *auto.Advisor
	log     *syncBuffer
}

type syncBuffer struct {
	mu gosync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newWorld(t *testing.T, gather time.Duration) *world {
	w := &world{st: storetest.New(t), src1: filepath.Join(t.TempDir(), "v1"), src2: filepath.Join(t.TempDir(), "v2"), log: &syncBuffer{}}
	files := map[string]int{"etc/motd": 300, "usr/bin/big": 9 << 20}
	for i := 0; i < 20; i++ {
		files[fmt.Sprintf("usr/lib/lib%d.so", i)] = 80000 + i*5000
	}
	snapshottest.RandomFiles(t, w.src1, 1, files)
	var err error
	if w.v1, _, err = client.Commit(context.Background(), w.st, w.src1, client.CommitOptions{Image: "img"}); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(w.src2, os.DirFS(w.src1)); err != nil {
		t.Fatal(err)
	}
	snapshottest.RandomFiles(t, w.src2, 2, map[string]int{"etc/motd": 310, "usr/lib/lib3.so": 96000})
	if w.v2, _, err = client.Commit(context.Background(), w.st, w.src2, client.CommitOptions{Image: "img"}); err != nil {
		t.Fatal(err)
	}
	w.srv = &simsync.Server{Store: w.st, Planner: simsync.NewPlanner(w.st)}
	seeder := &bt.Seeder{Store: w.st, Planner: w.srv.Planner, Listen: "127.0.0.1:0"}
	if err := seeder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(seeder.Close)
	seeder.Mount(w.srv)
	// 10 Mbit/s: at that uplink a swarm of three beats three streams of
	// an 11 MB image (3 × 8.8 s against 8.8 s + 2 s).
	w.advisor = &auto.Advisor{Server: w.srv, Uplink: 1.25e6, Gather: gather, GatherBytes: auto.DefaultGatherBytes, Log: w.log}
	w.advisor.Mount(w.srv)
	hs := httptest.NewServer(w.srv)
	t.Cleanup(hs.Close)
	w.url = hs.URL
	return w
}

func (w *world) ask(t *testing.T, query string) (auto.Advice, int, string) {
	t.Helper()
	var a auto.Advice
	code, b := w.post(t, auto.AdvicePath+"?"+query, "", "", &a)
	return a, code, b
}

// TestAdvisor: nodes asking for one commit together get one answer made
// for all of them; a late asker joins the swarm chosen; a small delta is
// answered at once; bad requests are named.
func TestAdvisor(t *testing.T) {
	// A gathering of a minute: only the third node's arrival (expect=3)
	// can end it within the test's time.
	w := newWorld(t, time.Minute)
	var wg gosync.WaitGroup
	got := make([]auto.Advice, 3)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, code, body := w.ask(t, fmt.Sprintf("want=%s&node=n%d&expect=3", w.v1, i+1))
			if code != http.StatusOK {
				t.Errorf("n%d: %d %s", i+1, code, body)
			}
			got[i] = a
		}()
	}
	wg.Wait()
	for i, a := range got {
		if a.Transport != auto.BitTorrent || a.Nodes != 3 || a.Bytes < auto.DefaultGatherBytes {
			t.Errorf("n%d: %+v, want bittorrent for 3 nodes", i+1, a)
		}
	}
	late, _, _ := w.ask(t, "want="+w.v1.String()+"&node=n4")
	if late.Transport != auto.BitTorrent {
		t.Errorf("late asker: %+v, want the swarm chosen", late)
	}
	small, _, _ := w.ask(t, "want="+w.v2.String()+"&have="+w.v1.String()+"&node=n1")
	if small.Transport != auto.HTTP || small.Nodes != 1 || small.Bytes >= auto.DefaultGatherBytes {
		t.Errorf("delta v1→v2: %+v, want http at once", small)
	}
	if !strings.Contains(w.log.String(), "bittorrent for "+w.v1.Short()+" to 3 nodes") {
		t.Errorf("server log lacks the choice:\n%s", w.log.String())
	}
	for _, c := range []struct {
		q    string
		code int
		msg  string
	}{
		{"want=xyz", 400, "want"},
		{"want=" + w.v1.String() + "&have=nope", 400, "have"},
		{"want=" + w.v1.String() + "&expect=0", 400, "expect"},
		{"want=" + chunk.Sum([]byte("no such commit")).String(), 404, "plan"},
	} {
		if _, code, body := w.ask(t, c.q); code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("%s: %d %q, want %d naming %s", c.q, code, body, c.code, c.msg)
		}
	}
}

// TestAdvisorAlone: one node asking for an image with nobody else is
// told HTTP once the gathering is over.
func TestAdvisorAlone(t *testing.T) {
	w := newWorld(t, 50*time.Millisecond)
	a, code, body := w.ask(t, "want="+w.v1.String()+"&node=n1")
	if code != 200 || a.Transport != auto.HTTP || a.Nodes != 1 {
		t.Errorf("%d %s: want http for one node", code, body)
	}
}

// TestAutoFetch: three nodes fetch v1 with --transport auto at once; the
// server chooses the swarm for them, the nodes use it, each tree is the
// image's, and each node reports what the fetch cost its CPU.
func TestAutoFetch(t *testing.T) {
	w := newWorld(t, time.Minute)
	var wg gosync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := storetest.New(t)
			var tf simsync.TransportFlags
			fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
			tf.Add(fs)
			if err := fs.Parse([]string{"--transport", "auto", "--auto-nodes", "3", "--bt-listen", "127.0.0.1:0"}); err != nil {
				t.Error(err)
				return
			}
			r, err := simsync.NewRemote(w.url, "")
			if err != nil {
				t.Error(err)
				return
			}
			var log syncBuffer
			tr, err := tf.Open(context.Background(), simsync.TransportEnv{Remote: r, Store: st, Log: &log, Name: fmt.Sprintf("n%d", i+1)})
			if err != nil {
				t.Error(err)
				return
			}
			ps, err := simsync.FetchCommit(context.Background(), st, r, tr, w.v1, true)
			if ferr := tr.Finish(context.Background()); err == nil {
				err = ferr
			}
			if err != nil {
				t.Errorf("n%d: %v", i+1, err)
				return
			}
			cr, ok := ps.Report.(simsync.ChosenReport)
			if ps.Transport != auto.BitTorrent || !ok || cr.Choice.(auto.Report).Nodes != 3 || ps.Delivered == 0 {
				t.Errorf("n%d: transport %s, report %+v, %d blobs delivered: want the swarm for 3", i+1, ps.Transport, ps.Report, ps.Delivered)
			}
			if !strings.Contains(log.String(), "transport auto: bittorrent (3 nodes asking for") {
				t.Errorf("n%d: output lacks the choice: %q", i+1, log.String())
			}
			dir := filepath.Join(t.TempDir(), "root")
			if _, err := client.Checkout(context.Background(), st, w.v1, dir, client.CheckoutOptions{NoSync: true}); err != nil {
				t.Error(err)
				return
			}
			snapshottest.Equal(t, w.src1, dir, snapshottest.IgnoreRootTimes())
		}()
	}
	wg.Wait()
	// Each node told the server what the swarm cost it (Finish waited
	// for the report).
	if c, n := w.advisor.CPU(auto.BitTorrent); n != 3 || c <= 0 || c == auto.DefaultCPUPerByte(auto.BitTorrent) {
		t.Errorf("bittorrent estimate after the fetches: %g s/B from %d reports, want a measured one from 3", c, n)
	}
	if !strings.Contains(w.log.String(), "bittorrent cost n1 ") {
		t.Errorf("server log lacks n1's report:\n%s", w.log.String())
	}
}

// TestNoAdvisor: a server without the advisor means HTTP, said so.
func TestNoAdvisor(t *testing.T) {
	w := newWorld(t, time.Minute)
	plain := httptest.NewServer(&simsync.Server{Store: w.st})
	t.Cleanup(plain.Close)
	st := storetest.New(t)
	var tf simsync.TransportFlags
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	tf.Add(fs)
	if err := fs.Parse([]string{"--transport", "auto"}); err != nil {
		t.Fatal(err)
	}
	r, _ := simsync.NewRemote(plain.URL, "")
	var log syncBuffer
	tr, err := tf.Open(context.Background(), simsync.TransportEnv{Remote: r, Store: st, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := simsync.FetchCommit(context.Background(), st, r, tr, w.v2, true)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Transport != auto.HTTP || !strings.Contains(log.String(), "no advice from the server (it runs no advisor)") {
		t.Errorf("transport %s, output %q", ps.Transport, log.String())
	}
}

func (w *world) report(t *testing.T, body, token string) (auto.CPUEstimate, int, string) {
	t.Helper()
	var e auto.CPUEstimate
	code, b := w.post(t, auto.ReportPath, body, token, &e)
	return e, code, b
}

// post POSTs body to the server's path with token (none if ""), decodes
// a 200 answer into v, and returns the status and the body.
func (w *world) post(t *testing.T, path, body, token string, v any) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", w.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("POST %s answer %s: %v", path, b, err)
		}
	}
	return resp.StatusCode, string(b)
}

// ask3 has three nodes ask for want together (expect=3) and returns the
// one answer they got.
func (w *world) ask3(t *testing.T, want chunk.ID) auto.Advice {
	t.Helper()
	got := make([]auto.Advice, 3)
	var wg gosync.WaitGroup
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, code, body := w.ask(t, fmt.Sprintf("want=%s&node=n%d&expect=3", want, i+1))
			if code != http.StatusOK {
				t.Errorf("n%d: %d %s", i+1, code, body)
			}
			got[i] = a
		}()
	}
	wg.Wait()
	for i, a := range got[1:] {
		if a.Transport != got[0].Transport || a.Nodes != 3 {
			t.Errorf("n%d got %+v, n1 %+v: want one answer for 3 nodes", i+2, a, got[0])
		}
	}
	return got[0]
}

func near(got, want float64) bool { return math.Abs(got-want) <= 0.01*math.Max(1, math.Abs(want)) }

// TestAdvisorLearns: three nodes sharing one core, behind 10 Mbit/s,
// asking for an 11 MB image: with the default CPU costs a swarm; once
// nodes reported that a swarm costs them 1 CPU-µs per byte, HTTP, and the
// reason says the CPU decided. A small fetch's report is not counted.
func TestAdvisorLearns(t *testing.T) {
	w := newWorld(t, time.Minute)
	w.advisor.NodeCores = 1
	if c, n := w.advisor.CPU(auto.BitTorrent); c != auto.DefaultCPUPerByte(auto.BitTorrent) || n != 0 {
		t.Errorf("bittorrent before reports: %g s/B from %d reports, want the default from 0", c, n)
	}
	a := w.ask3(t, w.v1)
	f := float64(a.Bytes)
	if a.Transport != auto.BitTorrent || !near(a.Predicted[auto.BitTorrent], f/1.25e6+2) || !near(a.Predicted[auto.HTTP], 3*f/1.25e6) {
		t.Errorf("v1 with default CPU costs: %+v, want bittorrent at F/Us + 2 s = %.2f s, http %.2f s", a, f/1.25e6+2, 3*f/1.25e6)
	}
	for _, c := range []struct {
		body    string
		perByte float64
		reports int
		counted bool
	}{
		{`{"transport":"bittorrent","bytes":10000000,"cpu_seconds":10,"node":"n1"}`, 1e-6, 1, true},            // the first replaces the default
		{`{"transport":"bittorrent","bytes":10000000,"cpu_seconds":5,"node":"n2"}`, 0.9e-6, 2, true},           // weighed in by 0.2
		{`{"transport":"bittorrent","bytes":1000,"cpu_seconds":100,"node":"n3"}`, 0.9e-6, 2, false},            // too small to count
		{`{"transport":"http","bytes":500000,"cpu_seconds":100}`, auto.DefaultCPUPerByte(auto.HTTP), 0, false}, // the default, said
		{`{"transport":"multicast","bytes":2000000,"cpu_seconds":0.1,"extra":"ignored"}`, 50e-9, 1, true},      // unknown fields are ignored
	} {
		e, code, body := w.report(t, c.body, "")
		if code != http.StatusOK || !near(e.CPUPerByte*1e9, c.perByte*1e9) || e.Reports != c.reports || e.Counted != c.counted {
			t.Errorf("report %s: %d %s, want %g s/B from %d reports, counted %v", c.body, code, body, c.perByte, c.reports, c.counted)
		}
	}
	if c, n := w.advisor.CPU(auto.BitTorrent); !near(c*1e9, 900) || n != 2 {
		t.Errorf("bittorrent after reports: %g s/B from %d reports, want 0.9e-6 from 2", c, n)
	}
	// v2 without a base: another 11 MB, another group.
	a = w.ask3(t, w.v2)
	f = float64(a.Bytes)
	wantBT := 3*0.9e-6*f/1 + 2
	if a.Transport != auto.HTTP || !near(a.Predicted[auto.BitTorrent], wantBT) || !near(a.Predicted[auto.HTTP], 3*f/1.25e6) ||
		!strings.Contains(a.Reason, "sharing 1 core") || !strings.Contains(a.Reason, "cpu-bound: the nodes' CPU decided (the network alone: bittorrent") {
		t.Errorf("v2 after the reports: %+v, want http, bittorrent at %.2f s, cpu-bound", a, wantBT)
	}
	if !strings.Contains(w.log.String(), "bittorrent cost n1 10.00 CPU-s for 10.0 MB (1000.0 ns/B): estimate 1000.0 ns/B from 1 reports") ||
		!strings.Contains(w.log.String(), "http for "+w.v2.Short()+" to 3 nodes") {
		t.Errorf("server log lacks the reports or the choice:\n%s", w.log.String())
	}
	for _, c := range []struct {
		body string
		code int
		msg  string
	}{
		{`{"transport":"ftp","bytes":10000000,"cpu_seconds":1}`, 400, "transport: \"ftp\""},
		{`{"bytes":10000000,"cpu_seconds":1}`, 400, "transport: missing"},
		{`{"transport":7,"bytes":10000000,"cpu_seconds":1}`, 400, "transport: number, want a string"},
		{`{"transport":"http","cpu_seconds":1}`, 400, "bytes: missing"},
		{`{"transport":"http","bytes":"many","cpu_seconds":1}`, 400, "bytes: string, want an integer"},
		{`{"transport":"http","bytes":1.5,"cpu_seconds":1}`, 400, "bytes: number 1.5, want an integer"},
		{`{"transport":"http","bytes":-1,"cpu_seconds":1}`, 400, "bytes: -1"},
		{`{"transport":"http","bytes":10000000}`, 400, "cpu_seconds: missing"},
		{`{"transport":"http","bytes":10000000,"cpu_seconds":-1}`, 400, "cpu_seconds: -1"},
		{`{"transport":"http","bytes":10000000,"cpu_seconds":"1"}`, 400, "cpu_seconds: string, want a number"},
		{`{"transport":"http","bytes":10000000,"cpu_seconds":1e9}`, 400, "cpu_seconds: 1e+09"},
		{`{"transport":"http","bytes":10000000,"cpu_seconds":1,"node":"` + strings.Repeat("n", 300) + `"}`, 400, "node: longer"},
		{`not json`, 400, "body: "},
		{`{"transport":"http","bytes":10000000,"cpu_seconds":1}{}`, 400, "body: one JSON object"},
		{`{"transport":"http","bytes":10000000,"cpu_seconds":1,"pad":"` + strings.Repeat("x", 5000) + `"}`, 413, "body: "},
	} {
		if _, code, body := w.report(t, c.body, ""); code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("report %.80s: %d %q, want %d naming %s", c.body, code, body, c.code, c.msg)
		}
	}
	if c, n := w.advisor.CPU(auto.HTTP); c != auto.DefaultCPUPerByte(auto.HTTP) || n != 0 {
		t.Errorf("http after refused reports: %g s/B from %d reports, want the default", c, n)
	}
	// A report needs what the advice needs: a read token where reads are
	// private.
	w.srv.ReadTokens = []string{"reader"}
	ok := `{"transport":"http","bytes":10000000,"cpu_seconds":0.2}`
	if _, code, body := w.report(t, ok, ""); code != http.StatusUnauthorized {
		t.Errorf("report without the read token: %d %s, want 401", code, body)
	}
	if _, code, _ := w.ask(t, "want="+w.v1.String()); code != http.StatusUnauthorized {
		t.Errorf("advice without the read token: %d, want 401 (as the report)", code)
	}
	if e, code, body := w.report(t, ok, "reader"); code != http.StatusOK || !e.Counted || e.Reports != 1 || !near(e.CPUPerByte*1e9, 20) {
		t.Errorf("report with the read token: %d %s, want counted at 20 ns/B", code, body)
	}
}
