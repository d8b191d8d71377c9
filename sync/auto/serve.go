package auto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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
	// Gather is how long the first request for a commit waits for others;
	// GatherBytes the delta below which nobody waits.
	Gather      time.Duration
	GatherBytes int64
	Log         io.Writer

	mu     gosync.Mutex
	groups map[chunk.ID]*group
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

// inputs gathers what the server knows now: which transports it runs and
// what its multicast sessions cost.
func (a *Advisor) inputs(r *http.Request, bytes int64) Inputs {
	in := Inputs{Bytes: bytes, Uplink: a.Uplink, NodeUplink: a.NodeLink}
	if a.Server.Serves("GET", "/v1/bt/torrent") {
		in.Available = append(in.Available, BitTorrent)
	}
	if a.Server.Serves("POST", "/v1/mcast/open") {
		in.Available = append(in.Available, Multicast)
		in.McastOverhead = a.mcastOverhead(r)
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
	off      bool
}

func (s *serveFlags) Flags(f *pflag.FlagSet) {
	f.StringVar(&s.uplink, "auto-uplink", "1Gbit", "transport auto: the server's uplink `RATE` the choice assumes (100Mbit, 1Gbit, 25M = 25 MB/s)")
	f.StringVar(&s.nodeRate, "auto-node-rate", "0", "transport auto: a node's link `RATE` (upload and download) the choice assumes; 0: as --auto-uplink")
	f.DurationVar(&s.gather, "auto-gather", 2*time.Second, "transport auto: how long the first node asking for a large delta waits for others asking for the same commit")
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
	a := &Advisor{Server: env.Server, Uplink: float64(up), NodeLink: float64(nodeRate), Gather: s.gather, GatherBytes: DefaultGatherBytes, Log: env.Log}
	env.Server.Handle("POST "+AdvicePath, a)
	return closer{}, nil
}

type closer struct{}

func (closer) Close() {}
