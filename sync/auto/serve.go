package auto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	gosync "sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

// AdvicePath is where a server that runs the advisor answers.
const AdvicePath = "/v1/transport/advice"

// ReportPath is where a node that fetched with --transport auto tells the
// advisor what the fetch cost it.
const ReportPath = "/v1/transport/report"

// CostReport is the body of POST /v1/transport/report: a node fetched
// Bytes over Transport and its process spent CPUSeconds (user+sys) on it.
type CostReport struct {
	Transport  string  `json:"transport"`
	Bytes      int64   `json:"bytes"`
	CPUSeconds float64 `json:"cpu_seconds"`
	Node       string  `json:"node,omitempty"`
}

// CPUEstimate is the answer of POST /v1/transport/report: the advisor's
// estimate for the transport once the report is counted.
type CPUEstimate struct {
	Transport  string  `json:"transport"`
	CPUPerByte float64 `json:"cpu_seconds_per_byte"`
	Reports    int     `json:"reports"` // reports it is made of; 0: the default
	Counted    bool    `json:"counted"` // false: the fetch was under MinReportBytes
}

// MinReportBytes is the fetch below which a report is not counted: fixed
// costs (the process, the commit, the advice) dominate its CPU time.
const MinReportBytes = 1 << 20

// cpuWeight is the weight of a new report in the exponentially weighted
// mean of CPU seconds per byte: the last ~5 reports make most of it.
const cpuWeight = 0.2

// maxReport bounds the body of a report.
const maxReport = 4 << 10

// cpuEstimate is the learned cost of one transport.
type cpuEstimate struct {
	perByte float64
	reports int
}

// Advice is the answer of POST /v1/transport/advice.
type Advice struct {
	Choice
	Nodes int   `json:"nodes"` // nodes counted together
	Bytes int64 `json:"bytes"` // the delta the choice was made for
}

// Advisor answers nodes that fetch with --transport auto. Nodes asking for
// the same commit within Gather of the first are counted together and
// given one answer (a multicast session or a swarm needs all of them),
// made when Gather is over or as soon as as many nodes asked as one of
// them said to expect (a rollout's wave, a rack's install: --auto-nodes).
// A node asking for a delta under GatherBytes without such a hint is not
// held: it is answered at once from the nodes counted so far.
type Advisor struct {
	Server *simsync.Server
	Uplink float64 // server uplink, bytes/s
	// NodeLink is a node's link, bytes/s (0: as Uplink).
	NodeLink float64
	// NodeCores is how many cores the nodes share (0: each its own);
	// SharedHost, that this server runs on them too.
	NodeCores  float64
	SharedHost bool
	// Gather is how long the first request for a commit waits for others;
	// GatherBytes the delta below which nobody waits.
	Gather      time.Duration
	GatherBytes int64
	Log         io.Writer

	mu     gosync.Mutex
	groups map[chunk.ID]*group
	cpu    map[string]cpuEstimate
}

// group is the nodes asking for one commit together.
type group struct {
	first   time.Time
	nodes   map[string]bool
	expect  int
	done    chan struct{}
	timer   *time.Timer
	decided bool
	until   time.Time // the answer holds for late askers until then
	advice  Advice
}

// stick is how long a decided group's answer is given to late askers for
// the same commit: a swarm or session they can still join.
const stick = 30 * time.Second

// DefaultGatherBytes is the delta below which a node without a hint is
// not held for the gathering: 8 MiB take 67 ms at 1 Gbit/s, so holding
// every node of an update for seconds would cost more than most fleets
// could gain; a hint (expect) holds it anyway.
const DefaultGatherBytes = 8 << 20

// ServeHTTP answers POST /v1/transport/advice?want=ID[&have=ID,...][&node=NAME][&expect=N].
func (a *Advisor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	want, haves, err := simsync.ParseWantHaves(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	node := q.Get("node")
	if node == "" {
		node = r.RemoteAddr
	}
	expect := 0
	if e := q.Get("expect"); e != "" {
		if expect, err = strconv.Atoi(e); err != nil || expect < 1 || expect > 1<<20 {
			http.Error(w, "expect: want a number of nodes, 1 or more", http.StatusBadRequest)
			return
		}
	}
	pl, err := a.Server.Planner.Plan(want, haves)
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, store.ErrNotFound) {
			status = http.StatusNotFound
		}
		http.Error(w, "plan "+want.Short()+": "+err.Error(), status)
		return
	}
	bytes, err := a.Server.Planner.Estimate(pl)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	in := a.inputs(r, bytes)
	adv, err := a.advise(r.Context(), want, node, expect, in)
	if err != nil {
		return // the node went away
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(adv)
}

// advise counts node into the group of want and returns the group's
// answer, waiting for the gathering when the delta is large.
func (a *Advisor) advise(ctx context.Context, want chunk.ID, node string, expect int, in Inputs) (Advice, error) {
	now := time.Now()
	a.mu.Lock()
	if a.groups == nil {
		a.groups = map[chunk.ID]*group{}
	}
	for id, g := range a.groups {
		if g.decided && now.After(g.until) {
			delete(a.groups, id)
		}
	}
	g := a.groups[want]
	if g == nil {
		g = &group{first: now, nodes: map[string]bool{}, done: make(chan struct{})}
		a.groups[want] = g
		g.timer = time.AfterFunc(a.Gather, func() { a.decide(want, g, in) })
	}
	if in.Bytes < a.GatherBytes && expect == 0 && !g.decided {
		// Not worth holding the node for: answer from who asked so far
		// (counted, so the next of a burst sees them).
		g.nodes[node] = true
		n := len(g.nodes)
		a.mu.Unlock()
		in.Nodes = n
		adv := Advice{Choice: Choose(in), Nodes: n, Bytes: in.Bytes}
		a.logf("%s for %s to %s: %s", adv.Transport, want.Short(), node, adv.Reason)
		return adv, nil
	}
	g.nodes[node] = true
	g.expect = max(g.expect, expect)
	if g.decided {
		adv := g.advice
		if adv.Transport == HTTP {
			// Nothing to join: weigh again with the nodes counted now.
			in.Nodes = len(g.nodes)
			adv = Advice{Choice: Choose(in), Nodes: len(g.nodes), Bytes: in.Bytes}
		}
		a.mu.Unlock()
		a.logf("%s for %s to %s (late, %d nodes so far): %s", adv.Transport, want.Short(), node, len(g.nodes), adv.Reason)
		return adv, nil
	}
	if g.expect > 0 && len(g.nodes) >= g.expect && g.timer.Stop() {
		a.mu.Unlock()
		a.decide(want, g, in)
	} else {
		a.mu.Unlock()
	}
	select {
	case <-g.done:
	case <-ctx.Done():
		return Advice{}, ctx.Err()
	}
	a.mu.Lock()
	adv := g.advice
	a.mu.Unlock()
	return adv, nil
}

// decide makes the group's answer once its gathering is over.
func (a *Advisor) decide(want chunk.ID, g *group, in Inputs) {
	a.mu.Lock()
	if g.decided {
		a.mu.Unlock()
		return
	}
	in.Nodes = len(g.nodes)
	g.advice = Advice{Choice: Choose(in), Nodes: in.Nodes, Bytes: in.Bytes}
	g.decided = true
	g.until = time.Now().Add(stick)
	adv := g.advice
	a.mu.Unlock()
	close(g.done)
	a.logf("%s for %s to %d nodes (gathered %.1f s): %s", adv.Transport, want.Short(), adv.Nodes,
		time.Since(g.first).Seconds(), adv.Reason)
}

// Mount serves the advice (POST AdvicePath) and the nodes' reports (POST
// ReportPath) on srv, with the role of a read: a node that may fetch may
// ask and report.
func (a *Advisor) Mount(srv *simsync.Server) {
	srv.Handle("POST "+AdvicePath, a)
	srv.Handle("POST "+ReportPath, http.HandlerFunc(a.ServeReport))
}

// ServeReport answers POST /v1/transport/report (a CostReport): a report of a
// fetch of MinReportBytes or more moves the transport's estimate of CPU
// seconds per byte (the first replaces the default, later ones are
// weighed in by cpuWeight), which the next choices use.
func (a *Advisor) ServeReport(w http.ResponseWriter, r *http.Request) {
	rep, field, err := decodeReport(w, r)
	if err != nil {
		status := http.StatusBadRequest
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			status = http.StatusRequestEntityTooLarge
		}
		http.Error(w, field+": "+err.Error(), status)
		return
	}
	node := rep.Node
	if node == "" {
		node = r.RemoteAddr
	}
	est := CPUEstimate{Transport: rep.Transport}
	a.mu.Lock()
	e, ok := a.cpu[rep.Transport]
	if rep.Bytes >= MinReportBytes {
		v := rep.CPUSeconds / float64(rep.Bytes)
		if !ok {
			e.perByte = v
		} else {
			e.perByte += cpuWeight * (v - e.perByte)
		}
		e.reports++
		if a.cpu == nil {
			a.cpu = map[string]cpuEstimate{}
		}
		a.cpu[rep.Transport] = e
		est.Counted = true
	}
	est.CPUPerByte, est.Reports = e.perByte, e.reports
	a.mu.Unlock()
	if est.Reports == 0 {
		est.CPUPerByte = DefaultCPUPerByte(rep.Transport)
	}
	if est.Counted {
		a.logf("%s cost %s %.2f CPU-s for %s (%.1f ns/B): estimate %.1f ns/B from %d reports", rep.Transport, node,
			rep.CPUSeconds, human(float64(rep.Bytes)), rep.CPUSeconds/float64(rep.Bytes)*1e9, est.CPUPerByte*1e9, est.Reports)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(est)
}

// decodeReport reads a CostReport, or says which field is wrong.
func decodeReport(w http.ResponseWriter, r *http.Request) (CostReport, string, error) {
	var in struct {
		Transport  *string  `json:"transport"`
		Bytes      *int64   `json:"bytes"`
		CPUSeconds *float64 `json:"cpu_seconds"`
		Node       string   `json:"node"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxReport))
	if err := dec.Decode(&in); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			want := "a number"
			switch te.Type.Kind() {
			case reflect.String:
				want = "a string"
			case reflect.Int64:
				want = "an integer"
			}
			return CostReport{}, te.Field, fmt.Errorf("%s, want %s", te.Value, want)
		}
		return CostReport{}, "body", err
	}
	if dec.More() {
		return CostReport{}, "body", errors.New("one JSON object, nothing after it")
	}
	switch {
	case in.Transport == nil:
		return CostReport{}, "transport", errors.New("missing")
	case *in.Transport != HTTP && *in.Transport != Multicast && *in.Transport != BitTorrent:
		return CostReport{}, "transport", fmt.Errorf("%q: want http, multicast or bittorrent", *in.Transport)
	case in.Bytes == nil:
		return CostReport{}, "bytes", errors.New("missing")
	case *in.Bytes < 0 || *in.Bytes > 1<<50:
		return CostReport{}, "bytes", fmt.Errorf("%d: want 0 to 2^50", *in.Bytes)
	case in.CPUSeconds == nil:
		return CostReport{}, "cpu_seconds", errors.New("missing")
	case math.IsNaN(*in.CPUSeconds) || *in.CPUSeconds < 0 || *in.CPUSeconds > 1e6:
		return CostReport{}, "cpu_seconds", fmt.Errorf("%g: want 0 to 1e6", *in.CPUSeconds)
	case len(in.Node) > 256:
		return CostReport{}, "node", errors.New("longer than 256 bytes")
	}
	return CostReport{Transport: *in.Transport, Bytes: *in.Bytes, CPUSeconds: *in.CPUSeconds, Node: in.Node}, "", nil
}

// CPU is the advisor's estimate of CPU seconds per byte for transport t
// and the reports it is made of (0: the default).
func (a *Advisor) CPU(t string) (perByte float64, reports int) {
	a.mu.Lock()
	e, ok := a.cpu[t]
	a.mu.Unlock()
	if !ok {
		return DefaultCPUPerByte(t), 0
	}
	return e.perByte, e.reports
}

// inputs gathers what the server knows now: which transports it runs,
// what its multicast sessions cost, and what fetches cost the nodes.
func (a *Advisor) inputs(r *http.Request, bytes int64) Inputs {
	in := a.baseInputs(bytes)
	if a.Server.Serves("GET", "/v1/bt/torrent") {
		in.Available = append(in.Available, BitTorrent)
	}
	if a.Server.Serves("POST", "/v1/mcast/open") {
		in.Available = append(in.Available, Multicast)
		in.McastOverhead = a.mcastOverhead(r)
	}
	return in
}

// baseInputs is what the advisor knows of the server, the nodes and the
// costs, for a fetch of bytes.
func (a *Advisor) baseInputs(bytes int64) Inputs {
	in := Inputs{Bytes: bytes, Uplink: a.Uplink, NodeUplink: a.NodeLink, NodeCores: a.NodeCores, SharedHost: a.SharedHost,
		CPUPerByte: map[string]float64{}}
	for _, t := range []string{HTTP, Multicast, BitTorrent} {
		in.CPUPerByte[t], _ = a.CPU(t)
	}
	return in
}

// mcastOverhead is sent/bytes over the server's finished multicast
// sessions (what repairs cost on this network), read from its own GET
// /v1/mcast/sessions with the asking node's credentials; 0 when none.
func (a *Advisor) mcastOverhead(r *http.Request) float64 {
	q, err := http.NewRequestWithContext(r.Context(), "GET", "/v1/mcast/sessions", nil)
	if err != nil {
		return 0
	}
	q.Header = r.Header.Clone()
	q.RemoteAddr = r.RemoteAddr
	rec := httptest.NewRecorder()
	a.Server.ServeHTTP(rec, q)
	if rec.Code != http.StatusOK {
		return 0
	}
	var ss []struct {
		State     string `json:"state"`
		Bytes     int64  `json:"bytes"`
		SentBytes int64  `json:"sent_bytes"`
	}
	if json.Unmarshal(rec.Body.Bytes(), &ss) != nil {
		return 0
	}
	var b, s int64
	for _, x := range ss {
		if x.State == "done" && x.Bytes > 0 {
			b += x.Bytes
			s += x.SentBytes
		}
	}
	if b == 0 {
		return 0
	}
	return float64(s) / float64(b)
}

func (a *Advisor) logf(format string, args ...any) {
	if a.Log != nil {
		fmt.Fprintf(a.Log, "sim serve: transport auto: "+format+"\n", args...)
	}
}

// serveFlags is sim serve's side: the advisor.
type serveFlags struct {
	uplink   string
	nodeRate string
	gather   time.Duration
	cores    float64
	shared   bool
	off      bool
}

func (s *serveFlags) Flags(f *pflag.FlagSet) {
	f.StringVar(&s.uplink, "auto-uplink", "1Gbit", "transport auto: the server's uplink `RATE` the choice assumes (100Mbit, 1Gbit, 25M = 25 MB/s)")
	f.StringVar(&s.nodeRate, "auto-node-rate", "0", "transport auto: a node's link `RATE` (upload and download) the choice assumes; 0: as --auto-uplink")
	f.DurationVar(&s.gather, "auto-gather", 2*time.Second, "transport auto: how long the first node asking for a large delta waits for others asking for the same commit")
	f.Float64Var(&s.cores, "auto-node-cores", 0, "transport auto: the `C` cores the nodes share (nodes in network namespaces or VMs on one host: their CPU, not the network, may decide); 0: each node has its own CPU")
	f.BoolVar(&s.shared, "auto-shared-host", false, "transport auto: this server runs on the --auto-node-cores cores with its nodes (one host for all: what the server sends costs the nodes' CPU too)")
	f.BoolVar(&s.off, "no-auto", false, "do not advise nodes fetching with --transport auto (they use HTTP)")
}

func (s *serveFlags) Start(_ context.Context, env simsync.ServeEnv) (simsync.Service, error) {
	if s.off {
		return nil, nil
	}
	up, err := units.ParseRate(s.uplink)
	if err != nil || up <= 0 {
		if err == nil {
			err = fmt.Errorf("want a rate above 0")
		}
		return nil, &simsync.FlagError{Flag: "auto-uplink", Value: s.uplink, Err: err}
	}
	nodeRate, err := units.ParseRate(s.nodeRate)
	if err != nil || nodeRate < 0 {
		if err == nil {
			err = fmt.Errorf("want 0 or a rate above 0")
		}
		return nil, &simsync.FlagError{Flag: "auto-node-rate", Value: s.nodeRate, Err: err}
	}
	if s.gather < 0 || s.gather > time.Minute {
		return nil, &simsync.FlagError{Flag: "auto-gather", Value: s.gather.String(), Err: fmt.Errorf("want 0 to 1m")}
	}
	if math.IsNaN(s.cores) || s.cores < 0 || s.cores > 1<<20 {
		return nil, &simsync.FlagError{Flag: "auto-node-cores", Value: strconv.FormatFloat(s.cores, 'g', -1, 64), Err: fmt.Errorf("want 0 or a number of cores")}
	}
	if s.shared && s.cores == 0 {
		return nil, &simsync.FlagError{Flag: "auto-shared-host", Value: "true", Err: fmt.Errorf("needs --auto-node-cores: the cores the server shares with its nodes")}
	}
	a := &Advisor{Server: env.Server, Uplink: float64(up), NodeLink: float64(nodeRate), NodeCores: s.cores, SharedHost: s.shared, Gather: s.gather, GatherBytes: DefaultGatherBytes, Log: env.Log}
	a.Mount(env.Server)
	return service{a}, nil
}

// service is the advisor as sim serve holds it: rollouts of the same
// server choose through it (Chooser), with its uplink, node links, cores
// and learned costs.
type service struct{ a *Advisor }

func (service) Close() {}

// Choose is the model on what the advisor knows now, for nodes fetching
// bytes together over http or one of avail.
func (s service) Choose(bytes int64, nodes int, avail []string) Choice {
	in := s.a.baseInputs(bytes)
	in.Nodes, in.Available = nodes, avail
	return Choose(in)
}

// Chooser is what a sim serve service that chooses transports offers.
type Chooser interface {
	Choose(bytes int64, nodes int, avail []string) Choice
}

type closer struct{}

func (closer) Close() {}
